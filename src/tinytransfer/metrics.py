"""Top-k accuracy, confusion matrix and the ``metrics.csv`` writer (one row an epoch)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from .fsutil import atomic_write

__all__ = ["METRIC_COLUMNS", "MetricsWriter", "confusion_matrix", "topk_correct"]

# One row an epoch; plots read only this file. Accuracies are fractions in [0, 1].
METRIC_COLUMNS = (
    "phase", "epoch", "step", "lr",
    "train_loss", "train_acc", "train_top5",
    "val_loss", "val_acc", "val_top5",
    "seconds", "img_s",
)


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


class MetricsWriter:
    """Appends rows to ``metrics.csv``; each row is flushed and fsynced so a crash loses at most the current epoch."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (a resumed run rewrites what the checkpoint does not cover)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _complete(r) and int(r["epoch"]) <= epoch]
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
            f.flush()
            os.fsync(f.fileno())


def _complete(row: dict) -> bool:
    """A row fully written (a kill during an append can leave half a line)."""
    if None in row or any(row.get(k) is None for k in METRIC_COLUMNS):
        return False
    try:
        int(row["epoch"]), int(row["phase"]), float(row["train_loss"])
    except ValueError:
        return False
    return True


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
