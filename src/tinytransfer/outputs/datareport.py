"""The data audit in a run: ``audit.json`` and ``duplicates.png`` written before the first epoch, the warning line, and
report.html's "Data" section.

:func:`audit_for_run` is what ``train`` calls once the dataset is loaded (the audit itself is
:mod:`tinytransfer.data.audit`, pure); :func:`plot_duplicate_pairs` draws the pairs' thumbnails from the cached
arrays; :func:`data_section` renders the section from the run folder alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..config import RunConfig
from ..data.audit import AUDIT_JSON, audit_dataset, read_audit, warning_line, write_audit
from ..data.dataset import Dataset
from ..data.decode import DataError
from ..fsutil import atomic_write
from ..runs.runfolder import RunLock, new_run_problem
from . import htmlparts as hp

__all__ = ["DUPLICATES_PNG", "MAX_SHOWN_PAIRS", "audit_for_run", "data_section", "plot_duplicate_pairs"]

log = logging.getLogger(__name__)

DUPLICATES_PNG = "duplicates.png"  # thumbnails of the first MAX_SHOWN_PAIRS duplicate pairs (cross-split first)
MAX_SHOWN_PAIRS = 12


def audit_for_run(data: Dataset, run_dir: str | os.PathLike, *, cfg: RunConfig | None = None, resuming: bool = False,
                  force: bool = False, workers: int = 2) -> dict:
    """Audit ``data`` (original sizes from the headers of every file), log the one-line warning when splits share
    images, and write ``audit.json`` and ``duplicates.png`` into ``run_dir`` under its lock, unless the folder
    holds another run that ``fit`` is about to refuse (``cfg`` given, not ``resuming`` nor ``force``)."""
    audit = audit_dataset(data, workers=workers)
    line = warning_line(audit)
    if line:
        log.warning("%s", line)
    log.info("data audit in %.1f s: %d exact and %d near duplicate pairs, grayscale %.1f %%, imbalance %s",
             audit["seconds"], audit["exact_duplicates"]["pairs_total"], audit["near_duplicates"]["pairs_total"],
             100 * audit["grayscale_share"], audit["imbalance_ratio"])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, force=force):  # a live run in this folder fails this as it fails fit, before any write
        if cfg is not None and not resuming and not force and new_run_problem(run_dir, cfg):
            return audit  # another run's folder: fit refuses it next, with the reason
        write_audit(audit, run_dir / AUDIT_JSON)
        pairs = audit["exact_duplicates"]["pairs"] + audit["near_duplicates"]["pairs"]
        if pairs:
            plot_duplicate_pairs(pairs, data, run_dir / DUPLICATES_PNG)
        else:
            (run_dir / DUPLICATES_PNG).unlink(missing_ok=True)
    return audit


def plot_duplicate_pairs(pairs: list[dict], data: Dataset, path: str | os.PathLike, *,
                         limit: int = MAX_SHOWN_PAIRS) -> str:
    """Thumbnails of duplicate pairs (audit.json's entries; cross-split ones first), two pairs a row, each image
    captioned with its split, file name and label."""
    pairs = sorted(pairs, key=lambda p: not p["cross_split"])[:limit]
    rows = max(1, (len(pairs) + 1) // 2)
    fig = Figure(figsize=(8, 2.3 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, p in enumerate(pairs):
        for s, side in enumerate((p["a"], p["b"])):
            split = getattr(data, side["split"], None)
            ax = axes[k // 2][2 * (k % 2) + s]
            if split is not None and side["index"] < len(split):
                ax.imshow(np.asarray(split.images[side["index"]]), interpolation="nearest")
            name = os.path.basename(side["file"])
            ax.set_title(f"{side['split']}: {name[:22]}\n{side['label'] or 'unlabelled'}"
                         + (f"\n{p['kind']}" + (f" r={p['correlation']:.3f}" if p["kind"] == "near" else "")
                            if s == 0 else "\n"), fontsize=7)
    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def data_section(run_dir: str | os.PathLike) -> str:
    """report.html's "Data" section from ``audit.json`` (and ``duplicates.png``) in the run folder."""
    run_dir = Path(run_dir)
    try:
        a = read_audit(run_dir / AUDIT_JSON)
    except DataError as e:
        log.warning("report: %s", e)
        a = None
    if a is None:
        return hp.missing("data audit (audit.json)")
    splits = a.get("splits", {})
    sizes = a.get("original_sizes") or {}
    common = ", ".join(f"{w}×{h} ({k})" for w, h, k in sizes.get("most_common", [])[:3]) or "–"
    ex, ne = a["exact_duplicates"], a["near_duplicates"]
    facts = [
        ("images", "  ".join(f"{n}: {v['images']}" for n, v in splits.items())),
        ("classes", len(a.get("classes", []))),
        ("imbalance ratio (train, most / fewest images a class)", a.get("imbalance_ratio") or "– (a class is empty)"),
        ("classes with no train images", ", ".join(a.get("empty_classes", [])) or "none"),
        ("grayscale files", f"{100 * a.get('grayscale_share', 0):.1f} %"),
        ("original sizes (most common)", common + (f"; {sizes.get('distinct')} distinct, {sizes.get('resized')} "
                                                   f"resized to {sizes.get('cache_side')} px" if sizes else "")),
        ("unreadable files skipped", len(a.get("skipped", []))),
        ("exact duplicate pairs", f"{ex['pairs_total']} ({ex['within_train']} within train, {ex['cross_split']} "
                                  "across splits)"),
        ("near duplicate pairs", f"{ne['pairs_total']} ({ne['within_train']} within train, {ne['cross_split']} "
                                 "across splits)"),
    ]
    line = warning_line(a)
    warn = f'<p class="missing"><b>{hp.esc(line)}</b></p>' if line else ""
    listed = sorted(ex["pairs"] + ne["pairs"], key=lambda p: not p["cross_split"])[:20]
    table = hp.table(["kind", "first", "second", "labels", "correlation", "RMS"],
                     [(p["kind"], f"{p['a']['split']}: {p['a']['file']}", f"{p['b']['split']}: {p['b']['file']}",
                       f"{p['a']['label'] or '–'} / {p['b']['label'] or '–'}", p.get("correlation", 1.0),
                       p.get("rms", 0.0)) for p in listed], numeric=(4, 5)) if listed else ""
    png = run_dir / DUPLICATES_PNG
    thumbs = hp.img(png, "duplicate pairs (cross-split first)") if listed and png.is_file() else ""
    return warn + hp.table(["", ""], facts) + thumbs + table
