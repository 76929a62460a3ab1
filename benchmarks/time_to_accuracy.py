"""Validation accuracy against wall time for a recipe, run through the real ``tinytransfer train`` command.

    python benchmarks/time_to_accuracy.py                                  # demo recipe on the digits, 5 min budget
    python benchmarks/time_to_accuracy.py --compare-random                 # + the same run from random weights
    python benchmarks/time_to_accuracy.py --recipe vgg16-paper --data tiny-imagenet-200 --budget 600

Each run is a subprocess (``tinytransfer train --no-finish``); when the budget is spent it gets SIGINT and stops
cleanly after the current step. The curve is read from the run's ``metrics.csv`` (cumulative seconds of training
and evaluation, val top-1 per epoch). Writes ``benchmarks/results/time_to_accuracy.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_accuracy.json"
SRC = Path(__file__).resolve().parents[1] / "src"


def run(label: str, recipe: str, data: str, out: Path, budget: float, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tinytransfer.cli", "train", "--recipe", recipe, "--data", data, "--out", str(out),
           "--force", "--quiet", "--no-finish"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = False
    while proc.poll() is None:
        time.sleep(0.5)
        if time.perf_counter() - t0 > budget and not stopped:
            proc.send_signal(signal.SIGINT)
            stopped = True
    wall = time.perf_counter() - t0
    log = proc.stdout.read() if proc.stdout else ""
    if proc.returncode not in (0, 130):
        raise SystemExit(f"{label}: tinytransfer train failed ({proc.returncode}):\n{log[-2000:]}")
    rows = []
    if (out / "metrics.csv").is_file():
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    curve, total = [], 0.0
    for r in rows:
        total += float(r["seconds"])
        curve.append({"epoch": int(r["epoch"]), "phase": int(r["phase"]), "seconds": round(total, 1),
                      "val_acc": float(r["val_acc"]) if r["val_acc"] else None,
                      "train_acc": float(r["train_acc"]), "img_s": float(r["img_s"])})
    best = max((c["val_acc"] for c in curve if c["val_acc"] is not None), default=None)
    cfg = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    return {"label": label, "recipe": recipe, "sets": sets, "wall_s": round(wall, 1), "stopped_by_budget": stopped,
            "backbone": cfg.get("model", {}).get("backbone"), "input_size": cfg.get("model", {}).get("input_size"),
            "best_val_acc": best, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="demo")
    p.add_argument("--data", help="dataset folder (default: the digits demo dataset, built if needed)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--synthetic", type=int, default=0,
                   help="instead of --data: N generated images in 200 classes, Tiny ImageNet layout (train/ only)")
    p.add_argument("--compare-random", action="store_true", help="also run from random weights")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    sys.path.insert(0, str(SRC))
    work = Path(tempfile.mkdtemp(prefix="tt-tta-"))
    data = a.data
    if a.synthetic:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pipeline import make_tree

        data = str(make_tree(work / "synthetic", a.synthetic))
    elif not data:
        from tinytransfer.sources import build_demo_dataset

        data = build_demo_dataset(work / "digits")
    first = "random init" if "model.pretrained=false" in a.set else "pretrained"
    runs = [run(first, a.recipe, data, work / first.replace(" ", "-"), a.budget, a.set)]
    if a.compare_random:
        runs.append(run("random init", a.recipe, data, work / "random", a.budget,
                        [*a.set, "model.pretrained=false"]))
    import torch

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu ({os.cpu_count()} cores)"
    print(f"recipe {a.recipe} on {data}, device {device}, budget {a.budget:.0f} s a run")
    for r in runs:
        print(f"\n{r['label']}: best val {100 * (r['best_val_acc'] or 0):.2f}% in {r['wall_s']:.0f} s wall"
              + (" (stopped by the budget)" if r["stopped_by_budget"] else ""))
        print(f"  {'epoch':>5} {'phase':>5} {'seconds':>8} {'val top-1':>9} {'train':>7} {'img/s':>7}")
        for c in r["curve"]:
            va = f"{100 * c['val_acc']:8.2f}%" if c["val_acc"] is not None else "       -"
            print(f"  {c['epoch']:>5} {c['phase']:>5} {c['seconds']:>8.1f} {va} {100 * c['train_acc']:6.2f}% "
                  f"{c['img_s']:7.1f}")
    rows = [{"system": "tinytransfer", "model": f"{a.recipe} ({r['backbone']})", "input_size": r["input_size"],
             "phase": r["label"],
             "device": device, "img_s": (sum(c["img_s"] for c in r["curve"]) / len(r["curve"])) if r["curve"] else None,
             "best_val_acc": r["best_val_acc"], "wall_s": r["wall_s"]} for r in runs]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": device, "budget_s": a.budget, "runs": runs, "rows": rows}, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
