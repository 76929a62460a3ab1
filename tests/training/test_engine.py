"""The training loop end to end on a tiny generated dataset: phases, metrics.csv, checkpoints, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tinytransfer.config import from_dict
from tinytransfer.data.dataset import load_dataset
from tinytransfer.models.backbones import create_model
from tinytransfer.runs.checkpoint import load_checkpoint
from tinytransfer.training import engine, lrfind, steps

TINY = "timm:test_resnet"  # timm's ~100k-parameter test network: real architecture, milliseconds a step


def tiny_config(root: Path, **over) -> dict:
    raw = {
        "name": "tiny",
        "data": {"root": str(root), "augment": "keras", "workers": 1},
        "model": {"backbone": TINY, "head": "pool", "pretrained": False, "input_size": 32, "dropout": 0.1},
        "phases": [
            {"name": "head", "epochs": 2, "train": "head", "lr_policy": "triangular", "lr_min": 1e-3,
             "lr_max": 1e-2, "step_size": 3, "batch_size": 16},
            {"name": "all", "epochs": 2, "train": "all", "lr_policy": "constant", "lr_max": 1e-3,
             "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.01},
        ],
        "seed": 3,
        "deterministic": True,
        "device": "cpu",
        "eval_batch_size": 32,
    }
    for k, v in over.items():
        raw[k] = v
    return raw


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run(root: Path, run_dir: Path, raw: dict, resume: dict | None = None) -> engine.TrainState:
    cfg = from_dict(raw)
    torch.manual_seed(cfg.seed)
    data = load_dataset(root, workers=1)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32, dropout=0.1)
    run_dir.mkdir(exist_ok=True)
    return engine.fit(model, data, cfg, run_dir, resume=resume, show_progress=False)


def run_killed_at_epoch(root: Path, run_dir: Path, raw: dict, epoch: int, monkeypatch) -> None:
    """Run until epoch ``epoch`` starts, then die there as a Ctrl-C would (before the epoch writes anything)."""
    real = engine._run_epoch
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "_run_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        run(root, run_dir, raw)
    monkeypatch.setattr(engine, "_run_epoch", real)


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


def test_two_phase_run_writes_metrics_and_checkpoints(tree, tmp_path):
    state = run(tree, tmp_path / "r", tiny_config(tree))
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    assert [(r["phase"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "3"), ("2", "4")]
    assert [int(r["step"]) for r in rows] == [3, 6, 3, 6]  # 48 images / 16 = 3 steps an epoch, restarting each phase
    for r in rows:
        for k in ("train_loss", "train_acc", "val_acc", "val_top5", "seconds", "img_s"):
            assert float(r[k]) >= 0
        assert float(r["val_top5"]) == 1.0  # 3 classes: the top-5 always holds the answer
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 + (1e-2 - 1e-3) / 3)  # LR of the last step (iteration 5 of 6)
    last = load_checkpoint(tmp_path / "r" / "last.pt")
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    for ck in (last, best):
        assert ck["format"] == "tinytransfer/1" and ck["classes"] == ["n00000000", "n00000001", "n00000002"]
        assert ck["config"]["model"]["backbone"] == TINY
        assert len(ck["mean"]) == 3
    assert last["epoch"] == 4 and last["phase"] == 2  # past the last phase: nothing left to resume
    assert best["best_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows))
    assert state.best_acc == best["best_acc"]
    # learnable colours: the run must learn something
    assert max(float(r["val_acc"]) for r in rows) > 0.5


def test_frozen_phase_leaves_the_body_untouched(tree, tmp_path):
    raw = tiny_config(tree)
    raw["phases"] = raw["phases"][:1]
    cfg = from_dict(raw)
    torch.manual_seed(0)
    data = load_dataset(tree, workers=1)
    model = create_model(TINY, 3, pretrained=False, head="pool", input_size=32)
    body0 = {k: v.clone() for k, v in model.body.state_dict().items()}
    head0 = {k: v.clone() for k, v in model.head.state_dict().items()}
    (tmp_path / "r").mkdir()
    engine.fit(model, data, cfg, tmp_path / "r", show_progress=False)
    for k, v in model.body.state_dict().items():
        assert torch.equal(v, body0[k]), f"frozen body changed: {k}"  # BN statistics too (bn_frozen_eval)
    assert any(not torch.equal(v, head0[k]) for k, v in model.head.state_dict().items())


def test_resume_is_the_same_run(tree, tmp_path, monkeypatch):
    raw = tiny_config(tree)
    run(tree, tmp_path / "full", raw)
    full = read_rows(tmp_path / "full" / "metrics.csv")

    run_killed_at_epoch(tree, tmp_path / "cut", raw, 3, monkeypatch)  # dies in epoch 3, the first of phase 2
    assert len(read_rows(tmp_path / "cut" / "metrics.csv")) == 2
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ck["phase"], ck["phase_epoch"], ck["epoch"]) == (1, 0, 2)
    run(tree, tmp_path / "cut", raw, resume=ck)
    cut = read_rows(tmp_path / "cut" / "metrics.csv")
    keys = ("phase", "epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in cut] == [[r[k] for k in keys] for r in full]
    a = load_checkpoint(tmp_path / "full" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "best.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_phase_restores_optimizer_and_schedule(tree, tmp_path, monkeypatch):
    raw = tiny_config(tree)
    run(tree, tmp_path / "full", raw)
    run_killed_at_epoch(tree, tmp_path / "cut", raw, 4, monkeypatch)  # dies mid phase 2 (after its first epoch)
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ck["phase"], ck["phase_epoch"], ck["step"]) == (1, 1, 3) and ck["optimizer"]
    run(tree, tmp_path / "cut", raw, resume=ck)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_ends_the_phase(tree, tmp_path):
    raw = tiny_config(tree)
    raw["phases"] = [dict(raw["phases"][0], epochs=6, patience=1, lr_policy="constant", lr_max=1e-12)]
    run(tree, tmp_path / "r", raw)
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    assert len(rows) < 6  # an LR of 1e-12 cannot improve twice in a row


@pytest.mark.parametrize("scope, phase2_epochs", [("run", 1), ("phase", 2)])
def test_patience_scope_phase_restarts_the_best_each_phase(tree, tmp_path, scope, phase2_epochs):
    """Phase 2 starts from the best weights and cannot move them (LR 1e-12, body frozen, pool head without BN), so
    its val accuracy equals the run's best: no new best of the run (scope run: stops after 1 epoch), but its first
    epoch is the phase's first best (scope phase, Keras's EarlyStopping per fit(): stops after 2)."""
    raw = tiny_config(tree)
    still = dict(raw["phases"][0], epochs=5, patience=1, lr_policy="constant", lr_max=1e-12, patience_scope=scope)
    raw["phases"] = [dict(raw["phases"][0], patience_scope=scope), still]
    run(tree, tmp_path / "r", raw)
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    assert [r["phase"] for r in rows].count("2") == phase2_epochs


def test_adam_keras_trains(tree, tmp_path):
    raw = tiny_config(tree)
    for p in raw["phases"]:
        p["optimizer"] = "adam-keras"
    run(tree, tmp_path / "r", raw)
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    assert max(float(r["val_acc"]) for r in rows) > 0.5


def test_non_finite_loss_stops_with_step_and_keeps_last_good(tree, tmp_path, monkeypatch):
    raw = tiny_config(tree)
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, y, **k):
        out = real(logits, y, **k)
        if "reduction" in k:  # evaluation
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 5 else out  # step 5 of phase 1 = epoch 2, step 4 (0-based)

    monkeypatch.setattr(steps.F, "cross_entropy", poisoned)
    with pytest.raises(engine.NonFiniteLoss, match=r"phase 1 .*step 4"):
        run(tree, tmp_path / "r", raw)
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert len(read_rows(tmp_path / "r" / "metrics.csv")) == 1


def test_lr_range_test_runs_and_suggests(tree):
    data = load_dataset(tree, workers=1)
    model = create_model(TINY, 3, pretrained=False, head="pool", input_size=32)
    from tinytransfer.config import PhaseConfig
    from tinytransfer.data.augment import make_transform
    from tinytransfer.data.loader import DeviceLoader

    loader = DeviceLoader(data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0),
                          transform=make_transform("none", (0.5,) * 3, (0.5,) * 3, input_size=32))
    res = lrfind.lr_range_test(model, loader, PhaseConfig(train="all"), device=torch.device("cpu"), num_steps=30,
                               lr_start=1e-6, lr_end=10.0)
    assert len(res["lr"]) >= 10
    assert all(b > a for a, b in zip(res["lr"], res["lr"][1:]))
    assert res["lr"][0] <= res["suggested"] <= res["lr"][-1]


def test_compile_option_reaches_torch_compile(tree, tmp_path, monkeypatch):
    """compile=true goes through torch.compile (stubbed here: a real CPU compile takes minutes) and still trains."""
    seen = []

    def fake_compile(model, *a, **k):
        seen.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    raw = tiny_config(tree, compile=True)
    raw["phases"] = raw["phases"][:1]
    run(tree, tmp_path / "r", raw)
    assert len(seen) == 1 and len(read_rows(tmp_path / "r" / "metrics.csv")) == 2


def test_compile_mode_reaches_torch_compile_and_marks_cuda_graph_steps(tree, tmp_path, monkeypatch):
    """compile_mode=reduce-overhead (CUDA graphs) is passed on, and every train and eval step is marked as a new
    CUDA-graph step (stubbed: the wrapper only forwards, as torch.compile's OptimizedModule does)."""
    modes, marks = [], []

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            return self._orig_mod(x)

    def fake_compile(model, mode=None, **k):
        modes.append(mode)
        return Wrapped(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    raw = tiny_config(tree, compile=True, compile_mode="reduce-overhead")
    raw["phases"] = raw["phases"][:1]  # 2 epochs of 3 training steps, 1 eval batch each
    run(tree, tmp_path / "r", raw)
    assert modes == ["reduce-overhead"]
    assert len(marks) == 2 * (3 + 1)
    steps._step_marker(torch.nn.Linear(2, 2))()  # an eager model: no CUDA-graph marks
    assert len(marks) == 8


def test_each_phase_uses_its_own_batch_size(tree, tmp_path):
    raw = tiny_config(tree)
    raw["phases"][1]["batch_size"] = 24  # 48 images: 3 steps an epoch in phase 1, 2 in phase 2
    run(tree, tmp_path / "r", raw)
    assert [int(r["step"]) for r in read_rows(tmp_path / "r" / "metrics.csv")] == [3, 6, 2, 4]


def test_retain_host_memory_stops_large_blocks_from_being_unmapped():
    # in a fresh process: a 64 MB tensor is a fresh mmap (counted in mallinfo2's hblkhd) until retain_host_memory,
    # then it comes from the heap that is kept and reused
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = """
import ctypes, torch
from tinytransfer.training.engine import retain_host_memory
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MI
def mapped_during_alloc():
    before = libc.mallinfo2().hblkhd
    x = torch.empty(64 << 20, dtype=torch.uint8)
    x.fill_(1)
    return libc.mallinfo2().hblkhd - before
a = mapped_during_alloc()
ok = retain_host_memory()
b = mapped_during_alloc()
print(a, ok, b)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 64 << 20  # glibc's default: mmap
    assert out[1] == "True"
    assert int(out[2]) == 0  # retained: no new mapping


def test_retain_host_memory_is_a_no_op_off_glibc(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert engine.retain_host_memory() is False


def _eager_dynamo(monkeypatch):
    """torch.compile through real dynamo with the "eager" backend: the same graphs, guards and counters, without
    minutes of inductor code generation on the CPU. fullgraph: a graph break would raise."""
    import torch._dynamo as dynamo

    real = torch.compile
    dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, dynamic=None, **k: real(
        model, backend="eager", fullgraph=True, dynamic=dynamic))


def test_compiled_run_has_static_shapes_and_logs_compiles_per_phase(tree, tmp_path, monkeypatch, caplog):
    """Compiled: training drops its last partial batch, evaluation pads its own, so each phase compiles a train
    and an eval graph once and nothing after its first epoch; the frozen-base shortcut traces without a break."""
    import logging
    import re

    _eager_dynamo(monkeypatch)
    raw = tiny_config(tree, compile=True, eval_batch_size=4)  # 9 val images: 4 + 4 + 1 (padded to 4)
    for p in raw["phases"]:
        p["batch_size"] = 20  # 48 train images: 20 + 20 (+ 8 dropped)
    with caplog.at_level(logging.INFO, logger="tinytransfer.training"):
        run(tree, tmp_path / "r", raw)
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 2, 4]
    for r in rows:  # accuracies over the 9 real val images, padding not counted
        assert abs(float(r["val_acc"]) * 9 - round(float(r["val_acc"]) * 9)) < 1e-4
    lines = [m for m in caplog.messages if m.startswith("torch.compile, phase")]
    assert len(lines) == 2, caplog.messages
    for line in lines:
        graphs, later = map(int, re.search(r"(\d+) graphs compiled \((\d+) after", line).groups())
        assert 1 <= graphs <= 2 and later == 0, line  # one train and one eval graph at most, no recompiles
    assert not [m for m in caplog.messages if "fell back" in m]


def test_evaluate_with_a_padded_last_batch_counts_only_real_images(tree):
    from tinytransfer.data.augment import make_transform
    from tinytransfer.data.loader import DeviceLoader

    data = load_dataset(tree, workers=1)
    torch.manual_seed(0)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    tf = make_transform("none", model.mean, model.std)
    plain = engine.evaluate(model, DeviceLoader(data.val, 4, transform=tf), device=torch.device("cpu"))
    padded = engine.evaluate(model, DeviceLoader(data.val, 4, transform=tf, pad_last=True),
                             device=torch.device("cpu"))
    assert plain["n"] == padded["n"] == 9
    for k in ("loss", "acc", "top5"):
        assert padded[k] == pytest.approx(plain[k], rel=1e-5), k


def test_frozen_body_shortcut_compiles_without_a_graph_break():
    import torch._dynamo as dynamo

    from tinytransfer.models.freezing import set_trainable

    dynamo.reset()
    torch.manual_seed(0)
    model = create_model(TINY, 3, pretrained=False, head="pool", input_size=32)
    set_trainable(model, "head")
    model.train()
    x = torch.randn(4, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # a break or an error would raise
    torch.manual_seed(1)
    out = compiled(x)
    out.sum().backward()
    assert all(p.grad is None for p in model.body.parameters())
    grads = [p.grad.clone() for p in model.head.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    ref = model(x)  # eager: the inference_mode shortcut
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, model.head.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_a_later_phase_naming_no_block_fails_before_any_training(tree, tmp_path):
    raw = tiny_config(tree)
    raw["phases"][1]["train"] = "from:blocks.4"  # a Lite0 block; the tiny model is a ResNet
    with pytest.raises(ValueError, match=r"phase 2 \(all\): train: unknown block 'blocks.4'.*blocks: "):
        run(tree, tmp_path / "r", raw)
    assert not (tmp_path / "r" / "last.pt").exists() and not (tmp_path / "r" / "metrics.csv").exists()
