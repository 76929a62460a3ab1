"""data.py: dataset reading, the decode-once cache, DeviceLoader, the demo dataset, download and bad input."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import shutil
import socket
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinytransfer.data import cache, checksums, decode, sources
from tinytransfer.data import dataset as data
from tinytransfer.data.dataset import DataError, Split, load_dataset
from tinytransfer.data.loader import DeviceLoader

CACHE = ".tinytransfer-cache"


def _manifests(root: Path) -> list[Path]:
    return sorted((root / CACHE).glob("*/manifest.json"))


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap decode.decode_image so that a test can count the decodes (workers=1 runs in-process)."""
    calls: list[str] = []
    real = decode.decode_image

    def counting(path: str, size: int) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(decode, "decode_image", counting)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# Reading the layouts
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_layout_labels_names_and_splits(tiny_tree: Path) -> None:
    ds = load_dataset(tiny_tree, workers=1)
    assert ds.classes == [f"n{k:08d}" for k in range(4)]
    assert ds.names == ["class0", "class1", "class2", "class3"]  # first comma-separated name
    assert ds.image_size == 64
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 8, 5)
    assert ds.train.images.shape == (48, 64, 64, 3) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64
    for f, y in zip(ds.train.files, ds.train.labels):
        assert f.startswith(f"train/{ds.classes[y]}/images/")
    assert ds.val.labels.tolist() == [int(f.split("_")[1].split(".")[0]) % 4 for f in ds.val.files]
    assert (ds.test.labels == -1).all()
    # the pixels are the files' pixels
    i = ds.train.files.index("train/n00000003/images/n00000003_5.JPEG")
    with Image.open(tiny_tree / ds.train.files[i]) as im:
        ref = np.asarray(im.convert("RGB"))
    assert np.array_equal(ds.train.images[i], ref)
    text = data.summary(ds)
    assert "4 classes" in text and "train: 48" in text and "n00000001 (class1)" in text


def test_labels_follow_wnids_order_and_names_fall_back(tiny_tree: Path) -> None:
    wnids = (tiny_tree / "wnids.txt").read_text().split()
    (tiny_tree / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (tiny_tree / "words.txt").write_text("n00000002\tonly two, named\n")
    ds = load_dataset(tiny_tree, workers=1)
    assert ds.classes == list(reversed(wnids))
    assert ds.names == ["n00000003", "only two", "n00000001", "n00000000"]
    for f, y in zip(ds.train.files + ds.val.files, np.concatenate([ds.train.labels, ds.val.labels])):
        if f.startswith("train/"):
            assert f.split("/")[1] == ds.classes[y]
    assert ds.train.labels[0] == 0 and ds.train.files[0].startswith("train/n00000003/")


def test_grayscale_is_replicated_and_other_sizes_resized(tiny_tree: Path) -> None:
    ds = load_dataset(tiny_tree, workers=1)
    i = ds.train.files.index("train/n00000000/images/n00000000_0.JPEG")  # grayscale
    with Image.open(tiny_tree / ds.train.files[i]) as im:
        gray = np.asarray(im)
    assert gray.ndim == 2
    img = ds.train.images[i]
    assert np.array_equal(img[..., 0], gray) and np.array_equal(img[..., 1], gray) and np.array_equal(img[..., 2], gray)
    j = ds.train.files.index("train/n00000001/images/n00000001_0.JPEG")  # 80×56
    with Image.open(tiny_tree / ds.train.files[j]) as src:
        assert src.size == (80, 56)
        ref = np.asarray(src.convert("RGB").resize((64, 64), Image.BILINEAR))
    assert np.array_equal(ds.train.images[j], ref)


def test_explicit_image_size(make_tiny_tree) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=3, n_val=2, n_test=0, n_gray=1)
    ds = load_dataset(root, image_size=32, workers=1)
    assert ds.image_size == 32 and ds.train.images.shape == (6, 32, 32, 3) and ds.test is None


