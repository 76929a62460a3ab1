"""Data-parallel plumbing: the process group torchrun describes, reductions, and a one-machine launcher.

``torchrun --nproc-per-node N -m tinytransfer train ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; :func:`setup` joins them into a process group (NCCL on CUDA, gloo on the CPU) and pins each
rank to its own device. ``tinytransfer train --nproc N`` (``tt.train(nproc=N)``) does the same through torchrun's
elastic agent (:func:`launch`). With one process every function here is a cheap no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = ["Dist", "agree", "all_reduce_sum", "barrier", "launch", "setup", "teardown", "world"]

log = logging.getLogger(__name__)

TIMEOUT_S = float(os.environ.get("TINYTRANSFER_DIST_TIMEOUT", "1800"))  # a collective that waits longer fails


class DistError(RuntimeError):
    """The process group could not be formed or a rank cannot use its device; one line naming the problem."""


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def world() -> Dist:
    """This process's place from torchrun's environment (a single process when it is absent)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return Dist()
    return Dist(rank=int(os.environ.get("RANK", "0")), world_size=ws, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: str = "auto") -> Dist:
    """Join the process group that torchrun's environment describes; each rank on its own device.

    ``device``: the run's device setting. On CUDA rank r of a machine uses ``cuda:LOCAL_RANK`` (NCCL); otherwise
    the CPU (gloo). Returns the :class:`Dist` (one process: nothing to join).
    """
    d = world()
    if not d.active:
        return d
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available() or d.local_rank >= torch.cuda.device_count():
            raise DistError(f"rank {d.rank}: local rank {d.local_rank} has no CUDA device "
                            f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")
        dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=TIMEOUT_S))
        except Exception as e:  # rendezvous timeout, unreachable master, ...
            raise DistError(f"rank {d.rank}: could not join the process group "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return Dist(rank=d.rank, world_size=d.world_size, local_rank=d.local_rank, device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (and returned); one process: ``t`` as it is."""
    if d.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (a stop request, seen by all ranks at the same step)."""
    if not d.active:
        return flag
    t = torch.full((1,), 1.0 if flag else 0.0, device=device)  # a fill on the device, no host→device copy
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine through torchrun's elastic agent (the same
    environment ``torchrun --standalone --nproc-per-node N`` gives); returns rank 0's return value.

    ``fn`` must be a module-level function (the processes are spawned). A failing rank stops the others; the
    agent's error names the rank.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                       start_method="spawn")
    # a failing rank is reported once, by the caller, not as pages of the agent's log
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(cfg, fn)(*args)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return results.get(0) if isinstance(results, dict) else results
