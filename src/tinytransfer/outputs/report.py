"""``report.html``: one self-contained page for a run folder (images as base64 data URIs, inline CSS, no requests).

Sections (each an element with this ``id``): ``run`` (title), ``config``, ``summary`` (Table 1), ``curves``,
``final`` (final metrics), ``errors`` (error analysis), ``inside`` (feature maps and Grad-CAM), ``predictions``.
A piece the run did not produce is shown as "not produced for this run".

Files read from the run folder: ``config.yaml``, ``metrics.csv``, ``accuracy.png``/``loss.png``/``lr.png`` (drawn
here from metrics.csv when missing), ``analysis.json``, ``confusion_pairs.png``, ``per_class.png``, ``mistakes.png``,
``featuremaps*.png``, ``gradcam*.png``, ``predictions.csv``.

``analysis.json`` (validation-split error analysis; :func:`analysis_from_confusion` builds it)::

    {"split": "val",                                   # optional
     "top1": 0.5623, "top5": 0.80,                     # fractions; top5 may be null
     "n": 10000,                                       # optional: images evaluated
     "confused_pairs": [{"true": "school bus", "pred": "trolleybus", "count": 12}, ...],   # most first
     "per_class": [{"class": "n04146614", "name": "school bus", "acc": 0.82, "n": 50}, ...]}
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..fsutil import atomic_write_text
from ..runs.metricsfile import base_word, fmt_lr, read_metrics, table1_rows
from ..runs.runfolder import read_auto_lr, read_config
from . import htmlparts as hp
from . import plots
from .analysis import ANALYSIS_JSON
from .budgetreport import budget_part
from .calibration import calibration_section
from .datareport import data_section
from .htmlparts import NOT_PRODUCED
from .predict import printable

log = logging.getLogger(__name__)

__all__ = [
    "NOT_PRODUCED",
    "REPORT_HTML",
    "SECTION_IDS",
    "write_report",
]

REPORT_HTML = "report.html"
SECTION_IDS = ("run", "headline", "data", "config", "summary", "curves", "final", "calibration", "errors", "inside",
               "predictions")
_PREDICTION_ROWS = 20  # rows of predictions.csv shown




# ---- HTML pieces --------------------------------------------------------------------------------------------------


def _config_section(cfg: dict) -> str:
    if not cfg:
        return hp.missing("config.yaml")
    parts = [hp.table(("key", "value"), hp.flatten(cfg))]
    phases = [p for p in (cfg.get("phases") or []) if isinstance(p, Mapping)]
    if phases:
        keys: list[str] = []
        for p in phases:
            keys += [k for k in p if k not in keys]
        parts.append("<h3>Phases</h3>")
        parts.append(hp.table(["phase", *keys], [[i + 1, *(p.get(k, "") for k in keys)] for i, p in enumerate(phases)]))
    parts.append("<details><summary>config.yaml</summary><pre>"
                 f"{hp.esc(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>")
    return "".join(parts)


def _summary_section(table: list[dict] | None) -> str:
    if not table:
        return hp.missing("Table 1 (needs metrics.csv)")
    rows = [[t["phase"], t["name"], base_word(t["train"]), t["lr_policy"],
             fmt_lr(t["base_lr"]), fmt_lr(t["max_lr"]),
             "–" if t["step_size"] is None else t["step_size"], t["start_epoch"], t["end_epoch"],
             t["planned_epochs"], hp.pct(t["max_val_acc"])] for t in table]
    return hp.table(("phase", "name", "base", "LR policy", "base LR", "max LR", "step size (iterations)",
                   "start epoch", "end epoch", "planned epochs", "max val accuracy"), rows,
                  numeric=(4, 5, 6, 7, 8, 9, 10))


def _auto_lr_part(run_dir: Path) -> str:
    """The LR bounds auto_lr measured, beside the recipe's (empty where no phase used auto_lr)."""
    records = read_auto_lr(run_dir)
    if not records:
        return ""

    def lr(v: Any) -> str:
        return "–" if v is None else fmt_lr(float(v))

    rows = [[k, r.get("name", ""), f"{lr(r['recipe'][0])} → {lr(r['recipe'][1])}", lr(r.get("steepest")),
             lr(r.get("min_loss")), f"{lr(r['chosen'][0])} → {lr(r['chosen'][1])}"
             + ("" if r.get("measured", True) else " (no descent: recipe's kept)"), r.get("steps", ""),
             r.get("seconds", "")]
            for k, r in sorted(records.items(), key=lambda kv: int(kv[0]))]
    rule = next(iter(records.values())).get("rule", "")
    return ("<h3>Learning rates from the LR range test (auto_lr)</h3>"
            + hp.table(("phase", "name", "recipe's LR", "steepest descent", "min loss", "chosen LR", "steps",
                      "seconds"), rows) + f"<p>Rule: {hp.esc(rule)}.</p>")


