"""Planning a run to a time budget (``budget: 5m``, ``train --budget 5m``): pure functions of given costs.

The whole command has ``budget_s`` seconds. It spends them on a start (data cache, model load, the measurement that
:mod:`budgetrun` makes), the epochs of every phase (each at its measured seconds an epoch, training and validation),
and a finish (test predictions, analysis, figures, report). The plan gives each phase ``round(k x its recipe
epochs)`` epochs, at least one, with the one scale ``k`` as large as fits: the recipe's proportions between phases
are kept. Where even one epoch each does not fit, every phase gets one and the plan says it overruns.

At every epoch end :func:`replan` does the same on what is left: the phases already done keep the epochs they ran,
the running phase keeps those it ran (and at least one more where its LR schedule has not ended yet, so it still
ends annealed), and the time left is shared out as before, at the seconds an epoch measured so far. Changing a
running phase's epochs sets its ``lr_knots`` (:func:`fit_schedule`): the LR schedule it was laid out on is kept and
its rest is fitted into the new end (``schedule.lr_at``).

Where the recipe leaves a choice open (``model.input_size: auto`` with ``input_sizes``, ``train: auto`` with
``train_choices``), :func:`choose_largest` takes the largest candidate whose plan still gives every phase at least
its recipe epochs, and the smallest where none does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import PhaseConfig, RunConfig
from .schedule import schedule_epoch

__all__ = [
    "MAX_EPOCHS",
    "capped_epoch_s",
    "choose_largest",
    "fit_schedule",
    "largest_cap",
    "plan_epochs",
    "planned_seconds",
    "replan",
    "with_epochs",
]

MAX_EPOCHS = 10_000  # a phase's epochs are capped here (a budget far beyond what the data needs)


def _epochs_at(k: float, recipe: Sequence[int], floors: Sequence[int], first: int) -> list[int]:
    """Every phase's epochs at scale ``k``: phases before ``first`` (over) and phases of 0 epochs keep their floor."""
    return [f if i < first or e == 0 else min(MAX_EPOCHS, max(f, round(k * e)))
            for i, (e, f) in enumerate(zip(recipe, floors))]


def _cost(epochs: Sequence[int], done: Sequence[int], epoch_s: Sequence[float]) -> float:
    return sum(max(0, n - d) * c for n, d, c in zip(epochs, done, epoch_s))


def plan_epochs(recipe_epochs: Sequence[int], epoch_s: Sequence[float], available_s: float, *,
                done: Sequence[int] | None = None, floors: Sequence[int] | None = None, first: int = 0) -> list[int]:
    """Each phase's epochs, ``round(k x recipe_epochs)`` with the largest scale ``k`` whose epochs still to run fit
    ``available_s`` seconds at ``epoch_s`` seconds an epoch (all floors where not even they fit).

    ``done``: epochs each phase has already run (not paid again; default none); ``floors``: the fewest epochs each
    phase may get (default 1, 0 for a phase of 0 recipe epochs); ``first``: phases before it are over and keep
    their floor."""
    n = len(recipe_epochs)
    done = list(done) if done is not None else [0] * n
    floors = list(floors) if floors is not None else [1 if e > 0 else 0 for e in recipe_epochs]
    fits = lambda k: _cost(_epochs_at(k, recipe_epochs, floors, first), done, epoch_s) <= available_s  # noqa: E731
    lo, hi = 0.0, 1.0
    while fits(hi):
        if all(e == 0 or round(hi * e) >= MAX_EPOCHS for e in recipe_epochs[first:]):
            return _epochs_at(hi, recipe_epochs, floors, first)
        lo, hi = hi, hi * 2
    for _ in range(60):  # the epochs are a step function of k: bisect to its last step that fits
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return _epochs_at(lo, recipe_epochs, floors, first)


def planned_seconds(epochs: Sequence[int], epoch_s: Sequence[float], *, done: Sequence[int] | None = None,
                    fixed_s: float = 0.0) -> float:
    """Seconds the epochs still to run take, plus ``fixed_s``."""
    return fixed_s + _cost(epochs, done if done is not None else [0] * len(epochs), epoch_s)


def capped_epoch_s(epoch_s: Sequence[float], step_s: Sequence[float], steps: Sequence[int],
                   cap: int) -> list[float]:
    """Seconds an epoch of each phase when it takes at most ``cap`` of its ``steps`` training steps (``step_s``
    seconds each); its validation and checkpoints are not cut."""
    return [c - max(0, n - cap) * s for c, s, n in zip(epoch_s, step_s, steps)]


