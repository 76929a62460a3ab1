"""Datasets: which image files form which split, with which label; decoded once through the uint8 cache.

:func:`load_dataset` lists a folder (the Tiny ImageNet layout, or one folder per class; the held-out split) and
returns its splits as memory-mapped uint8 arrays from the cache (``tinytransfer.cache``), decoding them there on the
first load (``tinytransfer.decode``). :class:`~tinytransfer.loader.DeviceLoader` then takes batches out of them. The
offline demo dataset and the Tiny ImageNet download live in ``sources``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..config import DataConfig
from .cache import load_or_build
from .decode import DataError, bad_images_message

__all__ = [
    "DataError",
    "Dataset",
    "Split",
    "load_configured",
    "load_dataset",
    "summary",
]

logger = logging.getLogger(__name__)

_JUNK_FILES = {"thumbs.db", "desktop.ini"}  # OS droppings ignored in image folders (as are dot files)


# ---------------------------------------------------------------------------------------------------------------
# Public containers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Split:
    """One split: images (N, H, W, 3) uint8 (usually a read-only memory map), labels (N,) int64 (-1 = none)."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64 label ids in class order; -1 for unlabelled (test) images
    files: list[str]  # (N,) paths relative to the dataset root, "/"-separated

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(eq=False)
class Dataset:
    """A decoded dataset; ``classes[i]`` (wnid or folder name) and ``names[i]`` (human name) belong to label i."""

    root: str  # the dataset folder
    classes: list[str]  # wnids (wnids.txt order) or class folder names (sorted); index = label id
    names: list[str]  # human-readable names (words.txt's first name; else the class id)
    train: Split
    val: Split | None  # official val/ or held out of train/ (val_mode="holdout"); None if there is none
    test: Split | None  # test/images (unlabelled, labels -1); None if there is none
    image_size: int  # side of the decoded square images in pixels
    skipped: list[str] = field(default_factory=list)  # "file: problem" for images skipped (skip_bad_images=True)


# ---------------------------------------------------------------------------------------------------------------
# Listing: which files belong to which split, with which label
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    layout: str  # "tiny-imagenet" | "folders"
    classes: list[str]
    names: list[str]
    splits: dict[str, tuple[list[str], list[int]]]  # split name → (relative paths, labels)


def _scandir(path: str, what: str) -> list[os.DirEntry]:
    """Entries of a folder, sorted by name; DataError naming the folder if it is missing or unreadable."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} folder is missing") from None
    except NotADirectoryError:
        raise DataError(f"{path}: expected a folder ({what}), found a file") from None
    except PermissionError as e:
        raise DataError(f"{path}: cannot read {what} folder ({e.strerror})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} folder ({e.strerror or e})") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _wanted(name: str) -> bool:
    """Files that count as dataset images: everything but dot files and OS junk (non-images then fail loudly)."""
    return not name.startswith(".") and name.lower() not in _JUNK_FILES


def _image_files(root: str, folder_rel: str, what: str, *, recursive: bool = False) -> list[str]:
    """Relative paths of the files in root/folder_rel (sorted; recursive for class folders)."""
    out: list[str] = []
    for e in _scandir(os.path.join(root, folder_rel), what):
        rel = f"{folder_rel}/{e.name}" if folder_rel else e.name
        if not _wanted(e.name):
            continue
        if _is_dir(e):
            if recursive:
                out.extend(_image_files(root, rel, what, recursive=True))
            continue
        out.append(rel)
    return out


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _read_words(root: str, wnids: list[str]) -> list[str]:
    """Human names from words.txt (``wnid<TAB>name, other name``): the first name; the wnid where absent."""
    path = os.path.join(root, "words.txt")
    if not os.path.exists(path):
        logger.info("%s: no words.txt; class names are the wnids", root)
        return list(wnids)
    wanted = set(wnids)
    found: dict[str, str] = {}
    for line in _read_text(path, "words.txt").splitlines():
        wnid, sep, rest = line.partition("\t")
        wnid = wnid.strip()
        if sep and wnid in wanted and wnid not in found:
            first = rest.split(",")[0].strip()
            if first:
                found[wnid] = first
    return [found.get(w, w) for w in wnids]


def _holdout(files: list[str], n: int, seed: int, label: int, where: str) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split of one class's sorted files: n held out, chosen with (seed, label)."""
    if n <= 0:
        return files, []
    if n >= len(files):
        raise DataError(f"{where}: only {len(files)} images, cannot hold out {n} for validation "
                        f"(lower holdout_per_class)")
    rng = np.random.default_rng([seed, label])
    held = set(rng.permutation(len(files))[:n].tolist())
    return ([f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held])


