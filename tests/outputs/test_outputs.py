"""What a finished run leaves for its user (issue 4), through the real command line.

One tiny run (``timm:test_resnet``, pool head, 32 px, 3 classes, one epoch a phase) is trained once for the module
and then predicted, visualised, plotted, reported and exported; error analysis is checked on hand-made numbers.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import write_tiny_tree
from PIL import Image

import tinytransfer as tt
from tinytransfer.cli import main
from tinytransfer.data.decode import decode_image
from tinytransfer.outputs import finish as outputs
from tinytransfer.outputs.finish import analyse
from tinytransfer.outputs.predict import predict_arrays, read_image, top_k_rows
from tinytransfer.outputs.report import SECTION_IDS
from tinytransfer.runs.runfolder import load_model

TINY_SETS = [
    "model.backbone=timm:test_resnet", "model.head=pool", "model.pretrained=false", "model.input_size=32",
    "phases.*.epochs=1", "phases.*.batch_size=16", "phases.*.step_size=2", "data.workers=1",
    "data.val_mode=official", "eval_batch_size=32",
]
SETS = [x for s in TINY_SETS for x in ("--set", s)]
CURVES = ("accuracy.png", "loss.png", "lr.png")
TWO_CONVS = ("body.conv1.0", "body.layer1.0.conv1")  # conv layers of timm's test_resnet inside a TransferModel


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run (train WITHOUT --no-finish): its folder, dataset tree and what it held right after train."""
    base = tmp_path_factory.mktemp("outputs")
    tree = write_tiny_tree(base / "tree", n_classes=3, train_per_class=10, n_val=6, n_test=5, size=32, n_odd_size=0)
    out = base / "run"
    rc = main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet", "--seed", "1",
               *SETS])
    assert rc == 0
    held = {p.name: p.stat().st_size for p in out.iterdir()}
    model, ckpt = load_model(out)
    return SimpleNamespace(dir=out, tree=tree, base=base, held=held, model=model, ckpt=ckpt,
                           classes=list(ckpt.classes))


def test_train_leaves_every_output(run):
    expected = [*CURVES, "table1.md", "table1.csv", "predictions.csv", "analysis.json", "confusion_pairs.png",
                "per_class.png", "report.html"]
    for name in expected:
        assert run.held.get(name, 0) > 0, f"{name} missing or empty after train"
    assert any(n.startswith("featuremaps_") and n.endswith(".png") for n in run.held)
    assert any(n.startswith("gradcam_") and n.endswith(".png") for n in run.held)
    page = (run.dir / "report.html").read_text()
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page, f"report.html lacks section {sid}"
    assert page.count('src="data:image/png;base64,') >= 7  # 3 curves, 2 analysis plots, feature maps, Grad-CAM
    assert 'src="http' not in page and "src='http" not in page  # self-contained
    table = read_csv(run.dir / "table1.csv")
    assert [int(r["phase"]) for r in table] == [1, 2, 3]
    # 3 classes (<= 30): the whole confusion matrix is drawn and kept; its rows count the val images of each class
    analysis = json.loads((run.dir / "analysis.json").read_text())
    assert run.held.get("confusion_matrix.png", 0) > 0
    assert [sum(r) for r in analysis["confusion"]] == [2, 2, 2]
    assert page.index('id="headline"') < page.index('id="config"') and "30 train, 6 val, 5 test" in page


def test_predict_test_split(run, capsys):
    out = run.base / "split.csv"
    assert main(["predict", str(run.dir), "--split", "test", "--out", str(out)]) == 0
    assert "5 predictions written" in capsys.readouterr().out
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["file", "wnid", "name", "prob", "top5"]
    assert sorted(Path(r["file"]).name for r in rows) == [f"test_{i}.JPEG" for i in range(5)]
    names = dict(zip(run.classes, run.ckpt.names))
    for r in rows:
        assert 0 < float(r["prob"]) <= 1
        top5 = r["top5"].split()
        assert len(top5) == 3 and sorted(top5) == sorted(run.classes)  # min(5, classes)
        assert top5[0] == r["wnid"] and r["name"] == names[r["wnid"]]