def _final_section(rows: list[dict] | None, analysis: dict | None, extra: Mapping | None) -> str:
    items: list[tuple[str, str]] = []
    if rows:
        val = [r for r in rows if not math.isnan(r["val_acc"])]
        if val:
            best = max(val, key=lambda r: r["val_acc"])
            items.append(("best val top-1", f"{hp.pct(best['val_acc'])} (epoch {best['epoch']}, phase {best['phase']})"))
            top5 = [r["val_top5"] for r in val if not math.isnan(r["val_top5"])]
            if top5:
                items.append(("best val top-5", hp.pct(max(top5))))
        last = rows[-1]
        items.append(("last train top-1", f"{hp.pct(last['train_acc'])} (epoch {last['epoch']})"))
        secs = sum(r["seconds"] for r in rows if not math.isnan(r["seconds"]))
        items.append(("total training time", f"{secs / 60:.1f} min ({secs:.0f} s, {len(rows)} epochs)"))
        ips = [r["img_s"] for r in rows if not math.isnan(r["img_s"])]
        if ips:
            items.append(("training throughput", f"{np.mean(ips):.1f} img/s (mean over epochs; "
                                                 f"{min(ips):.1f}–{max(ips):.1f})"))
    if analysis:
        split = analysis.get("split", "val")
        items.append((f"{split} top-1 (analysis)", hp.pct(analysis.get("top1"))))
        if analysis.get("top5") is not None:
            items.append((f"{split} top-5 (analysis)", hp.pct(analysis.get("top5"))))
    for k, v in (extra or {}).items():
        items.append((str(k), str(v)))
    if not items:
        return hp.missing("final metrics (needs metrics.csv)")
    return hp.table(("metric", "value"), items)


def _headline_section(rows: list[dict] | None, cfg: Mapping, splits: Mapping[str, int] | None) -> str:
    """The run in one glance: best val top-1/top-5 and its epoch, wall time, images/s, backbone, data, split sizes."""
    items: list[tuple[str, str]] = []
    val = [r for r in rows or [] if not math.isnan(r["val_acc"])]
    if val:
        best = max(val, key=lambda r: r["val_acc"])
        items.append(("best val top-1", f'<span class="big">{hp.pct(best["val_acc"])}</span>'))
        items.append(("its top-5", hp.pct(best["val_top5"])))
        items.append(("at epoch", f'{best["epoch"]} of {len(rows or [])} (phase {best["phase"]})'))
    if rows:
        secs = sum(r["seconds"] for r in rows if not math.isnan(r["seconds"]))
        items.append(("wall time (training)", f"{secs / 60:.1f} min"))
        ips = [r["img_s"] for r in rows if not math.isnan(r["img_s"])]
        if ips:
            items.append(("training images/s", f"{np.median(ips):.0f} (median over epochs)"))
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
    if model:
        items.append(("backbone", f'{hp.esc(model.get("backbone"))} + {hp.esc(model.get("head"))} head at '
                                  f'{hp.esc(model.get("input_size"))} px'))
    if data.get("root"):
        items.append(("data", hp.esc(data["root"])))
    if splits:
        items.append(("images", ", ".join(f"{n:,} {k}" for k, n in splits.items())))
    if not items:
        return hp.missing("headline (needs metrics.csv)")
    return '<div class="cols">' + "".join(f'<div><div class="label">{hp.esc(k)}</div><div>{v}</div></div>'
                                          for k, v in items) + "</div>"


def _errors_section(run_dir: Path, analysis: dict | None) -> str:
    if not analysis:
        return hp.missing("error analysis (analysis.json)")
    parts = []
    if (run_dir / plots.CONFUSION_MATRIX_PNG).is_file():
        parts.append("<h3>Confusion matrix</h3>")
        parts.append(hp.img(run_dir / plots.CONFUSION_MATRIX_PNG, "rows: true class; columns: predicted class"))
    pairs = analysis.get("confused_pairs") or []
    parts.append("<h3>Most-confused pairs</h3>")
    parts.append(hp.table(("true class", "predicted as", "images"),
                        [[p.get("true", ""), p.get("pred", ""), p.get("count", "")] for p in pairs], numeric=(2,))
                 if pairs else hp.missing("confused pairs"))
    per = sorted(analysis.get("per_class") or [], key=lambda c: (-float(c.get("acc", 0)), str(c.get("name", ""))))
    if per:
        def t(items: list) -> str:
            return hp.table(("class", "name", "accuracy", "images"),
                          [[c.get("class", ""), c.get("name", ""), hp.pct(c.get("acc")), c.get("n", "")]
                           for c in items], numeric=(2, 3))
        n = min(10, len(per))
        parts.append(f'<div class="cols"><div><h3>Best {n} classes</h3>{t(per[:n])}</div>'
                     f"<div><h3>Worst {n} classes</h3>{t(per[::-1][:n])}</div></div>")
    else:
        parts.append(hp.missing("per-class accuracy"))
    for name, cap in ((plots.CONFUSION_PNG, "most-confused pairs"), (plots.PER_CLASS_PNG, "per-class accuracy")):
        if (run_dir / name).is_file():
            parts.append(hp.img(run_dir / name, cap))
    parts.append("<h3>Most confident mistakes</h3>")
    parts.append(hp.img_or_missing(run_dir, plots.MISTAKES_PNG, "mistakes gallery"))
    return "".join(parts)


