"""Learning-rate bounds from a measurement (``auto_lr: true`` on a phase, ``train --auto-lr``).

Before a phase with ``auto_lr`` starts, the engine calls :func:`auto_lr_phase`: Smith's LR range test
(:func:`tinytransfer.lrfind.lr_range_test`, LR from 1e-7 to 1 exponentially over ``auto_lr_steps`` iterations) runs
on the phase's real model (its trainable part, its optimizer, its BatchNorm mode) and training batches; then the
weights, BatchNorm statistics and every random generator (torch's, the shuffle and the augmentation generators) are
put back, so the phase trains from exactly the state it would have had, only with measured bounds.

The rule (:func:`pick_bounds`), on the range test's smoothed loss (a bias-corrected moving average, factor 0.9):

- ``steepest``: the LR where the smoothed loss falls fastest per decade of LR, searched up to the loss minimum;
- ``min_loss``: the LR where the smoothed loss is lowest;
- ``lr_max = min(steepest, min_loss / 10)``: the steepest point, but never closer than a decade to the minimum (the
  moving average lags, so the minimum sits past where training diverges);
- ``lr_min = lr_max × (the recipe's lr_min / lr_max)``: the measurement sets the scale, the recipe keeps its shape
  (the report's triangular 1e-4 → 6e-4 gives lr_min = lr_max / 6; a constant policy has no lr_min of its own and
  gets lr_max / 6).

Where the curve has no descent to measure (fewer than 5 points, or the loss lowest at the first LR), the recipe's
bounds are kept and a warning says so. The choice is written to ``config.yaml`` (the phase's ``lr_min``/``lr_max``)
and, with the curve and both candidate LRs, to ``auto_lr.json``, which the report shows. A resumed run reuses the
choice recorded for a phase instead of measuring again. Under DDP every rank measures its own shard and rank 0's
choice is broadcast.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..data.loader import DeviceLoader
from ..runs.runfolder import read_auto_lr, write_auto_lr, write_config
from .lrfind import lr_range_test

__all__ = ["DEFAULT_RATIO", "auto_lr_phase", "pick_bounds"]

log = logging.getLogger(__name__)

DEFAULT_RATIO = 1 / 6  # lr_min / lr_max where the recipe gives none (the report's 1e-4 / 6e-4)
RULE = "lr_max = min(steepest descent of the smoothed loss, LR of its minimum / 10); lr_min = lr_max x recipe ratio"


def pick_bounds(lrs: Sequence[float], smoothed: Sequence[float], ratio: float = DEFAULT_RATIO) -> dict:
    """The rule above on a range-test curve. Returns ``{"lr_min", "lr_max", "steepest", "min_loss", "ok"}``;
    ``ok`` False (and the LRs None) where the curve has no descent to measure."""
    lr = np.asarray(lrs, dtype=np.float64)
    s = np.asarray(smoothed, dtype=np.float64)
    keep = np.isfinite(s) & (lr > 0)
    lr, s = lr[keep], s[keep]
    none = {"lr_min": None, "lr_max": None, "steepest": None, "min_loss": None, "ok": False}
    if len(lr) < 5:
        return none
    i_min = int(np.argmin(s))
    if i_min < 2:  # lowest at the start: the loss never fell
        return none
    grads = np.gradient(s[: i_min + 1], np.log10(lr[: i_min + 1]))  # d loss / d log10(lr)
    i_steep = int(np.argmin(grads))
    if grads[i_steep] >= 0:
        return none
    steepest, min_loss = float(lr[i_steep]), float(lr[i_min])
    lr_max = min(steepest, min_loss / 10)
    return {"lr_min": lr_max * ratio, "lr_max": lr_max, "steepest": steepest, "min_loss": min_loss, "ok": True}


def _recipe_ratio(lr_min: float, lr_max: float, policy: str) -> float:
    if policy == "constant" or not 0 < lr_min < lr_max:
        return DEFAULT_RATIO
    return lr_min / lr_max


def _rng_states(generators: Sequence[torch.Generator]) -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, [g.get_state() for g in generators]


def _restore_rng(states: tuple, generators: Sequence[torch.Generator]) -> None:
    cpu, cuda, gens = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    for g, st in zip(generators, gens):
        g.set_state(st)


def _broadcast(lr_min: float, lr_max: float, device: torch.device) -> tuple[float, float]:
    """Rank 0's bounds on every rank (a no-op without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return lr_min, lr_max
    t = torch.tensor([lr_min, lr_max], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t[0]), float(t[1])


