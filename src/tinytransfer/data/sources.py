"""Where datasets (and downloaded weights) come from: the offline digits demo dataset, the Tiny ImageNet download,
and :func:`download_file`, the one checked download that weight files use too.

The dataset sources write a folder in the Tiny ImageNet layout that :func:`tinytransfer.data.load_dataset` reads.
Downloads are resumable and checked (size, SHA-256 or MD5); the zip is extracted safely: no member may escape the
target folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import numpy as np
from PIL import Image

from ..fsutil import atomic_write, atomic_write_bytes, remove_quietly, temp_name
from .decode import DataError

__all__ = ["TINY_IMAGENET_URL", "build_demo_dataset", "download_file", "download_tiny_imagenet", "safe_extract"]

logger = logging.getLogger(__name__)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


# ---------------------------------------------------------------------------------------------------------------
# Demo dataset: scikit-learn's digits in the Tiny ImageNet layout
# ---------------------------------------------------------------------------------------------------------------

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DEMO_MARKER = ".tinytransfer-demo.json"


def _holds_something(folder: str) -> bool:
    """Whether ``folder`` exists and holds anything (a file is "something" too)."""
    return os.path.lexists(folder) and (not os.path.isdir(folder) or bool(os.listdir(folder)))


def _digit_jpeg(img8: np.ndarray, path: str) -> None:
    """An 8×8 digit (0..16) → 64×64 RGB JPEG (bicubic, quality 95)."""
    g = np.clip(np.rint(img8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    Image.fromarray(g, "L").resize((64, 64), Image.BICUBIC).convert("RGB").save(path, "JPEG", quality=95)


def build_demo_dataset(out_dir: str | os.PathLike, *, seed: int = 0, force: bool = False) -> str:
    """Write scikit-learn's 1,797 handwritten digits as a Tiny-ImageNet-layout tree at ``out_dir``; returns it.

    Ten made-up wnids ``d0000000``..``d0000009`` named "zero".."nine" in words.txt; a stratified split with
    ``seed``: about 60 % train/<wnid>/images, 25 % val/images (+ val_annotations.txt), 15 % test/images
    (unlabelled). 64×64 RGB JPEGs, bicubic from 8×8. Idempotent: a complete tree with the same seed is kept.
    ``out_dir`` must be absent, empty or a digits set written here before (its marker, written first, says so);
    anything else is refused unless ``force``: a user's dataset is never overwritten by accident.
    """
    from sklearn.datasets import load_digits

    out = os.path.abspath(os.fspath(out_dir))
    marker = os.path.join(out, _DEMO_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("seed") == seed and not done.get("writing"):
            logger.info("%s: demo dataset already complete", out)
            return out
    except (OSError, ValueError, AttributeError):
        done = None
    if done is None and not force and _holds_something(out):
        raise DataError(f"{out}: not empty and not a digits set written by demo-data; refusing to write the demo "
                        "dataset over it (choose another folder, or use --force)")
    digits = load_digits()
    images = digits.images  # (1797, 8, 8) float64 in 0..16
    target = digits.target.astype(int)  # (1797,)
    wnids = [f"d{k:07d}" for k in range(10)]
    rng = np.random.default_rng(seed)
    train: list[tuple[int, int]] = []  # (sample index, class)
    val: list[tuple[int, int]] = []
    test: list[tuple[int, int]] = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(target == c))
        n_tr, n_va = round(0.60 * len(idx)), round(0.25 * len(idx))
        train += [(int(i), c) for i in idx[:n_tr]]
        val += [(int(i), c) for i in idx[n_tr:n_tr + n_va]]
        test += [(int(i), c) for i in idx[n_tr + n_va:]]
    val = [val[i] for i in rng.permutation(len(val))]  # val/test numbering mixes the classes, as in Tiny ImageNet
    test = [test[i] for i in rng.permutation(len(test))]

    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(marker, json.dumps({"seed": seed, "writing": True}).encode())  # ours, not complete yet
    for c, w in enumerate(wnids):
        folder = os.path.join(out, "train", w, "images")
        os.makedirs(folder, exist_ok=True)
        mine = [i for i, cls in train if cls == c]
        boxes = []
        for k, i in enumerate(mine):
            name = f"{w}_{k}.JPEG"
            _digit_jpeg(images[i], os.path.join(folder, name))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        with open(os.path.join(out, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.writelines(boxes)
    os.makedirs(os.path.join(out, "val", "images"), exist_ok=True)
    ann = []
    for k, (i, c) in enumerate(val):
        name = f"val_{k}.JPEG"
        _digit_jpeg(images[i], os.path.join(out, "val", "images", name))
        ann.append(f"{name}\t{wnids[c]}\t0\t0\t63\t63\n")
    with open(os.path.join(out, "val", "val_annotations.txt"), "w") as f:
        f.writelines(ann)
    os.makedirs(os.path.join(out, "test", "images"), exist_ok=True)
    for k, (i, _) in enumerate(test):
        _digit_jpeg(images[i], os.path.join(out, "test", "images", f"test_{k}.JPEG"))
    with open(os.path.join(out, "wnids.txt"), "w") as f:
        f.writelines(f"{w}\n" for w in wnids)
    with open(os.path.join(out, "words.txt"), "w") as f:
        f.writelines(f"{w}\t{n}, digit {k}\n" for k, (w, n) in enumerate(zip(wnids, _DIGIT_NAMES)))
    atomic_write_bytes(marker, json.dumps({"seed": seed, "source": "sklearn.datasets.load_digits",
                                            "train": len(train), "val": len(val), "test": len(test)}).encode())
    logger.info("demo dataset: %d train, %d val, %d test images in %s", len(train), len(val), len(test), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Download and safe extraction
# ---------------------------------------------------------------------------------------------------------------


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_source(url: str) -> str | None:
    """The local file behind a plain path or a file:// URL; None for network URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return urllib.request.url2pathname(parsed.path)
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return url
    return None


