"""Kill a real ``tinytransfer train`` at a random moment, resume it, and get the uninterrupted run bit for bit.

The runs are subprocesses of the real CLI on a tiny generated tree (3 phases × 2 epochs × 6 steps, seed 3,
deterministic). The interrupted ones run through ``slow_cli.py``, which only sleeps after each training batch so
that the signal lands inside an epoch; the resumes and the reference runs use ``python -m tinytransfer.cli``.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

import tinytransfer.models.backbones  # noqa: F401   while the subprocess they race runs on
import tinytransfer.training.engine  # noqa: F401 - imported now, so that the in-process CLI calls below take milliseconds
from tinytransfer.cli import main
from tinytransfer.runs.checkpoint import load_checkpoint

from ._util import (
    EPOCHS,
    assert_same_run,
    comparable,
    differences,
    finish,
    resume_argv,
    rows,
    sets,
    start,
    train_argv,
    wait_for_new,
)


@pytest.fixture(scope="module")
def reference(run_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two uninterrupted runs with the same seed, started together (they also build the data cache together)."""
    base = tmp_path_factory.mktemp("reference")
    runs = [base / "run1", base / "run2"]
    procs = [start(train_argv(run_tree, r), r.with_suffix(".log")) for r in runs]
    for r, p in zip(runs, procs):
        rc, out = finish(p, r.with_suffix(".log"))
        assert rc == 0, out[-3000:]
    return runs[0], runs[1]


def _message(log: str) -> list[str]:
    """The CLI's own lines on stderr ("tinytransfer: ..."), out of the merged log."""
    return [line for line in log.splitlines() if line.startswith("tinytransfer:")]


def test_seed_and_deterministic_give_bit_identical_runs(reference: tuple[Path, Path]) -> None:
    a, b = reference
    assert len(rows(a)) == EPOCHS
    assert comparable(a) == comparable(b)
    for name in ("best.pt", "last.pt"):
        assert differences(load_checkpoint(a / name), load_checkpoint(b / name)) == [], name
    best = load_checkpoint(a / "best.pt")
    assert best["epoch"] > 2, "best.pt should move past phase 1, or the resume tests check little"


def test_sigkill_mid_epoch_then_resume_is_the_uninterrupted_run(run_tree: Path, reference: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    delay = random.uniform(0.0, 0.6)
    run, log = tmp_path / "run", tmp_path / "killed.log"
    p = start(train_argv(run_tree, run, slow=True), log)
    wait_for_new(run / "last.pt", p, log)  # epoch 1 is saved
    time.sleep(delay)
    assert p.poll() is None, f"the run ended before the kill ({delay:.2f} s after epoch 1)"
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    # what the kill left: last.pt loads; metrics.csv holds its epochs (and maybe the epoch whose save was cut)
    last = load_checkpoint(run / "last.pt")
    done = rows(run)
    assert 1 <= last["epoch"] < EPOCHS and len(done) in (last["epoch"], last["epoch"] + 1), (last["epoch"], done)
    assert (run / ".lock").read_text().split()[0] == str(p.pid)  # the dead run's lock stays behind
    print(f"\nSIGKILL {delay:.2f} s after epoch 1: last.pt at epoch {last['epoch']}, {len(done)} metrics rows")

    rc, out = finish(start(resume_argv(run), tmp_path / "resume.log"), tmp_path / "resume.log")
    assert rc == 0, out[-3000:]
    assert "removing stale lock" in out and f"pid {p.pid}" in out  # the dead owner's lock is taken over
    assert_same_run(run, reference[0])


def test_sigterm_and_sigint_stop_cleanly_and_resume_is_the_uninterrupted_run(
        run_tree: Path, reference: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    base = ["--recipe", "vgg16-paper", "--data", str(run_tree), "--out", str(run), "--quiet", "--no-finish",
            "--seed", "3", "--deterministic", *sets()]
    stopped_at = []
    after = None
    for k, (sig, argv) in enumerate([(signal.SIGTERM, train_argv(run_tree, run, slow=True)),
                                     (signal.SIGINT, resume_argv(run, slow=True))]):
        log = tmp_path / f"{sig.name}.log"
        p = start(argv, log)
        after = wait_for_new(run / "last.pt", p, log, after=after)  # an epoch of this process is saved
        if k == 0:
            # a second run on the folder is refused while this one lives, naming its pid; --force deletes nothing
            capsys.readouterr()
            assert main(["train", *base, "--force"]) == 2
            assert main(["train", "--resume", str(run), "--quiet", "--no-finish"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 2 and all(f"another run (pid {p.pid})" in e for e in err), err
            assert (run / "last.pt").is_file() and (run / "metrics.csv").is_file()
            assert load_checkpoint(run / "last.pt")["epoch"] <= 2, "the checks took too long to leave room"
        delay = random.uniform(0.0, 0.3)
        time.sleep(delay)
        assert p.poll() is None, f"the run ended before {sig.name} ({delay:.2f} s after a save)"
        p.send_signal(sig)
        rc, out = finish(p, log)
        msg = _message(out)
        assert rc == 130, out[-3000:]
        assert len(msg) == 1 and f"signal {int(sig)}" in msg[0] and "--resume" in msg[0], msg
        last = load_checkpoint(run / "last.pt")
        assert len(rows(run)) == last["epoch"] < EPOCHS  # a clean stop: metrics.csv and last.pt agree
        assert not (run / ".lock").exists()
        after = ((run / "last.pt").stat().st_ino, (run / "last.pt").stat().st_mtime_ns)
        stopped_at.append(f"{sig.name} {delay:.2f} s after a save: {msg[0]}")
    print("\n" + "\n".join(stopped_at))
    rc, out = finish(start(resume_argv(run), tmp_path / "resume.log"), tmp_path / "resume.log")
    assert rc == 0, out[-3000:]
    assert_same_run(run, reference[0])
