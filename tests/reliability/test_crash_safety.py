"""A save that fails half-way (full disk, I/O error, Ctrl-C, a kill) leaves the previous file whole and loadable."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tinytransfer import fsutil
from tinytransfer.cli import main
from tinytransfer.data import dataset as data
from tinytransfer.runs import checkpoint
from tinytransfer.runs.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from tinytransfer.runs.runfolder import RunLock

from ._util import differences, rows, sets


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """A real "disk full": the kernel refuses writes past ``nbytes`` (EFBIG) for this process, root included."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    # else the kernel kills the process; only the main thread may set a handler, so a checkpoint writer thread
    # relies on the test having ignored SIGXFSZ already (ignore_sigxfsz)
    main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN) if main else None
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        if main:
            signal.signal(signal.SIGXFSZ, old_handler)


@contextlib.contextmanager
def ignore_sigxfsz() -> Iterator[None]:
    """SIGXFSZ ignored process-wide, for a file size limit set on another thread (the checkpoint writer's)."""
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, old)


class _HalfWriter:
    """A file whose write() puts half of the bytes on disk, then fails with ``exc``."""

    def __init__(self, f, exc: BaseException) -> None:
        self._f, self._exc = f, exc

    def write(self, b: bytes) -> int:
        self._f.write(b[: len(b) // 2])
        self._f.flush()
        raise self._exc

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> "_HalfWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _ckpt(epoch: int, n: int) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {"format": FORMAT, "model": {"w": torch.randn(n, generator=g)}, "epoch": epoch, "config": {"a": 1}}


FAULTS = ["write: half the bytes, then ENOSPC", "write: half the bytes, then KeyboardInterrupt",
          "fsync: EIO", "rename: EIO", "kernel file size limit (EFBIG)"]


@pytest.mark.parametrize("fault", FAULTS)
def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fault: str) -> None:
    old = _ckpt(1, 1000)
    save_checkpoint(old, tmp_path / "best.pt")
    new = _ckpt(2, 200_000)  # ~800 KB: the half-write really leaves a partial file on disk
    expect: type[BaseException] = CheckpointError
    limit = contextlib.nullcontext()
    if fault.startswith("write"):
        exc = KeyboardInterrupt() if "Keyboard" in fault else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        expect = KeyboardInterrupt if "Keyboard" in fault else CheckpointError
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfWriter(real_fdopen(fd, *a, **k), exc))
    elif fault.startswith("fsync"):
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    elif fault.startswith("rename"):
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    else:
        limit = file_size_limit(300_000)
    with pytest.raises(expect) as e, limit:
        save_checkpoint(new, tmp_path / "best.pt")
    monkeypatch.undo()
    if expect is CheckpointError:
        assert "best.pt: could not save the checkpoint" in str(e.value) and "previous one is kept" in str(e.value)
    assert differences(load_checkpoint(tmp_path / "best.pt"), old) == []
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]  # no temp file left behind
    save_checkpoint(new, tmp_path / "best.pt")  # and the next save works
    assert differences(load_checkpoint(tmp_path / "best.pt"), new) == []


