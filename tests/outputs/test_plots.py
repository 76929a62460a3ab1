"""plots.py: metrics.csv parsing and its errors, Table 1 values from a hand-written run (three phases, one stopped
early), the LR rebuilt per iteration, and every figure written as a valid PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tinytransfer.outputs import plots
from tinytransfer.runs import metricsfile

HEADER = "phase,epoch,step,lr,train_loss,train_acc,train_top5,val_loss,val_acc,val_top5,seconds,img_s\n"
# 4 iterations an epoch; lr = the LR of each epoch's last iteration. Phase 1: epochs 1-4 (of 4).
# Phase 2: epochs 5-7, stopped early (5 planned). Phase 3: epochs 8-9 (of 2), constant LR.
METRICS = HEADER + """\
1,1,4,0.00035,3.2,0.10,0.30,3.0,0.10,0.35,10.5,60.1
1,2,8,0.000516667,2.8,0.20,0.40,2.7,0.20,0.45,10.0,61.0
1,3,12,0.000183333,2.5,0.30,0.50,2.4,0.30,0.55,10.2,62.0
1,4,16,0.00035,2.3,0.35,0.55,2.5,0.25,0.50,10.1,61.5
2,5,4,2.875e-05,2.0,0.45,0.65,2.0,0.40,0.70,20.0,30.2
2,6,8,5.375e-05,1.8,0.50,0.70,1.7,0.55,0.80,20.1,30.0
2,7,12,4.125e-05,1.7,0.55,0.72,1.8,0.50,0.78,19.9,30.1
3,8,4,1e-06,1.6,0.60,0.75,1.6,0.56,0.81,20.0,30.0
3,9,8,1e-06,1.5,0.62,0.77,1.5,0.58,0.82,20.2,29.9
"""
CONFIG = {
    "name": "paper-mini",
    "model": {"backbone": "vgg16", "head": "paper"},
    "data": {"root": "/data/tiny-imagenet-200", "val_mode": "holdout"},
    "phases": [
        {"name": "frozen base", "epochs": 4, "train": "head", "optimizer": "adam", "lr_policy": "triangular",
         "lr_min": 1e-4, "lr_max": 6e-4, "step_size": 6, "batch_size": 64},
        {"name": "fine-tune all", "epochs": 5, "train": "all", "optimizer": "adam", "lr_policy": "triangular",
         "lr_min": 1e-5, "lr_max": 6e-5, "step_size": 0, "batch_size": 64, "patience": 1},  # 0 = two epochs
        {"name": "low LR", "epochs": 2, "train": "all", "optimizer": "adam", "lr_policy": "constant",
         "lr_min": 1e-7, "lr_max": 1e-6, "step_size": 0, "batch_size": 64},
    ],
}


def write_run(run_dir: Path, metrics: str = METRICS, config: dict | None = CONFIG) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").write_text(metrics)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_dir


def assert_png(path: str | Path) -> None:
    p = Path(path)
    assert p.is_file() and p.stat().st_size > 0, p
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    with Image.open(p) as im:
        im.verify()
    with Image.open(p) as im:
        assert im.size[0] > 100 and im.size[1] > 100


# ---- metrics.csv ---------------------------------------------------------------------------------------------------


def test_read_metrics_types_and_order(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    rows = metricsfile.read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 10))
    r = rows[5]
    assert (r["phase"], r["epoch"], r["step"]) == (2, 6, 8)
    assert all(isinstance(r[k], int) for k in ("phase", "epoch", "step"))
    assert r["val_acc"] == pytest.approx(0.55) and isinstance(r["img_s"], float)
    # An empty cell (no validation split) reads as NaN.
    lines = METRICS.splitlines()
    lines[1] = "1,1,4,0.0004,3.2,0.10,0.30,,,,10.5,60.1"
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert math.isnan(metricsfile.read_metrics(run / "metrics.csv")[0]["val_acc"])


@pytest.mark.parametrize("text,match", [
    (HEADER + "1,1,4,0.0001,3.2,0.1,0.3,3.0,oops,0.35,10.5,60.1\n", r"metrics\.csv: line 2: column val_acc"),
    (HEADER + "1,1,4,0.0001,3.2,0.1,0.3,3.0,0.1,0.35,10.5,60.1\n1,2,8,0.0001,3.2\n",
     r"metrics\.csv: line 3: expected 12"),
    (HEADER + "1,1.5,4,0.0001,3.2,0.1,0.3,3.0,0.1,0.35,10.5,60.1\n", r"line 2: column epoch: expected an integer"),
    (HEADER + "0,1,4,0.0001,3.2,0.1,0.3,3.0,0.1,0.35,10.5,60.1\n", r"line 2: phase and epoch must be >= 1"),
    ("phase,epoch,step,lr\n1,1,4,0.1\n", r"metrics\.csv: line 1: missing column\(s\) train_loss"),
    ("", r"metrics\.csv: empty file"),
])
def test_malformed_metrics_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "metrics.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        metricsfile.read_metrics(tmp_path / "metrics.csv")


# ---- Table 1 -------------------------------------------------------------------------------------------------------


def test_table1_values(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    table = metricsfile.table1(run)
    assert [(t["phase"], t["name"], t["train"]) for t in table] == [
        (1, "frozen base", "head"), (2, "fine-tune all", "all"), (3, "low LR", "all")]
    assert [(t["start_epoch"], t["end_epoch"], t["planned_epochs"]) for t in table] == [(0, 4, 4), (4, 7, 5), (7, 9, 2)]
    assert [t["max_val_acc"] for t in table] == pytest.approx([0.30, 0.55, 0.58])
    assert [t["best_epoch"] for t in table] == [3, 6, 9]
    assert [(t["base_lr"], t["max_lr"]) for t in table] == [(1e-4, 6e-4), (1e-5, 6e-5), (1e-6, 1e-6)]
    assert [t["step_size"] for t in table] == [6, 8, None]  # 0 in the recipe = two epochs of 4 iterations

    md = (run / "table1.md").read_text()
    assert "| 1 | frozen base | frozen | triangular | 1e-4 | 6e-4 | 6 | 0 | 4 | 30.00 % |" in md
    assert "| 2 | fine-tune all | unfrozen | triangular | 1e-5 | 6e-5 | 8 | 4 | 7 | 55.00 % |" in md
    assert "| 3 | low LR | unfrozen | constant | 1e-6 | 1e-6 | – | 7 | 9 | 58.00 % |" in md
    assert "Phase 2 ran 3 of 5 planned epochs (early stopping)." in md

    with open(run / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(metricsfile.TABLE1_COLUMNS)
    assert [(r["start_epoch"], r["end_epoch"], r["step_size"]) for r in rows] == [
        ("0", "4", "6"), ("4", "7", "8"), ("7", "9", "")]
    assert [float(r["max_val_acc"]) for r in rows] == pytest.approx([0.30, 0.55, 0.58])
    assert [float(r["base_lr"]) for r in rows] == pytest.approx([1e-4, 1e-5, 1e-6])


def test_table1_without_validation_or_config_phase(tmp_path: Path) -> None:
    metrics = HEADER + "1,1,10,0.001,2.0,0.5,0.8,,,,5.0,100\n2,2,10,0.001,1.0,0.6,0.9,,,,5.0,100\n"
    run = write_run(tmp_path / "run", metrics, {"name": "x", "phases": [{"name": "only", "epochs": 1,
                                                                            "lr_policy": "constant", "lr_max": 1e-3}]})
    table = metricsfile.table1(run)
    assert [t["max_val_acc"] for t in table] == [None, None]
    assert table[1]["name"] == "phase 2" and (table[1]["start_epoch"], table[1]["end_epoch"]) == (1, 2)
    assert "| 1 | only |" in (run / "table1.md").read_text()


# ---- learning rate -------------------------------------------------------------------------------------------------


def test_lr_curve_rebuilds_every_iteration(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    spans = metricsfile.phase_spans(metricsfile.read_metrics(run / "metrics.csv"), CONFIG)
    assert [(s.iter_offset, s.steps, s.steps_per_epoch) for s in spans] == [(0, 16, 4), (16, 12, 4), (28, 8, 4)]
    xs, ys = plots.lr_curve(spans)
    assert xs.tolist() == list(range(36))
    lr = dict(zip(xs.tolist(), ys.tolist()))
    # Phase 1: triangular 1e-4 → 6e-4, half cycle 6 iterations.
    assert lr[0] == pytest.approx(1e-4) and lr[3] == pytest.approx(3.5e-4) and lr[6] == pytest.approx(6e-4)
    assert lr[12] == pytest.approx(1e-4) and lr[15] == pytest.approx(3.5e-4)
    # Phase 2 restarts at its own base; half cycle 8 (two epochs of 4 iterations).
    assert lr[16] == pytest.approx(1e-5) and lr[16 + 8] == pytest.approx(6e-5) and lr[16 + 4] == pytest.approx(3.5e-5)
    # Phase 3: constant at lr_max.
    assert all(lr[k] == pytest.approx(1e-6) for k in range(28, 36))
    # The epoch-end LR logged in metrics.csv is the rebuilt LR of each epoch's last iteration.
    for sp in spans:
        for r in sp.rows:
            assert lr[sp.iter_offset + r["step"] - 1] == pytest.approx(r["lr"], rel=1e-5)

    seen = []

    def flat(step: int, phase: dict) -> float:
        seen.append((step, phase["name"], phase["steps_per_epoch"]))
        return 0.5

    xs, ys = plots.lr_curve(spans, flat)
    assert np.all(ys == 0.5) and seen[0] == (0, "frozen base", 4) and seen[-1] == (7, "low LR", 4)


def test_default_lr_matches_the_schedule_module() -> None:
    schedule = pytest.importorskip("tinytransfer.training.schedule")
    config = pytest.importorskip("tinytransfer.config")
    spe = 7
    for fields in ({"lr_policy": "triangular", "lr_min": 1e-4, "lr_max": 6e-4, "step_size": 5},
                   {"lr_policy": "triangular", "lr_min": 1e-5, "lr_max": 6e-5, "step_size": 0},
                   {"lr_policy": "onecycle", "lr_min": 1e-4, "lr_max": 3e-3, "epochs": 3},
                   {"lr_policy": "constant", "lr_min": 1e-4, "lr_max": 3e-3}):
        phase = config.PhaseConfig(**fields)
        as_dict = {**config.to_dict(phase), "steps_per_epoch": spe}
        for step in range(40):
            assert plots.default_lr(step, as_dict) == pytest.approx(schedule.lr_at(step, phase, spe), rel=1e-12)


# ---- figures -------------------------------------------------------------------------------------------------------


def test_plot_curves_writes_three_pngs(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    paths = plots.plot_curves(run)
    assert [Path(p).name for p in paths] == [plots.ACCURACY_PNG, plots.LOSS_PNG, plots.LR_PNG]
    for p in paths:
        assert_png(p)
    assert not list(run.glob("*.tmp*"))
    # A run without config.yaml still gets its curves; a run with no epochs gets none.
    bare = write_run(tmp_path / "bare", config=None)
    assert len(plots.plot_curves(bare)) == 3
    assert plots.plot_curves(write_run(tmp_path / "empty", HEADER)) == []


def test_error_analysis_and_network_figures(tmp_path: Path) -> None:
    pairs = [{"true": "school bus", "pred": "trolleybus", "count": 12}, {"true": "tabby", "pred": "Egyptian cat",
                                                                      "count": 9}]
    per_class = [{"class": f"n{k:08d}", "name": f"class {k}", "acc": k / 12, "n": 50} for k in range(12)]
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    written = [
        plots.plot_confusion_pairs(pairs, tmp_path / "pairs.png"),
        plots.plot_per_class(per_class, tmp_path / "per_class.png"),
        plots.mistakes_gallery(images, ["a"] * 5, ["b"] * 5, [0.9, 0.8, 0.7, 0.6, 0.5], tmp_path / "gallery.png"),
        plots.plot_feature_maps({"conv1": torch.randn(20, 16, 16), "conv3": torch.randn(4, 4, 4)},
                                tmp_path / "featuremaps.png", max_channels=16),
        plots.plot_gradcam(images[0], {"top prediction": torch.rand(64, 64), "true class": torch.rand(8, 8)},
                           tmp_path / "gradcam.png"),
    ]
    for p in written:
        assert_png(p)
    with pytest.raises(ValueError, match="5 images but 4 true names"):
        plots.mistakes_gallery(images, ["a"] * 4, ["b"] * 5, [0.5] * 5, tmp_path / "x.png")
