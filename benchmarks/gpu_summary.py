"""Read the JSON that ``gpu_check.sh`` wrote and say, target by target, what issue 5 asked and what was measured.

    python benchmarks/gpu_summary.py benchmarks/results/gpu            # every row, then the targets
    python benchmarks/gpu_summary.py WORK --use-compile 1.5            # prints 1 if compile made the step >= 1.5x
    python benchmarks/gpu_summary.py WORK --merge OUT/gpu_check.json   # all steps' JSON in one file

A folder is read as ``gpu_check.json`` (the merged file) if it holds one, else as one ``<step>.json`` a step.

The targets (VGG16 + the report's head at 64 px, all on one GPU, from one run of ``gpu_check.sh``):
- training, all layers trainable, at the recipe's batch of 64: >= 20,000 images/s (eager or compiled, the better);
- at the best batch size: >= 40 % of the bf16 matmul peak measured in the same run;
- the frozen-base step >= 2.5x the all-layers step (batch 64, eager);
- the whole vgg16-paper recipe (55 epochs over 90k images) in <= 300 s of wall time (a run cut by its deadline is
  projected phase by phase: :func:`project`; a phase whose trainable set was never timed is scaled by the
  throughput step's measured all-layers/frozen step-time ratio and the verdict says "extrapolated", or it is
  "not measured");
- the input pipeline <= 5 % of the step's time;
- >= 5x the plain torchvision loop (its better variant, fp32 or AMP) at batch 64, all layers.
A target whose figures are missing says "not measured". The throughput targets read the fast configuration's
rows (``config`` "fast"); vgg16-paper's own configuration (``tinytransfer[paper]``) is shown beside them, and it is
the one the compile gate (``--use-compile``) compares, since it is what step 4 trains. Step 4's data is synthetic
and learnable (classes differ in colour and texture): its accuracy shows that training works, not the report's
accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

KEYS = ("system", "config", "model", "input_size", "phase", "batch", "img_s", "tflops", "peak_fraction",
        "input_fraction", "seconds", "best_val_acc", "wall_s", "train_thread_s", "write_s", "mb", "compile",
        "ms_per_step", "ok", "inside_steps", "error")
MERGED = "gpu_check.json"
PAPER_EPOCHS = (25, 15, 15)  # vgg16-paper's epochs per phase (Table 1), where a run did not record its own


def load(out: Path) -> dict[str, dict]:
    """``{"<step>.json": document}`` from the merged file or the per-step files of folder ``out``."""
    out = Path(out)
    merged = out / MERGED if out.is_dir() else out
    if merged.is_file():
        return json.loads(merged.read_text()).get("docs", {})
    docs = {}
    for f in sorted(out.glob("*.json")):
        if f.name == MERGED:
            continue
        try:
            docs[f.name] = json.loads(f.read_text())
        except ValueError:
            print(f"{f.name}: not JSON (a step cut short?)")
    return docs


def merge(work: Path, dest: Path, **meta: object) -> dict:
    """Every step's JSON in ``work`` into one document at ``dest`` (atomic): ``{**meta, "docs": {name: doc}}``."""
    from tinytransfer.fsutil import atomic_write_text

    old = json.loads(dest.read_text()) if dest.is_file() else {}
    doc = {**{k: v for k, v in old.items() if k != "docs"}, **meta, "docs": load(work)}
    atomic_write_text(dest, json.dumps(doc, indent=1) + "\n")
    return doc


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def project(curve: list[dict], phase_epochs: list[int] | tuple[int, ...], phase_train: list | None = None,
            step_ratio: dict | None = None) -> dict | None:
    """Wall seconds the whole recipe would take, from the finished epochs of a run cut short: ``{"wall_s": float or
    None, "basis": "measured" | "extrapolated" | "not measured", "note": str}``; None for an empty curve.

    ``curve``: one dict an epoch in order, with ``phase`` (1-based), ``seconds`` (cumulative seconds of training and
    evaluation) and, where known, ``wall`` (seconds since the run started when the epoch's row appeared). An
    epoch's time is the wall-clock gap between its end and the previous epoch's end (evaluation, checkpoint and
    everything between included), where walls are known; else its ``seconds``. Each phase's steady epoch time is
    the median of its epochs after its first (which carries compilation, and in phase 1 the run's start-up; its
    only one otherwise). A phase not reached takes the steady epoch time of a measured phase with the same
    ``phase_train`` setting (vgg16-paper's phase 3 trains what phase 2 trains, and reuses its compiled graphs:
    "measured"). Where no measured phase trains the same parameters, ``step_ratio`` ``{"from": train setting,
    "to": train setting, "ratio": step time of "to" / step time of "from"}`` (the throughput step's measured
    all-layers/frozen ratio) scales the last measured phase's: "extrapolated" (a compilation at that phase's
    start is not included); without it the projection is "not measured". The projection starts from the wall
    time of the last finished epoch (start-up and data loading included). A pure function.
    """
    if not curve:
        return None
    times: dict[int, list[float]] = {}
    prev_wall, prev_secs = 0.0, 0.0
    for c in curve:
        wall = c.get("wall")
        gap = float(wall) - prev_wall if wall is not None else float(c["seconds"]) - prev_secs
        times.setdefault(int(c["phase"]), []).append(gap)
        prev_wall = float(wall) if wall is not None else prev_wall + float(c["seconds"]) - prev_secs
        prev_secs = float(c["seconds"])
    steady = {ph: _median(t[1:]) if len(t) > 1 else t[0] for ph, t in times.items()}
    train = list(phase_train or [None] * len(phase_epochs))
    train += [None] * (len(phase_epochs) - len(train))
    last = curve[-1]
    total = float(last["wall"]) if last.get("wall") is not None else float(last["seconds"])
    basis, notes = "measured", []
    for ph, n in enumerate(phase_epochs, start=1):
        left = n - len(times.get(ph, []))
        if left <= 0:
            continue
        if ph in times:
            total += left * steady[ph]
            continue
        same = [m for m in sorted(times) if train[m - 1] is not None and train[m - 1] == train[ph - 1]]
        if same:  # the same trainable set was timed (and compiled): its steady epochs
            ref = same[-1]
            total += left * steady[ref]
            notes.append(f"phase {ph} at phase {ref}'s epoch time (same trainable set)")
            continue
        ref = max(times)
        r = step_ratio or {}
        if r.get("ratio") and r.get("from") == train[ref - 1] and r.get("to") == train[ph - 1]:
            total += left * steady[ref] * float(r["ratio"])
            basis = "extrapolated"
            notes.append(f"phase {ph} ({train[ph - 1]}) at phase {ref}'s epoch time x {float(r['ratio']):.2f}, "
                         f"the measured {r['to']}/{r['from']} step-time ratio")
            continue
        return {"wall_s": None, "basis": "not measured",
                "note": f"phase {ph} ({train[ph - 1]}) was never timed and no step-time ratio to scale by"}
    return {"wall_s": total, "basis": basis, "note": "; ".join(notes)}


