"""The Python API (tt.train / tt.load / Run) against the command line, on a few dozen generated images."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_tree
from PIL import Image

import tinytransfer as tt
from tinytransfer.cli import main
from tinytransfer.runs.runfolder import read_config, read_run_meta

TINY = {
    "model.backbone": "timm:test_resnet", "model.head": "pool", "model.pretrained": False, "model.input_size": 32,
    "phases.*.epochs": 1, "phases.*.batch_size": 16, "phases.*.step_size": 2, "data.workers": 1,
    "data.val_mode": "official", "eval_batch_size": 32,
}
README = Path(__file__).resolve().parents[1] / "README.md"


def _sets(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += ["--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}"]
    return out


def _rows(path: Path) -> list[dict]:
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("seconds", "img_s")} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tiny_tree(tmp_path_factory.mktemp("api") / "tree", n_classes=3, train_per_class=10, n_val=6,
                           n_test=4, size=32, n_odd_size=0)


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory):
    """The same run twice: once through tt.train, once through the command line."""
    base = tmp_path_factory.mktemp("runs")
    api_run = tt.train("vgg16-paper", tree, out=base / "api", overrides=TINY, seed=3, deterministic=True,
                       finish=False, verbose=False)
    rc = main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(base / "cli"), "--seed", "3",
               "--deterministic", "--quiet", "--no-finish", *_sets(TINY)])
    assert rc == 0
    return api_run, base / "cli"


def test_api_run_equals_cli_run(runs):
    api_run, cli_dir = runs
    assert isinstance(api_run, tt.Run) and api_run.dir.is_dir()
    assert read_config(api_run.dir) == read_config(cli_dir)  # the same configuration ...
    assert read_run_meta(api_run.dir)["run_id"] != read_run_meta(cli_dir)["run_id"]  # ... of two runs
    assert _rows(api_run.dir) == _rows(cli_dir) and len(_rows(cli_dir)) == 3
    m = api_run.metrics
    assert [r["epoch"] for r in m] == [1, 2, 3] and all(isinstance(r["val_acc"], float) for r in m)
    assert api_run.best_acc == pytest.approx(max(r["val_acc"] for r in m), abs=1e-6)
    assert api_run.config.seed == 3 and api_run.config.model.backbone == "timm:test_resnet"
    assert api_run.classes == ["n00000000", "n00000001", "n00000002"]
    assert api_run.names[0] == "class0"
    assert not api_run.model.training


def test_run_predict_inputs_equal_cli_predict(runs, tree, tmp_path, capsys):
    run, _ = runs
    files = sorted((tree / "test" / "images").iterdir())
    out = tmp_path / "p.csv"
    assert main(["predict", str(run.dir), *map(str, files), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        cli = list(csv.DictReader(f))
    by_path = run.predict([str(f) for f in files])
    by_folder = run.predict(tree / "test" / "images")
    pil = [Image.open(f) for f in files]
    by_pil = run.predict(pil)
    arrays = [np.asarray(p.convert("RGB")) for p in pil]
    by_array = run.predict(arrays)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    by_tensor = run.predict(batch)
    by_float = run.predict(batch.float())
    assert [p.file for p in by_path] == [r["file"] for r in cli] == [p.file for p in by_folder]
    for preds in (by_path, by_folder, by_pil, by_array, by_tensor, by_float):
        assert [p.wnid for p in preds] == [r["wnid"] for r in cli]
        assert [p.prob for p in preds] == pytest.approx([float(r["prob"]) for r in cli], abs=1e-5)
        assert [" ".join(c for c, _ in p.top5) for p in preds] == [r["top5"] for r in cli]
    assert by_path[0].name == dict(zip(run.classes, run.names))[by_path[0].wnid]
    assert sum(p for _, p in by_path[0].top5) == pytest.approx(1.0, abs=1e-5)  # 3 classes: the top 5 is all
    assert by_path[0].top5[0] == (by_path[0].wnid, pytest.approx(by_path[0].prob))


def test_run_evaluate_equals_cli_evaluate(runs, capsys):
    run, cli_dir = runs
    res = run.evaluate("val")
    assert set(res) == {"top1", "top5", "loss", "images", "temperature", "nll_before", "nll_after", "ece_before",
                        "ece_after"} and res["images"] == 6
    capsys.readouterr()
    assert main(["evaluate", str(run.dir)]) == 0
    line = capsys.readouterr().out
    m = re.search(r"top-1 ([\d.]+)%  top-5 ([\d.]+)%  loss ([\d.]+)", line)
    assert m, line
    assert float(m.group(1)) == pytest.approx(100 * res["top1"], abs=0.006)
    assert float(m.group(2)) == pytest.approx(100 * res["top5"], abs=0.006)
    assert float(m.group(3)) == pytest.approx(res["loss"], abs=6e-5)
    assert res["top1"] == pytest.approx(run.best_acc)  # best.pt is the best epoch


def test_tta_averages_views_and_reports_both(runs):
    run, _ = runs
    plain, tta = run.evaluate("val"), run.evaluate("val", tta=True)
    assert plain["images"] == tta["images"] == 6
    assert 0.0 <= tta["top1"] <= 1.0 and tta["loss"] > 0
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    p1 = [p.prob for p in run.predict(x)]
    p2 = [p.prob for p in run.predict(x, tta=True)]
    assert p1 != p2  # the shifted views change the average


def test_train_refuses_a_folder_with_another_run_and_bad_nproc(runs, tree):
    run, _ = runs
    with pytest.raises(tt.UserError, match="holds a different run"):
        tt.train("vgg16-paper", tree, out=run.dir, overrides={**TINY, "seed": 9}, verbose=False)
    with pytest.raises(tt.UserError, match="batch_size 15 does not divide among 2 processes"):
        tt.train("vgg16-paper", tree, out=run.dir / "new", overrides={**TINY, "phases.*.batch_size": 15}, nproc=2)
    assert not (run.dir / "new").exists()


def test_create_model_and_listings():
    assert "vgg16" in tt.list_backbones() and "efficientnet_lite0" in tt.list_backbones()
    assert {"vgg16-paper", "demo"} <= set(tt.list_recipes())
    m = tt.create_model("timm:test_resnet", 7, head="pool", input_size=32)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_load_names_the_missing_folder(tmp_path):
    with pytest.raises(Exception, match="no such run folder"):
        tt.load(tmp_path / "nope")


def test_readme_example_runs(tree, tmp_path, monkeypatch):
    """The README's worked example in Python ("### From Python"), run as written but on the small generated tree
    instead of the digits."""
    text = README.read_text()
    section = re.search(r"^### From Python\n(.*?)(?=^#)", text, re.S | re.M)
    assert section, "README has no '### From Python' section"
    block = re.search(r"```python\n(import tinytransfer as tt\n.*?)```", section.group(1), re.S)
    assert block, "README's From Python section has no example starting with 'import tinytransfer as tt'"
    code = block.group(1).replace('"data/digits', '"' + str(tree))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert isinstance(ns["run"], tt.Run) and (tmp_path / "runs" / "digits" / "report.html").is_file()


def test_piped_run_logs_a_few_lines_an_epoch(tree, tmp_path):
    """Output to a pipe: no progress-bar frames, one line an epoch plus set-up and finish lines."""
    out = tmp_path / "piped"
    cmd = [sys.executable, "-m", "tinytransfer", "train", "--recipe", "vgg16-paper", "--data", str(tree),
           "--out", str(out), "--no-finish", *_sets({**TINY, "phases.*.epochs": 2})]
    env = {**os.environ, "PYTHONPATH": str(Path(tt.__file__).parents[1])}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    epochs = [line for line in lines if re.match(r"phase +\d+ epoch +\d+ step", line)]
    assert len(epochs) == 6
    assert len(lines) <= 3 * 6 + 6, text  # an epoch line, at most two phase-start lines a phase, set-up, finish
    assert lines[-1].startswith("done: best val accuracy")
    q = subprocess.run([*cmd, "--quiet", "--force", "--set", "phases.*.epochs=1"], capture_output=True, text=True, env=env, timeout=300)
    assert q.returncode == 0 and q.stderr.strip() == "", q.stderr
    assert [line for line in q.stdout.splitlines() if line.strip()] == [q.stdout.strip()]
    assert q.stdout.startswith("done: best val accuracy")


def test_demo_trains_the_demo_recipe_without_the_flip_on_digits(tmp_path, monkeypatch):
    from tinytransfer import api
    from tinytransfer.config import load_recipe
    from tinytransfer.data import sources
    from tinytransfer.run import resolve_config

    calls = []
    monkeypatch.setattr(sources, "build_demo_dataset", lambda d, **k: str(tmp_path / "digits"))
    monkeypatch.setattr(api, "train", lambda recipe, root, out, overrides, **kw: calls.append((recipe, overrides)))
    api.demo(tmp_path / "digits", tmp_path / "run")
    api.demo(tmp_path / "digits", tmp_path / "run", ["data.augment=flip", "phases.0.epochs=1"])
    shipped = resolve_config(load_recipe("demo"))
    assert shipped.data.augment == "keras"  # the recipe, for photos, mirrors
    plain = resolve_config(calls[0][0], tmp_path, calls[0][1])
    assert plain.data.augment == "keras-noflip"  # digits do not
    assert plain.phases == shipped.phases and plain.model == shipped.model  # otherwise the recipe as shipped
    user = resolve_config(calls[1][0], tmp_path, calls[1][1])
    assert user.data.augment == "flip" and user.phases[0].epochs == 1  # the user's overrides win


def test_api_misuse_gives_one_clear_error(runs, tree):
    """Each was an IndexError, a TypeError, a silent NaN or a silent wrong answer (docs/resume.md lists them)."""
    run, _ = runs
    with pytest.raises(tt.UserError, match="the test split is unlabelled"):
        run.evaluate("test")
    with pytest.raises(ValueError, match=r"image 0: an array must be \(H, W, 3\) uint8 with H, W >= 1"):
        run.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        run.predict(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="lies within 0..1: multiply it by 255"):
        run.predict(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert len(run.predict(255 * torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))) == 1
    with pytest.raises(ValueError, match="a list of them, got int"):
        run.predict(3)
    with pytest.raises(tt.UserError, match=r"got the string 'phases.0.epochs=1' \(write \['phases.0.epochs=1'\]\)"):
        tt.train("vgg16-paper", tree, overrides="phases.0.epochs=1")
    with pytest.raises(tt.UserError, match="which='nosuch': expected 'best' or 'last'"):
        tt.load(run.dir, which="nosuch")
