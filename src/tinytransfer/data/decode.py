"""Image files → ``(size, size, 3)`` uint8 RGB: one file, or many into the rows of a ``.npy`` with worker processes.

:func:`decode_image` is the one decoder: training data (through the cache) and images given to ``predict`` go
through it, so a model sees the same pixels in both. :func:`probe_image` reads only the header. Both raise
:class:`DataError`, one line naming the file. ``DataError`` lives here, in the lowest data module, because
decoding is where most of them start; ``tinytransfer.data`` re-exports it. :func:`probe_files` and
:func:`decode_files` run them over a file list in chunks, in a process pool, with :class:`Progress`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "LISTED", "DataError", "Progress", "WorkerDied", "bad_images_message", "decode_files",
           "decode_image", "probe_files", "probe_image", "to_rgb"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
LISTED = 5  # bad files named in the one DataError that stops a load (the first ones in file order)
_LOG_EVERY_S = 30.0  # progress away from a terminal: one log line this often


class DataError(Exception):
    """A dataset problem, in one line that names the file or folder and what is wrong with it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class WorkerDied(DataError):
    """A decoding worker process ended without a result (killed: out of memory, a signal such as SIGBUS)."""


_EXIF_ORIENTATION = 0x0112  # EXIF tag: 1 = upright; 5..8 = rotated by 90° or 270° (width and height swap)


def to_rgb(img: Image.Image) -> Image.Image:
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
    """Decode one image file to (size, size, 3) uint8 RGB, resized bilinearly if needed; DataError otherwise.
    EXIF orientation is applied (the image upright, as viewers show it) before the resize."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and min(img.size) >= 2 * size:
                img.draft(img.mode, (size, size))  # DCT downscale of big JPEGs (never below the target size)
            img.load()
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # a phone photo: upright, as viewers show it
                img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
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
    """(width, height) from the image header, without decoding the pixels, after EXIF orientation (as
    :func:`decode_image` sees it); DataError otherwise."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)
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


def bad_images_message(problems: list[str]) -> str:
    """One line for the DataError that stops a load: the first problems by file, and how to skip them."""
    hint = "set data.skip_bad_images=true to skip bad images"
    if len(problems) == 1:
        return f"{problems[0]} ({hint})"
    more = f"; ... ({len(problems) - LISTED} more)" if len(problems) > LISTED else ""
    return f"bad images: {'; '.join(problems[:LISTED])}{more} ({hint})"


# ---------------------------------------------------------------------------------------------------------------
# Decoding in worker processes (module-level functions, so that they pickle)
# ---------------------------------------------------------------------------------------------------------------


def _probe_chunk(args: tuple[str, list[str], int, bool]) -> tuple[list[tuple[int, int] | None], list[tuple[int, str]]]:
    """Header sizes of a chunk of files; (sizes with None for bad files, [(index, message)])."""
    root, rels, start, skip = args
    sizes: list[tuple[int, int] | None] = []
    errors: list[tuple[int, str]] = []
    for i, rel in enumerate(rels):
        try:
            sizes.append(probe_image(os.path.join(root, rel)))
        except DataError as e:
            sizes.append(None)
            errors.append((start + i, str(e)))
            if not skip and len(errors) >= LISTED:
                break
    return sizes, errors


