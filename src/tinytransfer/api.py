"""The Python API: one call trains, one call loads a run; the command line is a thin parser over these.

```python
import tinytransfer as tt

run = tt.train("demo", "data/digits", out="runs/digits", overrides={"phases.*.epochs": 1})
run.best_acc, run.metrics[-1]["val_acc"]
run.predict(["some.jpg", pil_image, uint8_array])[0].name
run.evaluate("val")["top1"]
run.report()                                  # runs/digits/report.html
tt.load("runs/digits").predict("a_folder/")
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig, from_dict, list_recipes, to_dict
from .models.backbones import BACKBONES, TIMM_PREFIX, model_from_config
from .models.backbones import create_model as _create_model_impl
from .outputs.datareport import audit_for_run
from .run import Prediction, Run, UserError, load, load_data, read_run_config, resolve_config
from .runs.checkpoint import load_checkpoint
from .runs.runfolder import CONFIG_YAML, LAST_PT, new_run_problem
from .training.engine import fit
from .training.parallel import barrier, launch, setup, teardown, world
from .training.steps import Interrupted, resolve_device

__all__ = [
    "Prediction",
    "audit",
    "resolve_config",
    "Run",
    "UserError",
    "create_model",
    "demo",
    "list_backbones",
    "list_recipes",
    "load",
    "lr_find",
    "resume",
    "train",
]

log = logging.getLogger("tinytransfer")

def list_backbones() -> list[str]:
    """Backbone names ``create_model`` knows; any timm model is also reachable as ``timm:<name>``."""
    return sorted(BACKBONES) + [f"{TIMM_PREFIX}<name>"]


def create_model(backbone: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                 head: str = "paper", **kwargs: Any) -> nn.Module:
    """A backbone with a new head (``paper`` or ``pool``); ``kwargs``: dropout, hidden, input_size."""
    return _create_model_impl(backbone, num_classes, pretrained=pretrained, weights=weights, head=head, **kwargs)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; deterministic kernels where asked, fast (benchmarked, TF32) ones otherwise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def _console(verbose: bool) -> Iterator[None]:
    """Epoch lines on stdout for a Python caller who has not configured logging (a notebook); else leave it be."""
    if not verbose or log.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# ---- training -----------------------------------------------------------------------------------------------------


def train(recipe: str | os.PathLike | RunConfig | Mapping = "vgg16-paper", data: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
          seed: int | None = None, deterministic: bool = False, device: str | None = None,
          nproc: int | None = None, *, auto_lr: bool = False, budget: str | None = None, force: bool = False,
          progress: bool | None = None, finish: bool = True, verbose: bool = True,
          started: float | None = None) -> "Run":
    """Train ``recipe`` on the dataset folder ``data`` into the run folder ``out`` and return the :class:`Run`.

    ``out`` defaults to ``runs/<recipe>-<time>``. ``device`` None keeps the recipe's (``auto``: CUDA where present).
    A folder that already holds another run is refused (``force=True`` starts it over). ``progress``: a progress
    bar (None: only where stderr is a terminal). ``finish``: figures, Table 1, test predictions and report.html
    afterwards. ``nproc``: data-parallel training in that many processes on this machine (torchrun's elastic agent;
    one GPU each on CUDA). Under ``torchrun`` every rank calls ``train`` and rank 0 writes the folder. ``auto_lr``: every
    phase's LR bounds come from an LR range test run before it (``auto_lr: true`` in each phase; see autolr.py).
    ``budget``: the wall time of the whole call, e.g. ``"5m"`` (``budget:`` in the recipe): each phase's epochs are
    planned from measured costs to end within it, and re-planned every epoch (training/budget.py, docs/budget.md);
    it counts from ``started`` (``time.perf_counter()`` at the command's start; default: this call).
    """
    started = time.perf_counter() if started is None else started
    cfg = resolve_config(recipe, data, overrides, seed, deterministic, device, budget=budget)
    if auto_lr:
        cfg = resolve_config(cfg, overrides={"phases.*.auto_lr": True})
    n = _check_procs(cfg, nproc)
    run_dir = Path(out) if out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not force and world().main:  # a quick answer before the data loads; fit asks again under the lock
        if (run_dir / CONFIG_YAML).exists():
            read_run_config(run_dir)  # UserError where it is not a run configuration
        problem = new_run_problem(run_dir, cfg)
        if problem:
            raise UserError(problem)
    if n > 1:
        return _launch(n, cfg, run_dir, False, progress=progress, finish=finish, force=force)
    return _train(cfg, run_dir, None, progress=progress, finish=finish, verbose=verbose, force=force,
                  started=started)


def _check_procs(cfg: RunConfig, nproc: int | None) -> int:
    """The number of processes to launch here (1 under torchrun, which launched them); refuses a batch that does
    not divide among all the ranks."""
    n = 1 if nproc is None else int(nproc)
    if n < 1:
        raise UserError(f"nproc={nproc}: must be >= 1")
    if n == 1 and not world().active:  # (ranks check their own devices)
        resolve_device(cfg.device)  # "cuda" where there is none: refused before the data are decoded
    if n > 1 and world().active:
        raise UserError("nproc: this process already runs under torchrun; pass --nproc-per-node to torchrun instead")
    ranks = max(n, world().world_size)
    if cfg.budget and ranks > 1:
        raise UserError(f"budget {cfg.budget}: not supported with data-parallel training (several processes) yet")
    for p in cfg.phases:
        if p.batch_size % ranks:
            raise UserError(f"phase {p.name!r}: batch_size {p.batch_size} does not divide among {ranks} processes "
                            "(the recipe's batch_size is the global batch)")
    return n


def _launch(n: int, cfg: RunConfig, run_dir: Path, resuming: bool, *, progress: bool | None, finish: bool,
            force: bool = False) -> "Run":
    """Data-parallel training in ``n`` local processes; the figures and report are made here afterwards."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    log.info("data-parallel training in %d processes", n)
    try:
        launch(n, _rank_main, to_dict(cfg), str(run_dir), resuming, progress, force)
    except SignalException as e:  # Ctrl-C / SIGTERM to the launcher: the agent has stopped every rank
        raise Interrupted(_stopped(f"stopped by signal {e.sigval}", run_dir)) from None
    except ChildFailedError as e:
        rank, failure, lines = _root_failure(e.failures)
        raise UserError(f"data-parallel training failed on rank {rank} (exit code {failure.exitcode})"
                        + (f": {lines[0][:300]}" if lines else "; its output above says why")) from None
    run = Run(run_dir, device=cfg.device)
    if finish:
        _finish(run, None)
    return run


def _root_failure(failures: Mapping[int, Any]) -> tuple[int, Any, list[str]]:
    """The failure that says why: a rank's own error before the others' lost connections (a rank that dies makes
    its peers fail in their next collective, sometimes first), then the earliest."""

    def text(f: Any) -> list[str]:
        msg = f.message if isinstance(f.message, str) else (f.message or {}).get("message", "")
        return [x for x in str(msg or "").strip().splitlines() if x.strip()]

    def echo(lines: list[str]) -> bool:
        joined = " ".join(lines)
        return any(k in joined for k in ("Connection reset", "Connection closed", "gloo", "NCCL", "ProcessGroup"))

    rank = min(failures, key=lambda r: (echo(text(failures[r])), failures[r].timestamp, r))
    return rank, failures[rank], text(failures[rank])


def _rank_main(cfg_dict: dict, run_dir: str, resuming: bool, progress: bool | None, force: bool = False) -> None:
    """One rank of a ``--nproc`` run (a spawned process; torchrun's environment is set). Its exception goes to
    the launcher as one line (the agent's error file)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_rank_body)(cfg_dict, run_dir, resuming, progress, force)


def _rank_body(cfg_dict: dict, run_dir: str, resuming: bool, progress: bool | None, force: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    ckpt = None
    if resuming and world().main and (Path(run_dir) / LAST_PT).is_file():
        ckpt = load_checkpoint(Path(run_dir) / LAST_PT)
    _train(from_dict(cfg_dict), Path(run_dir), ckpt, progress=progress, finish=False, verbose=False, force=force)


def resume(run: str | os.PathLike, data: str | os.PathLike | None = None, *,
           overrides: Mapping[str, Any] | Sequence[str] | None = None, nproc: int | None = None,
           progress: bool | None = None, finish: bool = True, verbose: bool = True, force: bool = False,
           started: float | None = None) -> "Run":
    """Continue the run in folder ``run`` from its ``last.pt`` (same RNG streams: on the CPU with
    ``deterministic`` the result equals an uninterrupted run). ``data``: the dataset's new place, if it moved.
    ``overrides``: settings that can still apply (later phases, the LR bounds, epochs and patience of the phase under
    way, the device; docs/resume.md), recorded in config.yaml with the epoch they take effect; others are refused.
    A last.pt of another run, or data that changed, is refused. ``nproc`` may differ from the run's start:
    checkpoints hold global state only. ``force``: take over the lock of a run on another host (which cannot be
    checked from here)."""
    from .training.resumecheck import changed_settings, check_changes

    # a budgeted run's clock goes on from what its earlier commands spent, counting this one from ``started``
    started = time.perf_counter() if started is None else started
    run_dir = Path(run)
    if not (run_dir / CONFIG_YAML).is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml) to resume")
    raw = read_run_config(run_dir)
    cfg = resolve_config(raw, data, overrides)
    n = _check_procs(cfg, nproc)
    ckpt = load_checkpoint(run_dir / LAST_PT) if (run_dir / LAST_PT).is_file() and world().main else None
    if ckpt is not None:  # a setting that cannot change is refused before the data are loaded
        check_changes(changed_settings(from_dict(raw), cfg), cfg, ckpt)
    if n > 1:
        return _launch(n, cfg, run_dir, True, progress=progress, finish=finish, force=force)
    return _train(cfg, run_dir, ckpt, progress=progress, finish=finish, verbose=verbose, force=force,
                  started=started)


def _train(cfg: RunConfig, run_dir: Path, ckpt: dict | None, *, progress: bool | None, finish: bool,
           verbose: bool, force: bool = False, started: float | None = None) -> "Run":
    d = setup(cfg.device)  # one process: nothing to join
    quiet = logging.getLogger("tinytransfer").level if not d.main else None
    try:
        if not d.main:  # rank 0 prints; the others only warn
            logging.getLogger("tinytransfer").setLevel(logging.WARNING)
        with _console(verbose and d.main):
            seed_everything(cfg.seed, cfg.deterministic)  # the same seed on every rank: the same initial model
            if d.active and not d.main:
                barrier(d)  # rank 0 builds the image cache and fetches the weights first
            data = load_data(cfg)
            log.info("data: %d classes, %d train, %d val, %d test images (%d px)", len(data.classes),
                     len(data.train), len(data.val) if data.val else 0, len(data.test) if data.test else 0,
                     data.image_size)
            m = cfg.model
            if m.input_size == 0:  # auto: the budget picks the side; the pool head does not depend on it
                if m.head != "pool":
                    raise UserError("model.input_size: auto needs head: pool (the paper head is sized for one side)")
                m = dataclasses.replace(m, input_size=max(m.input_sizes))
            try:
                # other ranks get rank 0's weights when DDP wraps the model (it broadcasts every parameter)
                model = model_from_config(m, len(data.classes), load_weights=ckpt is None and d.main)
            except OSError as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise UserError(f"could not download the ImageNet weights of {m.backbone} ({e}); offline, pass "
                                "--set model.weights=FILE (a local state dict) or --set model.pretrained=false"
                                ) from None
            if d.active and d.main:
                barrier(d)
            if d.active:  # rank 0 read last.pt (other machines may not see the folder): share it
                box = [ckpt]
                torch.distributed.broadcast_object_list(box, src=0)
                ckpt = box[0]
            if d.main:  # audit.json, duplicates.png and the cross-split warning, before the first epoch
                audit_for_run(data, run_dir, cfg=cfg, resuming=ckpt is not None, force=force, workers=cfg.data.workers)
            log.info("run folder: %s%s", run_dir, f" ({d.world_size} processes)" if d.active else "")
            state = fit(model, data, cfg, run_dir, resume=ckpt, dist=d, show_progress=progress, force=force,
                        started=started)
            log.info("best val accuracy %.4f at epoch %d; checkpoints in %s", state.best_acc, state.best_epoch,
                     run_dir)
            run = Run(run_dir, device=cfg.device if not d.active else "cpu")
            if d.main:
                run.calibrate(data)  # the temperature of best.pt, fitted on val (outputs/calibration.py)
            if finish and d.main:
                _finish(run, data)
    except (Interrupted, KeyboardInterrupt) as e:
        raise Interrupted(_stopped(str(e) or "interrupted", run_dir)) from None
    finally:
        teardown()
        if quiet is not None:
            logging.getLogger("tinytransfer").setLevel(quiet)
    return run



def _stopped(why: str, run_dir: Path) -> str:
    """The line for a run stopped by a signal: how to continue it, or that there is nothing to continue yet."""
    if (run_dir / LAST_PT).is_file():
        return f"{why}; last.pt holds the last complete epoch, continue with: tinytransfer train --resume {run_dir}"
    return f"{why} before the run saved its first epoch; {run_dir} holds nothing to resume: start it again"


def _finish(run: Run, data: Any) -> None:
    """The figures, predictions and report after training; a full disk there says that the checkpoints are safe."""
    try:
        run.report(data=data)
    except OSError as e:
        raise UserError(f"{e.filename or run.dir}: {e.strerror or e} while writing the report; the training finished "
                        f"and its checkpoints in {run.dir} are safe: redo the report with tinytransfer report "
                        f"{run.dir}") from None


def lr_find(recipe: str | os.PathLike | RunConfig | Mapping = "vgg16-paper", data: str | os.PathLike | None = None,
            overrides: Mapping[str, Any] | Sequence[str] | None = None, *, phase: int = 0, steps: int = 100,
            start: float = 1e-7, end: float = 1.0, out: str | os.PathLike = "runs/lr-find") -> dict:
    """Smith's LR range test on a phase of ``recipe``: ``lr_find.csv`` and ``lr_find.png`` in ``out``; returns
    ``{"lr", "loss", "smoothed", "suggested"}``."""
    from .data.augment import make_transform
    from .data.loader import DeviceLoader
    from .outputs.plots import plot_lr_find
    from .runs.runfolder import write_lr_find
    from .training.engine import input_norm
    from .training.lrfind import lr_range_test

    cfg = resolve_config(recipe, data, overrides)
    if not 0 <= phase < len(cfg.phases):
        raise UserError(f"phase {phase}: the recipe has phases 0..{len(cfg.phases) - 1}")
    seed_everything(cfg.seed, False)
    device = resolve_device(cfg.device)
    ds = load_data(cfg)
    m = cfg.model
    model = model_from_config(m, len(ds.classes)).to(device)
    ph = cfg.phases[phase]
    mean, std = input_norm(cfg, model)
    loader = DeviceLoader(ds.train, ph.batch_size, device=device, shuffle=True,
                          generator=torch.Generator().manual_seed(cfg.seed),
                          transform=make_transform(cfg.data.augment, mean, std, input_size=m.input_size),
                          aug_generator=torch.Generator(device=device).manual_seed(cfg.seed + 1))
    res = lr_range_test(model, loader, ph, device=device, num_steps=steps, lr_start=start, lr_end=end, amp=cfg.amp)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_lr_find(folder, res)
    plot_lr_find(res, folder / "lr_find.png")
    return res


def audit(data: str | os.PathLike, out: str | os.PathLike | None = None, *, val_mode: str = "official",
          holdout_per_class: int = 50, workers: int = 2) -> dict:
    """The data audit of a dataset folder (docs/audit.md), from its uint8 cache (built on the first use, unreadable
    files skipped and listed): written to ``out`` (default ``<data>/audit.json``) and returned as a dict."""
    from .data.audit import AUDIT_JSON, audit_dataset, write_audit
    from .data.dataset import load_dataset

    ds = load_dataset(data, val_mode=val_mode, holdout_per_class=holdout_per_class, skip_bad_images=True,
                      workers=workers)
    res = audit_dataset(ds, workers=workers)
    path = Path(out) if out else Path(ds.root) / AUDIT_JSON
    try:
        write_audit(res, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write the audit ({e.strerror or e}); choose another place with out=") from None
    res["path"] = str(path)
    return res


DEMO_DIGITS_AUGMENT = "keras-noflip"  # the demo recipe's warp without the mirror: a mirrored digit is another glyph


def demo(data: str | os.PathLike = "data/digits", out: str | os.PathLike | None = None,
         overrides: Mapping[str, Any] | Sequence[str] | None = None, *, progress: bool | None = None,
         verbose: bool = True, force: bool = False) -> "Run":
    """The whole pipeline offline: the digits dataset written to ``data`` → the ``demo`` recipe (EfficientNet-Lite0
    with its bundled ImageNet weights) → predictions → report.html. Digits are not mirror-symmetric, so the recipe's
    augmentation runs without its horizontal flip here (``overrides`` may set ``data.augment`` back).

    ``data`` must be absent, empty or a digits set written before; ``out`` must not hold a run (as for
    :func:`train`). ``force``: write over either."""
    from .config import apply_overrides, load_recipe
    from .data.sources import build_demo_dataset

    root = build_demo_dataset(os.fspath(data), force=force)
    out = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    recipe = apply_overrides(load_recipe("demo"), {"data.augment": DEMO_DIGITS_AUGMENT})
    return train(recipe, root, out, overrides, force=force, progress=progress, verbose=verbose)


