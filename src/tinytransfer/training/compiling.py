"""``torch.compile`` for a phase, and the record of what it did there.

:func:`wrap_for_phase` builds a phase's (training net, evaluation net): DDP over the trainable parameters where
several processes train, then ``torch.compile`` with ``dynamic=False``. Training (the phase's batch) and
evaluation (``eval_batch_size``) call the same ``forward`` with different batch sizes; with dynamo's automatic
dynamic shapes the second size would mark the batch dimension symbolic and recompile the *training* graph with a
SymInt batch (phases 2 and 3 then train on graphs that a static-shape benchmark never measured). Static shapes
hold because training drops its last partial batch and evaluation pads its own (``engine.fit``).

:class:`CompileLog` records, phase by phase, graphs compiled (all, and after the phase's first epoch, i.e.
recompiles), frames converted, graph breaks, CUDA-graph skips and compile seconds in the run folder's
``compile.json``, rewritten after every epoch and when a phase ends or is interrupted, whatever the log level:
a run cut by its deadline still says what its phases compiled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..runs.runfolder import write_compile
from .compilestats import dynamo_counts, dynamo_disabled, fell_back, since
from .parallel import Dist

__all__ = ["CompileLog", "wrap_for_phase"]

log = logging.getLogger(__name__)


def wrap_for_phase(model: nn.Module, cfg: RunConfig, dist: Dist) -> tuple[nn.Module, nn.Module]:
    """(training net, evaluation net) for a phase: DistributedDataParallel over the trainable parameters where
    several processes train (evaluation runs the raw model: no collectives per batch, shards may differ in
    batches), then ``torch.compile(dynamic=False)`` where asked."""
    net, eval_net = model, model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.compile:
        import torch._dynamo as dynamo

        # compilation happens lazily at the first step: where it fails, run that graph eagerly instead of dying
        dynamo.config.suppress_errors = True
        try:
            net = torch.compile(net, mode=cfg.compile_mode, dynamic=False)
            eval_net = net if not dist.active else torch.compile(model, mode=cfg.compile_mode, dynamic=False)
        except Exception as e:  # pragma: no cover - depends on the platform
            log.warning("torch.compile failed (%s); running eager", e)
    return net, eval_net


class CompileLog:
    """Per-phase compile figures of a compiled run, in ``run_dir/compile.json`` (rank 0 writes; a no-op when the
    run does not compile). Call :meth:`start` when a phase starts, :meth:`epoch` after each of its epochs and
    :meth:`end` when it ends (``complete=False``: stopped inside the phase)."""

    def __init__(self, run_dir: str | Path, enabled: bool, write: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.write = write and enabled
        self.phases: list[dict] = []
        self._start: dict[str, int] = {}
        self._first: dict[str, int] | None = None

    def start(self, phase: int) -> None:
        if not self.enabled:
            return
        self._start, self._first = dynamo_counts(), None
        self.phases = [p for p in self.phases if p["phase"] != phase + 1]
        self.phases.append({"phase": phase + 1, "epochs": 0, "complete": False})

    def epoch(self) -> None:
        if not self.enabled or not self.phases:
            return
        if self._first is None:
            self._first = dynamo_counts()
        self.phases[-1]["epochs"] += 1
        self._record()

    def end(self, complete: bool = True) -> dict | None:
        """Record the phase's figures; where it completed, one INFO line and a WARNING where code fell back."""
        if not self.enabled or not self.phases or (not complete and self.phases[-1]["complete"]):
            return None  # (a phase already recorded as complete stays so)
        rec = self._record(complete)
        if complete:
            frames = f", frames {rec['frames_ok']}/{rec['frames']} converted" if rec["frames"] else ""
            log.info("torch.compile, phase %d: %d graphs compiled (%d after its first epoch)%s, %d graph breaks, "
                     "%d cudagraph skips, %.1f s compiling", rec["phase"], rec["graphs"],
                     rec["graphs_after_first_epoch"], frames, rec["graph_breaks"], rec["cudagraph_skips"],
                     rec["compile_s"])
            if rec["fell_back"]:
                log.warning("torch.compile fell back to eager in phase %d (%s): part of it ran uncompiled",
                            rec["phase"], {k: rec[k] for k in ("frames", "frames_ok", "graph_breaks")})
        return rec

    def _record(self, complete: bool | None = None) -> dict:
        total = since(self._start)
        later = since(self._first) if self._first is not None else {}
        rec = self.phases[-1]
        rec.update(graphs=total.get("graphs", 0), graphs_after_first_epoch=later.get("graphs", 0),
                   frames=total.get("frames", 0), frames_ok=total.get("frames_ok", 0),
                   graph_breaks=total.get("graph_breaks", 0), cudagraph_skips=total.get("cudagraph_skips", 0),
                   compile_s=round(total.get("compile_ms", 0) / 1000, 3), fell_back=fell_back(total),
                   dynamo_disabled=dynamo_disabled())
        if complete is not None:
            rec["complete"] = complete
        if self.write:
            try:
                write_compile(self.run_dir, self.phases)
            except OSError as e:  # evidence, not the run: never stop training for it
                log.warning("%s: could not write compile figures (%s)", self.run_dir / "compile.json", e)
        return rec
