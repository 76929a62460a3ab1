"""Mixup and CutMix on device batches (``phases.N.mixup``, ``cutmix``): ``timm.data.Mixup`` itself, wrapped so that
it fits the engine's batches and its resumable RNG streams.

- timm's ``Mixup`` draws from numpy's global generator; here each batch reseeds a private draw from torch's CPU
  generator (one ``randint``), which the checkpoints save, so ``--resume`` repeats the same mixing and numpy's own
  global state is left as it was.
- timm mixes batches of even size (it pairs image i with image B−1−i); the engine's last batch of an epoch can be
  odd (65 images at batch 64): the odd image out is kept unmixed, with its (smoothed) one-hot target.
- The targets are soft (B, classes) probabilities with the phase's label smoothing inside (timm's ``mixup_target``);
  the engine's cross-entropy takes them as they are (no second smoothing). Training accuracy is counted against the
  original labels (for a mixed image: the label of the image it started from).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..config import PhaseConfig

__all__ = ["BatchMixer", "make_mixer"]


class BatchMixer:
    """``(x (B, 3, H, W), y (B,) int64) -> (x mixed in place, targets (B, classes) float32)``."""

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0) -> None:
        from timm.data import Mixup

        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                         label_smoothing=label_smoothing, num_classes=num_classes)

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        return torch.full((y.shape[0], self.num_classes), off, device=y.device).scatter_(
            1, y[:, None], 1.0 - self.label_smoothing + off)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0] - x.shape[0] % 2  # timm pairs images i and n-1-i
        if n < 2:
            return x, self.one_hot(y)
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from torch's CPU generator (checkpointed)
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            head, target = self.mix(x[:n], y[:n])  # x[:n] is mixed in place (a view of x)
        finally:
            np.random.set_state(saved)
        if head.data_ptr() != x.data_ptr():  # (timm returns the same view in batch mode; guard anyway)
            x[:n] = head
        if n < x.shape[0]:
            target = torch.cat([target, self.one_hot(y[n:])])
        return x, target.float()


def make_mixer(phase: PhaseConfig, num_classes: int) -> Callable | None:
    """The phase's :class:`BatchMixer`, or None where neither mixup nor cutmix is on."""
    if phase.mixup <= 0 and phase.cutmix <= 0:
        return None
    return BatchMixer(num_classes, mixup=phase.mixup, cutmix=phase.cutmix, prob=phase.mix_prob,
                      label_smoothing=phase.label_smoothing)
