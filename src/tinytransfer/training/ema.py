"""Weight EMA (``phases.N.ema: 0.999``): timm's ``ModelEmaV3`` over the model's state (parameters and buffers,
BatchNorm statistics included), updated after every optimizer step.

With ``ema_warmup`` (the default) the decay of update ``t`` (1-based, counted within the phase) is timm's warm-up
``min(ema, 1 − (1 + (t − 1))^(−2/3))``, 0 at the first update (the EMA starts as a copy of the weights), so that a
phase of a few hundred steps still averages recent weights instead of staying at its starting point; without it the
decay is ``ema`` from the second update on. Each update is ``ema ← decay · ema + (1 − decay) · weights``.

The EMA starts afresh at each phase (a copy of the weights the phase starts from), is evaluated on the validation
split after every epoch beside the trained weights (metrics.csv ``ema_val_loss``/``ema_val_acc``), is saved in
``last.pt`` (``ema``) so ``--resume`` continues it exactly, and its weights become ``best.pt``'s when they score
better on validation than the trained ones (``best.pt``'s ``weights: "ema"``), so predict and export use them.
"""

from __future__ import annotations

from torch import nn

from ..config import PhaseConfig

__all__ = ["make_ema", "start_ema"]


def make_ema(model: nn.Module, phase: PhaseConfig) -> nn.Module | None:
    """A ``timm.utils.ModelEmaV3`` of ``model`` (a copy, eval mode) for ``phase``, or None where ``phase.ema`` is 0.
    Update it with ``ema.update(model, step=t)``, t the 1-based count of the phase's optimizer steps."""
    if not phase.ema:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=phase.ema, use_warmup=phase.ema_warmup)
    for p in ema.module.parameters():
        p.requires_grad_(False)
    return ema


def start_ema(model: nn.Module, phase: PhaseConfig, state: dict | None = None) -> nn.Module | None:
    """The phase's EMA: a fresh copy of ``model``, or the one saved in a checkpoint (``state``: its ``ema``)."""
    ema = make_ema(model, phase)
    if ema is not None and state:
        ema.module.load_state_dict(state)
    return ema
