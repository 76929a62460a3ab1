"""Training to a time budget: the whole command's wall time against the budget, with val and held-out test top-1.

Each budget runs ``tinytransfer train --recipe R --data D --budget B`` in a fresh process, as a user runs it (the
wall time includes Python's start, decoding, the measurement, training and the report), then scores the best
checkpoint on ``test/images`` against ``test/test_annotations.txt`` (build such sets with
``benchmarks/tuning_data.py``). The plan, every re-plan and the recorded times come from the run's config.yaml.

    python benchmarks/budget.py --data /tmp/cifar64 --budget 2m --budget 5m --budget 10m --out-json budget.json
    python benchmarks/budget.py --data /tmp/cifar64 --budget 2m --busy-after 40   # the cores get busier mid-run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_recipes import cpu_name, test_accuracy  # noqa: E402


def _busy_after(seconds: float) -> tuple[threading.Timer, list[subprocess.Popen]]:
    """A busy Python process (one core) started ``seconds`` from now: a machine that slows down mid-run."""
    procs: list[subprocess.Popen] = []
    timer = threading.Timer(seconds, lambda: procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"])))
    timer.start()
    return timer, procs


def run_budget(budget: str, recipe: str, data: str, out_root: str, sets: list[str], index: int = 0,
               busy_after: float = 0.0) -> dict:
    from tinytransfer.config import parse_budget

    run_dir = os.path.join(out_root, f"budget-{index}-{budget}")  # one folder a run, also for a budget repeated
    cmd = [sys.executable, "-m", "tinytransfer", "train", "--recipe", recipe, "--data", data, "--out", run_dir,
           "--force", "--quiet", "--budget", budget]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    timer, busy = _busy_after(busy_after) if busy_after > 0 else (None, [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # a start under way finishes first, then it is stopped below
        for b in busy:
            b.kill()
            b.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"budget {budget} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(run_dir, "metrics.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    budget_s = parse_budget(budget)
    plan = cfg["plan"]
    return {
        "budget": budget, "budget_s": budget_s, "wall_s": round(wall, 1), "ratio": round(wall / budget_s, 3),
        "busy_after_s": busy_after,
        "epochs": [p["epochs"] for p in cfg["phases"]], "recipe_epochs": plan["recipe_epochs"],
        "input_size": cfg["model"]["input_size"], "train": [p["train"] for p in cfg["phases"]],
        "measured_epoch_s": plan["epoch_s"], "start_s": plan["start_s"], "finish_s_estimate": plan["finish_s"],
        "replans": plan["replans"], "choices": plan["choices"],
        "epoch_seconds": [round(float(r["seconds"]), 1) for r in rows],
        "val_acc": max(float(r["val_acc"]) for r in rows), "run": run_dir,
        "test_acc": test_accuracy(run_dir, data),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a set from benchmarks/tuning_data.py (with test labels)")
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--budget", action="append", required=True, help="e.g. 2m; repeat for several")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--out", help="folder for the runs (default: a temporary one)")
    ap.add_argument("--out-json")
    ap.add_argument("--busy-after", type=float, default=0.0, metavar="SECONDS",
                    help="start a busy process (one core) this long into each run: a machine that slows down")
    args = ap.parse_args()
    out_root = args.out or tempfile.mkdtemp(prefix="tt-budget-")
    results = []
    print(f"{'budget':>7} {'wall':>7} {'ratio':>6} {'epochs':>10} {'val':>7} {'test':>7}  re-plans")
    for i, b in enumerate(args.budget):
        r = run_budget(b, args.recipe, args.data, out_root, args.set, i, args.busy_after)
        results.append(r)
        print(f"{b:>7} {r['wall_s']:6.0f}s {r['ratio']:6.3f} {str(r['epochs']):>10} {100 * r['val_acc']:6.2f}% "
              f"{100 * r['test_acc']:6.2f}%  {len(r['replans'])}", flush=True)
    if args.out_json:
        with open(args.out_json, "w", encoding="utf-8") as f:
            json.dump({"cpu": cpu_name(), "cores": os.cpu_count(), "data": args.data, "recipe": args.recipe,
                       "sets": args.set, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
