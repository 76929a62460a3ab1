"""Training and inference images/s per backbone, this project's step beside a plain PyTorch loop, in one run.

    python benchmarks/throughput.py                          # CPU defaults: vgg16 + efficientnet_lite0 at 64 px
    python benchmarks/throughput.py --models vgg16,vgg16_bn,efficientnet_lite0,resnet50 --sizes 64,224 --peers
    python benchmarks/throughput.py --batch 64,256 --compile   # on a GPU: batch sweep, torch.compile
    python benchmarks/throughput.py --peers --keras-python /work/tfvenv/bin/python   # + the report's Keras system

For every (model, input size, phase) it times:
- ``tinytransfer``: the real training step (``engine.train_one_epoch``) on a uint8 split held by ``DeviceLoader``
  with the recipe's ``keras`` augmentation on the device, bf16 autocast + channels_last on CUDA, float32 on CPU,
  the frozen base under ``torch.inference_mode``; inference through ``engine.evaluate``. ``--configs`` says which
  training configurations: ``fast`` (fused PyTorch Adam, plain BatchNorm1d, the backbone's normalisation, bf16 on
  CUDA) and ``paper`` (the vgg16-paper recipe's own: adam-keras (fused kernel on CUDA), KerasBatchNorm1d, rescale-only
  input, float32 with TF32 matmuls on CUDA), rows ``tinytransfer`` and ``tinytransfer[paper]``; ``paper`` rows are
  measured at the smallest ``--batch`` only.
- ``plain-pytorch`` (``--peers``): the loop most users write — the same network in float32 (``+amp`` variant on
  CUDA; the fp32 row strict float32, TF32 off for matmuls and convolutions), contiguous layout, frozen
  parameters marked ``requires_grad=False``, batches from a torchvision
  ``ImageFolder`` + ``DataLoader`` (``--plain-workers``, default one per core but one, PIL decode, ``RandomAffine``
  + flip + ``ToTensor`` + ``Normalize``) over JPEGs of the same images (at least ``--jpegs`` and 8 batches of the
  largest ``--batch``, so that its DataLoader does not restart every few steps).
- ``keras-report`` (``--keras-python PATH``, vgg16 at 64 px): ``benchmarks/peers/keras_report.py`` run under a
  separate TensorFlow venv after the PyTorch measurements, its rows merged in (TFLOP/s from the same FLOP count).
Achieved TFLOP/s come from ``torch.utils.flop_counter`` (training = forward + 2 × the trained part's forward); on
a GPU the bf16 matmul peak is measured in the same run and each row gets its fraction of it.
``input`` is our input pipeline alone (gather from the uint8 split, augment, normalise, over as many batches, timed
right after the step) as a share of the training step's time.
Every figure is timed over at least ``--steps`` steps and, with ``--min-seconds S``, over at least S seconds of
them (whole passes of ``--steps`` steps, repeated).
``--compile`` compiles with ``fullgraph=True`` and reports dynamo's counts a row (``compile``: graphs compiled,
graphs compiled while timed = recompiles, graph breaks); a compiled row that fails or falls back to eager is printed
as such and makes the script exit 3. ``--compile-backend eager`` traces through dynamo without code generation (the
CPU smoke test of the same path).
Writes ``benchmarks/results/throughput.json`` as each row is measured (SIGINT/SIGTERM: the rows so far, marked
``partial``, exit 130): rows with system, model, input_size, phase, batch, device, img_s, tflops, peak_fraction,
input_fraction, seconds, steps.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results, cuda_sync, stoppable  # noqa: E402

from tinytransfer.config import PhaseConfig  # noqa: E402
from tinytransfer.data.augment import make_transform  # noqa: E402
from tinytransfer.data.dataset import Split  # noqa: E402
from tinytransfer.data.loader import DeviceLoader  # noqa: E402
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import set_trainable
from tinytransfer.training import engine  # noqa: E402
from tinytransfer.training.compilestats import dynamo_counts, dynamo_disabled, fell_back, since  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
HEADS = {"vgg16": "paper", "vgg16_bn": "paper"}  # others: global-pool head
CONFIGS = {  # training configurations: (optimizer, head BatchNorm variance rule, input normalisation, amp)
    "fast": ("adam", "unbiased", "backbone", "auto"),
    "paper": ("adam-keras", "biased", "rescale", "off"),  # recipes/vgg16-paper.yaml
}


def synthetic_split(n: int, size: int = 64, classes: int = 200, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    imgs = np.repeat(np.repeat(small, size // 8, axis=1), size // 8, axis=2)  # blocky but cheap (N, H, W, 3)
    return Split(images=np.ascontiguousarray(imgs), labels=rng.integers(0, classes, n).astype(np.int64),
                 files=[f"img_{i}.JPEG" for i in range(n)])


def forward_flops(model: nn.Module, size: int, part: nn.Module | None = None) -> float:
    """FLOPs of one image's forward pass (of ``part`` only, if given)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    model = model.cpu().eval()
    with torch.no_grad():
        if part is None:
            with FlopCounterMode(display=False) as fc:
                model(x)
            return float(fc.get_total_flops())
        feats = model.body(x)
        with FlopCounterMode(display=False) as fc:
            part(feats)
        return float(fc.get_total_flops())


