"""No command overwrites a user's data (issue 20, items 2, 3, 6, 13): demo folders, the run-folder check under the
lock, a fresh start's leftovers, the metrics row after its checkpoint, another host's lock."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

import tinytransfer as tt
from tinytransfer import api
from tinytransfer.cli import main
from tinytransfer.config import from_dict
from tinytransfer.data import sources
from tinytransfer.data.dataset import load_dataset
from tinytransfer.data.decode import DataError
from tinytransfer.fsutil import LockError, PidLock
from tinytransfer.models.backbones import create_model
from tinytransfer.runs import checkpoint as ckpt_mod
from tinytransfer.runs.checkpoint import CheckpointError, load_checkpoint
from tinytransfer.runs.metricsfile import read_metrics
from tinytransfer.runs.runfolder import RunLock
from tinytransfer.training import engine

TINY = "timm:test_resnet"


def _raw(root: Path, epochs: int = 1) -> dict:
    return {"name": "tiny", "data": {"root": str(root), "augment": "none", "workers": 1},
            "model": {"backbone": TINY, "head": "pool", "pretrained": False, "input_size": 32},
            "phases": [{"name": "head", "epochs": epochs, "train": "all", "lr_policy": "constant", "lr_max": 1e-3,
                        "batch_size": 16}],
            "seed": 3, "deterministic": True, "device": "cpu", "eval_batch_size": 32}


def _fit(root: Path, run_dir: Path, raw: dict, **kw) -> engine.TrainState:
    cfg = from_dict(raw)
    torch.manual_seed(cfg.seed)
    data = load_dataset(root, workers=1)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    return engine.fit(model, data, cfg, run_dir, show_progress=False, **kw)


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=2, train_per_class=16, n_val=6, n_test=0, size=32, n_odd_size=0)


# ---- item 2: demo-data and demo never write over a user's folder --------------------------------------------------


def test_demo_data_refuses_a_folder_that_is_not_a_digits_set(tmp_path: Path, capsys) -> None:
    ds = tmp_path / "tiny-imagenet-200"
    ds.mkdir()
    (ds / "wnids.txt").write_text("n01443537\n")
    with pytest.raises(DataError, match="not a digits set written by demo-data.*--force"):
        sources.build_demo_dataset(ds)
    assert main(["demo-data", "--dir", str(ds)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert sorted(p.name for p in ds.iterdir()) == ["wnids.txt"] and (ds / "wnids.txt").read_text() == "n01443537\n"
    # the demo refuses the same folder before training anything
    with pytest.raises(DataError, match="--force"):
        api.demo(ds, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_interrupted_demo_data_folder_is_still_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker is written first (``writing``), so a folder left by an interrupted demo-data is rewritten."""
    ds = tmp_path / "digits"
    real = sources._digit_jpeg
    calls = {"n": 0}

    def dying(img, path):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real(img, path)

    monkeypatch.setattr(sources, "_digit_jpeg", dying)
    with pytest.raises(KeyboardInterrupt):
        sources.build_demo_dataset(ds)
    assert json.loads((ds / ".tinytransfer-demo.json").read_text())["writing"] is True
    monkeypatch.setattr(sources, "_digit_jpeg", lambda img, path: Path(path).write_bytes(b""))  # no need to encode
    sources.build_demo_dataset(ds)  # not refused
    marker = json.loads((ds / ".tinytransfer-demo.json").read_text())
    assert "writing" not in marker and marker["train"] > 1000


def test_demo_never_forces_over_an_existing_run(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"the user's model")
    monkeypatch.setattr(sources, "build_demo_dataset", lambda d, **k: str(tree))
    with pytest.raises(tt.UserError, match="--force"):
        api.demo(tree, run)
    assert (run / "best.pt").read_bytes() == b"the user's model"


# ---- item 3: the check happens under the lock; checkpoints without config.yaml are a run; --force clears -------


def test_checkpoints_without_config_yaml_are_a_run(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"weights")
    with pytest.raises(tt.UserError, match=r"holds a run \(last.pt, no config.yaml\).*--force"):
        tt.train(_raw(tree), tree, run, verbose=False)
    assert (run / "last.pt").read_bytes() == b"weights"
    from tinytransfer.runs.runfolder import new_run_problem

    assert "--force" in new_run_problem(run, from_dict(_raw(tree)))


