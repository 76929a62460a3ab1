"""Feature maps and Grad-CAM through forward hooks: tensors in, tensors out (figures are drawn by plots.py).

Every function runs the model in eval mode and leaves it as it found it: hooks removed, each module's
``training`` flag restored, parameters' ``requires_grad`` untouched and no ``.grad`` written. Grad-CAM works on a
model whose parameters are all frozen: the graph is built from the input (``requires_grad`` on a copy of ``x``),
and the gradient is taken with ``torch.autograd.grad`` with respect to the hooked activation only.

Layer names are those of ``model.named_modules()`` (``"body.features.28"`` for VGG16 inside a TransferModel).

A conv layer's map is taken, by default (``after_activation=True``), after the BatchNorm and activation modules that
directly consume its output (conv → BN → ReLU as one layer, as Keras' ``Conv2D(activation="relu")`` is): the
rectified maps that the report's Figures 12–13 show and that Grad-CAM is defined on. Without that, Grad-CAM on a
pre-activation conv output weighs each channel by how much of the image it is active on, and can miss the evidence.
The chain is found by tensor identity in a forward pass, so functional activations (``F.relu``) are not followed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["conv_layers", "default_cam_layer", "feature_maps", "grad_cam"]


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """``{name: module}`` of every ``nn.Conv2d`` in ``model.named_modules()`` order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _resolve(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """Modules by name; ValueError listing the model's conv layers for a name it does not have."""
    if isinstance(layers, str):
        raise TypeError("layers must be a list of layer names, not a string")
    modules = dict(model.named_modules())
    out = {}
    for name in layers:
        if not name or name not in modules:
            valid = ", ".join(conv_layers(model)) or "(none)"
            raise ValueError(f"unknown layer {name!r}; the model's convolution layers are: {valid}")
        out[name] = modules[name]
    return out


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's own ``training`` flag back afterwards (frozen BatchNorms stay in eval)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _prepare(model: nn.Module, x: Tensor) -> Tensor:
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image as a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    p = next(model.parameters(), None)
    return x.detach().to(device=p.device if p is not None else x.device,
                         dtype=p.dtype if p is not None and p.is_floating_point() else x.dtype)


def _no_grad_pass(model: nn.Module, x: Tensor, handles: list) -> None:
    """One eval-mode, no-grad forward pass with the hooks behind ``handles`` in place; they are removed after."""
    try:
        with _eval(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


# Modules that may directly follow a conv and belong to it (timm's BatchNormAct2d is a BatchNorm2d subclass).
_FOLLOW = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish,
           nn.Mish, nn.Identity)


def _activation_targets(model: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, str]:
    """``{layer: module whose output is the layer's map after its own BN/activation}`` from one no-grad pass.

    Starting at the layer's output, the chain advances while the first module that consumes the current tensor
    is one of ``_FOLLOW`` (in-place ReLUs return the same tensor, which is fine); it stops at anything else.
    """
    modules = dict(model.named_modules())
    target = {n: n for n in names}
    tracked: dict[int, str] = {}  # id(tensor) -> origin layer whose chain it ends
    keep: list[Tensor] = []  # keeps tracked tensors alive so their ids are not reused during the pass
    closed: set[str] = set()
    pending: dict[str, str] = {}  # module name -> origin layer, between its pre-hook and its hook

    def pre(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if not inputs or not isinstance(inputs[0], Tensor):
                return
            origin = tracked.get(id(inputs[0]))
            if origin is None or origin in closed or name == origin:
                return
            if isinstance(module, _FOLLOW) and target[origin] != name:
                pending[name] = origin
            else:
                closed.add(origin)
        return hook

    def post(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not isinstance(output, Tensor):
                return
            origin = pending.pop(name, None)
            if origin is not None and origin not in closed:
                target[origin] = name
                tracked[id(output)] = origin
                keep.append(output)
            elif name in target and name not in tracked.values():
                tracked[id(output)] = name
                keep.append(output)
        return hook

    handles = []
    for name, m in modules.items():
        if name:
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name)))
    _no_grad_pass(model, x, handles)
    return target


