"""Checkpoint → model → top-k for image files, folders and dataset splits; ``predictions.csv``."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import make_transform
from .decode import IMAGE_EXTENSIONS, DataError, decode_image

__all__ = ["IMAGE_SUFFIXES", "collect_images", "predict_arrays", "read_image", "top_k_rows", "write_predictions"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)  # what collect_images picks up inside folders


def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file → (size, size, 3) uint8 RGB, decoded exactly as the training data were (the dataset's own
    decoder: alpha composited on white, 16-bit scaled, bilinear resize). ValueError, naming the file, if unreadable."""
    try:
        return decode_image(path, size)
    except DataError as e:
        raise ValueError(str(e)) from None


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given, and every image file under given folders (sorted; dot files and dot folders skipped, as the
    dataset loader skips them)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                              and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


@torch.no_grad()
def predict_arrays(model: nn.Module, images: np.ndarray, ckpt: dict, *, device: torch.device | str = "cpu",
                   batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities (N, classes) float32 on the CPU for uint8 images (N, H, W, 3), no augmentation."""
    input_size = int(ckpt["config"]["model"]["input_size"])
    tf = make_transform("none", tuple(ckpt["mean"]), tuple(ckpt["std"]), input_size=input_size)
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i : i + batch_size])).to(device)  # (B, H, W, 3) uint8 copy
        x = tf(x.permute(0, 3, 1, 2).float(), None)  # (B, 3, S, S) normalised
        out.append(model(x).float().softmax(dim=1).cpu())
    if not out:
        return torch.zeros(0, len(ckpt["classes"]))
    return torch.cat(out)


def top_k_rows(files: list[str], probs: torch.Tensor, classes: list[str], names: list[str], k: int = 5) -> list[dict]:
    """One dict a file: file, wnid, name, prob (of the top-1) and the top-k wnids space-separated."""
    k = min(k, probs.shape[1]) if probs.numel() else 0
    rows = []
    if not len(files):
        return rows
    top_p, top_i = probs.topk(k, dim=1)
    for f, ps, idx in zip(files, top_p.tolist(), top_i.tolist()):
        rows.append({"file": f, "wnid": classes[idx[0]], "name": names[idx[0]], "prob": f"{ps[0]:.6f}",
                     "top5": " ".join(classes[j] for j in idx)})
    return rows


def write_predictions(rows: list[dict], path: str | os.PathLike) -> None:
    """``predictions.csv`` written atomically: file, wnid, name, prob, top5."""
    from .fsutil import atomic_write_bytes
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "wnid", "name", "prob", "top5"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
