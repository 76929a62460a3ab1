"""Tiny ImageNet layout (or one folder per class) → decode-once uint8 cache (batches on the device: ``loader``).

The first :func:`load_dataset` of a folder decodes every image once, in ``workers`` processes, into one
``(N, H, W, 3)`` uint8 ``.npy`` a split (Tiny ImageNet's 100k training images at 64×64 are 1.23 GB), with
labels and file names beside it; later loads memory-map those files and take well under a second. The cache is
keyed by the file list, sizes, modification times, the image size and the split settings, and its manifest is
written last and atomically, so an interrupted build never looks complete.

:class:`~tinytransfer.loader.DeviceLoader` then takes batches out of the uint8 arrays. The offline demo dataset and
the Tiny ImageNet download live in ``sources``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import socket
import stat
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .config import DataConfig
from .fsutil import TMP_MARK, atomic_write_bytes, clean_stale_temps, fsync_dir, remove_quietly, temp_name

__all__ = [
    "CACHE_FORMAT",
    "IMAGE_EXTENSIONS",
    "TINY_IMAGENET_URL",
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "summary",
]

logger = logging.getLogger(__name__)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE_FORMAT = 1  # bump when the cache's files or their meaning change; part of every cache key
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_JUNK_FILES = {"thumbs.db", "desktop.ini"}  # OS droppings ignored in image folders (as are dot files)
_MANIFEST = "manifest.json"
_LISTED = 5  # bad files named in the one DataError that stops a load (the first ones in file order)


class DataError(Exception):
    """A dataset problem, in one line that names the file or folder and what is wrong with it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


# ---------------------------------------------------------------------------------------------------------------
# Public containers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Split:
    """One split: images (N, H, W, 3) uint8 (usually a read-only memory map), labels (N,) int64 (-1 = none)."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64 label ids in class order; -1 for unlabelled (test) images
    files: list[str]  # (N,) paths relative to the dataset root, "/"-separated

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(eq=False)
class Dataset:
    """A decoded dataset; ``classes[i]`` (wnid or folder name) and ``names[i]`` (human name) belong to label i."""

    root: str  # the dataset folder
    classes: list[str]  # wnids (wnids.txt order) or class folder names (sorted); index = label id
    names: list[str]  # human-readable names (words.txt's first name; else the class id)
    train: Split
    val: Split | None  # official val/ or held out of train/ (val_mode="holdout"); None if there is none
    test: Split | None  # test/images (unlabelled, labels -1); None if there is none
    image_size: int  # side of the decoded square images in pixels
    skipped: list[str] = field(default_factory=list)  # "file: problem" for images skipped (skip_bad_images=True)


# ---------------------------------------------------------------------------------------------------------------
# Listing: which files belong to which split, with which label
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    layout: str  # "tiny-imagenet" | "folders"
    classes: list[str]
    names: list[str]
    splits: dict[str, tuple[list[str], list[int]]]  # split name → (relative paths, labels)


def _scandir(path: str, what: str) -> list[os.DirEntry]:
    """Entries of a folder, sorted by name; DataError naming the folder if it is missing or unreadable."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} folder is missing") from None
    except NotADirectoryError:
        raise DataError(f"{path}: expected a folder ({what}), found a file") from None
    except PermissionError as e:
        raise DataError(f"{path}: cannot read {what} folder ({e.strerror})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} folder ({e.strerror or e})") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _wanted(name: str) -> bool:
    """Files that count as dataset images: everything but dot files and OS junk (non-images then fail loudly)."""
    return not name.startswith(".") and name.lower() not in _JUNK_FILES


