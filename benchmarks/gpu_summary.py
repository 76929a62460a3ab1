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
  projected phase by phase: :func:`project_wall`);
- the input pipeline <= 5 % of the step's time;
- >= 5x the plain torchvision loop (its better variant, fp32 or AMP) at batch 64, all layers.
A target whose figures are missing says "not measured".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

KEYS = ("system", "model", "input_size", "phase", "batch", "img_s", "tflops", "peak_fraction", "input_fraction",
        "seconds", "best_val_acc", "wall_s", "train_thread_s", "write_s", "mb", "compile")
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


def project_wall(curve: list[dict], phase_epochs: list[int] | tuple[int, ...]) -> float | None:
    """Wall seconds the whole recipe would take, from the finished epochs of a run cut short.

    ``curve``: one dict an epoch in order, with ``phase`` (1-based), ``seconds`` (cumulative seconds of training and
    evaluation) and, where known, ``wall`` (seconds since the run started when the epoch's row appeared).
    Each phase's remaining epochs are projected with that phase's own epoch time (the median of its epochs after
    its first, which carries compilation; its only one otherwise); a phase not reached takes the epoch time of the
    last phase measured, plus that phase's first-epoch surcharge (a new phase may compile again). The projection
    starts from the wall time of the last finished epoch (start-up and data loading included), or from its
    cumulative seconds where no wall time was recorded. A pure function.
    """
    if not curve:
        return None
    done: dict[int, list[float]] = {}
    prev = 0.0
    for c in curve:
        done.setdefault(int(c["phase"]), []).append(float(c["seconds"]) - prev)
        prev = float(c["seconds"])
    steady: dict[int, float] = {}
    extra: dict[int, float] = {}
    for ph, secs in done.items():
        rest = sorted(secs[1:])
        steady[ph] = rest[len(rest) // 2] if len(rest) % 2 else (
            (rest[len(rest) // 2 - 1] + rest[len(rest) // 2]) / 2 if rest else secs[0])
        extra[ph] = max(0.0, secs[0] - steady[ph])
    last = curve[-1]
    total = float(last["wall"]) if last.get("wall") is not None else float(last["seconds"])
    measured = sorted(done)
    for ph, n in enumerate(phase_epochs, start=1):
        left = n - len(done.get(ph, []))
        if left <= 0:
            continue
        if ph in done:
            total += left * steady[ph]
        else:
            ref = max((m for m in measured if m < ph), default=measured[0])
            total += left * steady[ref] + extra[ref]
    return total


def vgg_rows(docs: dict[str, dict], *names: str) -> list[dict]:
    return [r for n in names for r in docs.get(n, {}).get("rows", [])
            if r.get("model") == "vgg16" and r.get("input_size") == 64]


def ours(rows: list[dict], phase: str, batch: int | None = None) -> list[dict]:
    return [r for r in rows if r["system"].startswith("tinytransfer") and r["phase"] == phase
            and (batch is None or r["batch"] == batch)]


def best(rows: list[dict], key: str = "img_s") -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return max(vals) if vals else None


def compile_speedup(docs: dict[str, dict]) -> float | None:
    """Compiled over eager images/s, VGG16 at 64 px, all layers, at the smallest batch that both measured."""
    eager, comp = vgg_rows(docs, "throughput.json"), vgg_rows(docs, "compile.json")
    batches = sorted({r["batch"] for r in comp} & {r["batch"] for r in eager})
    if not batches:
        return None
    e, c = best(ours(eager, "unfrozen", batches[0])), best(ours(comp, "unfrozen", batches[0]))
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
            proj = project_wall(c, plan)
            at = f"{wall:.0f} s wall" if wall is not None else f"{secs:.0f} s of training"
            out.append((tta, f"{n} epochs in {at}; 55 would take ~{proj:.0f} s (per phase)", proj <= 300))
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
    print("\nissue 5 and 12 targets")
    for what, got, met in targets(docs):
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        print(f"  {verdict:<12} {what}: {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
