"""The run folder's one owner: its file names, ``config.yaml``, the lock, the LR-finder files, and a typed view of its
checkpoints (``metrics.csv`` and Table 1: :mod:`.metricsfile`).

Whatever writes one of these files also reads it, here. Every write is atomic (:mod:`tinytransfer.fsutil`). Figures
(:mod:`tinytransfer.plots`) and the HTML page (:mod:`tinytransfer.report`) read the folder through this module.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from ..config import RunConfig, from_dict, to_dict
from ..fsutil import PidLock, atomic_write_text
from .checkpoint import CheckpointError, find_checkpoint, load_checkpoint

__all__ = [
    "BEST_PT",
    "COMPILE_JSON",
    "CONFIG_YAML",
    "AUTO_LR_JSON",
    "LAST_PT",
    "METRICS_CSV",
    "CheckpointView",
    "RunLock",
    "checkpoint_view",
    "clear_previous_run",
    "load_model",
    "new_run_problem",
    "read_auto_lr",
    "read_compile",
    "read_config",
    "read_run_meta",
    "new_run_id",
    "RUN_META",
    "run_dir_of",
    "same_run",
    "unplanned",
    "write_auto_lr",
    "write_compile",
    "write_config",
    "write_lr_find",
]

log = logging.getLogger(__name__)

# ---- file names ---------------------------------------------------------------------------------------------------
CONFIG_YAML = "config.yaml"  # the resolved RunConfig (to_dict), written by fit before the first epoch
METRICS_CSV = "metrics.csv"  # one row an epoch: METRIC_COLUMNS
BEST_PT = "best.pt"  # checkpoint of the best validation accuracy
LAST_PT = "last.pt"  # checkpoint at the start of the next epoch (resume point)
LOCK = ".lock"  # the owner's pid while a run writes the folder
TABLE1_MD = "table1.md"
TABLE1_CSV = "table1.csv"
PREDICTIONS_CSV = "predictions.csv"
ANALYSIS_JSON = "analysis.json"
REPORT_HTML = "report.html"
AUTO_LR_JSON = "auto_lr.json"  # LR range tests of auto_lr phases: {"<phase, 1-based>": {recipe, chosen, curve, ...}}
COMPILE_JSON = "compile.json"  # compiled runs: {"phases": [{phase, epochs, graphs, graph_breaks, compile_s, ...}]}
# What a run leaves beside its checkpoints (outputs/: figures, Table 1, predictions, analysis, report, exports;
# runs/tb.py: event files); a fresh start in the folder removes them, so none describes the previous run
PREVIOUS_RUN_FILES = (
    BEST_PT, LAST_PT, AUTO_LR_JSON, COMPILE_JSON, TABLE1_MD, TABLE1_CSV, PREDICTIONS_CSV, ANALYSIS_JSON, REPORT_HTML,
    "accuracy.png", "loss.png", "lr.png", "confusion_pairs.png", "confusion_matrix.png", "per_class.png",
    "mistakes.png", "model.torchscript.pt", "model.torchscript.pt.yaml", "model.pt2", "model.pt2.yaml",
    "model.onnx", "model.json", "calibration.json", "reliability.png",
)
PREVIOUS_RUN_GLOBS = ("featuremaps_*.png", "gradcam_*.png")
PREVIOUS_RUN_DIRS = ("tensorboard",)


def write_compile(run_dir: str | os.PathLike, phases: list[dict]) -> None:
    """What torch.compile did in each phase so far (``training.compiling.CompileLog``), atomically."""
    atomic_write_text(Path(run_dir) / COMPILE_JSON, json.dumps({"phases": phases}, indent=1) + "\n")


def read_compile(run_dir: str | os.PathLike) -> list[dict]:
    """The phases :func:`write_compile` recorded; [] where the run did not compile (or the file is unreadable)."""
    try:
        return list(json.loads((Path(run_dir) / COMPILE_JSON).read_text()).get("phases", []))
    except (OSError, ValueError, AttributeError):
        return []


def run_dir_of(run: str | os.PathLike) -> Path:
    """The run folder of ``run``, which names the folder itself or a checkpoint file in it."""
    return Path(run) if Path(run).is_dir() else Path(run).parent


# ---- config.yaml --------------------------------------------------------------------------------------------------


# config.yaml keys beside the RunConfig's: the run's identity (also in every checkpoint, so that a resume refuses
# another run's last.pt) and the settings changed at each --resume: [{epoch (first one run with them), set, was}]
RUN_META = ("run_id", "resumed_with")


def new_run_id() -> str:
    """A fresh run's identity: 16 random hex digits."""
    return uuid.uuid4().hex[:16]


