"""A trained model as a file other programs load: TorchScript or a ``torch.export`` program, plus a YAML sidecar
with what is needed to feed it (classes, names, input size, normalisation)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from torch import nn

from .fsutil import atomic_write_text
from .runfolder import CheckpointView

__all__ = ["EXPORT_FORMATS", "export_model"]

EXPORT_FORMATS = ("torchscript", "torch-export")
_SUFFIX = {"torchscript": ".torchscript.pt", "torch-export": ".pt2"}


def export_model(model: nn.Module, ckpt: CheckpointView, run_dir: str | os.PathLike, fmt: str = "torchscript",
                 out: str | os.PathLike | None = None) -> Path:
    """Write ``model`` (on the CPU, eval mode) in ``fmt`` to ``out`` (default ``run_dir/model<suffix>``) and its
    sidecar ``<out>.yaml``; returns the model file's path."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: not one of {', '.join(EXPORT_FORMATS)}")
    model = model.to("cpu").eval()
    size = ckpt.input_size
    path = Path(out) if out else Path(run_dir) / f"model{_SUFFIX[fmt]}"
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised to a constant
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(path))
    else:
        prog = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(prog, str(path))
    meta = {"classes": list(ckpt.classes), "names": list(ckpt.names), "mean": list(ckpt.mean),
            "std": list(ckpt.std), "input_size": size,
            "input": "(B, 3, S, S) float32 RGB, x = (pixels / 255 - mean) / std; output: logits (B, classes)"}
    atomic_write_text(path.with_name(path.name + ".yaml"), yaml.safe_dump(meta, sort_keys=False))
    return path
