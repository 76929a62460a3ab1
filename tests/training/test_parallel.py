"""Data-parallel training for real: 2 CPU processes (gloo) through --nproc and through two torchrun agents."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_tree

import tinytransfer as tt
from tinytransfer.runs.checkpoint import load_checkpoint

SETS = {
    "model.backbone": "timm:test_resnet", "model.head": "pool", "model.pretrained": "false", "model.input_size": 32,
    "phases.*.epochs": 1, "phases.*.batch_size": 16, "data.workers": 1, "data.val_mode": "official",
    "eval_batch_size": 8, "data.augment": "none", "model.dropout": 0, "seed": 5,
}
ENV = {**os.environ, "PYTHONPATH": str(Path(tt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
CMD = [sys.executable, "-m", "tinytransfer", "train", "--recipe", "vgg16-paper", "--no-finish"]
RUN_FILES = {"config.yaml", "metrics.csv", "best.pt", "last.pt", "audit.json", "calibration.json"}


def _sets(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in ("--set", f"{k}={v}")]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    # 64 training images: 4 steps of 16 an epoch either way (2 ranks × 8 or 1 process × 16)
    return write_tiny_tree(tmp_path_factory.mktemp("ddp") / "tree", n_classes=4, train_per_class=16, n_val=12,
                           n_test=0, size=32, n_odd_size=0)


@pytest.fixture(scope="module")
def pair(tree, tmp_path_factory):
    base = tmp_path_factory.mktemp("pair")
    two = _run([*CMD, "--data", str(tree), "--out", str(base / "two"), "--nproc", "2", *_sets(SETS)])
    _run([*CMD, "--data", str(tree), "--out", str(base / "one"), *_sets(SETS)])
    return base / "two", base / "one", two.stdout + two.stderr


def test_two_ranks_equal_one_process(pair):
    two, one, _ = pair
    a, b = _rows(two), _rows(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["4", "4", "4"]  # same global batches
    assert a[0]["train_loss"] == b[0]["train_loss"]  # frozen base: the very same optimisation
    for ra, rb in zip(a, b):  # all layers: BatchNorm sees 8 images a rank instead of 16
        assert abs(float(ra["val_loss"]) - float(rb["val_loss"])) <= 0.01 * float(rb["val_loss"])


def test_rank_zero_alone_writes_and_logs(pair):
    two, _, out = pair
    assert {p.name for p in two.iterdir()} == RUN_FILES  # no lock, no temp file, nothing per rank
    assert len(_rows(two)) == 3
    epoch_lines = [line for line in out.splitlines() if line.startswith("phase ") and " epoch " in line]
    assert len(epoch_lines) == 3, out  # printed once, by rank 0
    assert "(2 processes)" in out


def test_one_process_evaluate_equals_the_reduced_best(pair):
    two, _, _ = pair
    best = load_checkpoint(two / "best.pt")
    res = tt.load(two, device="cpu").evaluate("val")
    assert res["images"] == 12  # every validation image counted once over the two shards
    assert res["top1"] == pytest.approx(best["best_acc"], abs=1e-9)


def test_batch_that_does_not_divide_is_one_line_and_writes_nothing(tree, tmp_path):
    out = tmp_path / "r"
    p = subprocess.run([*CMD, "--data", str(tree), "--out", str(out), "--nproc", "2",
                        *_sets({**SETS, "phases.*.batch_size": 15})], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "batch_size 15 does not divide among 2 processes" in err[0]
    assert not out.exists()


def test_killed_two_rank_run_resumes_in_one_process(tree, tmp_path):
    out = tmp_path / "killed"
    sets = _sets({**SETS, "phases.*.epochs": 6})
    proc = subprocess.Popen([*CMD, "--data", str(tree), "--out", str(out), "--nproc", "2", *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.csv").is_file() and len(_rows(out)) >= 1 and (out / "last.pt").is_file():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = len(_rows(out))
    assert 1 <= done < 18
    _run([sys.executable, "-m", "tinytransfer", "train", "--resume", str(out), "--no-finish"])
    assert [int(r["epoch"]) for r in _rows(out)] == list(range(1, 19))
    assert load_checkpoint(out / "last.pt")["epoch"] == 18


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_on_loopback_train_one_run(tree, tmp_path, pair):
    """Multi-node for real: two elastic agents (--nnodes 2, c10d rendezvous on 127.0.0.1), one process each."""
    out = tmp_path / "nodes"
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"tt-{port}", "-m", "tinytransfer", "train", "--recipe", "vgg16-paper", "--no-finish",
               "--data", str(tree), "--out", str(out), *_sets(SETS)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert {p.name for p in out.iterdir()} == RUN_FILES
    two, _, _ = pair
    assert [r["val_loss"] for r in _rows(out)] == [r["val_loss"] for r in _rows(two)]  # = 2 ranks on one node


def test_a_folder_held_by_a_live_run_is_refused_in_one_line(tree, tmp_path):
    out = tmp_path / "held"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()}\n")  # this test process: alive
    p = subprocess.run([*CMD, "--data", str(tree), "--out", str(out), "--nproc", "2", *_sets(SETS)],
                       capture_output=True, text=True, env=ENV, timeout=180)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and f"another run (pid {os.getpid()}) is writing to this folder" in err[0], p.stderr
    assert sorted(x.name for x in out.iterdir()) == [".lock"]


def test_ctrl_c_stops_every_rank_and_keeps_the_last_epoch(tree, tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen([*CMD, "--data", str(tree), "--out", str(out), "--nproc", "2",
                             *_sets({**SETS, "phases.*.epochs": 6})], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.csv").is_file() and len(_rows(out)) >= 1:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "--resume" in err.strip().splitlines()[-1]
    epoch = load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= epoch <= len(_rows(out)) < 18
    assert not (out / ".lock").exists() or int((out / ".lock").read_text().split()[0]) != proc.pid


def test_a_rank_that_cannot_see_its_device_is_one_line(tree, tmp_path):
    """--device cuda with no GPU visible: the rank says so and the launcher reports it in one line."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the rank would see it")  # pragma: no cover - the CPU CI has none
    out = tmp_path / "nodev"
    p = subprocess.run([*CMD, "--data", str(tree), "--out", str(out), "--nproc", "2", "--device", "cuda",
                        *_sets(SETS)], capture_output=True, text=True, env=ENV, timeout=180)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "has no CUDA device" in err[0], p.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_reported_failure_is_the_cause_not_its_echo():
    from types import SimpleNamespace

    from tinytransfer.api import _root_failure

    echo = SimpleNamespace(message="RuntimeError: [gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer",
                           timestamp=10, exitcode=1)
    cause = SimpleNamespace(message={"message": "CheckpointError: run: another run (pid 7) is writing"},
                            timestamp=11, exitcode=1)
    rank, failure, lines = _root_failure({1: echo, 0: cause})
    assert rank == 0 and lines == ["CheckpointError: run: another run (pid 7) is writing"]
    plain = SimpleNamespace(message="ValueError: bad", timestamp=5, exitcode=1)
    assert _root_failure({0: cause, 1: plain})[0] == 1  # two real errors: the earlier