def _decode_chunk(args: tuple[str, list[str], int, int, str, bool, list[int]]) -> list[tuple[int, str]]:
    """Decode files rels[i] into rows start+i of the .npy at out_path; returns [(index, message)].

    Rows are written with ``pwrite``, not through a memory map: a full disk is then an ``OSError`` (ENOSPC) that
    reaches the caller, where a page written through a map would kill the process with SIGBUS."""
    root, rels, start, size, out_path, skip, bad = args
    row = size * size * 3  # bytes of one (size, size, 3) uint8 image
    errors: list[tuple[int, str]] = []
    known_bad = set(bad)
    with open(out_path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        offset = f.tell()  # rows start here, C order
        fd = f.fileno()
        for i, rel in enumerate(rels):
            if start + i in known_bad:
                continue  # already found bad by the header probe
            try:
                a = decode_image(os.path.join(root, rel), size)
            except DataError as e:
                errors.append((start + i, str(e)))
                if not skip and len(errors) >= LISTED:
                    break
                continue
            data = memoryview(np.ascontiguousarray(a)).cast("B")
            pos = offset + (start + i) * row
            while data:
                n = os.pwrite(fd, data, pos)  # ENOSPC raises OSError
                data, pos = data[n:], pos + n
    return errors


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) ranges: ~16 chunks a worker for balance, 64..2048 files each."""
    size = int(min(2048, max(64, math.ceil(n / max(1, workers * 16)))))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _pool_context() -> Any:
    # fork is what DataLoader uses on Linux and starts in milliseconds; the children only run PIL and numpy.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class Progress:
    """A tqdm bar where stderr is a terminal; elsewhere one INFO line every ``_LOG_EVERY_S`` (none for short jobs).
    A context manager: ``with Progress(total, "decode train") as bar: bar.update(k)``."""

    def __init__(self, total: int, what: str, unit: str = "img") -> None:
        self.total, self.what, self.unit, self.done = total, what, unit, 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, leave=False)

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= _LOG_EVERY_S:
            self.last = now
            logger.info("%s: %d/%d %s (%.0f %%, %.0f %s/s)", self.what, self.done, self.total, self.unit,
                        100.0 * self.done / max(1, self.total), self.done / max(now - self.t0, 1e-9), self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_chunks(fn: Callable, tasks: list[tuple], workers: int, what: str, total: int) -> Iterator[Any]:
    """fn over tasks, in-process (workers <= 1 or few files) or in a pool; yields results in task order as they
    finish. A worker that dies (killed by a signal, out of memory) raises :class:`WorkerDied` at once: the pool
    notices the dead process, where ``multiprocessing.Pool`` would wait for its result forever."""
    bar = Progress(total, what)
    try:
        if workers <= 1 or total < 256 or len(tasks) == 1:
            for t in tasks:
                r = fn(t)
                bar.update(len(t[1]))
                yield r
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python ≥ 3.12: fork() in a threaded process
            ex = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=_pool_context())
            futures = [ex.submit(fn, t) for t in tasks]
        done = False
        try:
            for t, fut in zip(tasks, futures):
                try:
                    r = fut.result()
                except BrokenProcessPool:
                    raise WorkerDied(f"{what}: a worker process died while decoding (killed by the system: out "
                                     "of memory, or a signal such as SIGBUS); nothing was cached") from None
                bar.update(len(t[1]))
                yield r
            done = True
        finally:
            if not done:  # stopped early (an error here or in the caller): do not wait for the other chunks
                for p in list((getattr(ex, "_processes", None) or {}).values()):
                    p.terminate()
            ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def probe_files(root: str, rels: list[str], *, workers: int, skip: bool,
                what: str) -> Iterator[tuple[list[tuple[int, int] | None], list[tuple[int, str]]]]:
    """Header sizes of root/rels, a chunk at a time in file order: (sizes, None for bad files; [(index, message)])."""
    tasks = [(root, rels[a:b], a, skip) for a, b in _chunks(len(rels), workers)]
    yield from _run_chunks(_probe_chunk, tasks, workers, what, len(rels))


def decode_files(root: str, rels: list[str], out_path: str, size: int, *, workers: int, skip: bool,
                 known_bad: Iterable[int] = (), what: str) -> Iterator[list[tuple[int, str]]]:
    """Decode root/rels[i] into row i of the (N, size, size, 3) uint8 .npy at ``out_path`` (already created), in
    ``workers`` processes that write straight to the file (only a chunk of images is in memory at a time). Yields
    each chunk's [(index, message)] of bad files as it finishes, in file order; ``known_bad`` rows are left as
    they are. Without ``skip`` a chunk stops at its fifth bad file."""
    known = sorted(set(known_bad))
    tasks = [(root, rels[a:b], a, size, out_path, skip, [i for i in known if a <= i < b])
             for a, b in _chunks(len(rels), workers)]
    yield from _run_chunks(_decode_chunk, tasks, workers, what, len(rels))
