"""Issue 21 in a trained run: ``train`` fits a temperature on val into best.pt, and every probability tinytransfer
gives divides the logits by it (Run.predict, predictions.csv, Run.evaluate, the ONNX export); ``train`` audits the
data first (audit.json, the cross-split warning, the report's Data section) and so does ``tinytransfer audit``."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_tree

import tinytransfer as tt
from tinytransfer.cli import main
from tinytransfer.data.audit import read_audit
from tinytransfer.outputs.calibration import CALIBRATION_JSON, calibration_section
from tinytransfer.outputs.datareport import DUPLICATES_PNG, data_section
from tinytransfer.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinytransfer.runs.runfolder import checkpoint_view
from tinytransfer.training.calibrate import ece, nll

TINY = {
    "model.backbone": "timm:test_resnet", "model.head": "pool", "model.pretrained": False, "model.input_size": 32,
    "phases.*.epochs": 1, "phases.*.batch_size": 16, "phases.*.step_size": 2, "data.workers": 1,
    "data.val_mode": "official", "eval_batch_size": 32,
}
T = 2.5  # a temperature far from whatever the fit gives, set by hand below


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose test split holds an exact copy of a train image (for the audit), and its warnings."""
    base = tmp_path_factory.mktemp("calib")
    tree = write_tiny_tree(base / "tree", n_classes=3, train_per_class=10, n_val=6, n_test=4, size=32, n_odd_size=0)
    shutil.copyfile(tree / "train" / "n00000001" / "images" / "n00000001_3.JPEG", tree / "test" / "images" / "leak.JPEG")
    records = _Records()
    logging.getLogger("tinytransfer").addHandler(records)
    try:
        r = tt.train("vgg16-paper", tree, out=base / "run", overrides=TINY, seed=2, finish=False, verbose=False)
    finally:
        logging.getLogger("tinytransfer").removeHandler(records)
    return r, tree, records.lines


@pytest.fixture
def run(trained):
    return trained[0], trained[1]


def _set_temperature(run_dir, t: float) -> None:
    ckpt = load_checkpoint(run_dir / "best.pt")
    save_checkpoint({**ckpt, "temperature": t}, run_dir / "best.pt")


def _logits(run: tt.Run, images: np.ndarray) -> torch.Tensor:
    """The raw network on uint8 images, computed here without tinytransfer's predict path."""
    view = run.checkpoint
    assert images.shape[1] == view.input_size  # no resize to reproduce
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x / 255 - torch.tensor(view.mean)[:, None, None]) / torch.tensor(view.std)[:, None, None]
    with torch.no_grad():
        return run.model.eval()(x).float()


def test_train_fits_and_stores_a_temperature(run):
    r, _ = run
    ckpt = load_checkpoint(r.dir / "best.pt")
    summary = json.loads((r.dir / CALIBRATION_JSON).read_text())
    assert isinstance(ckpt["temperature"], float) and ckpt["temperature"] == summary["temperature"] > 0
    assert summary["images"] == 6 and summary["split"] == "val" and len(summary["before"]["reliability"]) == 15
    assert summary["after"]["nll"] <= summary["before"]["nll"] + 1e-9  # T = 1 was a candidate


