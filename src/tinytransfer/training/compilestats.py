"""What ``torch.compile`` did: dynamo's process-wide counters, read before and after a stretch of work.

``torch._dynamo.utils.counters`` is a private ``defaultdict(Counter)`` whose keys move between releases (torch 2.11
and 2.14 both have ``stats.unique_graphs``; ``frames.total/ok`` and ``graph_break`` appear once something sets
them), so every key is optional here and a missing one counts 0.
"""

from __future__ import annotations

import logging

__all__ = ["dynamo_counts", "dynamo_disabled", "fell_back", "log_compiles", "since"]

log = logging.getLogger(__name__)


def dynamo_counts() -> dict[str, int]:
    """Totals so far in this process: ``graphs`` compiled (every compile and recompile makes one), ``frames``
    handed to dynamo and ``frames_ok`` converted, ``graph_breaks``. Empty where dynamo cannot be imported."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # pragma: no cover - a torch without dynamo
        return {}
    frames = counters.get("frames", {})
    return {
        "graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
        "frames": int(frames.get("total", 0)),
        "frames_ok": int(frames.get("ok", 0)),
        "graph_breaks": int(sum(counters.get("graph_break", {}).values())),
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
    it runs eagerly), a graph break, or no graph at all although compiled steps ran (and dynamo is on)."""
    if dynamo_disabled():
        return False
    failed = delta.get("frames", 0) > delta.get("frames_ok", 0)
    return failed or delta.get("graph_breaks", 0) > 0 or (steps_ran and delta.get("graphs", 0) == 0
                                                          and delta.get("frames_ok", 0) == 0)


def log_compiles(phase: int, start: dict[str, int], first_epoch: dict[str, int]) -> None:
    """One line a phase: what torch.compile did in it; a warning where compiled code fell back to eager."""
    total, later = since(start), since(first_epoch)
    frames = f", frames {total['frames_ok']}/{total['frames']} converted" if total.get("frames") else ""
    log.info("torch.compile, phase %d: %d graphs compiled (%d after its first epoch)%s, %d graph breaks", phase + 1,
             total.get("graphs", 0), later.get("graphs", 0), frames, total.get("graph_breaks", 0))
    if fell_back(total):
        log.warning("torch.compile fell back to eager in phase %d (%s): part of it ran uncompiled", phase + 1,
                    total)
