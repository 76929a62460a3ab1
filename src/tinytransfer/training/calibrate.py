"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0 divides the
logits, ``softmax(z / T)``, fitted on the validation split by minimising the negative log-likelihood. The argmax of
``z / T`` is the argmax of ``z``, so top-1 never changes; only the probabilities do.

Pure functions on ``(N, C)`` logits and ``(N,)`` int labels (torch tensors, any float dtype; computed in float64):
:func:`fit_temperature`, :func:`nll`, :func:`ece`, :func:`reliability`, :func:`calibration_summary`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ECE_BINS", "T_MAX", "T_MIN", "calibration_summary", "ece", "fit_temperature", "nll", "reliability"]

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al.'s M = 15)
T_MIN, T_MAX = 0.05, 20.0  # the search interval of the temperature; the optimum is clipped to it
_ITERS = 80  # golden-section steps on log T: the bracket shrinks by 0.618 each, to ~1e-16 of log(T_MAX / T_MIN)


def _check(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    return logits.detach().to("cpu", torch.float64), labels.detach().to("cpu", torch.long)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)`` (nats)."""
    z, y = _check(logits, labels)
    if not len(y):
        return float("nan")
    return float(F.cross_entropy(z / float(temperature), y))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [T_MIN, T_MAX] minimising :func:`nll` of ``logits / T``: a bounded golden-section search on log T.

    NLL is convex in 1/T, hence unimodal in log T, so the search finds the global minimum. T > 1 softens
    over-confident logits, T < 1 sharpens under-confident ones (label smoothing makes a model under-confident).
    1.0 where there is nothing to fit (no images)."""
    z, y = _check(logits, labels)
    if not len(y):
        return 1.0

    def f(log_t: float) -> float:
        return float(F.cross_entropy(z * math.exp(-log_t), y))

    a, b = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(_ITERS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    best = min((fc, c), (fd, d), (f(math.log(T_MIN)), math.log(T_MIN)), (f(math.log(T_MAX)), math.log(T_MAX)))
    return float(math.exp(best[1]))


def reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's bins: ``bins`` equal-width confidence intervals ((m-1)/M, m/M], each
    ``{"lo", "hi", "count", "confidence", "accuracy"}`` (mean top-1 probability and top-1 accuracy of the images
    whose top-1 probability falls in it; NaN in an empty bin)."""
    z, y = _check(logits, labels)
    conf, pred = (z / float(temperature)).softmax(dim=1).max(dim=1)
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)  # bin m-1 holds ((m-1)/M, m/M]
    hit = (pred == y).double()
    out = []
    for m in range(bins):
        sel = idx == m
        n = int(sel.sum())
        out.append({"lo": m / bins, "hi": (m + 1) / bins, "count": n,
                    "confidence": float(conf[sel].mean()) if n else float("nan"),
                    "accuracy": float(hit[sel].mean()) if n else float("nan")})
    return out


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over confidence bins of (images in it / N) · |accuracy − mean confidence|."""
    rows = reliability(logits, labels, temperature, bins)
    n = sum(r["count"] for r in rows)
    if not n:
        return float("nan")
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]))


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                        bins: int = ECE_BINS) -> dict:
    """NLL, ECE, mean top-1 probability and top-1 accuracy before (T = 1) and after (T = ``temperature``), with
    both reliability tables: what ``calibration.json`` and ``evaluate`` report."""
    z, y = _check(logits, labels)
    acc = float((z.argmax(dim=1) == y).double().mean()) if len(y) else float("nan")
    out: dict = {"temperature": float(temperature), "images": int(len(y)), "bins": int(bins), "top1": acc}
    for tag, t in (("before", 1.0), ("after", float(temperature))):
        rel = reliability(z, y, t, bins)
        out[tag] = {"nll": nll(z, y, t), "ece": ece(z, y, t, bins),
                    "mean_confidence": float((z / t).softmax(dim=1).max(dim=1).values.mean()) if len(y) else
                    float("nan"), "reliability": rel}
    return out