def _plan_tiny(root: str, val_mode: str, holdout: int, seed: int) -> _Plan:
    """List a Tiny ImageNet tree (wnids.txt, words.txt, train/<wnid>/images, val/, test/images)."""
    wnids_path = os.path.join(root, "wnids.txt")
    wnids = [w.strip() for w in _read_text(wnids_path, "wnids.txt").splitlines() if w.strip()]
    if not wnids:
        raise DataError(f"{wnids_path}: no class ids in the file")
    dup = [w for w, c in Counter(wnids).items() if c > 1]
    if dup:
        raise DataError(f"{wnids_path}: class id {dup[0]} is listed twice")
    label_of = {w: i for i, w in enumerate(wnids)}
    names = _read_words(root, wnids)

    train_files: list[str] = []
    train_labels: list[int] = []
    val_files: list[str] = []
    val_labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = f"train/{wnid}/images"
        if not os.path.isdir(os.path.join(root, "train", wnid)):
            raise DataError(f"{os.path.join(root, 'train', wnid)}: no train folder for class {wnid} "
                            f"(listed in wnids.txt)")
        files = _image_files(root, folder, f"train images of {wnid}")
        if not files:
            raise DataError(f"{os.path.join(root, folder)}: empty class folder (no images of {wnid})")
        if val_mode == "holdout":
            files, held = _holdout(files, holdout, seed, label, os.path.join(root, folder))
            val_files += held
            val_labels += [label] * len(held)
        train_files += files
        train_labels += [label] * len(files)
    splits = {"train": (train_files, train_labels)}

    if val_mode == "official":
        val_dir = os.path.join(root, "val")
        if os.path.isdir(val_dir):
            ann = os.path.join(val_dir, "val_annotations.txt")
            if not os.path.isfile(ann):
                raise DataError(f"{ann}: missing (needed to label val/images)")
            present = {e.name for e in _scandir(os.path.join(val_dir, "images"), "val images")}
            pairs: dict[str, int] = {}
            for lineno, line in enumerate(_read_text(ann, "val_annotations.txt").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) < 2:
                    raise DataError(f"{ann} line {lineno}: expected 'file<TAB>wnid...', got {line.strip()[:60]!r}")
                fname, wnid = parts[0].strip(), parts[1].strip()
                if wnid not in label_of:
                    raise DataError(f"{ann} line {lineno}: wnid {wnid} (for {fname}) is not in wnids.txt")
                if fname not in present:
                    raise DataError(f"{os.path.join(val_dir, 'images', fname)}: listed in val_annotations.txt "
                                    f"(line {lineno}) but missing")
                pairs[fname] = label_of[wnid]
            unlabelled = sorted(n for n in present if _wanted(n) and n not in pairs)
            if unlabelled:
                logger.warning("%s: %d images not in val_annotations.txt are ignored (e.g. %s)",
                               os.path.join(val_dir, "images"), len(unlabelled), unlabelled[0])
            order = sorted(pairs)
            val_files = [f"val/images/{f}" for f in order]
            val_labels = [pairs[f] for f in order]
            splits["val"] = (val_files, val_labels)
        else:
            logger.warning("%s: no val/ folder; there is no validation split (use val_mode='holdout')", root)
    else:
        splits["val"] = (val_files, val_labels)

    if os.path.isdir(os.path.join(root, "test", "images")):
        test = _image_files(root, "test/images", "test images")
        if test:
            splits["test"] = (test, [-1] * len(test))
    return _Plan("tiny-imagenet", wnids, names, splits)


def _class_dirs(root: str, rel: str, what: str) -> list[str]:
    return [e.name for e in _scandir(os.path.join(root, rel) if rel else root, what)
            if _is_dir(e) and _wanted(e.name)]


def _plan_folders(root: str, val_mode: str, holdout: int, seed: int) -> _Plan:
    """List root/<class>/* (val held out), or root/train/<class> (+ root/val/<class>, + root/test)."""
    nested = os.path.isdir(os.path.join(root, "train")) and bool(_class_dirs(root, "train", "train"))
    base = "train" if nested else ""
    classes = _class_dirs(root, base, "dataset")
    if not classes:
        raise DataError(f"{root}: not a dataset (no wnids.txt and no class folders)")
    has_val = nested and os.path.isdir(os.path.join(root, "val"))
    use_holdout = val_mode == "holdout" or not has_val
    if val_mode == "official" and not has_val:
        logger.info("%s: no val/<class> folders; holding out %d images a class for validation", root, holdout)
    splits: dict[str, tuple[list[str], list[int]]] = {}
    tr_f: list[str] = []
    tr_l: list[int] = []
    va_f: list[str] = []
    va_l: list[int] = []
    for label, c in enumerate(classes):
        rel = f"{base}/{c}" if base else c
        files = _image_files(root, rel, f"class {c}", recursive=True)
        if not files:
            raise DataError(f"{os.path.join(root, rel)}: empty class folder (no images)")
        if use_holdout:
            files, held = _holdout(files, holdout, seed, label, os.path.join(root, rel))
            va_f += held
            va_l += [label] * len(held)
        tr_f += files
        tr_l += [label] * len(files)
    splits["train"] = (tr_f, tr_l)
    if not use_holdout:
        label_of = {c: i for i, c in enumerate(classes)}
        for c in _class_dirs(root, "val", "val"):
            if c not in label_of:
                raise DataError(f"{os.path.join(root, 'val', c)}: class {c} is not among the train classes")
            files = _image_files(root, f"val/{c}", f"val class {c}", recursive=True)
            va_f += files
            va_l += [label_of[c]] * len(files)
    if va_f:
        splits["val"] = (va_f, va_l)
    if nested and os.path.isdir(os.path.join(root, "test")):
        test = [f for f in _image_files(root, "test", "test", recursive=True)]
        if test:
            splits["test"] = (test, [-1] * len(test))
    return _Plan("folders", classes, list(classes), splits)