def auto_lr_phase(model: nn.Module, loader: DeviceLoader, cfg: RunConfig, index: int, run_dir: str | os.PathLike,
                  *, device: torch.device, rank: int = 0,
                  generators: Sequence[torch.Generator] = ()) -> RunConfig:
    """Measure phase ``index``'s bounds on ``model`` (unwrapped) with ``loader`` and return ``cfg`` with them set.

    ``model``'s state (weights, buffers) and the RNGs (torch's and ``generators``) are as before on return; rank 0
    writes ``auto_lr.json`` and ``config.yaml``."""
    phase = cfg.phases[index]
    run_dir = Path(run_dir)
    recorded = read_auto_lr(run_dir).get(str(index + 1))
    if recorded is not None and recorded.get("chosen"):
        lr_min, lr_max = (float(v) for v in recorded["chosen"])
        log.info("phase %d: LR bounds from the earlier range test: %.3g -> %.3g", index + 1, lr_min, lr_max)
        return _with_bounds(cfg, index, lr_min, lr_max)
    t0 = time.perf_counter()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = _rng_states(generators)
    try:
        res = lr_range_test(model, loader, phase, device=device, num_steps=phase.auto_lr_steps, amp=cfg.amp)
    finally:
        model.load_state_dict(weights)
        for p in model.parameters():
            p.grad = None
        _restore_rng(rng, generators)
    ratio = _recipe_ratio(phase.lr_min, phase.lr_max, phase.lr_policy)
    pick = pick_bounds(res["lr"], res["smoothed"], ratio)
    if pick["ok"]:
        lr_min, lr_max = pick["lr_min"], pick["lr_max"]
    else:
        lr_min, lr_max = phase.lr_min, phase.lr_max
        log.warning("phase %d: the LR range test found no descent (%d points); keeping the recipe's bounds "
                    "%.3g -> %.3g", index + 1, len(res["lr"]), lr_min, lr_max)
    lr_min, lr_max = _broadcast(lr_min, lr_max, device)
    seconds = time.perf_counter() - t0
    log.info("phase %d (%s): LR range test over %d steps in %.1f s: steepest %s, min loss at %s -> lr %.3g -> %.3g "
             "(recipe %.3g -> %.3g)", index + 1, phase.name, len(res["lr"]), seconds, _g(pick["steepest"]),
             _g(pick["min_loss"]), lr_min, lr_max, phase.lr_min, phase.lr_max)
    new = _with_bounds(cfg, index, lr_min, lr_max)
    if rank == 0:
        write_auto_lr(run_dir, index + 1, {
            "name": phase.name, "lr_policy": phase.lr_policy, "recipe": [phase.lr_min, phase.lr_max],
            "steepest": pick["steepest"], "min_loss": pick["min_loss"], "chosen": [lr_min, lr_max],
            "measured": bool(pick["ok"]), "rule": RULE, "steps": len(res["lr"]), "seconds": round(seconds, 2),
            "curve": {"lr": [float(v) for v in res["lr"]], "smoothed": [float(v) for v in res["smoothed"]]},
        })
        write_config(run_dir, new)
    return new


def _g(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _with_bounds(cfg: RunConfig, index: int, lr_min: float, lr_max: float) -> RunConfig:
    phases = list(cfg.phases)
    phases[index] = dataclasses.replace(phases[index], lr_min=float(lr_min), lr_max=float(lr_max))
    return dataclasses.replace(cfg, phases=tuple(phases))
