"""Optional TensorBoard event files for watching long runs live (``tensorboard: true``, ``train --tensorboard``).

``RUN/tensorboard/`` receives, from rank 0 only: every metrics.csv value of an epoch as ``epoch/<column>`` (x = the
global epoch), and the learning rate and training loss of every iteration as ``iter/lr`` and ``iter/loss`` (x = the
global iteration, counted across phases and continued by ``--resume``). The loss of each step is kept on the device
and read once an epoch, so the training step gains no host synchronisation. Open them with
``tensorboard --logdir RUN/tensorboard`` (or ``--logdir runs`` for every run). The ``tensorboard`` package is an
optional extra (``pip install 'tinytransfer[tensorboard]'``); a run that asks for it without it stops before training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from .metricsfile import read_metrics
from .runfolder import METRICS_CSV

__all__ = ["TB_DIR", "TensorBoardLog", "open_tensorboard"]

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"  # RUN/tensorboard: the event files


def _summary_writer(log_dir: str) -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` (needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: true needs the tensorboard package: "
                          "pip install 'tinytransfer[tensorboard]' (or set tensorboard: false)") from None
    return SummaryWriter(log_dir=log_dir)


class TensorBoardLog:
    """Per-iteration LR and loss (buffered until the epoch ends) and per-epoch metrics to a SummaryWriter-like
    ``writer`` (``add_scalar(tag, value, step)``, ``flush()``, ``close()``)."""

    def __init__(self, writer: Any, start_iteration: int = 0) -> None:
        self.writer = writer
        self.iteration = start_iteration  # global iterations done so far
        self._lrs: list[float] = []
        self._losses: list[torch.Tensor] = []

    def step(self, lr: float, loss: torch.Tensor) -> None:
        """One training iteration: its LR and its (detached, device) loss."""
        self._lrs.append(float(lr))
        self._losses.append(loss.detach().float().reshape(()))

    def epoch(self, row: dict) -> None:
        """The epoch's metrics.csv row; writes the buffered iterations first."""
        losses = torch.stack(self._losses).tolist() if self._losses else []
        for lr, loss in zip(self._lrs, losses):
            self.iteration += 1
            self.writer.add_scalar("iter/lr", lr, self.iteration)
            self.writer.add_scalar("iter/loss", loss, self.iteration)
        self._lrs, self._losses = [], []
        for key, value in row.items():
            if key not in ("epoch",) and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _iterations_done(run_dir: Path, epoch: int) -> int:
    """Global iterations before epoch ``epoch + 1``: each phase's last ``step`` in metrics.csv, summed."""
    path = run_dir / METRICS_CSV
    if epoch <= 0 or not path.is_file():
        return 0
    last: dict[int, int] = {}
    for r in read_metrics(path):
        if r["epoch"] <= epoch:
            last[r["phase"]] = r["step"]
    return sum(last.values())


def open_tensorboard(run_dir: str | os.PathLike, epoch: int = 0, writer: Any = None) -> TensorBoardLog:
    """The run's TensorBoard log, continuing after global epoch ``epoch`` (a resumed run); ``writer``: another
    SummaryWriter-like object (tests)."""
    run_dir = Path(run_dir)
    if writer is None:
        writer = _summary_writer(str(run_dir / TB_DIR))
    return TensorBoardLog(writer, _iterations_done(run_dir, epoch))
