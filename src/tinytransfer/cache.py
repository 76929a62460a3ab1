"""The decode-once uint8 cache: one ``(N, H, W, 3)`` uint8 ``.npy`` a split, memory-mapped on later loads.

The first load of a dataset decodes every image once, in ``workers`` processes, straight into a ``.npy`` on disk
(Tiny ImageNet's 100k training images at 64×64 are 1.23 GB; only one chunk of images is in memory at a time), with
labels and file names beside it; later loads memory-map those files. The cache is keyed by the file list, sizes,
modification times, the image size and the split settings, and its manifest is written last and atomically, so an
interrupted build never looks complete.

Layout: ``<cache root>/<settings>/manifest.json`` plus ``<split>-<key[:16]>.{images.npy,labels.npy,files.json}``;
the cache root is ``<dataset>/.tinytransfer-cache`` (or ``~/.cache/tinytransfer/<hash>`` if that is read-only, or
the ``cache_dir`` asked for).
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
import stat
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .decode import DataError, decode_image, probe_image
from .fsutil import TMP_MARK, atomic_write_bytes, clean_stale_temps, fsync_dir, remove_quietly, temp_name

__all__ = ["CACHE_FORMAT", "CachedSplit", "bad_images_message", "load_or_build"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache's files or their meaning change; part of every cache key
_MANIFEST = "manifest.json"
_LISTED = 5  # bad files named in the one DataError that stops a load (the first ones in file order)

CachedSplit = tuple[np.ndarray, np.ndarray, list[str]]  # images (N, H, W, 3) uint8 memmap, labels (N,) int64, files


def bad_images_message(problems: list[str]) -> str:
    """One line for the DataError that stops a load: the first problems by file, and how to skip them."""
    hint = "set data.skip_bad_images=true to skip bad images"
    if len(problems) == 1:
        return f"{problems[0]} ({hint})"
    more = f"; ... ({len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
    return f"bad images: {'; '.join(problems[:_LISTED])}{more} ({hint})"


def load_or_build(
    root: str,
    *,
    layout: str,
    classes: list[str],
    splits: dict[str, tuple[list[str], list[int]]],
    params: dict,
    cache_dir: str,
    workers: int,
    skip: bool,
) -> tuple[dict, dict[str, CachedSplit]]:
    """The cached splits of a listed dataset, decoding them first if no valid cache has this listing's key.

    splits: split name → (paths relative to root, labels); params: the settings that change the decoded bytes
    (val_mode, holdout, seed, image_size; image_size 0 = the most common size). Returns (manifest, arrays).
    """
    t0 = time.perf_counter()
    stats = {name: _stat_files(root, files) for name, (files, _) in splits.items()}
    key = _cache_key(layout, classes, splits, stats, params)
    sub = f"{params['val_mode']}-{params['image_size'] or 'auto'}-" + hashlib.sha256(
        json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    candidates = _cache_candidates(root, cache_dir)
    for c in candidates:
        loaded = _try_load(os.path.join(c, sub), key)
        if loaded is not None:
            logger.info("loaded cache %s in %.2f s", os.path.join(c, sub), time.perf_counter() - t0)
            return loaded
    target = next((c for c in candidates if _writable_dir(c)), None)
    if target is None:
        raise DataError(f"{candidates[0]}: cannot write the image cache there (set cache_dir)")
    if target != candidates[0]:
        logger.info("%s is not writable; caching in %s", candidates[0], target)
    return _build_cache(root, layout, classes, splits, os.path.join(target, sub), key, int(params["image_size"]),
                        workers, skip)


# ---------------------------------------------------------------------------------------------------------------
# Key and location
# ---------------------------------------------------------------------------------------------------------------


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


def _cache_key(layout: str, classes: list[str], splits: dict[str, tuple[list[str], list[int]]],
               stats: dict[str, list[tuple[int, int]]], params: dict) -> str:
    """sha256 of (format, settings, every split's files with label, byte size and mtime in ns)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **params, "layout": layout, "classes": classes},
                        sort_keys=True).encode())
    for name in sorted(splits):
        files, labels = splits[name]
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
                out[start + i] = decode_image(os.path.join(root, rel), size)
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
# Manifest, load, build, cleanup
# ---------------------------------------------------------------------------------------------------------------


def _write_manifest(path: str, manifest: dict) -> None:
    """The manifest is the cache's commit record: written last, atomically."""
    atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


def _try_load(folder: str, key: str) -> tuple[dict, dict[str, CachedSplit]] | None:
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
    splits: dict[str, CachedSplit] = {}
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
            splits[name] = (images, labels.astype(np.int64, copy=False), list(files))
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("%s: cache is damaged (%s); rebuilding", folder, e)
        return None
    return manifest, splits


def _build_cache(root: str, layout: str, classes: list[str], splits: dict[str, tuple[list[str], list[int]]],
                 folder: str, key: str, image_size: int, workers: int,
                 skip: bool) -> tuple[dict, dict[str, CachedSplit]]:
    """Decode every listed image once into ``folder``; the manifest is written last."""
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(folder)
    t0 = time.perf_counter()
    order = [n for n in ("train", "val", "test") if n in splits]
    bad: dict[str, dict[int, str]] = {n: {} for n in order}  # split → {index: message}
    found: list[str] = []  # without skip: problems seen so far, raised together (up to _LISTED of them)

    def fail_or_skip(name: str, errors: list[tuple[int, str]]) -> None:
        if errors and not skip:
            found.extend(m for _, m in sorted(errors))
            if len(found) >= _LISTED:
                raise DataError(bad_images_message(found))
            return
        for i, msg in errors:
            logger.warning("skipping bad image: %s", msg)
            bad[name][i] = msg

    def stop_if_found() -> None:
        if found:
            raise DataError(bad_images_message(found))

    size = image_size
    if size <= 0:  # the most common size in the dataset, from the headers (no pixel decoding)
        counts: Counter = Counter()
        for name in order:
            files = splits[name][0]
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
            files, labels = splits[name]
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
        manifest = {"format": CACHE_FORMAT, "key": key, "layout": layout, "image_size": size,
                    "classes": classes, "splits": finals, "skipped": skipped,
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
