"""The data audit: what is in a dataset before a model trains on it, from the decoded uint8 cache (no second decode).

:func:`audit_splits` (pure, on arrays) gives per-class image counts and the imbalance ratio, the grayscale share,
classes with no images, exact duplicates (identical pixels) within train and across train/val/test, and near
duplicates (:mod:`.duplicates`: a DCT perceptual hash confirmed on thumbnails), as pairs. :func:`audit_dataset` adds
what the cache does not hold: the original image sizes (read from the file headers, no pixel decoding) and the files
the cache skipped as unreadable. This module owns ``audit.json`` (:func:`write_audit`, :func:`read_audit`);
:func:`warning_line` is the one-line warning ``train`` logs before the first epoch when splits share images.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from ..fsutil import atomic_write_text
from .dataset import Dataset
from .decode import DataError, probe_files
from .duplicates import CORR_MIN, RMS_MAX, concat, exact_pairs, fingerprints, near_pairs

__all__ = ["AUDIT_FORMAT", "AUDIT_JSON", "MAX_LISTED_PAIRS", "audit_dataset", "audit_splits", "cross_split_pairs",
           "original_sizes", "read_audit", "warning_line", "write_audit"]

log = logging.getLogger(__name__)

AUDIT_FORMAT = "tinytransfer-audit/1"
AUDIT_JSON = "audit.json"  # in the run folder (train), or beside the dataset (tinytransfer audit DATA)
MAX_LISTED_PAIRS = 1000  # pairs of each kind listed in audit.json (cross-split first); the counts are complete
SPLITS = ("train", "val", "test")

SplitArrays = tuple[np.ndarray, np.ndarray, Sequence[str]]  # images (N, H, W, 3) uint8, labels (N,), files (N,)


def audit_splits(splits: Mapping[str, SplitArrays], classes: Sequence[str], *, names: Sequence[str] | None = None,
                 sizes: Mapping[str, Sequence[tuple[int, int] | None]] | None = None,
                 skipped: Sequence[str] = ()) -> dict:
    """The audit of decoded splits (``{"train": (images, labels, files), "val": ..., "test": ...}``; labels -1 =
    unlabelled) as a JSON-ready dict. ``sizes``: each split's original (width, height) per image, if known;
    ``skipped``: "file: problem" for files left out as unreadable."""
    t0 = time.perf_counter()
    order = [s for s in SPLITS if s in splits] + [s for s in splits if s not in SPLITS]
    n_cls = len(classes)
    out: dict = {"format": AUDIT_FORMAT, "classes": list(classes), "names": list(names or classes), "splits": {}}
    parts, where = [], []  # fingerprints per split; (split, index) of every global row
    for name in order:
        images, labels, files = splits[name]
        labels = np.asarray(labels, dtype=np.int64)
        fp = fingerprints(images)
        parts.append(fp)
        where += [(name, i) for i in range(len(labels))]
        counts = np.bincount(labels[labels >= 0], minlength=n_cls)[:n_cls] if n_cls else np.zeros(0, np.int64)
        labelled = bool((labels >= 0).any())
        info: dict = {"images": int(len(labels)), "grayscale": int(fp.gray.sum()),
                      "grayscale_share": round(float(fp.gray.mean()), 4) if len(labels) else 0.0,
                      "labelled": labelled}
        if labelled:
            info["per_class"] = {c: int(k) for c, k in zip(classes, counts)}
            info["empty_classes"] = [c for c, k in zip(classes, counts) if k == 0]
            present = counts[counts > 0]
            info["imbalance_ratio"] = (round(float(present.max() / present.min()), 3)
                                       if len(present) and not info["empty_classes"] else None)
        out["splits"][name] = info
    total = sum(v["images"] for v in out["splits"].values())
    gray = sum(v["grayscale"] for v in out["splits"].values())
    train = out["splits"].get("train", {})
    out["images"] = total
    out["grayscale_share"] = round(gray / total, 4) if total else 0.0
    out["imbalance_ratio"] = train.get("imbalance_ratio")  # max / min images a class in train (None: a class is empty)
    out["empty_classes"] = list(train.get("empty_classes", []))
    out["skipped"] = list(skipped)
    if sizes is not None:
        out["original_sizes"] = _size_summary([s for name in order for s in sizes.get(name, [])],
                                              int(splits[order[0]][0].shape[1]) if order else 0)

    fp = concat(parts) if parts else None
    label_of = {name: np.asarray(splits[name][1]) for name in order}
    files_of = {name: splits[name][2] for name in order}

    def side(g: int) -> dict:
        name, i = where[g]
        lab = int(label_of[name][i])
        return {"split": name, "index": i, "file": str(files_of[name][i]), "label": classes[lab] if lab >= 0 else None}

    def pair(kind: str, g: int, h: int, **extra: object) -> dict:
        a, b = side(g), side(h)
        return {"kind": kind, "a": a, "b": b, "cross_split": a["split"] != b["split"],
                "same_label": None if a["label"] is None or b["label"] is None else a["label"] == b["label"], **extra}

    exact = [pair("exact", g, h) for g, h in exact_pairs(fp.digest)] if fp is not None else []
    near = ([pair("near", g, h, fingerprint_rms=d, correlation=c, rms=r)
             for g, h, d, c, r in near_pairs(fp)] if fp is not None else [])
    exact_set = {(p["a"]["split"], p["a"]["index"], p["b"]["split"], p["b"]["index"]) for p in exact}
    near = [p for p in near if (p["a"]["split"], p["a"]["index"], p["b"]["split"], p["b"]["index"]) not in exact_set]
    out["exact_duplicates"] = _pairs_block(exact)
    out["near_duplicates"] = _pairs_block(near)
    out["cross_split_pairs"] = out["exact_duplicates"]["cross_split"] + out["near_duplicates"]["cross_split"]
    out["method"] = {"exact": "identical decoded pixels (SHA-1 of the cached uint8 image)",
                     "near": "32x32 grey thumbnails (box-filtered) with correlation >= "
                             f"{CORR_MIN} and RMS difference <= {RMS_MAX} grey levels; candidates from the 8x8 "
                             "block-mean fingerprint, all against all", "correlation_min": CORR_MIN,
                     "rms_max": RMS_MAX}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _pairs_block(pairs: list[dict]) -> dict:
    """Counts by split pair, and the pairs themselves (cross-split first, then within train), at most
    MAX_LISTED_PAIRS."""
    by: Counter = Counter("-".join(sorted((p["a"]["split"], p["b"]["split"]), key=_split_rank)) for p in pairs)
    ranked = sorted(pairs, key=lambda p: (not p["cross_split"], p["a"]["split"] != "train"))
    return {"pairs_total": len(pairs), "cross_split": sum(p["cross_split"] for p in pairs),
            "within_train": by.get("train-train", 0), "by_splits": dict(sorted(by.items())),
            "label_conflicts": sum(p["same_label"] is False for p in pairs), "pairs": ranked[:MAX_LISTED_PAIRS],
            "listed": min(len(pairs), MAX_LISTED_PAIRS)}


def _split_rank(name: str) -> int:
    return SPLITS.index(name) if name in SPLITS else len(SPLITS)


def _size_summary(sizes: Sequence[tuple[int, int] | None], cached: int) -> dict:
    """The original (width, height) of the images: the most common ones, range, and how many the cache resized."""
    known = [tuple(s) for s in sizes if s is not None]
    c = Counter(known)
    return {"known": len(known), "distinct": len(c), "cache_side": cached,
            "most_common": [[w, h, k] for (w, h), k in c.most_common(10)],
            "min": list(min(known, key=lambda s: (s[0] * s[1], s))) if known else None,
            "max": list(max(known, key=lambda s: (s[0] * s[1], s))) if known else None,
            "resized": sum(k for (w, h), k in c.items() if (w, h) != (cached, cached))}


def original_sizes(root: str, files: Sequence[str], *, workers: int = 2) -> list[tuple[int, int] | None]:
    """(width, height) of each file from its header (no decoding); None where the header cannot be read."""
    out: list[tuple[int, int] | None] = []
    for sizes, _ in probe_files(root, list(files), workers=workers, skip=True, what="read image sizes"):
        out += sizes
    return out


def audit_dataset(ds: Dataset, *, probe_sizes: bool = True, workers: int = 2) -> dict:
    """:func:`audit_splits` of a loaded dataset (its memory-mapped cache), with the original sizes from the file
    headers (``probe_sizes``) and the files the cache skipped."""
    t0 = time.perf_counter()
    parts = {name: s for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s is not None}
    splits = {name: (s.images, s.labels, s.files) for name, s in parts.items()}
    sizes = ({name: original_sizes(ds.root, s.files, workers=workers) for name, s in parts.items()}
             if probe_sizes else None)
    out = audit_splits(splits, ds.classes, names=ds.names, sizes=sizes, skipped=ds.skipped)
    out = {"root": ds.root, "image_size": int(ds.image_size), **out, "seconds": round(time.perf_counter() - t0, 3)}
    return out


def cross_split_pairs(audit: Mapping) -> int:
    """Exact plus near duplicate pairs whose images sit in different splits."""
    return int(audit.get("cross_split_pairs", 0))


def warning_line(audit: Mapping) -> str | None:
    """The one-line warning about images shared between splits (None where there are none)."""
    n = cross_split_pairs(audit)
    if not n:
        return None
    ex, ne = audit["exact_duplicates"], audit["near_duplicates"]
    by = Counter(ex["by_splits"]) + Counter(ne["by_splits"])
    shown = ", ".join(f"{k} {v}" for k, v in sorted(by.items()) if "-" in k and len(set(k.split("-"))) == 2)
    return (f"data audit: {n} duplicate pair{'s' * (n != 1)} across splits ({ex['cross_split']} exact, "
            f"{ne['cross_split']} near; {shown}): validation and test scores may be inflated; see audit.json")


def write_audit(audit: Mapping, path: str | os.PathLike) -> str:
    """Write ``audit.json`` atomically (NaN/inf as null); returns the path."""
    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path = os.fspath(path)
    atomic_write_text(path, json.dumps(clean(dict(audit)), indent=1) + "\n")
    return path


def read_audit(path: str | os.PathLike) -> dict | None:
    """An ``audit.json`` (a file, or a folder holding one); None where absent; DataError naming it if unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, AUDIT_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable audit ({e})") from None
    if not isinstance(data, dict) or data.get("format") != AUDIT_FORMAT:
        raise DataError(f"{path}: not a tinytransfer audit (format {AUDIT_FORMAT!r} expected)")
    return data
