"""The training loop: ``fit(model, data, cfg, run_dir)`` runs the phases; ``evaluate`` scores a split.

Phases are data (``PhaseConfig``): each sets what is trainable, the optimizer and the LR policy. The LR is a pure
function of the iteration (``schedule.lr_at``) written into the param groups before every step. Metrics are
accumulated on the device and read once an epoch (and at progress-bar refreshes), so the step has no host sync
on a GPU. After every epoch ``last.pt`` is written atomically, and ``best.pt`` when validation accuracy improves,
from a host-memory snapshot by a background thread (``asyncsave``): a crash loses at most the current epoch (and
the one just finished while its write is in flight), and ``resume`` continues the same run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import PhaseConfig, RunConfig
from ..data.augment import make_transform
from ..data.dataset import Dataset, Split
from ..data.loader import DeviceLoader
from ..data.mixing import make_mixer
from ..models.freezing import check_trainable, set_trainable
from ..models.heads import convert_sync_bn
from ..runs.asyncsave import AsyncCheckpointWriter
from ..runs.checkpoint import CheckpointError, load_checkpoint, unwrap_model
from ..runs.metricsfile import MetricsWriter, console_line
from ..runs.runfolder import (
    BEST_PT,
    LAST_PT,
    METRICS_CSV,
    RunLock,
    clear_previous_run,
    new_run_id,
    new_run_problem,
    write_config,
)
from ..runs.tb import TensorBoardLog, open_tensorboard
from .budgetrun import start_budget
from .compiling import CompileLog, wrap_for_phase
from .ema import start_ema
from .parallel import Dist
from .resumecheck import prepare_resume
from .snapshot import checkpoint_state, data_identity, model_weights, rng_state, set_rng_state
from .steps import (
    Interrupted,
    NonFiniteLoss,
    StopOnSignal,
    TrainState,
    autocast,
    evaluate,
    make_optimizer,
    phase_train_mode,
    resolve_device,
    retain_host_memory,
    train_one_epoch,
)

__all__ = [
    "NonFiniteLoss",
    "Interrupted",
    "TrainState",
    "autocast",
    "evaluate",
    "fit",
    "make_optimizer",
    "phase_train_mode",
    "resolve_device",
    "retain_host_memory",
    "train_one_epoch",
]

log = logging.getLogger(__name__)


def input_norm(cfg: RunConfig, model: nn.Module) -> tuple[tuple, tuple]:
    """The (mean, std) the batches are normalised with, in [0, 1] units."""
    if cfg.data.normalize == "rescale":  # Keras ImageDataGenerator(rescale=1/255) and nothing else
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    base = unwrap_model(model)
    return tuple(base.mean), tuple(base.std)


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: dict | None = None,
    dist: Dist | None = None,
    show_progress: bool | None = None,
    started: float | None = None,
    force: bool = False,
) -> TrainState:
    """Train ``model`` through ``cfg.phases`` into ``run_dir``: config.yaml (a fresh run), metrics.csv, last.pt and
    best.pt, under the folder's lock (a second live run into the same folder is refused).

    ``resume`` is a checkpoint dict (``last.pt``) to continue from; without it a folder holding another run is refused
    under the lock unless ``force`` (``runfolder.new_run_problem``; ``force`` also takes another host's lock), and
    what the previous run left is removed. ``show_progress``: a progress bar; None = only where stderr is a
    terminal. Returns the final state. ``started``: ``time.perf_counter()`` at the command's start, which
    ``cfg.budget`` counts from.

    ``dist`` (:func:`parallel.setup`): data-parallel training. Every rank calls ``fit`` with the same config and
    a model built from the same seed; each runs ``batch_size / world_size`` images of every global batch, the model
    is wrapped in DistributedDataParallel (rebuilt at each phase over the trainable parameters only), metrics are
    all-reduced, and rank 0 alone takes the lock and writes the folder. Checkpoints hold global state only.
    """
    dist = dist or Dist()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = ""  # the run's identity, in config.yaml and every checkpoint (rank 0 writes them)
    with contextlib.ExitStack() as stack:
        if dist.main:
            stack.enter_context(RunLock(run_dir, force=force))
            if resume is None:  # checked here, under the lock: another run may have finished here meanwhile
                problem = None if force else new_run_problem(run_dir, cfg)
                if problem:
                    raise CheckpointError(problem)
                clear_previous_run(run_dir)
                write_config(run_dir, cfg, {"run_id": (run_id := new_run_id())})
            else:  # refuses another run's last.pt, changed data, settings that cannot change; records the rest
                run_id = prepare_resume(run_dir, cfg, data, resume)
        return _fit(unwrap_model(model), data, cfg, run_dir, resume, dist, show_progress, run_id, started)


def _fit(model: nn.Module, data: Dataset, cfg: RunConfig, run_dir: Path, resume: dict | None, dist: Dist,
         show_progress: bool | None, run_id: str = "", started: float | None = None) -> TrainState:
    """``fit``'s loop; ``model`` is the raw model (``net`` is what runs the steps: DDP-wrapped, compiled)."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    show_progress = show_progress and dist.main
    rank, world_size = dist.rank, dist.world_size
    for i, p in enumerate(cfg.phases):  # a bad setting of a later phase fails now, not after the earlier ones
        if p.batch_size % world_size:
            raise ValueError(f"phase {p.name!r}: batch_size {p.batch_size} does not divide among {world_size} "
                             "processes (the recipe's batch is the global batch)")
        try:
            for train in [t for t in dict.fromkeys((p.train, *p.train_choices)) if t != "auto"]:  # a budget's too
                check_trainable(model, train)
        except ValueError as e:
            raise ValueError(f"phase {i + 1} ({p.name}): train: {e}") from None
    device = dist.device if dist.active else resolve_device(cfg.device)
    model.to(device)
    # channels_last: faster on CUDA and with oneDNN on the CPU alike (VGG16 unfrozen 41 → 51 img/s, Lite0 209 → 344)
    channels_last = cfg.channels_last in ("true", "auto")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = input_norm(cfg, model)
    train_tf = make_transform(cfg.data.augment, mean, std, input_size=cfg.model.input_size)
    eval_tf = make_transform("none", mean, std, input_size=cfg.model.input_size)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    writer = MetricsWriter(run_dir / METRICS_CSV)
    state = TrainState(run_id=run_id)
    if resume is not None:
        model.load_state_dict(resume["model"])
        state = TrainState(
            phase=resume["phase"], phase_epoch=resume["phase_epoch"], epoch=resume["epoch"], step=resume["step"],
            best_acc=resume["best_acc"], best_epoch=resume.get("best_epoch", 0), bad_epochs=resume["bad_epochs"],
            rng=resume["rng"], phase_best_acc=resume.get("phase_best_acc", -1.0), run_id=run_id,
        )
        set_rng_state(state.rng, shuffle_gen, aug_gen)
        if dist.main:
            writer.truncate_after(state.epoch)
        log.info("resuming at phase %d, epoch %d (step %d of the phase)", state.phase + 1, state.epoch, state.step)
    elif dist.main:
        writer.truncate_after(0)
    if cfg.sync_bn and dist.active:
        if device.type == "cuda":
            model = convert_sync_bn(model)  # KerasBatchNorm1d keeps its variance rule over the global batch
        else:
            log.warning("sync_bn: SyncBatchNorm needs CUDA; on the CPU each rank's BatchNorm sees its own share")
    tb = open_tensorboard(run_dir, state.epoch) if cfg.tensorboard and rank == 0 else None
    # Compiled, every batch has one shape (no dynamic-shape recompiles, no new CUDA graphs for a last partial
    # batch): evaluation pads its last batch (and counts only the real images), training drops its last one
    static = cfg.compile and len(data.train) >= max(p.batch_size for p in cfg.phases)
    val_loader = None
    if data.val is not None and len(data.val):
        val_loader = DeviceLoader(data.val, cfg.eval_batch_size, device=device, transform=eval_tf,
                                  device_cache_gb=cfg.data.device_cache_gb, rank=rank, world_size=world_size,
                                  channels_last=channels_last, pad_last=cfg.compile)
    # one training loader for all phases (on CUDA it holds the whole uint8 split on the device)
    loader = DeviceLoader(data.train, cfg.phases[0].batch_size, device=device, shuffle=True, generator=shuffle_gen,
                          device_cache_gb=cfg.data.device_cache_gb,
                          transform=train_tf, aug_generator=aug_gen, rank=rank, world_size=world_size,
                          drop_last=static, channels_last=channels_last)
    clock = None
    data_id = data_identity(data)  # once a run, in every checkpoint (hashing 110,000 names takes ~50 ms)
    if cfg.budget:  # measured costs -> each phase's epochs (and what the recipe left open), re-planned every epoch
        cfg, clock = start_budget(model, loader, val_loader, cfg, state, run_dir, norm=(mean, std), device=device,
                                  generators=(shuffle_gen, aug_gen), test_images=len(data.test or ()), main=dist.main,
                                  started=time.perf_counter() if started is None else started)
    fused = device.type == "cuda"
    compiles = CompileLog(run_dir, cfg.compile, write=dist.main)  # compile.json: per phase, whatever the verbosity
    # checkpoints are snapshot to host memory on this thread and written by a background one (asyncsave)
    with StopOnSignal() as stop, AsyncCheckpointWriter() as saver, _phase_cut(compiles):
        while state.phase < len(cfg.phases):
            phase = cfg.phases[state.phase]
            fresh_phase = state.phase_epoch == 0 and state.step == 0
            saver.wait()  # best.pt may still be on its way to disk
            if fresh_phase and state.phase > 0 and phase.start_from_best and (run_dir / BEST_PT).is_file():
                best = load_checkpoint(run_dir / BEST_PT)
                model.load_state_dict(best["model"])
                log.info("phase %d starts from the best weights so far (epoch %d, val %.4f)",
                         state.phase + 1, best["epoch"], best["best_acc"])
            set_trainable(model, phase.train)
            net, eval_net = wrap_for_phase(model, cfg, dist)  # DDP over the trainable parameters, then compile
            optimizer = make_optimizer(model, phase, fused=fused)
            if not fresh_phase and resume is not None and resume.get("optimizer"):
                optimizer.load_state_dict(resume["optimizer"])
            ema = start_ema(model, phase, resume.get("ema") if resume is not None and not fresh_phase else None)
            mix = make_mixer(phase, len(data.classes))
            resume = None
            loader.batch_size = max(1, phase.batch_size // world_size)  # phases may differ in batch size
            if fresh_phase and phase.auto_lr:  # measured LR bounds; model and RNG states are put back (autolr.py)
                from .autolr import auto_lr_phase

                cfg = auto_lr_phase(model, loader, cfg, state.phase, run_dir, device=device, rank=rank,
                                    generators=(shuffle_gen, aug_gen))
                phase = cfg.phases[state.phase]
            compiles.start(state.phase)
            while state.phase_epoch < phase.epochs:
                if dist.active:  # per-rank streams that depend on (seed, rank, epoch) only: any N resumes exactly
                    torch.manual_seed(_stream_seed(cfg.seed, rank, state.epoch))
                    aug_gen.manual_seed(_stream_seed(cfg.seed + 1, rank, state.epoch))
                row = _run_epoch(net, eval_net, loader, val_loader, optimizer, phase, state, cfg, device, stop,
                                 show_progress, dist, mix=mix, ema=ema, tb=tb)
                compiles.epoch()
                # the EMA weights count where they score better (best.pt then holds them)
                use_ema = row.get("ema_val_acc") is not None and row["ema_val_acc"] > row["val_acc"]
                score = row["ema_val_acc"] if use_ema else row["val_acc"]
                # without a validation split the latest weights are the best known
                improved = val_loader is None or score > state.best_acc
                state.phase_epoch += 1
                state.epoch += 1
                if clock is not None:  # the time left re-plans the epochs (a shortened phase still anneals)
                    cfg = clock.replan(cfg, state, run_dir, main=dist.main)
                    phase = cfg.phases[state.phase]
                patience_reset = _patience_improved(phase, state, score, improved)
                if improved:
                    if val_loader is not None:
                        state.best_acc = score
                    state.best_epoch = state.epoch
                state.bad_epochs = 0 if patience_reset else state.bad_epochs + 1
                stop_phase = phase.patience > 0 and state.bad_epochs >= phase.patience
                done_phase = stop_phase or state.phase_epoch >= phase.epochs
                state.rng = rng_state(shuffle_gen, aug_gen)
                if dist.main:
                    saver.wait()  # the previous epoch's checkpoints and row are on disk
                    log.info(console_line(row))
                    saves = []
                    if tb is not None:
                        tb.epoch(row)
                    # each state dict taken once an epoch and shared: the writer copies each tensor to the host once
                    weights = model_weights(model)
                    ema_weights = model_weights(ema.module) if ema is not None else None
                    if improved:
                        best_ckpt = checkpoint_state(ema.module if use_ema else model, optimizer, cfg, data, state,
                                                     mean, std, weights=ema_weights if use_ema else weights,
                                                     data_id=data_id)
                        best_ckpt["weights"] = "ema" if use_ema else "model"
                        saves.append((best_ckpt, run_dir / BEST_PT))
                    # the row once best.pt is on disk (the report's headline is a model in the folder), before
                    # last.pt (a kill before last.pt resumes the epoch before, which drops this row)
                    saves.append(lambda row=row: writer.append(row))
                    # last.pt points at the start of the next epoch (or the next phase)
                    nxt = TrainState(**vars(state))
                    if done_phase:
                        nxt.phase, nxt.phase_epoch, nxt.step, nxt.bad_epochs = state.phase + 1, 0, 0, 0
                        nxt.phase_best_acc = -1.0
                    last_ckpt = checkpoint_state(model, None if done_phase else optimizer, cfg, data, nxt, mean, std,
                                                 weights=weights, data_id=data_id)
                    if ema is not None and not done_phase:  # a resumed phase continues its EMA
                        last_ckpt["ema"] = ema_weights
                    saves.append((last_ckpt, run_dir / LAST_PT))
                    saver.submit(saves)  # snapshot now, serialise + fsync + rename in the background
                    log.debug("checkpoint: %.3f s on the training thread so far", saver.blocked_s)
                if stop_phase:
                    log.info("early stopping: no val improvement for %d epochs in phase %d", phase.patience,
                             state.phase + 1)
                    break
                if stop.signum is not None:
                    raise Interrupted(f"stopped by signal {stop.signum} after epoch {state.epoch}")
            compiles.end()
            state.phase += 1
            state.phase_epoch = 0
            state.step = 0
            state.bad_epochs = 0
            state.phase_best_acc = -1.0
    if tb is not None:
        tb.close()
    return state


def _patience_improved(phase: PhaseConfig, state: TrainState, val_acc: float | None, run_improved: bool) -> bool:
    """Whether this epoch resets the early-stopping count; records the phase's best. ``patience_scope="run"``:
    a new best of the whole run; ``"phase"``: a new best of this phase (Keras's EarlyStopping, whose best restarts
    with every ``fit()``, so a phase's first epoch always counts). Without validation every epoch counts."""
    if val_acc is None:
        return True
    phase_improved = val_acc > state.phase_best_acc
    state.phase_best_acc = max(state.phase_best_acc, val_acc)
    return phase_improved if phase.patience_scope == "phase" else run_improved


def _stream_seed(seed: int, rank: int, epoch: int) -> int:
    """A seed for rank ``rank``'s random streams (dropout, augmentation) in epoch ``epoch``."""
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**63


@contextlib.contextmanager
def _phase_cut(compiles: CompileLog):
    """A phase left by an exception (a signal, a crash) still records its compile figures, marked incomplete."""
    try:
        yield
    except BaseException:
        compiles.end(complete=False)
        raise


def _run_epoch(net: nn.Module, eval_net: nn.Module, loader: DeviceLoader, val_loader: DeviceLoader | None,
               optimizer: torch.optim.Optimizer, phase: PhaseConfig, state: TrainState, cfg: RunConfig,
               device: torch.device, stop: StopOnSignal, show_progress: bool, dist: Dist, *, mix: Callable | None = None,
               ema: nn.Module | None = None, tb: TensorBoardLog | None = None) -> dict:
    total = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"phase {state.phase + 1} epoch {state.epoch + 1}", leave=False,
                   unit="batch", dynamic_ncols=True)
    t0 = time.perf_counter()
    counted = [0]

    def progress(info: dict) -> None:
        counted[0] += info["n"]
        if bar is None:
            return
        bar.update(1)
        if "loss" in info:
            rate = counted[0] / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['acc']:.3f}", lr=f"{info['lr']:.2e}",
                            img_s=f"{rate:.0f}")

    def after_step(lr: float, loss: torch.Tensor) -> None:
        if ema is not None:
            ema.update(unwrap_model(eval_net), step=state.step + 1)  # the phase's 1-based update count (timm's warm-up)
        if tb is not None:
            tb.step(lr, loss)

    try:
        tr = train_one_epoch(net, loader, optimizer, phase, state, device=device, amp=cfg.amp,
                             max_steps=cfg.max_steps_per_epoch, stop=stop, progress=progress, dist=dist, mix=mix,
                             after_step=after_step if ema is not None or tb is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    va = evaluate(eval_net, val_loader, device=device, amp=cfg.amp, dist=dist) if val_loader is not None else None
    ev = evaluate(ema.module, val_loader, device=device, amp=cfg.amp, dist=dist) if ema is not None and va else None
    seconds = time.perf_counter() - t0
    return {
        "phase": state.phase + 1,
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": tr["lr"],
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "train_top5": tr["top5"],
        "val_loss": va["loss"] if va else None,
        "val_acc": va["acc"] if va else None,
        "val_top5": va["top5"] if va else None,
        "seconds": seconds,
        "img_s": tr["n"] / max(train_s, 1e-9),
        "ema_val_loss": ev["loss"] if ev else None,
        "ema_val_acc": ev["acc"] if ev else None,
    }


def split_loader(split: Split, cfg: RunConfig, model: nn.Module, device: torch.device) -> DeviceLoader:
    """An evaluation loader (no augmentation, no shuffle) for any split, normalised as in training."""
    mean, std = input_norm(cfg, model)
    tf = make_transform("none", mean, std, input_size=cfg.model.input_size)
    return DeviceLoader(split, cfg.eval_batch_size, device=device, transform=tf,
                        device_cache_gb=cfg.data.device_cache_gb)
