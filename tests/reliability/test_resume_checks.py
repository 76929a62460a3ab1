"""``--resume`` refuses what does not match the run (another run's last.pt, changed data, settings that cannot change)
in one line, accepts the overrides that can still apply and records them in config.yaml (docs/resume.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tinytransfer.cli import main
from tinytransfer.config import ConfigError, from_dict
from tinytransfer.runs.checkpoint import load_checkpoint, save_checkpoint
from tinytransfer.training.resumecheck import changed_settings, check_changes

from ._util import rows, sets

QUICK = ["phases.*.epochs=1", "max_steps_per_epoch=2"]


def _train(data: Path, out: Path, *extra: str, argv: tuple[str, ...] = ()) -> int:
    return main(["train", "--recipe", "vgg16-paper", "--data", str(data), "--out", str(out), "--quiet", "--no-finish",
                 "--seed", "3", *argv, *sets([*QUICK, *extra])])


def _resume(out: Path, *argv: str) -> int:
    return main(["train", "--resume", str(out), "--quiet", "--no-finish", *argv])


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytransfer: error: "), err
    return err[0]


def _folders(tree: Path, root: Path) -> Path:
    """The run tree's train images as one folder per class (c0, c1, c2): the layout whose labels are sorted names."""
    for k, wnid in enumerate(sorted(p.name for p in (tree / "train").iterdir())):
        shutil.copytree(tree / "train" / wnid / "images", root / f"c{k}")
    return root


@pytest.fixture
def folders(run_tree: Path, tmp_path: Path) -> Path:
    return _folders(run_tree, tmp_path / "folders")


