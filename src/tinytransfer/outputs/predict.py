"""Checkpoint → model → top-k for image files, folders and dataset splits; ``predictions.csv``."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.augment import flips, make_transform
from ..data.decode import IMAGE_EXTENSIONS, DataError, decode_image, to_rgb
from ..runs.runfolder import CheckpointView

__all__ = ["IMAGE_SUFFIXES", "check_tensor_batch", "collect_images", "gather_images", "logit_views", "predict_arrays",
           "predict_logits", "printable", "read_image", "top_k_rows", "tta_views", "write_predictions"]

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


def _pil_to_array(img: Image.Image, size: int) -> np.ndarray:
    """A PIL image → (size, size, 3) uint8 RGB, converted and resized as the dataset's decoder does."""
    rgb = to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def gather_images(images: Any, size: int, *, skip_bad: bool = False) -> tuple[list[str], np.ndarray | torch.Tensor]:
    """What ``Run.predict`` accepts → (names, images): paths and folders (decoded at ``size``), PIL images, (H, W, 3)
    uint8 arrays (resized to ``size`` if needed) give an (N, size, size, 3) uint8 array; a (B, 3, H, W) tensor batch
    (uint8, or float in 0..255) is passed through as it is. Unreadable files raise ValueError naming the file
    (``skip_bad``: a warning, and the file is left out)."""
    if isinstance(images, torch.Tensor):
        check_tensor_batch(images)
        return [f"<{i}>" for i in range(images.shape[0])], images
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images: expected a path, a PIL image, an (H, W, 3) uint8 array, a (B, 3, H, W) tensor or "
                         f"a list of them, got {type(images).__name__}")
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            for f in collect_images([str(item)]):
                try:
                    arrays.append(read_image(f, size))
                except ValueError as e:
                    if not skip_bad:
                        raise
                    log.warning("skipped %s", e)
                    continue
                names.append(str(f))
        elif isinstance(item, Image.Image):
            arrays.append(_pil_to_array(item, size))
            names.append(f"<{i}>")
        elif isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8 or not item.shape[0] * item.shape[1]:
                raise ValueError(f"image {i}: an array must be (H, W, 3) uint8 with H, W >= 1, got {item.shape} "
                                 f"{item.dtype}")
            arrays.append(item if item.shape[:2] == (size, size) else _pil_to_array(Image.fromarray(item), size))
            names.append(f"<{i}>")
        else:
            raise ValueError(f"image {i}: expected a path, a PIL image or an (H, W, 3) uint8 array, "
                             f"got {type(item).__name__}")
    if not arrays:
        return [], np.zeros((0, size, size, 3), dtype=np.uint8)
    return names, np.stack(arrays)


