"""The resolution lever's compute cost: a stem that keeps resolution (``model.stem``) against the default, in one run.

    python benchmarks/stem_cost.py                                   # resnet50 + efficientnet_lite0 at 64 px, CPU
    python benchmarks/stem_cost.py --models resnet50 --size 64 --batch 32 --steps 5

For every (model, stem): forward GFLOPs an image (``torch.utils.flop_counter``, exact), the body's feature map, and
measured training (all layers, SGD step) and inference images/s on this machine (float32, channels_last, random
weights: the cost does not depend on the weights). Writes ``benchmarks/results/stem_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tinytransfer.fsutil import atomic_write_text
from tinytransfer.models.backbones import create_model

RESULTS = Path(__file__).resolve().parent / "results" / "stem_cost.json"
STEMS = {"resnet50": ("default", "stride1", "nopool", "keep"), "efficientnet_lite0": ("default", "stride1")}


def measure(name: str, stem: str, size: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, 200, pretrained=False, head="pool", input_size=size, stem=stem)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,))
    with FlopCounterMode(display=False) as fc:
        model.eval()(x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train = steps * batch / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        infer = steps * batch / (time.perf_counter() - t0)
    return {"model": name, "stem": stem, "input_size": size, "batch": batch, "feature_map": list(model.feature_shape),
            "gflops_per_image": round(fc.get_total_flops() / 2 / 1e9, 3),  # multiply-adds, as papers count
            "train_img_s": round(train, 1), "infer_img_s": round(infer, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,efficientnet_lite0")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    rows = []
    for name in a.models.split(","):
        for stem in STEMS.get(name, ("default", "keep")):
            r = measure(name, stem, a.size, a.batch, a.steps)
            rows.append(r)
            print(f"{r['model']:>20} {r['stem']:>8} map {r['feature_map']} {r['gflops_per_image']:7.3f} GMAC/img  "
                  f"train {r['train_img_s']:7.1f} img/s  infer {r['infer_img_s']:7.1f} img/s", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({"machine": platform.processor() or platform.machine(),
                                           "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