def test_predict_arrays_probabilities(run):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3) uint8
    probs = predict_arrays(run.model, images, run.ckpt)
    assert probs.shape == (7, 3) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(7), atol=1e-5) and (probs >= 0).all()
    # normalised as in training: (x / 255 - mean) / std, no augmentation
    mean = torch.tensor(run.ckpt.mean).view(1, 3, 1, 1)
    std = torch.tensor(run.ckpt.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        logits = run.model.eval()(x)
        assert torch.allclose(probs, (logits / run.ckpt.temperature).softmax(dim=1), atol=1e-5)  # calibrated
        raw = predict_arrays(run.model, images, run.ckpt, temperature=1.0)
        assert torch.allclose(raw, logits.softmax(dim=1), atol=1e-5)
    assert torch.allclose(predict_arrays(run.model, images, run.ckpt, batch_size=2), probs, atol=1e-6)
    rows = top_k_rows([f"img{i}" for i in range(7)], probs, run.classes, list(run.ckpt.names))
    for row, p in zip(rows, probs):
        assert row["wnid"] == run.classes[int(p.argmax())] == row["top5"].split()[0]
        assert float(row["prob"]) == pytest.approx(float(p.max()), abs=1e-6)


def _image_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """Images of other sizes and modes, and two files that are not images; returns (good, bad)."""
    rng = np.random.default_rng(1)
    root.mkdir()
    (root / "sub").mkdir()
    rgb = rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)  # (h, w, 3): a 100×50 image
    good = [root / "wide.png", root / "gray.png", root / "alpha.png", root / "palette.gif", root / "sub" / "s.bmp"]
    Image.fromarray(rgb).save(good[0])
    Image.fromarray(rgb).convert("L").save(good[1])
    Image.fromarray(rgb).convert("RGBA").save(good[2])
    Image.fromarray(rgb).convert("P").save(good[3])
    Image.fromarray(rgb[:40, :40]).save(good[4])
    bad = [root / "notes.jpg", root / "empty.JPEG"]
    bad[0].write_text("this is not a picture\n")
    bad[1].write_bytes(b"")
    return good, bad


