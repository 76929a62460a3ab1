"""Smith's learning-rate range test (arXiv 1506.01186, section 3.3): the LR grows exponentially each step while
the loss is recorded; the suggested LR is where the smoothed loss falls fastest."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PhaseConfig
from ..data.loader import DeviceLoader
from ..models.backbones import unwrap_model
from ..models.freezing import set_trainable
from .schedule import range_test_lr
from .steps import autocast, make_optimizer, phase_train_mode

__all__ = ["lr_range_test"]


def lr_range_test(
    model: nn.Module,
    loader: DeviceLoader,
    phase: PhaseConfig,
    *,
    device: torch.device,
    num_steps: int = 100,
    lr_start: float = 1e-7,
    lr_end: float = 1.0,
    amp: str = "auto",
) -> dict:
    """Smith's LR range test: the LR grows exponentially each step; stops when the loss explodes.

    Returns ``{"lr": [...], "loss": [...], "smoothed": [...], "suggested": float}``; the suggestion is the LR of
    the steepest fall of the smoothed loss. The model's weights are changed: use a copy or reload after.
    """
    base = unwrap_model(model)
    set_trainable(base, phase.train)
    optimizer = make_optimizer(base, phase)
    phase_train_mode(base, phase)
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, math.inf
    it = iter(loader)
    for step in range(num_steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        lr = range_test_lr(step, num_steps, lr_start, lr_end)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # layer-wise LR decay, as in training
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = 0.9 * avg + 0.1 * value
        s = avg / (1 - 0.9 ** (step + 1))  # bias-corrected moving average
        lrs.append(lr)
        losses.append(value)
        smooth.append(s)
        best = min(best, s)
        if s > 4 * best and step > 10:
            break
    suggested = lrs[0] if lrs else lr_start
    if len(smooth) > 3:
        import numpy as np

        grads = np.gradient(np.array(smooth), np.log10(np.array(lrs)))
        suggested = float(lrs[int(np.argmin(grads[: max(1, len(grads) - 1)]))])
    return {"lr": lrs, "loss": losses, "smoothed": smooth, "suggested": suggested}
