"""The prepared GPU script runs end to end at toy sizes on the CPU, so a lent GPU's minutes are not lost to a typo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_script_runs_every_step_in_miniature(tmp_path):
    # COMPILE_MIN_SPEEDUP=0: the 55-epoch step takes its compiled branch (CUDA graphs; dynamo is off there in MINI)
    out = tmp_path / "out"
    env = dict(os.environ, MINI="1", OUT=str(out), PY=sys.executable, TOTAL="300", COMPILE_MIN_SPEEDUP="0",
               TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for step in ("throughput", "throughput_big", "compile", "tta", "checkpoint", "pipeline", "augment_ops",
                 "short_tta"):
        assert f"== {step}: exit 0" in proc.stdout, proc.stdout[-3000:]
    assert "== short_throughput: exit 124" in proc.stdout  # stopped by its deadline (timeout's SIGINT)
    # two files come back, however many steps ran; the scratch folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert not list(tmp_path.glob("tt-gpu-check.*"))
    log = (out / "gpu_check.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:4000]
    assert "== tta: exit 0" in log and "issue 5 and 12 targets" in log  # every step's whole output is in it
    merged = json.loads((out / "gpu_check.json").read_text())
    docs = merged["docs"]
    assert "throughput=0:" in merged["steps"] and "short_throughput=124:" in merged["steps"]
    tp = docs["throughput.json"]
    assert tp["partial"] is False
    systems = {(r["system"], r["phase"]) for r in tp["rows"]}
    for phase in ("frozen", "unfrozen", "inference"):
        assert ("tinytransfer", phase) in systems and ("plain-pytorch", phase) in systems
    assert all(r["img_s"] > 0 for r in tp["rows"])
    ours_train = [r for r in tp["rows"] if r["system"] == "tinytransfer" and r["phase"] != "inference"]
    assert ours_train and all(0 < r["input_fraction"] < 1 for r in ours_train)
    tta = docs["tta.json"]
    (run,) = tta["runs"]
    assert run["label"] == "random init" and not run["stopped_by_budget"] and tta["partial"] is False
    assert "== tta with compile: 1" in proc.stdout and "compile_mode=reduce-overhead" in run["sets"]
    assert [c["phase"] for c in run["curve"]] == [1, 2, 3]  # all three phases of vgg16-paper, one epoch each
    assert all(c["wall"] >= c["seconds"] for c in run["curve"]) and run["phase_epochs"] == [1, 1, 1]
    assert not run["compile_fell_back"]  # dynamo is off on purpose in MINI: not a fallback
    (row,) = tta["rows"]
    assert row["model"] == "vgg16-paper (vgg16)" and row["input_size"] == 64
    # the compile step: real dynamo (eager backend), fullgraph, frozen base and all layers, no fallback
    cg = docs["compile.json"]["rows"]
    assert [r["phase"] for r in cg] == ["frozen", "unfrozen"]
    for r in cg:
        assert r["system"] == "tinytransfer+compile(reduce-overhead)" and r["img_s"] > 0
        assert r["compile"]["graphs"] >= 1 and r["compile"]["graphs_while_timed"] == 0 and not r["compile_fallback"]
    ck = {r["system"]: r for r in docs["checkpoint.json"]["rows"]}
    assert set(ck) == {"checkpoint: synchronous", "checkpoint: async"}
    assert all(r["train_thread_s"] > 0 for r in ck.values())
    assert len(docs["pipeline.json"]["rows"]) >= 2 and docs["pipeline.json"]["ops_per_batch"]["ops"] > 0
    assert "aten ops a batch" in log
    # deadlines too short for the steps: clean partial results
    short = docs["short_tta.json"]["runs"][0]
    assert short["stopped"] == "budget" and short["curve"] and len(short["curve"]) < 150
    assert docs["short_throughput.json"]["partial"] is True
    assert docs["short_throughput.json"]["stopped_by"] == "SIGINT"
    assert "== summary" in proc.stdout and "tta.json random init 3 epochs" in proc.stdout


def _cut_curve(wall_offset: float = 0.0) -> list[dict]:
    """The issue's example: vgg16-paper cut at epoch 48 of 55, 25 frozen epochs of 2.0 s then 23 of 9.2 s."""
    secs = [2.0] * 25 + [9.2] * 23
    curve, total = [], 0.0
    for i, s in enumerate(secs):
        total += s
        curve.append({"epoch": i + 1, "phase": 1 if i < 25 else 2 if i < 40 else 3, "seconds": round(total, 1),
                      "wall": round(total + wall_offset, 1)})
    return curve