def test_predict_files_and_folders_skips_bad_files(run, tmp_path, capsys):
    good, bad = _image_folder(tmp_path / "imgs")
    single = tmp_path / "single.jpg"
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(single)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run.dir), str(single), str(tmp_path / "imgs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for b in bad:
        assert str(b) in printed, f"no warning names {b}"
    rows = read_csv(out)
    assert sorted(r["file"] for r in rows) == sorted(map(str, [single, *good]))
    assert all(0 < float(r["prob"]) <= 1 and r["top5"].split()[0] == r["wnid"] for r in rows)


def test_predict_only_bad_files_is_one_line_error(run, tmp_path, capsys):
    _, bad = _image_folder(tmp_path / "imgs")
    assert main(["predict", str(run.dir), *map(str, bad), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable images" in err
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", str(run.dir), str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.png" in err


def test_predict_files_matches_the_split_predictions(run, tmp_path):
    """An image predicted from its file gets the probabilities it gets as part of the dataset's test split."""
    split, files = tmp_path / "split.csv", tmp_path / "files.csv"
    assert main(["predict", str(run.dir), "--split", "test", "--out", str(split)]) == 0
    assert main(["predict", str(run.dir), str(run.tree / "test" / "images"), "--out", str(files)]) == 0
    by_name = {Path(r["file"]).name: r for r in read_csv(split)}
    got = read_csv(files)
    assert len(got) == len(by_name) == 5
    for r in got:
        s = by_name[Path(r["file"]).name]
        assert r["top5"] == s["top5"] and float(r["prob"]) == pytest.approx(float(s["prob"]), abs=1e-5)


def test_read_image_decodes_as_training_does(tmp_path):
    """Transparent pixels become white, as in the dataset's decoder (a plain convert("RGB") makes them black)."""
    rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent black
    rgba[:10, :, :] = (10, 200, 30, 255)  # opaque green top half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    g16 = (np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # mode I;16
    for name in ("a.png", "g16.png"):
        a = read_image(tmp_path / name, 16)
        assert a.shape == (16, 16, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, decode_image(tmp_path / name, 16))
    assert (read_image(tmp_path / "a.png", 30)[-1] == 255).all()
    with pytest.raises(ValueError, match="nope.png"):
        (tmp_path / "nope.png").write_bytes(b"\x89PNG broken")
        read_image(tmp_path / "nope.png", 16)


def test_visualize_chosen_layers(run, tmp_path, capsys, monkeypatch):
    seen = {}
    real = outputs.plot_feature_maps

    def spy(maps, path, **kw):
        seen.update({k: tuple(v.shape) for k, v in maps.items()})
        return real(maps, path, **kw)

    monkeypatch.setattr(outputs, "plot_feature_maps", spy)
    img = tmp_path / "probe.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 100, 4), dtype=np.uint8), "RGBA").save(img)
    assert main(["visualize", str(run.dir), "--image", str(img), "--layers", ",".join(TWO_CONVS),
                 "--label", run.classes[1]]) == 0
    printed = capsys.readouterr().out
    for name in ("featuremaps_probe.png", "gradcam_probe.png"):
        assert (run.dir / name).stat().st_size > 0 and str(run.dir / name) in printed
    assert list(seen) == list(TWO_CONVS)
    assert all(len(s) == 3 and min(s) > 0 for s in seen.values())  # (C, h, w) a layer


def test_visualize_unknown_layer_lists_valid_names(run, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["visualize", str(run.dir), "--image", str(img), "--layers", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    assert all(name in err for name in TWO_CONVS)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # nothing half-written


def test_visualize_not_an_image_is_one_line(run, tmp_path, capsys):
    _, bad = _image_folder(tmp_path / "imgs")
    assert main(["visualize", str(run.dir), "--image", str(bad[0]), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad[0]) in err


@pytest.mark.parametrize("command", ["predict", "visualize", "evaluate", "report"])
def test_run_folder_without_checkpoint_is_one_line(run, tmp_path, capsys, command):
    folder = tmp_path / "nockpt"
    folder.mkdir()
    for name in ("config.yaml", "metrics.csv"):
        shutil.copy(run.dir / name, folder / name)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    extra = {"predict": ["--split", "test"], "visualize": ["--image", str(img)]}.get(command, [])
    assert main([command, str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "metrics.csv"]  # nothing written


def test_plot_redraws_curves_and_prints_table1(run, capsys):
    for name in CURVES:
        (run.dir / name).unlink()
    assert main(["plot", str(run.dir)]) == 0
    printed = capsys.readouterr().out
    for name in CURVES:
        assert (run.dir / name).stat().st_size > 0
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| phase |") and len(table) == 2 + 3  # header, rule, three phases
    assert "max val accuracy" in table[0]


def test_report_rewrites_report_html(run, capsys):
    (run.dir / "report.html").unlink()
    (run.dir / "analysis.json").unlink()
    assert main(["report", str(run.dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    page = (run.dir / "report.html").read_text()
    assert all(f'id="{sid}"' in page for sid in SECTION_IDS)
    assert (run.dir / "analysis.json").is_file() and "not produced for this run" not in page


def _random_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S) normalised


def _check_sidecar(run, path: Path) -> None:
    meta = yaml.safe_load(path.with_name(path.name + ".yaml").read_text())
    assert meta["classes"] == run.classes and meta["input_size"] == 32
    assert meta["mean"] == list(run.ckpt.mean) and meta["std"] == list(run.ckpt.std)
    assert meta["image_size"] == run.ckpt.image_size and (meta["resize"] is None) == (run.ckpt.image_size == 32)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_export_torchscript_gives_the_checkpoints_logits(run, tmp_path, capsys):
    out = tmp_path / "m.ts"
    assert main(["export", str(run.dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    loaded = torch.jit.load(str(out))
    x = _random_input()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), run.model.eval()(x), atol=1e-4, rtol=0)
    _check_sidecar(run, out)


def _export_program(run, path: Path):
    assert main(["export", str(run.dir), "--format", "torch-export", "--out", str(path)]) == 0
    _check_sidecar(run, path)
    return torch.export.load(str(path)).module()


def test_export_torch_export_gives_the_checkpoints_logits(run, tmp_path):
    prog = _export_program(run, tmp_path / "m.pt2")
    x = _random_input()[:1]
    with torch.no_grad():
        torch.testing.assert_close(prog(x), run.model.eval()(x), atol=1e-4, rtol=0)


def test_export_torch_export_takes_any_batch_size(run, tmp_path):
    prog = _export_program(run, tmp_path / "m.pt2")
    x = _random_input()
    with torch.no_grad():
        torch.testing.assert_close(prog(x), run.model.eval()(x), atol=1e-4, rtol=0)


def _onnx_session(path: Path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feed_from_sidecar(meta: dict, images: np.ndarray) -> np.ndarray:
    """What a user without tinytransfer does with model.json: scale, normalise, HWC → CHW."""
    assert meta["layout"] == "NCHW" and meta["channel_order"] == "RGB" and meta["dtype"] == "float32"
    x = images.astype(np.float32) * meta["scale"]
    x = (x - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_export_onnx_writes_model_and_sidecar_and_checks_parity(run, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run.dir), "--format", "onnx"]) == 0
    path = run.dir / "model.onnx"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(path)
    meta = json.loads((run.dir / "model.json").read_text())
    assert meta["classes"] == run.classes and meta["names"] == list(run.ckpt.names)
    assert meta["input_size"] == 32 and meta["scale"] == pytest.approx(1 / 255)
    assert meta["mean"] == pytest.approx(list(run.ckpt.mean)) and meta["std"] == pytest.approx(list(run.ckpt.std))
    assert meta["output"] == "logits" and meta["output_name"] == "logits" and meta["input_name"] == "input"
    assert meta["parity"]["images"] > 0 and meta["parity"]["max_abs_diff"] <= 1e-4  # on the run's val images
    # dynamic batch: 5 images (the export traced 2), fed from the sidecar alone, give the checkpoint's logits
    images = np.stack([decode_image(f, 32) for f in sorted((run.tree / "test" / "images").iterdir())])
    sess = _onnx_session(path)
    assert sess.get_inputs()[0].shape[0] == "batch"
    got = sess.run(None, {"input": _feed_from_sidecar(meta, images)})[0]
    ref = predict_arrays(run.model, images, run.ckpt)  # tinytransfer's own probabilities
    assert got.shape == (5, 3)
    calibrated = (torch.from_numpy(got) / meta["temperature"]).softmax(1)  # model.json says how
    np.testing.assert_allclose(calibrated.numpy(), ref.numpy(), atol=1e-5)


def test_export_onnx_probabilities_output(run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "p.onnx"
    assert main(["export", str(run.dir), "--format", "onnx", "--output", "probabilities", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["output"] == "probabilities" and meta["model"] == "p.onnx"
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    got = _onnx_session(out).run(None, {"input": _feed_from_sidecar(meta, x)})[0]
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, predict_arrays(run.model, x, run.ckpt).numpy(), atol=1e-5)


def test_export_onnx_parity_failure_writes_nothing(run, tmp_path, monkeypatch):
    """A graph that does not compute the checkpoint's function fails the check; no model.onnx, no model.json."""
    pytest.importorskip("onnxruntime")
    from tinytransfer.outputs import export

    real = export._onnx_bytes

    def perturbed(model, size, output):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.head[-1].bias.add_(1e-3)  # a tiny change, still 10x the 1e-4 tolerance
        return real(other.eval(), size, output)

    monkeypatch.setattr(export, "_onnx_bytes", perturbed)
    out = tmp_path / "bad.onnx"
    loaded = tt.load(run.dir, device="cpu")
    with pytest.raises(export.ExportError, match="parity check failed"):
        loaded.export("onnx", out)
    assert not out.exists() and not (tmp_path / "bad.json").exists()
    assert main(["export", str(run.dir), "--format", "onnx", "--out", str(out)]) == 2  # one error line


def test_export_onnx_without_onnxruntime_says_unchecked(run, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    out = tmp_path / "u.onnx"
    tt.load(run.dir, device="cpu").export("onnx", out)
    assert out.stat().st_size > 0
    assert json.loads((tmp_path / "u.json").read_text())["parity"] is None
    assert "not checked" in caplog.text


def test_lr_find_writes_curve_and_suggestion(run, tmp_path, capsys):
    out = tmp_path / "lrf"
    assert main(["lr-find", "--recipe", "vgg16-paper", "--data", str(run.tree), *SETS, "--steps", "20",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "lr_find.csv")
    assert list(rows[0]) == ["lr", "loss", "smoothed"] and 2 <= len(rows) <= 20
    lrs = [float(r["lr"]) for r in rows]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # exponentially growing
    assert (out / "lr_find.png").stat().st_size > 0
    line = next(line for line in printed.splitlines() if line.startswith("suggested max LR"))
    suggested = float(line.rsplit(":", 1)[1])
    assert lrs[0] <= suggested <= lrs[-1]


def test_analyse_counts_pairs_per_class_and_orders_mistakes():
    classes, names = ["a0", "b1", "c2"], ["apple", "bus", "car"]
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 0, 1, 2]
    conf = [0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65]
    probs = torch.full((7, 3), 0.0)
    for i, (p, c) in enumerate(zip(preds, conf)):
        probs[i] = (1 - c) / 2
        probs[i, p] = c
    res = analyse(probs, labels, classes, names)
    assert res["top1"] == pytest.approx(3 / 7) and res["top5"] == pytest.approx(1.0) and res["n"] == 7
    assert [(p["true"], p["pred"], p["count"]) for p in res["confused_pairs"]] == [
        ("apple", "bus", 2), ("bus", "apple", 1), ("car", "bus", 1)]
    assert {c["class"]: (c["acc"], c["n"]) for c in res["per_class"]} == {
        "a0": (pytest.approx(1 / 3), 3), "b1": (0.5, 2), "c2": (0.5, 2)}
    assert [m["index"] for m in res["mistakes"]] == [4, 2, 1, 5]  # most confident first
    assert [(m["true"], m["pred"]) for m in res["mistakes"]] == [("bus", "apple"), ("apple", "bus"),
                                                                 ("apple", "bus"), ("car", "bus")]
    assert [m["prob"] for m in res["mistakes"]] == pytest.approx([0.9, 0.7, 0.6, 0.55])
