"""Input pipeline throughput: tinytransfer's cached uint8 + DeviceLoader + batched Keras augmentation versus a
naive per-image pipeline (PIL decode + torchvision RandomAffine + flip + ToTensor in a 2-worker DataLoader), on
the same generated 64×64 JPEGs, in one run on the same machine.

    python benchmarks/pipeline.py                 # 20,000 images, 3 epochs each
    python benchmarks/pipeline.py --images 4000   # quick

Prints images/s per epoch and the mean over the epochs after the first, the ratio, the cache build and load times,
and on CUDA also the GPU-resident rate (the whole uint8 split on the GPU, augmented there). Writes
``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from tinytransfer.data import DeviceLoader, load_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"


def make_tree(root: Path, n_images: int, size: int = 64, seed: int = 0) -> Path:
    """A Tiny-ImageNet-layout train/ tree of ``n_images`` JPEGs (quality 90) in up to 200 classes.

    Smooth random pictures (8×8 colour fields upsampled, plus mild noise) so that the JPEGs are about as large
    as Tiny ImageNet's (2–3 KB) and decode at a realistic speed.
    """
    rng = np.random.default_rng(seed)
    n_classes = max(2, min(200, n_images // 20))
    wnids = [f"n{k:08d}" for k in range(n_classes)]
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for i in range(n_images):
        w = wnids[i % n_classes]
        folder = root / "train" / w / "images"
        if i < n_classes:
            folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
        a = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.int16)
        a = np.clip(a + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a, "RGB").save(folder / f"{w}_{i // n_classes}.JPEG", "JPEG", quality=90)
    return root


def rate(n: int, seconds: list[float]) -> tuple[float, list[float]]:
    """(images/s over the epochs after the first, images/s of every epoch)."""
    per_epoch = [n / s for s in seconds]
    later = seconds[1:] or seconds
    return n * len(later) / sum(later), per_epoch


def time_epochs(loader, epochs: int, sync=None) -> tuple[list[float], int]:
    """Seconds of each full pass over ``loader`` and the images a pass."""
    seconds = []
    count = 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        count = 0
        for x, y in loader:
            count += len(y)
        if sync is not None:
            sync()
        seconds.append(time.perf_counter() - t0)
    return seconds, count


def naive_loader(train_dir: Path, batch_size: int, workers: int):
    """torchvision ImageFolder (PIL decode every epoch) + RandomAffine + flip + ToTensor, 2 worker processes."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        # Keras-like settings: ±20°, ±20 % shifts, 0.8–1.2 zoom; shear 0.2 in DEGREES, as Keras ≥ 2.1.3 reads it.
        transforms.RandomAffine(20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000, help="generated 64x64 JPEGs (default 20000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first is reported apart")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (naive) and decode workers (ours)")
    p.add_argument("--gpu-batch", type=int, default=1024, help="batch size of the GPU-resident measurement")
    p.add_argument("--dir", help="keep the generated tree here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads for ours (0 = torch's default)")
    p.add_argument("--cache-only", action="store_true", help="only generate, build and load the cache (no JSON)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tinytransfer.data").setLevel(logging.ERROR)  # the generated tree has no val/ on purpose
    from tinytransfer.augment import make_transform  # written alongside; imported when needed

    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.dir:
        root = Path(args.dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tt-pipeline-")
        root = Path(tmp.name) / "tiny"
    try:
        t0 = time.perf_counter()
        if not (root / "wnids.txt").exists():
            make_tree(root, args.images)
        gen_s = time.perf_counter() - t0
        print(f"{args.images} JPEGs 64x64 in {root} (generated in {gen_s:.1f} s); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

        t0 = time.perf_counter()
        ds = load_dataset(root, workers=args.workers)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = load_dataset(root, workers=args.workers)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        buf = np.empty((4096,) + ds.train.images.shape[1:], np.uint8)
        for a in range(0, len(ds.train), 4096):  # read every byte once (warm page cache: just written)
            chunk = ds.train.images[a:a + 4096]
            buf[: len(chunk)] = chunk
        read_s = time.perf_counter() - t0 + load_s
        n = len(ds.train)
        mb = ds.train.images.nbytes / 1e6
        print(f"cache: built in {build_s:.2f} s ({n / build_s:.0f} img/s, {args.workers} workers), "
              f"{mb:.0f} MB; load (memory map) {load_s:.3f} s; load + read all {read_s:.3f} s")

        if args.cache_only:
            return 0
        tf = make_transform("keras", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the report's rescale=1/255 + keras aug
        ours = DeviceLoader(ds.train, args.batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                            transform=tf, aug_generator=torch.Generator().manual_seed(1))
        naive = naive_loader(root / "train", args.batch, args.workers)
        # Epochs alternate between the two pipelines, so that both see the same machine (2 shared cores).
        ours_s: list[float] = []
        naive_s: list[float] = []
        for _ in range(args.epochs):
            s, count = time_epochs(ours, 1)
            assert count == n
            ours_s += s
            s, count = time_epochs(naive, 1)
            assert count == n
            naive_s += s
        del naive
        ours_rate, ours_epochs = rate(n, ours_s)
        naive_rate, naive_epochs = rate(n, naive_s)
        plain = DeviceLoader(ds.train, args.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        plain_rate, _ = rate(n, time_epochs(plain, 2)[0])
        print(f"ours  (cached uint8 + DeviceLoader + keras batch aug, cpu): "
              f"{', '.join(f'{r:.0f}' for r in ours_epochs)} img/s per epoch -> {ours_rate:.0f} img/s "
              f"(loader alone, no augmentation: {plain_rate:.0f} img/s)")
        print(f"naive (PIL + RandomAffine + flip + ToTensor, DataLoader {args.workers} workers): "
              f"{', '.join(f'{r:.0f}' for r in naive_epochs)} img/s per epoch -> {naive_rate:.0f} img/s")
        ratio = ours_rate / naive_rate
        print(f"ratio ours/naive (epochs after the first): {ratio:.2f}x")

        rows = [
            {"system": "tinytransfer: cached uint8 + DeviceLoader + keras batch augmentation", "model": None,
             "input_size": 64, "phase": "pipeline", "device": "cpu", "img_s": round(ours_rate, 1)},
            {"system": "naive: ImageFolder PIL decode + RandomAffine + flip + ToTensor, DataLoader "
                       f"{args.workers} workers", "model": None, "input_size": 64, "phase": "pipeline",
             "device": "cpu", "img_s": round(naive_rate, 1)},
        ]
        gpu_rate = None
        gpu_name = None
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            gpu_name = torch.cuda.get_device_name(dev)
            g_loader = DeviceLoader(ds.train, args.gpu_batch, device=dev, shuffle=True, preload=True,
                                    generator=torch.Generator().manual_seed(0), transform=tf,
                                    aug_generator=torch.Generator(device=dev).manual_seed(1))
            g_s, count = time_epochs(g_loader, max(args.epochs, 5), sync=torch.cuda.synchronize)
            gpu_rate, g_epochs = rate(count, g_s)
            print(f"gpu   (uint8 split resident on {gpu_name}, keras aug there, batch {args.gpu_batch}): "
                  f"{', '.join(f'{r:.0f}' for r in g_epochs)} img/s per epoch -> {gpu_rate:.0f} img/s")
            rows.append({"system": f"tinytransfer: GPU-resident uint8 + keras batch augmentation "
                                   f"(batch {args.gpu_batch})", "model": None, "input_size": 64,
                         "phase": "pipeline", "device": gpu_name, "img_s": round(gpu_rate, 1)})

        result = {
            "ours_img_s": round(ours_rate, 1),
            "naive_img_s": round(naive_rate, 1),
            "ratio": round(ratio, 3),
            "cache_load_s": round(load_s, 4),
            "cache_load_read_s": round(read_s, 4),
            "cache_build_s": round(build_s, 3),
            "loader_only_img_s": round(plain_rate, 1),
            "gpu_img_s": None if gpu_rate is None else round(gpu_rate, 1),
            "ours_epoch_img_s": [round(r, 1) for r in ours_epochs],
            "naive_epoch_img_s": [round(r, 1) for r in naive_epochs],
            "images": n,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "workers": args.workers,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "gpu": gpu_name,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "rows": rows,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
