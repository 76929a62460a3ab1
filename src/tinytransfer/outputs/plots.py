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

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..fsutil import atomic_write
from ..runs.metricsfile import PhaseSpan, phase_config, phase_spans, read_metrics
from ..runs.runfolder import read_config
from ..training.schedule import lr_at

log = logging.getLogger(__name__)

__all__ = [
    "ACCURACY_PNG",
    "CONFUSION_MATRIX_PNG",
    "CONFUSION_PNG",
    "LOSS_PNG",
    "LR_PNG",
    "MISTAKES_PNG",
    "PER_CLASS_PNG",
    "default_lr",
    "lr_curve",
    "mistakes_gallery",
    "plot_lr_find",
    "plot_confusion_matrix",
    "plot_confusion_pairs",
    "plot_curves",
    "plot_feature_maps",
    "plot_gradcam",
    "plot_per_class",
]

# File names inside a run folder (report.py embeds them by these names).
ACCURACY_PNG = "accuracy.png"
LOSS_PNG = "loss.png"
LR_PNG = "lr.png"
CONFUSION_PNG = "confusion_pairs.png"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"  # drawn where the classes are few enough to read (<= 30)
PER_CLASS_PNG = "per_class.png"
MISTAKES_PNG = "mistakes.png"

LrFn = Callable[[int, dict], float]


def default_lr(step: int, phase: Mapping) -> float:
    """LR of iteration ``step`` (0-based within the phase): ``schedule.lr_at`` on a config.yaml phase entry.

    ``phase`` is the entry plus ``steps_per_epoch``, so plots need nothing but the run folder's files.
    """
    return lr_at(step, phase_config(phase), int(phase.get("steps_per_epoch", 1)))


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
                cfg = phase_config(phase)
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


def plot_confusion_matrix(confusion: Sequence[Sequence[int]] | np.ndarray, names: Sequence[str],
                          path: str | os.PathLike) -> str:
    """Heatmap of the (C, C) confusion matrix, rows true classes, columns predictions, each row as fractions of its
    images (the count written in every non-empty cell)."""
    cm = np.asarray(confusion, dtype=np.float64)  # (C, C) counts
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    c = len(names)
    side = min(14.0, 2.5 + 0.42 * c)
    fig = Figure(figsize=(side, side * 0.9), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    labels = [_short(n, 18) for n in names]
    ax.set_xticks(range(c), labels, rotation=90, fontsize=7 if c > 12 else 9)
    ax.set_yticks(range(c), labels, fontsize=7 if c > 12 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (validation; rows sum to 1)")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=6 if c > 15 else 8,
                            color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
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