def test_resume_refuses_a_renamed_class_folder(folders: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(folders, out, "data.holdout_per_class=4") == 0
    (folders / "c0").rename(folders / "c9")  # sorted names: every label would shift by one
    capsys.readouterr()
    assert _resume(out) == 2
    line = _error(capsys)
    assert "'c0' is gone and 'c9' is new" in line and "resume refused" in line, line


def test_resume_refuses_an_added_class_in_one_line(folders: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(folders, out, "data.holdout_per_class=4") == 0
    shutil.copytree(folders / "c0", folders / "c3")  # was a size-mismatch traceback
    capsys.readouterr()
    assert _resume(out) == 2
    assert "4 classes, was 3 (added 'c3')" in _error(capsys)


@pytest.mark.parametrize("mode", ["holdout", "official"])  # class folders without val/ hold out either way
def test_resume_refuses_an_added_image_in_holdout_mode(folders: Path, tmp_path: Path, capsys, mode: str) -> None:
    out = tmp_path / "run"
    assert _train(folders, out, "data.holdout_per_class=4", f"data.val_mode={mode}") == 0
    shutil.copy(folders / "c1" / sorted(p.name for p in (folders / "c1").iterdir())[0], folders / "c1" / "0000.JPEG")
    capsys.readouterr()
    assert _resume(out) == 2
    line = _error(capsys)
    assert "the val split has other files" in line and "held-out validation images would move" in line, line


def test_resume_refuses_another_runs_last_pt(run_tree: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(run_tree, a) == 0 and _train(run_tree, b) == 0  # the same recipe, data and seed: other runs
    shutil.copy(b / "last.pt", a / "last.pt")
    capsys.readouterr()
    assert _resume(a) == 2
    line = _error(capsys)
    assert f"{a / 'last.pt'}: belongs to another run" in line, line


def test_old_checkpoints_without_the_new_keys_resume_and_get_a_run_id(run_tree: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """A run written before run_id/data_id existed (and its dataset moved since: --data) still resumes."""
    out, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(run_tree, tmp_path / "data")
    assert _train(tmp_path / "data", out, "phases.2.epochs=2") == 0
    (tmp_path / "data").rename(moved)
    last = load_checkpoint(out / "last.pt")
    assert last["run_id"] and last["data_id"]["train"]["images"] == 48
    del last["run_id"], last["data_id"]
    last["phase"], last["phase_epoch"], last["epoch"] = 2, 1, 3  # one epoch of phase 3 left
    save_checkpoint(last, out / "last.pt")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    del cfg["run_id"]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert _resume(out, "--data", str(moved)) == 0, capsys.readouterr().err
    run_id = yaml.safe_load((out / "config.yaml").read_text())["run_id"]
    assert run_id and load_checkpoint(out / "last.pt")["run_id"] == run_id


def test_nan_stopped_run_continues_with_a_lower_lr_recorded_in_config_yaml(run_tree: Path, tmp_path: Path,
                                                                          capsys) -> None:
    out = tmp_path / "run"
    assert _train(run_tree, out, "phases.1.lr_policy=constant", "phases.1.lr_max=1e30") == 2
    assert "loss became" in _error(capsys)
    assert [r["epoch"] for r in rows(out)] == ["1"]
    assert _resume(out, "--set", "phases.1.lr_max=1e-3") == 0, capsys.readouterr().err
    assert [r["epoch"] for r in rows(out)] == ["1", "2", "3"]
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows(out))  # finite, no NaN
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["phases"][1]["lr_max"] == 1e-3
    assert cfg["resumed_with"] == [{"epoch": 2, "set": {"phases.1.lr_max": 1e-3}, "was": {"phases.1.lr_max": 1e30}}]
    assert load_checkpoint(out / "last.pt")["config"]["phases"][1]["lr_max"] == 1e-3


@pytest.mark.parametrize("argv, words", [
    (["--seed", "4"], "--seed cannot apply with --resume"),
    (["--recipe", "demo"], "--recipe cannot apply with --resume"),
    (["--out", "elsewhere"], "--out cannot apply with --resume"),
    (["--set", "model.backbone=vgg16"], "--set model.backbone: cannot change on --resume"),
    (["--set", "phases.0.lr_max=1e-2"], "--set phases.0.lr_max: phase 1 (frozen base) has finished"),
    (["--set", "phases.*.epochs=2"], "--set phases.0.epochs: phase 1 (frozen base) has finished"),
])
def test_resume_refuses_options_that_cannot_apply(run_tree: Path, tmp_path: Path, capsys, argv, words) -> None:
    out = tmp_path / "run"
    assert _train(run_tree, out, "phases.1.epochs=3") == 0
    (out / "last.pt").replace(out / "done.pt")
    last = load_checkpoint(out / "done.pt")
    last["phase"], last["phase_epoch"], last["epoch"], last["step"] = 1, 1, 2, 2  # under way in phase 2
    save_checkpoint(last, out / "last.pt")
    before = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert _resume(out, *argv) == 2
    assert words in _error(capsys)
    assert (out / "config.yaml").read_text() == before


def test_check_changes_allows_what_can_still_apply() -> None:
    cfg = from_dict({"phases": [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 3}, {"name": "c"}]})
    under_way = {"phase": 1, "phase_epoch": 2, "step": 10}

    def check(sets: dict, ckpt: dict = under_way) -> None:
        raw = yaml.safe_load(yaml.safe_dump({"phases": [{"name": p.name, "epochs": p.epochs} for p in cfg.phases]}))
        for key, value in sets.items():
            _, i, name = key.split(".")
            raw["phases"][int(i)][name] = value
        check_changes(changed_settings(cfg, from_dict(raw)), from_dict(raw), ckpt)

    check({"phases.1.lr_max": 1e-4, "phases.1.lr_min": 1e-5, "phases.1.patience": 2, "phases.1.epochs": 5})
    check({"phases.2.optimizer": "sgd", "phases.2.weight_decay": 1e-4, "phases.2.train": "head"})  # not started
    check({"phases.1.weight_decay": 0.1}, {"phase": 1, "phase_epoch": 0, "step": 0})  # starts at the resume
    with pytest.raises(ConfigError, match=r"phases.1.weight_decay: phase 2 \(b\) is under way \(2 epochs done\)"):
        check({"phases.1.weight_decay": 0.1})
    with pytest.raises(ConfigError, match="phase 2 .b. has already run 2 epochs"):
        check({"phases.1.epochs": 1})
    device = from_dict({"phases": [{"name": "a"}], "device": "cpu", "data": {"root": "/x", "workers": 1}})
    check_changes(changed_settings(from_dict({"phases": [{"name": "a"}]}), device), device, under_way)
    with pytest.raises(ConfigError, match="--set seed: cannot change on --resume"):
        check_changes({"seed": (0, 1)}, device, under_way)
