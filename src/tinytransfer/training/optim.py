"""Optimizers that PyTorch lacks: :class:`KerasAdam`, Keras 2's Adam update exactly (the 2020 report's optimizer).

PyTorch's Adam and Keras 2's differ in where epsilon goes. PyTorch: ``w -= lr·m̂/(sqrt(v̂) + ε)`` with the bias
corrections inside (ε added to the corrected sqrt(v)), ε = 1e-8. Keras 2 (TF 2.2/2.3 ``tf.keras.optimizers.Adam``,
``training_ops.ResourceApplyAdam``) folds the corrections into the step size and adds ε to the raw sqrt(v), ε = 1e-7:

    lr_t = lr·sqrt(1 − β2^t)/(1 − β1^t);  m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²;  w −= lr_t·m/(sqrt(v) + ε)

The two agree when sqrt(v) ≫ ε; they part where gradients are tiny (early steps, rarely-firing units).

Multiplying numerator and denominator by sqrt(1 − β2^t) shows that Keras's update at step t *is* PyTorch's with
ε_torch = ε / sqrt(1 − β2^t) and the same lr. So ``fused=True`` runs PyTorch's fused Adam kernel
(``torch._fused_adam_``: one kernel over all parameters, on CUDA and the CPU) with that ε at each step: the same
update to float rounding, as fast as ``torch.optim.Adam(fused=True)``.
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
                 eps: float = KERAS_ADAM_EPS, weight_decay: float = 0.0, fused: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"KerasAdam: invalid lr {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.fused = fused  # PyTorch's fused Adam kernel with Keras's ε rescaled (module docstring); not saved

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
                (self._update_fused if self.fused else self._update)(same, t, group)
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

    def _update_fused(self, params: list[torch.Tensor], t: int, group: dict[str, Any]) -> None:
        """The same update through ``torch._fused_adam_`` (one kernel per device and dtype): PyTorch's Adam with
        ε / sqrt(1 − β2^t) is Keras 2's with ε (module docstring); L2 weight decay is added to the gradient by both."""
        beta1, beta2 = group["betas"]
        eps = group["eps"] / math.sqrt(1 - beta2 ** t)
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        for (device, _), ps in by_kind.items():
            step = torch.full((), float(t), dtype=torch.float32, device=device)  # a fill: no host→device copy
            torch._fused_adam_(ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps],
                               [self.state[p]["exp_avg_sq"] for p in ps], [], [step] * len(ps), lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=eps,
                               amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
        for p in params:
            self.state[p]["step"] = t
