"""adam-keras through PyTorch's fused Adam kernel gives Keras 2's update (the foreach formula) step for step."""

from __future__ import annotations

import pytest
import torch

from tinytransfer.training.optim import KerasAdam


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g).requires_grad_(), torch.randn(32, generator=g).requires_grad_(),
            torch.randn(3, 3, 8, 4, generator=g).requires_grad_()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_keras_adam_matches_the_foreach_formula_over_several_steps(weight_decay):
    ref, fast = _params(0), _params(0)
    # two groups, as param_groups makes them (decayed weights, undecayed biases); a tiny gradient scale too,
    # where Keras's epsilon placement matters most
    mk = lambda ps, fused: KerasAdam([{"params": [ps[0], ps[2]], "weight_decay": weight_decay},  # noqa: E731
                                      {"params": [ps[1]], "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.999),
                                     fused=fused)
    a, b = mk(ref, False), mk(fast, True)
    g = torch.Generator().manual_seed(1)
    for step in range(8):
        scale = 1e-6 if step < 3 else 1.0
        lr = 1e-3 * (1 + step)  # the schedule writes a new LR every step
        for opt in (a, b):
            for group in opt.param_groups:
                group["lr"] = lr
        grads = [torch.randn(p.shape, generator=g) * scale for p in ref]
        for p, q, gr in zip(ref, fast, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        a.step()
        b.step()
        for p, q in zip(ref, fast):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
    assert all(b.state[p]["step"] == 8 and isinstance(b.state[p]["step"], int) for p in fast)
    for p, q in zip(ref, fast):
        torch.testing.assert_close(b.state[q]["exp_avg_sq"], a.state[p]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    moved = max((p - q).abs().max().item() for p, q in zip(_params(0), fast))
    assert moved > 1e-3  # the parameters did move: the comparison is not between two unchanged sets


def test_fused_state_dict_loads_into_the_foreach_optimizer():
    ps = _params(2)
    opt = KerasAdam(ps, fused=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    other = KerasAdam(_params(2), fused=False)
    other.load_state_dict(opt.state_dict())
    assert [s["step"] for s in other.state.values()] == [1, 1, 1]
