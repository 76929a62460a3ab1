"""Plain-dict checkpoints: atomic writes, ``weights_only`` loading, run-folder locks.

A checkpoint is ``{format, model, optimizer, phase, epoch, phase_epoch, step, config, classes, names, mean, std,
best_acc, bad_epochs, rng, ...}``: tensors and builtins only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fsutil import atomic_write_bytes, clean_stale_temps, pid_alive
from .models import unwrap_model  # re-exported: unwrap before saving

__all__ = [
    "FORMAT",
    "CheckpointError",
    "RunLock",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "unwrap_model",
]

log = logging.getLogger(__name__)

FORMAT = "tinytransfer/1"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that cannot be used; the message names the file."""


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Serialise ``ckpt`` in memory first, then write it atomically.

    A failed write (full disk, quota, I/O error) raises CheckpointError naming the file; the previous file at
    ``path`` is left as it was.
    """
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise CheckpointError(f"{path}: could not save the checkpoint ({e.strerror or e}); "
                              "the previous one is kept") from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``; a file with pickled code or of another format is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused: not a plain tensor checkpoint ({first[:160]})") from None
    except Exception as e:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tinytransfer checkpoint (format {FORMAT!r} expected)")
    return ckpt


def find_checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """``run`` is a checkpoint file or a run folder holding ``best.pt``/``last.pt``."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder or checkpoint")
    for name in (f"{which}.pt", "best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError(f"{run}: no checkpoint in this run folder (best.pt or last.pt)")


def load_model(run: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint's config (no download) and load its weights; eval mode."""
    from .config import from_dict
    from .models import create_model

    path = find_checkpoint(run, which)
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    model = create_model(
        cfg.model.backbone,
        len(ckpt["classes"]),
        pretrained=False,
        head=cfg.model.head,
        dropout=cfg.model.dropout,
        hidden=cfg.model.hidden,
        input_size=cfg.model.input_size,
        bn_momentum=cfg.model.bn_momentum,
        bn_eps=cfg.model.bn_eps,
        bn_variance=cfg.model.bn_variance,
    )
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt


class RunLock:
    """``run_dir/.lock`` holding the owner's pid (and its start time, where /proc has it); a second live run is
    refused, a dead owner's lock is taken over (a pid reused by another process counts as dead). Taking the lock
    also removes the temp files that a killed owner left half-written in the folder."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, start = _read_owner(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid) and _same_process(pid, start):
                    raise CheckpointError(
                        f"{self.path.parent}: another run (pid {pid}) is writing to this folder"
                    ) from None
                if pid is None and _age(self.path) < 10.0:  # created this instant; its owner is writing the pid
                    raise CheckpointError(f"{self.path.parent}: another run is starting in this folder") from None
                log.warning("removing stale lock %s (pid %s is not running)", self.path, pid)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                start = _start_time(os.getpid())
                f.write(f"{os.getpid()}\n" + (f"{start}\n" if start is not None else ""))
            self.held = True
            self._clean_temps()
            return self
        raise CheckpointError(f"{self.path}: could not take the run lock")

    def _clean_temps(self) -> None:
        """Half-written temp files of a killed owner (its pid is dead): nobody else writes here while we hold it."""
        for p in clean_stale_temps(self.path.parent):
            log.info("removing %s (left by an interrupted save)", p)

    def release(self) -> None:
        if self.held:
            try:
                if _read_pid(self.path) == os.getpid():
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_owner(path: Path) -> tuple[int | None, str | None]:
    """(pid, start time) from a lock file; the start time is absent in locks written without /proc."""
    try:
        fields = path.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def _age(path: Path) -> float:
    """Seconds since ``path`` was last modified (infinite if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _read_pid(path: Path) -> int | None:
    return _read_owner(path)[0]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the "(comm)" field
    except (OSError, IndexError):
        return None


def _same_process(pid: int, start: str | None) -> bool:
    """Whether the live ``pid`` is still the process that wrote the lock (unknown start times: assume so)."""
    if start is None:
        return True
    now = _start_time(pid)
    return now is None or now == start