def _image_files(root: str, folder_rel: str, what: str, *, recursive: bool = False) -> list[str]:
    """Relative paths of the files in root/folder_rel (sorted; recursive for class folders)."""
    out: list[str] = []
    for e in _scandir(os.path.join(root, folder_rel), what):
        rel = f"{folder_rel}/{e.name}" if folder_rel else e.name
        if not _wanted(e.name):
            continue
        if _is_dir(e):
            if recursive:
                out.extend(_image_files(root, rel, what, recursive=True))
            continue
        out.append(rel)
    return out


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _read_words(root: str, wnids: list[str]) -> list[str]:
    """Human names from words.txt (``wnid<TAB>name, other name``): the first name; the wnid where absent."""
    path = os.path.join(root, "words.txt")
    if not os.path.exists(path):
        logger.info("%s: no words.txt; class names are the wnids", root)
        return list(wnids)
    wanted = set(wnids)
    found: dict[str, str] = {}
    for line in _read_text(path, "words.txt").splitlines():
        wnid, sep, rest = line.partition("\t")
        wnid = wnid.strip()
        if sep and wnid in wanted and wnid not in found:
            first = rest.split(",")[0].strip()
            if first:
                found[wnid] = first
    return [found.get(w, w) for w in wnids]


def _holdout(files: list[str], n: int, seed: int, label: int, where: str) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split of one class's sorted files: n held out, chosen with (seed, label)."""
    if n <= 0:
        return files, []
    if n >= len(files):
        raise DataError(f"{where}: only {len(files)} images, cannot hold out {n} for validation "
                        f"(lower holdout_per_class)")
    rng = np.random.default_rng([seed, label])
    held = set(rng.permutation(len(files))[:n].tolist())
    return ([f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held])


def _plan_tiny(root: str, val_mode: str, holdout: int, seed: int) -> _Plan:
    """List a Tiny ImageNet tree (wnids.txt, words.txt, train/<wnid>/images, val/, test/images)."""
    wnids_path = os.path.join(root, "wnids.txt")
    wnids = [w.strip() for w in _read_text(wnids_path, "wnids.txt").splitlines() if w.strip()]
    if not wnids:
        raise DataError(f"{wnids_path}: no class ids in the file")
    dup = [w for w, c in Counter(wnids).items() if c > 1]
    if dup:
        raise DataError(f"{wnids_path}: class id {dup[0]} is listed twice")
    label_of = {w: i for i, w in enumerate(wnids)}
    names = _read_words(root, wnids)

    train_files: list[str] = []
    train_labels: list[int] = []
    val_files: list[str] = []
    val_labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = f"train/{wnid}/images"
        if not os.path.isdir(os.path.join(root, "train", wnid)):
            raise DataError(f"{os.path.join(root, 'train', wnid)}: no train folder for class {wnid} "
                            f"(listed in wnids.txt)")
        files = _image_files(root, folder, f"train images of {wnid}")
        if not files:
            raise DataError(f"{os.path.join(root, folder)}: empty class folder (no images of {wnid})")
        if val_mode == "holdout":
            files, held = _holdout(files, holdout, seed, label, os.path.join(root, folder))
            val_files += held
            val_labels += [label] * len(held)
        train_files += files
        train_labels += [label] * len(files)
    splits = {"train": (train_files, train_labels)}

    if val_mode == "official":
        val_dir = os.path.join(root, "val")
        if os.path.isdir(val_dir):
            ann = os.path.join(val_dir, "val_annotations.txt")
            if not os.path.isfile(ann):
                raise DataError(f"{ann}: missing (needed to label val/images)")
            present = {e.name for e in _scandir(os.path.join(val_dir, "images"), "val images")}
            pairs: dict[str, int] = {}
            for lineno, line in enumerate(_read_text(ann, "val_annotations.txt").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) < 2:
                    raise DataError(f"{ann} line {lineno}: expected 'file<TAB>wnid...', got {line.strip()[:60]!r}")
                fname, wnid = parts[0].strip(), parts[1].strip()
                if wnid not in label_of:
                    raise DataError(f"{ann} line {lineno}: wnid {wnid} (for {fname}) is not in wnids.txt")
                if fname not in present:
                    raise DataError(f"{os.path.join(val_dir, 'images', fname)}: listed in val_annotations.txt "
                                    f"(line {lineno}) but missing")
                pairs[fname] = label_of[wnid]
            unlabelled = sorted(n for n in present if _wanted(n) and n not in pairs)
            if unlabelled:
                logger.warning("%s: %d images not in val_annotations.txt are ignored (e.g. %s)",
                               os.path.join(val_dir, "images"), len(unlabelled), unlabelled[0])
            order = sorted(pairs)
            val_files = [f"val/images/{f}" for f in order]
            val_labels = [pairs[f] for f in order]
            splits["val"] = (val_files, val_labels)
        else:
            logger.warning("%s: no val/ folder; there is no validation split (use val_mode='holdout')", root)
    else:
        splits["val"] = (val_files, val_labels)

    if os.path.isdir(os.path.join(root, "test", "images")):
        test = _image_files(root, "test/images", "test images")
        if test:
            splits["test"] = (test, [-1] * len(test))
    return _Plan("tiny-imagenet", wnids, names, splits)