def check_tensor_batch(x: torch.Tensor) -> None:
    """ValueError unless ``x`` is a (B, 3, H, W) batch of pixels in 0..255: uint8, or float without NaN or inf; a
    float batch within 0..1 (and not all zero) is refused as being in the wrong unit rather than read as near-black."""
    if x.ndim != 4 or x.shape[1] != 3 or not x.shape[2] * x.shape[3]:
        raise ValueError(f"a tensor batch must be (B, 3, H, W) with H, W >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point() or not x.numel():
        return
    if not torch.isfinite(x).all():
        raise ValueError("the tensor batch holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"a float tensor batch must hold pixels in 0..255, got values in [{lo:g}, {hi:g}]")
    if 0 < hi <= 1:
        raise ValueError("a float tensor batch must hold pixels in 0..255; this one lies within 0..1: multiply it "
                         "by 255 (or pass uint8)")


def tta_views(x: torch.Tensor, flip: bool) -> list[torch.Tensor]:
    """Test-time views of a (B, 3, H, W) batch in pixel units: itself, its horizontal flip (where ``flip``), and
    shifts of H/32 pixels (at least 1) in the four directions with the edge replicated (Keras' ``nearest`` fill)."""
    views = [x]
    if flip:
        views.append(x.flip(3))
    s = max(1, round(x.shape[2] / 32))
    pad = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
    h, w = x.shape[2], x.shape[3]
    for dy, dx in ((0, s), (0, -s), (s, 0), (-s, 0)):
        views.append(pad[:, :, s + dy : s + dy + h, s + dx : s + dx + w])
    return views


@torch.no_grad()
def predict_arrays(model: nn.Module, images: np.ndarray | torch.Tensor, ckpt: CheckpointView, *,
                   device: torch.device | str = "cpu", batch_size: int = 256, tta: bool = False,
                   temperature: float | None = None) -> torch.Tensor:
    """Softmax probabilities (N, classes) float32 on the CPU for uint8 images (N, H, W, 3), or a (N, 3, H, W)
    tensor in pixel units, no augmentation; ``tta`` averages the probabilities of :func:`tta_views`. The logits are
    divided by the checkpoint's fitted temperature (``temperature``: another one, 1.0 for the raw softmax)."""
    t = ckpt.temperature if temperature is None else float(temperature)
    out = [sum((z / t).softmax(dim=1) for z in views) / len(views)
           for views in logit_views(model, images, ckpt, device, batch_size, tta)]
    if not out:
        return torch.zeros(0, len(ckpt.classes))
    return torch.cat(out)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, ckpt: CheckpointView, *,
                   device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """The raw logits (N, classes) float32 on the CPU (no temperature, no augmentation) of what
    :func:`predict_arrays` takes: what the temperature is fitted on and calibration is scored on."""
    out = [views[0] for views in logit_views(model, images, ckpt, device, batch_size, False)]
    return torch.cat(out) if out else torch.zeros(0, len(ckpt.classes))


def logit_views(model: nn.Module, images: np.ndarray | torch.Tensor, ckpt: CheckpointView,
                device: torch.device | str, batch_size: int, tta: bool) -> Iterator[list[torch.Tensor]]:
    """Per batch of ``images``, the raw float32 CPU logits (B, classes) of each view: one view, or with ``tta`` those
    of :func:`tta_views`. Call under ``torch.no_grad()``."""
    tf = make_transform("none", ckpt.mean, ckpt.std, input_size=ckpt.input_size)
    mirror = flips(ckpt.config.data.augment)  # a mirrored view only where training mirrored images
    model.eval()
    for i in range(0, len(images), batch_size):
        if isinstance(images, torch.Tensor):
            x = images[i : i + batch_size].to(device).float()  # (B, 3, H, W) 0..255
        else:
            x = torch.from_numpy(np.array(images[i : i + batch_size])).to(device).permute(0, 3, 1, 2).float()
        views = tta_views(x, mirror) if tta else [x]
        yield [model(tf(v, None)).float().cpu() for v in views]


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


def printable(name: str) -> str:
    """A file name as valid UTF-8 text: the bytes of a name that is not UTF-8 (``os.fsdecode`` keeps them as
    surrogates, which no UTF-8 file or terminal takes) become ``\\xNN`` escapes; other names are unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_predictions(rows: Sequence[Any], path: str | os.PathLike) -> None:
    """``predictions.csv`` written atomically: file, wnid, name, prob, top5 (space-separated class ids). ``rows``
    are :func:`top_k_rows` dicts or ``api.Prediction`` objects. Always valid UTF-8: a file name that is not (an
    ``os.fsdecode`` name with surrogates) is written with its odd bytes as ``\\xff`` escapes (:func:`printable`)."""
    import io

    from ..fsutil import atomic_write_bytes

    rows = [r if isinstance(r, dict) else
            {"file": r.file, "wnid": r.wnid, "name": r.name, "prob": f"{r.prob:.6f}",
             "top5": " ".join(c for c, _ in r.top5)} for r in rows]
    rows = [{**r, "file": printable(r["file"])} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "wnid", "name", "prob", "top5"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
