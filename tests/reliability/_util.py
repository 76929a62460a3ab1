"""Helpers of the reliability group: the tiny CLI configuration, subprocess runs, comparisons of run folders."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tinytransfer.runs.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
SLOW_CLI = HERE / "slow_cli.py"  # the real CLI with a sleep between training batches (see that file)

# vgg16-paper's three phases on timm's tiny test network: 2 epochs a phase, 6 steps an epoch, BatchNorm in
# inference mode (so validation follows training), LRs such that val accuracy improves in phases 2 and 3: best.pt
# is written three times and phases 2 and 3 start from it. Dropout, Keras augmentation and shuffling all draw
# random numbers, so a resume that restored any generator wrongly would show in the metrics.
TINY_SETS = [
    "model.backbone=timm:test_resnet", "model.head=pool", "model.pretrained=false", "model.input_size=32",
    "phases.*.epochs=2", "phases.*.batch_size=8", "phases.*.step_size=4", "phases.*.body_bn_eval=true",
    "phases.0.lr_min=3e-4", "phases.0.lr_max=2e-3", "phases.1.lr_min=1e-4", "phases.1.lr_max=1e-3",
    "phases.2.lr_min=1e-3", "phases.2.lr_max=3e-3",
    "data.workers=1", "data.val_mode=official", "eval_batch_size=32",
]
EPOCHS = 6
IGNORED = ("seconds", "img_s")  # wall-clock columns of metrics.csv


def write_run_tree(root: Path) -> Path:
    """A learnable tree (one colour a class) for the CLI runs: 48 train images (6 batches of 8), 15 val."""
    from conftest import write_tiny_tree  # tests/conftest.py (pytest puts tests/ on sys.path)

    return write_tiny_tree(root, n_classes=3, train_per_class=16, n_val=15, n_test=0, size=32, n_odd_size=0)


def sets(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    for s in [*TINY_SETS, *extra]:
        out += ["--set", s]
    return out


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                TINYTRANSFER_STEP_SLEEP=os.environ.get("TINYTRANSFER_STEP_SLEEP", "0.05"))


def train_argv(tree: Path, out: Path, *, slow: bool = False) -> list[str]:
    exe = [sys.executable, str(SLOW_CLI)] if slow else [sys.executable, "-m", "tinytransfer.cli"]
    return [*exe, "train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet",
            "--no-finish", "--seed", "3", "--deterministic", *sets()]


def resume_argv(out: Path, *, slow: bool = False) -> list[str]:
    exe = [sys.executable, str(SLOW_CLI)] if slow else [sys.executable, "-m", "tinytransfer.cli"]
    return [*exe, "train", "--resume", str(out), "--quiet", "--no-finish"]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """Start a CLI process in its own session, stdout+stderr into ``log``."""
    f = open(log, "ab")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
    f.close()
    return p


def finish(p: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"{p.args} ran past {timeout} s:\n{log.read_text()[-3000:]}") from None
    return rc, log.read_text()


def wait_for_new(path: Path, p: subprocess.Popen, log: Path, after: tuple | None = None,
                 timeout: float = 60) -> tuple:
    """Wait until ``path`` exists with another (inode, mtime) than ``after``; fails if ``p`` ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            st = path.stat()
            ident = (st.st_ino, st.st_mtime_ns)
            if ident != after:
                return ident
        except FileNotFoundError:
            pass
        if p.poll() is not None:
            raise AssertionError(f"the run ended (rc {p.returncode}) before {path.name} was written:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"{path} not written within {timeout} s")


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def comparable(run: Path) -> list[list[str]]:
    """metrics.csv without the wall-clock columns, as strings (bit-identical means identical text)."""
    return [[v for k, v in r.items() if k not in IGNORED] for r in rows(run)]


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Where two checkpoint values differ (tensors bit for bit, dicts by key, lists by item); empty: identical."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys {sorted(set(a) ^ set(b), key=str)}"]
        # run_id: each run's own identity, random by design (a resumed run keeps its own)
        return [d for k in a if (where, k) != ("", "run_id") for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def assert_same_run(run: Path, ref: Path) -> None:
    """The finished ``run`` equals the uninterrupted ``ref``: metrics rows (but the wall-clock columns) and
    best.pt and last.pt in full (weights, optimizer state, counters, RNG states, config); no lock or temp left."""
    got = comparable(run)
    assert [r[1] for r in got] == [str(e) for e in range(1, EPOCHS + 1)], f"an epoch recorded twice or lost: {got}"
    assert got == comparable(ref)
    for name in ("best.pt", "last.pt"):
        assert differences(load_checkpoint(run / name), load_checkpoint(ref / name)) == [], name
    assert not (run / ".lock").exists()
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name], "temp files left behind"
