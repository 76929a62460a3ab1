"""One training step and one evaluation pass, and what a step needs: the optimizer, autocast, train mode, the
signal handling that ends a run at a step boundary. ``engine.fit`` loops these over phases and epochs."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, PhaseConfig
from ..data.loader import PAD_LABEL, DeviceLoader
from ..models.freezing import param_groups, train_mode
from ..runs.checkpoint import unwrap_model
from .metrics import topk_correct
from .optim import KerasAdam
from .parallel import Dist, agree, all_reduce_sum
from .schedule import lr_at

__all__ = [
    "Interrupted",
    "NonFiniteLoss",
    "StopOnSignal",
    "TrainState",
    "autocast",
    "evaluate",
    "make_optimizer",
    "phase_train_mode",
    "resolve_device",
    "retain_host_memory",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

AGREE_EVERY = 25  # data-parallel: steps between agreements on a stop request (an all-reduce and a sync each)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the phase, step and learning rate."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the run stopped at a step boundary (``last.pt`` holds the last full epoch)."""


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint so that ``--resume`` continues the same run."""

    phase: int = 0  # index of the current phase (0-based)
    phase_epoch: int = 0  # epochs completed within the current phase
    epoch: int = 0  # epochs completed in the whole run
    step: int = 0  # iterations completed within the current phase (the LR schedule's position)
    best_acc: float = -1.0  # best validation top-1 so far, across phases
    phase_best_acc: float = -1.0  # best validation top-1 within the current phase (patience_scope="phase")
    best_epoch: int = 0  # global epoch of best_acc
    bad_epochs: int = 0  # epochs since the phase's last improvement (early stopping)
    rng: dict = field(default_factory=dict)  # generator states at the end of the last epoch
    run_id: str = ""  # the run's identity (config.yaml's run_id), written into every checkpoint


def retain_host_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS; True where it took effect.

    PyTorch allocates CPU tensors with plain ``malloc``. glibc serves every block above its mmap threshold (32 MB at
    most) with a fresh ``mmap`` and unmaps it on free, so the next step page-faults the whole block in again. VGG16's
    first block writes 67 MB at batch 64 and 64 px (64 x 64 ch x 64 x 64 px x 4 B), and faulting it in costs about as
    much as the convolution that fills it (VGG16 frozen-base step 150 -> 182 img/s on 2 cores, all layers 51 -> 56,
    peak memory +2-4 %: ``benchmarks/host_memory.py``). With mmap off and no trimming the heap grows to the peak once
    and is reused. Process-wide and lasting, so the CLI calls it once at start; a library user decides for their own
    process. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc without the usual soname
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    log.debug("glibc mallopt: mmap off, trimming off: %s", ok)
    return ok


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not auto, cpu, mps, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: no CUDA device is available here (use device=auto or cpu)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
    return dev


def make_optimizer(model: nn.Module, phase: PhaseConfig, fused: bool = False) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters (Keras recompiles the model at each phase)."""
    groups = param_groups(model, phase.weight_decay, phase.lr_decay)
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if phase.optimizer == "adam":
        return torch.optim.Adam(groups, lr=phase.lr_min, betas=phase.betas, **extra)
    if phase.optimizer == "adam-keras":  # Keras 2's update (see optim.KerasAdam), fused where Adam is
        return KerasAdam(groups, lr=phase.lr_min, betas=phase.betas, fused=fused)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=phase.lr_min, betas=phase.betas, **extra)
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr_min, momentum=phase.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {phase.optimizer!r}")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if use:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def phase_train_mode(model: nn.Module, phase: PhaseConfig) -> None:
    """Training mode, with BatchNorm layers kept in inference mode where the phase says so."""
    train_mode(model, phase.bn_frozen_eval)
    if phase.body_bn_eval:  # Keras guide: fine-tune with the base's BatchNorm in inference mode
        for m in model.body.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class StopOnSignal:
    """SIGINT/SIGTERM → finish the current step (and the epoch's checkpoints, if it ends), then stop cleanly.

    A second signal stops at once, unless it comes within ``grace`` seconds of the first: under torchrun one Ctrl-C
    reaches a rank twice, from the terminal and forwarded by the launcher."""

    grace = 2.0  # seconds

    def __init__(self) -> None:
        self.signum: int | None = None
        self._at = 0.0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if time.monotonic() - self._at > self.grace:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return
        self.signum, self._at = signum, time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _check_finite(first_bad: torch.Tensor, phase: PhaseConfig, state: TrainState, steps_per_epoch: int) -> None:
    """Raise NonFiniteLoss if the device-side flag recorded a non-finite loss (one sync, at refresh points)."""
    bad_step = int(first_bad.item())
    if bad_step >= 0:
        raise NonFiniteLoss(
            f"loss became non-finite at phase {state.phase + 1} ({phase.name}) step {bad_step} "
            f"(lr {lr_at(bad_step, phase, steps_per_epoch):.3g}); the last good checkpoint is kept"
        )


def _step_marker(model: nn.Module) -> Callable[[], None]:
    """For a wrapped (compiled) model, ``torch.compiler.cudagraph_mark_step_begin``: CUDA graphs (compile modes
    reduce-overhead and max-autotune) reuse their output buffers, and the mark says the previous step's outputs are
    done with. (Under a wrapper that is not compiled the mark is a harmless counter step.)"""
    if model is unwrap_model(model):
        return lambda: None
    return torch.compiler.cudagraph_mark_step_begin


