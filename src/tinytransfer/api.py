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
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .config import RunConfig, apply_overrides, from_dict, list_recipes, load_recipe, to_dict
from .data import Dataset, Split, load_configured
from .engine import evaluate as evaluate_loader
from .engine import fit, resolve_device, split_loader
from .models import BACKBONES, TIMM_PREFIX, model_from_config
from .parallel import barrier, launch, setup, teardown, world
from .models import create_model as _create_model_impl
from .runfolder import (CONFIG_YAML, LAST_PT, METRICS_CSV, PREDICTIONS_CSV, CheckpointView, load_model, read_config,
                        read_metrics, run_dir_of, table1, table1_markdown)

__all__ = [
    "Prediction",
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

ImageLike = Any  # a path (file or folder), a PIL image, an (H, W, 3) uint8 array, or a (B, 3, H, W) tensor batch


class UserError(ValueError):
    """An error the user can fix (a bad argument, a folder that holds another run); one line, no traceback."""


@dataclass(frozen=True)
class Prediction:
    """One image's prediction."""

    file: str  # the path, or "<i>" for the i-th in-memory image
    wnid: str  # top-1 class id (wnid or folder name)
    name: str  # its human-readable name
    prob: float  # its probability
    top5: tuple[tuple[str, float], ...]  # (class id, probability) of the top 5, best first


def list_backbones() -> list[str]:
    """Backbone names ``create_model`` knows; any timm model is also reachable as ``timm:<name>``."""
    return sorted(BACKBONES) + [f"{TIMM_PREFIX}<name>"]


def create_model(backbone: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                 head: str = "paper", **kwargs: Any) -> nn.Module:
    """A backbone with a new head (``paper`` or ``pool``); ``kwargs``: dropout, hidden, input_size."""
    return _create_model_impl(backbone, num_classes, pretrained=pretrained, weights=weights, head=head, **kwargs)


# ---- configuration ------------------------------------------------------------------------------------------------


def resolve_config(recipe: str | os.PathLike | RunConfig | Mapping, data: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | Sequence[str] | None = None, seed: int | None = None,
                   deterministic: bool = False, device: str | None = None) -> RunConfig:
    """The run's configuration: a shipped recipe name, a YAML path, a RunConfig or a raw dict, then ``data``,
    ``overrides`` (``{"phases.0.epochs": 3}`` or ``["phases.0.epochs=3"]``), ``seed``, ``deterministic`` and
    ``device`` applied in that order (each only where given)."""
    if isinstance(recipe, RunConfig):
        raw = to_dict(recipe)
    elif isinstance(recipe, Mapping):
        raw = dict(recipe)
    else:
        raw = load_recipe(os.fspath(recipe))
    sets: dict[str, Any] = {}
    if data is not None:
        sets["data.root"] = str(Path(data).resolve())
    raw = apply_overrides(raw, sets) if sets else raw
    if overrides:
        raw = apply_overrides(raw, overrides if isinstance(overrides, Mapping) else list(overrides))
    last: dict[str, Any] = {}
    if seed is not None:
        last["seed"] = int(seed)
    if deterministic:
        last["deterministic"] = True
    if device:
        last["device"] = device
    return from_dict(apply_overrides(raw, last) if last else raw)


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


def _read_run_config(run_dir: Path) -> dict:
    """config.yaml of a run folder; UserError naming the file when it is not a run configuration."""
    try:
        raw = read_config(run_dir)
    except (yaml.YAMLError, ValueError) as e:
        raise UserError(f"{run_dir / CONFIG_YAML}: not a run configuration ({str(e).splitlines()[0]})") from None
    if not raw:
        raise UserError(f"{run_dir / CONFIG_YAML}: empty run configuration")
    return raw


def _same_run(stored: dict, cfg: RunConfig) -> bool:
    """Whether a folder's config.yaml is ``cfg``'s run: equal, up to the LR bounds that auto_lr phases measured and
    wrote there."""
    new = to_dict(cfg)
    phases = stored.get("phases")
    if isinstance(phases, list) and len(phases) == len(new["phases"]):
        stored = {**stored, "phases": [
            {**p, "lr_min": n["lr_min"], "lr_max": n["lr_max"]} if n.get("auto_lr") and isinstance(p, dict) else p
            for p, n in zip(phases, new["phases"])]}
    return stored == new


def load_data(cfg: RunConfig) -> Dataset:
    if not cfg.data.root:
        raise UserError("no dataset: pass data=DIR (--data DIR) or set data.root in the recipe")
    return load_configured(cfg.data)


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
          nproc: int | None = None, *, auto_lr: bool = False, force: bool = False, progress: bool | None = None,
          finish: bool = True, verbose: bool = True) -> "Run":
    """Train ``recipe`` on the dataset folder ``data`` into the run folder ``out`` and return the :class:`Run`.

    ``out`` defaults to ``runs/<recipe>-<time>``. ``device`` None keeps the recipe's (``auto``: CUDA where present).
    A folder that already holds another run is refused (``force=True`` starts it over). ``progress``: a progress
    bar (None: only where stderr is a terminal). ``finish``: figures, Table 1, test predictions and report.html
    afterwards. ``nproc``: data-parallel training in that many processes on this machine (torchrun's elastic agent;
    one GPU each on CUDA). Under ``torchrun`` every rank calls ``train`` and rank 0 writes the folder. ``auto_lr``: every
    phase's LR bounds come from an LR range test run before it (``auto_lr: true`` in each phase; see autolr.py).
    """
    cfg = resolve_config(recipe, data, overrides, seed, deterministic, device)
    if auto_lr:
        cfg = resolve_config(cfg, overrides={"phases.*.auto_lr": True})
    n = _check_procs(cfg, nproc)
    run_dir = Path(out) if out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / CONFIG_YAML).exists() and not force and world().main:
        if not _same_run(_read_run_config(run_dir), cfg):
            raise UserError(f"{run_dir}: holds a different run; use --resume {run_dir} to continue it "
                            "or --force to overwrite it")
        if (run_dir / LAST_PT).is_file():
            raise UserError(f"{run_dir}: already holds this run; use --resume {run_dir} to continue it "
                            "or --force to start over")
    if n > 1:
        return _launch(n, cfg, run_dir, False, progress=progress, finish=finish)
    return _train(cfg, run_dir, None, progress=progress, finish=finish, verbose=verbose)