def _class_dirs(root: str, rel: str, what: str) -> list[str]:
    return [e.name for e in _scandir(os.path.join(root, rel) if rel else root, what)
            if _is_dir(e) and _wanted(e.name)]


def _plan_folders(root: str, val_mode: str, holdout: int, seed: int) -> _Plan:
    """List root/<class>/* (val held out), or root/train/<class> (+ root/val/<class>, + root/test)."""
    nested = os.path.isdir(os.path.join(root, "train")) and bool(_class_dirs(root, "train", "train"))
    base = "train" if nested else ""
    classes = _class_dirs(root, base, "dataset")
    if not classes:
        raise DataError(f"{root}: not a dataset (no wnids.txt and no class folders)")
    has_val = nested and os.path.isdir(os.path.join(root, "val"))
    use_holdout = val_mode == "holdout" or not has_val
    if val_mode == "official" and not has_val:
        logger.info("%s: no val/<class> folders; holding out %d images a class for validation", root, holdout)
    splits: dict[str, tuple[list[str], list[int]]] = {}
    tr_f: list[str] = []
    tr_l: list[int] = []
    va_f: list[str] = []
    va_l: list[int] = []
    for label, c in enumerate(classes):
        rel = f"{base}/{c}" if base else c
        files = _image_files(root, rel, f"class {c}", recursive=True)
        if not files:
            raise DataError(f"{os.path.join(root, rel)}: empty class folder (no images)")
        if use_holdout:
            files, held = _holdout(files, holdout, seed, label, os.path.join(root, rel))
            va_f += held
            va_l += [label] * len(held)
        tr_f += files
        tr_l += [label] * len(files)
    splits["train"] = (tr_f, tr_l)
    if not use_holdout:
        label_of = {c: i for i, c in enumerate(classes)}
        for c in _class_dirs(root, "val", "val"):
            if c not in label_of:
                raise DataError(f"{os.path.join(root, 'val', c)}: class {c} is not among the train classes")
            files = _image_files(root, f"val/{c}", f"val class {c}", recursive=True)
            va_f += files
            va_l += [label_of[c]] * len(files)
    if va_f:
        splits["val"] = (va_f, va_l)
    if nested and os.path.isdir(os.path.join(root, "test")):
        test = [f for f in _image_files(root, "test", "test", recursive=True)]
        if test:
            splits["test"] = (test, [-1] * len(test))
    return _Plan("folders", classes, list(classes), splits)


# ---------------------------------------------------------------------------------------------------------------
# Decoding (runs in worker processes; module-level functions so that they pickle)
# ---------------------------------------------------------------------------------------------------------------


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


def _decode_file(path: str, size: int) -> np.ndarray:
    """Decode one image file to (size, size, 3) uint8 RGB, resized bilinearly if needed; DataError otherwise."""
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


def _empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _probe_file(path: str) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Image.UnidentifiedImageError:
        if _empty(path):
            raise DataError(f"{path}: empty file (0 bytes)") from None
        raise DataError(f"{path}: not an image file (PIL cannot identify it)") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from None


