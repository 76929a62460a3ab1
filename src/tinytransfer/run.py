"""A run folder as an object: ``tt.load(run)`` → :class:`Run` (metrics, the model, predict, evaluate, report), and
what both it and training need: the configuration a recipe resolves to and the dataset it names."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .config import RunConfig, apply_overrides, from_dict, load_recipe, to_dict
from .data.dataset import Dataset, Split, load_configured
from .runs.checkpoint import CheckpointError
from .runs.metricsfile import read_metrics, table1, table1_markdown
from .runs.runfolder import (
    CONFIG_YAML,
    METRICS_CSV,
    PREDICTIONS_CSV,
    CheckpointView,
    load_model,
    read_config,
    run_dir_of,
)
from .training.metrics import topk_correct
from .training.steps import resolve_device

__all__ = ["Prediction", "Run", "UserError", "load", "load_data", "read_run_config", "resolve_config"]

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


def resolve_config(recipe: str | os.PathLike | RunConfig | Mapping, data: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | Sequence[str] | None = None, seed: int | None = None,
                   deterministic: bool = False, device: str | None = None, budget: str | None = None) -> RunConfig:
    """The run's configuration: a shipped recipe name, a YAML path, a RunConfig or a raw dict, then ``data``,
    ``overrides`` (``{"phases.0.epochs": 3}`` or ``["phases.0.epochs=3"]``), ``seed``, ``deterministic`` and
    ``device`` applied in that order (each only where given). ``budget`` (e.g. ``"5m"``) is set first, so that a
    recipe's ``auto`` choices that need one are valid."""
    if isinstance(recipe, RunConfig):
        raw = to_dict(recipe)
    elif isinstance(recipe, Mapping):
        raw = dict(recipe)
    else:
        raw = load_recipe(os.fspath(recipe))
    if isinstance(overrides, (str, bytes)):
        raise UserError(f"overrides: expected a {{key: value}} mapping or a list of 'key=value' strings, got the "
                        f"string {overrides!r} (write [{overrides!r}])")
    if budget:
        raw["budget"] = str(budget)
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


def read_run_config(run_dir: Path) -> dict:
    """config.yaml of a run folder; UserError naming the file when it is not a run configuration."""
    try:
        raw = read_config(run_dir)
    except (yaml.YAMLError, ValueError) as e:
        raise UserError(f"{run_dir / CONFIG_YAML}: not a run configuration ({str(e).splitlines()[0]})") from None
    if not raw:
        raise UserError(f"{run_dir / CONFIG_YAML}: empty run configuration")
    return raw


