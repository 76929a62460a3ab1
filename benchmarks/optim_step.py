"""Optimizer step time over VGG16 + the report's head (all 16.1 M parameters trainable): adam-keras's two update
paths beside PyTorch's Adam, in one run.

    python benchmarks/optim_step.py                       # CPU here; on CUDA: the device the GPU check gives it
    python benchmarks/optim_step.py --model timm:test_resnet --steps 3   # a quick look

Rows: ``adam (fused)`` and ``adam (foreach)``: ``torch.optim.Adam``; ``adam-keras (foreach)``: Keras 2's update
in multi-tensor kernels (what vgg16-paper trained with before); ``adam-keras (fused)``: the same update through
PyTorch's fused Adam kernel with Keras's epsilon rescaled (``training.optim.KerasAdam(fused=True)``, what the engine
uses on CUDA). Each is timed over ``--steps`` steps after ``--warmup``, gradients fixed (random), ms a step.
Writes ``benchmarks/results/optim_step.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results, cuda_sync, stoppable  # noqa: E402

from tinytransfer.models.backbones import create_model  # noqa: E402
from tinytransfer.training.optim import KerasAdam  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "optim_step.json"



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    stoppable()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    model = create_model(a.model, 200, pretrained=False, head="paper" if a.model.startswith("vgg") else "pool",
                         input_size=64).to(device)
    params = [q for q in model.parameters()]
    n = sum(q.numel() for q in params)
    res = Results(a.out, device=name, model=a.model, parameters=n, steps=a.steps, warmup=a.warmup)
    g = torch.Generator(device=device).manual_seed(0)
    grads = [torch.randn(q.shape, generator=g, device=device) * 1e-3 for q in params]
    makers = {
        "adam (fused)": lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True),
        "adam (foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-4, foreach=True),
        "adam-keras (foreach)": lambda ps: KerasAdam(ps, lr=1e-4),
        "adam-keras (fused)": lambda ps: KerasAdam(ps, lr=1e-4, fused=True),
    }
    print(f"device {name}, {a.model}: {n / 1e6:.1f} M parameters, {a.steps} steps after {a.warmup}")
    print(f"{'optimizer':<22} {'ms/step':>9}")
    try:
        for label, make in makers.items():
            ps = [q.detach().clone().requires_grad_() for q in params]
            for q, gr in zip(ps, grads):
                q.grad = gr
            opt = make(ps)
            for _ in range(a.warmup):
                opt.step()
            cuda_sync(device)
            t = time.perf_counter()
            for _ in range(a.steps):
                opt.step()
            cuda_sync(device)
            ms = 1000 * (time.perf_counter() - t) / a.steps
            print(f"{label:<22} {ms:>9.2f}", flush=True)
            res.add({"system": label, "model": a.model, "device": name, "ms_per_step": round(ms, 3)})
            del opt, ps
    except KeyboardInterrupt as e:
        res.finish(partial=True, stopped_by=str(e) or "SIGINT")
        return 130
    res.finish()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
