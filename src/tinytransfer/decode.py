"""One image file → ``(size, size, 3)`` uint8 RGB, exactly as the cache and ``predict`` both need it.

:func:`decode_image` is the one decoder: training data (through the cache) and images given to ``predict`` go
through it, so a model sees the same pixels in both. :func:`probe_image` reads only the header. Both raise
:class:`DataError`, one line naming the file. ``DataError`` lives here, in the lowest data module, because
decoding is where most of them start; ``tinytransfer.data`` re-exports it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "DataError", "decode_image", "probe_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


class DataError(Exception):
    """A dataset problem, in one line that names the file or folder and what is wrong with it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB: grayscale replicated, palette/CMYK/YCbCr converted, alpha composited on white,
    16/32-bit integer and float grayscale scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16") or 255.0 < hi <= 65535.0:
            a = a / 257.0  # 16-bit range → 8-bit
        elif hi > 65535.0 or (mode == "F" and hi <= 1.0):
            lo = float(a.min())
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX ...


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image file to (size, size, 3) uint8 RGB, resized bilinearly if needed; DataError otherwise."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and min(img.size) >= 2 * size:
                img.draft(img.mode, (size, size))  # DCT downscale of big JPEGs (never below the target size)
            img.load()
            rgb = _to_rgb(img)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            a = np.asarray(rgb, dtype=np.uint8)
    except Image.UnidentifiedImageError:
        if _empty(path):
            raise DataError(f"{path}: empty file (0 bytes)") from None
        ext = os.path.splitext(path)[1].lower()
        why = "unknown image format" if ext in IMAGE_EXTENSIONS else f"extension {ext or '(none)'}"
        raise DataError(f"{path}: not an image file ({why}; PIL cannot identify it)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file vanished while decoding") from None
    except Exception as e:  # truncated/corrupt data raises OSError, SyntaxError, ValueError, ... deep in PIL
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if a.shape != (size, size, 3):  # pragma: no cover - defensive
        raise DataError(f"{path}: decoded to shape {a.shape}, expected {(size, size, 3)}")
    return a


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; DataError otherwise."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            return img.size
    except Image.UnidentifiedImageError:
        if _empty(path):
            raise DataError(f"{path}: empty file (0 bytes)") from None
        raise DataError(f"{path}: not an image file (PIL cannot identify it)") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from None


def _empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False
