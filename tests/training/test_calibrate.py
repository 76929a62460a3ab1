"""Temperature scaling: the fit recovers a known over/under-confidence, ECE and NLL at their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from tinytransfer.training.calibrate import calibration_summary, ece, fit_temperature, nll, reliability


def _synthetic(scale: float, n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z) (so z is perfectly calibrated), returned with logits z * scale: a network that
    is over-confident by ``scale`` (> 1) or under-confident (< 1). The right temperature is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    return z * scale, y


@pytest.mark.parametrize("scale", [3.0, 0.4, 1.0])
def test_fit_recovers_a_known_temperature_and_lowers_ece(scale):
    logits, y = _synthetic(scale)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(scale, rel=0.05)
    assert nll(logits, y, t) <= nll(logits, y, 1.0) + 1e-12
    assert nll(logits, y, t) <= min(nll(logits, y, t * 1.05), nll(logits, y, t / 1.05))  # a minimum
    if scale != 1.0:
        assert ece(logits, y, t) < 0.04 and ece(logits, y, 1.0) > 0.1
    assert torch.equal((logits / t).argmax(dim=1), logits.argmax(dim=1))  # top-1 unchanged


def test_under_confident_network_gets_a_temperature_below_one():
    logits, y = _synthetic(0.5)
    s = calibration_summary(logits, y, fit_temperature(logits, y))
    assert s["temperature"] < 1
    assert s["before"]["mean_confidence"] < s["top1"]  # under-confident before
    assert s["after"]["ece"] < s["before"]["ece"] and s["after"]["nll"] < s["before"]["nll"]


def test_ece_and_reliability_by_hand():
    # top-1 probabilities 0.9, 0.9 (one right), 0.6 (right), 0.7 (wrong): bins (13/15, 14/15], (8/15, 9/15], (10/15, 11/15]
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1])
    logits = p.log()
    rel = reliability(logits, y)
    filled = [r for r in rel if r["count"]]
    assert [(r["count"], r["accuracy"]) for r in filled] == [(1, 1.0), (1, 0.0), (2, 0.5)]
    assert sum(r["count"] for r in rel) == 4 and len(rel) == 15
    want = (2 * abs(0.5 - 0.9) + abs(1.0 - 0.6) + abs(0.0 - 0.7)) / 4
    assert ece(logits, y) == pytest.approx(want)
    assert nll(logits, y) == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.3)) / 4)


def test_shapes_are_checked_and_empty_input_fits_one():
    with pytest.raises(ValueError, match="logits must be"):
        fit_temperature(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    assert fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 1.0
