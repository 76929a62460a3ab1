"""Top-k accuracy and the confusion matrix, counted on the device."""

from __future__ import annotations

import torch

__all__ = ["confusion_matrix", "topk_correct"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is in the top-k, for each k; a (len(ks),) tensor on the logits' device.

    No host synchronisation: the engine accumulates these on the device and reads them once an epoch.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hit = top.eq(target[:, None])  # (B, kmax) bool
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