def _probe_chunk(args: tuple[str, list[str], int, bool]) -> tuple[list[tuple[int, int] | None], list[tuple[int, str]]]:
    """Header sizes of a chunk of files; (sizes with None for bad files, [(index, message)])."""
    root, rels, start, skip = args
    sizes: list[tuple[int, int] | None] = []
    errors: list[tuple[int, str]] = []
    for i, rel in enumerate(rels):
        try:
            sizes.append(_probe_file(os.path.join(root, rel)))
        except DataError as e:
            sizes.append(None)
            errors.append((start + i, str(e)))
            if not skip and len(errors) >= _LISTED:
                break
    return sizes, errors


def _decode_chunk(args: tuple[str, list[str], int, int, str, bool, list[int]]) -> list[tuple[int, str]]:
    """Decode files rels[i] into rows start+i of the .npy at out_path (opened r+); returns [(index, message)]."""
    root, rels, start, size, out_path, skip, bad = args
    out = np.load(out_path, mmap_mode="r+")  # (N, size, size, 3) uint8
    errors: list[tuple[int, str]] = []
    known_bad = set(bad)
    try:
        for i, rel in enumerate(rels):
            if start + i in known_bad:
                continue  # already found bad by the header probe
            try:
                out[start + i] = _decode_file(os.path.join(root, rel), size)
            except DataError as e:
                errors.append((start + i, str(e)))
                if not skip and len(errors) >= _LISTED:
                    break
        out.flush()
    finally:
        del out
    return errors


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) ranges: ~16 chunks a worker for balance, 64..2048 files each."""
    size = int(min(2048, max(64, math.ceil(n / max(1, workers * 16)))))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _pool_context() -> Any:
    # fork is what DataLoader uses on Linux and starts in milliseconds; the children only run PIL and numpy.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run_chunks(fn: Callable, tasks: list[tuple], workers: int, what: str, total: int) -> Iterator[Any]:
    """fn over tasks, in-process (workers <= 1 or few files) or in a pool; yields results as they finish."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=what, unit="img", disable=None, leave=False)
    try:
        if workers <= 1 or total < 256 or len(tasks) == 1:
            for t in tasks:
                r = fn(t)
                bar.update(len(t[1]))
                yield r
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python ≥ 3.12: fork() in a threaded process
            pool = _pool_context().Pool(min(workers, len(tasks)))
        try:
            for t, r in zip(tasks, pool.imap(fn, tasks)):
                bar.update(len(t[1]))
                yield r
            pool.close()
        finally:
            pool.terminate()
            pool.join()
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------------------
# Cache: key, files, atomic writes
# ---------------------------------------------------------------------------------------------------------------


def _write_manifest(path: str, manifest: dict) -> None:
    """The manifest is the cache's commit record: written last, atomically."""
    atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


def _writable_dir(path: str) -> bool:
    """Create ``path`` if needed and check that a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _user_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinytransfer")


def _cache_candidates(root: str, cache_dir: str) -> list[str]:
    """Where the cache may be: the given folder; else <root>/.tinytransfer-cache, then the user cache dir."""
    if cache_dir:
        return [os.path.abspath(os.path.expanduser(cache_dir))]
    h = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]
    return [os.path.join(root, ".tinytransfer-cache"), os.path.join(_user_cache_root(), h)]


def _cache_key(plan: _Plan, stats: dict[str, list[tuple[int, int]]], params: dict) -> str:
    """sha256 of (format, settings, every split's files with label, byte size and mtime in ns)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **params, "layout": plan.layout, "classes": plan.classes},
                        sort_keys=True).encode())
    for name in sorted(plan.splits):
        files, labels = plan.splits[name]
        h.update(f"\n[{name}] {len(files)}\n".encode())
        h.update("".join(f"{f}\t{lab}\t{s}\t{m}\n" for f, lab, (s, m) in zip(files, labels, stats[name])).encode())
    return h.hexdigest()


def _stat_files(root: str, files: list[str]) -> list[tuple[int, int]]:
    out = []
    for rel in files:
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"{path}: cannot stat file ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file")
        out.append((int(st.st_size), int(st.st_mtime_ns)))
    return out