def feature_maps(model: nn.Module, x: Tensor, layers: Sequence[str], *,
                 after_activation: bool = True) -> dict[str, Tensor]:
    """Map of each named layer for one image: ``{name: (C, h, w) float32 CPU tensor}`` in ``layers`` order.

    ``x``: (1, 3, H, W), already normalised as the model expects. With ``after_activation`` the map is taken after
    the BatchNorm/activation modules that directly follow the layer (see the module docstring); otherwise it is
    what the layer itself returns. Either way it is a copy, so later in-place ops do not change it. A layer called
    more than once keeps its first output.
    """
    _resolve(model, layers)
    x = _prepare(model, x)
    targets = _activation_targets(model, x, layers) if after_activation else {n: n for n in layers}
    mods = _resolve(model, [targets[n] for n in layers])
    names_of: dict[str, list[str]] = {}
    for n in layers:
        names_of.setdefault(targets[n], []).append(n)
    out: dict[str, Tensor] = {}

    def make_hook(target: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not isinstance(output, Tensor) or output.ndim != 4:
                raise ValueError(f"layer {target!r} does not return a (B, C, h, w) tensor")
            for name in names_of[target]:
                if name not in out:
                    out[name] = output.detach()[0].float().cpu().clone()  # (C, h, w)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in mods.items()]
    _no_grad_pass(model, x, handles)
    missing = [n for n in layers if n not in out]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} did not run in the model's forward pass")
    return {n: out[n] for n in layers}


def default_cam_layer(model: nn.Module, x: Tensor, *, min_size: int = 4) -> str:
    """The last conv layer (in forward order) whose output is at least ``min_size`` × ``min_size`` for ``x``.

    VGG16's last map is 2×2 at 64 px after its final pool, but its last conv (``features.28``) is 4×4, so that
    layer is chosen. If no conv map is that large, the conv with the largest map (the last such) is returned.
    """
    convs = conv_layers(model)
    if not convs:
        raise ValueError("the model has no Conv2d layers")
    x = _prepare(model, x)
    seen: list[tuple[str, int, int]] = []  # (name, h, w) in the order the layers ran

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if all(n != name for n, _, _ in seen):
                seen.append((name, int(output.shape[-2]), int(output.shape[-1])))
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in convs.items()]
    _no_grad_pass(model, x, handles)
    if not seen:
        raise ValueError("no Conv2d layer ran in the model's forward pass")
    big = [n for n, h, w in seen if h >= min_size and w >= min_size]
    if big:
        return big[-1]
    area = max(h * w for _, h, w in seen)
    name = [n for n, h, w in seen if h * w == area][-1]
    log.warning("no conv map is %d×%d or larger for this input; using %s", min_size, min_size, name)
    return name


def grad_cam(model: nn.Module, x: Tensor, layer: str, class_idx: int | None = None, *,
             after_activation: bool = True) -> Tensor:
    """Grad-CAM (Selvaraju et al., arXiv 1610.02391) of ``class_idx`` at ``layer``: an (H, W) map in [0, 1].

    ``x``: (1, 3, H, W) normalised input; ``class_idx``: the class whose logit is explained (None = the top
    prediction). Channel weights are the spatial means of d logit / d activation; the map is the ReLU of the
    weighted sum of the layer's channels, upsampled (bilinear) to H × W and divided by its maximum (all zeros
    when there is no positive evidence). Returned as a float32 CPU tensor. ``after_activation``: as in
    :func:`feature_maps` (the paper's rectified conv maps).
    """
    _resolve(model, [layer])
    x = _prepare(model, x)
    target = _activation_targets(model, x, [layer])[layer] if after_activation else layer
    module = _resolve(model, [target])[target]
    store: dict[str, Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if "act" in store:
            return None
        if not isinstance(output, Tensor) or output.ndim != 4:
            raise ValueError(f"layer {target!r} does not return a (B, C, h, w) tensor")
        store["act"] = output
        # Downstream layers get a copy: an in-place op after the layer (VGG's ReLU(inplace=True) when
        # after_activation=False) would otherwise overwrite the activation whose gradient is taken.
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        with _eval(model), torch.enable_grad():
            xg = x.requires_grad_(True)  # the graph starts at the input, so frozen parameters are no obstacle
            logits = model(xg)  # (1, K)
            if "act" not in store:
                raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
            act = store["act"]  # (1, C, h, w)
            if not act.requires_grad:
                raise RuntimeError(f"layer {layer!r}: its output has no autograd graph (inference mode?)")
            if class_idx is None:
                class_idx = int(logits[0].argmax())
            if not 0 <= class_idx < logits.shape[1]:
                raise ValueError(f"class_idx {class_idx} out of range for {logits.shape[1]} classes")
            (grads,) = torch.autograd.grad(logits[0, class_idx], act)  # (1, C, h, w)
    finally:
        handle.remove()
    weights = grads[0].mean(dim=(1, 2))  # (C,) global-average-pooled gradients
    cam = F.relu((weights[:, None, None] * act[0].detach()).sum(dim=0))  # (h, w)
    cam = F.interpolate(cam[None, None].float(), size=tuple(x.shape[-2:]), mode="bilinear",
                        align_corners=False)[0, 0]  # (H, W)
    top = cam.max()
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.detach().cpu()
