"""Operators and milliseconds a batch of the training input pipeline costs (DeviceLoader + the Keras transform).

    python benchmarks/augment_ops.py                    # batches of 8 and 64, one intra-op thread, on the CPU
    python benchmarks/augment_ops.py --device cuda      # + CUDA kernels a batch

Small batches show the per-operator (dispatch, on a GPU launch) overhead that the epoch plan of the augmentation
removes: the parameters, matrices and grid coefficients of a whole pass are computed at once, and a batch then
costs only its grid and ``grid_sample``. Prints one line a batch size: top-level ``aten::`` ops a batch (and those
that are not views), CUDA kernels where there are, and the best of ``--repeats`` epochs in ms a batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import ops_per_batch  # noqa: E402
from throughput import synthetic_split  # noqa: E402

from tinytransfer.data.augment import make_transform  # noqa: E402
from tinytransfer.data.loader import DeviceLoader  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batches", default="8,64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    split = synthetic_split(a.images)
    tf = make_transform("keras", (0.5,) * 3, (0.5,) * 3)
    for bs in map(int, a.batches.split(",")):
        ld = DeviceLoader(split, bs, device=device, shuffle=True, generator=torch.Generator().manual_seed(0),
                          transform=tf, aug_generator=torch.Generator(device=device).manual_seed(1),
                          channels_last=True)
        ops = ops_per_batch(ld, 16)
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            for _ in ld:
                pass
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        kern = f", {ops['cuda_kernels']:.0f} CUDA kernels" if "cuda_kernels" in ops else ""
        print(f"batch {bs:>4}: {ops['ops']:.0f} aten ops a batch ({ops['compute_ops']:.0f} not views){kern}; "
              f"{best / len(ld) * 1e3:.2f} ms a batch, {a.images / best:.0f} img/s (best of {a.repeats} epochs, "
              f"{a.threads} thread(s), {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
