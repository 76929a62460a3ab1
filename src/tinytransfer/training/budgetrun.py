"""A time budget while the run trains: measure before the first epoch, re-plan at every epoch end.

:func:`start_budget` (called by ``engine.fit`` once the loaders exist) measures, on this machine and data, a few timed
training steps of each phase's configuration (its trainable part, optimizer, BatchNorm mode, batch size) and the
validation pass; then the weights, BatchNorm statistics and every random generator (torch's, CUDA's, the shuffle and
augmentation generators) are put back, as ``--auto-lr`` does, so training starts from exactly the state it would
have had. It resolves ``model.input_size: auto`` and ``train: auto`` (the largest candidate that keeps the recipe's
epochs: :func:`budget.choose_largest` for the side, :func:`_choose_train` for the trainable part), plans every
phase's epochs (:func:`budget.plan_epochs`) and writes the plan into the config (``plan:`` in config.yaml and in
every checkpoint). A resumed run keeps its plan: it measures nothing and re-plans on the time its earlier commands
spent (``plan.elapsed_s``).

:class:`BudgetClock` then re-plans at every epoch end from the measured wall time of the epochs: the running
phase's epochs so far in this command (their median, or the mean of the latest two where that is slower), and the
later phases' measured seconds and the finish's scaled by how much slower the running one is than measured (which
follows contention of the cores) but not by how much faster (each phase's measurement errs on its own: a fast head
phase must not promise a fast fine-tune). A plan that ends within ``SLACK`` of the budget before its end, or
``OVER`` past it, is kept (noise does not flip it back and forth, and a plan a few seconds late does not lose a
whole epoch); one that overruns by more is shortened, one that ends earlier is lengthened.

Measured on the raw (eager) model: with ``compile`` the epoch-end re-plans correct the estimate. Not for
data-parallel runs (``api`` refuses ``budget`` with several processes).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig, parse_budget
from ..data.augment import make_transform
from ..data.loader import DeviceLoader
from ..models.freezing import set_trainable
from ..runs.runfolder import write_config
from .budget import capped_epoch_s, choose_largest, largest_cap, plan_epochs, planned_seconds, replan, with_epochs
from .snapshot import rng_state, set_rng_state
from .steps import TrainState, autocast, make_optimizer, train_one_epoch

__all__ = [
    "FINISH_FIXED_S",
    "MEASURE_STEPS",
    "OVER",
    "SLACK",
    "BudgetClock",
    "measure_phase",
    "process_age_s",
    "start_budget",
]

log = logging.getLogger(__name__)

MEASURE_STEPS = 2  # timed training steps a phase configuration (the whole batch), after one untimed warm-up step
EVAL_BATCHES = 1  # timed validation batches, after a warm-up on a few images
FINISH_FIXED_S = 12.0  # seconds of the finish besides its predictions: figures, Grad-CAM, report (2-core CPU)
SLACK = 0.1  # a plan that ends within this share of the budget before its end is kept at an epoch end
OVER = 0.03  # a plan that ends at most this share past the budget is kept at an epoch end (not an epoch dropped)
TRIM = 0.1  # a side keeps the recipe's epochs where they fit with at most this share of each epoch's steps left out


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere): the command line's budget counts them."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_phase(model: nn.Module, loader: DeviceLoader, cfg: RunConfig, index: int, train: str, *,
                  device: torch.device) -> float:
    """Seconds of one training step of phase ``index`` with trainable part ``train`` (state not restored here)."""
    phase = dataclasses.replace(cfg.phases[index], train=train, ema=0.0)
    set_trainable(model, train, quiet=True)  # the console shows each phase's part once, when the phase starts
    opt = make_optimizer(model, phase, fused=device.type == "cuda")
    loader.batch_size = phase.batch_size  # the whole batch: on shared cores a step's time hardly scales with it
    marks: list[float] = []

    def mark(info: dict) -> None:  # the end of every step (the epoch's start, its batch order and draws, excluded)
        _sync(device)
        marks.append(time.perf_counter())

    t0 = time.perf_counter()
    train_one_epoch(model, loader, opt, phase, TrainState(), device=device, amp=cfg.amp,
                    max_steps=1 + MEASURE_STEPS, progress=mark)  # the first step warms up, untimed
    if len(marks) < 2:  # a one-step epoch: its whole time
        return time.perf_counter() - t0
    return (marks[-1] - marks[0]) / (len(marks) - 1)


@torch.no_grad()
def _measure_eval(model: nn.Module, loader: DeviceLoader | None, cfg: RunConfig, device: torch.device) -> float:
    """Seconds a validation image (0 without a validation split): the first batch once untimed, then
    ``EVAL_BATCHES`` forward passes of it."""
    if loader is None:
        return 0.0
    model.eval()
    x = next(iter(loader))[0]
    with autocast(device, cfg.amp):
        model(x)  # warm-up at the batch's own shape (a first pass at a new shape costs several times a later one)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(EVAL_BATCHES):
            model(x)
        _sync(device)
    return (time.perf_counter() - t0) / (EVAL_BATCHES * x.shape[0])


def _measure_checkpoint(model: nn.Module) -> float:
    """Seconds an epoch's checkpoints take on the cores: two snapshots of the weights, serialised to memory."""
    t0 = time.perf_counter()
    for _ in range(2):  # last.pt and (often) best.pt
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, io.BytesIO())
    return time.perf_counter() - t0