def _inside_section(run_dir: Path) -> str:
    parts = ["<h3>Feature maps</h3>"]
    fm = sorted(run_dir.glob("featuremaps*.png"))
    parts += [hp.img(p) for p in fm] or [hp.missing("feature maps")]
    parts.append("<h3>Grad-CAM</h3>")
    gc = sorted(run_dir.glob("gradcam*.png"))
    parts += [hp.img(p) for p in gc] or [hp.missing("Grad-CAM overlays")]
    return "".join(parts)


def _predictions_section(run_dir: Path) -> str:
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return hp.missing("predictions.csv")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return hp.missing("predictions.csv (empty)")
        rows, total = [], 0
        for r in reader:
            total += 1
            if len(rows) < _PREDICTION_ROWS:
                rows.append(r)
    return (f"<p>{total} images; the first {len(rows)} rows of predictions.csv:</p>" + hp.table(header, rows))


# ---- the page -----------------------------------------------------------------------------------------------------


def write_report(run_dir: str | os.PathLike, *, extra: Mapping[str, Any] | None = None,
                 splits: Mapping[str, int] | None = None) -> str:
    """Write ``run_dir/report.html`` from whatever the run folder holds and return its path.

    ``extra``: more ``{label: value}`` lines for the Final metrics table (e.g. the demo's wall time). Curve PNGs
    are drawn from metrics.csv if they are missing. ``splits``: images per split, for the headline. Every piece that is absent or unreadable is shown as "not
    produced for this run" (and logged), so the page always gets written.
    """
    run_dir = Path(run_dir)
    try:
        cfg = read_config(run_dir)
    except (ValueError, yaml.YAMLError) as exc:
        log.warning("report: %s", exc)
        cfg = {}
    rows: list[dict] | None = None
    table: list[dict] | None = None
    if (run_dir / "metrics.csv").is_file():
        try:
            rows = read_metrics(run_dir / "metrics.csv")
            table = table1_rows(rows, cfg)
            if rows and not all((run_dir / n).is_file() for n in (plots.ACCURACY_PNG, plots.LOSS_PNG, plots.LR_PNG)):
                plots.plot_curves(run_dir)
        except ValueError as exc:
            log.warning("report: %s", exc)
    analysis = None
    if (run_dir / ANALYSIS_JSON).is_file():
        try:
            analysis = json.loads((run_dir / ANALYSIS_JSON).read_text(encoding="utf-8"))
            if not isinstance(analysis, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, OSError) as exc:
            log.warning("report: %s: %s", run_dir / ANALYSIS_JSON, exc)
            analysis = None

    name = str(cfg.get("name") or run_dir.name)
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    subtitle = " · ".join(str(s) for s in (model.get("backbone"), model.get("head") and f"{model['head']} head",
                                           run_dir.resolve()) if s)
    nav = "".join(f'<a href="#{sid}">{hp.esc(title)}</a>' for sid, title in (
        ("headline", "Result"), ("data", "Data"), ("config", "Configuration"), ("summary", "Training summary"),
        ("curves", "Curves"), ("final", "Final metrics"), ("calibration", "Calibration"), ("errors", "Error analysis"),
        ("inside", "Inside the network"), ("predictions", "Predictions")))
    curves = "".join(hp.img_or_missing(run_dir, n, cap) for n, cap in (
        (plots.ACCURACY_PNG, "accuracy over epochs (train and validation)"),
        (plots.LOSS_PNG, "loss over epochs (train and validation)"),
        (plots.LR_PNG, "learning rate over iterations")))
    body = "".join((
        f'<header id="run"><h1>tinytransfer run: {hp.esc(name)}</h1><p>{hp.esc(subtitle)}</p><nav>{nav}</nav></header>',
        "<main>",
        hp.section("headline", "Result", _headline_section(rows, cfg, splits)),
        hp.section("data", "Data", data_section(run_dir)),
        hp.section("config", "Configuration", _config_section(cfg)),
        hp.section("summary", "Training summary (Table 1)", _summary_section(table) + _auto_lr_part(run_dir)
                   + budget_part(cfg)),
        hp.section("curves", "Curves", curves),
        hp.section("final", "Final metrics", _final_section(rows, analysis, extra)),
        hp.section("calibration", "Calibration", calibration_section(run_dir)),
        hp.section("errors", "Error analysis", _errors_section(run_dir, analysis)),
        hp.section("inside", "Inside the network", _inside_section(run_dir)),
        hp.section("predictions", "Predictions", _predictions_section(run_dir)),
        "</main>",
    ))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{hp.esc(name)} · tinytransfer report</title><style>{hp.CSS}</style></head>"
            f"<body>{body}</body></html>\n")
    path = run_dir / REPORT_HTML
    atomic_write_text(path, printable(page))  # a file name that is not UTF-8: \xNN escapes, as in the CSVs
    log.info("report written to %s", path)
    return str(path)
