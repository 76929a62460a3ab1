"""Input pipeline throughput: tinytransfer's cached uint8 + DeviceLoader + batched Keras augmentation versus a
naive per-image pipeline, on the same generated 64×64 JPEGs, in one run on the same machine.

- ours: the decode-once uint8 cache, ``DeviceLoader`` (shuffled batches of 64) and
  ``make_transform("keras", mean, std)``, the very code the trainer runs, on the CPU;
- naive, as most PyTorch users write it: torchvision ``ImageFolder`` (PIL open + ``convert("RGB")``, every epoch),
  ``Compose([RandomAffine(20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2, interpolation=BILINEAR),
  RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])`` in a ``DataLoader(batch_size=64, shuffle=True,
  num_workers=2)``.

Both yield (64, 3, 64, 64) float32 batches normalised with the same mean/std and count the same images. Ours is
also timed with one intra-op thread. Epochs alternate between the pipelines (the cores are shared); the first
epoch of each is a warm-up, and the figure is the median of the per-epoch rates after it.

    python benchmarks/pipeline.py                 # 20,000 images, 1 warm-up + 5 timed epochs each
    python benchmarks/pipeline.py --images 4000   # quick

Also prints the loader alone (no augmentation), the transform alone on one batch and a bare ``grid_sample`` on
it (the ceiling of any batched bilinear warp here), the cache build and load times, and on CUDA the
GPU-resident rate (the whole uint8 split on the GPU, augmented there). ``ops_per_batch`` counts the operators our
loader dispatches a batch (``torch.profiler``: top-level ``aten::`` ops, and those that are not views), and on CUDA
``cuda_kernels_per_batch`` the kernels it launches. ``--stream`` adds streamed versus resident: the same loader with a ``device_cache_gb`` budget of half the split
(batches gathered from the memory-mapped cache by a prefetch thread, pinned and copied asynchronously on CUDA)
against its default path, alone and with the Keras augmentation, epochs alternating. Writes
``benchmarks/results/pipeline.json`` (on SIGINT/SIGTERM
what was measured so far, marked ``partial``, exit 130).

    python benchmarks/pipeline.py --images 4000 --epochs 3 --stream
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results, stoppable  # noqa: E402

from tinytransfer.data.dataset import load_dataset  # noqa: E402
from tinytransfer.data.loader import DeviceLoader  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, [0, 1] units, on both sides


_CHUNK = 2048  # images a generator seed covers: the pictures do not depend on the number of workers


def _class_look(k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Class ``k``'s colour (3,), stripe colour direction (3,), stripe angle (radians) and frequency (cycles an
    image): what a learnable synthetic class looks like."""
    r = np.random.default_rng([seed, 7, k])
    return r.uniform(50, 205, 3), r.normal(0, 1, 3), r.uniform(0, np.pi), r.uniform(1.5, 6.0)


def _write_chunk(root: str, wnids: list[str], lo: int, hi: int, size: int, seed: int,
                 learnable: bool = False) -> None:
    rng = np.random.default_rng([seed, lo // _CHUNK])
    n_classes = len(wnids)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(lo, hi):
        w = wnids[i % n_classes]
        folder = Path(root) / "train" / w / "images"
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
        a = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.int16)
        if learnable:  # the class's colour and stripes, under a dimmer random field and a random stripe phase
            colour, direction, angle, freq = _class_look(i % n_classes, seed)
            wave = np.sin(2 * np.pi * (freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 1)))
            stripes = 45 * wave[..., None] * (direction / np.linalg.norm(direction))
            a = (colour + stripes + 0.35 * (a - 128)).astype(np.int16)
        a = np.clip(a + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a, "RGB").save(folder / f"{w}_{i // n_classes}.JPEG", "JPEG", quality=90)