def project_wall(curve: list[dict], phase_epochs: list[int] | tuple[int, ...], phase_train: list | None = None,
                 step_ratio: dict | None = None) -> float | None:
    """:func:`project`'s wall seconds (None: not measured)."""
    p = project(curve, phase_epochs, phase_train, step_ratio)
    return None if p is None else p["wall_s"]


def step_ratio(docs: dict[str, dict], config: str = "paper") -> dict | None:
    """The all-layers over frozen-base step-time ratio of ``config`` (fast: rows without a config too) at the
    smallest batch the throughput step measured both at: ``{"from": "head", "to": "all", "ratio": r}``."""
    rows = [r for r in vgg_rows(docs, "throughput.json") if r.get("config", "fast") == config
            and r["system"].startswith("tinytransfer") and "compile" not in r["system"]]
    for b in sorted({r["batch"] for r in rows}):
        f = best([r for r in rows if r["phase"] == "frozen" and r["batch"] == b])
        u = best([r for r in rows if r["phase"] == "unfrozen" and r["batch"] == b])
        if f and u:
            return {"from": "head", "to": "all", "ratio": f / u, "batch": b, "config": config}
    return None


def vgg_rows(docs: dict[str, dict], *names: str) -> list[dict]:
    return [r for n in names for r in docs.get(n, {}).get("rows", [])
            if r.get("model") == "vgg16" and r.get("input_size") == 64]


def ours(rows: list[dict], phase: str, batch: int | None = None, config: str = "fast") -> list[dict]:
    """Our rows of a phase (and batch) in one training configuration (rows without one are the fast one's)."""
    return [r for r in rows if r["system"].startswith("tinytransfer") and r["phase"] == phase
            and (batch is None or r["batch"] == batch) and r.get("config", "fast") == config]


def best(rows: list[dict], key: str = "img_s") -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return max(vals) if vals else None


