"""Run configuration: frozen dataclasses, YAML recipes in, ``--set key=value`` overrides, plain dict out.

A recipe is a YAML file whose keys mirror :class:`RunConfig` (a comment on every field: what it is, its unit); the
resolved configuration goes to the run folder and into every checkpoint as a plain dict (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["step_size_of", "ConfigError", "DataConfig", "ModelConfig", "PhaseConfig", "PlanConfig", "RunConfig",
           "apply_overrides", "from_dict", "list_recipes", "load_recipe", "parse_budget", "to_dict"]


class ConfigError(ValueError):
    """A recipe or override that cannot be turned into a :class:`RunConfig`; the message says which key."""


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset folder: Tiny ImageNet layout (wnids.txt) or one folder per class
    val_mode: str = "official"  # "official": val/ split; "holdout": holdout_per_class images a class from train/
    holdout_per_class: int = 50  # images a class held out of train/ when val_mode="holdout" (the report: 450/50)
    split_seed: int = 0  # seed of the holdout split (fixed so every run sees the same split)
    image_size: int = 0  # decoded size in pixels; 0 = the dataset's own (64 for Tiny ImageNet)
    cache_dir: str = ""  # decoded uint8 cache; "" = <root>/.tinytransfer-cache
    skip_bad_images: bool = False  # skip (and count) unreadable images instead of stopping
    workers: int = 2  # processes decoding images on the first load
    device_cache_gb: float = 0.0  # GB a split may take on the device, else it streams from the host cache; <= 0: auto
    augment: str = "keras"  # keras | keras3 | keras-radians | keras-noflip | flip | none (see augment.AUGMENTS)
    normalize: str = "backbone"  # "backbone": the backbone's mean/std; "rescale": x/255 only, as the Keras report


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "vgg16"  # a key of models.BACKBONES or "timm:<name>"
    head: str = "paper"  # "paper": Flatten → [Linear → ReLU → BN → Dropout] × 2 → Linear; "pool": GAP → Dropout → Linear
    pretrained: bool = True  # ImageNet weights (torchvision/timm download, or the bundled Lite0 file)
    weights: str = ""  # local state dict or Keras .h5 for the backbone, used instead of a download when set; "keras": Keras's VGG16 file (fetched once, only when pretrained)
    hidden: int = 512  # width of the paper head's hidden layers
    dropout: float = 0.4  # dropout probability in the head
    input_size: int = 64  # the model's input side in pixels; batches are resized on the device when it differs; "auto" (0): a budget picks from input_sizes
    input_sizes: tuple[int, ...] = ()  # sides a budget may pick from (pool head): the largest that keeps the recipe's epochs; ignored without a budget
    head_init: str = "keras"  # paper head Linear init: keras (glorot_uniform kernels, zero biases) | torch (nn.Linear's)
    bn_momentum: float = 0.01  # paper head BatchNorm momentum, PyTorch convention (= Keras momentum 0.99)
    bn_eps: float = 1e-3  # paper head BatchNorm epsilon (Keras's default)
    bn_variance: str = "unbiased"  # head BatchNorm running variance from the batch's unbiased (PyTorch) or biased (Keras) variance
    stem: str = "default"  # default | stride1 (first conv at stride 1) | nopool (no max-pool) | keep (both): ~4x compute each


@dataclass(frozen=True)
class PhaseConfig:
    name: str = "phase"  # shown in logs, metrics and Table 1
    epochs: int = 1  # maximum epochs of this phase (early stopping may end it sooner)
    train: str = "head"  # trainable part: "head" | "all" | "from:<block>" (a block name of the backbone) | "auto" (a budget picks from train_choices)
    train_choices: tuple[str, ...] = ()  # trainable parts a budget may pick from, smallest first: the largest that fits; ignored without a budget
    optimizer: str = "adam"  # adam | adam-keras (Keras 2's update: eps 1e-7 on the raw sqrt(v)) | adamw | sgd
    lr_policy: str = "triangular"  # triangular (Smith's CLR) | constant | onecycle
    lr_min: float = 1e-4  # CLR base LR; one-cycle start/end scale; ignored by constant
    lr_max: float = 6e-4  # CLR/one-cycle peak LR; the constant LR
    step_size: int = 0  # CLR half cycle in iterations (not epochs); 0 = two epochs' worth
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) decay; not applied to biases and norms
    momentum: float = 0.9  # SGD momentum
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas, fixed (no momentum cycling)
    batch_size: int = 64  # images a step (global across DDP ranks)
    bn_frozen_eval: bool = True  # BatchNorm layers of a frozen part stay in inference mode (Keras guide)
    body_bn_eval: bool = False  # the backbone's BatchNorm layers stay in inference mode even when trainable
    patience: int = 0  # early stopping: epochs without a new best val accuracy before the phase ends; 0 = off
    patience_scope: str = "run"  # the best that patience compares with: run (whole run) | phase (restarts each phase, as Keras's EarlyStopping per fit())
    start_from_best: bool = True  # begin the phase from the best weights so far (the report's practice)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    auto_lr: bool = False  # before the phase, an LR range test on its model and data sets lr_min/lr_max (autolr.py)
    auto_lr_steps: int = 100  # iterations of that range test (LR 1e-7 -> 1, exponential)
    ema: float = 0.0  # decay of a weight EMA (timm ModelEmaV3) updated every step, e.g. 0.999; 0 = off (ema.py)
    ema_warmup: bool = True  # timm's EMA warm-up: decay min(ema, 1 - t^(-2/3)) at update t+1, so short phases average
    mixup: float = 0.0  # Mixup alpha (timm.data.Mixup on device batches, soft-target loss); 0 = off (mixing.py)
    cutmix: float = 0.0  # CutMix alpha; 0 = off; with mixup also on, each batch is one or the other (half and half)
    mix_prob: float = 1.0  # probability that a batch is mixed at all (when mixup or cutmix is on)
    lr_decay: float = 1.0  # layer-wise LR decay: head at lr, the body block k blocks below it at lr x lr_decay^k; 1 = off
    lr_epochs: int = 0  # epochs the LR schedule is laid out on; 0 = epochs (a budget re-plan of a running phase keeps it)
    lr_knots: tuple[float, ...] = ()  # (epoch, schedule epoch) pairs, flattened: a re-plan fits the rest of the schedule into the new end (schedule.py)


@dataclass(frozen=True)
class PlanConfig:  # what the time-budget planner measured and decided (training/budget.py); empty in a recipe
    budget_s: float = 0.0  # the budget in seconds the plan is for; 0 = no plan made yet
    recipe_epochs: tuple[int, ...] = ()  # each phase's epochs in the recipe: the proportions the plan keeps
    epoch_s: tuple[float, ...] = ()  # measured seconds of one epoch (training + validation) of each phase
    step_s: tuple[float, ...] = ()  # measured seconds of one training step (a whole batch) of each phase
    steps: tuple[int, ...] = ()  # training steps an epoch of each phase takes in epoch_s (max_steps_per_epoch counted)
    start_s: float = 0.0  # seconds of the command before training: data cache, model load, the measurement itself
    finish_s: float = 0.0  # estimated seconds after training: predictions, analysis, figures, report
    planned_s: float = 0.0  # the whole command's seconds as planned at the last (re)plan
    elapsed_s: float = 0.0  # seconds spent (over every command of the run) at the last (re)plan
    choices: tuple[str, ...] = ()  # what the planner chose where the recipe left it open (input_size, train: auto)
    replans: tuple[str, ...] = ()  # one line a re-plan that changed the epochs: when, why, old -> new


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # recipe name, shown in the report
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phases: tuple[PhaseConfig, ...] = (PhaseConfig(),)  # trained in order
    seed: int = 0  # seeds the model init, the shuffling and the augmentation draws
    deterministic: bool = False  # deterministic kernels (bit-identical reruns on CPU; slower on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 256  # batch size of evaluation and prediction
    channels_last: str = "auto"  # auto (= true: faster on CUDA and on oneDNN CPUs alike) | true | false
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    compile: bool = False  # torch.compile the model (falls back to eager if it fails)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    sync_bn: bool = False  # data-parallel on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)
    max_steps_per_epoch: int = 0  # cap on steps an epoch (0 = full epochs); for smoke tests and benchmarks
    tensorboard: bool = False  # TensorBoard events in RUN/tensorboard: epoch metrics, LR and loss per iteration (tb.py)
    budget: str = ""  # wall time of the whole command, e.g. 90s, 5m, 1h30m: phase epochs planned to fit; "" = off
    plan: PlanConfig = field(default_factory=PlanConfig)  # the budget's plan and re-plans (written by training)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "plan": PlanConfig}


def step_size_of(phase: PhaseConfig, steps_per_epoch: int) -> int:
    """The phase's CLR half cycle in iterations; 0 in the recipe means two epochs' worth."""
    return phase.step_size if phase.step_size > 0 else max(1, 2 * steps_per_epoch)


def parse_budget(text: str) -> float:
    """Seconds in a duration: ``90`` (seconds), ``90s``, ``5m``, ``1.5h``, ``1h30m``; ConfigError naming ``budget``."""
    t = str(text).strip().lower().replace(" ", "")
    num = r"(\d+(?:\.\d+)?)"
    m = re.fullmatch(num, t) or re.fullmatch(f"(?:{num}h)?(?:{num}m)?(?:{num}s)?", t)
    secs = (float(m.group(1)) if m.re.groups == 1 else sum(float(g or 0) * k for g, k in zip(m.groups(), (3600, 60, 1)))
            ) if m and t else 0.0
    if secs <= 0:
        raise ConfigError(f"budget: {text!r} is not a duration like 90s, 5m, 1h or 1h30m")
    return secs


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert ``value`` (YAML or string from ``--set``) to ``typ``; ConfigError naming ``key`` if it cannot."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, key) for v, t in zip(value, args))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, float):  # a bool is neither; a whole float is an int; strings are parsed
        if not isinstance(value, bool):
            if typ is int and isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, (int, float) if typ is float else int):
                return typ(value)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    return typ(value)
        raise ConfigError(f"{key}: expected {'an integer' if typ is int else 'a number'}, got {value!r}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {typ}")  # pragma: no cover


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        key = f"{prefix}.{name}" if prefix else name
        typ = hints[name]
        if name == "input_size" and cls is ModelConfig and raw[name] == "auto":
            kwargs[name] = 0  # chosen from input_sizes by the budget planner
        elif name in _SECTIONS and cls is RunConfig:
            kwargs[name] = _build(_SECTIONS[name], raw[name], key)
        elif name == "phases" and cls is RunConfig:
            phases = raw[name]
            if not isinstance(phases, (list, tuple)) or not phases:
                raise ConfigError("phases: expected a non-empty list of phases")
            kwargs[name] = tuple(_build(PhaseConfig, p, f"phases.{i}") for i, p in enumerate(phases))
        else:
            kwargs[name] = _coerce(raw[name], typ, key)
    return cls(**kwargs)


def from_dict(raw: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain dict (a recipe or a checkpoint's ``config``)."""
    cfg = _build(RunConfig, raw, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain dict of builtins (tuples become lists), safe for YAML and ``torch.load(weights_only=True)``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


_CHOICES = {
    "data.val_mode": ("official", "holdout"),
    "data.augment": ("keras", "keras3", "keras-radians", "keras-noflip", "flip", "none"),
    "data.normalize": ("backbone", "rescale"),
    "model.head": ("paper", "pool"),
    "model.head_init": ("keras", "torch"),
    "model.bn_variance": ("unbiased", "biased"),
    "model.stem": ("default", "stride1", "nopool", "keep"),
    "optimizer": ("adam", "adam-keras", "adamw", "sgd"),
    "patience_scope": ("run", "phase"),
    "lr_policy": ("triangular", "constant", "onecycle"),
    "amp": ("auto", "bf16", "off"),
    "channels_last": ("auto", "true", "false"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError for values outside their allowed sets or ranges."""

    def check(key: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")

    for key, choices in _CHOICES.items():  # the run's and its sections' keys (a phase's are checked below)
        section, _, name = key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        if hasattr(owner, name):
            check(key, getattr(owner, name), choices)
    for i, p in enumerate(cfg.phases):
        for name in ("optimizer", "lr_policy", "patience_scope"):
            check(f"phases.{i}.{name}", getattr(p, name), _CHOICES[name])
        if not 0.0 <= p.ema < 1.0:
            raise ConfigError(f"phases.{i}.ema: must be in [0, 1), got {p.ema}")
        if p.mixup < 0 or p.cutmix < 0 or not 0.0 <= p.mix_prob <= 1.0:
            raise ConfigError(f"phases.{i}: mixup and cutmix must be >= 0 and mix_prob in [0, 1]")
        if not 0.0 < p.lr_decay <= 1.0:
            raise ConfigError(f"phases.{i}.lr_decay: must be in (0, 1], got {p.lr_decay}")
        if p.auto_lr_steps < 5:
            raise ConfigError(f"phases.{i}.auto_lr_steps: must be >= 5, got {p.auto_lr_steps}")
        if p.lr_max <= 0 or p.lr_min < 0:
            raise ConfigError(f"phases.{i}: learning rates must be positive")
        if p.lr_min > p.lr_max and p.lr_policy != "constant":  # constant uses lr_max alone
            raise ConfigError(f"phases.{i}: lr_min {p.lr_min:g} is above lr_max {p.lr_max:g}")
        for key, low, high in (("epochs", 0, None), ("batch_size", 1, None), ("weight_decay", 0, None),
                               ("step_size", 0, None), ("label_smoothing", 0, 1)):
            v = getattr(p, key)
            if v < low or (high is not None and v >= high):
                raise ConfigError(f"phases.{i}.{key}: must be >= {low}{f' and < {high}' if high else ''}, got {v}")
        if not (p.train in ("head", "all", "auto") or p.train.startswith("from:")):
            raise ConfigError(f"phases.{i}.train: {p.train!r} is not head, all, from:<block> or auto")
        if p.train == "auto" and not (cfg.budget and p.train_choices):
            raise ConfigError(f"phases.{i}.train: auto needs a budget and train_choices (candidates, smallest first)")
    if not any(p.epochs for p in cfg.phases):
        raise ConfigError("phases: every phase has epochs=0, so nothing would train")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device: {cfg.device!r} is not auto, cpu, mps, cuda or cuda:N")
    for key, seed in (("seed", cfg.seed), ("data.split_seed", cfg.data.split_seed)):
        if not 0 <= seed < 2**63:  # torch generators take 64-bit seeds (and seed + 1)
            raise ConfigError(f"{key}: must be in [0, 2**63), got {seed}")
    if cfg.budget:
        parse_budget(cfg.budget)  # ConfigError where it is not a duration
    if cfg.model.input_size == 0 and not (cfg.budget and cfg.model.input_sizes):
        raise ConfigError("model.input_size: auto needs a budget and model.input_sizes (candidate sides, each >= 8)")
    if cfg.model.input_sizes and min(cfg.model.input_sizes) < 8:
        raise ConfigError(f"model.input_sizes: each side must be >= 8, got {list(cfg.model.input_sizes)}")
    if cfg.model.input_sizes and cfg.budget and cfg.model.head != "pool":
        raise ConfigError("model.input_sizes: a budget picks the side only with head: pool (the paper head is sized "
                          "for one side)")
    if cfg.model.input_size != 0 and cfg.model.input_size < 8:
        raise ConfigError(f"model.input_size: must be >= 8, got {cfg.model.input_size}")
    if not 0.0 <= cfg.model.bn_momentum <= 1.0 or cfg.model.bn_eps <= 0:
        raise ConfigError(f"model.bn_momentum must be in [0, 1] and model.bn_eps > 0, got {cfg.model.bn_momentum} "
                          f"and {cfg.model.bn_eps}")


def apply_overrides(raw: dict, overrides: list[str] | Mapping[str, Any]) -> dict:
    """Apply overrides to a raw recipe dict: ``key=value`` strings (the CLI's ``--set``) or a ``{key: value}``
    mapping (the Python API), e.g. ``model.backbone=vgg16``, ``phases.0.epochs=3``.

    String values are parsed as YAML scalars (never evaluated as code); every value is type-checked when the config
    is built. ``phases.*.epochs=2`` sets the field in every phase.
    """
    out = to_dict(from_dict(raw))  # fill defaults so every key exists
    items: list[tuple[str, Any, str]] = []  # (key, value, how the user wrote it)
    if isinstance(overrides, Mapping):
        items = [(str(k).strip(), v, repr(v)) for k, v in overrides.items()]
    else:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            key, text = item.split("=", 1)
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text
            items.append((key.strip(), value, text))
    for key, value, text in items:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (dict, list)) and not key.endswith(("betas", "input_sizes", "train_choices")):
            raise ConfigError(f"--set {key}: expected a single value, got {text!r}")
        parts = key.split(".")
        targets = [out]
        for depth, part in enumerate(parts[:-1]):
            nxt = []
            for t in targets:
                if isinstance(t, list):
                    if part == "*":
                        nxt.extend(t)
                        continue
                    if not part.isdigit() or int(part) >= len(t):
                        raise ConfigError(f"--set {key}: no phase {part!r} (there are {len(t)})")
                    nxt.append(t[int(part)])
                elif isinstance(t, dict) and part in t and isinstance(t[part], (dict, list)):
                    nxt.append(t[part])
                else:
                    valid = ", ".join(k for k, v in t.items() if isinstance(v, (dict, list)))
                    raise ConfigError(f"--set {key}: unknown section {part!r}; valid: {valid}")
            targets = nxt
        last = parts[-1]
        for t in targets:
            if not isinstance(t, dict) or last not in t:
                valid = ", ".join(t) if isinstance(t, dict) else ""
                raise ConfigError(f"--set {key}: unknown key {last!r}; valid keys: {valid}")
            t[last] = value
    from_dict(out)  # validate types now, with the override's key in the message
    return out


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("tinytransfer") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> dict:
    """Raw dict of a shipped recipe (by name) or a YAML file (by path)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe is not a recipe
        if not path.is_file():
            raise ConfigError(f"{name_or_path}: recipe file not found")
        text = path.read_text()
        where = str(path)
    else:
        res = resources.files("tinytransfer") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(list_recipes())}")
        text = res.read_text()
        where = name_or_path
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping of keys")
    raw.setdefault("name", path.stem if path.suffix else name_or_path)
    return raw
