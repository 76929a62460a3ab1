"""A full disk while the image cache is built is one line, never a hang or a "Bus error" (issue 20, item 1); the
cache sees a replaced image and decodes EXIF orientation (item 10)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytransfer.data import cache, decode, space
from tinytransfer.data.dataset import load_dataset
from tinytransfer.data.decode import DataError, decode_image

_Usage = namedtuple("_Usage", "total used free")


def _tree(make_tiny_tree, n: int = 4 * 64):
    """At least 256 train images (the pool's threshold), 8 px: quick to write and decode."""
    return make_tiny_tree(n_classes=4, train_per_class=n // 4, n_val=4, n_test=0, size=8, n_odd_size=0, n_gray=0)


def _in_thread(fn) -> BaseException | None:
    """Run ``fn`` in a thread and return what it raised; a hang (the bug) fails the test instead of hanging it."""
    box: list = []

    def body() -> None:
        try:
            fn()
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(120)  # a guard against the old hang, not a timing: the build takes well under a second
    assert not t.is_alive(), "the cache build hangs"
    return box[0]


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".tinytransfer-cache").rglob("*") if p.is_file()
                  and p.name != ".building")


def test_too_little_space_fails_before_decoding_with_one_line(make_tiny_tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=4, n_val=2, n_test=0, size=16)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: _Usage(10 << 20, 10 << 20, 300_000))
    monkeypatch.setattr(decode, "decode_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(DataError) as e:
        load_dataset(root, workers=1)
    msg = str(e.value)
    assert "\n" not in msg and "needs 1.1 MB, 0.3 MB free at" in msg and ".tinytransfer-cache" in msg
    assert _leftovers(root) == []


def test_image_size_10000_fails_the_same_clean_way(make_tiny_tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=4, n_val=2, n_test=0, size=16)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: _Usage(1 << 40, 1 << 39, 1 << 30))  # 1 GiB free
    with pytest.raises(DataError, match=r"needs 3,001 MB, 1,074 MB free at") as e:
        load_dataset(root, workers=1, image_size=10000)  # 10 images × 300 MB
    assert "data.image_size" in str(e.value)
    assert _leftovers(root) == []


