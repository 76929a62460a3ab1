"""auto_lr: the bound-picking rule on synthetic loss curves, and a run that measures its bounds, records them and
trains exactly as a run given those bounds by hand (the range test leaves no trace in the model or the RNGs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from conftest import write_tiny_tree

import tinytransfer as tt
from tinytransfer.cli import main
from tinytransfer.training import autolr
from tinytransfer.training.autolr import pick_bounds

LRS = np.logspace(-7, 0, 141)  # 20 points a decade
X = np.log10(LRS)


def _smooth(loss: np.ndarray) -> np.ndarray:
    """lrfind's bias-corrected moving average (factor 0.9)."""
    avg, out = 0.0, []
    for i, v in enumerate(loss):
        avg = 0.9 * avg + 0.1 * v
        out.append(avg / (1 - 0.9 ** (i + 1)))
    return np.array(out)


def test_rule_takes_the_steepest_descent_when_the_minimum_is_far():
    # a sigmoid fall centred at 1e-4, flat to 1e-1, then divergence: steepest at 1e-4, minimum near 1e-1
    loss = 2.3 - 1.5 / (1 + np.exp(-4 * (X + 4))) + 20 * np.clip(X + 1, 0, None) ** 2
    pick = pick_bounds(LRS, loss, ratio=1 / 6)
    assert pick["ok"] and pick["steepest"] == pytest.approx(1e-4, rel=0.13)
    assert pick["min_loss"] > 1e-2 and pick["lr_max"] == pick["steepest"]
    assert pick["lr_min"] == pytest.approx(pick["lr_max"] / 6)


def test_rule_stays_a_decade_below_a_near_minimum():
    # the fall is steepest at 1e-3 but the loss turns up right after 2e-3: lr_max = min_loss / 10
    loss = 2.3 - 1.5 / (1 + np.exp(-4 * (X + 3))) + 50 * np.clip(X + 2.7, 0, None) ** 2
    pick = pick_bounds(LRS, loss, ratio=0.01)
    assert pick["ok"] and pick["steepest"] == pytest.approx(1e-3, rel=0.13)
    assert pick["min_loss"] < 1e-2 and pick["lr_max"] == pytest.approx(pick["min_loss"] / 10)
    assert pick["lr_min"] == pytest.approx(pick["lr_max"] / 100)


def test_rule_on_a_smoothed_noisy_curve_as_the_range_test_records_it():
    rng = np.random.default_rng(0)
    keep = X <= -0.5  # the range test stops once the smoothed loss is 4x its best
    loss = 2.3 - 1.5 / (1 + np.exp(-4 * (X + 4))) + 20 * np.clip(X + 1, 0, None) ** 2
    s = _smooth((loss + rng.normal(0, 0.02, len(X)))[keep])
    pick = pick_bounds(LRS[keep], s)
    # the moving average lags a few points behind: the steepest smoothed fall sits a little above 1e-4
    assert pick["ok"] and 1e-4 <= pick["steepest"] <= 5e-4 and pick["lr_max"] <= pick["min_loss"] / 10


def test_rule_refuses_a_curve_without_descent():
    assert not pick_bounds(LRS, np.linspace(1, 2, len(X)))["ok"]  # rising from the start
    assert not pick_bounds(LRS[:3], [3.0, 2.0, 1.0])["ok"]  # too few points


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tiny_tree(tmp_path_factory.mktemp("autolr") / "tree", n_classes=3, train_per_class=10, n_val=6,
                           n_test=4, size=32, n_odd_size=0)


TINY = {
    "model.backbone": "timm:test_resnet", "model.head": "pool", "model.pretrained": False, "model.input_size": 32,
    "phases.*.epochs": 1, "phases.*.batch_size": 16, "phases.*.step_size": 2, "data.workers": 1,
    "data.val_mode": "official", "eval_batch_size": 32,
}


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("seconds", "img_s")} for r in csv.DictReader(f)]


def test_auto_lr_run_records_its_bounds_and_trains_as_if_hand_set(tree, tmp_path):
    sets = {**TINY, "phases.1.auto_lr": True, "phases.1.auto_lr_steps": 12}
    run = tt.train("vgg16-paper", tree, out=tmp_path / "auto", overrides=sets, seed=2, deterministic=True,
                   verbose=False)
    rec = json.loads((run.dir / "auto_lr.json").read_text())
    assert list(rec) == ["2"]  # only phase 2 asked for it
    r = rec["2"]
    assert r["recipe"] == [1e-5, 6e-5] and r["steps"] <= 12 and len(r["curve"]["lr"]) == r["steps"]
    lo, hi = r["chosen"]
    assert hi == pytest.approx(6 * lo)  # the recipe's shape (ratio 1/6) kept
    if r["measured"]:
        assert hi == pytest.approx(min(r["steepest"], r["min_loss"] / 10))
    cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert cfg["phases"][1]["lr_min"] == pytest.approx(lo) and cfg["phases"][1]["lr_max"] == pytest.approx(hi)
    assert cfg["phases"][0]["lr_max"] == 6e-4  # untouched
    assert run.checkpoint.config.phases[1].lr_max == pytest.approx(hi)  # checkpoints carry the chosen bounds
    assert "auto_lr" in (run.dir / "report.html").read_text() and "chosen LR" in (run.dir / "report.html").read_text()
    with pytest.raises(tt.UserError, match="already holds this run"):  # measured bounds are still the same run
        tt.train("vgg16-paper", tree, out=tmp_path / "auto", overrides=sets, seed=2, deterministic=True,
                 verbose=False)
    # the same run with the chosen bounds set by hand: identical epochs (weights, BatchNorm, RNGs all put back)
    hand = tt.train("vgg16-paper", tree, out=tmp_path / "hand", seed=2, deterministic=True, verbose=False,
                    finish=False, overrides={**TINY, "phases.1.lr_min": lo, "phases.1.lr_max": hi})
    assert _rows(hand.dir) == _rows(run.dir)


def test_cli_auto_lr_sets_every_phase_and_resume_reuses_the_record(tree, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    sets = [x for k, v in {**TINY, "phases.*.auto_lr_steps": 8}.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--auto-lr", "--quiet",
                 "--no-finish", *sets]) == 0
    rec = json.loads((out / "auto_lr.json").read_text())
    assert sorted(rec) == ["1", "2", "3"]
    cfg = tt.load(out).config
    assert all(p.auto_lr for p in cfg.phases)
    # a phase whose range test is on record is not measured again (a resumed run)
    monkeypatch.setattr(autolr, "lr_range_test", lambda *a, **k: pytest.fail("measured again"))
    again = autolr.auto_lr_phase(None, None, cfg, 2, out, device=None)
    assert again.phases[2].lr_max == pytest.approx(rec["3"]["chosen"][1])