def write_config(run_dir: str | os.PathLike, cfg: RunConfig, meta: Mapping | None = None) -> Path:
    """``config.yaml``: the resolved configuration and the run's ``RUN_META`` keys, atomically. ``meta`` None keeps
    those the file already has."""
    path = Path(run_dir) / CONFIG_YAML
    meta = read_run_meta(run_dir) if meta is None else meta
    out = {**to_dict(cfg), **{k: meta[k] for k in RUN_META if k in meta}}
    atomic_write_text(path, yaml.safe_dump(out, sort_keys=False))
    return path


# ---- config.yaml (read) ------------------------------------------------------------------------------------------


def _read_yaml(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        return {}
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    return cfg


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's configuration in ``config.yaml`` as a plain dict (without ``RUN_META``); ``{}`` if absent."""
    return {k: v for k, v in _read_yaml(run_dir).items() if k not in RUN_META}


def read_run_meta(run_dir: str | os.PathLike) -> dict:
    """The ``RUN_META`` keys of ``config.yaml`` (``{}`` for a run written before they existed)."""
    return {k: v for k, v in _read_yaml(run_dir).items() if k in RUN_META}


# ---- the lock, and who may start in a folder -----------------------------------------------------------------------


class RunLock(PidLock):
    """``run_dir/.lock``: one live run writes a run folder (see :class:`fsutil.PidLock`; ``force``: take over the
    lock of a run on another host, which cannot be checked from here)."""

    error = CheckpointError
    what = "run"

    def __init__(self, run_dir: str | os.PathLike, *, force: bool = False) -> None:
        super().__init__(Path(run_dir) / LOCK, force=force)


def unplanned(raw: dict) -> dict:
    """A config dict without what a budget's planner writes into it (the plan, each phase's epochs and LR knots, the
    input size and trainable parts it chose, the steps an epoch it capped): a budgeted run folder's config.yaml
    compared with its recipe."""
    if not raw.get("budget"):
        return raw
    out = {k: v for k, v in raw.items() if k not in ("plan", "max_steps_per_epoch")}
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k != "input_size"}
    if isinstance(out.get("phases"), list):
        out["phases"] = [{k: v for k, v in p.items() if k not in ("epochs", "lr_epochs", "lr_knots", "train")}
                         if isinstance(p, dict) else p for p in out["phases"]]
    return out


def same_run(stored: Mapping, cfg: RunConfig) -> bool:
    """Whether a folder's config.yaml is ``cfg``'s run: equal, up to the LR bounds that auto_lr phases measured and
    wrote there and what a time budget planned (:func:`unplanned`)."""
    new = to_dict(cfg)
    if new.get("budget"):  # a budget's planner rewrote epochs, LR knots and its choices: compare the rest
        stored, new = unplanned(dict(stored)), unplanned(new)
    phases = stored.get("phases")
    if isinstance(phases, list) and len(phases) == len(new["phases"]):
        stored = {**stored, "phases": [
            {**p, "lr_min": n["lr_min"], "lr_max": n["lr_max"]} if n.get("auto_lr") and isinstance(p, dict) else p
            for p, n in zip(phases, new["phases"])]}
    return dict(stored) == new


def new_run_problem(run_dir: str | os.PathLike, cfg: RunConfig) -> str | None:
    """Why a fresh run of ``cfg`` may not start in ``run_dir`` without ``--force`` (one line); None where it may.

    A folder holds a run when it has config.yaml, or best.pt or last.pt (a run whose config.yaml was lost is
    still a run). The same configuration without last.pt (a run stopped before its first epoch) may start over.
    Called once before the data is loaded, for a quick answer, and again under the run lock, where it counts."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_YAML).is_file():
        try:
            stored = read_config(run_dir)
        except (yaml.YAMLError, ValueError, OSError):
            stored = {}
        if not stored or not same_run(stored, cfg):
            return (f"{run_dir}: holds a different run; use --resume {run_dir} to continue it or --force to "
                    "overwrite it")
        if (run_dir / LAST_PT).is_file():
            return f"{run_dir}: already holds this run; use --resume {run_dir} to continue it or --force to start over"
        return None
    found = [n for n in (BEST_PT, LAST_PT) if (run_dir / n).is_file()]
    if found:
        return f"{run_dir}: holds a run ({' and '.join(found)}, no {CONFIG_YAML}); use --force to overwrite it"
    return None


def clear_previous_run(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what an earlier run left in ``run_dir`` (checkpoints, figures, Table 1, predictions, analysis,
    report, exports, TensorBoard events): a fresh start, under the lock. ``metrics.csv`` is emptied by its writer.
    Files the run folder does not know are kept. Returns what was removed."""
    run_dir = Path(run_dir)
    gone = [run_dir / n for n in PREVIOUS_RUN_FILES if (run_dir / n).is_file()]
    gone += [p for g in PREVIOUS_RUN_GLOBS for p in sorted(run_dir.glob(g)) if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    for d in PREVIOUS_RUN_DIRS:
        if (run_dir / d).is_dir():
            shutil.rmtree(run_dir / d, ignore_errors=True)
            gone.append(run_dir / d)
    if gone:
        log.info("%s: removed the previous run's %s", run_dir, ", ".join(p.name for p in gone))
    return gone


def write_lr_find(folder: str | os.PathLike, result: Mapping) -> Path:
    """``lr_find.csv`` (lr, loss, smoothed) of an LR range test."""
    path = Path(folder) / "lr_find.csv"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["lr", "loss", "smoothed"])
    w.writerows(zip(result["lr"], result["loss"], result["smoothed"]))
    atomic_write_text(path, buf.getvalue())
    return path