def test_damaged_checkpoint_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_checkpoint(_ckpt(1, 100_000), tmp_path / "best.pt")
    with open(tmp_path / "best.pt", "r+b") as f:  # what a non-atomic writer leaves after a crash
        f.truncate(os.path.getsize(tmp_path / "best.pt") // 2)
    with pytest.raises(CheckpointError, match="best.pt: unreadable checkpoint"):
        load_checkpoint(tmp_path / "best.pt")
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.pt: unreadable checkpoint" in err[0]


def test_taking_the_lock_clears_what_a_killed_save_left(tmp_path: Path) -> None:
    """kill -9 inside atomic_write_bytes leaves its temp file; the next run on the folder removes it."""
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(_ckpt(1, 10), run / "last.pt")
    host = fsutil.temp_name("x").split(fsutil.TMP_MARK)[1].split("-")[0]
    dead = 999_999_999  # no such pid: the killed owner
    left = [f"{n}{fsutil.TMP_MARK}{host}-{dead}-0a1b2c3d" for n in ("last.pt", "best.pt", "config.yaml",
                                                                     "metrics.csv", "accuracy.png")]
    kept = ["notes.tmp", f"predictions.csv{fsutil.TMP_MARK}{host}-{os.getpid()}-abcdefgh", "last.pt"]  # live
    for name in left + kept[:2]:
        (run / name).write_bytes(b"half")
    (run / ".lock").write_text("999999999\n")  # the killed owner (no such pid)
    with RunLock(run):
        assert sorted(os.listdir(run)) == sorted([".lock", *kept])
    assert sorted(os.listdir(run)) == sorted(kept)


def test_full_disk_while_building_the_cache_keeps_the_old_cache(make_tiny_tree) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=8, n_val=2, n_test=0, size=32)
    ds = data.load_dataset(root, workers=1)
    before = np.array(ds.train.images)
    manifest = next((root / ".tinytransfer-cache").glob("*/manifest.json"))
    old_manifest = manifest.read_bytes()
    f = root / "train" / "n00000000" / "images" / "n00000000_1.JPEG"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # the cache is stale: rebuild
    with pytest.raises(OSError) as e, file_size_limit(20_000):  # the images file (16×32×32×3) does not fit
        data.load_dataset(root, workers=1)
    assert e.value.errno == errno.EFBIG
    assert manifest.read_bytes() == old_manifest  # the old commit record, untouched (and now stale)
    assert not [p.name for p in manifest.parent.iterdir() if ".tmp-" in p.name]
    again = data.load_dataset(root, workers=1)  # space is back: rebuilt, same pixels
    assert np.array_equal(np.asarray(again.train.images), before)


def _train(tree: Path, out: Path, *extra: str) -> int:
    return main(["train", "--recipe", "vgg16-paper", "--data", str(tree), "--out", str(out), "--quiet",
                 "--no-finish", "--seed", "3", *sets(["phases.*.epochs=1", *extra])])


def test_cli_full_disk_while_saving_is_one_line_and_keeps_last(run_tree: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    real = checkpoint.atomic_write_bytes
    saves: list[str] = []

    def second_last_hits_a_full_disk(path, payload: bytes) -> None:
        saves.append(Path(path).name)
        if saves.count("last.pt") == 2:
            with file_size_limit(len(payload) // 2):  # the kernel stops the write half-way
                return real(path, payload)
        return real(path, payload)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", second_last_hits_a_full_disk)
    out = tmp_path / "run"
    with ignore_sigxfsz():  # checkpoints are written on a background thread (asyncsave)
        assert _train(run_tree, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt: could not save the checkpoint (File too large)" in err[0], err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the previous last.pt, whole
    assert len(rows(out)) == 2  # epoch 2's row is there; a resume drops it and runs epoch 2 again
    assert not [p.name for p in out.iterdir() if fsutil.TMP_MARK in p.name]
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet", "--no-finish"]) == 0
    assert [r["epoch"] for r in rows(out)] == ["1", "2", "3"]


def test_cli_full_disk_while_building_the_cache_is_one_line(make_tiny_tree, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    tree = make_tiny_tree(n_classes=3, train_per_class=16, n_val=6, n_test=0, size=32, n_odd_size=0)
    with file_size_limit(64_000):  # config.yaml fits; the decoded train images (147 KB) do not
        rc = _train(tree, tmp_path / "run")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "File too large" in err[0], err


@pytest.mark.parametrize("partial", ["1,", "1", "2,1"], ids=["empty-epoch", "no-epoch", "truncated-row"])
def test_resume_survives_a_metrics_row_cut_by_a_kill(tmp_path: Path, partial: str) -> None:
    """kill -9 inside MetricsWriter.append (epoch 2's row) leaves part of a line; last.pt is still at epoch 1."""
    from tinytransfer.runs.metricsfile import MetricsWriter

    w = MetricsWriter(tmp_path / "metrics.csv")
    w.append({"phase": 1, "epoch": 1, "step": 6, "lr": 0.1, "train_loss": 1.0})
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write(partial)
    w.truncate_after(1)
    assert [r["epoch"] for r in rows(tmp_path)] == ["1"]
    w.append({"phase": 1, "epoch": 2, "step": 12, "lr": 0.1, "train_loss": 0.9})
    assert [r["epoch"] for r in rows(tmp_path)] == ["1", "2"]
