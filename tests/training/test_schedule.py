"""LR schedules at their corners, and the triangular CLR against torch's CyclicLR step by step."""

import pytest
import torch

from tinytransfer.config import PhaseConfig
from tinytransfer.training.schedule import lr_at, range_test_lr, triangular


def test_triangular_corners():
    assert triangular(0, 1e-4, 6e-4, 1404) == pytest.approx(1e-4)
    assert triangular(1404, 1e-4, 6e-4, 1404) == pytest.approx(6e-4)
    assert triangular(702, 1e-4, 6e-4, 1404) == pytest.approx(3.5e-4)
    assert triangular(2808, 1e-4, 6e-4, 1404) == pytest.approx(1e-4)
    assert triangular(2808 + 1404, 1e-4, 6e-4, 1404) == pytest.approx(6e-4)


@pytest.mark.parametrize("base,top,step", [(1e-4, 6e-4, 1404), (1e-5, 6e-5, 1200), (1e-6, 6e-6, 7)])
def test_triangular_matches_torch_cycliclr(base, top, step):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=base)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base, max_lr=top, step_size_up=step,
                                              mode="triangular", cycle_momentum=False)
    phase = PhaseConfig(lr_policy="triangular", lr_min=base, lr_max=top, step_size=step)
    for it in range(min(5 * step, 6000)):
        assert lr_at(it, phase, steps_per_epoch=100) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()


def test_step_size_zero_means_two_epochs():
    phase = PhaseConfig(lr_policy="triangular", lr_min=1.0, lr_max=2.0, step_size=0)
    assert lr_at(20, phase, steps_per_epoch=10) == pytest.approx(2.0)
    assert lr_at(40, phase, steps_per_epoch=10) == pytest.approx(1.0)


def test_constant_and_onecycle():
    assert lr_at(123, PhaseConfig(lr_policy="constant", lr_max=0.01), 10) == 0.01
    p = PhaseConfig(lr_policy="onecycle", lr_min=1e-4, lr_max=1e-2, epochs=10)
    lrs = [lr_at(s, p, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-2)
    assert lrs.index(max(lrs)) == 30
    assert lrs[-1] < 2e-5
    assert all(a <= b for a, b in zip(lrs[:30], lrs[1:31]))
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:]))


def test_range_test_is_exponential():
    assert range_test_lr(0, 101, 1e-6, 1.0) == pytest.approx(1e-6)
    assert range_test_lr(100, 101, 1e-6, 1.0) == pytest.approx(1.0)
    assert range_test_lr(50, 101, 1e-6, 1.0) == pytest.approx(1e-3)
