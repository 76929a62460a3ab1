"""No host sync inside a training step, checked on the device the GPU check runs on.

    python benchmarks/sync_check.py                  # VGG16 + the report's head, batch 64, both configurations
    python benchmarks/sync_check.py --model timm:test_resnet --size 32 --batch 8   # a toy run (any machine)

A real ``DeviceLoader`` (resident: the uint8 split on the device, as on CUDA) feeds ``steps.train_one_epoch`` for a
few steps per (configuration, phase), after one warm-up pass. On CUDA the steps run under
``torch.cuda.set_sync_debug_mode("error")``: a synchronising call raises, and the row says which. Everywhere the
steps also run under ``training.hostsync.HostSyncRecorder``, which lists host reads and host→device copies (the
epoch's setup and its closing reduction are allowed; nothing inside a step is). Writes one row per (configuration,
phase) to ``benchmarks/results/sync_check.json``: ``ok``, ``inside_steps`` (what was recorded there), ``error``.
Exit 4 if any row is not ok.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results, stoppable  # noqa: E402
from throughput import CONFIGS, HEADS  # noqa: E402

from tinytransfer.config import PhaseConfig  # noqa: E402
from tinytransfer.data.augment import make_transform  # noqa: E402
from tinytransfer.data.dataset import Split  # noqa: E402
from tinytransfer.data.loader import DeviceLoader  # noqa: E402
from tinytransfer.models.backbones import create_model  # noqa: E402
from tinytransfer.models.freezing import set_trainable  # noqa: E402
from tinytransfer.training import steps  # noqa: E402
from tinytransfer.training.hostsync import record_step_syncs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sync_check.json"


def check(model_name: str, size: int, batch: int, n_steps: int, config: str, phase: str,
          device: torch.device) -> dict:
    optimizer, bn_variance, normalize, amp = CONFIGS[config]
    model = create_model(model_name, 200, pretrained=False, head=HEADS.get(model_name, "pool"), input_size=size,
                         bn_variance=bn_variance).to(device).to(memory_format=torch.channels_last)
    mean, std = ((0.0,) * 3, (1.0,) * 3) if normalize == "rescale" else (tuple(model.mean), tuple(model.std))
    rng = np.random.default_rng(0)
    n = batch * n_steps
    split = Split(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                  labels=rng.integers(0, 200, n).astype(np.int64), files=[f"{i}.JPEG" for i in range(n)])
    loader = DeviceLoader(split, batch, device=device, shuffle=True, generator=torch.Generator().manual_seed(0),
                          transform=make_transform("keras", mean, std, input_size=size),
                          aug_generator=torch.Generator(device=device).manual_seed(1), preload=True,
                          channels_last=True)
    pc = PhaseConfig(train="head" if phase == "frozen" else "all", lr_policy="triangular", lr_min=1e-5,
                     lr_max=1e-4, step_size=4, batch_size=batch, optimizer=optimizer)
    set_trainable(model, pc.train)
    opt = steps.make_optimizer(model, pc, fused=True)
    row = {"config": config, "phase": phase, "model": model_name, "batch": batch, "steps": n_steps,
           "device": str(device), "ok": False, "inside_steps": [], "error": None}
    try:
        rec, _ = record_step_syncs(model, loader, opt, pc, device=device, amp=amp)
        row["inside_steps"] = sorted(set(rec.inside("step")))
        row["ok"] = not row["inside_steps"]
    except RuntimeError as e:  # set_sync_debug_mode("error") raises at a synchronising call
        row["error"] = str(e).strip().splitlines()[0][:300]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--configs", default="fast,paper")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    stoppable()
    device = steps.resolve_device(a.device)
    res = Results(a.out, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  sync_debug_mode=device.type == "cuda")
    try:
        for config in a.configs.split(","):
            for phase in ("frozen", "unfrozen"):
                row = check(a.model, a.size, a.batch, a.steps, config, phase, device)
                print(f"{config:<6} {phase:<9} {'ok' if row['ok'] else 'HOST SYNC'}"
                      + (f": {row['error']}" if row["error"] else "")
                      + (f" inside steps: {', '.join(row['inside_steps'])}" if row["inside_steps"] else ""),
                      flush=True)
                res.add(row)
    except KeyboardInterrupt as e:
        res.finish(partial=True, stopped_by=str(e) or "SIGINT")
        return 130
    res.finish()
    print(f"wrote {a.out}")
    return 0 if all(r["ok"] for r in res.rows) else 4


if __name__ == "__main__":
    sys.exit(main())