def make_tree(root: Path, n_images: int, size: int = 64, seed: int = 0, workers: int = 0,
              learnable: bool = False) -> Path:
    """A Tiny-ImageNet-layout train/ tree of ``n_images`` JPEGs (quality 90) in up to 200 classes.

    Smooth random pictures (8×8 colour fields upsampled, plus mild noise) so that the JPEGs are about as large
    as Tiny ImageNet's (2–3 KB) and decode at a realistic speed. Written by ``workers`` processes (default: one a
    core; 100,000 images are ~40 s of one core), the same pictures whatever their number. Their labels are
    random: nothing to learn. ``learnable``: each class has its own colour and stripe texture (angle, frequency,
    colour direction) under a dimmer random field, so that a model can learn the classes and a time-to-accuracy
    figure means something.
    """
    n_classes = max(2, min(200, n_images // 20))
    wnids = [f"n{k:08d}" for k in range(n_classes)]
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True, exist_ok=True)
    chunks = [(lo, min(lo + _CHUNK, n_images)) for lo in range(0, n_images, _CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    if workers <= 1:
        for lo, hi in chunks:
            _write_chunk(str(root), wnids, lo, hi, size, seed, learnable)
        return root
    import signal
    from concurrent.futures import ProcessPoolExecutor

    # the workers leave SIGINT to us (no traceback from each of them); a stop cancels the chunks not started
    pool = ProcessPoolExecutor(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        for f in [pool.submit(_write_chunk, str(root), wnids, lo, hi, size, seed, learnable) for lo, hi in chunks]:
            f.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return root


def rate(n: int, seconds: list[float]) -> tuple[float, list[float]]:
    """(median images/s over the epochs after the first (the warm-up), images/s of every epoch)."""
    per_epoch = [n / s for s in seconds]
    return statistics.median(per_epoch[1:] or per_epoch), per_epoch


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


def naive_loader(train_dir: Path, batch_size: int, workers: int, persistent: bool = False):
    """What most PyTorch users write: ImageFolder (PIL decode every epoch) + RandomAffine + flip + ToTensor +
    Normalize, in a DataLoader with ``workers`` worker processes (respawned every epoch unless ``persistent``)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        # Keras-like settings: ±20°, ±20 % shifts, 0.8–1.2 zoom, bilinear as Keras; shear 0.2 in DEGREES, which is
        # what torchvision reads and what Keras ≥ 2.1.3 does with shear_range=0.2.
        transforms.RandomAffine(degrees=20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2,
                                interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    ds = datasets.ImageFolder(str(train_dir), transform=tf)  # default loader: PIL open + convert("RGB")
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=persistent and workers > 0)


def transform_ceiling(tf, batch: torch.Tensor, repeats: int = 9, calls: int = 10) -> tuple[float, float]:
    """Images/s of ``tf`` alone and of a bare ``grid_sample`` on the same (B, 3, H, W) float batch (medians).

    The bare warp (a fixed, precomputed grid; no parameters, no grid, no normalisation) bounds any batched bilinear
    augmentation on this machine from above."""
    import torch.nn.functional as F

    b = batch.shape[0]
    theta = torch.tensor([[0.95, 0.1, 0.05], [-0.1, 1.05, -0.02]]).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=True)
    gen = torch.Generator().manual_seed(2)
    fns = {
        "transform": lambda: tf(batch, gen),
        "grid_sample": lambda: F.grid_sample(batch, grid, mode="bilinear", padding_mode="border",
                                             align_corners=True),
    }
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):  # alternate, so that both see the same load
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            rates[k].append(b * calls / (time.perf_counter() - t0))
    return statistics.median(rates["transform"]), statistics.median(rates["grid_sample"])


def stream_vs_resident(split, batch: int, tf, epochs: int) -> dict:
    """Images/s of DeviceLoader streaming (budget: half the split) vs its default path, on CUDA if present, alone and
    with ``tf``; epochs alternate between the two, the first of each is a warm-up."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    budget = split.images.nbytes / 2 / 1e9

    def make(stream: bool, aug: bool) -> DeviceLoader:
        return DeviceLoader(split, batch, device=dev, shuffle=True, generator=torch.Generator().manual_seed(0),
                            transform=tf if aug else None,
                            aug_generator=torch.Generator(device=dev).manual_seed(1) if aug else None,
                            device_cache_gb=budget if stream else 0.0)

    out: dict = {"device": torch.cuda.get_device_name(dev) if sync else "cpu", "budget_gb": budget}
    for aug in (False, True):
        loaders = {"stream": make(True, aug), "resident": make(False, aug)}
        assert loaders["stream"].mode == "stream" and loaders["resident"].mode != "stream"
        out["resident_mode"] = loaders["resident"].mode
        secs: dict[str, list[float]] = {k: [] for k in loaders}
        n = len(split)
        for e in range(epochs):
            for k in (list(loaders) if e % 2 == 0 else list(loaders)[::-1]):
                s, count = time_epochs(loaders[k], 1, sync=sync)
                assert count == n, (k, count, n)
                secs[k] += s
        for k in loaders:
            out[f"{k}{'_aug' if aug else ''}_img_s"] = round(rate(n, secs[k])[0], 1)


VIEWS = {"aten::" + n for n in ("slice", "select", "unsqueeze", "squeeze", "permute", "reshape", "view", "unbind",
                                  "transpose", "detach", "lift_fresh", "resolve_conj", "resolve_neg", "alias",
                                  "expand", "as_strided", "t", "split", "chunk", "narrow", "empty", "empty_like")}


def ops_per_batch(loader, batches: int = 8) -> dict:
    """Operators a batch of ``loader`` costs (gather, augment, normalise): ``ops`` top-level ``aten::`` calls,
    ``compute_ops`` those of them that are not views or allocations (on a GPU each is at least one kernel launch),
    and on CUDA ``cuda_kernels`` launched. Averaged over ``batches`` batches of one pass (its plan included)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loader.device.type == "cuda" else [])
    n = 0
    with profile(activities=acts) as prof:
        for _ in loader:
            n += 1
            if n == batches:
                break
        if loader.device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    top = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
    out = {"ops": round(len(top) / n, 1), "compute_ops": round(sum(e.name not in VIEWS for e in top) / n, 1)}
    if loader.device.type == "cuda":
        kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        out["cuda_kernels"] = round(len(kernels) / n, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000, help="generated 64x64 JPEGs (default 20000)")
    p.add_argument("--epochs", type=int, default=6,
                   help="epochs per pipeline, alternating; the first is a warm-up, the median of the others counts")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (naive) and decode workers (ours)")
    p.add_argument("--persistent-workers", action="store_true",
                   help="keep the naive DataLoader's workers between epochs (not its default)")
    p.add_argument("--gpu-batch", type=int, default=1024, help="batch size of the GPU-resident measurement")
    p.add_argument("--dir", help="keep the generated tree here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads for ours (0 = torch's default)")
    p.add_argument("--cache-only", action="store_true", help="only generate, build and load the cache (no JSON)")
    p.add_argument("--stream", action="store_true", help="also time streamed vs resident batches (same device)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    stoppable()
    res = Results(args.out, images=args.images, batch_size=args.batch, torch=torch.__version__)
    try:
        return _main(args, res)
    except KeyboardInterrupt as e:
        res.finish(partial=True, stopped_by=str(e) or "SIGINT")
        print(f"stopped ({str(e) or 'SIGINT'}): partial results in {args.out}", flush=True)
        return 130


def _main(args: argparse.Namespace, res: Results) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tinytransfer.data.dataset").setLevel(logging.ERROR)  # the generated tree has no val/ on purpose
    from tinytransfer.data.augment import make_transform  # written alongside; imported when needed

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
        res.update(cache_build_s=round(build_s, 3), cache_load_s=round(load_s, 4), cache_load_read_s=round(read_s, 4))

        if args.cache_only:
            return 0
        tf = make_transform("keras", MEAN, STD)  # the report's augmentation, /255 and normalisation
        ours = DeviceLoader(ds.train, args.batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                            transform=tf, aug_generator=torch.Generator().manual_seed(1))
        naive = naive_loader(root / "train", args.batch, args.workers, args.persistent_workers)
        xo, _ = next(iter(ours))
        ops = ops_per_batch(ours)
        print(f"ours: {ops['ops']:.0f} aten ops a batch ({ops['compute_ops']:.0f} not views)"
              + (f", {ops['cuda_kernels']:.0f} CUDA kernels" if "cuda_kernels" in ops else ""), flush=True)
        res.update(ops_per_batch=ops)
        xn, _ = next(iter(naive))
        assert xo.shape == xn.shape == (args.batch, 3, 64, 64) and xo.dtype == xn.dtype == torch.float32, \
            (xo.shape, xo.dtype, xn.shape, xn.dtype)
        assert len(naive.dataset) == n, (len(naive.dataset), n)
        # Epochs alternate between the pipelines (rotating their order), so that all see the same machine (2 shared
        # cores). "ours, 1 thread" is the same loader with one intra-op thread: when other work competes for the
        # cores, OpenMP's per-op barriers can stall a 2-thread process much more than its share of the CPU.
        threads = torch.get_num_threads()

        def one_thread_epoch() -> tuple[list[float], int]:
            torch.set_num_threads(1)
            try:
                return time_epochs(ours, 1)
            finally:
                torch.set_num_threads(threads)

        runs = {"ours": lambda: time_epochs(ours, 1), "ours_1thread": one_thread_epoch,
                "naive": lambda: time_epochs(naive, 1)}
        secs: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for e in range(args.epochs):
            for k in names[e % 3:] + names[:e % 3]:
                s, count = runs[k]()
                assert count == n, (k, count, n)
                secs[k] += s
        naive = None  # its loader (and worker processes) freed before the next measurements
        ours_rate, ours_epochs = rate(n, secs["ours"])
        one_rate, one_epochs = rate(n, secs["ours_1thread"])
        naive_rate, naive_epochs = rate(n, secs["naive"])
        plain = DeviceLoader(ds.train, args.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        plain_rate, _ = rate(n, time_epochs(plain, 3)[0])
        tf_rate, warp_rate = transform_ceiling(tf, xo.new_empty(xo.shape).uniform_(0, 255))
        print(f"ours  (cached uint8 + DeviceLoader + keras batch aug + normalise, cpu, {threads} threads): "
              f"{', '.join(f'{r:.0f}' for r in ours_epochs)} img/s per epoch -> median {ours_rate:.0f} img/s")
        print(f"ours  (the same, 1 thread): "
              f"{', '.join(f'{r:.0f}' for r in one_epochs)} img/s per epoch -> median {one_rate:.0f} img/s")
        print(f"      loader alone (no augmentation) {plain_rate:.0f} img/s; transform alone {tf_rate:.0f} img/s; "
              f"bare grid_sample {warp_rate:.0f} img/s (batch {args.batch}, {threads} threads)")
        print(f"naive (ImageFolder PIL + RandomAffine bilinear + flip + ToTensor + Normalize, DataLoader "
              f"{args.workers} workers{', persistent' if args.persistent_workers else ''}): "
              f"{', '.join(f'{r:.0f}' for r in naive_epochs)} img/s per epoch -> median {naive_rate:.0f} img/s")
        ratio = ours_rate / naive_rate
        print(f"ratio ours/naive (medians of the epochs after the warm-up): {ratio:.2f}x "
              f"({one_rate / naive_rate:.2f}x with 1 thread)")

        res.update(ours_img_s=round(ours_rate, 1), naive_img_s=round(naive_rate, 1))
        rows = [
            {"system": "tinytransfer: cached uint8 + DeviceLoader + keras batch augmentation + normalise",
             "model": None, "input_size": 64, "phase": "pipeline", "device": "cpu", "img_s": round(ours_rate, 1)},
            {"system": "tinytransfer: the same, 1 intra-op thread", "model": None, "input_size": 64,
             "phase": "pipeline", "device": "cpu", "img_s": round(one_rate, 1)},
            {"system": "naive: ImageFolder PIL decode + RandomAffine(bilinear) + flip + ToTensor + Normalize, "
                       f"DataLoader {args.workers} workers", "model": None, "input_size": 64, "phase": "pipeline",
             "device": "cpu", "img_s": round(naive_rate, 1)},
        ]
        stream = None
        if args.stream:
            stream = stream_vs_resident(ds.train, args.batch, tf, max(3, args.epochs))
            dev = stream["device"]
            print(f"stream vs resident ({dev}, batch {args.batch}, budget {stream['budget_gb']:.4f} GB < the split): "
                  f"loader alone {stream['stream_img_s']:.0f} vs {stream['resident_img_s']:.0f} img/s "
                  f"({stream['resident_mode']}); with keras aug {stream['stream_aug_img_s']:.0f} vs "
                  f"{stream['resident_aug_img_s']:.0f} img/s")
            for what, key in (("streamed from the host cache (prefetch thread)", "stream"),
                              (f"resident ({stream['resident_mode']})", "resident")):
                rows.append({"system": f"tinytransfer: DeviceLoader {what}, no augmentation", "model": None,
                             "input_size": 64, "phase": "pipeline", "device": dev, "img_s": stream[f"{key}_img_s"]})
        gpu_rate = None
        gpu_name = None
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            gpu_name = torch.cuda.get_device_name(dev)
            g_loader = DeviceLoader(ds.train, args.gpu_batch, device=dev, shuffle=True, preload=True,
                                    generator=torch.Generator().manual_seed(0), transform=tf,
                                    aug_generator=torch.Generator(device=dev).manual_seed(1))
            g_s, count = time_epochs(g_loader, max(args.epochs, 6), sync=torch.cuda.synchronize)
            gpu_rate, g_epochs = rate(count, g_s)
            g_ops = ops_per_batch(g_loader)
            print(f"gpu: {g_ops['ops']:.0f} aten ops, {g_ops.get('cuda_kernels', 0):.0f} CUDA kernels a batch",
                  flush=True)
            print(f"gpu   (uint8 split resident on {gpu_name}, keras aug there, batch {args.gpu_batch}): "
                  f"{', '.join(f'{r:.0f}' for r in g_epochs)} img/s per epoch -> median {gpu_rate:.0f} img/s")
            rows.append({"system": f"tinytransfer: GPU-resident uint8 + keras batch augmentation "
                                   f"(batch {args.gpu_batch})", "model": None, "input_size": 64,
                         "phase": "pipeline", "device": gpu_name, "img_s": round(gpu_rate, 1)})

        result = {
            "ours_img_s": round(ours_rate, 1),
            "naive_img_s": round(naive_rate, 1),
            "ratio": round(ratio, 3),
            "ours_1thread_img_s": round(one_rate, 1),
            "ratio_1thread": round(one_rate / naive_rate, 3),
            "cache_load_s": round(load_s, 4),
            "cache_load_read_s": round(read_s, 4),
            "cache_build_s": round(build_s, 3),
            "loader_only_img_s": round(plain_rate, 1),
            "transform_only_img_s": round(tf_rate, 1),
            "grid_sample_only_img_s": round(warp_rate, 1),
            "gpu_img_s": None if gpu_rate is None else round(gpu_rate, 1),
            "stream": stream,
            "gpu_ops_per_batch": None if gpu_rate is None else g_ops,
            "ours_epoch_img_s": [round(r, 1) for r in ours_epochs],
            "ours_1thread_epoch_img_s": [round(r, 1) for r in one_epochs],
            "naive_epoch_img_s": [round(r, 1) for r in naive_epochs],
            "images": n,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "workers": args.workers,
            "persistent_workers": bool(args.persistent_workers),
            "mean": list(MEAN),
            "std": list(STD),
            "torch_threads": threads,
            "cpu_count": os.cpu_count(),
            "gpu": gpu_name,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        res.rows[:] = rows
        res.finish(**result)
        print(f"wrote {args.out}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
