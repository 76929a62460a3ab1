"""What a checkpoint takes of a run: the weights once an epoch, no host copy on the training thread, and RNG
states that a resume with fewer visible GPUs can restore."""

from __future__ import annotations

import pytest
import torch
from test_engine import run, tiny_config  # noqa: E402  (tests/training is on sys.path under pytest)

from tinytransfer.runs import asyncsave
from tinytransfer.training import snapshot


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


def test_an_improving_epoch_shares_one_weight_dict_between_best_and_last_and_copies_nothing(tree, tmp_path,
                                                                                           monkeypatch):
    submitted = []
    real = asyncsave.snapshot

    def spy(obj, memo=None, pool=None):
        pairs = obj  # [(ckpt, path), ...] as AsyncCheckpointWriter.submit hands them over
        submitted.append({p.rsplit("/", 1)[-1]: c for c, p in (it for it in pairs if not callable(it))})
        copied = []

        def counting(o):
            if isinstance(o, torch.Tensor):
                copied.append(id(o))
            elif isinstance(o, dict):
                for v in o.values():
                    counting(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    counting(v)

        counting(obj)
        out = real(obj, memo, pool)
        submitted[-1]["_distinct"] = len(set(copied))
        submitted[-1]["_all"] = len(copied)
        return out

    monkeypatch.setattr(asyncsave, "snapshot", spy)
    raw = tiny_config(tree)
    raw["phases"] = raw["phases"][:1]
    run(tree, tmp_path / "r", raw)
    first = submitted[0]  # the first epoch always improves: best.pt and last.pt together
    best, last = first["best.pt"], first["last.pt"]
    assert best["model"].keys() == last["model"].keys()
    assert all(best["model"][k] is last["model"][k] for k in best["model"])  # one dict of weights, shared
    n_model = len(best["model"])
    assert first["_all"] - first["_distinct"] >= n_model  # the writer meets each weight twice, copies it once
    # and the training thread made no host copy: the checkpoint holds the live tensors (views of the parameters)
    lin = torch.nn.Linear(2, 2)
    w = snapshot.model_weights(lin)
    assert w["weight"].data_ptr() == lin.weight.data_ptr() and not w["weight"].requires_grad


def test_cuda_rng_states_of_more_devices_than_visible_restore_what_exists(monkeypatch):
    shuffle, aug = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    saved = snapshot.rng_state(shuffle, aug)
    saved["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # saved by a 4-GPU process
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((int(state[0]),
                                                                                                   device)))

    def all_devices(states):  # what the old code called: it indexes every saved device
        raise AssertionError("set_rng_state_all indexes devices that do not exist")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", all_devices)
    torch.manual_seed(5)
    snapshot.set_rng_state(saved, torch.Generator(), torch.Generator())
    assert restored == [(0, 0)]
    # the CPU half: the CPU and generator states come back whatever the CUDA count
    a, b = torch.Generator(), torch.Generator()
    snapshot.set_rng_state(saved, a, b)
    assert torch.equal(a.get_state(), shuffle.get_state()) and torch.equal(b.get_state(), aug.get_state())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    snapshot.set_rng_state(saved, a, b)  # no CUDA at all: the CUDA states are ignored
    assert restored == [(0, 0), (0, 0)]


def test_the_data_identity_is_hashed_once_a_run_and_is_in_every_checkpoint(tree, tmp_path, monkeypatch):
    """It hashes every file name (~50 ms for Tiny ImageNet's 110,000): once a run, not twice an epoch."""
    from tinytransfer.data.dataset import load_dataset
    from tinytransfer.runs.checkpoint import load_checkpoint
    from tinytransfer.training import engine

    calls = []
    real = snapshot.data_identity
    monkeypatch.setattr(engine, "data_identity", lambda data: calls.append(1) or real(data))
    monkeypatch.setattr(snapshot, "data_identity", lambda data: calls.append(1) or real(data))
    run(tree, tmp_path / "r", tiny_config(tree))  # 2 + 2 epochs, 4 of them writing best.pt and last.pt
    assert len(calls) == 1
    want = real(load_dataset(tree, workers=1))
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "r" / name)["data_id"] == want
