"""One generated tree with every kind of bad input at once, read by the worker pool (several chunks).

tests/data/test_data.py covers each problem alone (corrupt, truncated, not an image, missing folder, unusual modes);
here they come together, at a size that spreads them over the decoding chunks: the default stops with one line
listing the first problems, ``skip_bad_images`` skips exactly the bad files and keeps every other image
pixel-exact and with its own label (no row shifted by the compaction, no garbage).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytransfer.data.dataset import DataError, load_dataset

SIZE = 32


def _expected(path: Path) -> np.ndarray:
    """The image as an independent reader sees it: 16-bit gray scaled by 1/257, else PIL's RGB; bilinear resize."""
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            g = np.rint(np.asarray(im, dtype=np.float64) / 257.0).astype(np.uint8)
            rgb = Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")
        else:
            rgb = im.convert("RGB")
        if rgb.size != (SIZE, SIZE):
            rgb = rgb.resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(rgb)


@pytest.fixture
def messy(make_tiny_tree) -> tuple[Path, set[str]]:
    """6 classes × 50 train (330 images with val and test) and every problem of issue 6; returns (root, bad files)."""
    root = make_tiny_tree(n_classes=6, train_per_class=50, n_val=24, n_test=6, size=SIZE, n_gray=3, n_odd_size=2,
                          odd_size=(48, 40))
    rng = np.random.default_rng(1)
    tr = lambda k: root / "train" / f"n{k:08d}" / "images"  # noqa: E731
    bad: set[str] = set()

    def truncate(p: Path) -> None:
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 3])
        bad.add(str(p.relative_to(root)))

    truncate(tr(0) / "n00000000_5.JPEG")  # chunk 0 of train
    truncate(tr(4) / "n00000004_10.JPEG")  # chunk 3
    for p in (tr(1) / "n00000001_7.JPEG", root / "val" / "images" / "val_3.JPEG"):  # zero bytes
        p.write_bytes(b"")
        bad.add(str(p.relative_to(root)))
    (tr(1) / "notes.txt").write_text("labelled by hand, see wiki")  # a text file among the images
    bad.add("train/n00000001/images/notes.txt")
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tr(2) / "n00000002_0.JPEG", format="PNG")  # a PNG named .JPEG: fine
    Image.fromarray(pixels).convert("CMYK").save(tr(3) / "n00000003_1.JPEG", "JPEG", quality=95)  # CMYK JPEG
    deep = (np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE) * 64).astype(np.uint16)
    Image.fromarray(deep).save(tr(3) / "deep16.png")  # 16-bit grayscale
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(tr(5) / "big.png")  # 100×100
    for k, colour in ((0, (250, 0, 0)), (5, (0, 0, 250))):  # the same file name in two classes
        Image.new("RGB", (SIZE, SIZE), colour).save(tr(k) / "dup.JPEG", "JPEG", quality=95)
    return root, bad


def test_messy_tree_default_stops_with_one_line_listing_bad_files(messy: tuple[Path, set[str]]) -> None:
    root, bad = messy
    wnids = (root / "wnids.txt").read_text()
    (root / "wnids.txt").write_text(wnids + "n00000099\n")  # listed, but no train folder
    for skip in (False, True):  # a missing class is not a bad image: skipping cannot fix the labels
        with pytest.raises(DataError, match=r"train/n00000099: no train folder for class n00000099"):
            load_dataset(root, workers=2, skip_bad_images=skip)
    (root / "wnids.txt").write_text(wnids)
    with pytest.raises(DataError) as e:
        load_dataset(root, workers=2)
    msg = str(e.value)
    named = {b for b in bad if b in msg}
    assert "\n" not in msg and "skip_bad_images" in msg
    assert len(named) >= 3, msg  # the first problems, not only the first one
    good = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and str(p.relative_to(root)) not in bad]
    assert not [g for g in good if g.startswith(("train/", "val/", "test/")) and g in msg], msg
    assert not list((root / ".tinytransfer-cache").glob("*/manifest.json"))  # nothing cached to train on


def test_messy_tree_skip_drops_exactly_the_bad_files_and_keeps_every_pixel(
        messy: tuple[Path, set[str]], caplog: pytest.LogCaptureFixture) -> None:
    root, bad = messy
    with caplog.at_level(logging.WARNING, logger="tinytransfer.data.dataset"):
        ds = load_dataset(root, workers=2, skip_bad_images=True)
    assert len(ds.skipped) == len(bad) == 5
    assert {b for b in bad for s in ds.skipped if b in s} == bad  # each bad file named once, in its own message
    assert any(f"skipped {len(bad)} bad images" in r.getMessage() for r in caplog.records)
    listed = {str(p.relative_to(root)) for split in ("train", "val", "test") for p in (root / split).rglob("*")
              if p.is_file() and not p.name.endswith(".txt")}
    loaded = ds.train.files + ds.val.files + ds.test.files
    assert len(loaded) == len(set(loaded)) and set(loaded) == listed - bad
    assert len(ds.train) == 300 + 4 - 3 and len(ds.val) == 23 and len(ds.test) == 6  # +deep16, big, 2×dup
    for split in (ds.train, ds.val, ds.test):
        assert split.images.shape == (len(split), SIZE, SIZE, 3)
        for f, img in zip(split.files, split.images):  # no garbage, no row shifted by the compaction
            assert np.array_equal(img, _expected(root / f)), f
    for f, y in zip(ds.train.files, ds.train.labels):  # labels follow the folders, duplicates included
        assert f.split("/")[1] == ds.classes[y], f
    by_file = dict(zip(ds.train.files, ds.train.images))
    assert by_file["train/n00000000/images/dup.JPEG"][4, 4, 0] > 200
    assert by_file["train/n00000005/images/dup.JPEG"][4, 4, 2] > 200
    assert by_file["train/n00000003/images/deep16.png"][-1, -1].tolist() == [255] * 3  # 65472 / 257 = 254.8
    # the cache remembers: skipping again costs nothing, and not skipping still refuses, listing the files
    again = load_dataset(root, workers=2, skip_bad_images=True)
    assert again.train.files == ds.train.files and len(again.skipped) == 5
    with pytest.raises(DataError) as e:
        load_dataset(root, workers=2)
    assert {b for b in bad if b in str(e.value)} == bad and "\n" not in str(e.value)
