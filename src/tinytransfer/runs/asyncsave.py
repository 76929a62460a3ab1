"""Checkpoints written off the training thread: snapshot to host memory now, serialise and write in the background.

``last.pt`` of a fine-tuning phase holds the Adam state (~194 MB for VGG16 + the report's head); serialising and
fsyncing it every epoch on the training thread stalls the step. :class:`AsyncCheckpointWriter` copies every tensor
of the checkpoint dicts to fresh CPU tensors (the snapshot: the weights may change the moment training goes on)
and hands them to one background thread, which writes them with :func:`~tinytransfer.checkpoint.save_checkpoint`
(temp file, fsync, rename: atomic as before). At most one write is in flight: ``submit`` and ``wait`` first wait
for the previous one, and an error of the thread is raised on the calling thread as ``CheckpointError`` naming
the file. Leaving the ``with`` block waits for the last write, so a run that ends or stops has its files on disk.

Crash safety is that of the synchronous writer, shifted by the write's duration: a kill while a write is in flight
leaves the previous file whole (the rename has not happened), so it loses the epoch in progress and, in the
seconds the write takes, the epoch just finished.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint
from .checkpoint import CheckpointError

__all__ = ["AsyncCheckpointWriter", "snapshot"]

log = logging.getLogger(__name__)


def snapshot(obj: Any, memo: dict[int, torch.Tensor] | None = None, pool: list[torch.Tensor] | None = None) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples of tensors and plain values) whose tensors are CPU copies.

    A tensor met twice (the same object, e.g. the weights in best.pt and last.pt) is copied once. With ``pool``
    (a list kept between calls) the copies go into the buffers of the previous call where shape, dtype and
    strides match, in visiting order (no fresh allocation, no page faults: 194 MB every epoch), pinned for CUDA
    tensors and copied asynchronously there, with one synchronisation at the end. The caller must be done with
    the previous snapshot before it takes the next one into the same pool."""
    memo = {} if memo is None else memo
    used = [0]
    cuda = [False]

    def copy(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if pool is None:
            return t.to("cpu", copy=True)
        i = used[0]
        used[0] += 1
        buf = pool[i] if i < len(pool) else None
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.stride() != t.stride():
            buf = torch.empty_like(t, device="cpu", pin_memory=t.is_cuda)
            if i < len(pool):
                pool[i] = buf
            else:
                pool.append(buf)
        buf.copy_(t, non_blocking=t.is_cuda)
        cuda[0] = cuda[0] or t.is_cuda
        return buf

    def walk(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            got = memo.get(id(o))
            if got is None:
                got = memo[id(o)] = copy(o)
            return got
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o

    out = walk(obj)
    if pool is not None:
        del pool[used[0]:]  # buffers no longer needed (a phase's end drops the optimizer state)
    if cuda[0]:
        torch.cuda.synchronize()  # the asynchronous copies into pinned memory are done
    return out


class FileWriteError(OSError):
    """A file other than a checkpoint (``metrics.csv``) could not be written in its turn: ``PATH: reason``."""


class AsyncCheckpointWriter:
    """One background thread writing snapshots of checkpoint dicts; errors surface on the caller's thread.

    ``stats``: seconds the calling (training) thread spent snapshotting and waiting, and seconds the background
    thread spent writing, summed over the writer's life, and the number of files written.
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background  # False: write on the calling thread (same files, for comparisons)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: str = ""  # the file being written (for error messages)
        self._pool: list[torch.Tensor] = []  # host buffers of the snapshots, reused from one submit to the next
        self.stats = {"snapshot_s": 0.0, "wait_s": 0.0, "write_s": 0.0, "files": 0}

    def submit(self, items: list[tuple[dict, str | os.PathLike] | Callable[[], None]]) -> None:
        """Snapshot the ``(checkpoint dict, path)`` pairs now and write them, in order, in the background. An item
        may also be a function of no arguments (e.g. append the epoch's metrics row): it runs there, in its turn,
        only once the files before it are on disk, and not at all if one of them failed."""
        self.wait()
        t0 = time.perf_counter()
        snaps = snapshot([it if callable(it) else (it[0], os.fspath(it[1])) for it in items], pool=self._pool)
        self.stats["snapshot_s"] += time.perf_counter() - t0
        if not self.background:
            self._write(snaps)
            self._raise()
            return
        self._thread = threading.Thread(target=self._write, args=(snaps,), name="tinytransfer-checkpoint")
        self._thread.start()

    def _write(self, snaps: list) -> None:
        t0 = time.perf_counter()
        try:
            for item in snaps:
                if callable(item):
                    try:
                        item()
                    except Exception as e:  # not a checkpoint's fault: say so, and name the file where known
                        if isinstance(e, OSError) and e.filename and e.strerror:  # "PATH: No space left on device"
                            raise FileWriteError(e.errno, e.strerror, e.filename) from e
                        raise CheckpointError(f"after the checkpoint: {type(e).__name__}: {str(e)[:160]} (the "
                                              "checkpoints before it were saved)") from e
                    continue
                ckpt, path = item
                self._path = path
                checkpoint.save_checkpoint(ckpt, path)
                self.stats["files"] += 1
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e
        finally:
            self.stats["write_s"] += time.perf_counter() - t0

    def busy(self) -> bool:
        """Whether a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error (``CheckpointError`` naming the file) if it failed."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.stats["wait_s"] += time.perf_counter() - t0
        self._raise()

    def _raise(self) -> None:
        e, self._error = self._error, None
        if e is None:
            return
        if isinstance(e, (CheckpointError, FileWriteError)):
            raise e
        name = Path(self._path).name if self._path else "checkpoint"
        kept = "; the previous one is kept" if self._path and Path(self._path).is_file() else ""
        raise CheckpointError(f"{self._path or name}: could not save the checkpoint ({type(e).__name__}: "
                              f"{str(e)[:160]}){kept}") from e

    @property
    def blocked_s(self) -> float:
        """Seconds the calling thread spent on checkpoints (snapshot + waiting for a write)."""
        return self.stats["snapshot_s"] + self.stats["wait_s"]

    def __enter__(self) -> "AsyncCheckpointWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.wait()
            return
        try:  # something else is on its way up: finish the write, but do not hide that error behind ours
            self.wait()
        except CheckpointError as e:
            log.error("%s", e)
