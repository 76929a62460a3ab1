"""``analysis.json``: the confusion analysis of a trained run (per-class accuracy, most-confused pairs, the most
confident mistakes), computed from a confusion matrix and written beside the run's other outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..fsutil import atomic_write_text
from . import plots

__all__ = ["ANALYSIS_JSON", "analysis_from_confusion", "confident_mistakes", "write_analysis"]

ANALYSIS_JSON = "analysis.json"


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
