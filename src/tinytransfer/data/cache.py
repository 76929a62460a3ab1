"""The decode-once uint8 cache: one ``(N, H, W, 3)`` uint8 ``.npy`` a split, memory-mapped on later loads.

The first load of a dataset decodes every image once, in ``workers`` processes, straight into a ``.npy`` on disk
(Tiny ImageNet's 100k training images at 64×64 are 1.23 GB; only one chunk of images is in memory at a time), with
labels and file names beside it; later loads memory-map those files. The cache is keyed by the file list, sizes,
modification times, the image size and the split settings, and its manifest is written last and atomically, so an
interrupted build never looks complete.

The manifest also holds a checksum of every 64 MiB chunk of each images file (and one of each labels and files
file). A load checks every chunk where the cache is at most ``FULL_CHECK_BYTES``, and a random sample of chunks
(plus each split's last) above that; a mismatch logs a warning naming the file and rebuilds. :func:`verify_cache`
checks every chunk (``tinytransfer verify-cache DIR``).

Layout: ``<cache root>/<settings>/manifest.json`` plus ``<split>-<key[:16]>.{images.npy,labels.npy,files.json}``;
the cache root is ``<dataset>/.tinytransfer-cache`` (or ``~/.cache/tinytransfer/<hash>`` if that is read-only, or
the ``cache_dir`` asked for).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import stat
import tempfile
import time
from collections import Counter
from typing import NamedTuple

import numpy as np

from ..fsutil import TMP_MARK, atomic_write_bytes, clean_stale_temps, fsync_dir, remove_quietly, temp_name
from .checksums import CHUNK_BYTES, HASH, CachedSplit, chunk_tasks, digest, file_digests, mismatches, read_split
from .decode import LISTED, DataError, bad_images_message, decode_files, probe_files
from .space import BuildGuard, images_bytes, reserve

__all__ = ["CACHE_FORMAT", "FULL_CHECK_BYTES", "CacheCheck", "CachedSplit", "load_or_build", "verify_cache"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cache's files or their meaning change; part of every cache key (2: checksums)
FULL_CHECK_BYTES = 4 << 30  # caches whose images files total at most this are checked in full at every load
_SAMPLED_CHUNKS = 8  # larger caches: random chunks checked at every load (plus each split's last chunk)
_MANIFEST = "manifest.json"



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
        loaded = _try_load(os.path.join(c, sub), key, threads=max(1, workers))
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
    h = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:16]
    return [os.path.join(root, ".tinytransfer-cache"), os.path.join(_user_cache_root(), h)]


def _cache_key(layout: str, classes: list[str], splits: dict[str, tuple[list[str], list[int]]],
               stats: dict[str, list[tuple[int, ...]]], params: dict) -> str:
    """sha256 of (format, settings, every split's files with label, byte size, mtime, inode and ctime)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **params, "layout": layout, "classes": classes},
                        sort_keys=True).encode())
    for name in sorted(splits):
        files, labels = splits[name]
        h.update(f"\n[{name}] {len(files)}\n".encode())
        h.update("".join(f"{f}\t{lab}\t" + "\t".join(map(str, st)) + "\n"
                         for f, lab, st in zip(files, labels, stats[name]))
                 .encode("utf-8", "surrogateescape"))  # a file name that is not UTF-8: its bytes
    return h.hexdigest()


