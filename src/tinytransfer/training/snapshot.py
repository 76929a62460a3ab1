"""What a checkpoint holds of a training run: the weights, the optimizer, the loop's counters, every random generator,
the resolved config, the run's identity and what identifies its data, as a plain dict that ``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..config import RunConfig, to_dict
from ..data.dataset import Dataset
from ..runs.checkpoint import FORMAT
from .steps import TrainState

__all__ = ["checkpoint_state", "data_identity", "model_weights", "rng_state", "set_rng_state"]


def rng_state(shuffle: torch.Generator, aug: torch.Generator) -> dict:
    """Every random generator a run draws from (CPU, CUDA, the shuffle and augmentation generators)."""
    out = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "aug": aug.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(rng: dict, shuffle: torch.Generator, aug: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved.

    The CUDA states are one per device the saving process saw; a resume may see fewer (or more) devices, so the
    first min(saved, visible) are restored, each on its own device (``set_rng_state_all`` would index devices that
    do not exist), and a resume without CUDA ignores them."""
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    aug.set_state(rng["aug"])
    if rng.get("cuda") and torch.cuda.is_available():
        states = list(rng["cuda"])
        for i in range(min(len(states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(states[i], device=i)


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, detached, where the tensors live (no copy): take it once an epoch and share it
    between best.pt and last.pt, whose background writer copies each tensor to host memory once
    (``asyncsave.snapshot`` copies a tensor met twice once)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, cfg: RunConfig, data: Dataset,
                     state: TrainState, mean: tuple, std: tuple, weights: dict | None = None,
                     data_id: dict | None = None) -> dict:
    """The checkpoint dict (docs/internals.md lists its keys): plain tensors and Python values only. ``run_id`` (the
    run's identity, as in config.yaml) and ``data_id`` (:func:`data_identity`) let ``--resume`` refuse another run's
    checkpoint or changed data (resumecheck.py).

    Its tensors are the live ones (on the device, no copy): hand it to ``AsyncCheckpointWriter.submit``, which
    snapshots them to host memory before training goes on. ``weights``: :func:`model_weights` of ``model`` taken
    already (shared by the checkpoints of one epoch); ``data_id``: :func:`data_identity` of ``data`` taken already
    (once a run: it hashes every file name)."""
    return {
        "format": FORMAT,
        "model": weights if weights is not None else model_weights(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "phase": state.phase,
        "phase_epoch": state.phase_epoch,
        "epoch": state.epoch,
        "step": state.step,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "phase_best_acc": state.phase_best_acc,
        "bad_epochs": state.bad_epochs,
        "rng": state.rng,
        "config": to_dict(cfg),
        "classes": list(data.classes),
        "names": list(data.names),
        "image_size": int(data.image_size),
        "mean": list(mean),
        "std": list(std),
        "run_id": state.run_id,
        "data_id": data_id if data_id is not None else data_identity(data),
    }


def data_identity(data: Dataset) -> dict:
    """What identifies the images a run trains and validates on: ``{split: {"images": N, "sha256": digest of its
    "file<TAB>label" lines}}`` for train and val (files relative to the dataset root, so a moved dataset is the
    same; names that are not valid UTF-8 hashed by their bytes)."""
    out = {}
    for name in ("train", "val"):
        part = getattr(data, name)
        files, labels = (part.files, part.labels.tolist()) if part is not None else ([], [])
        text = "".join(f"{f}\t{y}\n" for f, y in zip(files, labels))
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        out[name] = {"images": len(files), "sha256": digest}
    return out