def _check_procs(cfg: RunConfig, nproc: int | None) -> int:
    """The number of processes to launch here (1 under torchrun, which launched them); refuses a batch that does
    not divide among all the ranks."""
    n = int(nproc or 1)
    if n < 1:
        raise UserError(f"nproc={nproc}: must be >= 1")
    if n > 1 and world().active:
        raise UserError("nproc: this process already runs under torchrun; pass --nproc-per-node to torchrun instead")
    ranks = max(n, world().world_size)
    for p in cfg.phases:
        if p.batch_size % ranks:
            raise UserError(f"phase {p.name!r}: batch_size {p.batch_size} does not divide among {ranks} processes "
                            "(the recipe's batch_size is the global batch)")
    return n


def _launch(n: int, cfg: RunConfig, run_dir: Path, resuming: bool, *, progress: bool | None, finish: bool) -> "Run":
    """Data-parallel training in ``n`` local processes; the figures and report are made here afterwards."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .engine import Interrupted

    log.info("data-parallel training in %d processes", n)
    try:
        launch(n, _rank_main, to_dict(cfg), str(run_dir), resuming, progress)
    except SignalException as e:  # Ctrl-C / SIGTERM to the launcher: the agent has stopped every rank
        raise Interrupted(f"stopped by signal {e.sigval}") from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        text = failure.message if isinstance(failure.message, str) else (failure.message or {}).get("message", "")
        lines = [x for x in str(text or "").strip().splitlines() if x.strip()]
        raise UserError(f"data-parallel training failed on rank {rank} (exit code {failure.exitcode})"
                        + (f": {lines[0][:300]}" if lines else "; its output above says why")) from None
    run = Run(run_dir, device=cfg.device)
    if finish:
        run.report()
    return run


def _rank_main(cfg_dict: dict, run_dir: str, resuming: bool, progress: bool | None) -> None:
    """One rank of a ``--nproc`` run (a spawned process; torchrun's environment is set). Its exception goes to
    the launcher as one line (the agent's error file)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_rank_body)(cfg_dict, run_dir, resuming, progress)


def _rank_body(cfg_dict: dict, run_dir: str, resuming: bool, progress: bool | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    ckpt = None
    if resuming and world().main and (Path(run_dir) / LAST_PT).is_file():
        ckpt = load_checkpoint(Path(run_dir) / LAST_PT)
    _train(from_dict(cfg_dict), Path(run_dir), ckpt, progress=progress, finish=False, verbose=False)


def resume(run: str | os.PathLike, data: str | os.PathLike | None = None, *, nproc: int | None = None,
           progress: bool | None = None, finish: bool = True, verbose: bool = True) -> "Run":
    """Continue the run in folder ``run`` from its ``last.pt`` (same RNG streams: on the CPU with
    ``deterministic`` the result equals an uninterrupted run). ``data``: the dataset's new place, if it moved.
    ``nproc`` may differ from the run's start: checkpoints hold global state only."""
    run_dir = Path(run)
    if not (run_dir / CONFIG_YAML).is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml) to resume")
    raw = _read_run_config(run_dir)
    if data is not None:
        raw.setdefault("data", {})["root"] = str(Path(data).resolve())
    cfg = from_dict(raw)
    n = _check_procs(cfg, nproc)
    if n > 1:
        return _launch(n, cfg, run_dir, True, progress=progress, finish=finish)
    ckpt = load_checkpoint(run_dir / LAST_PT) if (run_dir / LAST_PT).is_file() and world().main else None
    return _train(cfg, run_dir, ckpt, progress=progress, finish=finish, verbose=verbose)


def _train(cfg: RunConfig, run_dir: Path, ckpt: dict | None, *, progress: bool | None, finish: bool,
           verbose: bool) -> "Run":
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
            log.info("run folder: %s%s", run_dir, f" ({d.world_size} processes)" if d.active else "")
            state = fit(model, data, cfg, run_dir, resume=ckpt, dist=d, show_progress=progress)
            log.info("best val accuracy %.4f at epoch %d; checkpoints in %s", state.best_acc, state.best_epoch,
                     run_dir)
            run = Run(run_dir, device=cfg.device if not d.active else "cpu")
            if finish and d.main:
                run.report(data=data)
    finally:
        teardown()
        if quiet is not None:
            logging.getLogger("tinytransfer").setLevel(quiet)
    return run



# ---- a finished (or running) run ----------------------------------------------------------------------------------


def load(run: str | os.PathLike, which: str = "best", device: str = "auto") -> "Run":
    """A run folder (or one of its checkpoint files) as a :class:`Run`."""
    return Run(run, which=which, device=device)


class Run:
    """A run folder and its best (or last) checkpoint: metrics, the model, predict, evaluate, report."""

    def __init__(self, run: str | os.PathLike, which: str = "best", device: str = "auto") -> None:
        path = Path(run)
        if not path.exists():
            raise CheckpointError(f"{path}: no such run folder or checkpoint")
        self.dir = run_dir_of(path)
        self._which = path if path.is_file() else which
        self.device = resolve_device(device)
        self._model: nn.Module | None = None
        self._view: CheckpointView | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    # -- what the folder holds
    @property
    def checkpoint(self) -> CheckpointView:
        """The typed view of the checkpoint this Run uses (``best.pt`` unless told otherwise)."""
        if self._view is None:
            self._load()
        assert self._view is not None
        return self._view

    @property
    def config(self) -> RunConfig:
        if (self.dir / CONFIG_YAML).is_file():
            return from_dict(_read_run_config(self.dir))
        return self.checkpoint.config

    @property
    def metrics(self) -> list[dict]:
        """metrics.csv, one dict an epoch, numbers typed (an empty cell is NaN)."""
        path = self.dir / METRICS_CSV
        return read_metrics(path) if path.is_file() else []

    @property
    def best_acc(self) -> float:
        """Best validation top-1 (a fraction) over the epochs run: the checkpoint's exact value (metrics.csv keeps
        6 digits), or metrics.csv's where the checkpoint has none."""
        if self.checkpoint.best_acc >= 0:
            return float(self.checkpoint.best_acc)
        vals = [r["val_acc"] for r in self.metrics if r["val_acc"] == r["val_acc"]]
        return max(vals) if vals else float("nan")

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint.classes)

    @property
    def names(self) -> list[str]:
        return list(self.checkpoint.names)

    @property
    def model(self) -> nn.Module:
        """The trained network in eval mode, on this Run's device."""
        if self._model is None:
            self._load()
        assert self._model is not None
        return self._model

    def _load(self) -> None:
        which = self._which
        self._model, self._view = load_model(which if isinstance(which, Path) else self.dir,
                                             which=which if isinstance(which, str) else "best", device=self.device)

    # -- using it
    def predict(self, images: ImageLike | Sequence[ImageLike], tta: bool = False,
                skip_bad: bool = False) -> list[Prediction]:
        """Predictions for file paths, folders, PIL images, (H, W, 3) uint8 arrays or a (B, 3, H, W) uint8/float
        tensor batch (float in 0..255, as pixels). ``tta``: average over the image and its flip (where the recipe's
        augmentation flips) and small shifts. An unreadable file raises ValueError naming it (``skip_bad``: it is
        logged and left out)."""
        from .predict import gather_images, predict_arrays

        files, arrays = gather_images(images, self.checkpoint.image_size, skip_bad=skip_bad)
        probs = predict_arrays(self.model, arrays, self.checkpoint, device=self.device, tta=tta)
        return _predictions(files, probs, self.classes, self.names)

    def evaluate(self, split: str = "val", data: str | os.PathLike | None = None, tta: bool = False) -> dict:
        """``{"top1", "top5", "loss", "images"}`` of the checkpoint on a split of the run's dataset (``data``: the
        dataset's new place, if it moved)."""
        cfg = self.checkpoint.config
        if data is not None:
            cfg = resolve_config(cfg, data)
        ds = load_data(cfg)
        part: Split | None = getattr(ds, split, None)
        if part is None or not len(part):
            raise UserError(f"{cfg.data.root}: no {split} split")
        if list(ds.classes) != self.classes:
            raise UserError(f"{cfg.data.root}: its classes differ from the checkpoint's")
        if tta:
            from .predict import predict_arrays

            probs = predict_arrays(self.model, part.images, self.checkpoint, device=self.device, tta=True)
            y = torch.as_tensor(np.asarray(part.labels), dtype=torch.long)
            top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
            return {"top1": float((top5[:, 0] == y).float().mean()),
                    "top5": float((top5 == y[:, None]).any(1).float().mean()),
                    "loss": float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)),
                    "images": len(y)}
        res = evaluate_loader(self.model, split_loader(part, cfg, self.model, self.device), device=self.device,
                              amp=cfg.amp)
        return {"top1": res["acc"], "top5": res["top5"], "loss": res["loss"], "images": res["n"]}

    def predict_split(self, split: str = "test", out: str | os.PathLike | None = None,
                      data: str | os.PathLike | None = None, tta: bool = False) -> tuple[Path, list[Prediction]]:
        """Predict every image of a split of the run's dataset into ``predictions.csv`` (or ``out``)."""
        from .predict import predict_arrays, top_k_rows, write_predictions

        cfg = self.checkpoint.config if data is None else resolve_config(self.checkpoint.config, data)
        part: Split | None = getattr(load_data(cfg), split, None)
        if part is None or not len(part):
            raise UserError(f"{cfg.data.root}: no {split} split")
        probs = predict_arrays(self.model, part.images, self.checkpoint, device=self.device, tta=tta)
        path = Path(out) if out else self.dir / PREDICTIONS_CSV
        write_predictions(top_k_rows(list(part.files), probs, self.classes, self.names), path)
        return path, _predictions(list(part.files), probs, self.classes, self.names)

    def visualize(self, image: str | os.PathLike, out: str | os.PathLike | None = None,
                  layers: Sequence[str] | None = None, label: str | None = None,
                  cam_layer: str | None = None) -> list[Path]:
        """Feature maps of conv ``layers`` and Grad-CAM overlays for one image file (``label``: its true class id,
        for a second overlay). Returns the PNGs written into ``out`` (default: the run folder)."""
        from .cam import conv_layers
        from .outputs import visualize
        from .predict import read_image

        model = self.model
        if layers:
            valid = set(dict(model.named_modules()))
            bad = [name for name in layers if name not in valid]
            if bad:
                raise UserError(f"unknown layer {bad[0]!r}; the model's convolution layers are: "
                                + ", ".join(conv_layers(model)))
        true = None
        if label:
            if label not in self.classes:
                raise UserError(f"label {label}: not one of the run's classes")
            true = self.classes.index(label)
        folder = Path(out) if out else self.dir
        folder.mkdir(parents=True, exist_ok=True)
        return [Path(p) for p in visualize(model, self.checkpoint, read_image(image, self.checkpoint.image_size),
                                           folder, tag=Path(image).stem, layers=list(layers) if layers else None,
                                           true_label=true, cam_layer=cam_layer, device=self.device)]

    def plot(self) -> tuple[list[Path], str]:
        """Redraw the curves from metrics.csv and rewrite Table 1; returns the PNGs and Table 1 as Markdown."""
        from .plots import plot_curves

        if not (self.dir / METRICS_CSV).is_file():
            raise UserError(f"{self.dir}: no metrics.csv in this run folder")
        return [Path(p) for p in plot_curves(self.dir)], table1_markdown(table1(self.dir))

    def export(self, fmt: str = "torchscript", out: str | os.PathLike | None = None, output: str = "logits") -> Path:
        """The model as TorchScript, a ``torch.export`` program (YAML sidecar) or ONNX (``model.onnx`` + ``model.json``,
        ``output`` logits or probabilities, checked against PyTorch with onnxruntime on images of the run's dataset
        where onnxruntime is installed), on the CPU."""
        from .export import export_model, sample_images

        model, view = load_model(self.checkpoint.path if self.checkpoint.path.is_file() else self.dir,
                                 device="cpu")
        samples = sample_images(view.input_size, view.config.data.root)[1] if fmt == "onnx" else None
        return export_model(model, view, self.dir, fmt, out, output=output, samples=samples)

    def report(self, data: Dataset | None = None) -> Path:
        """Figures, Table 1, test predictions, error analysis, feature maps, Grad-CAM and ``report.html``."""
        from .outputs import finish_run

        return Path(finish_run(self.dir, data, device=str(self.device)))