def _try_load(folder: str, key: str) -> tuple[dict, dict[str, Split]] | None:
    """The cached splits if folder's manifest has this key and its files look right; else None."""
    mpath = os.path.join(folder, _MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        logger.info("%s: cache is stale (files or settings changed); rebuilding", folder)
        return None
    splits: dict[str, Split] = {}
    try:
        s = int(manifest["image_size"])
        for name, info in manifest["splits"].items():
            images = np.load(os.path.join(folder, info["images"]), mmap_mode="r")
            labels = np.load(os.path.join(folder, info["labels"]))
            with open(os.path.join(folder, info["files"]), encoding="utf-8") as f:
                files = json.load(f)
            n = int(info["count"])
            if (images.dtype != np.uint8 or images.shape != (n, s, s, 3) or labels.shape != (n,)
                    or len(files) != n):
                raise ValueError(f"split {name} does not match the manifest")
            splits[name] = Split(images=images, labels=labels.astype(np.int64, copy=False), files=list(files))
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("%s: cache is damaged (%s); rebuilding", folder, e)
        return None
    return manifest, splits


def _build_cache(plan: _Plan, root: str, folder: str, key: str, image_size: int, workers: int,
                 skip: bool) -> tuple[dict, dict[str, Split]]:
    """Decode every image of the plan once into ``folder``; the manifest is written last."""
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(folder)
    t0 = time.perf_counter()
    order = [n for n in ("train", "val", "test") if n in plan.splits]
    bad: dict[str, dict[int, str]] = {n: {} for n in order}  # split → {index: message}
    found: list[str] = []  # without skip: problems seen so far, raised together (up to _LISTED of them)

    def fail_or_skip(name: str, errors: list[tuple[int, str]]) -> None:
        if errors and not skip:
            found.extend(m for _, m in sorted(errors))
            if len(found) >= _LISTED:
                raise DataError(_listing(found))
            return
        for i, msg in errors:
            logger.warning("skipping bad image: %s", msg)
            bad[name][i] = msg

    def stop_if_found() -> None:
        if found:
            raise DataError(_listing(found))

    size = image_size
    if size <= 0:  # the most common size in the dataset, from the headers (no pixel decoding)
        counts: Counter = Counter()
        for name in order:
            files = plan.splits[name][0]
            tasks = [(root, files[a:b], a, skip) for a, b in _chunks(len(files), workers)]
            for sizes, errors in _run_chunks(_probe_chunk, tasks, workers, f"probe {name}", len(files)):
                fail_or_skip(name, errors)
                counts.update(s for s in sizes if s is not None)
        stop_if_found()  # headers are cheap: every split's are read before stopping, to list more problems
        if not counts:
            raise DataError(f"{root}: no readable images")
        (w, h), _ = counts.most_common(1)[0]
        size = w if w == h else min(w, h)
        if w != h:
            logger.warning("%s: most images are %dx%d; decoding to %dx%d squares (set image_size to choose)",
                           root, w, h, size, size)
        if size > 256:
            logger.warning("%s: images are %d px; the cache holds them at full size (set image_size to shrink)",
                           root, size)

    written: list[str] = []  # temp files to remove if anything fails
    finals: dict[str, dict] = {}
    tag = key[:16]
    try:
        for name in order:
            files, labels = plan.splits[name]
            n = len(files)
            logger.info("decoding %d %s images to %dx%d with %d worker(s) into %s", n, name, size, size,
                        workers, folder)
            img_final = os.path.join(folder, f"{name}-{tag}.images.npy")
            img_tmp = temp_name(img_final)
            written.append(img_tmp)
            arr = np.lib.format.open_memmap(img_tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
            del arr  # workers open it themselves; the header is on disk
            known_bad = sorted(bad[name])
            tasks = [(root, files[a:b], a, size, img_tmp, skip, [i for i in known_bad if a <= i < b])
                     for a, b in _chunks(n, workers)]
            for errors in _run_chunks(_decode_chunk, tasks, workers, f"decode {name}", n):
                fail_or_skip(name, errors)
                stop_if_found()  # decoding is not cheap: stop at the first chunk with problems
            keep = [i for i in range(n) if i not in bad[name]]
            if len(keep) < n:  # compact: drop the rows of skipped images
                src = np.load(img_tmp, mmap_mode="r")
                img_tmp2 = temp_name(img_final)
                written.append(img_tmp2)
                dst = np.lib.format.open_memmap(img_tmp2, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
                for a in range(0, len(keep), 4096):
                    dst[a:a + 4096] = src[keep[a:a + 4096]]
                dst.flush()
                del src, dst
                remove_quietly(img_tmp)
                img_tmp = img_tmp2
            with open(img_tmp, "rb+") as f:
                os.fsync(f.fileno())
            lab = np.asarray([labels[i] for i in keep], dtype=np.int64)
            kept_files = [files[i] for i in keep]
            lab_final = os.path.join(folder, f"{name}-{tag}.labels.npy")
            files_final = os.path.join(folder, f"{name}-{tag}.files.json")
            atomic_write_bytes(lab_final, _npy_bytes(lab))
            atomic_write_bytes(files_final, json.dumps(kept_files).encode())
            os.replace(img_tmp, img_final)
            finals[name] = {"images": os.path.basename(img_final), "labels": os.path.basename(lab_final),
                            "files": os.path.basename(files_final), "count": len(keep)}
        fsync_dir(folder)
        skipped = [bad[n][i] for n in order for i in sorted(bad[n])]
        manifest = {"format": CACHE_FORMAT, "key": key, "layout": plan.layout, "image_size": size,
                    "classes": plan.classes, "splits": finals, "skipped": skipped,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 3)}
        _write_manifest(os.path.join(folder, _MANIFEST), manifest)
    finally:
        for p in written:
            if TMP_MARK in os.path.basename(p):
                remove_quietly(p)
    _remove_other_keys(folder, tag)
    logger.info("cache built in %.1f s: %s", time.perf_counter() - t0, folder)
    loaded = _try_load(folder, key)
    if loaded is None:  # pragma: no cover - another process replaced it with another key in between
        raise DataError(f"{folder}: cache changed while it was being built; run again")
    return loaded


def _listing(problems: list[str]) -> str:
    """One line for the DataError that stops a load: the first problems by file, and how to skip them."""
    hint = "set data.skip_bad_images=true to skip bad images"
    if len(problems) == 1:
        return f"{problems[0]} ({hint})"
    more = f"; ... ({len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
    return f"bad images: {'; '.join(problems[:_LISTED])}{more} ({hint})"


def _npy_bytes(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _remove_other_keys(folder: str, tag: str) -> None:
    """Drop data files of older keys (the manifest no longer points at them; open memory maps stay valid)."""
    for e in os.scandir(folder):
        m = re.match(r"^(train|val|test)-([0-9a-f]{16})\.(images\.npy|labels\.npy|files\.json)$", e.name)
        if m and m.group(2) != tag:
            remove_quietly(e.path)


# ---------------------------------------------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------------------------------------------


def load_dataset(
    root: str | os.PathLike,
    *,
    val_mode: str = "official",
    holdout_per_class: int = 50,
    split_seed: int = 0,
    image_size: int = 0,
    cache_dir: str = "",
    skip_bad_images: bool = False,
    workers: int = 2,
) -> Dataset:
    """Read a dataset folder, decoding it once into the uint8 cache, and return its splits (memory-mapped).

    Layouts: Tiny ImageNet (``wnids.txt`` present: label order = wnids.txt order, names from words.txt, val from
    ``val/val_annotations.txt``, unlabelled ``test/images``), or one folder per class (``root/<class>/*``, sorted
    class names, val held out; or ``root/train/<class>`` + ``root/val/<class>`` + ``root/test``).

    val_mode: "official" uses val/ ; "holdout" holds ``holdout_per_class`` images a class out of train/, chosen
    from each class's sorted file list with seed (split_seed, label), so the split never changes.
    image_size: side of the decoded squares (other sizes are resized, bilinear); 0 = the most common size.
    cache_dir: "" = ``<root>/.tinytransfer-cache``, or ``~/.cache/tinytransfer/<hash>`` if root is read-only.
    skip_bad_images: skip (log and count) undecodable images instead of raising one DataError that lists the
    first of them (up to five).
    workers: processes decoding on the first load.
    """
    root = os.path.abspath(os.fspath(root))
    if val_mode not in ("official", "holdout"):
        raise ValueError(f"val_mode must be 'official' or 'holdout', got {val_mode!r}")
    if image_size < 0 or holdout_per_class < 0:
        raise ValueError("image_size and holdout_per_class must be >= 0")
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found")
    t0 = time.perf_counter()
    if os.path.isfile(os.path.join(root, "wnids.txt")):
        plan = _plan_tiny(root, val_mode, holdout_per_class, split_seed)
    else:
        plan = _plan_folders(root, val_mode, holdout_per_class, split_seed)
    stats = {name: _stat_files(root, files) for name, (files, _) in plan.splits.items()}
    params = {"val_mode": val_mode, "holdout": holdout_per_class if val_mode == "holdout" or plan.layout == "folders"
              else 0, "seed": split_seed, "image_size": image_size}
    key = _cache_key(plan, stats, params)
    sub = f"{val_mode}-{image_size or 'auto'}-" + hashlib.sha256(
        json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]

    loaded = None
    candidates = _cache_candidates(root, cache_dir)
    for c in candidates:
        loaded = _try_load(os.path.join(c, sub), key)
        if loaded is not None:
            logger.info("loaded cache %s in %.2f s", os.path.join(c, sub), time.perf_counter() - t0)
            break
    if loaded is None:
        target = next((c for c in candidates if _writable_dir(c)), None)
        if target is None:
            raise DataError(f"{candidates[0]}: cannot write the image cache there (set cache_dir)")
        if target != candidates[0]:
            logger.info("%s is not writable; caching in %s", candidates[0], target)
        loaded = _build_cache(plan, root, os.path.join(target, sub), key, image_size, workers, skip_bad_images)
    manifest, splits = loaded
    skipped = list(manifest.get("skipped", []))
    if skipped:
        if not skip_bad_images:
            raise DataError(_listing(skipped))
        shown = "; ".join(skipped[:5]) + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        logger.warning("skipped %d bad image%s: %s", len(skipped), "s" * (len(skipped) != 1), shown)
    if len(splits["train"]) == 0:
        raise DataError(f"{root}: no usable training images")
    return Dataset(root=root, classes=list(plan.classes), names=list(plan.names), train=splits["train"],
                   val=splits.get("val"), test=splits.get("test"), image_size=int(manifest["image_size"]),
                   skipped=skipped)


def load_configured(d: DataConfig) -> Dataset:
    """:func:`load_dataset` with the fields of a run's ``DataConfig`` (``cfg.data``)."""
    return load_dataset(d.root, val_mode=d.val_mode, holdout_per_class=d.holdout_per_class, split_seed=d.split_seed,
                        image_size=d.image_size, cache_dir=d.cache_dir, skip_bad_images=d.skip_bad_images,
                        workers=d.workers)


def summary(dataset: Dataset) -> str:
    """A few lines: root, classes (first ones with names), image size and split sizes."""
    shown = ", ".join(f"{c} ({n})" if n != c else c for c, n in zip(dataset.classes[:10], dataset.names[:10]))
    more = f", ... ({len(dataset.classes) - 10} more)" if len(dataset.classes) > 10 else ""
    sizes = "  ".join(f"{name}: {len(s) if s is not None else 0}" for name, s in
                      (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)))
    lines = [f"dataset {dataset.root}",
             f"  {len(dataset.classes)} classes, {dataset.image_size}x{dataset.image_size} RGB",
             f"  classes: {shown}{more}",
             f"  {sizes}"]
    if dataset.skipped:
        lines.append(f"  skipped {len(dataset.skipped)} bad images")
    return "\n".join(lines)