def _stat_files(root: str, files: list[str]) -> list[tuple[int, ...]]:
    """(size, mtime, inode, ctime) of each file: a file replaced by another of the same size whose mtime was put
    back (``cp -p``, ``rsync -a``, tar) has a new inode or change time."""
    out = []
    for rel in files:
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"{path}: cannot stat file ({e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file")
        out.append((int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_ctime_ns)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Manifest, load, build, cleanup
# ---------------------------------------------------------------------------------------------------------------


def _write_manifest(path: str, manifest: dict) -> None:
    """The manifest is the cache's commit record: written last, atomically."""
    atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


def _try_load(folder: str, key: str, *, verify: bool = True, threads: int = 1
              ) -> tuple[dict, dict[str, CachedSplit]] | None:
    """The cached splits if folder's manifest has this key and its files match it; else None.

    verify: check the images' chunk checksums (all of them up to ``FULL_CHECK_BYTES``, else a random sample);
    labels and file lists are always checked in full."""
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
        for name, info in manifest["splits"].items():
            splits[name] = read_split(folder, name, info, manifest)
        if verify:
            per_split = [chunk_tasks(folder, info) for info in manifest["splits"].values()]
            tasks = [t for ts in per_split for t in ts]
            total = sum(int(info["checksums"]["images_bytes"]) for info in manifest["splits"].values())
            if total > FULL_CHECK_BYTES:  # a random sample, different at every load, and every split's tail
                tails = {ts[-1] for ts in per_split if ts}
                sample = random.SystemRandom().sample(tasks, min(_SAMPLED_CHUNKS, len(tasks)))  # not the seeded RNG
                tasks = sorted(tails | set(sample))
            bad = mismatches(tasks, manifest["hash"], int(manifest["chunk_bytes"]), threads)
            if bad:
                raise ValueError(bad[0])
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("cache is damaged, rebuilding: %s (in %s)", e, folder)
        return None
    return manifest, splits


class CacheCheck(NamedTuple):
    """One split of one cache, checked: ``line`` for people, ``ok`` for exit codes."""

    line: str
    ok: bool


def _manifest_folders(path: str) -> list[str]:
    """Cache folders (holding manifest.json) at ``path``: a cache folder, a cache root, or a dataset folder."""
    if os.path.isfile(os.path.join(path, _MANIFEST)):
        return [path]
    roots = [path] + _cache_candidates(path, "")
    found: list[str] = []
    for r in roots:
        try:
            entries = sorted(os.scandir(r), key=lambda e: e.name)
        except OSError:
            continue
        found += [e.path for e in entries if os.path.isfile(os.path.join(e.path, _MANIFEST))]
        if found:
            return found
    return found


def verify_cache(path: str | os.PathLike, *, threads: int = 2) -> list[CacheCheck]:
    """Check every chunk of every split of the caches at ``path`` (a dataset folder, its cache root, or one cache
    folder): one :class:`CacheCheck` a split. Staleness (changed source files) is not checked here; a load is."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise DataError(f"{path}: folder not found")
    folders = _manifest_folders(path)
    if not folders:
        raise DataError(f"{path}: no image cache found (give the dataset folder or its .tinytransfer-cache)")
    out: list[CacheCheck] = []
    for folder in folders:
        try:
            with open(os.path.join(folder, _MANIFEST), encoding="utf-8") as f:
                manifest = json.load(f)
            items = list(manifest["splits"].items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            out.append(CacheCheck(f"{folder}: manifest unreadable ({e})", False))
            continue
        if manifest.get("format") != CACHE_FORMAT:
            out.append(CacheCheck(f"{folder}: cache format {manifest.get('format')}, not {CACHE_FORMAT} "
                                  f"(no checksums to check; the next load rebuilds it)", False))
            continue
        for name, info in items:
            try:
                images, _, _ = read_split(folder, name, info, manifest)
                bad = mismatches(chunk_tasks(folder, info), manifest["hash"], int(manifest["chunk_bytes"]),
                                  threads)
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad = [str(e)]
            if bad:
                more = f" (and {len(bad) - 1} more chunks)" if len(bad) > 1 else ""
                out.append(CacheCheck(f"{name:5s}  DAMAGED  {bad[0]}{more}", False))
            else:
                k = len(info["checksums"]["images"])
                out.append(CacheCheck(f"{name:5s}  ok       {len(images)} images, {images.nbytes / 1e6:.1f} MB, "
                                      f"{k} chunk{'s' * (k != 1)} checked  {folder}", True))
    return out


def _build_cache(root: str, layout: str, classes: list[str], splits: dict[str, tuple[list[str], list[int]]],
                 folder: str, key: str, image_size: int, workers: int,
                 skip: bool) -> tuple[dict, dict[str, CachedSplit]]:
    """Decode every listed image once into ``folder``; the manifest is written last. Space is checked and
    reserved first, leftovers removed (:mod:`.space`): a full disk is one DataError."""
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(folder)
    with BuildGuard(folder) as guard:
        return _build_in(root, layout, classes, splits, folder, key, image_size, workers, skip, guard)


def _build_in(root: str, layout: str, classes: list[str], splits: dict[str, tuple[list[str], list[int]]],
              folder: str, key: str, image_size: int, workers: int, skip: bool,
              guard: BuildGuard) -> tuple[dict, dict[str, CachedSplit]]:
    t0 = time.perf_counter()
    order = [n for n in ("train", "val", "test") if n in splits]
    bad: dict[str, dict[int, str]] = {n: {} for n in order}  # split → {index: message}
    found: list[str] = []  # without skip: problems seen so far, raised together (up to LISTED of them)

    def fail_or_skip(name: str, errors: list[tuple[int, str]]) -> None:
        if errors and not skip:
            found.extend(m for _, m in sorted(errors))
            if len(found) >= LISTED:
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
            for sizes, errors in probe_files(root, files, workers=workers, skip=skip, what=f"probe {name}"):
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
    guard.check_free(images_bytes((len(splits[n][0]) for n in order), size))
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
            reserve(img_tmp)  # every block now: a full disk fails here, not as a SIGBUS in a writer
            for errors in decode_files(root, files, img_tmp, size, workers=workers, skip=skip, known_bad=bad[name],
                                       what=f"decode {name}"):
                fail_or_skip(name, errors)
                stop_if_found()  # decoding is not cheap: stop at the first chunk with problems
            keep = [i for i in range(n) if i not in bad[name]]
            if len(keep) < n:  # compact: drop the rows of skipped images
                src = np.load(img_tmp, mmap_mode="r")
                img_tmp2 = temp_name(img_final)
                written.append(img_tmp2)
                dst = np.lib.format.open_memmap(img_tmp2, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
                reserve(img_tmp2)
                step = max(1, CHUNK_BYTES // (size * size * 3))  # rows a copy: 64 MiB in memory at a time
                for a in range(0, len(keep), step):
                    dst[a:a + step] = src[keep[a:a + step]]
                dst.flush()
                del src, dst
                remove_quietly(img_tmp)
                img_tmp = img_tmp2
            with open(img_tmp, "rb+") as f:
                os.fsync(f.fileno())
            sums = {"images": file_digests(img_tmp, workers, f"checksum {name}"),
                    "images_bytes": os.path.getsize(img_tmp)}
            lab_bytes = _npy_bytes(np.asarray([labels[i] for i in keep], dtype=np.int64))
            files_bytes = json.dumps([files[i] for i in keep]).encode()
            sums["labels"], sums["files"] = digest(lab_bytes), digest(files_bytes)
            lab_final = os.path.join(folder, f"{name}-{tag}.labels.npy")
            files_final = os.path.join(folder, f"{name}-{tag}.files.json")
            atomic_write_bytes(lab_final, lab_bytes)
            atomic_write_bytes(files_final, files_bytes)
            os.replace(img_tmp, img_final)
            finals[name] = {"images": os.path.basename(img_final), "labels": os.path.basename(lab_final),
                            "files": os.path.basename(files_final), "count": len(keep), "checksums": sums}
        fsync_dir(folder)
        skipped = [bad[n][i] for n in order for i in sorted(bad[n])]
        manifest = {"format": CACHE_FORMAT, "key": key, "layout": layout, "image_size": size, "classes": classes,
                    "hash": HASH, "chunk_bytes": CHUNK_BYTES, "splits": finals, "skipped": skipped,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 3)}
        _write_manifest(os.path.join(folder, _MANIFEST), manifest)
    finally:
        for p in written:
            if TMP_MARK in os.path.basename(p):
                remove_quietly(p)
    _remove_other_keys(folder, tag)
    logger.info("cache built in %.1f s: %s", time.perf_counter() - t0, folder)
    loaded = _try_load(folder, key, verify=False)  # just checksummed
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
