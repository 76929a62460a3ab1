"""Figures and the training summary of a run, drawn from files alone (``metrics.csv`` + ``config.yaml``).

- ``plot_curves(run_dir)``: ``accuracy.png``, ``loss.png`` (train and val over epochs, phase boundaries dashed) and
  ``lr.png`` (the learning rate over iterations, rebuilt from the phases in config.yaml and the step counts in
  metrics.csv): the 2020 report's Figures 5–11.
- ``table1(run_dir)``: the report's Table 1 (phase, base LR, max LR, step size, start epoch, end epoch, max val
  accuracy) as ``table1.md`` and ``table1.csv``.
- Error analysis figures: ``plot_confusion_pairs``, ``plot_per_class``, ``mistakes_gallery``.
- Inside the network: ``plot_feature_maps`` (the report's Figures 12–13) and ``plot_gradcam`` overlays; the tensors
  come from :mod:`tinytransfer.cam`.

Matplotlib is used through its object API (``Figure`` + the Agg canvas): no pyplot, no global state, no display.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .config import PhaseConfig
from .fsutil import atomic_write, atomic_write_text
from .metrics import METRIC_COLUMNS
from .schedule import lr_at, step_size_of

log = logging.getLogger(__name__)

__all__ = [
    "ACCURACY_PNG",
    "CONFUSION_PNG",
    "LOSS_PNG",
    "LR_PNG",
    "MISTAKES_PNG",
    "PER_CLASS_PNG",
    "TABLE1_COLUMNS",
    "PhaseSpan",
    "default_lr",
    "lr_curve",
    "mistakes_gallery",
    "plot_lr_find",
    "phase_spans",
    "plot_confusion_pairs",
    "plot_curves",
    "plot_feature_maps",
    "plot_gradcam",
    "plot_per_class",
    "read_config",
    "read_metrics",
    "table1",
    "table1_markdown",
    "table1_rows",
]

# File names inside a run folder (report.py embeds them by these names).
ACCURACY_PNG = "accuracy.png"
LOSS_PNG = "loss.png"
LR_PNG = "lr.png"
CONFUSION_PNG = "confusion_pairs.png"
PER_CLASS_PNG = "per_class.png"
MISTAKES_PNG = "mistakes.png"

_INT_COLUMNS = ("phase", "epoch", "step")
# Table 1 as CSV: one row a phase that ran. Accuracies are fractions; LRs as floats; step_size in iterations.
TABLE1_COLUMNS = (
    "phase", "name", "train", "lr_policy", "base_lr", "max_lr", "step_size",
    "start_epoch", "end_epoch", "planned_epochs", "max_val_acc", "best_epoch",
)
# Phase fields used when config.yaml lacks them: config.PhaseConfig's defaults.
_PHASE_DEFAULTS: dict[str, Any] = {
    k: getattr(PhaseConfig(), k) for k in ("name", "epochs", "train", "lr_policy", "lr_min", "lr_max", "step_size")
}

LrFn = Callable[[int, dict], float]


# ---- reading the run folder ---------------------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of ``metrics.csv`` with typed values, sorted by epoch.

    ``phase``, ``epoch``, ``step`` are ints; the other columns floats (an empty cell, e.g. no validation split, is
    NaN). Extra columns are kept as strings. A malformed file raises ``ValueError("<path>: line N: ...")``. When a
    resumed run wrote an epoch twice, the later row wins.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected the header {','.join(METRIC_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in METRIC_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        by_epoch: dict[int, dict] = {}
        for values in reader:
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(f"{path}: line {line}: expected {len(header)} fields, got {len(values)}")
            raw = dict(zip(header, (v.strip() for v in values)))
            row: dict[str, Any] = {}
            for col, text in raw.items():
                if col in _INT_COLUMNS:
                    row[col] = _parse_int(text, path, line, col)
                elif col in METRIC_COLUMNS:
                    row[col] = _parse_float(text, path, line, col)
                else:
                    row[col] = text
            if row["phase"] < 1 or row["epoch"] < 1 or row["step"] < 0:
                raise ValueError(f"{path}: line {line}: phase and epoch must be >= 1 and step >= 0, got "
                                 f"phase={row['phase']} epoch={row['epoch']} step={row['step']}")
            if row["epoch"] in by_epoch:
                log.warning("%s: line %d: epoch %d appears again; keeping this row", path, line, row["epoch"])
            by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _parse_int(text: str, path: Path, line: int, col: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: column {col}: expected an integer, got {text!r}") from None
    if not v.is_integer():
        raise ValueError(f"{path}: line {line}: column {col}: expected an integer, got {text!r}")
    return int(v)


def _parse_float(text: str, path: Path, line: int, col: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: column {col}: expected a number, got {text!r}") from None


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.yaml`` of a run folder as a plain dict; ``{}`` if the file is absent."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    return cfg


# ---- phases, learning rate, Table 1 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseSpan:
    """One phase as it ran, from metrics.csv rows and its config.yaml entry."""

    index: int  # 1-based, as in metrics.csv
    config: dict  # the phase's config.yaml entry with _PHASE_DEFAULTS filled in
    start_epoch: int  # the previous phase's last epoch (0 for the first): the report's "0–25", "25–40"
    end_epoch: int  # last epoch run in this phase (earlier than planned if early stopping ended it)
    epochs_run: int  # epochs of this phase in metrics.csv
    steps: int  # iterations run in the phase (step of its last row)
    steps_per_epoch: int  # iterations an epoch, steps / epochs_run
    iter_offset: int  # iterations of all earlier phases: where this phase starts on the LR plot's x axis
    rows: list[dict] = field(default_factory=list, repr=False)  # its metrics.csv rows

    @property
    def name(self) -> str:
        return str(self.config.get("name", f"phase {self.index}"))

    @property
    def planned_epochs(self) -> int:
        return int(self.config.get("epochs", self.epochs_run))


def phase_spans(rows: Sequence[dict], config: Mapping) -> list[PhaseSpan]:
    """Group metrics rows by phase (in phase order) and join each group with its config.yaml phase entry."""
    phases_cfg = list(config.get("phases") or [])
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(int(r["phase"]), []).append(r)
    spans: list[PhaseSpan] = []
    offset = 0
    for idx in sorted(groups):
        grp = sorted(groups[idx], key=lambda r: r["epoch"])
        if idx - 1 < len(phases_cfg) and isinstance(phases_cfg[idx - 1], Mapping):
            cfg = {**_PHASE_DEFAULTS, **phases_cfg[idx - 1]}
        else:
            log.warning("config.yaml has no entry for phase %d; using default phase fields", idx)
            cfg = {**_PHASE_DEFAULTS, "name": f"phase {idx}", "epochs": len(grp)}
        steps = int(grp[-1]["step"])
        spe = max(1, round(steps / len(grp)))
        spans.append(PhaseSpan(index=idx, config=cfg, start_epoch=grp[0]["epoch"] - 1, end_epoch=grp[-1]["epoch"],
                               epochs_run=len(grp), steps=steps, steps_per_epoch=spe, iter_offset=offset, rows=grp))
        offset += steps
    return spans


def _phase_config(phase: Mapping) -> PhaseConfig:
    """A config.yaml phase entry (plus extra keys such as ``steps_per_epoch``) as a PhaseConfig."""
    fields = {k: v for k, v in phase.items() if k in PhaseConfig.__dataclass_fields__}
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return PhaseConfig(**fields)


def default_lr(step: int, phase: Mapping) -> float:
    """LR of iteration ``step`` (0-based within the phase): ``schedule.lr_at`` on a config.yaml phase entry.

    ``phase`` is the entry plus ``steps_per_epoch``, so plots need nothing but the run folder's files.
    """
    return lr_at(step, _phase_config(phase), int(phase.get("steps_per_epoch", 1)))


def lr_curve(spans: Sequence[PhaseSpan], lr_fn: LrFn | None = None,
             max_points: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, lr) over all phases: x is the global iteration, lr the value used at that iteration.

    ``lr_fn(step, phase)`` gets the 0-based step within the phase and the phase's config dict plus
    ``steps_per_epoch``; default :func:`default_lr`. A phase whose policy ``lr_fn`` cannot evaluate falls back to
    the epoch-end ``lr`` values logged in metrics.csv. Runs longer than ``max_points`` iterations are sampled with a
    stride (the line is piecewise linear, so little is lost).
    """
    total = sum(s.steps for s in spans)
    stride = max(1, math.ceil(total / max_points))
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for s in spans:
        phase = {**s.config, "steps_per_epoch": s.steps_per_epoch}
        steps = np.arange(0, s.steps, stride, dtype=np.int64)
        if s.steps > 0 and steps[-1] != s.steps - 1:
            steps = np.append(steps, s.steps - 1)  # keep the phase's last iteration
        try:
            if lr_fn is None:  # default_lr, with the PhaseConfig built once a phase instead of once an iteration
                cfg = _phase_config(phase)
                lrs = np.array([lr_at(int(k), cfg, s.steps_per_epoch) for k in steps], dtype=np.float64)
            else:
                lrs = np.array([lr_fn(int(k), phase) for k in steps], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("phase %d: cannot rebuild the LR per iteration (%s); plotting the logged epoch-end LR",
                        s.index, exc)
            steps = np.array([r["step"] for r in s.rows], dtype=np.int64)
            lrs = np.array([r["lr"] for r in s.rows], dtype=np.float64)
        xs.append(s.iter_offset + steps)
        ys.append(lrs)
    if not xs:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def table1_rows(rows: Sequence[dict], config: Mapping) -> list[dict]:
    """The report's Table 1, one dict a phase that ran (keys: :data:`TABLE1_COLUMNS`).

    ``base_lr``/``max_lr``: the policy's low and high LR (a constant policy has both at ``lr_max``); ``step_size``:
    the CLR half cycle in iterations (resolved when the recipe left it 0), None for other policies; ``start_epoch``
    = the previous phase's end; ``end_epoch`` = its last epoch run; ``max_val_acc`` a fraction (None without val).
    """
    out = []
    for s in phase_spans(rows, config):
        c = s.config
        policy = str(c.get("lr_policy"))
        lr_max = float(c.get("lr_max"))
        lr_min = lr_max if policy == "constant" else float(c.get("lr_min"))
        # the CLR half cycle in iterations; 0 in a recipe means two epochs' worth (schedule.step_size_of)
        step_size = step_size_of(_phase_config(c), s.steps_per_epoch) if policy == "triangular" else None
        vals = [(r["val_acc"], r["epoch"]) for r in s.rows if not math.isnan(r["val_acc"])]
        best_acc, best_epoch = max(vals, key=lambda t: t[0]) if vals else (None, None)
        out.append({
            "phase": s.index, "name": s.name, "train": str(c.get("train")), "lr_policy": policy,
            "base_lr": lr_min, "max_lr": lr_max, "step_size": step_size,
            "start_epoch": s.start_epoch, "end_epoch": s.end_epoch, "planned_epochs": s.planned_epochs,
            "max_val_acc": best_acc, "best_epoch": best_epoch,
        })
    return out


def _fmt_lr(v: float) -> str:
    """1e-4 → "1e-4", 2.5e-5 → "2.5e-5" (the report's style)."""
    mant, exp = f"{v:.3e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _base_word(train: str) -> str:
    return {"head": "frozen", "all": "unfrozen"}.get(train, train)


def table1_markdown(table: Sequence[dict]) -> str:
    """Table 1 as Markdown, with a note under it for phases that ran fewer epochs than planned."""
    lines = [
        "| phase | name | base | LR policy | base LR | max LR | step size (iterations) | start epoch | end epoch "
        "| max val accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for i, t in enumerate(table):
        acc = "–" if t["max_val_acc"] is None else f"{100 * t['max_val_acc']:.2f} %"
        step = "–" if t["step_size"] is None else str(t["step_size"])
        name = str(t["name"]).replace("|", "\\|")
        lines.append(f"| {t['phase']} | {name} | {_base_word(t['train'])} | {t['lr_policy']} | {_fmt_lr(t['base_lr'])} "
                     f"| {_fmt_lr(t['max_lr'])} | {step} | {t['start_epoch']} | {t['end_epoch']} | {acc} |")
        run = t["end_epoch"] - t["start_epoch"]
        if run < t["planned_epochs"]:
            why = "early stopping" if i < len(table) - 1 else "early stopping, or the run is unfinished"
            notes.append(f"Phase {t['phase']} ran {run} of {t['planned_epochs']} planned epochs ({why}).")
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def table1(run_dir: str | os.PathLike) -> list[dict]:
    """Compute Table 1 from ``metrics.csv`` + ``config.yaml`` and write ``table1.md`` and ``table1.csv``."""
    run_dir = Path(run_dir)
    table = table1_rows(read_metrics(run_dir / "metrics.csv"), read_config(run_dir))
    atomic_write_text(run_dir / "table1.md", table1_markdown(table))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE1_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if t[k] is None else t[k]) for k in TABLE1_COLUMNS} for t in table)
    atomic_write_text(run_dir / "table1.csv", buf.getvalue())
    log.info("Table 1 (%d phases) written to %s", len(table), run_dir / "table1.md")
    return table