def test_unusual_modes_are_converted(tmp_path: Path) -> None:
    folder = tmp_path / "ds" / "modes"
    folder.mkdir(parents=True)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(folder / "i16.png")  # 16-bit gray
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # red in CMYK
    Image.new("RGB", (8, 8), (10, 200, 30)).convert("P", palette=Image.ADAPTIVE).save(folder / "pal.png")
    Image.new("LA", (8, 8), (100, 255)).save(folder / "la.png")
    (tmp_path / "ds" / "other").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ds" / "other" / "a.png")
    ds = load_dataset(tmp_path / "ds", val_mode="holdout", holdout_per_class=0, workers=1)
    assert ds.classes == ["modes", "other"]
    by = {Path(f).name: img for f, img in zip(ds.train.files, ds.train.images)}
    assert by["rgba.png"][0, 0].tolist() == [255, 0, 0] and by["rgba.png"][7, 7].tolist() == [255, 255, 255]
    assert by["i16.png"][3, 3].tolist() == [255, 255, 255]
    r, g, b = by["cmyk.jpg"][4, 4].tolist()
    assert r > 200 and g < 60 and b < 60
    assert by["pal.png"][2, 2].tolist() == [10, 200, 30]
    assert by["la.png"][2, 2].tolist() == [100, 100, 100]


def test_holdout_split_is_deterministic_and_disjoint(tiny_tree: Path, tmp_path: Path) -> None:
    a = load_dataset(tiny_tree, val_mode="holdout", holdout_per_class=3, workers=1)
    b = load_dataset(tiny_tree, val_mode="holdout", holdout_per_class=3, workers=1, cache_dir=str(tmp_path / "c2"))
    assert a.val.files == b.val.files and a.train.files == b.train.files
    assert np.array_equal(a.val.images, b.val.images)
    assert (len(a.train), len(a.val)) == (36, 12)
    assert not set(a.train.files) & set(a.val.files)
    assert all(f.startswith("train/") for f in a.val.files)  # official val/ unused
    assert np.bincount(a.val.labels).tolist() == [3, 3, 3, 3]
    c = load_dataset(tiny_tree, val_mode="holdout", holdout_per_class=3, split_seed=1, workers=1)
    assert c.val.files != a.val.files and set(c.train.files) | set(c.val.files) == set(a.train.files) | set(a.val.files)
    with pytest.raises(DataError, match="cannot hold out 12"):
        load_dataset(tiny_tree, val_mode="holdout", holdout_per_class=12, workers=1)


def _write_class_folders(base: Path, classes: list[str], n: int, size: int = 16) -> None:
    for k, c in enumerate(classes):
        (base / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size, size), (k * 60, i * 10, 0)).save(base / c / f"{i}.png")


def test_class_folder_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _write_class_folders(flat, ["dog", "cat", "ant"], 5)
    (flat / "cat" / ".DS_Store").write_text("junk")  # dot files are ignored
    ds = load_dataset(flat, holdout_per_class=2, workers=1)
    assert ds.classes == ["ant", "cat", "dog"] and ds.names == ds.classes and ds.image_size == 16
    assert (len(ds.train), len(ds.val), ds.test) == (9, 6, None)
    assert not set(ds.train.files) & set(ds.val.files)
    nested = tmp_path / "nested"
    _write_class_folders(nested / "train", ["a", "b"], 4)
    _write_class_folders(nested / "val", ["b"], 2)
    (nested / "test").mkdir()
    Image.new("RGB", (16, 16)).save(nested / "test" / "x.png")
    ds = load_dataset(nested, workers=1)
    assert ds.classes == ["a", "b"] and (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 1)
    assert ds.val.labels.tolist() == [1, 1] and ds.test.labels.tolist() == [-1]
    ds = load_dataset(nested, val_mode="holdout", holdout_per_class=1, workers=1)
    assert (len(ds.train), len(ds.val)) == (6, 2)


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------