def _choose_size(probe: "_Probe", sizes: list[int], trains: Sequence[str], recipe: Sequence[int],
                 left: Callable[[float], float]) -> int:
    """The largest of ``sizes`` whose plan keeps the recipe's epochs in ``left(eval_s)`` seconds (the time left for
    epochs once the finish, which predicts at ``eval_s`` seconds an image at that side, is paid), with at most
    ``TRIM`` of each epoch's steps left out (the recipe's own side a little short beats a smaller one). The largest is
    measured first and taken where it fits; otherwise the smallest too, and the sides between are costed on the
    straight line through the two in the pixel count (an epoch's steps and validation grow with the pixels, its
    fixed costs not); the side taken there is measured, and where it does not keep the recipe's epochs after all,
    the next smaller one is."""
    trim = probe.trim_cap()
    hi = probe.epoch_s(sizes[-1], trains, trim)
    plan_hi = plan_epochs(recipe, hi, left(probe.eval_s(sizes[-1])))
    if len(sizes) == 1 or all(g >= e for g, e in zip(plan_hi, recipe)):
        return sizes[-1]
    lo = probe.epoch_s(sizes[0], trains, trim)
    ev_lo, ev_hi = probe.eval_s(sizes[0]), probe.eval_s(sizes[-1])
    w = [(s * s - sizes[0] ** 2) / (sizes[-1] ** 2 - sizes[0] ** 2) for s in sizes]  # 0 at the smallest, 1 largest
    costs = [[a + (b - a) * f for a, b in zip(lo, hi)] for f in w]
    k = choose_largest(costs, recipe, [left(ev_lo + (ev_hi - ev_lo) * f) for f in w])
    while 0 < k < len(sizes) - 1:  # a side costed on the line is measured (the plan needs it anyway) ...
        got = plan_epochs(recipe, probe.epoch_s(sizes[k], trains, trim), left(probe.eval_s(sizes[k])))
        if all(g >= e for g, e in zip(got, recipe)):
            break
        k -= 1  # ... and where it does not keep the recipe's epochs after all, the next smaller side is tried
    return sizes[k]


def _choose_train(probe: "_Probe", size: int, trains: Sequence[str], index: int, cands: Sequence[str],
                  recipe: Sequence[int], available: Callable[[], float]) -> str:
    """The largest of phase ``index``'s trainable parts ``cands`` (smallest first) whose plan keeps the recipe's
    epochs in ``available()`` seconds (asked after each measurement: measuring spends the budget too); the smallest
    where none does. Measured from the smallest up, stopping at the first that does not fit (a larger part trains
    more and never costs less): a tight budget pays for one measurement more, not for the largest part's."""
    chosen = cands[0]
    for cand in cands[1:]:
        epoch_s = probe.epoch_s(size, [*trains[:index], cand, *trains[index + 1:]])
        if not all(g >= e for g, e in zip(plan_epochs(recipe, epoch_s, available()), recipe)):
            break
        chosen = cand
    return chosen


