"""What ``--resume`` checks before it continues a run from ``last.pt``, and what it records in ``config.yaml``.

- The checkpoint must be this run's: its ``run_id`` is the one in config.yaml (a run written before run ids existed
  gets one now).
- The data must be the same: the classes in order (a renamed or added class folder would shift or break every
  label) and, by count and digest, the train and val files with their labels (``snapshot.data_identity``: adding
  one image in holdout mode would move held-out images into training). The dataset may move (``--data``).
- Settings may change where they can still apply (:func:`check_changes`): any setting of a phase not yet started;
  ``STARTED_PHASE_KEYS`` of the phase under way; ``RUN_KEYS`` (where and how the run computes, not what it learns).
  The changes go into config.yaml's ``resumed_with``: ``{epoch: first epoch run with them, set: {key: new},
  was: {key: old}}``.

Checkpoints written before ``run_id``/``data_id`` existed skip those two checks. Each refusal is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError, RunConfig, from_dict, to_dict
from ..data.dataset import DataError, Dataset
from ..runs.checkpoint import CheckpointError
from ..runs.runfolder import LAST_PT, new_run_id, read_config, read_run_meta, write_config
from .snapshot import data_identity

__all__ = ["RUN_KEYS", "STARTED_PHASE_KEYS", "changed_settings", "check_changes", "data_change", "prepare_resume"]

# run-level settings a resume may change: devices, kernels, logging and where the data and their cache are
RUN_KEYS = frozenset({
    "device", "deterministic", "eval_batch_size", "amp", "compile", "compile_mode", "channels_last", "sync_bn",
    "tensorboard", "data.root", "data.cache_dir", "data.workers", "data.device_cache_gb", "data.skip_bad_images",
})
# settings of the phase under way that a resume may change (the optimizer state in last.pt fits any of them)
STARTED_PHASE_KEYS = frozenset({"epochs", "lr_min", "lr_max", "patience"})


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"phases.0.lr_max": 6e-4, "model.backbone": "vgg16", ...}``: one entry a setting (a list of numbers, such as
    ``betas``, is one setting)."""
    if isinstance(value, Mapping):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        return {k: v for i, sub in enumerate(value) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def changed_settings(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every setting that differs."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    return {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}


def check_changes(changes: Mapping[str, tuple[Any, Any]], cfg: RunConfig, ckpt: Mapping) -> None:
    """ConfigError naming the first changed setting that cannot apply to a run resumed from ``ckpt``."""
    now = int(ckpt.get("phase", 0))
    done = int(ckpt.get("phase_epoch", 0))
    started = done > 0 or int(ckpt.get("step", 0)) > 0
    for key, (old, new) in changes.items():
        parts = key.split(".")
        if parts[0] != "phases":
            if key not in RUN_KEYS:
                raise ConfigError(f"--set {key}: cannot change on --resume (last.pt was trained with {old!r}); "
                                  f"start a new run for {new!r}")
            continue
        i, name = int(parts[1]), parts[2]
        phase = f"phase {i + 1} ({cfg.phases[i].name})"
        if i < now:
            raise ConfigError(f"--set {key}: {phase} has finished; on --resume only the phases not yet finished "
                              "can change")
        if i == now and started and name not in STARTED_PHASE_KEYS:
            raise ConfigError(f"--set {key}: {phase} is under way ({done} epochs done); on --resume it can change "
                              f"only {', '.join(sorted(STARTED_PHASE_KEYS))}")
        if i == now and name == "epochs" and new < done:
            raise ConfigError(f"--set {key}={new}: {phase} has already run {done} epochs")


def data_change(ckpt: Mapping, data: Dataset, holdout: bool = False) -> str:
    """What differs between the data ``ckpt`` was trained on and ``data`` ("" if nothing it recorded); ``holdout``:
    the val split is held out of train/."""
    old, new = list(ckpt.get("classes") or []), list(data.classes)
    if old and old != new:
        added, gone = [c for c in new if c not in old], [c for c in old if c not in new]
        if len(added) == len(gone) == 1:
            return (f"class {gone[0]!r} is gone and {added[0]!r} is new (a renamed class folder?), so the labels "
                    "would shift")
        what = [f"{w} {', '.join(repr(c) for c in cs[:3])}{' ...' if len(cs) > 3 else ''}"
                for w, cs in (("added", added), ("missing", gone)) if cs] or ["the same classes in another order"]
        return f"{len(new)} classes, was {len(old)} ({'; '.join(what)})"
    recorded = ckpt.get("data_id")
    if not isinstance(recorded, Mapping):
        return ""
    now = data_identity(data)
    for split in ("val", "train"):
        was, is_ = recorded.get(split), now[split]
        if not was or was == is_:
            continue
        detail = (f"{is_['images']} images, was {was.get('images')}" if was.get("images") != is_["images"]
                  else f"other files or labels ({is_['images']} images)")
        moved = "; held-out validation images would move into training" if holdout and split == "val" else ""
        return f"the {split} split has {detail}{moved}"
    return ""


def prepare_resume(run_dir: str | Path, cfg: RunConfig, data: Dataset, ckpt: Mapping) -> str:
    """Refuse (one line) a ``last.pt`` of another run, changed data or a setting that cannot change; record the
    changed settings in config.yaml. Call with the run folder's lock held. Returns the run's id."""
    path = Path(run_dir) / LAST_PT
    meta = read_run_meta(run_dir)
    mine, theirs = str(meta.get("run_id") or ""), str(ckpt.get("run_id") or "")
    if mine and theirs and mine != theirs:
        raise CheckpointError(f"{path}: belongs to another run (run id {theirs}; this folder's config.yaml has "
                              f"{mine}); resume refused")
    # held out of train/ (holdout mode, or class folders without val/): its files are not under val/
    holdout = data.val is not None and len(data.val) > 0 and not data.val.files[0].startswith("val/")
    change = data_change(ckpt, data, holdout=holdout)
    if change:
        raise DataError(f"{data.root}: the data changed since {path} was written: {change}; resume refused "
                        "(restore the data or start a new run)")
    stored = read_config(run_dir)
    changes = changed_settings(from_dict(stored), cfg) if stored else {}
    check_changes(changes, cfg, ckpt)
    if changes or not mine:
        meta = {**meta, "run_id": mine or theirs or new_run_id()}
        if changes:
            record = {"epoch": int(ckpt.get("epoch", 0)) + 1, "set": {k: v[1] for k, v in changes.items()},
                      "was": {k: v[0] for k, v in changes.items()}}
            meta["resumed_with"] = [*(meta.get("resumed_with") or []), record]
        write_config(run_dir, cfg, meta)
    return str(meta["run_id"])
