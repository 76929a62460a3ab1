"""No host sync and no host→device copy inside a training step (item 7 of issue 18), shown on the CPU: a
TorchFunctionMode records every call that would synchronise or copy on a GPU while a real DeviceLoader (resident,
as on CUDA) feeds train_one_epoch on the GPU code path. And the data-parallel stop agreement's cadence (item 8)."""

from __future__ import annotations

import pytest
import torch

from tinytransfer.config import PhaseConfig
from tinytransfer.data.augment import make_transform
from tinytransfer.data.dataset import load_dataset
from tinytransfer.data.loader import DeviceLoader
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import set_trainable
from tinytransfer.training import steps
from tinytransfer.training.hostsync import record_step_syncs
from tinytransfer.training.parallel import Dist

TINY = "timm:test_resnet"


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


def _loader(data, model, pad_last: bool = False, batch: int = 8, preload: bool = True,
            augment: str = "keras") -> DeviceLoader:
    tf = make_transform(augment, tuple(model.mean), tuple(model.std), input_size=32)
    return DeviceLoader(data.train, batch, shuffle=True, generator=torch.Generator().manual_seed(0), transform=tf,
                        aug_generator=torch.Generator().manual_seed(1), preload=preload, channels_last=True,
                        pad_last=pad_last)


@pytest.mark.parametrize("optimizer", ["adam", "adam-keras"])
def test_no_host_sync_or_copy_inside_a_training_step(tree, optimizer):
    data = load_dataset(tree, workers=1)
    torch.manual_seed(0)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    model.to(memory_format=torch.channels_last)
    loader = _loader(data, model, batch=16)
    assert loader.mode == "resident"  # the CUDA default: the uint8 split on the device
    phase = PhaseConfig(train="all", lr_policy="triangular", lr_min=1e-4, lr_max=1e-3, step_size=3, batch_size=8,
                        optimizer=optimizer, label_smoothing=0.1)
    set_trainable(model, phase.train)
    opt = steps.make_optimizer(model, phase, fused=True)  # as on CUDA
    state = steps.TrainState()
    rec, out = record_step_syncs(model, loader, opt, phase, state, device=torch.device("cpu"))  # the GPU path
    assert out["n"] == 48 and state.step == 6
    assert rec.inside("step") == [], rec.events  # nothing read on the host, nothing copied to the device
    # per epoch, not per step: the permutation's one copy (and the plan's draws, already on the device on CUDA)
    assert "to (to a device)" in rec.inside("setup")
    assert "tolist" in rec.inside("end") and "item" in rec.inside("end")  # the epoch's one reduction (recorded)


def test_resident_batches_by_slices_equal_the_host_path_with_padding_and_plan(tree):
    data = load_dataset(tree, workers=1)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    a = list(_loader(data, model, pad_last=True, batch=20, preload=True))
    b = list(_loader(data, model, pad_last=True, batch=20, preload=False))
    assert [len(y) for _, y in a] == [20, 20, 20] and int((a[-1][1] == -100).sum()) == 12
    for (xa, ya), (xb, yb) in zip(a, b):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb)


def test_data_parallel_ranks_agree_on_a_stop_every_n_steps_and_at_the_epochs_end(tree, monkeypatch):
    data = load_dataset(tree, workers=1)
    torch.manual_seed(0)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    loader = _loader(data, model, batch=8, augment="none")  # 6 steps an epoch
    phase = PhaseConfig(train="head", lr_policy="constant", lr_max=1e-3, batch_size=4)
    set_trainable(model, phase.train)
    opt = steps.make_optimizer(model, phase)
    calls = []
    stop = steps.StopOnSignal()

    def agree(flag, d, device):  # stands in for the all-reduce: what this rank would send, at which step
        calls.append((state.step, flag))
        return flag

    monkeypatch.setattr(steps, "agree", agree)
    monkeypatch.setattr(steps, "AGREE_EVERY", 4)
    two = Dist(rank=0, world_size=2)
    state = steps.TrainState()
    monkeypatch.setattr(steps, "_reduced", lambda *a: {"loss": 0.0, "acc": 0.0, "top5": 0.0, "n": 48})
    steps.train_one_epoch(model, loader, opt, phase, state, device=torch.device("cpu"), stop=stop, dist=two)
    assert calls == [(4, False), (6, False)]  # every 4 steps and at the epoch's last; not every step
    calls.clear()
    state = steps.TrainState()

    def signal_at_step_2(lr, loss):
        if state.step == 1:  # Ctrl-C during the second step
            stop.signum = 2

    with pytest.raises(steps.Interrupted):
        steps.train_one_epoch(model, loader, opt, phase, state, device=torch.device("cpu"), stop=stop, dist=two,
                              after_step=signal_at_step_2)
    assert calls == [(4, True)] and state.step == 4  # every rank stops after the same step: the agreed one
    calls.clear()
    stop.signum = None
    state = steps.TrainState()
    steps.train_one_epoch(model, loader, opt, phase, state, device=torch.device("cpu"), stop=stop)  # one process
    assert len(calls) == 6  # a Python test every step, no collective
