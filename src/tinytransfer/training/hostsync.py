"""Find host syncs and host→device copies in a stretch of training code, on any device.

On a GPU ``torch.cuda.set_sync_debug_mode("error")`` raises at a synchronising call. On the CPU nothing
synchronises, so :class:`HostSyncRecorder` records the calls that *would*: reading a tensor on the host
(``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()``/``int()``/``float()`` of a tensor, ``nonzero``)
and moving data to a device (``.to(device)``/``.cuda()`` with a device argument, ``copy_`` from another device,
``torch.tensor``/``as_tensor`` with a device). It patches those few methods while it is active (a
``TorchFunctionMode`` sees the same calls but sends every operation through Python, several times slower), so
use it in one thread at a time. Each record carries the recorder's current ``tag`` (the caller sets it: "setup",
"step", "end"), so a test can allow an epoch's one-time setup and its closing reduction and forbid everything
inside the steps. ``benchmarks/sync_check.py`` runs both checks.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["HostSyncRecorder"]

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
