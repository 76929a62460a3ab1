"""The image cache's checksums: one SHA-256 per 64 MiB chunk of each split's images file and one for its labels and
file list, computed at build time, checked at load (in full or sampled) and by ``tinytransfer verify-cache``; and the
reading of one split's files against its manifest entry. The cache itself (key, build, load) is :mod:`.cache`."""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .decode import Progress

__all__ = ["CHUNK_BYTES", "HASH", "CachedSplit", "chunk_digest", "chunk_tasks", "digest", "file_digests", "mismatches",
           "read_split"]

HASH = "sha256"  # hashlib algorithm of the checksums (recorded in the manifest; SHA-NI makes it the fastest here)
CHUNK_BYTES = 64 << 20  # bytes of an images file that one checksum covers

CachedSplit = tuple[np.ndarray, np.ndarray, list[str]]  # images (N, H, W, 3) uint8 memmap, labels (N,) int64, files


def digest(data: bytes) -> str:
    return hashlib.new(HASH, data).hexdigest()


def chunk_digest(path: str, index: int, algo: str, chunk_bytes: int) -> str:
    """Checksum of bytes [index·chunk_bytes, (index+1)·chunk_bytes) of a file, hashed straight from a memory map
    (no copy; hashlib releases the GIL, so threads hash chunks in parallel)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= index * chunk_bytes:
            return hashlib.new(algo).hexdigest()  # past the end (a truncated file)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:
            return hashlib.new(algo, view[index * chunk_bytes:(index + 1) * chunk_bytes]).hexdigest()


def file_digests(path: str, threads: int, what: str) -> list[str]:
    """Checksums of every chunk of a file, ``threads`` chunks at a time, with progress."""
    n = max(1, -(-os.path.getsize(path) // CHUNK_BYTES))
    out: list[str] = []
    with Progress(n, what, unit="chunk") as bar, ThreadPoolExecutor(max(1, threads)) as ex:
        for d in ex.map(lambda i: chunk_digest(path, i, HASH, CHUNK_BYTES), range(n)):
            out.append(d)
            bar.update(1)
    return out


def mismatches(tasks: list[tuple[str, int, str]], algo: str, chunk_bytes: int, threads: int) -> list[str]:
    """One message for each (path, chunk index, expected checksum) whose bytes no longer hash to it."""
    def check(t: tuple[str, int, str]) -> str | None:
        path, i, want = t
        if chunk_digest(path, i, algo, chunk_bytes) == want:
            return None
        return (f"{path}: bytes {i * chunk_bytes}-{min((i + 1) * chunk_bytes, os.path.getsize(path)) - 1} "
                f"(chunk {i + 1}) do not match the manifest's checksum")

    with ThreadPoolExecutor(max(1, threads)) as ex:
        return [m for m in ex.map(check, tasks) if m is not None]


def read_split(folder: str, name: str, info: dict, manifest: dict) -> CachedSplit:
    """A split's files, checked against the manifest (shapes, sizes; labels' and files' checksums); the images
    are memory-mapped, their chunks not checked here. ValueError naming the file on any mismatch."""
    s = int(manifest["image_size"])
    n = int(info["count"])
    sums = info["checksums"]
    img_path = os.path.join(folder, info["images"])
    images = np.load(img_path, mmap_mode="r")
    if images.dtype != np.uint8 or images.shape != (n, s, s, 3):
        raise ValueError(f"{img_path}: shape {images.shape} {images.dtype}, the manifest says ({n}, {s}, {s}, 3)")
    if os.path.getsize(img_path) != int(sums["images_bytes"]):
        raise ValueError(f"{img_path}: {os.path.getsize(img_path)} bytes, the manifest says {sums['images_bytes']}")
    parsed = []
    for kind, parse in (("labels", lambda b: np.load(io.BytesIO(b))), ("files", lambda b: json.loads(b))):
        path = os.path.join(folder, info[kind])
        with open(path, "rb") as f:
            raw = f.read()
        if hashlib.new(manifest["hash"], raw).hexdigest() != sums[kind]:
            raise ValueError(f"{path}: does not match the manifest's checksum")
        parsed.append(parse(raw))
    labels, files = parsed
    if labels.shape != (n,) or len(files) != n:
        raise ValueError(f"split {name} does not match the manifest")
    return images, labels.astype(np.int64, copy=False), list(files)


def chunk_tasks(folder: str, info: dict) -> list[tuple[str, int, str]]:
    path = os.path.join(folder, info["images"])
    return [(path, i, d) for i, d in enumerate(info["checksums"]["images"])]
