"""Learning-rate schedules as pure functions of the iteration: ``lr_at(step, phase, steps_per_epoch)``.

The engine writes the value into the optimizer's param groups before every step. ``step`` counts iterations
from the start of the phase (0-based), so the cyclical LR continues across epochs inside a phase and restarts
with each phase, as in the report's Table 1.

A time budget may re-plan a running phase's epochs (``training/budget.py``). The schedule then stays the one laid out
on ``phase.lr_epochs`` epochs, and ``phase.lr_knots`` maps the run's epochs onto it piecewise linearly: the part
already trained is unchanged and the rest is compressed (or stretched) to end at the new last epoch, so the LR stays
continuous, still a pure function of the iteration, and still ends where the schedule ends (annealed).
"""

from __future__ import annotations

import dataclasses
import math

from ..config import PhaseConfig, step_size_of

__all__ = ["lr_at", "phase_steps", "range_test_lr", "schedule_epoch", "step_size_of", "triangular"]


def triangular(step: int, base_lr: float, max_lr: float, step_size: int) -> float:
    """Smith's triangular CLR (arXiv 1506.01186); ``step_size`` is half a cycle in iterations."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x)


def phase_steps(phase: PhaseConfig, steps_per_epoch: int) -> int:
    """Iterations in the whole phase if it runs all its epochs."""
    return max(1, phase.epochs * steps_per_epoch)


def schedule_epoch(epoch: float, knots: tuple[float, ...]) -> float:
    """Where (in epochs of the laid-out schedule) the run's ``epoch`` falls: linear between the ``knots``
    ``(e0, s0, e1, s1, ...)`` after an implicit ``(0, 0)``; past the last knot the schedule's end (no knots: itself)."""
    if not knots:
        return epoch
    e0, s0 = 0.0, 0.0
    for e1, s1 in zip(knots[::2], knots[1::2]):
        if epoch <= e1:
            return s0 + (s1 - s0) * (epoch - e0) / (e1 - e0) if e1 > e0 else s1
        e0, s0 = e1, s1
    return s0


def lr_at(step: int, phase: PhaseConfig, steps_per_epoch: int) -> float:
    """Learning rate for iteration ``step`` (0-based, counted within the phase)."""
    if phase.lr_knots:  # a re-planned phase: its iteration on the schedule laid out over lr_epochs
        spe = max(1, steps_per_epoch)  # (iterations done after this one, in epochs: the last one maps to the last)
        step = max(0.0, schedule_epoch((step + 1) / spe, phase.lr_knots) * spe - 1)
        phase = dataclasses.replace(phase, epochs=phase.lr_epochs or phase.epochs, lr_knots=())
    if phase.lr_policy == "constant":
        return phase.lr_max
    if phase.lr_policy == "triangular":
        return triangular(step, phase.lr_min, phase.lr_max, step_size_of(phase, steps_per_epoch))
    if phase.lr_policy == "onecycle":
        # Cosine warm-up from lr_min to lr_max over the first 30 %, then cosine down to lr_min / 100.
        total = phase_steps(phase, steps_per_epoch)
        warm = max(1, int(0.3 * total))
        if step < warm:
            t = step / warm
            return phase.lr_min + (phase.lr_max - phase.lr_min) * (1 - math.cos(math.pi * t)) / 2
        t = min(1.0, (step - warm) / max(1, total - warm))
        end = phase.lr_min / 100
        return end + (phase.lr_max - end) * (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"unknown lr_policy {phase.lr_policy!r}")


def range_test_lr(step: int, num_steps: int, lr_start: float = 1e-7, lr_end: float = 1.0) -> float:
    """Exponential LR range test (lr-find): lr_start at step 0 to lr_end at step num_steps - 1."""
    if num_steps <= 1:
        return lr_start
    return lr_start * (lr_end / lr_start) ** (step / (num_steps - 1))
