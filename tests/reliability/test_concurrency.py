"""Two writers of one run folder, or of one data cache: the run lock and the cache's commit protocol."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinytransfer.data import cache, decode
from tinytransfer.data import dataset as data
from tinytransfer.fsutil import process_start_time
from tinytransfer.runs.checkpoint import CheckpointError
from tinytransfer.runs.runfolder import RunLock


@pytest.fixture
def other_process():
    """A live process that is not us (the owner of a lock in these tests)."""
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_live_owner_is_refused_by_pid(tmp_path: Path, other_process: subprocess.Popen) -> None:
    pid = other_process.pid
    for content in (f"{pid}\n{process_start_time(pid)}\n", f"{pid}\n"):  # with its start time; an older lock without
        (tmp_path / ".lock").write_text(content)
        with pytest.raises(CheckpointError, match=rf"another run \(pid {pid}\) is writing to this folder"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / ".lock").read_text() == content  # the owner's lock is left alone


def test_stale_locks_are_taken_over(tmp_path: Path, other_process: subprocess.Popen,
                                    caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    reused = f"{other_process.pid}\n{int(process_start_time(other_process.pid)) - 1}\n"  # same pid, another process
    for content in (f"{dead.pid}\n", reused):
        (tmp_path / ".lock").write_text(content)
        with RunLock(tmp_path) as lock:
            assert lock.held and (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
        assert not (tmp_path / ".lock").exists()
    assert sum("removing stale lock" in r.getMessage() for r in caplog.records) == 2


def test_a_lock_being_written_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text("")  # O_EXCL-created this instant; the owner has not written its pid yet
    with pytest.raises(CheckpointError, match="another run is starting"):
        RunLock(tmp_path).acquire()


def _build(root: str, out: str) -> None:
    ds = data.load_dataset(root, workers=1)
    np.save(out, np.asarray(ds.train.images))


def test_two_processes_building_one_cache_end_with_one_valid_cache(make_tiny_tree, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/data/test_data.py races two threads; here two processes (other pids in the temp names) race."""
    root = make_tiny_tree(n_classes=3, train_per_class=12, n_val=6, n_test=0, size=32)
    ctx = multiprocessing.get_context("fork")
    both = ctx.Barrier(2, timeout=20)
    real = cache._write_manifest

    def commit_after_the_other(path: str, manifest: dict) -> None:
        both.wait()  # each has decoded and renamed its data files into place before either commits
        real(path, manifest)

    monkeypatch.setattr(cache, "_write_manifest", commit_after_the_other)  # inherited by the forked children
    procs = [ctx.Process(target=_build, args=(str(root), str(tmp_path / f"r{i}.npy"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    monkeypatch.undo()
    a, b = (np.load(tmp_path / f"r{i}.npy") for i in range(2))
    assert np.array_equal(a, b)
    folders = [m.parent for m in (root / ".tinytransfer-cache").glob("*/manifest.json")]
    assert len(folders) == 1
    assert not [p.name for p in folders[0].iterdir() if ".tmp-" in p.name]
    assert len(list(folders[0].glob("train-*.images.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_image", boom)  # the committed cache is valid and used as is
    assert np.array_equal(np.asarray(data.load_dataset(root, workers=1).train.images), a)
