"""The command line end to end on a few dozen generated images."""

from __future__ import annotations

import csv

import pytest
import yaml

from tinytransfer.cli import main
from tinytransfer.runs.checkpoint import load_checkpoint

TINY_SETS = [
    "model.backbone=timm:test_resnet", "model.head=pool", "model.pretrained=false", "model.input_size=32",
    "phases.*.epochs=1", "phases.*.batch_size=16", "phases.*.step_size=2", "data.workers=1",
    "data.val_mode=official", "eval_batch_size=32",
]


def sets(extra=()):
    out = []
    for s in [*TINY_SETS, *extra]:
        out += ["--set", s]
    return out


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=10, n_val=6, size=32, n_odd_size=0)


def test_train_then_evaluate(tree, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet",
               "--seed", "1", "--no-finish", *sets()])
    assert rc == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["backbone"] == "timm:test_resnet" and cfg["seed"] == 1
    assert cfg["data"]["root"] == str(tree.resolve())
    assert [p["epochs"] for p in cfg["phases"]] == [1, 1, 1]
    assert [p["lr_max"] for p in cfg["phases"]] == [6e-4, 6e-5, 6e-6]  # the recipe's values survive
    with open(out / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    ck = load_checkpoint(out / "best.pt")
    run_id = cfg.pop("run_id")  # the run's identity, beside its configuration, and in every checkpoint
    assert ck["config"] == cfg and ck["run_id"] == run_id
    assert not (out / ".lock").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    line = capsys.readouterr().out
    assert "val: top-1" in line and "(6 images" in line


def test_refuses_a_folder_holding_another_run(tree, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet", "--no-finish"]
    assert main([*base, *sets()]) == 0
    capsys.readouterr()
    assert main([*base, *sets(["seed=5"])]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and "--resume" in err
    assert main([*base, *sets()]) == 2  # the same run again: refused too, resume instead
    assert main([*base, "--force", *sets(["seed=5"])]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 5


def test_resume_of_a_finished_run_changes_nothing(tree, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tree), "--out", str(out), "--quiet", "--no-finish", *sets()]) == 0
    before = (out / "metrics.csv").read_text()
    assert main(["train", "--resume", str(out), "--quiet", "--no-finish"]) == 0
    assert (out / "metrics.csv").read_text() == before


@pytest.mark.parametrize("argv,needle", [
    (["--set", "phases.0.epochs=lots"], "phases.0.epochs: expected an integer"),
    (["--set", "model.backbone=vgg17"], "vgg17"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
])
def test_bad_input_is_one_line(tree, tmp_path, capsys, argv, needle):
    rc = main(["train", "--data", str(tree), "--out", str(tmp_path / "r"), "--quiet", "--no-finish",
               *sets(), *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    intro = text.split("\n\n")[1]  # after the usage line
    assert intro.startswith("Turn an ImageNet-pretrained CNN into a classifier")
    assert "tinytransfer demo" in text and "tinytransfer train --recipe vgg16-paper --data DIR" in text
    assert "parse" not in intro


def test_a_last_batch_of_one_image_trains_and_lr_finds(make_tiny_tree, tmp_path, capsys):
    """65 images at batch 64 with the paper head (BatchNorm1d): the lone last image is folded into the batch
    before it, in training and in the LR range test (BatchNorm cannot train on a batch of one)."""
    tree = make_tiny_tree(n_classes=5, train_per_class=13, n_val=5, n_test=0, size=32, n_odd_size=0)
    small = ["model.backbone=timm:test_resnet", "model.head=paper", "model.pretrained=false", "model.input_size=32",
             "phases.*.epochs=1", "phases.*.batch_size=64", "data.workers=1", "eval_batch_size=64",
             "data.val_mode=official"]
    out = tmp_path / "run"
    assert main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet",
                 "--no-finish", *[x for s in small for x in ("--set", s)]]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "1", "1"]  # one step an epoch: 65 images as one batch
    assert main(["lr-find", "--recipe", "vgg16-paper", "--data", str(tree), "--steps", "3", "--out",
                 str(tmp_path / "lr"), *[x for s in small for x in ("--set", s)]]) == 0
    assert (tmp_path / "lr" / "lr_find.csv").is_file()