def test_preallocation_failure_is_the_same_error(make_tiny_tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills between the check and the allocation (another process took the space)."""
    root = make_tiny_tree(n_classes=2, train_per_class=4, n_val=2, n_test=0, size=16)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(space.os, "posix_fallocate", full, raising=False)
    with pytest.raises(DataError, match="not enough disk space for the image cache: needs"):
        load_dataset(root, workers=1)
    assert _leftovers(root) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_enospc_while_writing_rows_is_one_line_not_a_bus_error(make_tiny_tree, monkeypatch: pytest.MonkeyPatch,
                                                               workers: int) -> None:
    """Where the file system cannot preallocate, rows are written with pwrite: ENOSPC (here from a worker process
    when workers=2) is an error, where a write through a memory map was a SIGBUS."""
    root = _tree(make_tiny_tree)
    monkeypatch.setattr(cache, "reserve", lambda path: None, raising=False)  # no preallocation on this file system

    def full(fd: int, data, pos: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decode.os, "pwrite", full)  # inherited by the forked workers
    err = _in_thread(lambda: load_dataset(root, workers=workers))
    assert isinstance(err, DataError) and "not enough disk space for the image cache" in str(err)
    assert _leftovers(root) == []


def test_a_killed_worker_is_an_error_not_a_hang(make_tiny_tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(make_tiny_tree)
    parent = os.getpid()
    real = decode.decode_image

    def killed(path: str, size: int) -> np.ndarray:
        if os.getpid() != parent and path.endswith("_5.JPEG"):
            os.kill(os.getpid(), signal.SIGKILL)  # what SIGBUS on a full disk did to a worker
        return real(path, size)

    monkeypatch.setattr(decode, "decode_image", killed)
    err = _in_thread(lambda: load_dataset(root, workers=2))
    assert isinstance(err, DataError) and "worker process died" in str(err)
    assert _leftovers(root) == []
    monkeypatch.setattr(decode, "decode_image", real)
    assert len(load_dataset(root, workers=2).train) == 256  # and the next build works


def test_leftover_files_no_manifest_names_are_removed_before_a_build(tiny_tree: Path) -> None:
    ds = load_dataset(tiny_tree, workers=1)
    folder = next((tiny_tree / ".tinytransfer-cache").iterdir())
    assert len(ds.train)
    # a build killed after renaming a split into place, and one killed mid-write (a temp of a dead pid on another
    # host: clean_stale_temps keeps it a day)
    (folder / "manifest.json").unlink()
    (folder / "val-0123456789abcdef.images.npy").write_bytes(b"x" * 1000)
    (folder / "train-0123456789abcdef.images.npy.tmp-otherhost-1-abcd").write_bytes(b"x" * 1000)
    keep = folder / "notes.txt"
    keep.write_text("not ours")
    load_dataset(tiny_tree, workers=1)
    names = {p.name for p in folder.iterdir()}
    assert "val-0123456789abcdef.images.npy" not in names
    assert not [n for n in names if ".tmp-" in n]
    assert "notes.txt" in names and "manifest.json" in names
    assert len([n for n in names if n.startswith("train-")]) == 3  # images, labels, files of the one key


def test_leftovers_are_kept_while_another_build_runs(tiny_tree: Path) -> None:
    import fcntl

    load_dataset(tiny_tree, workers=1)
    folder = next((tiny_tree / ".tinytransfer-cache").iterdir())
    (folder / "manifest.json").unlink()
    other = folder / "train-0123456789abcdef.images.npy.tmp-otherhost-1-abcd"  # another machine's build, running
    other.write_bytes(b"x")
    with open(folder / ".building", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # that build holds the folder
        load_dataset(tiny_tree, workers=1)
    assert other.exists()
    load_dataset(tiny_tree, workers=1)  # no build here: the cache is valid; nothing removed
    assert other.exists()
    (folder / "manifest.json").unlink()
    load_dataset(tiny_tree, workers=1)  # a build with the folder to itself removes it
    assert not other.exists()


def test_full_tmpfs_is_one_line(make_tiny_tree, tmp_path: Path) -> None:
    """The real thing where this machine lets us mount a 2 MB tmpfs (root): 264 images of 64 px need 3.2 MB (+1 MB headroom)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = make_tiny_tree(n_classes=4, train_per_class=65, n_val=4, n_test=0, size=64, n_odd_size=0)
        err = _in_thread(lambda: load_dataset(root, workers=2, cache_dir=str(mnt)))
        assert isinstance(err, DataError) and "needs 4.3 MB" in str(err) and str(mnt) in str(err)
        assert not [p for p in mnt.rglob("*") if p.is_file() and p.name != ".building"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- item 10 ------------------------------------------------------------------------------------------------------


def test_replaced_image_with_restored_mtime_is_seen(make_tiny_tree) -> None:
    """Same size, same mtime (cp -p, rsync -a, tar): the inode and change time give it away."""
    root = make_tiny_tree(n_classes=2, train_per_class=3, n_val=2, n_test=0, size=8, n_odd_size=0, n_gray=0)
    target = root / "train" / "n00000000" / "images" / "n00000000_0.JPEG"
    Image.fromarray(np.full((8, 8, 3), 10, np.uint8)).save(target, "BMP")  # BMP: the size depends on w×h only
    before = np.asarray(load_dataset(root, workers=1).train.images[0]).copy()
    st = target.stat()
    new = root / "replacement.tmp"
    Image.fromarray(np.full((8, 8, 3), 240, np.uint8)).save(new, "BMP")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, target)
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    after = np.asarray(load_dataset(root, workers=1).train.images[0])
    assert before.mean() < 20 and after.mean() > 230


def test_exif_orientation_is_applied_by_the_one_decoder(tmp_path: Path) -> None:
    """A phone photo stored landscape with orientation 6 (rotate 90° clockwise to view) decodes upright."""
    a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    a[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(a).save(path, exif=exif.tobytes())
    up = decode_image(path, 20)  # viewed: 20 wide, 40 high, red on top; squashed to 20×20
    assert up[2, 10, 0] > 200 and up[17, 10, 0] < 50
    assert decode.probe_image(path) == (20, 40)
    plain = tmp_path / "plain.png"
    Image.fromarray(a).save(plain)
    side = decode_image(plain, 20)
    assert side[10, 2, 0] > 200 and side[10, 17, 0] < 50
