"""Exact and near-duplicate images among decoded ``(N, H, W, 3)`` uint8 arrays (the cache's), as pairs.

- **exact**: identical decoded pixels (a SHA-1 digest of each image's bytes).
- **near**: the same picture re-encoded (JPEG quality 75), resized by ±10 % (the cache brings every image back to
  one size, so a resized copy arrives slightly blurred) or lightly edited. The test: the two 32×32 grey thumbnails
  (box-filtered) correlate (Pearson, at least :data:`CORR_MIN`) and differ by at most :data:`RMS_MAX` grey levels
  RMS, and no channel's mean differs by more than RMS_MAX (grey is blind to hue); or, for nearly flat pictures
  whose structure is mostly noise (a JPEG copy's correlation can fall to 0.6), thumbnails and channel means within
  :data:`SAME_RMS` grey levels: indistinguishable to the eye. Distinct pictures that share a layout (Fashion-MNIST's centred products on black) may correlate, but differ by
  9 grey levels RMS or more; re-encoded and resized copies by 5 or less (CIFAR-10 and Fashion-MNIST; docs/audit.md).
  Candidates come from a perceptual fingerprint, the 8×8 grey thumbnail (64 block means, the features an average
  hash binarises), compared all against all by RMS distance: a block mean differs less than the pixels it averages,
  so every pair that passes the test is within RMS_MAX (+1 for rounding) there, and no pair can be missed. (A
  binarised 64-bit DCT pHash was tried first: a JPEG-75 copy of a smooth image differed in 12 of its bits, as many as
  distinct pictures do.)

Pure functions on arrays, in chunks (memory-mapped caches are read once, a chunk at a time); nothing here reads
files. :func:`fingerprints` computes what :func:`exact_pairs` and :func:`near_pairs` compare.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

__all__ = ["CORR_MIN", "RMS_MAX", "SAME_RMS", "THUMB", "Fingerprints", "concat", "exact_pairs", "fingerprints",
           "near_pairs"]

THUMB = 32  # side of the grey thumbnail that is compared (its 8×8 block means are the fingerprint)
CORR_MIN = 0.98  # Pearson correlation of the two 32×32 thumbnails, at least
RMS_MAX = 7.0  # RMS difference of the two thumbnails in grey levels (0..255), at most
SAME_RMS = 2.0  # thumbnails (and channel means) this close are near duplicates whatever their correlation
_FLAT_STD = 1.0  # a thumbnail with less standard deviation (grey levels) than this is flat: no correlation to take
_CHUNK = 2048  # images processed at a time
_BLOCK = 256  # rows of the all-against-all comparison at a time (256 × N float32 distances in memory)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 grey, as PIL's convert("L")


class Fingerprints(NamedTuple):
    """Per image (N rows): ``digest`` (N,) SHA-1 of the pixels, ``thumb``
    (N, 32·32) uint8 grey thumbnail, ``coarse`` (N, 8·8) float32 the thumbnail averaged down to 8×8, ``colour`` (N, 3) float32 the
    mean R, G, B, ``gray`` (N,)
    bool: the three channels are equal everywhere."""

    digest: np.ndarray
    thumb: np.ndarray
    coarse: np.ndarray
    colour: np.ndarray
    gray: np.ndarray


def _area_resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix averaging the source pixels each destination pixel covers (box filter, exact areas)."""
    m = np.zeros((dst, src), dtype=np.float32)
    scale = src / dst
    for j in range(dst):
        a, b = j * scale, (j + 1) * scale
        for i in range(int(np.floor(a)), min(src, int(np.ceil(b)))):
            m[j, i] = max(0.0, min(b, i + 1) - max(a, i))
    return m / m.sum(axis=1, keepdims=True)


def concat(parts: list[Fingerprints]) -> Fingerprints:
    """The fingerprints of several arrays, one after the other (rows numbered across them)."""
    return Fingerprints(*(np.concatenate([getattr(p, f) for p in parts]) for f in Fingerprints._fields))