def bf16_peak(device: torch.device) -> float:
    """Measured bf16 matmul TFLOP/s (8192³, best of a few)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12)
    return best


def _timed(run_pass: "callable", min_seconds: float, device: torch.device) -> tuple[int, float, int]:
    """Call ``run_pass()`` (returns the images it did) once, and again until ``min_seconds`` have passed.

    Returns (images, seconds, passes). Each pass ends in a host read (the engine's once-a-pass metrics), so the
    clock sees finished work."""
    cuda_sync(device)
    t = time.perf_counter()
    n = passes = 0
    while True:
        n += run_pass()
        passes += 1
        if time.perf_counter() - t >= min_seconds:
            break
    cuda_sync(device)
    return n, time.perf_counter() - t, passes


def compile_model(model: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """``torch.compile`` with ``fullgraph=True`` (a graph break raises instead of running part of it eagerly) and
    ``dynamic=False``, as the engine compiles (``training.compiling.wrap_for_phase``)."""
    if backend == "inductor":
        return torch.compile(model, mode=mode, fullgraph=True, dynamic=False)
    return torch.compile(model, backend=backend, fullgraph=True, dynamic=False)  # modes belong to inductor


def time_ours(name: str, size: int, phase: str, batch: int, steps: int, warmup: int, device: torch.device,
              compile_: bool, amp: str | None = None, compile_mode: str = "default", min_seconds: float = 0.0,
              compile_backend: str = "inductor", config: str = "fast") -> dict:
    """img_s of the step, input_fraction (the input pipeline alone as a share of the step's time; None for
    inference), seconds and steps timed, and with ``compile_`` dynamo's counts (``compile``). ``config``: a key of
    :data:`CONFIGS` (``amp`` None: the configuration's own)."""
    optimizer, bn_variance, normalize, config_amp = CONFIGS[config]
    amp = amp or config_amp
    model = create_model(name, 200, pretrained=False, head=HEADS.get(name, "pool"), input_size=size,
                         bn_variance=bn_variance)
    cl = True  # as the engine's channels_last="auto": faster on CUDA and with oneDNN on the CPU
    model.to(device)
    if cl:
        model.to(memory_format=torch.channels_last)
    split = synthetic_split(batch * (steps + warmup), 64)
    tf_name = "keras" if phase != "inference" else "none"
    mean, std = ((0.0,) * 3, (1.0,) * 3) if normalize == "rescale" else (tuple(model.mean), tuple(model.std))
    tf = make_transform(tf_name, mean, std, input_size=size)
    gen = torch.Generator(device=device).manual_seed(0)
    loader = DeviceLoader(split, batch, device=device, shuffle=phase != "inference",
                          generator=torch.Generator().manual_seed(0), transform=tf, aug_generator=gen,
                          channels_last=cl)
    counts0 = dynamo_counts()
    net = compile_model(model, compile_mode, compile_backend) if compile_ else model
    out: dict = {}
    if phase == "inference":
        model.eval()
        ev = DeviceLoader(synthetic_split(batch * warmup, 64), batch, device=device, transform=tf, channels_last=cl)
        engine.evaluate(net, ev, device=device, amp=amp)
        counts1 = dynamo_counts()
        n, secs, passes = _timed(lambda: engine.evaluate(net, loader, device=device, amp=amp)["n"], min_seconds,
                                 device)
        out.update(img_s=n / secs, input_fraction=None, seconds=secs, steps=n // batch)
    else:
        pc = PhaseConfig(train="head" if phase == "frozen" else "all", lr_policy="constant", lr_max=1e-4,
                         batch_size=batch, optimizer=optimizer)
        set_trainable(model, pc.train)
        opt = engine.make_optimizer(model, pc, fused=device.type == "cuda")
        state = engine.TrainState()
        warm = DeviceLoader(synthetic_split(batch * warmup, 64), batch, device=device, shuffle=True,
                            generator=torch.Generator().manual_seed(1), transform=tf, aug_generator=gen,
                            channels_last=cl)
        engine.train_one_epoch(net, warm, opt, pc, state, device=device, amp=amp)
        counts1 = dynamo_counts()

        def one_pass() -> int:
            return engine.train_one_epoch(net, loader, opt, pc, state, device=device, max_steps=steps, amp=amp)["n"]

        n, step_s, passes = _timed(one_pass, min_seconds, device)

        def input_pass() -> int:  # the input pipeline alone over as many batches: gather, augment, normalise
            seen = 0
            for i, (x, _) in enumerate(loader):
                seen += x.shape[0]
                if i + 1 == steps:
                    break
            return seen

        t = time.perf_counter()
        for _ in range(passes):
            input_pass()
        cuda_sync(device)
        out.update(img_s=n / step_s, input_fraction=(time.perf_counter() - t) / step_s, seconds=step_s,
                   steps=n // batch)
    if compile_:
        total, timed = since(counts0), since(counts1)
        out["compile"] = {"graphs": total.get("graphs", 0), "graphs_while_timed": timed.get("graphs", 0),
                          "graph_breaks": total.get("graph_breaks", 0), "backend": compile_backend,
                          "cudagraph_skips": total.get("cudagraph_skips", 0),
                          "compile_s": round(total.get("compile_ms", 0) / 1000, 2),
                          "dynamo_disabled": dynamo_disabled()}
        out["compile_fallback"] = fell_back(total)
    return out


def write_jpegs(root: Path, split: Split, classes: int = 10) -> Path:
    from PIL import Image

    for i, img in enumerate(split.images):
        d = root / f"c{int(split.labels[i]) % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


def time_plain(name: str, size: int, phase: str, batch: int, steps: int, warmup: int, device: torch.device,
               amp: bool, jpeg_root: Path, workers: int, min_seconds: float = 0.0) -> dict:
    """The loop most PyTorch users write: ImageFolder + DataLoader (``workers`` processes) + torchvision
    transforms, fp32 (or AMP); timed over at least ``steps`` steps and ``min_seconds`` seconds."""
    from torchvision import datasets, transforms

    if device.type == "cuda" and not amp and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32):
        # the "fp32" row is strict float32: TF32 off for matmuls and convolutions (run_all switches it on for ours)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return time_plain(name, size, phase, batch, steps, warmup, device, amp, jpeg_root, workers, min_seconds)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    model = create_model(name, 200, pretrained=False, head=HEADS.get(name, "pool"), input_size=size)
    model.frozen_body_fast = False  # a plain loop has no inference-mode shortcut
    model.to(device)
    if phase == "frozen":
        for p in model.body.parameters():
            p.requires_grad = False
    mean, std = list(model.mean), list(model.std)
    aug = [transforms.RandomAffine(20, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2),
           transforms.RandomHorizontalFlip()] if phase != "inference" else []
    resize = [transforms.Resize(size)] if size != 64 else []
    tf = transforms.Compose([*aug, *resize, transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(jpeg_root), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    crit = nn.CrossEntropyLoss()
    done, t, i = 0, 0.0, 0
    it = iter(dl)
    while i < warmup + steps or time.perf_counter() - t < min_seconds:
        if i == warmup:
            cuda_sync(device)
            t = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(dl)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                            enabled=amp):
            if phase == "inference":
                model.eval()
                with torch.no_grad():
                    model(x)
            else:
                model.train()
                loss = crit(model(x), y)
        if phase != "inference":
            opt.zero_grad()
            loss.backward()
            opt.step()
        if i >= warmup:
            done += x.shape[0]
        i += 1
    cuda_sync(device)
    secs = time.perf_counter() - t
    return {"img_s": done / secs, "input_fraction": None, "seconds": secs, "steps": i - warmup}



def run_keras_peer(python: str, steps: int, phases: str, rows: list, peak: float | None) -> dict | None:
    """Run benchmarks/peers/keras_report.py under ``python`` (a TensorFlow venv) and merge its rows into ``rows``."""
    import subprocess

    script = Path(__file__).resolve().parent / "peers" / "keras_report.py"
    with tempfile.TemporaryDirectory(prefix="tt-keras-") as tmp:
        out = Path(tmp) / "keras_report.json"
        cmd = [python, str(script), "--steps", str(steps), "--phases", phases, "--out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            print(f"{'keras-report':<22} failed: {e}")
            return None
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            print(f"{'keras-report':<22} failed (exit {proc.returncode}): " + " | ".join(tail))
            return None
        res = json.loads(out.read_text())
    for row in res.pop("rows"):
        same = [r for r in rows if r["model"] == row["model"] and r["input_size"] == row["input_size"]
                and r["phase"] == row["phase"] and r.get("gflop_per_img")]
        gflop = same[0]["gflop_per_img"] if same else None
        tflops = row["img_s"] * gflop / 1e3 if gflop else None
        row.update({"tflops": round(tflops, 4) if tflops else None, "gflop_per_img": gflop,
                    "peak_fraction": round(tflops / peak, 4) if tflops and peak and row["device"] != "cpu" else None})
        rows.append(row)
        line = f"{row['system']:<22} {row['model']:<18} {row['input_size']:>4} {row['phase']:<10} {row['batch']:>5}"
        line += f" {row['img_s']:>9.1f} " + (f"{tflops:>8.3f}" if tflops else f"{'-':>8}")
        line += f"  ({row['device']}, tensorflow {res.get('tensorflow')})"
        print(line, flush=True)
    return res


def print_side_by_side(rows: list[dict]) -> None:
    """One line per (model, size, phase, batch), img/s of every system in columns, and ours over each peer."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    if len(systems) < 2:
        return
    keys = list(dict.fromkeys((r["model"], r["input_size"], r["phase"], r["batch"]) for r in rows))
    ours = next(s for s in systems if s.startswith("tinytransfer"))
    print("\nimg/s side by side" + f" (last columns: {ours} / peer)")
    head = f"{'model':<18} {'size':>4} {'phase':<10} {'batch':>5}" + "".join(f" {s[:20]:>20}" for s in systems)
    peers = [s for s in systems if not s.startswith("tinytransfer")]
    head += "".join(f" {'/ ' + p[:12]:>14}" for p in peers)
    print(head)
    for key in keys:
        got = {r["system"]: r["img_s"] for r in rows if (r["model"], r["input_size"], r["phase"], r["batch"]) == key}
        line = f"{key[0]:<18} {key[1]:>4} {key[2]:<10} {key[3]:>5}"
        line += "".join(f" {got[s]:>20.1f}" if s in got else f" {'-':>20}" for s in systems)
        line += "".join(f" {got[ours] / got[p]:>13.2f}x" if ours in got and p in got else f" {'-':>14}"
                        for p in peers)
        print(line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="vgg16,efficientnet_lite0")
    p.add_argument("--sizes", default="64")
    p.add_argument("--phases", default="frozen,unfrozen,inference")
    p.add_argument("--batch", default="64", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=0, help="timed steps a pass (default 3 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps (default 1 on CPU, 10 on GPU)")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="time every figure over at least this many seconds of steps (passes of --steps repeated)")
    p.add_argument("--peers", action="store_true", help="also time the plain PyTorch loop")
    p.add_argument("--plain-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="DataLoader workers of the plain loop (default: one per core but one)")
    p.add_argument("--jpegs", type=int, default=2048, help="JPEGs the plain loop reads (at least 8 batches)")
    p.add_argument("--configs", default="fast",
                   help="our training configurations, comma-separated: fast | paper (vgg16-paper's own)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (fullgraph)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (eager: dynamo only, no code generation: a quick CPU check)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cpu-bf16", action="store_true", help="also time our step with bf16 autocast on the CPU")
    p.add_argument("--keras-python", default="", metavar="PATH",
                   help="python of a TensorFlow venv: also time the report's Keras system "
                        "(benchmarks/peers/keras_report.py; vgg16 at 64 px only)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    stoppable()
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = engine.resolve_device(a.device)
    gpu = device.type == "cuda"
    steps = a.steps or (50 if gpu else 3)
    warmup = a.warmup or (10 if gpu else 1)
    dev_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    res = Results(a.out, device=dev_name, torch=torch.__version__, python=platform.python_version(),
                  bf16_peak_tflops=None, steps=steps, warmup=warmup, min_seconds=a.min_seconds,
                  plain_workers=a.plain_workers)
    try:
        bad_compiles = run_all(a, res, device, gpu, steps, warmup, dev_name)
    except KeyboardInterrupt as e:  # SIGINT/SIGTERM at the deadline: the rows so far are on disk
        res.finish(partial=True, stopped_by=str(e) or "SIGINT")
        print(f"stopped ({str(e) or 'SIGINT'}): {len(res.rows)} rows measured, partial results in {a.out}",
              flush=True)
        return 130
    res.finish()
    print(f"wrote {a.out}")
    if bad_compiles:
        print(f"COMPILE FAILED OR FELL BACK TO EAGER: {', '.join(bad_compiles)}", flush=True)
        return 3
    return 0


def run_all(a: argparse.Namespace, res: Results, device: torch.device, gpu: bool, steps: int, warmup: int,
            dev_name: str) -> list[str]:
    """Measure every job, adding each row to ``res`` as it comes; the compiled rows that failed or fell back."""
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = bf16_peak(device) if gpu else None
    res.update(bf16_peak_tflops=peak)
    print(f"device: {dev_name}" + (f", measured bf16 matmul peak {peak:.0f} TFLOP/s" if peak else ""), flush=True)
    rows = res.rows
    bad_compiles: list[str] = []
    header = f"{'system':<22} {'model':<18} {'size':>4} {'phase':<10} {'batch':>5} {'img/s':>9} {'TFLOP/s':>8}"
    header += f" {'of peak':>7}" if peak else ""
    header += f" {'input':>6} {'s':>5}"  # the input pipeline alone, as a share of the training step's time
    print(header)
    print("-" * len(header), flush=True)
    jobs = []  # (system, amp, config, model, size, phase, batch, FLOPs an image)
    batches = [int(b) for b in a.batch.split(",")]
    configs = a.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {c!r} (known: {', '.join(CONFIGS)})")
    for name in a.models.split(","):
        for size in map(int, a.sizes.split(",")):
            m = create_model(name, 200, pretrained=False, head=HEADS.get(name, "pool"), input_size=size)
            fwd = forward_flops(m, size)
            head_fwd = forward_flops(m, size, m.head)
            del m
            for phase in a.phases.split(","):
                per_img = {"inference": fwd, "frozen": fwd + 2 * head_fwd, "unfrozen": 3 * fwd}[phase]
                for batch in batches:
                    tag = "" if not a.compile else "+compile" + (
                        "" if a.compile_mode == "default" else f"({a.compile_mode})")
                    systems = [("tinytransfer" + ("" if c == "fast" else f"[{c}]") + tag, None, c) for c in configs
                               if c == "fast" or (batch == min(batches) and phase != "inference")]
                    if a.cpu_bf16 and not gpu:
                        systems.append(("tinytransfer+bf16", "bf16", "fast"))
                    if a.peers:
                        systems.append(("plain-pytorch", False, None))
                        if gpu:
                            systems.append(("plain-pytorch+amp", True, None))
                    jobs += [(system, amp, c, name, size, phase, batch, per_img) for system, amp, c in systems]
    # The plain loops run first, in the process as Python starts it: our rows then switch glibc to keeping freed
    # memory (engine.retain_host_memory, as the CLI does), which is process-wide and would speed the peers up too.
    jobs.sort(key=lambda j: not j[0].startswith("plain"))
    jpeg_dir = None
    for system, amp, config, name, size, phase, batch, per_img in jobs:
        compiled = "compile" in system
        try:
            if amp is None or amp == "bf16":
                engine.retain_host_memory()
                got = time_ours(name, size, phase, batch, steps, warmup, device, a.compile,
                                amp="bf16" if amp == "bf16" else None, compile_mode=a.compile_mode,
                                min_seconds=a.min_seconds, compile_backend=a.compile_backend, config=config)
            else:
                if jpeg_dir is None:
                    jpeg_dir = Path(tempfile.mkdtemp(prefix="tt-bench-"))
                    write_jpegs(jpeg_dir, synthetic_split(max(a.jpegs, max(batches) * 8), 64))  # the largest batch
                got = time_plain(name, size, phase, batch, steps, warmup, device, amp, jpeg_dir, a.plain_workers,
                                 min_seconds=a.min_seconds)
        except Exception as e:  # one failing configuration must not lose the others
            print(f"{system:<22} {name:<18} {size:>4} {phase:<10} {batch:>5} failed: {str(e)[:500]}", flush=True)
            if compiled:
                bad_compiles.append(f"{name} {phase} batch {batch}: failed")
            continue
        r, input_frac = got["img_s"], got["input_fraction"]
        tflops = r * per_img / 1e12
        row = {"system": system, "config": config, "model": name, "input_size": size, "phase": phase, "batch": batch,
               "device": dev_name, "img_s": round(r, 2), "tflops": round(tflops, 4),
               "gflop_per_img": round(per_img / 1e9, 3),
               "peak_fraction": round(tflops / peak, 4) if peak else None,
               "input_fraction": round(input_frac, 4) if input_frac is not None else None,
               "seconds": round(got["seconds"], 3), "steps": got["steps"]}
        if "compile" in got:
            row["compile"] = got["compile"]
            row["compile_fallback"] = got["compile_fallback"]
        line = f"{system:<22} {name:<18} {size:>4} {phase:<10} {batch:>5} {r:>9.1f} {tflops:>8.3f}"
        line += f" {100 * tflops / peak:>6.1f}%" if peak else ""
        line += f" {100 * input_frac:>5.1f}%" if input_frac is not None else f" {'-':>6}"
        line += f" {got['seconds']:>5.1f}"
        if "compile" in got:
            c = got["compile"]
            line += (f"  compile: {c['graphs']} graphs ({c['graphs_while_timed']} while timed), "
                     f"{c['graph_breaks']} breaks" + (" [dynamo disabled]" if c["dynamo_disabled"] else ""))
            if got["compile_fallback"] or c["graphs_while_timed"]:
                line += "  <- FELL BACK TO EAGER" if got["compile_fallback"] else "  <- RECOMPILED WHILE TIMED"
            if got["compile_fallback"]:
                bad_compiles.append(f"{name} {phase} batch {batch}: fell back")
        print(line, flush=True)
        res.add(row)
    keras_meta = None
    if a.keras_python and "vgg16" in a.models.split(",") and 64 in map(int, a.sizes.split(",")):
        keras_meta = run_keras_peer(a.keras_python, steps, a.phases, rows, peak)
    print_side_by_side(rows)
    if keras_meta is not None:
        res.update(keras_report=keras_meta)
    return bad_compiles


if __name__ == "__main__":
    sys.exit(main())
