"""Calibrated probabilities for a trained run: the temperature fitted on validation, kept in ``best.pt``, shown in
report.html.

:func:`calibrate_run` (called by ``train`` after the last epoch) scores the best checkpoint's validation logits, fits
T (:func:`tinytransfer.training.calibrate.fit_temperature`), writes it into ``best.pt`` under the optional key
``"temperature"`` (a float; a checkpoint without it means T = 1, so older runs load unchanged) and writes
``calibration.json`` (this module owns it: NLL, ECE (15 bins), mean confidence and the reliability bins, before and
after). Every consumer of probabilities divides the logits by T through the checkpoint view
(``CheckpointView.temperature``): ``predict_arrays`` (``predict``, ``Run.predict``, predictions.csv), ``Run.evaluate``
and the ONNX export. :func:`plot_reliability` draws the diagram and :func:`calibration_section` the report's part.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.dataset import Dataset
from ..fsutil import atomic_write, atomic_write_text
from ..runs.checkpoint import save_checkpoint
from ..runs.runfolder import load_model
from ..training.calibrate import calibration_summary, fit_temperature
from . import htmlparts as hp
from .predict import predict_logits

__all__ = ["CALIBRATION_JSON", "RELIABILITY_PNG", "calibrate_run", "calibration_section", "plot_reliability",
           "read_calibration"]

log = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"  # calibration_summary of the validation split + "split", "checkpoint"
RELIABILITY_PNG = "reliability.png"  # the reliability diagram, before and after


def calibrate_run(run_dir: str | os.PathLike, data: Dataset, *, device: str | torch.device = "cpu") -> dict | None:
    """Fit the temperature of ``run_dir/best.pt`` on ``data.val``, store it in the checkpoint and write
    ``calibration.json``; returns the summary (None, T left at 1, where there is no validation split)."""
    run_dir = Path(run_dir)
    if data.val is None or not len(data.val):
        log.info("no validation split: probabilities are left uncalibrated (temperature 1)")
        for stale in (CALIBRATION_JSON, RELIABILITY_PNG):  # an earlier run's, in a folder trained over
            (run_dir / stale).unlink(missing_ok=True)
        return None
    model, view = load_model(run_dir, "best", device=device)
    logits = predict_logits(model, data.val.images, view, device=device,
                            batch_size=int(view.config.eval_batch_size))
    labels = torch.as_tensor(np.asarray(data.val.labels), dtype=torch.long)
    t = fit_temperature(logits, labels)
    summary = {**calibration_summary(logits, labels, t), "split": "val", "checkpoint": view.path.name}
    save_checkpoint({**view.raw, "temperature": t}, view.path)  # atomic: the old file stays on a failed write
    atomic_write_text(run_dir / CALIBRATION_JSON, json.dumps(_finite(summary), indent=1) + "\n")
    b, a = summary["before"], summary["after"]
    log.info("calibration on %d val images: temperature %.3f; ECE %.4f -> %.4f, NLL %.4f -> %.4f, mean top-1 "
             "probability %.3f -> %.3f at top-1 %.3f", summary["images"], t, b["ece"], a["ece"], b["nll"], a["nll"],
             b["mean_confidence"], a["mean_confidence"], summary["top1"])
    return summary


def _finite(v: object) -> object:
    """NaN (empty bins) → None, so the JSON is standard."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def read_calibration(run_dir: str | os.PathLike) -> dict | None:
    """``calibration.json`` of a run folder; None where absent or unreadable (logged)."""
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "before" not in data or "after" not in data:
            raise ValueError("not a calibration summary")
        return data
    except (ValueError, OSError) as e:
        log.warning("%s: unreadable (%s); ignored", path, e)
        return None


def plot_reliability(summary: dict, path: str | os.PathLike) -> str:
    """The reliability diagram: top-1 accuracy against mean top-1 probability per confidence bin, before (T = 1) and
    after temperature scaling, with the diagonal of perfect calibration and each curve's ECE."""
    fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    t = summary.get("temperature", 1.0)
    for tag, colour, label in (("before", "tab:red", "before (T = 1)"), ("after", "tab:blue", f"after (T = {t:.3g})")):
        rows = [r for r in summary[tag]["reliability"] if r["count"] and r["confidence"] is not None]
        x = [r["confidence"] for r in rows]
        y = [r["accuracy"] for r in rows]
        ece = summary[tag]["ece"]
        ax.plot(x, y, marker="o", color=colour, label=f"{label}: ECE {ece:.3f}" if ece is not None else label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top-1 probability in the bin")
    ax.set_ylabel("top-1 accuracy in the bin")
    ax.set_title(f"Reliability on {summary.get('split', 'val')} ({summary.get('images', 0)} images, "
                 f"{summary.get('bins', 15)} bins)")
    ax.legend(loc="upper left", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def calibration_section(run_dir: str | os.PathLike) -> str:
    """report.html's calibration part: the temperature, NLL/ECE before and after, and the reliability diagram
    (drawn from calibration.json if missing). An explanatory line where the run has no calibration."""
    run_dir = Path(run_dir)
    s = read_calibration(run_dir)
    if s is None:
        return ('<p class="missing">No calibration for this run (no validation split, or trained before '
                "tinytransfer fitted temperatures): probabilities are the raw softmax.</p>")
    png = run_dir / RELIABILITY_PNG
    try:
        if not png.is_file():
            plot_reliability(s, png)
        figure = hp.img(png, "reliability diagram, validation split, before and after temperature scaling")
    except (OSError, KeyError, TypeError, ValueError) as e:
        log.warning("report: reliability diagram: %s", e)
        figure = hp.missing("reliability diagram")

    def num(v: object, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "–"

    rows = [(label, num(s[k]["nll"], ".4f"), num(s[k]["ece"], ".4f"), num(s[k]["mean_confidence"], ".3f"))
            for k, label in (("before", "before (T = 1)"), ("after", "after"))]
    intro = (f"<p>Temperature <b>T = {num(s.get('temperature'), '.4g')}</b>, fitted on {hp.esc(s.get('images', 0))} "
             f"{hp.esc(s.get('split', 'val'))} images by minimising the negative log-likelihood; every probability "
             f"tinytransfer gives (predictions.csv, predict, evaluate, the ONNX export) is softmax(logits / T). "
             f"Top-1 does not change ({hp.pct(s.get('top1'))}). T &gt; 1: the network was over-confident; "
             "T &lt; 1: under-confident.</p>")
    return intro + hp.table(["", "NLL", "ECE (15 bins)", "mean top-1 probability"], rows, numeric=(1, 2, 3)) + figure
