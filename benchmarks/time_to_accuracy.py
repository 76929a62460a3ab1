"""Validation accuracy against wall time for a recipe, run through the real ``tinytransfer train`` command.

    python benchmarks/time_to_accuracy.py                                  # demo recipe on the digits, 5 min budget
    python benchmarks/time_to_accuracy.py --compare-random                 # + the same run from random weights
    python benchmarks/time_to_accuracy.py --recipe vgg16-paper --data tiny-imagenet-200 --budget 600
    python benchmarks/time_to_accuracy.py --synthetic 100000 --deadline $(( $(date +%s) + 300 ))   # a hard end

Each run is a subprocess (``tinytransfer train --no-finish``) in its own session; its output is read as it comes
(and echoed, indented). When its budget is spent, or at ``--deadline`` (a Unix time: generating the data counts
against it, and ``--grace`` seconds are kept for the stop) it gets one SIGINT and stops cleanly after the current
step; ``--grace`` seconds later it is killed. SIGINT/SIGTERM to this script stop the run the same way, and data
generation at once. The curve is read from the run's ``metrics.csv`` (cumulative seconds of training and
evaluation, val top-1 per epoch), with the wall time at which each epoch's row appeared. The JSON is rewritten
after every epoch, so a kill leaves the epochs so far; ``partial`` says whether the script was stopped.
``--stop-after-epochs N`` stops a run the same way once N epochs are in (a budget in epochs, not seconds).
Each run records its phases' ``train`` settings (for a projection of a cut run) and, when it compiles, the run
folder's ``compile.json`` (graphs, recompiles, breaks, CUDA-graph skips and compile seconds per phase, whatever
``--quiet`` hides). ``--synthetic N`` writes N learnable images: 200 classes (fewer for small N) that differ in
colour and stripe texture (``pipeline.make_tree(learnable=True)``), so the accuracy says that the pipeline
learns, not how good the recipe is on real images.
Writes ``benchmarks/results/time_to_accuracy.json``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Results  # noqa: E402

from tinytransfer.runs.runfolder import read_compile  # noqa: E402  (_common put src/ on the path)

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_accuracy.json"
SRC = Path(__file__).resolve().parents[1] / "src"


class _StopFlag:
    """SIGINT/SIGTERM while a run is going: noted, and the run is stopped cleanly (not this script)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum


