"""Optimizers that PyTorch lacks: :class:`KerasAdam`, Keras 2's Adam update exactly (the 2020 report's optimizer).

PyTorch's Adam and Keras 2's differ in where epsilon goes. PyTorch: ``w -= lr·m̂/(sqrt(v̂) + ε)`` with the bias
corrections inside (ε added to the corrected sqrt(v)), ε = 1e-8. Keras 2 (TF 2.2/2.3 ``tf.keras.optimizers.Adam``,
``training_ops.ResourceApplyAdam``) folds the corrections into the step size and adds ε to the raw sqrt(v), ε = 1e-7:

    lr_t = lr·sqrt(1 − β2^t)/(1 − β1^t);  m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²;  w −= lr_t·m/(sqrt(v) + ε)

The two agree when sqrt(v) ≫ ε; they part where gradients are tiny (early steps, rarely-firing units).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["KERAS_ADAM_EPS", "KerasAdam"]

KERAS_ADAM_EPS = 1e-7  # tf.keras.optimizers.Adam's default epsilon (Keras 2 and 3)


class KerasAdam(torch.optim.Optimizer):
    """Keras 2's Adam (see the module docstring); ``weight_decay`` is L2 added to the gradient (Keras 2 had none).

    State per parameter: ``step`` (int t), ``exp_avg`` (m), ``exp_avg_sq`` (v); plain tensors and ints, so
    ``state_dict()`` loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = KERAS_ADAM_EPS, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"KerasAdam: invalid lr {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # one multi-tensor update per distinct t (all of a group's parameters share it unless some had no grad)
            for t in sorted({int(self.state[p]["step"]) + 1 for p in params}):
                same = [p for p in params if int(self.state[p]["step"]) + 1 == t]
                self._update(same, t, group)
        return loss

    def _update(self, params: list[torch.Tensor], t: int, group: dict[str, Any]) -> None:
        """Keras 2's update of ``params``, all at step ``t``, with multi-tensor (foreach) kernels."""
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)  # m = β1·m + (1 − β1)·g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)  # v = β2·v + (1 − β2)·g²
        lr_t = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)  # bias corrections in the step size
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])  # ε on the raw sqrt(v), as Keras 2
        torch._foreach_addcdiv_(params, m, denom, value=-lr_t)
        for p in params:
            self.state[p]["step"] = t