def fingerprints(images: np.ndarray) -> Fingerprints:
    """Digests, thumbnails, fingerprints and grayscale flags of ``images`` (N, H, W, 3) uint8 (square)."""
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    rh, rw = _area_resize_matrix(h, THUMB), _area_resize_matrix(w, THUMB)
    digest = np.empty(n, dtype="S20")
    thumb = np.empty((n, THUMB * THUMB), dtype=np.uint8)  # rounded: 1 KB an image (±0.3 grey levels RMS)
    coarse = np.empty((n, 64), dtype=np.float32)
    colour = np.empty((n, 3), dtype=np.float32)
    gray = np.empty(n, dtype=bool)
    for a in range(0, n, _CHUNK):
        x = np.ascontiguousarray(images[a:a + _CHUNK])  # (B, H, W, 3) uint8, read once
        b = len(x)
        for k in range(b):
            digest[a + k] = hashlib.sha1(x[k].data).digest()
        gray[a:a + b] = _gray(x)
        colour[a:a + b] = x.reshape(b, -1, 3).mean(axis=1, dtype=np.float32)
        g = x[..., 0] * _LUMA[0] + x[..., 1] * _LUMA[1] + x[..., 2] * _LUMA[2]  # (B, H, W) float32 grey levels
        t = rh @ g @ rw.T  # (B, 32, 32) box-filtered thumbnail
        thumb[a:a + b] = np.clip(np.rint(t), 0, 255).reshape(b, -1)
        coarse[a:a + b] = t.reshape(b, 8, THUMB // 8, 8, THUMB // 8).mean(axis=(2, 4)).reshape(b, 64)
    return Fingerprints(digest, thumb, coarse, colour, gray)


def _gray(x: np.ndarray) -> np.ndarray:
    """(B,) whether each (B, H, W, 3) image has R = G = B everywhere: a sparse pixel grid rules most colour images out,
    the rest are checked in full."""
    def equal(v: np.ndarray) -> np.ndarray:
        return ((v[..., 0] == v[..., 1]) & (v[..., 1] == v[..., 2])).reshape(len(v), -1).all(axis=1)

    out = equal(x[:, ::8, ::8])
    idx = np.flatnonzero(out)
    if len(idx):
        out[idx] = equal(x[idx])
    return out


def exact_pairs(digest: np.ndarray) -> list[tuple[int, int]]:
    """(i, j), i < j, of every two rows with the same digest (each group of k copies gives its k·(k−1)/2 pairs)."""
    order = np.argsort(digest, kind="stable")
    d = digest[order]
    out: list[tuple[int, int]] = []
    start = 0
    for e in range(1, len(d) + 1):
        if e == len(d) or d[e] != d[start]:
            group = sorted(int(v) for v in order[start:e])
            out += [(group[p], group[q]) for p in range(len(group)) for q in range(p + 1, len(group))]
            start = e
    return out


def _compare(ta: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M,) Pearson correlation and (M,) RMS difference (grey levels) of thumbnail pairs; the correlation of a flat
    thumbnail (no structure to correlate) counts as 1, leaving the decision to the RMS difference."""
    ta, tb = ta.astype(np.float32), tb.astype(np.float32)
    ca = ta - ta.mean(axis=1, keepdims=True)
    cb = tb - tb.mean(axis=1, keepdims=True)
    sa, sb = np.sqrt((ca * ca).mean(axis=1)), np.sqrt((cb * cb).mean(axis=1))
    corr = (ca * cb).mean(axis=1) / np.maximum(sa * sb, 1e-6)
    corr = np.where((sa < _FLAT_STD) | (sb < _FLAT_STD), 1.0, corr)
    rms = np.sqrt(((ta - tb) ** 2).mean(axis=1))
    return corr, rms


def near_pairs(fp: Fingerprints, *, corr_min: float = CORR_MIN,
               rms_max: float = RMS_MAX) -> list[tuple[int, int, float, float, float]]:
    """(i, j, fingerprint distance, thumbnail correlation, thumbnail RMS difference), i < j, of the confirmed near
    duplicates among all rows (exact copies included: their distances are 0). All against all in blocks of a
    matrix product: |a − b|² = |a|² + |b|² − 2 a·b over the 64 fingerprint values, no index to miss a pair."""
    c = fp.coarse - np.float32(128.0)  # (N, 64) centred: smaller norms, less float32 cancellation
    n = len(c)
    sq = (c * c).sum(axis=1)  # (N,)
    limit = np.float32(64.0 * (rms_max + 1.0) ** 2)  # + 1: the thumbnails are rounded to whole grey levels
    out: list[tuple[int, int, float, float, float]] = []
    for a in range(0, n, _BLOCK):
        d2 = sq[a:a + _BLOCK, None] + sq[None, a:] - 2.0 * (c[a:a + _BLOCK] @ c[a:].T)  # (B, N - a): only j >= a
        ii, jj = np.nonzero(d2 <= limit)
        keep = jj > ii  # j (offset by a) after i: each pair once, no self pairs
        ii, jj = ii[keep] + a, jj[keep] + a
        if not len(ii):
            continue
        dist = np.sqrt(np.maximum(d2[ii - a, jj - a], 0.0) / 64.0)
        corr, rms = _compare(fp.thumb[ii], fp.thumb[jj])
        hue = np.abs(fp.colour[ii] - fp.colour[jj]).max(axis=1)  # grey thumbnails are blind to hue
        same = (rms <= SAME_RMS) & (hue <= SAME_RMS)  # indistinguishable (a copy of a nearly flat image)
        ok = ((corr >= corr_min) & (rms <= rms_max) & (hue <= rms_max)) | same
        out += [(i, j, round(float(d), 2), round(float(cc), 4), round(float(r), 2)) for i, j, d, cc, r in
                zip(ii[ok].tolist(), jj[ok].tolist(), dist[ok].tolist(), corr[ok].tolist(), rms[ok].tolist())]
    return out