# ---- curves -------------------------------------------------------------------------------------------------------


def plot_curves(run_dir: str | os.PathLike, *, lr_fn: LrFn | None = None) -> list[str]:
    """Draw ``accuracy.png``, ``loss.png`` and ``lr.png`` in ``run_dir`` from metrics.csv and config.yaml.

    Returns the paths written (none if metrics.csv has no rows). ``lr_fn`` as in :func:`lr_curve`.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    if not rows:
        log.warning("%s: no epochs logged yet; no curves drawn", run_dir / "metrics.csv")
        return []
    spans = phase_spans(rows, read_config(run_dir))
    epochs = np.array([r["epoch"] for r in rows])
    paths = []

    for fname, key, ylabel, scale in ((ACCURACY_PNG, "acc", "top-1 accuracy (%)", 100.0),
                                      (LOSS_PNG, "loss", "cross-entropy loss", 1.0)):
        fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = np.array([r[f"{split}_{key}"] for r in rows]) * scale
            if not np.all(np.isnan(ys)):
                ax.plot(epochs, ys, style, ms=3, lw=1.5, label=split)
        if key == "acc":
            val = np.array([r["val_acc"] for r in rows])
            if not np.all(np.isnan(val)):
                b = int(np.nanargmax(val))
                frac = epochs[b] / max(epochs[-1], 1)  # keep the label inside the axes at either end
                ha = "right" if frac > 0.8 else "left" if frac < 0.2 else "center"
                ax.plot([epochs[b]], [100 * val[b]], "*", ms=10, color="tab:orange")
                ax.annotate(f"best val {100 * val[b]:.2f} % (epoch {epochs[b]})", (epochs[b], 100 * val[b]),
                            xytext=(0, -14), textcoords="offset points", ha=ha, va="top", fontsize=8)
        _mark_phases(ax, [(s.start_epoch, s.end_epoch, s.index, s.name) for s in spans])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, max(epochs[-1], 1) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if key == "acc" else "upper right")
        ax.set_title(f"{'Accuracy' if key == 'acc' else 'Loss'} over epochs", pad=16)
        paths.append(_save(fig, run_dir / fname))

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    xs, ys = lr_curve(spans, lr_fn)
    for k, s in enumerate(spans):  # one line a phase: no ramp drawn across a phase boundary
        sel = (xs >= s.iter_offset) & (xs < s.iter_offset + s.steps)
        ax.plot(xs[sel], ys[sel], lw=1.0, color="tab:blue",
                label="per iteration (rebuilt from config.yaml)" if k == 0 else None)
    logged_x = [s.iter_offset + r["step"] - 1 for s in spans for r in s.rows]
    logged_y = [r["lr"] for s in spans for r in s.rows]
    ax.plot(logged_x, logged_y, "o", ms=3, color="tab:orange", label="logged at epoch end (metrics.csv)")
    pos = ys[ys > 0] if len(ys) else ys
    if len(pos) and pos.max() / pos.min() > 20:
        ax.set_yscale("log")
    _mark_phases(ax, [(s.iter_offset, s.iter_offset + s.steps, s.index, s.name) for s in spans])
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Learning rate over iterations", pad=16)
    paths.append(_save(fig, run_dir / LR_PNG))
    log.info("curves written to %s", ", ".join(paths))
    return paths


def _mark_phases(ax: Any, spans: Sequence[tuple[float, float, int, str]]) -> None:
    """Dashed vertical lines between phases and a label just above the plot, centred on each phase's span."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for k, (start, end, idx, name) in enumerate(spans):
        if k > 0:
            ax.axvline(start, color="0.4", ls="--", lw=1)
        ax.text((start + end) / 2, 1.01, f"phase {idx}: {_short(name, 24)}", transform=trans, ha="center",
                va="bottom", fontsize=8, color="0.25")