def _fetch(url: str, part: str) -> None:
    """Download ``url`` into ``part``, resuming with an HTTP Range request where a partial file exists."""
    from tqdm.auto import tqdm

    local = _local_source(url)
    if local is not None:
        if not os.path.isfile(local):
            raise DataError(f"{local}: no such file to download from")
        total = os.path.getsize(local)
        done = os.path.getsize(part) if os.path.exists(part) else 0
        if done > total:
            done = 0
        with open(local, "rb") as src, open(part, "ab" if done else "wb") as dst, \
                tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=os.path.basename(local),
                     disable=None) as bar:
            src.seek(done)
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                bar.update(len(block))
        return
    done = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"User-Agent": "tinytransfer"})
    if done:
        req.add_header("Range", f"bytes={done}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # nothing left to fetch: the part file is already whole
            return
        raise DataError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed ({getattr(e, 'reason', e)})") from None
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        resumed = bool(done) and status == 206
        if done and not resumed:
            logger.info("%s: server does not resume; starting over", url)
            done = 0
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as dst, \
                tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=os.path.basename(part),
                     disable=None) as bar:
            try:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    dst.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as e:
                raise DataError(f"{url}: download interrupted ({e}); run again to resume") from None


def _file_hash(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, path: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None) -> str:
    """Fetch ``url`` (http(s)://, file:// or a local path) to ``path`` unless a file with the right hash is already
    there; returns ``path``.

    Resumable (``<path>.part``, HTTP Range), checked (``md5`` and/or ``sha256``) and atomic: the file appears at
    ``path`` whole or not at all. A file with the wrong hash is deleted, never kept: a cached copy that no longer
    matches is fetched again; a download that does not match raises DataError and leaves nothing behind.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wanted = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}

    def problem(file: str) -> str | None:
        for name, value in wanted.items():
            got = _file_hash(file, name)
            if got != value:
                return f"{name} {got}, expected {value}"
        return None

    if os.path.isfile(path):
        bad = problem(path)
        if bad is None:
            return path
        logger.warning("%s: cached file has %s; deleting it and fetching again", path, bad)
        remove_quietly(path)
    part = path + ".part"
    _fetch(url, part)
    bad = problem(part)
    if bad is not None:
        remove_quietly(part)
        raise DataError(f"{url}: the downloaded file has {bad} (truncated or not the expected file); "
                        "nothing was kept")
    atomic_write(path, lambda tmp: os.replace(part, tmp))
    return path


def download_tiny_imagenet(
    dest_dir: str | os.PathLike,
    *,
    url: str = TINY_IMAGENET_URL,
    sha256: str | None = None,
    size: int | None = None,
) -> str:
    """Download the Tiny ImageNet zip (or any zip: ``url`` may be http(s)://, file:// or a local path) into
    ``dest_dir`` and extract it safely; returns the extracted dataset folder.

    The download goes to ``<zip>.part`` and resumes with an HTTP Range request when run again. ``size`` (bytes)
    and ``sha256`` are checked when given; a mismatching file is moved aside to ``<zip>.bad`` and DataError raised.
    Idempotent: an already extracted zip is not fetched again.
    """
    dest = os.path.abspath(os.fspath(dest_dir))
    os.makedirs(dest, exist_ok=True)
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download.zip"
    zpath = os.path.join(dest, name)
    marker = os.path.join(dest, f".{name}.extracted.json")
    try:
        with open(marker, encoding="utf-8") as f:
            info = json.load(f)
        if os.path.isdir(info["root"]) and (sha256 is None or info.get("sha256") in (None, sha256.lower())):
            logger.info("%s: already downloaded and extracted", info["root"])
            return str(info["root"])
    except (OSError, ValueError, KeyError, TypeError):
        pass

    def check(path: str) -> str | None:
        """None if the file is right; else the problem."""
        if size is not None and os.path.getsize(path) != size:
            return f"size {os.path.getsize(path)} bytes, expected {size}"
        if sha256 is not None:
            got = _sha256_file(path)
            if got.lower() != sha256.lower():
                return f"sha256 {got}, expected {sha256.lower()}"
        return None

    if os.path.isfile(zpath) and check(zpath) is not None:  # a wrong leftover: set it aside, fetch again
        os.replace(zpath, zpath + ".bad")
    if not os.path.isfile(zpath):
        part = zpath + ".part"
        logger.info("downloading %s to %s", url, zpath)
        _fetch(url, part)
        problem = check(part)
        if problem is not None:
            os.replace(part, zpath + ".bad")
            raise DataError(f"{zpath}: downloaded file has {problem}; kept aside as {zpath}.bad")
        os.replace(part, zpath)
    root = safe_extract(zpath, dest)
    atomic_write_bytes(marker, json.dumps({"root": root, "zip": zpath, "url": url,
                                            "sha256": sha256.lower() if sha256 else None}).encode())
    return root


def _parts(name: str) -> list[str]:
    """Path components of a zip member name ("\\" read as "/", empty and "." parts dropped)."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _member_problem(info: zipfile.ZipInfo, zf: zipfile.ZipFile) -> str | None:
    """Why a member may not be extracted (None if it may)."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    parts = _parts(name)
    if ".." in parts:
        return "'..' path component"
    if not parts:
        return "empty name"
    if stat.S_ISLNK(info.external_attr >> 16):
        target = zf.read(info).decode("utf-8", "replace").replace("\\", "/")
        if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
            return f"symlink to absolute path {target}"
        depth = len(parts) - 1  # folders above the link inside the archive
        for p in target.split("/"):
            depth += -1 if p == ".." else (0 if p in ("", ".") else 1)
            if depth < 0:
                return f"symlink escaping the folder ({target})"
    return None


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Extract a zip into ``dest`` with no member able to escape it; returns the dataset folder.

    Every member is checked before anything is written: absolute paths, drive letters, ``..`` components,
    escaping symlinks and members whose path goes through a symlink member are refused (DataError naming the
    member); once extracted, every link must still resolve inside the folder before anything moves into ``dest``.
    The archive is extracted into a temporary folder inside ``dest`` and its top-level entries renamed into place,
    so a crash never leaves half a tree under the final name. Entries that already exist are kept (idempotent).
    Returns ``dest/<top>`` when the archive has a single top-level folder, else ``dest``.
    """
    zip_path = os.fspath(zip_path)
    dest = os.path.abspath(os.fspath(dest))
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path}: not a readable zip file ({e})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            problem = _member_problem(info, zf)
            if problem:
                raise DataError(f"{zip_path}: refusing member {info.filename!r} ({problem})")
        member_parts = [_parts(info.filename) for info in infos]
        # a link's depth check above is lexical: a member reached through another link (d/up -> .., then
        # d/up/d/x -> ../../..) would land elsewhere than its name says, so no member may pass through a link
        links = {tuple(p) for p, info in zip(member_parts, infos) if stat.S_ISLNK(info.external_attr >> 16)}
        for p, info in zip(member_parts, infos):
            through = next((p[:k] for k in range(1, len(p)) if tuple(p[:k]) in links), None)
            if through is not None:
                raise DataError(f"{zip_path}: refusing member {info.filename!r} (its path goes through the "
                                f"symlink {'/'.join(through)})")
        tops = sorted({p[0] for p in member_parts if p})
        single_dir = len(tops) == 1 and any(len(p) > 1 or info.is_dir() for p, info in zip(member_parts, infos))
        result = os.path.join(dest, tops[0]) if single_dir else dest
        os.makedirs(dest, exist_ok=True)
        if tops and all(os.path.exists(os.path.join(dest, t)) for t in tops):
            logger.info("%s: already extracted in %s", zip_path, dest)
            return result
        tmp = temp_name(os.path.join(dest, ".extract"))
        os.makedirs(tmp)
        real_tmp = os.path.realpath(tmp)
        try:
            for info in infos:
                target = os.path.realpath(os.path.join(tmp, info.filename.replace("\\", "/")))
                if not (target == real_tmp or target.startswith(real_tmp + os.sep)):
                    raise DataError(f"{zip_path}: refusing member {info.filename!r} (escapes the folder)")
                if stat.S_ISLNK(info.external_attr >> 16):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.symlink(zf.read(info).decode("utf-8"), target)
                else:
                    zf.extract(info, tmp)
            for info in infos:  # every link, now that all exist, must resolve inside the folder
                if stat.S_ISLNK(info.external_attr >> 16):
                    where = os.path.realpath(os.path.join(tmp, info.filename.replace("\\", "/")))
                    if not (where == real_tmp or where.startswith(real_tmp + os.sep)):
                        raise DataError(f"{zip_path}: refusing member {info.filename!r} (symlink escaping the "
                                        f"folder)")
            for t in tops:
                final = os.path.join(dest, t)
                if not os.path.exists(final):
                    os.replace(os.path.join(tmp, t), final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s into %s", zip_path, dest)
    return result