def largest_cap(epochs: Sequence[int], epoch_s: Sequence[float], step_s: Sequence[float], steps: Sequence[int],
                available_s: float, *, done: Sequence[int] | None = None) -> int:
    """The most training steps an epoch may take (``max_steps_per_epoch``) so that the epochs still to run fit
    ``available_s`` seconds (1 where not even one step an epoch fits)."""
    done = list(done) if done is not None else [0] * len(epochs)
    lo, hi = 1, max([*steps, 1])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _cost(epochs, done, capped_epoch_s(epoch_s, step_s, steps, mid)) <= available_s \
            else (lo, mid - 1)
    return lo


def choose_largest(candidate_epoch_s: Sequence[Sequence[float]], recipe_epochs: Sequence[int],
                   available_s: float | Sequence[float]) -> int:
    """The index of the last (largest) candidate whose plan gives every phase at least its recipe epochs;
    0 (the smallest) where none does. ``candidate_epoch_s[i]``: seconds an epoch of each phase with candidate i;
    ``available_s``: the seconds for epochs, one for all candidates or one each (a side's finish costs its own)."""
    n = len(candidate_epoch_s)
    avail = [float(available_s)] * n if isinstance(available_s, (int, float)) else list(available_s)
    for i in range(n - 1, -1, -1):
        got = plan_epochs(recipe_epochs, candidate_epoch_s[i], avail[i])
        if all(g >= e for g, e in zip(got, recipe_epochs)):
            return i
    return 0


def fit_schedule(phase: PhaseConfig, done: int, new_epochs: int) -> PhaseConfig:
    """``phase`` (running, ``done`` epochs in) re-planned to ``new_epochs``: the LR schedule it was laid out on is
    kept, the part trained is unchanged and the rest is fitted between epoch ``done`` and the new end."""
    if new_epochs == phase.epochs:
        return phase
    if done == 0:  # not started: lay the schedule out on the new epochs
        return dataclasses.replace(phase, epochs=new_epochs, lr_epochs=0, lr_knots=())
    layout = phase.lr_epochs or phase.epochs
    pairs = list(zip(phase.lr_knots[::2], phase.lr_knots[1::2]))
    kept = [v for e, s in pairs if e < done for v in (e, s)]
    at = schedule_epoch(done, phase.lr_knots)
    knots = (*kept, float(done), float(at), float(new_epochs), float(layout))
    return dataclasses.replace(phase, epochs=new_epochs, lr_epochs=layout, lr_knots=tuple(knots))


def with_epochs(cfg: RunConfig, epochs: Sequence[int], *, running: int = -1, done: int = 0) -> RunConfig:
    """``cfg`` with each phase's epochs set; the ``running`` phase (``done`` epochs in) keeps its LR schedule."""
    phases = []
    for i, (p, n) in enumerate(zip(cfg.phases, epochs)):
        if i < running:
            phases.append(p)
        elif i == running:
            phases.append(fit_schedule(p, done, n))
        else:
            phases.append(dataclasses.replace(p, epochs=n, lr_epochs=0, lr_knots=()))
    return dataclasses.replace(cfg, phases=tuple(phases))


def replan(cfg: RunConfig, phase: int, phase_done: int, epoch_s: Sequence[float], left_s: float) -> list[int]:
    """Every phase's epochs at the end of an epoch of phase ``phase`` (``phase_done`` of its epochs run, 0 at its
    start), so that what is still to run fits ``left_s`` seconds at ``epoch_s`` seconds an epoch.

    The phases before it keep what they ran. The running phase keeps what it ran and gets at least one epoch more
    while its LR schedule has not reached its end (so it still ends annealed); one whose schedule has ended ends."""
    current = [p.epochs for p in cfg.phases]
    recipe = list(cfg.plan.recipe_epochs) or current
    ended = phase_done >= current[phase]  # the running phase's schedule is over: it ends with what it ran
    done = [*current[:phase], phase_done, *[0] * (len(current) - phase - 1)]
    floors = [*current[:phase], phase_done if ended else phase_done + 1,
              *[1 if e > 0 else 0 for e in recipe[phase + 1:]]]
    return plan_epochs(recipe, epoch_s, left_s, done=done, floors=floors, first=phase + 1 if ended else phase)