# ---- error analysis -----------------------------------------------------------------------------------------------


def _short(text: str, n: int = 32) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_confusion_pairs(pairs: Sequence[Mapping], path: str | os.PathLike, *, top: int = 20) -> str:
    """Horizontal bar chart of the ``top`` most-confused (true → predicted) pairs.

    ``pairs``: ``[{"true": name, "pred": name, "count": n}, ...]`` (analysis.json's ``confused_pairs``).
    """
    pairs = sorted(pairs, key=lambda p: -p["count"])[:top]
    fig = Figure(figsize=(8, 0.8 + 0.3 * max(1, len(pairs))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{_short(p['true'])} → {_short(p['pred'])}" for p in pairs][::-1]
    counts = [p["count"] for p in pairs][::-1]
    ax.barh(range(len(pairs)), counts, color="tab:red")
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_xlabel("validation images (true → predicted)")
    ax.set_title(f"Most-confused pairs (top {len(pairs)})")
    if not pairs:
        ax.text(0.5, 0.5, "no confusions", transform=ax.transAxes, ha="center")

    return _save(fig, path)


def plot_per_class(per_class: Sequence[Mapping], path: str | os.PathLike, *, n: int = 10) -> str:
    """Two bar charts: the ``n`` best and ``n`` worst classes by accuracy.

    ``per_class``: ``[{"class": wnid, "name": name, "acc": fraction, "n": images}, ...]``.
    """
    ranked = sorted(per_class, key=lambda c: (-c["acc"], str(c["name"])))
    best, worst = ranked[:n], ranked[::-1][:n]
    fig = Figure(figsize=(11, 0.8 + 0.3 * max(1, n)), dpi=100, layout="constrained")
    for k, (title, items, colour) in enumerate((("best", best, "tab:green"), ("worst", worst, "tab:red"))):
        ax = fig.add_subplot(1, 2, k + 1)
        items = items[::-1]
        ax.barh(range(len(items)), [100 * c["acc"] for c in items], color=colour)
        ax.set_yticks(range(len(items)), [_short(c["name"], 28) for c in items], fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
        ax.set_title(f"{len(items)} {title} classes")

    return _save(fig, path)


def mistakes_gallery(images: np.ndarray | torch.Tensor, true_names: Sequence[str], pred_names: Sequence[str],
                     probs: Sequence[float], path: str | os.PathLike, *, cols: int = 6) -> str:
    """Grid of misclassified images titled with their true and predicted names and the predicted probability.

    ``images``: (N, H, W, 3) uint8; ``probs``: the predicted class's probability per image.
    """
    images = _np(images)
    n = len(images)
    if not (len(true_names) == len(pred_names) == len(probs) == n):
        raise ValueError(f"mistakes_gallery: {n} images but {len(true_names)} true names, {len(pred_names)} "
                         f"predicted names and {len(probs)} probabilities")
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.9 * cols, 2.5 * rows), dpi=100, layout="constrained")
    if n == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        ax.axis("off")
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"true: {_short(true_names[i], 18)}\npred: {_short(pred_names[i], 18)}\n"
                     f"p = {float(probs[i]):.2f}", fontsize=7, color="darkred")
        ax.axis("off")

    return _save(fig, path)