def compile_speedup(docs: dict[str, dict], config: str = "paper") -> float | None:
    """Compiled over eager images/s, VGG16 at 64 px, all layers, at the smallest batch that both measured, in
    training configuration ``config`` (vgg16-paper's own by default: what the 55-epoch step trains; where the
    compile step measured none of it, the fast one's)."""
    eager, comp = vgg_rows(docs, "throughput.json"), vgg_rows(docs, "compile.json")
    if config != "fast" and not ours(comp, "unfrozen", config=config):
        config = "fast"
    comp, eager = ours(comp, "unfrozen", config=config), ours(eager, "unfrozen", config=config)
    batches = sorted({r["batch"] for r in comp} & {r["batch"] for r in eager})
    if not batches:
        return None
    e = best([r for r in eager if r["batch"] == batches[0]])
    c = best([r for r in comp if r["batch"] == batches[0]])
    return c / e if e and c else None


def targets(docs: dict[str, dict]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) with met None where it was not measured."""
    out = []
    tp = vgg_rows(docs, "throughput.json")
    every = vgg_rows(docs, "throughput.json", "throughput_big.json", "compile.json")

    v = best(ours(every, "unfrozen", 64))
    out.append((">= 20,000 img/s training all layers at batch 64",
                f"{v:,.0f} img/s" if v else "-", v >= 20_000 if v else None))
    v = best(ours(every, "unfrozen"), "peak_fraction")
    at = max(ours(every, "unfrozen"), key=lambda r: r.get("peak_fraction") or 0, default=None)
    out.append((">= 40 % of the measured bf16 peak at the best batch",
                f"{100 * v:.1f} % (batch {at['batch']}, {at['system']})" if v else "-", v >= 0.40 if v else None))
    f, u = best(ours(tp, "frozen", 64)), best(ours(tp, "unfrozen", 64))
    out.append(("frozen-base step >= 2.5x the all-layers step (batch 64)",
                f"{f / u:.2f}x ({f:,.0f} / {u:,.0f})" if f and u else "-", f / u >= 2.5 if f and u else None))
    v = best(ours(tp, "unfrozen", config="paper"))
    fast = best(ours(tp, "unfrozen", v and min(r["batch"] for r in ours(tp, "unfrozen", config="paper"))))
    out.append(("vgg16-paper's own configuration, all layers (shown beside the fast one, no target)",
                f"{v:,.0f} img/s" + (f" (fast configuration {fast:,.0f})" if fast else "") if v else "-", None))
    runs = docs.get("tta.json", {}).get("runs", [])
    tta = "vgg16-paper, 55 epochs over 90k images, <= 300 s wall"
    if runs and runs[0]["curve"]:
        r, c = runs[0], runs[0]["curve"]
        plan = r.get("phase_epochs") or PAPER_EPOCHS
        n, secs = len(c), c[-1]["seconds"]
        wall = c[-1].get("wall")
        if n >= 55 and not r["stopped_by_budget"]:
            out.append((tta, f"{r['wall_s']:.0f} s wall ({secs:.0f} s training)", r["wall_s"] <= 300))
        elif r["stopped_by_budget"] and sum(plan) >= 55:  # cut by its deadline: project phase by phase
            proj = project(c, plan, r.get("phase_train"), step_ratio(docs))
            at = f"{wall:.0f} s wall" if wall is not None else f"{secs:.0f} s of training"
            if proj["wall_s"] is None:
                out.append((tta, f"{n} epochs in {at}; not measured: {proj['note']}", None))
            else:
                label = "extrapolated" if proj["basis"] == "extrapolated" else "per phase"
                note = f"; {proj['note']}" if proj["note"] else ""
                out.append((tta, f"{n} epochs in {at}; 55 would take ~{proj['wall_s']:.0f} s ({label}){note}",
                            proj["wall_s"] <= 300))
        else:
            out.append((tta, f"a shortened recipe ({n} epochs), not the target's", None))
    else:
        out.append((tta, "-", None))
    v = max((r["input_fraction"] for r in ours(tp, "frozen", 64) + ours(tp, "unfrozen", 64)
             if r.get("input_fraction") is not None), default=None)
    out.append(("input pipeline <= 5 % of the step (batch 64, worst phase)",
                f"{100 * v:.1f} %" if v is not None else "-", v <= 0.05 if v is not None else None))
    plain = best([r for r in tp if r["system"].startswith("plain") and r["phase"] == "unfrozen" and r["batch"] == 64])
    mine = best(ours(tp, "unfrozen", 64))
    out.append((">= 5x the plain torchvision loop (batch 64, all layers)",
                f"{mine / plain:.1f}x ({mine:,.0f} / {plain:,.0f})" if mine and plain else "-",
                mine / plain >= 5 if mine and plain else None))
    comp = [r for r in vgg_rows(docs, "compile.json") if "compile" in r]
    fell = [f"{r['phase']} batch {r['batch']}" for r in comp if r.get("compile_fallback")]
    recompiled = [f"{r['phase']} batch {r['batch']}" for r in comp if r["compile"].get("graphs_while_timed")]
    tta_fell = any(r.get("compile_fell_back") for r in runs)
    if comp or tta_fell:
        bad = fell + (["the 55-epoch run"] if tta_fell else [])
        out.append(("torch.compile: no fallback to eager, no recompiles while timed",
                    "fell back: " + ", ".join(bad) if bad else (
                        "recompiled: " + ", ".join(recompiled) if recompiled else
                        f"{len(comp)} compiled rows, fullgraph, static shapes"), not bad and not recompiled))
    else:
        out.append(("torch.compile: no fallback to eager, no recompiles while timed", "-", None))
    sync = docs.get("sync_check.json", {}).get("rows", [])
    bad = [f"{r['config']} {r['phase']}: {r.get('error') or ', '.join(r.get('inside_steps') or [])}"
           for r in sync if not r.get("ok")]
    out.append(("no host sync inside a training step (set_sync_debug_mode error)",
                ("; ".join(bad) if bad else f"{len(sync)} (configuration, phase) pairs clean") if sync else "-",
                not bad if sync else None))
    opt = {r["system"]: r["ms_per_step"] for r in docs.get("optim.json", {}).get("rows", [])}
    k, a = opt.get("adam-keras (fused)"), opt.get("adam (fused)")
    out.append(("adam-keras step about as fast as fused Adam (<= 1.2x its time)",
                f"{k:.2f} ms vs {a:.2f} ms (adam-keras foreach {opt.get('adam-keras (foreach)', float('nan')):.2f} ms)"
                if k and a else "-", k <= 1.2 * a if k and a else None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the folder gpu_check.sh wrote")
    p.add_argument("--use-compile", type=float, metavar="MIN",
                   help="print 1 if compile made the all-layers step at least MIN times faster, else 0")
    p.add_argument("--merge", metavar="FILE", help="write every step's JSON of folder OUT into FILE and stop")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="with --merge: a top-level field")
    a = p.parse_args(argv)
    if a.merge:
        merge(Path(a.out), Path(a.merge), **dict(m.split("=", 1) for m in a.meta))
        return 0
    docs = load(Path(a.out))
    if a.use_compile is not None:
        s = compile_speedup(docs)
        print(f"compile speedup, all layers, smallest batch: {s:.2f}x" if s else "compile speedup: not measured",
              file=sys.stderr)
        print("1" if s and s >= a.use_compile else "0")
        return 0
    for name, d in docs.items():
        if d.get("bf16_peak_tflops"):
            print(f"{name}: bf16 matmul peak {d['bf16_peak_tflops']:.0f} TFLOP/s")
        for r in d.get("rows", []):
            print(name, {k: r[k] for k in KEYS if r.get(k) is not None})
        if d.get("partial"):
            print(f"{name}: PARTIAL ({d.get('stopped_by') or 'the step did not finish'})")
        for r in d.get("runs", []):
            c = r["curve"]
            print(name, r["label"], f"{len(c)} epochs in {c[-1]['seconds'] if c else 0} s of training,",
                  f"{r['wall_s']} s wall, stopped by budget: {r['stopped_by_budget']}")
            for line in r.get("compile", []):
                print(f"  {line}")
            for c in r.get("compile_phases", []):
                print(f"  compile, phase {c['phase']}: {c.get('graphs')} graphs ({c.get('graphs_after_first_epoch')} "
                      f"after its first epoch), {c.get('graph_breaks')} breaks, {c.get('cudagraph_skips')} "
                      f"cudagraph skips, {c.get('compile_s')} s compiling" + ("" if c.get("complete") else
                                                                              " (phase cut)"))
        if d.get("data"):
            print(f"{name}: data: {d['data']}")
    print("\nissue 5 and 12 targets")
    for what, got, met in targets(docs):
        verdict = "info" if "no target" in what else "not measured" if met is None else ("met" if met else "MISSED")
        print(f"  {verdict:<12} {what}: {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