def read_curve(out: Path, walls: list[float]) -> tuple[list[dict], dict]:
    """(one dict an epoch from metrics.csv, the run's config) so far; ``walls``: wall seconds of each row."""
    rows = []
    if (out / "metrics.csv").is_file():
        with open(out / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("img_s")]  # a row being written is left for later
    curve, total = [], 0.0
    for i, r in enumerate(rows):
        total += float(r["seconds"])
        curve.append({"epoch": int(r["epoch"]), "phase": int(r["phase"]), "seconds": round(total, 1),
                      "wall": round(walls[i], 1) if i < len(walls) else None,
                      "val_acc": float(r["val_acc"]) if r["val_acc"] else None,
                      "train_acc": float(r["train_acc"]), "img_s": float(r["img_s"])})
    cfg = {}
    if (out / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((out / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
    return curve, cfg


def record(label: str, recipe: str, sets: list[str], out: Path, walls: list[float], wall: float,
           stopped: str | None, compile_lines: list[str]) -> dict:
    curve, cfg = read_curve(out, walls)
    best = max((c["val_acc"] for c in curve if c["val_acc"] is not None), default=None)
    phases = read_compile(out)  # per phase, written by the run itself whatever its log level
    return {"label": label, "recipe": recipe, "sets": sets, "wall_s": round(wall, 1),
            "stopped_by_budget": stopped is not None, "stopped": stopped,
            "backbone": cfg.get("model", {}).get("backbone"), "input_size": cfg.get("model", {}).get("input_size"),
            "phase_epochs": [p.get("epochs") for p in cfg.get("phases", [])],
            "phase_train": [p.get("train") for p in cfg.get("phases", [])],
            "compile": compile_lines, "compile_phases": phases,
            "compile_fell_back": any("fell back" in c for c in compile_lines) or any(p.get("fell_back") for p in phases),
            "best_val_acc": best, "curve": curve}


def run(label: str, recipe: str, data: str, out: Path, budget: float, sets: list[str], *, deadline: float,
        grace: float, flag: _StopFlag, on_epoch, max_epochs: int = 0) -> dict:
    """Run one recipe until it ends, its budget is spent (``budget`` seconds, or ``max_epochs`` epochs when > 0),
    ``deadline`` - ``grace`` (Unix time) or a signal."""
    cmd = [sys.executable, "-m", "tinytransfer.cli", "train", "--recipe", recipe, "--data", data, "--out", str(out),
           "--force", "--quiet", "--no-finish"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    stop_at = min(t0 + budget, t0 + (deadline - grace - time.time()))  # on the perf_counter clock
    # its own session: a signal to our process group (timeout's) reaches it only through us, exactly once
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    compile_lines: list[str] = []

    def drain() -> None:  # read as it comes: a full pipe would block the child
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if "torch.compile" in line:
                compile_lines.append(line.strip())
            print("    | " + line, end="", flush=True)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stopped: str | None = None
    sent_at = 0.0
    walls: list[float] = []
    while proc.poll() is None:
        time.sleep(0.25)
        now = time.perf_counter()
        n = len(read_curve(out, [])[0])
        if n > len(walls):
            walls += [now - t0] * (n - len(walls))
            on_epoch(record(label, recipe, sets, out, walls, now - t0, stopped, compile_lines))
        if stopped is None and (now >= stop_at or flag.signum is not None or 0 < max_epochs <= n):
            stopped = f"signal {flag.signum}" if flag.signum is not None else "budget"
            proc.send_signal(signal.SIGINT)
            sent_at = now
        elif stopped is not None and now - sent_at > grace:
            proc.kill()  # it did not stop in time; metrics.csv and last.pt hold its finished epochs
            stopped += ", killed"
            proc.wait()
    wall = time.perf_counter() - t0
    reader.join(timeout=5)
    if proc.returncode not in (0, 130) and not (stopped and "killed" in stopped):
        raise SystemExit(f"{label}: tinytransfer train failed ({proc.returncode}):\n{''.join(tail)[-2000:]}")
    n = len(read_curve(out, [])[0])
    walls += [wall] * (n - len(walls))  # rows that appeared after the last look
    return record(label, recipe, sets, out, walls, wall, stopped, compile_lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="demo")
    p.add_argument("--data", help="dataset folder (default: the digits demo dataset, built if needed)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds per run")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="Unix time by which everything must have ended (data generation included)")
    p.add_argument("--grace", type=float, default=8.0, help="seconds a stopped run gets before it is killed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--synthetic", type=int, default=0,
                   help="instead of --data: N generated images in 200 classes, Tiny ImageNet layout (train/ only)")
    p.add_argument("--stop-after-epochs", type=int, default=0, metavar="N",
                   help="stop each run cleanly once N epochs are done (an epoch budget; 0: none)")
    p.add_argument("--compare-random", action="store_true", help="also run from random weights")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    deadline = a.deadline or float("inf")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like SIGINT: KeyboardInterrupt until a run starts
    sys.path.insert(0, str(SRC))
    import torch

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu ({os.cpu_count()} cores)"
    res = Results(a.out, device=device, budget_s=a.budget, deadline=a.deadline or None, runs=[])
    work = Path(tempfile.mkdtemp(prefix="tt-tta-"))
    data = a.data
    t_gen = time.perf_counter()
    try:
        if a.synthetic:
            from pipeline import make_tree

            data = str(make_tree(work / "synthetic", a.synthetic, learnable=True))
            res.update(data="synthetic: classes that differ in colour and stripe texture (learnable), "
                            "Tiny ImageNet layout; its accuracy shows that the pipeline learns, not the recipe's "
                            "accuracy on real images")
        elif not data:
            from tinytransfer.data.sources import build_demo_dataset

            data = build_demo_dataset(work / "digits")
    except KeyboardInterrupt:
        res.finish(partial=True, stopped_by="signal during data generation")
        print("stopped during data generation: no run", flush=True)
        return 130
    res.update(data_s=round(time.perf_counter() - t_gen, 1))
    flag = _StopFlag()
    signal.signal(signal.SIGINT, flag)
    signal.signal(signal.SIGTERM, flag)
    first = "random init" if "model.pretrained=false" in a.set else "pretrained"
    plan = [(first, a.set)]
    if a.compare_random:
        plan.append(("random init", [*a.set, "model.pretrained=false"]))
    runs: list[dict] = []
    for label, sets in plan:
        if flag.signum is not None or time.time() > deadline - a.grace - 1:
            break
        out = work / label.replace(" ", "-")
        r = run(label, a.recipe, data, out, a.budget, sets, deadline=deadline, grace=a.grace, flag=flag,
                on_epoch=lambda rec: res.update(runs=[*runs, rec]), max_epochs=a.stop_after_epochs)
        runs.append(r)
        res.update(runs=runs)
    print(f"recipe {a.recipe} on {data}, device {device}, budget {a.budget:.0f} s a run"
          + (f", data generated in {res.meta['data_s']} s" if a.synthetic else ""))
    for r in runs:
        print(f"\n{r['label']}: best val {100 * (r['best_val_acc'] or 0):.2f}% in {r['wall_s']:.0f} s wall"
              + (f" (stopped: {r['stopped']})" if r["stopped"] else ""))
        for line in r["compile"]:
            print(f"  {line}")
        for c in r["compile_phases"]:
            print(f"  compile, phase {c['phase']}: {c.get('graphs')} graphs ({c.get('graphs_after_first_epoch')} after "
                  f"its first epoch), {c.get('graph_breaks')} breaks, {c.get('cudagraph_skips')} cudagraph skips, "
                  f"{c.get('compile_s')} s compiling" + ("" if c.get("complete") else ", phase cut"))
        if r["compile_fell_back"]:
            print("  COMPILE FELL BACK TO EAGER in this run (see the lines above)")
        print(f"  {'epoch':>5} {'phase':>5} {'seconds':>8} {'wall':>7} {'val top-1':>9} {'train':>7} {'img/s':>7}")
        for c in r["curve"]:
            va = f"{100 * c['val_acc']:8.2f}%" if c["val_acc"] is not None else "       -"
            wall = f"{c['wall']:7.1f}" if c["wall"] is not None else f"{'-':>7}"
            print(f"  {c['epoch']:>5} {c['phase']:>5} {c['seconds']:>8.1f} {wall} {va} {100 * c['train_acc']:6.2f}% "
                  f"{c['img_s']:7.1f}")
    rows = [{"system": "tinytransfer", "model": f"{a.recipe} ({r['backbone']})", "input_size": r["input_size"],
             "phase": r["label"],
             "device": device, "img_s": (sum(c["img_s"] for c in r["curve"]) / len(r["curve"])) if r["curve"] else None,
             "best_val_acc": r["best_val_acc"], "wall_s": r["wall_s"]} for r in runs]
    res.rows[:] = rows
    stopped = flag.signum is not None
    res.finish(partial=stopped, stopped_by=f"signal {flag.signum}" if stopped else None)
    print(f"\nwrote {a.out}" + (" (partial: stopped by a signal)" if stopped else ""))
    return 130 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