# ---- inside the network -------------------------------------------------------------------------------------------


def plot_feature_maps(maps: Mapping[str, torch.Tensor | np.ndarray], path: str | os.PathLike, *,
                      max_channels: int = 16, cols: int = 8) -> str:
    """Grid of the first ``max_channels`` channels of each layer's map (the report's Figures 12–13).

    ``maps``: ``{layer name: (C, h, w)}`` as :func:`tinytransfer.cam.feature_maps` returns. Each channel is
    scaled to its own min–max for display.
    """
    if not maps:
        raise ValueError("plot_feature_maps: no layers given")
    blocks = []
    for name, m in maps.items():
        a = _np(m).astype(np.float32)
        if a.ndim != 3:
            raise ValueError(f"plot_feature_maps: layer {name}: expected (C, h, w), got shape {a.shape}")
        blocks.append((name, a))
    cols = max(1, min(cols, max(min(max_channels, a.shape[0]) for _, a in blocks)))
    rows_per = [math.ceil(min(max_channels, a.shape[0]) / cols) for _, a in blocks]
    fig = Figure(figsize=(1.3 * cols, sum(1.3 * r + 0.4 for r in rows_per)), dpi=100, layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[1.3 * r + 0.4 for r in rows_per], squeeze=False)[:, 0]
    for sf, (name, a), nrows in zip(subfigs, blocks, rows_per):
        c, h, w = a.shape
        k = min(max_channels, c)
        sf.suptitle(f"{name}: {c} channels × {h}×{w} (first {k} shown)", fontsize=9)
        for i in range(k):
            ax = sf.add_subplot(nrows, cols, i + 1)
            ch = a[i]
            lo, hi = float(ch.min()), float(ch.max())
            ax.imshow((ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch), cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(str(i), fontsize=6, labelpad=1)
    return _save(fig, path)


def plot_gradcam(image: np.ndarray | torch.Tensor, cams: Mapping[str, torch.Tensor | np.ndarray],
                 path: str | os.PathLike, *, alpha: float = 0.5) -> str:
    """The input image, then one Grad-CAM overlay per entry of ``cams`` (``{title: (H, W) in [0, 1]}``).

    ``image``: (H, W, 3) uint8. A map of another size is resized (bilinear) to the image.
    """
    img = _np(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"plot_gradcam: expected an (H, W, 3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    jet = colormaps["jet"]
    fig = Figure(figsize=(2.6 * (1 + len(cams)), 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1 + len(cams), 1)
    ax.imshow(img, interpolation="nearest")
    ax.set_title("input", fontsize=9)
    ax.axis("off")
    for k, (title, cam) in enumerate(cams.items()):
        c = torch.as_tensor(_np(cam), dtype=torch.float32)
        if c.ndim != 2:
            raise ValueError(f"plot_gradcam: map {title!r}: expected (H, W), got shape {tuple(c.shape)}")
        if tuple(c.shape) != (h, w):
            c = torch.nn.functional.interpolate(c[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        heat = jet(c.clamp(0, 1).numpy())[..., :3]  # (H, W, 3) float in [0, 1]
        over = (1 - alpha) * img.astype(np.float32) / 255 + alpha * heat
        ax = fig.add_subplot(1, 1 + len(cams), k + 2)
        ax.imshow(np.clip(over, 0, 1), interpolation="bilinear")
        ax.set_title(_short(title, 30), fontsize=9)
        ax.axis("off")

    return _save(fig, path)


def plot_lr_find(result: Mapping, path: str | os.PathLike) -> str:
    """The LR range test: loss (raw and smoothed) against LR on a log axis, the suggested LR marked."""
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(result["lr"], result["loss"], color="#bbb", lw=1, label="loss")
    ax.plot(result["lr"], result["smoothed"], color="#1f77b4", lw=2, label="smoothed")
    ax.axvline(result["suggested"], color="#d62728", ls="--", label=f"suggested {result['suggested']:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


# ---- helpers ------------------------------------------------------------------------------------------------------


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Write the figure as PNG atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
