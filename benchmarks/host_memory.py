"""What keeping freed host memory (``engine.retain_host_memory``) does to a CPU training step, side by side.

    python benchmarks/host_memory.py                 # VGG16 + paper head, 64 px, batch 64, frozen and all layers
    python benchmarks/host_memory.py --steps 20 --phases unfrozen

Each (setting, phase) runs in its own fresh Python process, so glibc starts as Python leaves it: ``default`` (blocks
above the mmap threshold, at most 32 MB, are mapped per allocation and unmapped on free) or ``retain`` (the two
``mallopt`` calls the CLI makes at start). The step is this project's (``engine.train_one_epoch`` on a uint8 split,
keras augmentation, channels_last, the frozen base under ``torch.inference_mode``). Reports images/s over the timed
steps, the resident set after the last step and its peak, and the ratio retain/default. Every third batch is 48
images, so that blocks of two sizes come and go as a last partial batch makes them.
Writes ``benchmarks/results/host_memory.json``: rows with system, model, input_size, phase, batch, device, img_s,
rss_mb, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "host_memory.json"
SRC = Path(__file__).resolve().parents[1] / "src"
BENCH = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import torch
sys.path[:0] = [SRC, BENCH]
from tinytransfer.training import engine
from tinytransfer.data.augment import make_transform
from tinytransfer.config import PhaseConfig
from tinytransfer.data.loader import DeviceLoader
from tinytransfer.models.backbones import create_model
from tinytransfer.models.freezing import set_trainable
from throughput import HEADS, synthetic_split

if SETTING == "retain":
    assert engine.retain_host_memory(), "mallopt did not take (not glibc?)"
torch.manual_seed(0)
model = create_model(MODEL, 200, pretrained=False, head=HEADS.get(MODEL, "pool"), input_size=64)
model.to(memory_format=torch.channels_last)
split = synthetic_split(64 * (WARMUP + STEPS))  # throughput.py's blocky 64x64 images
tf = make_transform("keras", tuple(model.mean), tuple(model.std))
pc = PhaseConfig(train="head" if PHASE == "frozen" else "all", lr_policy="constant", lr_max=1e-4, batch_size=64)
set_trainable(model, pc.train)
opt = engine.make_optimizer(model, pc)
state = engine.TrainState()
cpu = torch.device("cpu")

def loader(bs, k):
    return DeviceLoader(split, bs, shuffle=True, generator=torch.Generator().manual_seed(k), transform=tf,
                        aug_generator=torch.Generator().manual_seed(k), channels_last=True)

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

engine.train_one_epoch(model, loader(64, 1), opt, pc, state, device=cpu, max_steps=WARMUP)
done, t = 0, time.perf_counter()
for i in range(STEPS):  # one step per call so that the batch size can alternate 64, 64, 48
    res = engine.train_one_epoch(model, loader(48 if i % 3 == 2 else 64, i + 2), opt, pc, state, device=cpu,
                                 max_steps=1)
    done += res["n"]
img_s = done / (time.perf_counter() - t)
print(json.dumps({"img_s": img_s, "rss_mb": rss_mb(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--phases", default="frozen,unfrozen")
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    import torch

    device = f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    print(f"{a.model}, 64 px, batch 64 (every third 48), {a.steps} timed steps, {device}")
    print(f"{'setting':<9} {'phase':<9} {'img/s':>7} {'RSS MB':>7} {'peak MB':>8}")
    for phase in a.phases.split(","):
        for setting in ("default", "retain"):
            code = (f"SRC={str(SRC)!r}; BENCH={str(BENCH)!r}; SETTING={setting!r}; MODEL={a.model!r}; PHASE={phase!r}; "
                    f"STEPS={a.steps}; WARMUP={a.warmup}\n" + CHILD)
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{setting:<9} {phase:<9} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"system": f"tinytransfer ({setting} malloc)", "model": a.model, "input_size": 64,
                         "phase": phase, "batch": 64, "device": device, "img_s": round(r["img_s"], 2),
                         "rss_mb": round(r["rss_mb"]), "peak_rss_mb": round(r["peak_rss_mb"])})
            print(f"{setting:<9} {phase:<9} {r['img_s']:>7.1f} {r['rss_mb']:>7.0f} {r['peak_rss_mb']:>8.0f}",
                  flush=True)
        got = {row["system"]: row for row in rows if row["phase"] == phase}
        d, k = got.get("tinytransfer (default malloc)"), got.get("tinytransfer (retain malloc)")
        if d and k:
            print(f"{'retain/default':<19} {k['img_s'] / d['img_s']:>7.2f}x {k['rss_mb'] / d['rss_mb']:>6.2f}x "
                  f"{k['peak_rss_mb'] / d['peak_rss_mb']:>7.2f}x")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
