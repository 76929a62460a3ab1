"""Plain-dict checkpoints: atomic saves, ``weights_only`` loading, model rebuilding.

A checkpoint is ``{format, model, optimizer, phase, epoch, phase_epoch, step, config, classes, names, mean, std,
best_acc, bad_epochs, rng, ...}``: tensors and builtins only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import torch

from ..fsutil import atomic_write_bytes
from ..models.backbones import unwrap_model  # re-exported: unwrap before saving

__all__ = [
    "FORMAT",
    "CheckpointError",
    "find_checkpoint",
    "load_checkpoint",
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
    ``path``, if any, is left as it was.
    """
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        kept = "; the previous one is kept" if Path(path).is_file() else ""
        raise CheckpointError(f"{path}: could not save the checkpoint ({e.strerror or e}){kept}") from e


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