def train_one_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    phase: PhaseConfig,
    state: TrainState,
    *,
    device: torch.device,
    amp: str = "auto",
    max_steps: int = 0,
    stop: StopOnSignal | None = None,
    progress: Callable[[dict], None] | None = None,
    dist: Dist = Dist(),
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    after_step: Callable[[float, torch.Tensor], None] | None = None,
    sync_each_step: bool | None = None,
) -> dict:
    """One pass over ``loader``; updates ``state.step``. Returns loss, top-1, top-5 (running, augmented) and counts,
    summed over the ranks under data-parallel training (``dist``).

    ``mix``: (x, y) -> (x, soft targets) before the forward pass (mixing.BatchMixer; accuracy still counts ``y``);
    ``after_step(lr, loss)``: called after every optimizer step (``state.step`` not yet advanced), with the loss
    still on the device (the weight EMA's update, TensorBoard's per-iteration log); ``sync_each_step``: read the
    loss on the host every step (default: on the CPU only, where it costs nothing)."""
    base = unwrap_model(model)
    phase_train_mode(base, phase)
    steps_per_epoch = len(loader) if not max_steps else min(len(loader), max_steps)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device, dtype=torch.long)
    seen = 0
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    sync_each_step = _sync_each_step(device) if sync_each_step is None else sync_each_step
    lr = lr_at(state.step, phase, steps_per_epoch)
    last_refresh = time.monotonic()
    step_begin = _step_marker(model)
    for i, (x, y) in enumerate(loader):
        if max_steps and i >= max_steps:
            break
        step_begin()
        lr = lr_at(state.step, phase, steps_per_epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # lr_scale: layer-wise LR decay (models.param_groups)
        target = y
        if mix is not None:
            x, target = mix(x, y)  # (B, classes) soft targets, label smoothing inside
        with autocast(device, amp):
            logits = model(x)
            smoothing = phase.label_smoothing if mix is None else 0.0  # the mixer's soft targets are smoothed
            loss = F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        if sync_each_step:
            if not math.isfinite(loss.item()):
                raise NonFiniteLoss(
                    f"loss became {loss.item()} at phase {state.phase + 1} ({phase.name}) step {state.step} "
                    f"(lr {lr:.3g}); the last good checkpoint is kept"
                )
        else:
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, state.step), first_bad)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(lr, loss.detach())
        n = y.shape[0]
        loss_sum += loss.detach() * n
        correct += topk_correct(logits.detach(), y, (1, 5))
        seen += n
        state.step += 1
        now = time.monotonic()
        if progress is not None and (now - last_refresh > 1.0 or i + 1 == steps_per_epoch):
            last_refresh = now
            _check_finite(first_bad, phase, state, steps_per_epoch)
            c = correct.tolist()
            progress({"loss": loss_sum.item() / seen, "acc": c[0] / seen, "lr": lr, "n": n, "step": i + 1})
        elif progress is not None:
            progress({"n": n, "step": i + 1})
        if stop is not None and _agree_now(i, steps_per_epoch, dist) and agree(stop.signum is not None, dist, device):
            raise Interrupted(f"stopped by signal {stop.signum or 'on another rank'} during epoch {state.epoch + 1}")
    _check_finite(first_bad, phase, state, steps_per_epoch)
    return {**_reduced(loss_sum, correct, seen, dist), "lr": lr}


def _sync_each_step(device: torch.device) -> bool:
    """Whether the loss is read on the host every step (an immediate NaN error): on the CPU, where ``.item()``
    costs nothing. Elsewhere a device-side flag is read at progress refreshes and at the epoch's end."""
    return device.type == "cpu"


def _agree_now(i: int, steps_per_epoch: int, dist: Dist) -> bool:
    """Whether step ``i`` (0-based) ends with the ranks agreeing on a stop request. One process: every step (a
    Python test). Several: every ``AGREE_EVERY`` steps and at the epoch's last step, a schedule of step indices
    alone, so every rank agrees at the same steps and a Ctrl-C stops them all at the same step."""
    return not dist.active or (i + 1) % AGREE_EVERY == 0 or i + 1 == steps_per_epoch


def _reduced(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, dist: Dist) -> dict:
    """Mean loss, top-1, top-5 and the image count from this rank's sums, all-reduced over the ranks (one sync)."""
    sums = all_reduce_sum(torch.stack([loss_sum.double(), *correct.double(),
                                       torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)]), dist)
    loss_total, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss_total / n, "acc": c1 / n, "top5": c5 / n, "n": int(n)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, device: torch.device, amp: str = "auto",
             dist: Dist = Dist()) -> dict:
    """Mean loss, top-1 and top-5 over the whole split (the last partial batch included). Under data-parallel
    training each rank scores its shard (every image once) and the sums are all-reduced. A ``pad_last`` loader's
    padding (label ``PAD_LABEL``) adds nothing: ``cross_entropy`` ignores it, no prediction matches it, and only
    the split's real images are counted."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device, dtype=torch.long)
    seen = 0
    step_begin = _step_marker(model)
    with autocast(device, amp):
        for x, y in loader:
            step_begin()
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum", ignore_index=PAD_LABEL)
            correct += topk_correct(logits, y, (1, 5))
            seen += y.shape[0]
    if getattr(loader, "pad_last", False):
        seen = loader.num_samples  # the real images, without the padding of the last batch
    return _reduced(loss_sum, correct, seen, dist)