def test_cache_is_reused_without_decoding(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset(tiny_tree, workers=1)
    assert len(_manifests(tiny_tree)) == 1

    def boom(path: str, size: int) -> np.ndarray:
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_image", boom)
    monkeypatch.setattr(decode, "probe_image", boom)
    again = load_dataset(tiny_tree, workers=1)
    assert isinstance(again.train.images, np.memmap) and again.train.images.mode == "r"
    assert np.array_equal(first.train.images, again.train.images) and again.train.files == first.train.files


def test_cache_invalidated_by_mtime_and_new_file(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset(tiny_tree, workers=1)
    calls = _count_decodes(monkeypatch)
    f = tiny_tree / "train" / "n00000002" / "images" / "n00000002_3.JPEG"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ds = load_dataset(tiny_tree, workers=1)
    assert len(calls) == 61 and len(ds.train) == 48
    calls.clear()
    shutil.copy(f, f.with_name("n00000002_extra.JPEG"))
    ds = load_dataset(tiny_tree, workers=1)
    assert len(calls) == 62 and len(ds.train) == 49
    calls.clear()
    load_dataset(tiny_tree, workers=1)
    assert calls == []
    # stale data files of the older keys are gone; one manifest a setting
    names = os.listdir(_manifests(tiny_tree)[0].parent)
    assert len([n for n in names if n.endswith(".images.npy")]) == 3


def test_interrupted_build_leaves_no_valid_cache(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = decode.decode_image
    calls = []

    def dies_midway(path: str, size: int) -> np.ndarray:
        calls.append(path)
        if len(calls) == 52:  # in the val split, after train's files are in place
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(decode, "decode_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(tiny_tree, workers=1)
    assert _manifests(tiny_tree) == []
    leftovers = [p.name for p in (tiny_tree / CACHE).rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    # the writer of the manifest dying is no better
    monkeypatch.setattr(decode, "decode_image", real)

    def no_manifest(path: str, manifest: dict) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache, "_write_manifest", no_manifest)
    with pytest.raises(OSError):
        load_dataset(tiny_tree, workers=1)
    assert _manifests(tiny_tree) == []
    monkeypatch.undo()
    # a build killed hard (no cleanup) leaves its temp files; the next build removes those of dead processes
    folder = next(p for p in (tiny_tree / CACHE).iterdir() if p.is_dir())
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum())[:24] or "host"
    dead = folder / f"train-0123456789abcdef.images.npy.tmp-{host}-{2**22 + 12345}-deadbeef"
    dead.write_bytes(b"half a file")
    calls = _count_decodes(monkeypatch)
    ds = load_dataset(tiny_tree, workers=1)
    assert len(calls) == 61 and len(ds.train) == 48 and len(_manifests(tiny_tree)) == 1
    assert not dead.exists()


def test_damaged_cache_is_rebuilt(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset(tiny_tree, workers=1)
    npy = next(_manifests(tiny_tree)[0].parent.glob("train-*.images.npy"))
    with open(npy, "r+b") as f:
        f.truncate(1000)
    calls = _count_decodes(monkeypatch)
    ds = load_dataset(tiny_tree, workers=1)
    assert len(calls) == 61 and ds.train.images.shape == (48, 64, 64, 3)


def test_cache_overwritten_in_place_at_same_size_and_mtime_is_rebuilt(
        tiny_tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first = load_dataset(tiny_tree, workers=1)
    right = np.array(first.train.images)
    del first
    npy = next(_manifests(tiny_tree)[0].parent.glob("train-*.images.npy"))
    st = npy.stat()
    with open(npy, "r+b") as f:  # same size, header intact: pixels of some images zeroed
        f.seek(st.st_size // 2)
        f.write(bytes(4096))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert npy.stat().st_size == st.st_size and npy.stat().st_mtime_ns == st.st_mtime_ns
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tinytransfer.data.cache"):
        ds = load_dataset(tiny_tree, workers=1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("damaged" in m and npy.name in m and "checksum" in m for m in warned), warned
    assert len(calls) == 61 and np.array_equal(ds.train.images, right)
    calls.clear()
    assert np.array_equal(load_dataset(tiny_tree, workers=1).train.images, right) and calls == []


def test_damaged_labels_or_file_list_are_caught(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset(tiny_tree, workers=1)
    folder = _manifests(tiny_tree)[0].parent
    labels = next(folder.glob("val-*.labels.npy"))
    b = bytearray(labels.read_bytes())
    b[-8] ^= 1  # one label changed, same size
    labels.write_bytes(bytes(b))
    calls = _count_decodes(monkeypatch)
    ds = load_dataset(tiny_tree, workers=1)
    assert len(calls) == 61 and ds.val.labels.tolist() == [i % 4 for i in range(8)]


def test_large_cache_checks_a_sample_and_verify_cache_checks_all(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cache, "CHUNK_BYTES", 4096)  # 48×64×64×3 bytes + the .npy header → 145 chunks
    monkeypatch.setattr(checksums, "CHUNK_BYTES", 4096)  # the build hashes with the same chunk size
    monkeypatch.setattr(cache, "FULL_CHECK_BYTES", 0)  # every load samples
    monkeypatch.setattr(cache, "_SAMPLED_CHUNKS", 2)
    load_dataset(tiny_tree, workers=1)
    from tinytransfer.cli import main

    assert main(["verify-cache", str(tiny_tree)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(" ok " in line for line in out) and out[0].startswith("train")
    assert "145 chunks checked" in out[0]
    folder = _manifests(tiny_tree)[0].parent
    npy = next(folder.glob("train-*.images.npy"))
    size = npy.stat().st_size
    with open(npy, "r+b") as f:
        f.seek(4096 * 70 + 10)  # a middle chunk: a sampled load may miss it, verify-cache may not
        f.write(b"\xff" * 8)
    checks = cache.verify_cache(folder)  # the cache folder itself works too
    assert [c.ok for c in checks] == [False, True, True]
    assert "DAMAGED" in checks[0].line and npy.name in checks[0].line and "(chunk 71)" in checks[0].line
    assert main(["verify-cache", str(tiny_tree / CACHE)]) == 1
    capsys.readouterr()
    with open(npy, "r+b") as f:  # the last chunk of each split is always checked
        f.seek(size - 5)
        f.write(b"\xff" * 5)
    calls = _count_decodes(monkeypatch)
    load_dataset(tiny_tree, workers=1)
    assert len(calls) == 61
    assert main(["verify-cache", str(tiny_tree)]) == 0
    assert main(["verify-cache", str(tiny_tree / "train")]) == 2  # no cache there: a one-line error
    assert "no image cache found" in capsys.readouterr().err


def test_build_progress_is_log_lines_away_from_a_terminal(make_tiny_tree, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=3, n_val=2, n_test=0, size=16)
    monkeypatch.setattr(decode, "_LOG_EVERY_S", 0.0)  # a line at every update
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="tinytransfer"):
        load_dataset(root, workers=1)
    lines = [r.getMessage() for r in caplog.records]
    assert "decode train: 6/6 img (100 %" in " ".join(lines) and "checksum train: 1/1 chunk" in " ".join(lines)
    assert not any("\r" in line for line in lines)


def test_two_builders_at_once_end_with_one_valid_cache(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results: list[object] = []
    both_decoded = threading.Barrier(2, timeout=10)
    real_write = cache._write_manifest

    def write_after_the_other(path: str, manifest: dict) -> None:
        both_decoded.wait()  # both builders have written (and replaced) their data files before either commits
        real_write(path, manifest)

    monkeypatch.setattr(cache, "_write_manifest", write_after_the_other)

    def build() -> None:
        try:
            results.append(load_dataset(tiny_tree, workers=1))
        except Exception as e:  # pragma: no cover - reported below
            results.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, data.Dataset) for r in results), results
    assert np.array_equal(results[0].train.images, results[1].train.images)
    assert len(_manifests(tiny_tree)) == 1
    assert not [p for p in (tiny_tree / CACHE).rglob("*") if ".tmp-" in p.name]
    load_dataset(tiny_tree, workers=1)


def test_worker_pool_matches_in_process_decoding(make_tiny_tree, tmp_path: Path) -> None:
    root = make_tiny_tree(n_classes=2, train_per_class=135, n_val=4, n_test=0, size=16, odd_size=(20, 12))
    pooled = load_dataset(root, workers=2)
    single = load_dataset(root, workers=1, cache_dir=str(tmp_path / "single"))
    assert len(pooled.train) == 270 and pooled.image_size == 16
    assert np.array_equal(pooled.train.images, single.train.images)
    assert pooled.train.files == single.train.files


def test_read_only_root_falls_back_to_user_cache(tiny_tree: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tiny_tree / CACHE).write_text("not a folder")  # stands in for a read-only dataset folder (tests run as root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ds = load_dataset(tiny_tree, workers=1)
    assert len(ds.train) == 48
    assert list((tmp_path / "xdg" / "tinytransfer").glob("*/*/manifest.json"))
    custom = load_dataset(tiny_tree, workers=1, cache_dir=str(tmp_path / "mine"))
    assert list((tmp_path / "mine").glob("*/manifest.json")) and len(custom.train) == 48


# ---------------------------------------------------------------------------------------------------------------
# DeviceLoader
# ---------------------------------------------------------------------------------------------------------------


def _index_split(n: int, size: int = 4) -> Split:
    """Images whose pixels hold their index (mod 256) and labels = index, so alignment can be checked."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    images[:, 0, 0, 1] = np.arange(n) // 256
    return Split(images=images, labels=np.arange(n, dtype=np.int64), files=[f"{i}.png" for i in range(n)])


def _seen(loader: DeviceLoader) -> list[int]:
    out: list[int] = []
    for x, y in loader:
        idx = (x[:, 0, 1, 1] + 256 * x[:, 1, 0, 0]).long()  # the index written into the pixels
        assert torch.equal(idx, y)  # images and labels stay aligned
        out += y.tolist()
    return out


def test_loader_batches_dtype_shape_and_partial_last_batch() -> None:
    split = _index_split(10)
    loader = DeviceLoader(split, 4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
    assert y.dtype == torch.int64 and _seen(loader) == list(range(10))
    dropped = DeviceLoader(split, 4, drop_last=True)
    assert len(dropped) == 2 and sum(len(y) for _, y in dropped) == 8
    cl = next(iter(DeviceLoader(split, 4, channels_last=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last) and cl.shape == (4, 3, 4, 4)
    assert len(DeviceLoader(_index_split(0), 4)) == 0 and list(DeviceLoader(_index_split(0), 4)) == []


def test_loader_same_seed_same_order_and_epochs_differ() -> None:
    split = _index_split(50)
    a = DeviceLoader(split, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    b = DeviceLoader(split, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    ea1, eb1 = _seen(a), _seen(b)
    assert ea1 == eb1 and sorted(ea1) == list(range(50)) and ea1 != list(range(50))
    ea2 = _seen(a)
    assert ea2 != ea1 and sorted(ea2) == list(range(50))  # the generator's state carries on
    c = DeviceLoader(split, 8, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert _seen(c) != ea1


def _batches(loader: DeviceLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]  # labels = image indices (see _index_split)


def test_loader_shards_are_contiguous_shares_of_the_global_batch() -> None:
    split = _index_split(23)
    # evaluation: every sample exactly once across ranks; the short last batch split as evenly as possible
    shards = [_seen(DeviceLoader(split, 4, rank=r, world_size=2)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(23))
    assert (len(shards[0]), len(shards[1])) == (12, 11)
    # training: 2 ranks × 4 with the same seed take, step by step, the halves of 1 process × 8's batches
    for n in (23, 24, 17):  # 17 = 2·8 + 1: the last image is folded into the last batch
        split = _index_split(n)
        one = DeviceLoader(split, 8, shuffle=True, generator=torch.Generator().manual_seed(0))
        two = [DeviceLoader(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0), rank=r,
                            world_size=2) for r in range(2)]
        for _ in range(2):  # two epochs: the generators carry on alike
            ref, b0, b1 = _batches(one), _batches(two[0]), _batches(two[1])
            assert len(ref) == len(b0) == len(b1) == len(one) == len(two[0]) == len(two[1])
            assert [a + b for a, b in zip(b0, b1)] == ref  # concatenated in rank order: the 1-process batch
            s0, s1 = sum(b0, []), sum(b1, [])
            assert not set(s0) & set(s1) and sorted(s0 + s1) == list(range(n))  # disjoint, cover the epoch
            assert min(len(b) for b in b0 + b1) >= 2  # no rank ever trains on one image
    folded = [DeviceLoader(_index_split(17), 4, shuffle=True, world_size=2, rank=r) for r in range(2)]
    assert [[len(b) for b in _batches(ld)] for ld in folded] == [[4, 5], [4, 4]]  # 8 + 1 split 5 / 4
    with pytest.raises(ValueError):
        DeviceLoader(split, 4, rank=2, world_size=2)


def test_training_never_yields_a_batch_of_one_and_evaluation_keeps_every_image() -> None:
    split = _index_split(65)
    train = DeviceLoader(split, 64, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(train) == 1 and [len(b) for b in _batches(train)] == [65]  # folded: 64 + 1
    assert [len(b) for b in _batches(DeviceLoader(_index_split(129), 64, shuffle=True))] == [64, 65]
    assert [len(b) for b in _batches(DeviceLoader(_index_split(66), 64, shuffle=True))] == [64, 2]
    assert [len(b) for b in _batches(DeviceLoader(split, 64))] == [64, 1]  # evaluation: every image, as it is
    assert [len(b) for b in _batches(DeviceLoader(split, 64, shuffle=True, drop_last=True))] == [64]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8), torch.nn.BatchNorm1d(8)).train()
    for x, _ in train:
        model(x)  # a batch of one would raise "Expected more than 1 value per channel when training"


def test_streaming_from_the_host_cache_gives_the_same_batches(tiny_tree: Path) -> None:
    ds = load_dataset(tiny_tree, workers=1)  # train: 48 images of 64×64×3 = 0.59 MB, memory-mapped

    def transform(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return x + torch.rand(x.shape, generator=gen)  # consumes the augmentation stream

    def loader(**kw) -> DeviceLoader:
        return DeviceLoader(ds.train, 10, shuffle=True, generator=torch.Generator().manual_seed(5), transform=transform,
                            aug_generator=torch.Generator().manual_seed(6), **kw)

    resident = loader()
    streamed = loader(device_cache_gb=0.0005, prefetch=2)  # 0.5 MB < the split
    pre = loader(preload=True)
    assert (resident.mode, streamed.mode, pre.mode) == ("host", "stream", "resident")
    threads = []
    for _ in range(2):  # two epochs
        a, b, c = list(resident), list(streamed), list(pre)
        assert len(a) == len(b) == len(c) == 5 and [len(y) for _, y in b] == [10, 10, 10, 10, 8]
        for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, xc) and torch.equal(ya, yc)
    # the background thread ends with the epoch, or when the consumer stops early
    it = iter(streamed)
    next(it)
    threads = [t for t in threading.enumerate() if t.name == "tinytransfer-prefetch"]
    assert len(threads) == 1
    it.close()
    assert not threads[0].is_alive()


def test_loader_applies_transform_with_aug_generator_and_preload_matches() -> None:
    split = _index_split(12, size=6)
    seen_gens = []

    def transform(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 6, 6) and float(x.max()) <= 255
        seen_gens.append(gen)
        return x / 255.0 - 1.0

    g = torch.Generator().manual_seed(1)
    loader = DeviceLoader(split, 5, transform=transform, aug_generator=g, channels_last=True)
    xs = [x for x, _ in loader]
    assert len(seen_gens) == 3 and all(s is g for s in seen_gens)
    assert float(xs[0].max()) <= 0.0 and xs[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(xs[0][1, 0, 2, 2], torch.tensor(1 / 255.0 - 1.0))
    pre = DeviceLoader(split, 5, shuffle=True, generator=torch.Generator().manual_seed(2), preload=True)
    host = DeviceLoader(split, 5, shuffle=True, generator=torch.Generator().manual_seed(2), preload=False)
    for (xa, ya), (xb, yb) in zip(pre, host):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_over_a_cached_split(tiny_tree: Path) -> None:
    ds = load_dataset(tiny_tree, workers=1)
    loader = DeviceLoader(ds.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    total = 0
    for x, y in loader:
        assert x.shape[1:] == (3, 64, 64)
        total += len(y)
    assert total == 48


# ---------------------------------------------------------------------------------------------------------------
# Demo dataset
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sources.build_demo_dataset(tmp_path_factory.mktemp("demo") / "digits", seed=0)


def test_demo_dataset_layout_and_counts(demo_root: str) -> None:
    root = Path(demo_root)
    wnids = (root / "wnids.txt").read_text().split()
    assert wnids == [f"d{k:07d}" for k in range(10)]
    n_train = sum(len(list((root / "train" / w / "images").iterdir())) for w in wnids)
    n_val = len((root / "val" / "val_annotations.txt").read_text().splitlines())
    n_test = len(list((root / "test" / "images").iterdir()))
    assert n_train + n_val + n_test == 1797
    assert abs(n_train / 1797 - 0.60) < 0.02 and abs(n_val / 1797 - 0.25) < 0.02
    with Image.open(root / "val" / "images" / "val_0.JPEG") as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    mtime = (root / "wnids.txt").stat().st_mtime_ns
    assert sources.build_demo_dataset(root, seed=0) == demo_root  # idempotent: nothing rewritten
    assert (root / "wnids.txt").stat().st_mtime_ns == mtime


def test_demo_dataset_loads(demo_root: str) -> None:
    ds = load_dataset(demo_root, workers=1)
    assert ds.names == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797 and ds.image_size == 64
    counts = np.bincount(ds.train.labels, minlength=10)
    assert counts.min() >= 100  # stratified: every digit ~60 % of its ~180 images
    assert "10 classes" in data.summary(ds)


# ---------------------------------------------------------------------------------------------------------------
# Download and safe extraction
# ---------------------------------------------------------------------------------------------------------------


def _make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _dataset_zip(tmp_path: Path) -> Path:
    return _make_zip(tmp_path / "tiny-imagenet-200.zip", {
        "tiny-imagenet-200/wnids.txt": b"n1\n",
        "tiny-imagenet-200/train/n1/images/n1_0.JPEG": b"x" * 5000,
        "tiny-imagenet-200/words.txt": b"n1\tone\n",
    })


def test_download_file_url_and_plain_path_with_sha256(tmp_path: Path) -> None:
    z = _dataset_zip(tmp_path)
    digest = hashlib.sha256(z.read_bytes()).hexdigest()
    root = sources.download_tiny_imagenet(tmp_path / "d1", url=z.as_uri(), sha256=digest, size=z.stat().st_size)
    assert root == str(tmp_path / "d1" / "tiny-imagenet-200")
    assert (Path(root) / "train" / "n1" / "images" / "n1_0.JPEG").read_bytes() == b"x" * 5000
    assert sources.download_tiny_imagenet(tmp_path / "d1", url=z.as_uri()) == root  # idempotent
    # a plain path; a leftover partial download is resumed
    dest = tmp_path / "d2"
    dest.mkdir()
    (dest / "tiny-imagenet-200.zip.part").write_bytes(z.read_bytes()[:100])
    root2 = sources.download_tiny_imagenet(dest, url=str(z), sha256=digest)
    assert (Path(root2) / "wnids.txt").read_text() == "n1\n"
    assert not (dest / "tiny-imagenet-200.zip.part").exists()


def test_download_sha256_mismatch_keeps_bad_file_aside(tmp_path: Path) -> None:
    z = _dataset_zip(tmp_path)
    dest = tmp_path / "d"
    with pytest.raises(DataError, match="tiny-imagenet-200.zip.*sha256"):
        sources.download_tiny_imagenet(dest, url=str(z), sha256="0" * 64)
    assert (dest / "tiny-imagenet-200.zip.bad").exists()
    assert not (dest / "tiny-imagenet-200.zip").exists() and not (dest / "tiny-imagenet-200").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: list[str] = []
    honour_range = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        rng = self.headers.get("Range")
        body, status = self.payload, 200
        if rng:
            type(self).ranges.append(rng)
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {len(self.payload) - len(body)}-{len(self.payload) - 1}/"
                                              f"{len(self.payload)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_over_http_range(tmp_path: Path, honour_range: bool) -> None:
    z = _dataset_zip(tmp_path)
    _RangeHandler.payload, _RangeHandler.ranges, _RangeHandler.honour_range = z.read_bytes(), [], honour_range
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        dest = tmp_path / "d"
        dest.mkdir()
        (dest / "tiny-imagenet-200.zip.part").write_bytes(_RangeHandler.payload[:1234])
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny-imagenet-200.zip"
        root = sources.download_tiny_imagenet(dest, url=url, sha256=hashlib.sha256(_RangeHandler.payload).hexdigest())
    finally:
        server.shutdown()
        server.server_close()
    assert _RangeHandler.ranges == ["bytes=1234-"]  # asked to resume; a server that ignores it sends it all
    assert (dest / "tiny-imagenet-200.zip").read_bytes() == _RangeHandler.payload
    assert (Path(root) / "words.txt").read_text() == "n1\tone\n"


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/abs-evil.txt", "C:/evil.txt", "ok/../../evil.txt"])
def test_safe_extract_refuses_escaping_members(tmp_path: Path, evil: str) -> None:
    z = _make_zip(tmp_path / "bad.zip", {"ok/fine.txt": b"fine", evil: b"evil"})
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="refusing member"):
        sources.safe_extract(z, dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs-evil.txt").exists()
    assert not dest.exists() or list(dest.iterdir()) == []  # nothing written at all


def test_safe_extract_refuses_escaping_symlink(tmp_path: Path) -> None:
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/a.txt", b"a")
        info = zipfile.ZipInfo("top/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../outside")
    with pytest.raises(DataError, match="top/link.*symlink"):
        sources.safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(DataError, match="x.zip: not a readable zip"):
        sources.safe_extract(tmp_path / "x.zip", tmp_path / "out2")


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one-line DataError naming the file; or skipped and counted
# ---------------------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 3])


@pytest.mark.parametrize("problem", ["corrupt", "truncated", "not_image"])
def test_bad_image_names_the_file(tiny_tree: Path, problem: str) -> None:
    folder = tiny_tree / "train" / "n00000001" / "images"
    if problem == "corrupt":
        bad = folder / "n00000001_4.JPEG"
        bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    elif problem == "truncated":
        bad = folder / "n00000001_4.JPEG"
        _truncate(bad)
    else:
        bad = folder / "notes.txt"
        bad.write_text("not an image")
    with pytest.raises(DataError) as e:
        load_dataset(tiny_tree, workers=1)
    msg = str(e.value)
    assert bad.name in msg and "\n" not in msg
    assert _manifests(tiny_tree) == []


def test_skip_bad_images_logs_and_counts(tiny_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tiny_tree / "train" / "n00000001" / "images"
    _truncate(folder / "n00000001_4.JPEG")
    (folder / "readme.txt").write_text("hello")
    (tiny_tree / "val" / "images" / "val_2.JPEG").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="tinytransfer.data.dataset"):
        ds = load_dataset(tiny_tree, workers=1, skip_bad_images=True)
    assert (len(ds.train), len(ds.val)) == (47, 7) and len(ds.skipped) == 3
    assert "n00000001_4.JPEG" not in " ".join(ds.train.files) and "val/images/val_2.JPEG" not in ds.val.files
    assert any("skipped 3 bad images" in r.getMessage() and "readme.txt" in r.getMessage() for r in caplog.records)
    assert ds.train.images.shape == (47, 64, 64, 3)
    again = load_dataset(tiny_tree, workers=1, skip_bad_images=True)  # from the cache, still counted
    assert len(again.skipped) == 3 and again.train.files == ds.train.files
    with pytest.raises(DataError, match="readme.txt|val_2.JPEG|n00000001_4.JPEG"):
        load_dataset(tiny_tree, workers=1)  # the cache does not hide the problem when not skipping


def test_missing_val_annotations(tiny_tree: Path) -> None:
    (tiny_tree / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt"):
        load_dataset(tiny_tree, workers=1)
    ds = load_dataset(tiny_tree, workers=1, val_mode="holdout", holdout_per_class=2)  # val/ unused: fine
    assert len(ds.val) == 8


def test_unknown_wnid_in_val_annotations(tiny_tree: Path) -> None:
    ann = tiny_tree / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn77777777\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt line 9: wnid n77777777 \(for val_0.JPEG\)"):
        load_dataset(tiny_tree, workers=1)


def test_empty_class_folder(tiny_tree: Path) -> None:
    for f in (tiny_tree / "train" / "n00000002" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="n00000002.*empty class folder"):
        load_dataset(tiny_tree, workers=1)


def test_wnid_without_train_folder(tiny_tree: Path) -> None:
    shutil.rmtree(tiny_tree / "train" / "n00000003")
    with pytest.raises(DataError, match="n00000003.*no train folder"):
        load_dataset(tiny_tree, workers=1)


def test_unreadable_folder(tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = str(tiny_tree / "train" / "n00000001" / "images")
    real = os.scandir

    def scandir(path=".") -> object:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # chmod 000 does not stop root, who runs these tests
    with pytest.raises(DataError, match="n00000001/images: cannot read .*Permission denied"):
        load_dataset(tiny_tree, workers=1)


def test_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: not a dataset"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere: dataset folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_data_error_is_one_line() -> None:
    assert str(DataError("a\nb  c")) == "a b c"


def test_loader_pad_last_keeps_one_shape_and_labels_the_padding() -> None:
    from tinytransfer.data.loader import PAD_LABEL

    split = _index_split(10)
    for preload in (False, True):
        batches = list(DeviceLoader(split, 4, pad_last=True, preload=preload))
        assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 4, 4)] * 3
        y = torch.cat([y for _, y in batches])
        assert y[:10].tolist() == list(range(10)) and y[10:].tolist() == [PAD_LABEL, PAD_LABEL]
        assert torch.equal(batches[2][0][2:], batches[2][0][1:2].expand(2, -1, -1, -1))  # copies of sample 9
    assert DeviceLoader(split, 4, pad_last=True).num_samples == 10


def test_loader_draws_an_epoch_plan_once() -> None:
    """With make_transform's transform the loader draws the whole pass's augmentation at once: the images are
    those of one transform call over the pass's samples in order, batch by batch."""
    from tinytransfer.data.augment import make_transform

    split = _index_split(10, size=8)
    t = make_transform("keras", (0.5,) * 3, (0.5,) * 3)
    loader = DeviceLoader(split, 4, transform=t, aug_generator=torch.Generator().manual_seed(5))
    got = torch.cat([x for x, _ in loader])
    whole = torch.from_numpy(split.images).permute(0, 3, 1, 2).float()
    assert torch.equal(got, t(whole, torch.Generator().manual_seed(5)))
    padded = DeviceLoader(split, 4, transform=t, aug_generator=torch.Generator().manual_seed(5), pad_last=True)
    got = torch.cat([x for x, _ in padded])
    assert got.shape[0] == 12 and torch.equal(got[:10], t(whole, torch.Generator().manual_seed(5)))
