"""What every benchmark script shares: a results file rewritten as each row is measured, and a clean stop.

A step of ``gpu_check.sh`` is stopped by SIGINT at its deadline (SIGKILL 10 s later). With :class:`Results` the JSON
on disk always holds every row measured so far (rewritten atomically after each one), and :func:`stoppable` turns
SIGTERM into the same ``KeyboardInterrupt`` as SIGINT, so that a script can catch it in one place, mark its
results partial and exit 130 without a traceback. A signal that lands where Python ignores exceptions (an at-fork
hook while a DataLoader starts its workers prints "Exception ignored" and goes on) is not lost: the next
``Results.add`` raises it again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinytransfer.fsutil import atomic_write_text  # noqa: E402

__all__ = ["Results", "Stopped", "stoppable"]


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt."""


_OWNER = [0]  # the pid that installed the handler
_SIGNALLED: list[int] = []  # signals received by the owner (a KeyboardInterrupt may have been swallowed)


def cuda_sync(device: Any) -> None:
    """Wait for the device's queued work (a CUDA device; nothing elsewhere) before reading a clock."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def _on_int(signum: int, frame: Any) -> None:
    if os.getpid() == _OWNER[0]:
        _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _on_term(signum: int, frame: Any) -> None:
    if os.getpid() != _OWNER[0]:  # a forked worker (a multiprocessing pool's) that inherited it: die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _SIGNALLED.append(signum)
    raise Stopped(f"signal {signum}")


def stoppable() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread of this process (call once at start);
    forked children that inherit the SIGTERM handler still just end on SIGTERM (a pool's terminate())."""
    _OWNER[0] = os.getpid()
    signal.signal(signal.SIGINT, _on_int)
    signal.signal(signal.SIGTERM, _on_term)


class Results:
    """``{**meta, "rows": [...], "partial": bool}`` at ``path``, rewritten atomically on every change."""

    def __init__(self, path: str | Path, **meta: Any) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = dict(meta)
        self.rows: list[dict] = []
        self.partial = True  # until finish()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, row: dict) -> None:
        """Add a row and write; a signal received earlier whose KeyboardInterrupt was swallowed is raised now."""
        self.rows.append(row)
        self.write()
        if _SIGNALLED and os.getpid() == _OWNER[0]:
            signum = _SIGNALLED[-1]
            _SIGNALLED.clear()
            raise KeyboardInterrupt() if signum == signal.SIGINT else Stopped(f"signal {signum}")

    def update(self, **meta: Any) -> None:
        self.meta.update(meta)
        self.write()

    def finish(self, partial: bool = False, **meta: Any) -> None:
        """The last write: ``partial`` says whether the script stopped before measuring everything."""
        _SIGNALLED.clear()
        self.partial = partial
        self.update(**meta)

    def write(self) -> None:
        doc = {**self.meta, "rows": self.rows, "partial": self.partial}
        atomic_write_text(self.path, json.dumps(doc, indent=1, default=str) + "\n")