class _Probe:
    """Measures epoch costs on ``model`` at any input size and trainable part; puts every state back on close."""

    def __init__(self, model: nn.Module, loader: DeviceLoader, val_loader: DeviceLoader | None, cfg: RunConfig,
                 norm: tuple[tuple, tuple], device: torch.device, generators: Sequence[torch.Generator]) -> None:
        self.model, self.loader, self.val_loader, self.cfg = model, loader, val_loader, cfg
        self.norm, self.device, self.generators = norm, device, generators
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.rng = rng_state(*generators)
        self.transforms = (loader.transform, val_loader.transform if val_loader is not None else None)
        self.batch_size = loader.batch_size
        self.cache: dict = {}  # seconds measured, by (side, phase, train, batch), ("eval", side), "checkpoint"
        limit = cfg.max_steps_per_epoch
        self.steps = [min(len(loader) if p.batch_size == loader.batch_size else -(-len(loader.split) // p.batch_size),
                          limit or 10**9) for p in cfg.phases]

    def trim_cap(self) -> int:
        """The fewest steps an epoch may keep where a side is chosen with ``TRIM`` of them left out."""
        return max(1, math.ceil((1 - TRIM) * max(self.steps)))

    def size(self, size: int) -> None:
        mean, std = self.norm
        self.loader.transform = make_transform(self.cfg.data.augment, mean, std, input_size=size)
        if self.val_loader is not None:
            self.val_loader.transform = make_transform("none", mean, std, input_size=size)

    def step_s(self, size: int, index: int, train: str) -> float:
        key = (size, index, train, self.cfg.phases[index].batch_size)
        if key not in self.cache:
            self.size(size)
            self.cache[key] = measure_phase(self.model, self.loader, self.cfg, index, train, device=self.device)
        return self.cache[key]

    def eval_s(self, size: int) -> float:
        if ("eval", size) not in self.cache:
            self.size(size)
            self.cache[("eval", size)] = _measure_eval(self.model, self.val_loader, self.cfg, self.device)
        return self.cache[("eval", size)]

    def epoch_s(self, size: int, trains: Sequence[str], cap: int = 0) -> list[float]:
        """Seconds an epoch of each phase: its steps (at most ``cap``, 0: all), validation and checkpoints."""
        n_val = len(self.val_loader.split) if self.val_loader is not None else 0
        if "checkpoint" not in self.cache:
            self.cache["checkpoint"] = _measure_checkpoint(self.model)
        return [min(self.steps[i], cap or self.steps[i]) * self.step_s(size, i, t)
                + n_val * self.eval_s(size) * (2 if p.ema > 0 else 1) + self.cache["checkpoint"]
                for i, (p, t) in enumerate(zip(self.cfg.phases, trains))]

    def close(self) -> None:
        self.model.load_state_dict(self.weights)
        for p in self.model.parameters():
            p.grad = None
        set_rng_state(self.rng, *self.generators)
        self.loader.transform, tf = self.transforms
        if self.val_loader is not None:
            self.val_loader.transform = tf
        self.loader.batch_size = self.batch_size


def start_budget(model: nn.Module, loader: DeviceLoader, val_loader: DeviceLoader | None, cfg: RunConfig,
                 state: TrainState, run_dir: str | os.PathLike, *, norm: tuple[tuple, tuple], device: torch.device,
                 generators: Sequence[torch.Generator], started: float, test_images: int = 0,
                 main: bool = True) -> tuple[RunConfig, "BudgetClock"]:
    """The planned config and the clock that re-plans it; ``started``: ``time.perf_counter()`` at the command's
    start. A config that already holds a plan (a resumed run) is re-planned on the time left, not measured again."""
    if cfg.plan.budget_s > 0:
        clock = BudgetClock(started, spent=cfg.plan.elapsed_s)
        if state.phase >= len(cfg.phases):  # a finished run: nothing left to plan
            return cfg, clock
        return clock.replan(cfg, state, run_dir, main=main, at_epoch_end=False), clock
    budget_s = parse_budget(cfg.budget)
    probe = _Probe(model, loader, val_loader, cfg, norm, device, generators)
    t_measure = time.perf_counter()
    recipe = [p.epochs for p in cfg.phases]
    trains = [p.train_choices[0] if p.train_choices else p.train for p in cfg.phases]
    choices: list[str] = []
    n_val = len(val_loader.split) if val_loader is not None else 0
    try:
        def left(eval_s: float) -> float:  # seconds left for epochs now, once the finish is paid at eval_s an image
            return budget_s - (time.perf_counter() - started) - FINISH_FIXED_S - eval_s * (n_val + test_images)

        size = cfg.model.input_size
        if cfg.model.input_sizes:  # candidates: the largest side that keeps the recipe's epochs
            sizes = sorted(set(cfg.model.input_sizes))
            size = _choose_size(probe, sizes, trains, recipe, left)
            choices.append(f"model.input_size: {size} of {sizes}")
        for i, p in enumerate(cfg.phases):
            if p.train_choices:
                trains[i] = _choose_train(probe, size, trains, i, list(p.train_choices), recipe,
                                          lambda: left(probe.eval_s(size)))
                choices.append(f"phases.{i}.train: {trains[i]} of {list(p.train_choices)}")
        epoch_s = probe.epoch_s(size, trains)
        eval_img_s = probe.eval_s(size)
    finally:
        probe.close()
    log.info("budget: measured %d configurations in %.1f s (%.1f s since the start)", len(probe.cache),
             time.perf_counter() - t_measure, time.perf_counter() - started)
    phases = tuple(dataclasses.replace(p, train=t) for p, t in zip(cfg.phases, trains))
    cfg = dataclasses.replace(cfg, phases=phases, model=dataclasses.replace(cfg.model, input_size=size))
    if size != probe.cfg.model.input_size:
        probe.size(size)  # the loaders' transforms at the chosen side
    auto_lr_s = sum(p.auto_lr_steps * probe.step_s(size, i, trains[i]) for i, p in enumerate(cfg.phases) if p.auto_lr)
    finish_s = eval_img_s * (n_val + test_images) + FINISH_FIXED_S
    start_s = time.perf_counter() - started + auto_lr_s
    epochs = plan_epochs(recipe, epoch_s, budget_s - start_s - finish_s)
    full, full_epoch_s = max(probe.steps), epoch_s
    step_s = [probe.step_s(size, i, t) for i, t in enumerate(trains)]
    if any(g < e for g, e in zip(epochs, recipe)):  # the recipe's epochs with a few steps fewer, where they fit
        cap = largest_cap(recipe, full_epoch_s, step_s, probe.steps, budget_s - start_s - finish_s)
        if cap >= probe.trim_cap() and (cfg.max_steps_per_epoch == 0 or cap < cfg.max_steps_per_epoch):
            epoch_s = probe.epoch_s(size, trains, cap)
            cfg = dataclasses.replace(cfg, max_steps_per_epoch=cap)
            choices.append(f"max_steps_per_epoch: {cap} of {full} (the recipe's epochs at this side)")
            epochs = plan_epochs(recipe, epoch_s, budget_s - start_s - finish_s)
    if planned_seconds(epochs, epoch_s, fixed_s=start_s + finish_s) > budget_s:  # not one full epoch a phase
        # one epoch a phase of at most N steps, each on a fresh random part of the split (1: nothing fits)
        cap = largest_cap([1 if e > 0 else 0 for e in recipe], full_epoch_s, step_s, probe.steps,
                          budget_s - start_s - finish_s)
        if cfg.max_steps_per_epoch == 0 or cap < cfg.max_steps_per_epoch:
            epoch_s = probe.epoch_s(size, trains, cap)
            cfg = dataclasses.replace(cfg, max_steps_per_epoch=cap)
            choices.append(f"max_steps_per_epoch: {cap} of {full} (one full epoch a phase does not fit)")
            epochs = plan_epochs(recipe, epoch_s, budget_s - start_s - finish_s)
    planned = planned_seconds(epochs, epoch_s, fixed_s=start_s + finish_s)
    steps = tuple(min(n, cfg.max_steps_per_epoch or n) for n in probe.steps)
    plan = dataclasses.replace(cfg.plan, budget_s=budget_s, recipe_epochs=tuple(recipe),
                               step_s=tuple(round(x, 4) for x in step_s), steps=steps,
                               epoch_s=tuple(round(c, 3) for c in epoch_s), start_s=round(start_s, 2),
                               finish_s=round(finish_s, 2), planned_s=round(planned, 1),
                               elapsed_s=round(start_s, 2), choices=tuple(choices))
    cfg = dataclasses.replace(with_epochs(cfg, epochs), plan=plan)
    log.info("budget %s (%.0f s): start %.1f s, epochs %s of %s s each, finish ~%.1f s -> %s epochs, %.0f s planned%s",
             cfg.budget, budget_s, start_s, list(recipe), [round(c, 1) for c in epoch_s], finish_s, epochs, planned,
             "".join(f"; {c}" for c in choices))
    if planned > budget_s:
        log.warning("budget %s: even one epoch a phase needs about %.0f s", cfg.budget, planned)
    if main:
        write_config(run_dir, cfg)
    return cfg, BudgetClock(started)


class BudgetClock:
    """The run's time against its budget: ``elapsed()`` over every command of the run, and the re-plan at an epoch
    end (:meth:`replan`)."""

    def __init__(self, started: float, spent: float = 0.0) -> None:
        self.started = started  # time.perf_counter() at this command's start
        self.spent = spent  # seconds the run's earlier commands spent (a resumed run)
        self.mark = time.perf_counter()  # the last epoch end (or training's start)
        self.walls: dict[int, list[float]] = {}  # this command's measured seconds of each phase's epochs

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def replan(self, cfg: RunConfig, state: TrainState, run_dir: str | os.PathLike, *, main: bool = True,
               at_epoch_end: bool = True) -> RunConfig:
        """``cfg`` re-planned on the time left after the epoch that just ended (``state`` counts it); writes
        config.yaml (``main``)."""
        now = time.perf_counter()
        plan = cfg.plan
        if at_epoch_end:
            self.walls.setdefault(state.phase, []).append(now - self.mark)
        self.mark = now
        measured = self.walls.get(state.phase, [])
        expected = plan.epoch_s[state.phase]
        # the slower of the phase's typical epoch and its latest two: a run that slows down is believed at once
        typical = max(statistics.median(measured), statistics.fmean(measured[-2:])) if measured else 0.0
        ratio = typical / expected if measured and expected > 0 else 1.0
        # later phases are measured apart: slower here is taken as slower there (the cores are busier), faster not
        epoch_s = [c * (ratio if i <= state.phase else max(1.0, ratio)) for i, c in enumerate(plan.epoch_s)]
        finish_s = plan.finish_s * max(1.0, ratio)  # cores slower than measured make the finish slower too
        elapsed = self.elapsed()
        left = plan.budget_s - elapsed - finish_s
        old = [p.epochs for p in cfg.phases]
        done = [*old[:state.phase], state.phase_epoch, *[0] * (len(old) - state.phase - 1)]
        fixed = elapsed + finish_s
        epochs = replan(cfg, state.phase, state.phase_epoch, epoch_s, left)
        kept = planned_seconds(old, epoch_s, done=done, fixed_s=fixed)
        on_time = (1 - SLACK) * plan.budget_s <= kept <= (1 + OVER) * plan.budget_s
        # seconds a step of the phases not started yet (the running phase's steps are never cut: 0)
        step_s = [0.0 if i <= state.phase else s * (c / m if m > 0 else 1.0)
                  for i, (s, c, m) in enumerate(zip(plan.step_s, epoch_s, plan.epoch_s))]
        # late, with later phases to come: their epochs with at most TRIM of their steps left out, not one fewer
        trimmed = bool(plan.step_s) and any(old[state.phase + 1:]) and kept > plan.budget_s and largest_cap(
            old, epoch_s, step_s, plan.steps, left, done=done) >= (1 - TRIM) * max(plan.steps)
        if on_time or trimmed or (kept < plan.budget_s and sum(epochs) <= sum(old)):
            epochs = old  # on time, a few seconds late, or a few steps late: no change for noise to flip
        planned = planned_seconds(epochs, epoch_s, done=done, fixed_s=fixed)
        replans = plan.replans
        if epochs != old:
            line = (f"after epoch {state.epoch} ({elapsed:.0f} s, epochs {ratio:.2f}x the measured time): "
                    f"{old} -> {epochs}")
            replans = (*replans, line)
            log.info("budget: re-planned %s", line)
            cfg = with_epochs(cfg, epochs, running=state.phase, done=state.phase_epoch)
        later = any(epochs[state.phase + 1:])
        if planned > plan.budget_s and later and state.phase_epoch >= epochs[state.phase] and plan.step_s:
            # at a phase's end, with the later phases at their floor (or a few steps late) and still late: their
            # epochs take fewer steps (only here, where none is running: its LR schedule is laid out on its steps)
            cap = largest_cap(epochs, epoch_s, step_s, plan.steps, left, done=done)
            if cap < (cfg.max_steps_per_epoch or max(plan.steps)):
                line = (f"after epoch {state.epoch} ({elapsed:.0f} s, epochs {ratio:.2f}x the measured time): "
                        f"later epochs at most {cap} steps")
                replans = (*replans, line)
                log.info("budget: re-planned %s", line)
                cfg = dataclasses.replace(cfg, max_steps_per_epoch=cap)
                planned = planned_seconds(epochs, capped_epoch_s(epoch_s, step_s, plan.steps, cap), done=done,
                                          fixed_s=fixed)
        cfg = dataclasses.replace(cfg, plan=dataclasses.replace(plan, elapsed_s=round(elapsed, 2),
                                                                planned_s=round(planned, 1), replans=replans))
        if main:
            write_config(Path(run_dir), cfg)
        return cfg