def load_data(cfg: RunConfig) -> Dataset:
    if not cfg.data.root:
        raise UserError("no dataset: pass data=DIR (--data DIR) or set data.root in the recipe")
    return load_configured(cfg.data)


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
        if which not in ("best", "last"):
            raise UserError(f"which={which!r}: expected 'best' or 'last'")
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
            return from_dict(read_run_config(self.dir))
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
        tensor batch (float in pixel units 0..255: a float batch in 0..1 is refused, multiply it by 255). ``tta``: average over the image and its flip (where the recipe's
        augmentation flips) and small shifts. An unreadable file raises ValueError naming it (``skip_bad``: it is
        logged and left out)."""
        from .outputs.predict import gather_images, predict_arrays

        files, arrays = gather_images(images, self.checkpoint.image_size, skip_bad=skip_bad)
        probs = predict_arrays(self.model, arrays, self.checkpoint, device=self.device, tta=tta)
        return _predictions(files, probs, self.classes, self.names)

    def evaluate(self, split: str = "val", data: str | os.PathLike | None = None, tta: bool = False) -> dict:
        """``{"top1", "top5", "loss", "images", "temperature", "nll_before", "nll_after", "ece_before",
        "ece_after"}`` of the checkpoint on a split of the run's dataset (``data``: the dataset's new place, if it
        moved). ``loss`` is the raw network's (T = 1) cross-entropy; NLL and ECE (15 bins) are given without
        (before) and with (after) the checkpoint's temperature; top-1 and top-5 do not depend on it."""
        cfg = self.checkpoint.config
        if data is not None:
            cfg = resolve_config(cfg, data)
        ds = load_data(cfg)
        part: Split | None = getattr(ds, split, None)
        if part is None or not len(part):
            raise UserError(f"{cfg.data.root}: no {split} split")
        if list(ds.classes) != self.classes:
            raise UserError(f"{cfg.data.root}: its classes differ from the checkpoint's")
        if (np.asarray(part.labels) < 0).any():
            raise UserError(f"{cfg.data.root}: the {split} split is unlabelled, so it has no accuracy to measure; "
                            f"evaluate val or train, or predict {split}")
        return _scores(self.model, part, self.checkpoint, self.device, cfg.eval_batch_size, tta)

    def calibrate(self, data: Dataset | None = None) -> dict | None:
        """Fit the temperature of ``best.pt`` on the validation split (stored in the checkpoint, summary in
        ``calibration.json``); ``train`` does this after the last epoch. Returns the summary (None: no val split)."""
        from .outputs.calibration import calibrate_run

        summary = calibrate_run(self.dir, data if data is not None else load_data(self.checkpoint.config),
                                device=self.device)
        self._model = self._view = None  # reload: the checkpoint now holds the temperature
        return summary

    def predict_split(self, split: str = "test", out: str | os.PathLike | None = None,
                      data: str | os.PathLike | None = None, tta: bool = False) -> tuple[Path, list[Prediction]]:
        """Predict every image of a split of the run's dataset into ``predictions.csv`` (or ``out``)."""
        from .outputs.predict import predict_arrays, write_predictions

        cfg = self.checkpoint.config if data is None else resolve_config(self.checkpoint.config, data)
        part: Split | None = getattr(load_data(cfg), split, None)
        if part is None or not len(part):
            raise UserError(f"{cfg.data.root}: no {split} split")
        probs = predict_arrays(self.model, part.images, self.checkpoint, device=self.device, tta=tta)
        preds = _predictions(list(part.files), probs, self.classes, self.names)
        path = Path(out) if out else self.dir / PREDICTIONS_CSV
        write_predictions(preds, path)
        return path, preds

    def visualize(self, image: str | os.PathLike, out: str | os.PathLike | None = None,
                  layers: Sequence[str] | None = None, label: str | None = None,
                  cam_layer: str | None = None) -> list[Path]:
        """Feature maps of conv ``layers`` and Grad-CAM overlays for one image file (``label``: its true class id,
        for a second overlay). Returns the PNGs written into ``out`` (default: the run folder)."""
        from .outputs.cam import conv_layers
        from .outputs.finish import visualize
        from .outputs.predict import read_image

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
        from .outputs.plots import plot_curves

        if not (self.dir / METRICS_CSV).is_file():
            raise UserError(f"{self.dir}: no metrics.csv in this run folder")
        return [Path(p) for p in plot_curves(self.dir)], table1_markdown(table1(self.dir))

    def export(self, fmt: str = "torchscript", out: str | os.PathLike | None = None, output: str = "logits") -> Path:
        """The model as TorchScript, a ``torch.export`` program (YAML sidecar) or ONNX (``model.onnx`` + ``model.json``,
        ``output`` logits or probabilities, checked against PyTorch with onnxruntime on images of the run's dataset
        where onnxruntime is installed), on the CPU."""
        from .outputs.export import export_model, sample_images

        model, view = load_model(self.checkpoint.path if self.checkpoint.path.is_file() else self.dir,
                                 device="cpu")
        samples = sample_images(view.input_size, view.config.data.root)[1] if fmt == "onnx" else None
        return export_model(model, view, self.dir, fmt, out, output=output, samples=samples)

    def report(self, data: Dataset | str | os.PathLike | None = None) -> Path:
        """Figures, Table 1, test predictions, error analysis, feature maps, Grad-CAM and ``report.html``. ``data``:
        the dataset (loaded, or its folder if it moved since training; default: the folder in the run's config)."""
        from .outputs.finish import finish_run

        if data is not None and not isinstance(data, Dataset):
            data = load_data(resolve_config(self.checkpoint.config, data))
        elif data is None and not Path(self.checkpoint.config.data.root).is_dir():
            raise UserError(f"{self.checkpoint.config.data.root}: the run's dataset folder is gone; if it moved, "
                            f"pass its new place (tinytransfer report {self.dir} --data DIR)")
        return Path(finish_run(self.dir, data, device=str(self.device)))


def _predictions(files: list[str], probs: torch.Tensor, classes: list[str], names: list[str]) -> list[Prediction]:
    out = []
    if not len(files):
        return out
    top_p, top_i = probs.topk(min(5, probs.shape[1]), dim=1)
    for f, ps, idx in zip(files, top_p.tolist(), top_i.tolist()):
        out.append(Prediction(file=f, wnid=classes[idx[0]], name=names[idx[0]], prob=float(ps[0]),
                              top5=tuple((classes[j], float(p)) for j, p in zip(idx, ps))))
    return out


@torch.no_grad()
def _scores(model: nn.Module, part: Split, view: CheckpointView, device: torch.device, batch_size: int,
            tta: bool) -> dict:
    """Run.evaluate's figures from one pass over the split's logits. With TTA the views' probabilities are averaged,
    tempered ones for top-k and "after" (as ``predict --tta`` gives them), raw ones for ``loss`` and "before"."""
    from .outputs.predict import logit_views
    from .training.calibrate import ece, nll

    t = view.temperature
    logp: dict[float, list[torch.Tensor]] = {1.0: [], t: []}
    for views in logit_views(model, part.images, view, device, batch_size, tta):
        for temp in {1.0, t}:  # log of the mean probability over the views
            lp = torch.stack([torch.log_softmax(z.double() / temp, dim=1) for z in views])
            logp[temp].append(torch.logsumexp(lp, dim=0) - math.log(len(views)))
    before, after = torch.cat(logp[1.0]), torch.cat(logp[t])
    y = torch.as_tensor(np.asarray(part.labels), dtype=torch.long)
    c1, c5 = (int(c) for c in topk_correct(after, y, (1, 5)))
    nll0, nll1 = nll(before, y), nll(after, y)
    return {"top1": c1 / len(y), "top5": c5 / len(y), "loss": nll0, "images": len(y), "temperature": t,
            "nll_before": nll0, "nll_after": nll1, "ece_before": ece(before, y), "ece_after": ece(after, y)}
