"""The data audit (issue 21): planted exact, re-encoded and resized copies across splits are every one found, and no
other pair is reported among varied generated images; counts, grayscale, sizes, skipped files, audit.json."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tinytransfer.data.audit import (
    AUDIT_JSON,
    audit_dataset,
    audit_splits,
    cross_split_pairs,
    read_audit,
    warning_line,
    write_audit,
)
from tinytransfer.data.dataset import load_dataset

CLASSES = ("fields", "shapes", "textures")
SIZE = 64


def _field(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour field: white noise at a random coarse scale, upsampled bicubic and blurred."""
    k = int(rng.integers(3, 9))
    a = rng.integers(0, 256, (k, k, 3), dtype=np.uint8)
    img = Image.fromarray(a, "RGB").resize((SIZE, SIZE), Image.BICUBIC)
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 4))))


def _shapes(rng: np.random.Generator) -> Image.Image:
    """A few filled ellipses, rectangles and triangles of random colours on a random gradient."""
    t = np.linspace(0, 1, SIZE)[None, :, None]
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    bg = (c0 * (1 - t) + c1 * t) * np.ones((SIZE, 1, 1))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        img = img.rotate(90)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(-10, SIZE - 10, 2)
        w, h = rng.integers(8, 40, 2)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            d.polygon([(x0, y0 + h), (x0 + w, y0 + h), (x0 + w // 2, y0)], fill=col)
    return img


def _texture(rng: np.random.Generator) -> Image.Image:
    """A sinusoidal grating of random frequency, orientation and colours, plus fine noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    th, f, ph = rng.uniform(0, np.pi), rng.uniform(0.05, 0.4), rng.uniform(0, 2 * np.pi)
    s = np.sin(f * (xx * np.cos(th) + yy * np.sin(th)) + ph)[..., None]
    s2 = np.sin(rng.uniform(0.02, 0.1) * (xx * np.sin(th) - yy * np.cos(th)))[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = c0 + (c1 - c0) * (0.5 + 0.35 * s + 0.15 * s2) + rng.normal(0, 6, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


MAKERS = (_field, _shapes, _texture)


def _jpeg75(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _resized(img: Image.Image, f: float) -> Image.Image:
    return img.resize((round(img.width * f), round(img.height * f)), Image.BICUBIC)


def write_planted_tree(root: Path, *, per_class: tuple[int, int, int] = (12, 4, 4), seed: int = 0
                       ) -> tuple[Path, set[frozenset[str]]]:
    """root/{train,val}/<class>/*.png and root/test/*.png of distinct generated images (per class: train, val, test),
    plus planted copies; returns (root, the planted pairs as frozensets of two paths relative to root)."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    originals: dict[str, Image.Image] = {}
    for c, (name, make) in enumerate(zip(CLASSES, MAKERS)):
        for split, n in zip(("train", "val", "test"), per_class):
            for k in range(n):
                rel = f"{split}/{name}/{name}_{k}.png" if split != "test" else f"test/{name}_{k}.png"
                img = make(rng)
                if c == 0 and split == "train" and k == 0:
                    img = img.convert("L")  # one grayscale file
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img.save(root / rel)
                originals[rel] = img.convert("RGB")
                files[split].append(rel)
    planted: set[frozenset[str]] = set()

    def plant(src: str, dst_folder: str, tag: str, img: Image.Image | None, fmt: str = "PNG", **kw: object) -> None:
        dst = f"{dst_folder}/copy_{tag}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        if img is None:
            shutil.copyfile(root / src, root / dst)
        else:
            img.save(root / dst, fmt, **kw)
        planted.add(frozenset((src, dst)))

    tr, va = files["train"], files["val"]
    plant(tr[1], "val/fields", "exact_tv", None)  # exact copies: train→val, train→test, within train
    plant(tr[13], "test", "exact_tt", None)
    plant(tr[25], "train/shapes", "exact_in_train", None)
    for i, (src, dst) in enumerate(((tr[2], "val/fields"), (tr[14], "test"), (va[5], "test"), (tr[26], "train/textures"))):
        plant(src, dst, f"q75_{i}", originals[src], "JPEG", quality=75)  # re-encoded at JPEG quality 75
    for i, (src, dst, f) in enumerate(((tr[3], "val/fields", 0.9), (tr[15], "test", 1.1), (tr[27], "val/textures", 0.9),
                                       (va[1], "test", 1.1), (tr[4], "train/fields", 1.1))):
        plant(src, dst, f"resized_{i}", _resized(originals[src], f))  # ±10 % resized
    return root, planted


def _found(audit: dict) -> set[frozenset[str]]:
    return {frozenset((p["a"]["file"], p["b"]["file"]))
            for kind in ("exact_duplicates", "near_duplicates") for p in audit[kind]["pairs"]}


@pytest.mark.parametrize("seed", [0, 1])
def test_every_planted_pair_is_found_and_no_other(tmp_path, seed):
    root, planted = write_planted_tree(tmp_path / "d", seed=seed)
    (root / "train" / "textures" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = load_dataset(root, workers=1, skip_bad_images=True)
    audit = audit_dataset(ds, workers=1)
    assert _found(audit) == planted
    kinds = {frozenset((p["a"]["file"], p["b"]["file"])): p["kind"]
             for k in ("exact_duplicates", "near_duplicates") for p in audit[k]["pairs"]}
    assert sorted(k for pair, k in kinds.items() if any("exact" in f for f in pair)) == ["exact"] * 3
    assert audit["exact_duplicates"]["cross_split"] == 2 and audit["exact_duplicates"]["within_train"] == 1
    assert audit["near_duplicates"]["cross_split"] == 7 and audit["near_duplicates"]["within_train"] == 2
    assert cross_split_pairs(audit) == 9
    line = warning_line(audit)
    assert line.startswith("data audit: 9 duplicate pairs across splits (2 exact, 7 near;") and "\n" not in line
    assert "train-val" in line and "train-test" in line and "val-test" in line
    # the rest of the audit
    assert audit["skipped"] and "broken.png" in audit["skipped"][0]
    assert audit["splits"]["train"]["per_class"] == {"fields": 13, "shapes": 13, "textures": 13}
    assert audit["imbalance_ratio"] == 1.0 and audit["empty_classes"] == []
    assert audit["splits"]["train"]["grayscale"] == 1 and audit["splits"]["test"]["labelled"] is False
    sizes = audit["original_sizes"]
    assert sizes["most_common"][0] == [64, 64, sizes["known"] - 5] and sizes["resized"] == 5
    assert sizes["min"] == [58, 58] and sizes["max"] == [70, 70]


def test_counts_imbalance_empty_classes_and_json_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    imgs = np.stack([np.asarray(MAKERS[i % 3](rng)) for i in range(9)])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    audit = audit_splits({"train": (imgs, labels, [f"f{i}" for i in range(9)]),
                          "val": (imgs[:0], labels[:0], [])}, ["a", "b", "c", "d"])
    assert audit["splits"]["train"]["per_class"] == {"a": 6, "b": 2, "c": 1, "d": 0}
    assert audit["empty_classes"] == ["d"] and audit["imbalance_ratio"] is None
    audit2 = audit_splits({"train": (imgs, labels, [f"f{i}" for i in range(9)])}, ["a", "b", "c"])
    assert audit2["imbalance_ratio"] == 6.0 and audit2["cross_split_pairs"] == 0 and warning_line(audit2) is None
    path = write_audit(audit, tmp_path / AUDIT_JSON)
    assert read_audit(tmp_path) == read_audit(path) and read_audit(path)["splits"]["val"]["images"] == 0
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="bad.json: not a tinytransfer audit"):
        read_audit(tmp_path / "bad.json")
