"""torch.compile in a three-phase run under real dynamo (eager backend, CPU): static shapes, one train and one eval
graph where the trainable set changes, graphs reused where it does not, and no false "fell back to eager"."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_engine import run, tiny_config

from tinytransfer.training import compilestats


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


def test_three_phases_compile_static_graphs_and_reuse_them_without_a_false_fallback(tree, tmp_path, monkeypatch,
                                                                                      caplog):
    import torch._dynamo as dynamo

    inputs: list[list] = []  # every graph's input shapes, as dynamo hands them to the backend

    def recording(gm, example_inputs):
        inputs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
                      + [s for s in example_inputs if isinstance(s, torch.SymInt)])
        return gm.forward

    real = torch.compile
    passed = []

    def compile_(model, mode=None, dynamic=None, **k):
        passed.append(dynamic)
        return real(model, backend=recording, fullgraph=True, dynamic=dynamic)

    dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile_)
    raw = tiny_config(tree, compile=True, eval_batch_size=4)  # training batch 20, evaluation batch 4
    third = dict(raw["phases"][1], name="low lr", lr_max=1e-4)  # phase 3 trains what phase 2 trains
    raw["phases"] = [*raw["phases"], third]
    for p in raw["phases"]:
        p["batch_size"], p["epochs"] = 20, 2
    with caplog.at_level(logging.INFO, logger="tinytransfer.training"):
        run(tree, tmp_path / "r", raw)
    assert passed == [False, False, False]  # dynamic=False at every phase
    symbolic = [s for graph in inputs for s in graph if isinstance(s, torch.SymInt)
                or (isinstance(s, tuple) and any(isinstance(d, torch.SymInt) for d in s))]
    assert not symbolic, inputs
    batches = {shape[0] for graph in inputs for shape in graph if isinstance(shape, tuple) and shape[1:] == (3, 32, 32)}
    assert batches == {20, 4}, inputs  # the images: training's batch and evaluation's, each static
    phases = json.loads((tmp_path / "r" / "compile.json").read_text())["phases"]
    assert [p["phase"] for p in phases] == [1, 2, 3] and all(p["complete"] and p["epochs"] == 2 for p in phases)
    # a new trainable set compiles one train and one eval graph; phase 3 reuses phase 2's: none, and that is fine
    assert [p["graphs"] for p in phases] == [2, 2, 0], phases
    assert all(p["graphs_after_first_epoch"] == 0 and p["graph_breaks"] == 0 for p in phases)
    assert not any(p["fell_back"] for p in phases)
    assert all(p["compile_s"] >= 0 and p["cudagraph_skips"] == 0 for p in phases)
    assert not [m for m in caplog.messages if "fell back" in m]


def test_fell_back_means_breaks_or_failed_frames_not_a_missing_graph(monkeypatch):
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    reused = {"graphs": 0, "frames": 0, "frames_ok": 0, "graph_breaks": 0}
    assert not compilestats.fell_back(reused)
    assert not compilestats.fell_back(reused, steps_ran=True)
    assert compilestats.fell_back({**reused, "graph_breaks": 1})
    assert compilestats.fell_back({**reused, "frames": 3, "frames_ok": 2})


def test_a_phase_cut_by_a_signal_records_its_compile_figures(tree, tmp_path, monkeypatch):
    import torch._dynamo as dynamo

    from tinytransfer.training import engine

    real_compile = torch.compile
    dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, dynamic=None, **k: real_compile(
        model, backend="eager", fullgraph=True, dynamic=dynamic))
    real = engine.train_one_epoch
    calls = {"n": 0}

    def interrupted(*a, **k):  # the second epoch (phase 1's second) is stopped as SIGINT stops it
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] == 2:
            raise engine.Interrupted("stopped by signal 2")
        return out

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    raw = tiny_config(tree, compile=True, eval_batch_size=4)
    with pytest.raises(engine.Interrupted):
        run(tree, tmp_path / "r", raw)
    (phase,) = json.loads((tmp_path / "r" / "compile.json").read_text())["phases"]
    assert phase["phase"] == 1 and phase["complete"] is False and phase["epochs"] == 1 and phase["graphs"] >= 1
