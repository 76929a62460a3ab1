"""Recipes for small real data on this machine's CPU, side by side: wall time, val and held-out test top-1.

Each variant is a recipe (a name or a YAML path) plus ``--set`` overrides, run as the user runs it,
``tinytransfer train --recipe R --data D`` in a fresh process (wall time includes decoding, the model, the report).
Then the run's best checkpoint predicts ``test/images`` and is scored against ``test/test_annotations.txt``, which
tinytransfer never reads (build such sets with ``benchmarks/tuning_data.py``). Choose by the test column: validation
picks the best epoch, so it overstates.

    python benchmarks/demo_recipes.py --data /tmp/fashion64 --variant demo --variant "demo phases.1.epochs=0"
    python benchmarks/demo_recipes.py --data /tmp/fashion64 --variant demo --out-json demo_recipes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def test_accuracy(run_dir: str, data: str, tta: bool = False) -> float:
    import tinytransfer as tt

    with open(os.path.join(data, "test", "test_annotations.txt"), encoding="utf-8") as f:
        truth = dict(line.split("\t")[:2] for line in f if line.strip())
    files = [os.path.join(data, "test", "images", name) for name in truth]
    preds = tt.load(run_dir).predict(files, tta=tta)
    return sum(p.wnid == truth[os.path.basename(str(p.file))] for p in preds) / len(preds)


def run_variant(spec: str, data: str, out_root: str, threads: int | None, tta: bool = False) -> dict:
    recipe, *sets = shlex.split(spec)
    run_dir = os.path.join(out_root, f"run{abs(hash(spec)) % 10**8}")
    cmd = [sys.executable, "-m", "tinytransfer", "train", "--recipe", recipe, "--data", data, "--out", run_dir,
           "--force", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"variant": spec, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    import tinytransfer as tt

    run = tt.load(run_dir)
    row = {"variant": spec, "wall_s": round(wall, 1), "val_top1": round(run.best_acc, 4),
           "test_top1": round(test_accuracy(run_dir, data), 4), "run": run_dir}
    if tta:
        row["test_top1_tta"] = round(test_accuracy(run_dir, data, tta=True), 4)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a tree from benchmarks/tuning_data.py (test labels beside it)")
    ap.add_argument("--variant", action="append", required=True, help='"RECIPE key=value ..." (repeatable)')
    ap.add_argument("--out", help="where the runs go (default: a temporary folder)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs")
    ap.add_argument("--tta", action="store_true", help="also score the test split with test-time augmentation")
    ap.add_argument("--out-json", default="demo_recipes.json")
    a = ap.parse_args(argv)
    out_root = a.out or tempfile.mkdtemp(prefix="demo-recipes-")
    rows = []
    print(f"{cpu_name()}, {os.cpu_count()} cores; data {a.data}")
    print(f"{'variant':60s} {'wall s':>7s} {'val':>7s} {'test':>7s}")
    for spec in a.variant:
        r = run_variant(spec, a.data, out_root, a.threads, a.tta)
        rows.append(r)
        if "error" in r:
            print(f"{spec:60s} failed: {r['error']}")
        else:
            tta = f" {r['test_top1_tta']:7.4f} (TTA)" if "test_top1_tta" in r else ""
            print(f"{spec:60s} {r['wall_s']:7.1f} {r['val_top1']:7.4f} {r['test_top1']:7.4f}{tta}", flush=True)
    with open(a.out_json, "w", encoding="utf-8") as f:
        json.dump({"cpu": cpu_name(), "cores": os.cpu_count(), "data": a.data, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
