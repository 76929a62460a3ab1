"""Shared fixtures: a small fake Tiny ImageNet tree written into ``tmp_path``.

``tiny_tree`` is the default tree (4 classes × 12 train JPEGs at 64×64, 3 of them grayscale and one 80×56,
8 val images with val_annotations.txt, 5 unlabelled test images). ``make_tiny_tree`` is the factory behind it for
tests that need other sizes::

    def test_x(make_tiny_tree):
        root = make_tiny_tree(n_classes=3, train_per_class=20, size=32)

Each class has its own base colour (plus noise), so a model can learn the tree in a few steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Distinct base colours per class (RGB); classes beyond these get random ones.
_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (200, 60, 210), (40, 210, 210)]


def write_tiny_tree(
    root: Path,
    *,
    n_classes: int = 4,
    train_per_class: int = 12,
    n_val: int = 8,
    n_test: int = 5,
    size: int = 64,
    n_gray: int = 3,
    n_odd_size: int = 1,
    odd_size: tuple[int, int] = (80, 56),
    seed: int = 0,
) -> Path:
    """Write a Tiny-ImageNet-layout tree at ``root`` and return it.

    wnids are ``n000000k``; words.txt also lists wnids that are not in wnids.txt (as the real one does) and gives
    several comma-separated names a class ("class0, first class"). The first ``n_gray`` train images of class 0 are
    grayscale (mode L); the first ``n_odd_size`` train images of class 1 are ``odd_size`` (w, h) instead of
    ``size``. val labels cycle through the classes; test images are unlabelled.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    wnids = [f"n{k:08d}" for k in range(n_classes)]
    colours = [_COLOURS[k] if k < len(_COLOURS) else tuple(int(v) for v in rng.integers(0, 256, 3))
               for k in range(n_classes)]

    def image(label: int, wh: tuple[int, int]) -> np.ndarray:
        w, h = wh
        base = np.array(colours[label], dtype=np.float64)
        noise = rng.normal(0, 20, (h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)  # (h, w, 3)

    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = ["n99999999\tunused entity, not in wnids\n"]
    words += [f"{w}\tclass{k}, first class of {k}\n" for k, w in enumerate(wnids)]
    words += ["n88888888\tanother unused\n"]
    (root / "words.txt").write_text("".join(words))
    for k, w in enumerate(wnids):
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(train_per_class):
            wh = odd_size if (k == 1 and i < n_odd_size) else (size, size)
            a = image(k, wh)
            img = Image.fromarray(a, "RGB")
            if k == 0 and i < n_gray:
                img = img.convert("L")
            name = f"{w}_{i}.JPEG"
            img.save(folder / name, "JPEG", quality=90)
            boxes.append(f"{name}\t0\t0\t{size - 1}\t{size - 1}\n")
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    ann = []
    for i in range(n_val):
        k = i % n_classes
        Image.fromarray(image(k, (size, size)), "RGB").save(root / "val" / "images" / f"val_{i}.JPEG", "JPEG")
        ann.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t{size - 1}\t{size - 1}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(ann))
    (root / "test" / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_test):
        k = int(rng.integers(n_classes))
        Image.fromarray(image(k, (size, size)), "RGB").save(root / "test" / "images" / f"test_{i}.JPEG", "JPEG")
    return root


@pytest.fixture
def make_tiny_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tiny_tree(name="tiny", **kwargs)`` writes ``tmp_path/name`` (see ``write_tiny_tree``)."""

    def make(name: str = "tiny", **kwargs) -> Path:
        return write_tiny_tree(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_tree(make_tiny_tree: Callable[..., Path]) -> Path:
    """The default fake Tiny ImageNet root: 4 classes × 12 train, 8 val, 5 test, 64×64 JPEGs."""
    return make_tiny_tree()