def read_auto_lr(run_dir: str | os.PathLike) -> dict:
    """``auto_lr.json``: ``{"<phase>": record}`` (phase 1-based); {} where there is none or it is unreadable."""
    path = Path(run_dir) / AUTO_LR_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        log.warning("%s: unreadable (%s); ignored", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def write_auto_lr(run_dir: str | os.PathLike, phase: int, record: Mapping) -> Path:
    """Add (or replace) phase ``phase``'s (1-based) record in ``auto_lr.json``, atomically."""
    path = Path(run_dir) / AUTO_LR_JSON
    data = read_auto_lr(run_dir)
    data[str(phase)] = dict(record)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


# ---- a typed view of a checkpoint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointView:
    """What callers need of a checkpoint, typed: no ``ckpt["config"]["model"]["input_size"]`` paths elsewhere."""

    path: Path  # the checkpoint file
    raw: dict = field(repr=False)  # the plain dict as saved (weights, optimizer, counters)
    config: RunConfig  # the run's resolved configuration
    classes: tuple[str, ...]  # wnids / folder names, in model output order
    names: tuple[str, ...]  # human-readable class names
    mean: tuple[float, float, float]  # input normalisation, [0, 1] units
    std: tuple[float, float, float]
    image_size: int  # side the images were decoded at for training (pixels)
    epoch: int  # global epochs completed when it was written
    best_acc: float  # best validation top-1 so far (fraction; -1 when unknown)
    temperature: float = 1.0  # softmax(logits / T): fitted on val after training ("temperature" key; 1 if absent)

    @property
    def input_size(self) -> int:
        """The model's input side in pixels (batches are resized on the device to it)."""
        return int(self.config.model.input_size)

    @property
    def state_dict(self) -> dict:
        return self.raw["model"]

    @classmethod
    def from_dict(cls, ckpt: Mapping, path: str | os.PathLike = "") -> "CheckpointView":
        cfg = from_dict(dict(ckpt["config"]))
        t = float(ckpt.get("temperature", 1.0))
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature {t} is not a positive number")
        return cls(path=Path(path), raw=dict(ckpt), config=cfg, classes=tuple(ckpt["classes"]),
                   names=tuple(ckpt.get("names") or ckpt["classes"]), mean=tuple(ckpt["mean"]),
                   std=tuple(ckpt["std"]), image_size=int(ckpt.get("image_size") or cfg.model.input_size),
                   epoch=int(ckpt.get("epoch", 0)), best_acc=float(ckpt.get("best_acc", -1.0)),
                   temperature=t)


def checkpoint_view(run: str | os.PathLike, which: str = "best") -> CheckpointView:
    """Load ``best.pt``/``last.pt`` of a run folder (or a checkpoint file) as a :class:`CheckpointView`."""
    path = find_checkpoint(run, which)
    ckpt = load_checkpoint(path)
    try:
        return CheckpointView.from_dict(ckpt, path)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: incomplete checkpoint ({type(e).__name__}: {e})") from None


def load_model(run: str | os.PathLike, which: str = "best",
               device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointView]:
    """Rebuild the model from a checkpoint's config (nothing downloaded), load its weights, eval mode, on ``device``."""
    from ..models.backbones import model_from_config

    view = checkpoint_view(run, which)
    model = model_from_config(view.config.model, len(view.classes), load_weights=False)
    model.load_state_dict(view.state_dict)
    model.to(device).eval()
    return model, view
