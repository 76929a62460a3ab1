"""asyncsave: checkpoints snapshot on the training thread, written by a background one, errors surface on wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tinytransfer.runs import checkpoint
from tinytransfer.runs.asyncsave import AsyncCheckpointWriter, snapshot
from tinytransfer.runs.checkpoint import FORMAT, CheckpointError, load_checkpoint


def _ckpt(w: torch.Tensor) -> dict:
    return {"format": FORMAT, "model": {"w": w}, "optimizer": {"state": {0: {"exp_avg": w * 2}}, "groups": [1, 2]},
            "epoch": 3}


def test_snapshot_copies_every_tensor_once() -> None:
    w = torch.ones(4)
    snap = snapshot({"a": w, "b": [w, (w, 1)], "c": "x"})
    assert snap["a"] is not w and torch.equal(snap["a"], w) and snap["c"] == "x"
    assert snap["b"][0] is snap["a"] and snap["b"][1][0] is snap["a"] and isinstance(snap["b"][1], tuple)
    w.add_(1)  # training goes on: the snapshot keeps the values of the moment
    assert snap["a"].tolist() == [1.0] * 4


def test_submit_returns_before_the_write_and_the_file_holds_the_snapshot(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    gate, real = threading.Event(), checkpoint.save_checkpoint

    def slow_save(ckpt: dict, path) -> None:
        gate.wait(10)
        real(ckpt, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    w = torch.zeros(1000)
    with AsyncCheckpointWriter() as saver:
        saver.submit([(_ckpt(w), tmp_path / "best.pt"), (_ckpt(w), tmp_path / "last.pt")])
        assert saver.busy() and not (tmp_path / "last.pt").exists()  # the training thread did not wait
        w.fill_(7.0)  # the next step changes the weights in place
        gate.set()
    for name in ("best.pt", "last.pt"):  # leaving the block waited for the write
        got = load_checkpoint(tmp_path / name)
        assert got["model"]["w"].abs().sum() == 0 and got["epoch"] == 3
    assert saver.stats["files"] == 2 and saver.blocked_s >= 0


def test_an_error_of_the_thread_surfaces_as_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save_checkpoint(_ckpt(torch.ones(3)), tmp_path / "last.pt")

    def broken(ckpt: dict, path) -> None:
        raise RuntimeError("pickler exploded")

    monkeypatch.setattr(checkpoint, "save_checkpoint", broken)
    saver = AsyncCheckpointWriter()
    saver.submit([(_ckpt(torch.zeros(3)), tmp_path / "last.pt")])
    with pytest.raises(CheckpointError, match="last.pt: could not save the checkpoint .*pickler exploded"):
        saver.wait()
    saver.wait()  # reported once
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].tolist() == [1.0] * 3  # the previous one is kept
    saver.submit([(_ckpt(torch.zeros(3)), tmp_path / "last.pt")])
    with pytest.raises(CheckpointError):  # the next submit (or the end of fit) raises it too
        saver.submit([(_ckpt(torch.zeros(3)), tmp_path / "last.pt")])
    # while another error is on its way up, the writer's is logged, not raised over it
    with pytest.raises(KeyboardInterrupt), AsyncCheckpointWriter() as s2:
        s2.submit([(_ckpt(torch.zeros(3)), tmp_path / "last.pt")])
        raise KeyboardInterrupt


def test_synchronous_mode_writes_on_the_calling_thread(tmp_path: Path) -> None:
    saver = AsyncCheckpointWriter(background=False)
    saver.submit([(_ckpt(torch.ones(2)), tmp_path / "last.pt")])
    assert not saver.busy() and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_snapshot_buffers_are_reused_between_submits(tmp_path: Path) -> None:
    w = torch.arange(6.0).reshape(2, 3)
    saver = AsyncCheckpointWriter()
    saver.submit([(_ckpt(w), tmp_path / "last.pt")])
    saver.wait()
    first = [b.data_ptr() for b in saver._pool]
    w.mul_(10)
    saver.submit([(_ckpt(w), tmp_path / "last.pt")])
    saver.wait()
    assert [b.data_ptr() for b in saver._pool] == first  # the same host buffers, no new allocation
    got = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(got["model"]["w"], w) and torch.equal(got["optimizer"]["state"][0]["exp_avg"], w * 2)
    saver.submit([({"format": FORMAT, "model": {"w": w[:1]}}, tmp_path / "last.pt")])  # fewer, other shapes
    saver.wait()
    assert len(saver._pool) == 1 and torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], w[:1])
