"""sync_bn keeps the Keras BatchNorm variance rule (KerasSyncBatchNorm1d), checked on the CPU: conversion, and the
global-batch statistics of two ranks with the all-reduce simulated in process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from tinytransfer.models.heads import KerasBatchNorm1d, KerasSyncBatchNorm1d, convert_sync_bn, paper_head


def test_convert_sync_bn_keeps_keras_batchnorm_and_converts_the_rest():
    torch.manual_seed(0)
    head = paper_head(2048, 10, 64, 0.4, bn_variance="biased")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_bn(model)
    assert isinstance(model[1], nn.SyncBatchNorm)
    keras = [m for m in model.modules() if isinstance(m, KerasBatchNorm1d)]
    assert len(keras) == 2 and all(isinstance(m, KerasSyncBatchNorm1d) for m in keras)
    assert not any(type(m) is nn.SyncBatchNorm for m in head.modules())  # no plain SyncBatchNorm in the head
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    plain = convert_sync_bn(paper_head(2048, 10, 64, 0.4))  # PyTorch's rule: a plain SyncBatchNorm, as before
    assert sum(type(m) is nn.SyncBatchNorm for m in plain.modules()) == 2


def test_two_ranks_normalise_and_track_as_keras_does_on_the_global_batch(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(12, 5) * 3 + 1  # the global batch; rank 0 holds rows 0..5, rank 1 rows 6..11
    ref = KerasBatchNorm1d(5, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    sync = KerasSyncBatchNorm1d(5, eps=1e-3, momentum=0.01)
    sync.load_state_dict(ref.state_dict())
    xa = x[:6].clone().requires_grad_()
    xr = x.clone().requires_grad_()
    other = x[6:]
    other_sums = torch.cat([other.sum(0), (other * other).sum(0), torch.tensor([6.0])])

    import torch.distributed.nn.functional as dnf

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dnf, "all_reduce", lambda t, *a, **k: t + other_sums)  # rank 1's sums added in
    out = sync(xa)
    want = ref(xr)
    torch.testing.assert_close(out, want[:6], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sync.running_mean, ref.running_mean)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-5, atol=1e-6)  # biased variance
    unbiased = 0.99 * 1.0 + 0.01 * x.var(0, correction=1)
    assert not torch.allclose(sync.running_var, unbiased, rtol=1e-5, atol=1e-6)  # PyTorch's rule differs
    # gradients through the global statistics (rank 0's own loss; the real all-reduce's backward adds rank 1's)
    g = torch.randn(12, 5)
    g[6:] = 0
    (out * g[:6]).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(xa.grad, xr.grad[:6], rtol=1e-3, atol=1e-4)


def test_outside_a_process_group_it_is_keras_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    ref, sync = KerasBatchNorm1d(4), KerasSyncBatchNorm1d(4)
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.running_var, ref.running_var)