def test_projection_of_a_cut_run_is_per_phase_on_wall_time():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_summary import project_wall

    # averaging 48 epochs would say 261.6 / 48 * 55 = ~300 s ("met"); 7 more epochs of 9.2 s say 326 s
    assert project_wall(_cut_curve(), [25, 15, 15]) == pytest.approx(50 + 23 * 9.2 + 7 * 9.2)
    # on wall time: 6 s of start-up before the first epoch count too
    assert project_wall(_cut_curve(6.0), [25, 15, 15]) == pytest.approx(326.0 + 6.0)
    # a phase not reached takes the last measured phase's epoch time plus its first-epoch (compile) surcharge
    frozen = [{"phase": 1, "seconds": s} for s in (12.0, 14.0, 16.0)]  # 12 s first (compiling), then 2 s
    assert project_wall(frozen, [3, 2]) == pytest.approx(16.0 + 2 * 2.0 + 10.0)
    # each phase's remaining epochs at its own steady time (after its first epoch)
    two = frozen + [{"phase": 2, "seconds": s} for s in (46.0, 51.0)]  # 30 s first, then 5 s
    assert project_wall(two, [3, 4]) == pytest.approx(51.0 + 2 * 5.0)
    assert project_wall([], [25, 15, 15]) is None


def _row(system, phase, batch, img_s, **kw):
    return {"system": system, "model": "vgg16", "input_size": 64, "phase": phase, "batch": batch, "img_s": img_s, **kw}


def test_gpu_summary_judges_each_target(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_summary

    rows = [_row("tinytransfer", "frozen", 64, 45_000, input_fraction=0.02),
            _row("tinytransfer", "unfrozen", 64, 15_000, input_fraction=0.06, peak_fraction=0.2),
            _row("plain-pytorch", "unfrozen", 64, 1_000), _row("plain-pytorch+amp", "unfrozen", 64, 2_500),
            _row("tinytransfer", "unfrozen", 512, 30_000, peak_fraction=0.45),
            {**_row("tinytransfer", "unfrozen", 64, 99_999), "model": "resnet50"}]  # another model: ignored
    (tmp_path / "throughput.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "compile.json").write_text(json.dumps({"rows": [_row("tinytransfer+compile", "unfrozen", 64,
                                                                      24_000, peak_fraction=0.3)]}))
    (tmp_path / "tta.json").write_text(json.dumps({"runs": [{"curve": _cut_curve(), "stopped_by_budget": True,
                                                             "phase_epochs": [25, 15, 15], "wall_s": 270.0}]}))
    got = {what.split(" ")[1] if what.startswith(">=") else what.split(" ")[0]: (text, met)
           for what, text, met in gpu_summary.targets(gpu_summary.load(tmp_path))}
    assert got["20,000"] == ("24,000 img/s", True)  # the compiled step counts
    assert got["40"][1] is True and "batch 512" in got["40"][0]
    assert got["frozen-base"] == ("3.00x (45,000 / 15,000)", True)  # eager rates of the same run
    assert got["vgg16-paper,"] == ("48 epochs in 262 s wall; 55 would take ~326 s (per phase)", False)
    assert got["input"] == ("6.0 %", False)
    assert got["5x"][1] is True and got["5x"][0].startswith("6.0x")  # 15k eager over the better plain variant
    assert gpu_summary.compile_speedup(gpu_summary.load(tmp_path)) == pytest.approx(24_000 / 15_000)
