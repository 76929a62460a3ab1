"""Which parameters train: the ``train`` setting of a phase (``all``, ``head``, ``from:<block>``) checked and applied to
a :class:`TransferModel`, the train/eval mode of a partly frozen model, and optimizer parameter groups (weight decay
off for norms and biases, layer-wise LR decay)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from .backbones import TransferModel, count_params, unwrap_model

__all__ = ["body_frozen", "check_trainable", "param_groups", "set_trainable", "train_mode"]

log = logging.getLogger(__name__)


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


def set_trainable(model: nn.Module, train: str, quiet: bool = False) -> int:
    """Set ``requires_grad``: ``"head"`` (body frozen), ``"all"``, or ``"from:<block>"`` (that block of the body,
    the later ones and the head trainable; earlier blocks frozen). Returns the number of trainable parameters.
    ``quiet``: log the count at debug level (a budget's measurement sets every phase's part in turn)."""
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
    log.log(logging.DEBUG if quiet else logging.INFO, "trainable %s: %s of %s parameters", train, f"{n:,}",
            f"{count_params(m):,}")
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
