"""Find host syncs and host→device copies in a stretch of training code, on any device.

On a GPU ``torch.cuda.set_sync_debug_mode("error")`` raises at a synchronising call. On the CPU nothing
synchronises, so :class:`HostSyncRecorder` records the calls that *would*: reading a tensor on the host
(``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()``/``int()``/``float()`` of a tensor, ``nonzero``)
and moving data to a device (``.to(device)``/``.cuda()`` with a device argument, ``copy_`` from another device,
``torch.tensor``/``as_tensor`` with a device). It patches those few methods while it is active (a
``TorchFunctionMode`` sees the same calls but sends every operation through Python, several times slower), so
use it in one thread at a time. Each record carries the recorder's current ``tag`` (the caller sets it: "setup",
"step", "end"), so a test can allow an epoch's one-time setup and its closing reduction and forbid everything
inside the steps. :func:`record_step_syncs` runs an epoch that way (and, on CUDA, its steps under the debug mode);
``benchmarks/sync_check.py`` and ``tests/training/test_hostsync.py`` use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["HostSyncRecorder", "TaggedLoader", "record_step_syncs"]

_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"}
_MAKERS = {"tensor", "as_tensor"}


def _names_device(args: tuple, kwargs: dict) -> bool:
    """Whether a ``.to(...)`` call names a device (not only a dtype or memory format)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, int)) and not isinstance(a, bool) for a in args[1:])


class HostSyncRecorder:
    """``with HostSyncRecorder() as rec: ...`` then ``rec.events``: (tag, what) for every call that reads a tensor
    on the host or copies to a device. Set ``rec.tag`` to label the code that runs next."""

    def __init__(self) -> None:
        self.tag = ""
        self.events: list[tuple[str, str]] = []
        self._saved: list[tuple[object, str, object]] = []

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        if name in _READS:
            self.events.append((self.tag, name))
        elif name in ("to", "cuda") and (name == "cuda" or _names_device((None, *args), kwargs)):
            self.events.append((self.tag, f"{name} (to a device)"))
        elif name in _MAKERS and kwargs.get("device") is not None:
            self.events.append((self.tag, f"torch.{name}(device=...)"))
        elif name == "copy_" and args and isinstance(args[0], torch.Tensor) and args[0].device != self._dest.device:
            self.events.append((self.tag, "copy_ across devices"))

    def _wrap(self, owner: object, name: str, method: bool) -> None:
        real = getattr(owner, name)
        rec = self

        if method:
            def patched(self_: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                rec._dest = self_
                rec._record(name, args, kwargs)
                return real(self_, *args, **kwargs)
        else:
            def patched(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                rec._record(name, args, kwargs)
                return real(*args, **kwargs)

        self._saved.append((owner, name, real))
        setattr(owner, name, patched)

    def __enter__(self) -> "HostSyncRecorder":
        for name in (*sorted(_READS), "to", "cuda", "copy_"):
            self._wrap(torch.Tensor, name, method=True)
        for name in sorted(_MAKERS):
            self._wrap(torch, name, method=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, real in reversed(self._saved):
            setattr(owner, name, real)
        self._saved.clear()

    def inside(self, tag: str) -> list[str]:
        """The calls recorded under ``tag``."""
        return [what for t, what in self.events if t == tag]


class TaggedLoader:
    """The loader as ``train_one_epoch`` sees it, labelling the recorder: "setup" while ``iter()`` prepares the
    epoch, "step" from then on (each batch and its step), "end" once the batches are exhausted. On CUDA the steps
    alone run under ``torch.cuda.set_sync_debug_mode("error")`` (the epoch's closing reduction syncs on purpose)."""

    def __init__(self, loader: Any, rec: HostSyncRecorder) -> None:
        self.loader, self.rec = loader, rec
        self.cuda = loader.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        self.rec.tag = "setup"
        it = iter(self.loader)
        self.rec.tag = "step"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield from it
        finally:
            if self.cuda:
                torch.cuda.set_sync_debug_mode(0)
        self.rec.tag = "end"


def record_step_syncs(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer, phase: Any,
                      state: Any = None, *, device: torch.device, amp: str = "auto") -> tuple[HostSyncRecorder, dict]:
    """One warm-up epoch of ``train_one_epoch``, then one under a :class:`HostSyncRecorder` through a
    :class:`TaggedLoader`, both on the GPU code path (no per-step loss read). Returns the recorder and the epoch's
    result; on CUDA a synchronising call inside a step raises ``RuntimeError``."""
    from .steps import StopOnSignal, TrainState, train_one_epoch

    state = state if state is not None else TrainState()
    train_one_epoch(model, loader, optimizer, phase, state, device=device, amp=amp, stop=StopOnSignal(),
                    sync_each_step=False)  # warm caches (and the first pass's one-time allocations)
    try:
        with HostSyncRecorder() as rec:
            out = train_one_epoch(model, TaggedLoader(loader, rec), optimizer, phase, state, device=device, amp=amp,
                                  stop=StopOnSignal(), after_step=lambda lr, loss: None, sync_each_step=False)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)  # also where a step raised inside the loader's generator
    return rec, out