# ---------------------------------------------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------------------------------------------


def load_dataset(
    root: str | os.PathLike,
    *,
    val_mode: str = "official",
    holdout_per_class: int = 50,
    split_seed: int = 0,
    image_size: int = 0,
    cache_dir: str = "",
    skip_bad_images: bool = False,
    workers: int = 2,
) -> Dataset:
    """Read a dataset folder, decoding it once into the uint8 cache, and return its splits (memory-mapped).

    Layouts: Tiny ImageNet (``wnids.txt`` present: label order = wnids.txt order, names from words.txt, val from
    ``val/val_annotations.txt``, unlabelled ``test/images``), or one folder per class (``root/<class>/*``, sorted
    class names, val held out; or ``root/train/<class>`` + ``root/val/<class>`` + ``root/test``).

    val_mode: "official" uses val/ ; "holdout" holds ``holdout_per_class`` images a class out of train/, chosen
    from each class's sorted file list with seed (split_seed, label), so the split never changes.
    image_size: side of the decoded squares (other sizes are resized, bilinear); 0 = the most common size.
    cache_dir: "" = ``<root>/.tinytransfer-cache``, or ``~/.cache/tinytransfer/<hash>`` if root is read-only.
    skip_bad_images: skip (log and count) undecodable images instead of raising one DataError that lists the
    first of them (up to five).
    workers: processes decoding on the first load.
    """
    root = os.path.abspath(os.fspath(root))
    if val_mode not in ("official", "holdout"):
        raise ValueError(f"val_mode must be 'official' or 'holdout', got {val_mode!r}")
    if image_size < 0 or holdout_per_class < 0:
        raise ValueError("image_size and holdout_per_class must be >= 0")
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found")
    if os.path.isfile(os.path.join(root, "wnids.txt")):
        plan = _plan_tiny(root, val_mode, holdout_per_class, split_seed)
    else:
        plan = _plan_folders(root, val_mode, holdout_per_class, split_seed)
    params = {"val_mode": val_mode, "holdout": holdout_per_class if val_mode == "holdout" or plan.layout == "folders"
              else 0, "seed": split_seed, "image_size": image_size}
    manifest, arrays = load_or_build(root, layout=plan.layout, classes=plan.classes, splits=plan.splits,
                                     params=params, cache_dir=cache_dir, workers=workers, skip=skip_bad_images)
    splits = {name: Split(images=im, labels=lab, files=files) for name, (im, lab, files) in arrays.items()}
    skipped = list(manifest.get("skipped", []))
    if skipped:
        if not skip_bad_images:
            raise DataError(bad_images_message(skipped))
        shown = "; ".join(skipped[:5]) + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        logger.warning("skipped %d bad image%s: %s", len(skipped), "s" * (len(skipped) != 1), shown)
    if len(splits["train"]) == 0:
        raise DataError(f"{root}: no usable training images")
    return Dataset(root=root, classes=list(plan.classes), names=list(plan.names), train=splits["train"],
                   val=splits.get("val"), test=splits.get("test"), image_size=int(manifest["image_size"]),
                   skipped=skipped)


def load_configured(d: DataConfig) -> Dataset:
    """:func:`load_dataset` with the fields of a run's ``DataConfig`` (``cfg.data``)."""
    return load_dataset(d.root, val_mode=d.val_mode, holdout_per_class=d.holdout_per_class, split_seed=d.split_seed,
                        image_size=d.image_size, cache_dir=d.cache_dir, skip_bad_images=d.skip_bad_images,
                        workers=d.workers)


def summary(dataset: Dataset) -> str:
    """A few lines: root, classes (first ones with names), image size and split sizes."""
    shown = ", ".join(f"{c} ({n})" if n != c else c for c, n in zip(dataset.classes[:10], dataset.names[:10]))
    more = f", ... ({len(dataset.classes) - 10} more)" if len(dataset.classes) > 10 else ""
    sizes = "  ".join(f"{name}: {len(s) if s is not None else 0}" for name, s in
                      (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)))
    lines = [f"dataset {dataset.root}",
             f"  {len(dataset.classes)} classes, {dataset.image_size}x{dataset.image_size} RGB",
             f"  classes: {shown}{more}",
             f"  {sizes}"]
    if dataset.skipped:
        lines.append(f"  skipped {len(dataset.skipped)} bad images")
    return "\n".join(lines)
