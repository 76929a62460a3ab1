"""What ``torch.compile`` did: dynamo's process-wide counters, read before and after a stretch of work.

``torch._dynamo.utils.counters`` is a private ``defaultdict(Counter)`` whose keys move between releases (torch 2.11
and 2.14 both have ``stats.unique_graphs``; ``frames.total/ok``, ``graph_break`` and ``inductor.cudagraph_skips``
appear once something sets them), so every key is optional here and a missing one counts 0. Compile time comes from
``torch._dynamo.utils.cumulative_time_spent_ns`` (``entire_frame_compile``: dynamo's tracing plus the backend's
compilation of the forward graph; a backward graph that AOTAutograd compiles lazily at the first backward counts
where dynamo times it, under a key naming ``backward``).
"""

from __future__ import annotations

__all__ = ["dynamo_counts", "dynamo_disabled", "fell_back", "since"]


def dynamo_counts() -> dict[str, int]:
    """Totals so far in this process: ``graphs`` compiled (every compile and recompile makes one), ``frames``
    handed to dynamo and ``frames_ok`` converted, ``graph_breaks``, ``cudagraph_skips`` (graphs that inductor
    left without CUDA graphs under mode reduce-overhead), ``compile_ms`` (milliseconds spent compiling). Empty
    where dynamo cannot be imported."""
    try:
        from torch._dynamo.utils import counters, cumulative_time_spent_ns
    except Exception:  # pragma: no cover - a torch without dynamo
        return {}
    frames = counters.get("frames", {})
    ns = sum(v for k, v in cumulative_time_spent_ns.items() if k == "entire_frame_compile" or "backward" in k)
    return {
        "graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
        "frames": int(frames.get("total", 0)),
        "frames_ok": int(frames.get("ok", 0)),
        "graph_breaks": int(sum(counters.get("graph_break", {}).values())),
        "cudagraph_skips": int(counters.get("inductor", {}).get("cudagraph_skips", 0)),
        "compile_ms": int(ns // 1_000_000),
    }


def since(before: dict[str, int], after: dict[str, int] | None = None) -> dict[str, int]:
    """Counts added between ``before`` and ``after`` (default: now)."""
    after = dynamo_counts() if after is None else after
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def dynamo_disabled() -> bool:
    """Whether dynamo is switched off (``TORCHDYNAMO_DISABLE=1``): compiled models then run eagerly on purpose."""
    import os

    if os.environ.get("TORCHDYNAMO_DISABLE", "") in ("1", "true", "True"):  # read by dynamo, not always in its config
        return True
    try:
        import torch._dynamo.config as cfg
    except Exception:  # pragma: no cover
        return True
    return bool(getattr(cfg, "disable", False))


def fell_back(delta: dict[str, int], steps_ran: bool = True) -> bool:
    """Whether some compiled code ran eagerly instead: a frame dynamo could not convert (with ``suppress_errors``
    it runs eagerly) or a graph break.

    "No new graph" is not a fallback: a phase that trains the same parameters as the one before (vgg16-paper's
    phase 3 after phase 2) reuses dynamo's cached graphs and converts no new frame at all. ``steps_ran`` is kept
    for callers of the old signature and no longer changes the answer."""
    if dynamo_disabled():
        return False
    failed = delta.get("frames", 0) > delta.get("frames_ok", 0)
    return failed or delta.get("graph_breaks", 0) > 0