def lr_find(recipe: str | os.PathLike | RunConfig | Mapping = "vgg16-paper", data: str | os.PathLike | None = None,
            overrides: Mapping[str, Any] | Sequence[str] | None = None, *, phase: int = 0, steps: int = 100,
            start: float = 1e-7, end: float = 1.0, out: str | os.PathLike = "runs/lr-find") -> dict:
    """Smith's LR range test on a phase of ``recipe``: ``lr_find.csv`` and ``lr_find.png`` in ``out``; returns
    ``{"lr", "loss", "smoothed", "suggested"}``."""
    from .augment import make_transform
    from .engine import input_norm
    from .lrfind import lr_range_test
    from .loader import DeviceLoader
    from .plots import plot_lr_find
    from .runfolder import write_lr_find

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


def demo(data: str | os.PathLike = "data/digits", out: str | os.PathLike | None = None,
         overrides: Mapping[str, Any] | Sequence[str] | None = None, *, progress: bool | None = None,
         verbose: bool = True) -> "Run":
    """The whole pipeline offline: the digits dataset written to ``data`` → the ``demo`` recipe (EfficientNet-Lite0
    with its bundled ImageNet weights) → predictions → report.html."""
    from .sources import build_demo_dataset

    root = build_demo_dataset(os.fspath(data))
    out = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return train("demo", root, out, overrides, force=True, progress=progress, verbose=verbose)


def _predictions(files: list[str], probs: torch.Tensor, classes: list[str], names: list[str]) -> list[Prediction]:
    out = []
    if not len(files):
        return out
    top_p, top_i = probs.topk(min(5, probs.shape[1]), dim=1)
    for f, ps, idx in zip(files, top_p.tolist(), top_i.tolist()):
        out.append(Prediction(file=f, wnid=classes[idx[0]], name=names[idx[0]], prob=float(ps[0]),
                              top5=tuple((classes[j], float(p)) for j, p in zip(idx, ps))))
    return out