def test_the_temperature_is_applied_everywhere(run, tmp_path):
    r, tree = run
    _set_temperature(r.dir, T)
    r = tt.load(r.dir, device="cpu")
    assert r.checkpoint.temperature == T
    files = sorted((tree / "test" / "images").iterdir())
    from tinytransfer.outputs.predict import read_image

    images = np.stack([read_image(f, 32) for f in files])
    z = _logits(r, images)
    want = (z / T).softmax(1)
    assert not torch.allclose(want, z.softmax(1), atol=1e-3)  # T visibly changes the probabilities
    # Run.predict
    preds = r.predict([str(f) for f in files])
    assert [p.prob for p in preds] == pytest.approx(want.max(1).values.tolist(), abs=1e-5)
    assert [p.wnid for p in preds] == [r.classes[i] for i in z.argmax(1)]  # top-1 unchanged
    # predictions.csv, through the command line
    out = tmp_path / "p.csv"
    assert main(["predict", str(r.dir), *map(str, files), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["file"]).name for row in rows] == [f.name for f in files]
    assert [float(row["prob"]) for row in rows] == pytest.approx(want.max(1).values.tolist(), abs=1e-5)
    # Run.evaluate: NLL and ECE before (T = 1) and after (T)
    val = sorted((tree / "val" / "images").iterdir())
    ann = dict(line.split("\t")[:2] for line in (tree / "val" / "val_annotations.txt").read_text().splitlines())
    y = torch.tensor([r.classes.index(ann[f.name]) for f in val])
    zv = _logits(r, np.stack([read_image(f, 32) for f in val]))
    res = r.evaluate("val")
    assert res["temperature"] == T
    assert res["nll_after"] == pytest.approx(nll(zv, y, T), abs=1e-5)
    assert res["nll_before"] == pytest.approx(nll(zv, y), abs=1e-5) == pytest.approx(res["loss"])
    assert res["ece_after"] == pytest.approx(ece(zv, y, T), abs=1e-5)
    assert res["top1"] == pytest.approx(float((zv.argmax(1) == y).float().mean()))


def test_onnx_probabilities_hold_the_temperature(run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    r, _ = run
    _set_temperature(r.dir, T)
    r = tt.load(r.dir, device="cpu")
    path = r.export("onnx", tmp_path / "m.onnx", output="probabilities")
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["temperature"] == T
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feed = ((x.astype(np.float32) / 255 - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ascontiguousarray(feed.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(got, (_logits(r, x) / T).softmax(1).numpy(), atol=1e-5)


def test_a_checkpoint_without_the_key_means_one_and_a_bad_one_is_refused(run, tmp_path):
    r, _ = run
    ckpt = load_checkpoint(r.dir / "best.pt")
    old = {k: v for k, v in ckpt.items() if k != "temperature"}
    save_checkpoint(old, tmp_path / "old.pt")
    assert checkpoint_view(tmp_path / "old.pt").temperature == 1.0
    save_checkpoint({**old, "temperature": -1.0}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="temperature"):
        checkpoint_view(tmp_path / "bad.pt")


def test_report_section_shows_before_and_after(run):
    r, _ = run
    page = calibration_section(r.dir)
    assert "ECE (15 bins)" in page and "data:image/png;base64," in page and "before (T = 1)" in page
    assert "No calibration" in calibration_section(r.dir / "nowhere")


def test_train_audits_the_data_before_the_first_epoch(trained):
    r, _, lines = trained
    warn = [x for x in lines if x.startswith("data audit:")]
    assert warn == ["data audit: 1 duplicate pair across splits (1 exact, 0 near; train-test 1): validation and "
                    "test scores may be inflated; see audit.json"]
    audit = read_audit(r.dir)
    (pair,) = audit["exact_duplicates"]["pairs"]
    assert {pair["a"]["file"], pair["b"]["file"]} == {"train/n00000001/images/n00000001_3.JPEG", "test/images/leak.JPEG"}
    assert (r.dir / DUPLICATES_PNG).is_file()
    page = data_section(r.dir)
    assert "1 duplicate pair across splits" in page and "data:image/png;base64," in page and "leak.JPEG" in page
    assert "data audit" in data_section(r.dir / "nowhere")  # no audit.json: "not produced"


def test_audit_command_writes_beside_the_dataset_or_out(trained, tmp_path, capsys):
    _, tree, _ = trained
    assert main(["audit", str(tree)]) == 0
    out = capsys.readouterr().out
    assert "exact duplicate pairs 1 (0 within train, 1 across splits)" in out and "data audit: 1 duplicate" in out
    assert read_audit(tree / "audit.json")["cross_split_pairs"] == 1
    assert main(["audit", str(tree), "--out", str(tmp_path / "a.json")]) == 0
    assert read_audit(tmp_path / "a.json")["splits"]["train"]["images"] == 30
    assert main(["audit", str(tmp_path / "missing")]) == 2  # one line, no traceback
    assert tt.audit(tree, tmp_path / "b.json")["cross_split_pairs"] == 1  # the API the command calls
