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

import base64
import csv
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..fsutil import atomic_write_text
from ..runs.metricsfile import base_word, fmt_lr, read_metrics, table1_rows
from ..runs.runfolder import read_auto_lr, read_config
from .budgetreport import budget_part
from . import plots

log = logging.getLogger(__name__)

__all__ = [
    "ANALYSIS_JSON",
    "NOT_PRODUCED",
    "REPORT_HTML",
    "SECTION_IDS",
    "analysis_from_confusion",
    "confident_mistakes",
    "write_analysis",
    "write_report",
]

REPORT_HTML = "report.html"
ANALYSIS_JSON = "analysis.json"
SECTION_IDS = ("run", "headline", "config", "summary", "curves", "final", "errors", "inside", "predictions")
NOT_PRODUCED = "not produced for this run"
_PREDICTION_ROWS = 20  # rows of predictions.csv shown

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232a;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 0 1.2rem 3rem; }
header#run { background: #24324a; color: #fff; padding: 1.2rem 1.2rem 0.8rem; }
header#run h1 { margin: 0 auto; max-width: 1100px; font-size: 1.6rem; }
header#run p { margin: 0.3rem auto 0; max-width: 1100px; opacity: 0.85; }
nav { max-width: 1100px; margin: 0.6rem auto 0; font-size: 0.9rem; }
nav a { color: #cfe0ff; margin-right: 1rem; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; margin: 1.2rem 0; padding: 0.4rem 1.2rem
          1rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #e4e7eb; padding-bottom: 0.3rem; }
h3 { font-size: 1.02rem; margin-bottom: 0.4rem; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.4rem 0 0.8rem; }
th, td { border: 1px solid #d5d9de; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.6rem 0 1rem; }
figure img { max-width: 100%; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.82rem; color: #5a6470; }
.missing { color: #8a6d3b; font-style: italic; }
.cols { display: flex; gap: 2rem; flex-wrap: wrap; }
pre { background: #f3f4f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.big { font-size: 1.4rem; font-weight: 600; }
.label { font-size: 0.78rem; color: #5a6470; text-transform: uppercase; letter-spacing: 0.03em; }
"""


# ---- analysis.json ------------------------------------------------------------------------------------------------


def analysis_from_confusion(confusion: torch.Tensor | np.ndarray, classes: Sequence[str], names: Sequence[str], *,
                            top5: float | None = None, top_pairs: int = 20, split: str = "val") -> dict:
    """The analysis.json dict from a (K, K) confusion matrix (rows true, columns predicted).

    ``top1`` is the matrix's trace over its sum; ``top5`` cannot come from the matrix, so the caller passes it.
    ``confused_pairs``: the ``top_pairs`` largest off-diagonal cells, most first (ties by class order).
    """
    cm = torch.as_tensor(np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion),
                         dtype=torch.int64)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(classes) != k or len(names) != k:
        raise ValueError(f"confusion {tuple(cm.shape)} does not match {len(classes)} classes / {len(names)} names")
    total = int(cm.sum())
    per_row = cm.sum(dim=1)  # (K,) images a true class
    diag = cm.diagonal()
    off = cm.clone()
    off.fill_diagonal_(0)
    flat = off.flatten().tolist()  # Python ints: indexing a tensor element by element costs K² tensor ops
    order = sorted(range(k * k), key=lambda i: (-flat[i], i))
    pairs = [{"true": str(names[i // k]), "pred": str(names[i % k]), "true_class": str(classes[i // k]),
              "pred_class": str(classes[i % k]), "count": int(flat[i])}
             for i in order[:top_pairs] if flat[i] > 0]
    diag_n, row_n = diag.tolist(), per_row.tolist()
    per_class = [{"class": str(classes[c]), "name": str(names[c]),
                  "acc": (int(diag_n[c]) / int(row_n[c])) if int(row_n[c]) else 0.0, "n": int(row_n[c])}
                 for c in range(k)]
    return {"split": split, "top1": int(diag.sum()) / total if total else 0.0, "top5": top5, "n": total,
            "confused_pairs": pairs, "per_class": per_class}


def confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Indices (≤ k,) of the misclassified samples with the highest predicted probability, most confident first.

    ``probs``: (N, K) softmax outputs; ``labels``: (N,) true class ids.
    """
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    wrong = (pred != labels).nonzero().flatten()  # (M,)
    order = conf[wrong].argsort(descending=True)
    return wrong[order[:k]]


def write_analysis(run_dir: str | os.PathLike, analysis: Mapping, *, top: int = 20, n: int = 10) -> list[str]:
    """Write ``analysis.json`` and draw ``confusion_pairs.png`` and ``per_class.png``; returns the paths."""
    run_dir = Path(run_dir)
    path = run_dir / ANALYSIS_JSON
    atomic_write_text(path, json.dumps(analysis, indent=1))
    paths = [str(path)]
    if analysis.get("confused_pairs") is not None:
        paths.append(plots.plot_confusion_pairs(analysis["confused_pairs"], run_dir / plots.CONFUSION_PNG, top=top))
    if analysis.get("per_class"):
        paths.append(plots.plot_per_class(analysis["per_class"], run_dir / plots.PER_CLASS_PNG, n=n))
    return paths


# ---- HTML pieces --------------------------------------------------------------------------------------------------


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _missing(what: str = "") -> str:
    return f'<p class="missing">{_e(what + ": " if what else "")}{NOT_PRODUCED}</p>'


def _img(path: Path, caption: str | None = None) -> str:
    """<figure> with the PNG embedded as a data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = caption if caption is not None else path.name
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(cap)}">'
            f"<figcaption>{_e(cap)}</figcaption></figure>")


def _img_or_missing(run_dir: Path, name: str, caption: str) -> str:
    p = run_dir / name
    return _img(p, caption) if p.is_file() else _missing(caption)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * float(v):.2f} %"


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            continue  # lists of mappings (phases) get their own table
        else:
            out.append((key, v))
    return out


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _config_section(cfg: dict) -> str:
    if not cfg:
        return _missing("config.yaml")
    parts = [_table(("key", "value"), _flatten(cfg))]
    phases = [p for p in (cfg.get("phases") or []) if isinstance(p, Mapping)]
    if phases:
        keys: list[str] = []
        for p in phases:
            keys += [k for k in p if k not in keys]
        parts.append("<h3>Phases</h3>")
        parts.append(_table(["phase", *keys], [[i + 1, *(p.get(k, "") for k in keys)] for i, p in enumerate(phases)]))
    parts.append("<details><summary>config.yaml</summary><pre>"
                 f"{_e(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>")
    return "".join(parts)


def _summary_section(table: list[dict] | None) -> str:
    if not table:
        return _missing("Table 1 (needs metrics.csv)")
    rows = [[t["phase"], t["name"], base_word(t["train"]), t["lr_policy"],
             fmt_lr(t["base_lr"]), fmt_lr(t["max_lr"]),
             "–" if t["step_size"] is None else t["step_size"], t["start_epoch"], t["end_epoch"],
             t["planned_epochs"], _pct(t["max_val_acc"])] for t in table]
    return _table(("phase", "name", "base", "LR policy", "base LR", "max LR", "step size (iterations)",
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
            + _table(("phase", "name", "recipe's LR", "steepest descent", "min loss", "chosen LR", "steps",
                      "seconds"), rows) + f"<p>Rule: {_e(rule)}.</p>")


def _final_section(rows: list[dict] | None, analysis: dict | None, extra: Mapping | None) -> str:
    items: list[tuple[str, str]] = []
    if rows:
        val = [r for r in rows if not math.isnan(r["val_acc"])]
        if val:
            best = max(val, key=lambda r: r["val_acc"])
            items.append(("best val top-1", f"{_pct(best['val_acc'])} (epoch {best['epoch']}, phase {best['phase']})"))
            top5 = [r["val_top5"] for r in val if not math.isnan(r["val_top5"])]
            if top5:
                items.append(("best val top-5", _pct(max(top5))))
        last = rows[-1]
        items.append(("last train top-1", f"{_pct(last['train_acc'])} (epoch {last['epoch']})"))
        secs = sum(r["seconds"] for r in rows if not math.isnan(r["seconds"]))
        items.append(("total training time", f"{secs / 60:.1f} min ({secs:.0f} s, {len(rows)} epochs)"))
        ips = [r["img_s"] for r in rows if not math.isnan(r["img_s"])]
        if ips:
            items.append(("training throughput", f"{np.mean(ips):.1f} img/s (mean over epochs; "
                                                 f"{min(ips):.1f}–{max(ips):.1f})"))
    if analysis:
        split = analysis.get("split", "val")
        items.append((f"{split} top-1 (analysis)", _pct(analysis.get("top1"))))
        if analysis.get("top5") is not None:
            items.append((f"{split} top-5 (analysis)", _pct(analysis.get("top5"))))
    for k, v in (extra or {}).items():
        items.append((str(k), str(v)))
    if not items:
        return _missing("final metrics (needs metrics.csv)")
    return _table(("metric", "value"), items)


def _headline_section(rows: list[dict] | None, cfg: Mapping, splits: Mapping[str, int] | None) -> str:
    """The run in one glance: best val top-1/top-5 and its epoch, wall time, images/s, backbone, data, split sizes."""
    items: list[tuple[str, str]] = []
    val = [r for r in rows or [] if not math.isnan(r["val_acc"])]
    if val:
        best = max(val, key=lambda r: r["val_acc"])
        items.append(("best val top-1", f'<span class="big">{_pct(best["val_acc"])}</span>'))
        items.append(("its top-5", _pct(best["val_top5"])))
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
        items.append(("backbone", f'{_e(model.get("backbone"))} + {_e(model.get("head"))} head at '
                                  f'{_e(model.get("input_size"))} px'))
    if data.get("root"):
        items.append(("data", _e(data["root"])))
    if splits:
        items.append(("images", ", ".join(f"{n:,} {k}" for k, n in splits.items())))
    if not items:
        return _missing("headline (needs metrics.csv)")
    return '<div class="cols">' + "".join(f'<div><div class="label">{_e(k)}</div><div>{v}</div></div>'
                                          for k, v in items) + "</div>"


def _errors_section(run_dir: Path, analysis: dict | None) -> str:
    if not analysis:
        return _missing("error analysis (analysis.json)")
    parts = []
    if (run_dir / plots.CONFUSION_MATRIX_PNG).is_file():
        parts.append("<h3>Confusion matrix</h3>")
        parts.append(_img(run_dir / plots.CONFUSION_MATRIX_PNG, "rows: true class; columns: predicted class"))
    pairs = analysis.get("confused_pairs") or []
    parts.append("<h3>Most-confused pairs</h3>")
    parts.append(_table(("true class", "predicted as", "images"),
                        [[p.get("true", ""), p.get("pred", ""), p.get("count", "")] for p in pairs], numeric=(2,))
                 if pairs else _missing("confused pairs"))
    per = sorted(analysis.get("per_class") or [], key=lambda c: (-float(c.get("acc", 0)), str(c.get("name", ""))))
    if per:
        def t(items: list) -> str:
            return _table(("class", "name", "accuracy", "images"),
                          [[c.get("class", ""), c.get("name", ""), _pct(c.get("acc")), c.get("n", "")]
                           for c in items], numeric=(2, 3))
        n = min(10, len(per))
        parts.append(f'<div class="cols"><div><h3>Best {n} classes</h3>{t(per[:n])}</div>'
                     f"<div><h3>Worst {n} classes</h3>{t(per[::-1][:n])}</div></div>")
    else:
        parts.append(_missing("per-class accuracy"))
    for name, cap in ((plots.CONFUSION_PNG, "most-confused pairs"), (plots.PER_CLASS_PNG, "per-class accuracy")):
        if (run_dir / name).is_file():
            parts.append(_img(run_dir / name, cap))
    parts.append("<h3>Most confident mistakes</h3>")
    parts.append(_img_or_missing(run_dir, plots.MISTAKES_PNG, "mistakes gallery"))
    return "".join(parts)


def _inside_section(run_dir: Path) -> str:
    parts = ["<h3>Feature maps</h3>"]
    fm = sorted(run_dir.glob("featuremaps*.png"))
    parts += [_img(p) for p in fm] or [_missing("feature maps")]
    parts.append("<h3>Grad-CAM</h3>")
    gc = sorted(run_dir.glob("gradcam*.png"))
    parts += [_img(p) for p in gc] or [_missing("Grad-CAM overlays")]
    return "".join(parts)


def _predictions_section(run_dir: Path) -> str:
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return _missing("predictions.csv")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return _missing("predictions.csv (empty)")
        rows, total = [], 0
        for r in reader:
            total += 1
            if len(rows) < _PREDICTION_ROWS:
                rows.append(r)
    return (f"<p>{total} images; the first {len(rows)} rows of predictions.csv:</p>" + _table(header, rows))


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
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in (
        ("headline", "Result"), ("config", "Configuration"), ("summary", "Training summary"), ("curves", "Curves"),
        ("final", "Final metrics"), ("errors", "Error analysis"), ("inside", "Inside the network"),
        ("predictions", "Predictions")))
    curves = "".join(_img_or_missing(run_dir, n, cap) for n, cap in (
        (plots.ACCURACY_PNG, "accuracy over epochs (train and validation)"),
        (plots.LOSS_PNG, "loss over epochs (train and validation)"),
        (plots.LR_PNG, "learning rate over iterations")))
    body = "".join((
        f'<header id="run"><h1>tinytransfer run: {_e(name)}</h1><p>{_e(subtitle)}</p><nav>{nav}</nav></header>',
        "<main>",
        _section("headline", "Result", _headline_section(rows, cfg, splits)),
        _section("config", "Configuration", _config_section(cfg)),
        _section("summary", "Training summary (Table 1)", _summary_section(table) + _auto_lr_part(run_dir)
                 + budget_part(cfg)),
        _section("curves", "Curves", curves),
        _section("final", "Final metrics", _final_section(rows, analysis, extra)),
        _section("errors", "Error analysis", _errors_section(run_dir, analysis)),
        _section("inside", "Inside the network", _inside_section(run_dir)),
        _section("predictions", "Predictions", _predictions_section(run_dir)),
        "</main>",
    ))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(name)} · tinytransfer report</title><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n")
    path = run_dir / REPORT_HTML
    atomic_write_text(path, page)
    log.info("report written to %s", path)
    return str(path)