def test_a_run_that_finished_while_this_one_loaded_data_is_kept(tree: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before loading passes (empty folder); another run finishes there meanwhile; the check under the
    lock refuses, and the other run's checkpoints stay."""
    run = tmp_path / "run"
    other = _raw(tree)
    other["seed"] = 99
    real = api.load_data

    def slow_load(cfg):
        _fit(tree, run, other)  # the other train, start to end, while this one builds its cache
        return real(cfg)

    monkeypatch.setattr(api, "load_data", slow_load)
    with pytest.raises(CheckpointError, match="holds a different run"):
        tt.train(_raw(tree), tree, run, verbose=False, finish=False)
    assert load_checkpoint(run / "last.pt")["config"]["seed"] == 99
    assert len(read_metrics(run / "metrics.csv")) == 1
    assert not (run / ".lock").exists()


def test_force_no_finish_removes_the_previous_runs_outputs(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fit(tree, run, _raw(tree))
    previous = ["report.html", "predictions.csv", "analysis.json", "table1.md", "accuracy.png", "lr.png",
                "featuremaps_val_0.png", "gradcam_val_0.png", "model.onnx", "model.json", "model.torchscript.pt"]
    for name in previous:
        (run / name).write_bytes(b"from the previous run")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"x")
    (run / "notes.txt").write_text("the user's")
    raw = _raw(tree)
    raw["seed"] = 4
    with pytest.raises(CheckpointError, match="holds a different run"):
        _fit(tree, run, raw)  # without force: nothing removed
    assert (run / "report.html").exists()
    _fit(tree, run, raw, force=True)
    left = sorted(p.name for p in run.iterdir())
    assert left == ["best.pt", "config.yaml", "last.pt", "metrics.csv", "notes.txt"], left


# ---- item 6: the metrics row is written after the checkpoint it describes ---------------------------------------


def test_a_failed_best_pt_save_leaves_no_row_that_best_pt_does_not_score(tree: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt_mod.save_checkpoint

    def full_disk(ckpt: dict, path) -> None:
        if Path(path).name == "best.pt":
            raise OSError(28, "No space left on device")
        real(ckpt, path)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", full_disk)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="best.pt"):
        _fit(tree, run, _raw(tree, epochs=2))
    assert not (run / "best.pt").exists()
    rows = read_metrics(run / "metrics.csv") if (run / "metrics.csv").exists() else []
    assert rows == [], "metrics.csv holds an epoch whose weights are not in the folder"


def test_the_row_is_written_after_best_pt_and_before_last_pt(tree: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt → row → last.pt: the row never describes weights not on disk, and a kill before last.pt resumes the
    epoch before, whose truncation drops the row (no gap, no duplicate)."""
    run = tmp_path / "run"
    real = ckpt_mod.save_checkpoint
    seen = []

    def counting(ckpt: dict, path) -> None:
        rows = read_metrics(run / "metrics.csv") if (run / "metrics.csv").exists() else []
        seen.append((Path(path).name, ckpt["epoch"], [r["epoch"] for r in rows]))
        real(ckpt, path)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", counting)
    _fit(tree, run, _raw(tree, epochs=2))
    for name, epoch, rows in seen:
        assert rows == list(range(1, epoch + (name == "last.pt"))), seen


# ---- item 13: the lock records the host; another host's lock is not broken without --force ----------------------


def test_another_hosts_lock_is_refused_without_force(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text(f"{os.getpid() + 1}\n-\nother-machine\n")  # a pid that may well be dead here: irrelevant
    with pytest.raises(LockError, match=r"pid \d+ on host other-machine.*--force"):
        PidLock(lock).acquire()
    assert "other-machine" in lock.read_text()
    with pytest.raises(CheckpointError, match="other-machine"):
        RunLock(tmp_path).acquire()
    taken = RunLock(tmp_path, force=True).acquire()
    assert lock.read_text().split() == [str(os.getpid()), lock.read_text().split()[1], socket.gethostname()]
    taken.release()
    assert not lock.exists()


def test_train_names_force_for_another_hosts_lock(tree: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("12345\n-\nother-machine\n")
    argv = ["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(run), "--quiet", "--no-finish",
            "--set", f"model.backbone={TINY}", "--set", "model.head=pool", "--set", "model.pretrained=false",
            "--set", "model.input_size=32", "--set", "phases.*.epochs=0", "--set", "phases.0.epochs=1",
            "--set", "phases.*.batch_size=16", "--set", "data.workers=1", "--set", "data.val_mode=official"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other-machine" in err[0] and "--force" in err[0], err
    assert main([*argv, "--force"]) == 0
    assert (run / "best.pt").is_file() and not (run / ".lock").exists()
