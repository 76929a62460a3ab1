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
    # TOTAL and the caps (x4 in MINI) are safety nets only: no step may be cut on a slow, contended machine;
    # the stops the script must survive are triggered by progress (an epoch budget, a first row), not by the clock
    env = dict(os.environ, MINI="1", OUT=str(out), PY=sys.executable, TOTAL="3000", COMPILE_MIN_SPEEDUP="0",
               TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for step in ("throughput", "throughput_big", "compile", "sync_check", "tta", "checkpoint", "optim", "pipeline",
                 "augment_ops", "short_tta"):
        assert f"== {step}: exit 0" in proc.stdout, proc.stdout[-3000:]
    assert "== short_throughput: exit 130" in proc.stdout  # stopped by SIGINT once its 4th row was on disk
    # two files come back, however many steps ran; the scratch folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert not list(tmp_path.glob("tt-gpu-check.*"))
    log = (out / "gpu_check.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:4000]
    assert "== tta: exit 0" in log and "issue 5 and 12 targets" in log  # every step's whole output is in it
    merged = json.loads((out / "gpu_check.json").read_text())
    docs = merged["docs"]
    assert "throughput=0:" in merged["steps"] and "short_throughput=130:" in merged["steps"]
    tp = docs["throughput.json"]
    assert tp["partial"] is False
    systems = {(r["system"], r["phase"]) for r in tp["rows"]}
    for phase in ("frozen", "unfrozen", "inference"):
        assert ("tinytransfer", phase) in systems and ("plain-pytorch", phase) in systems
    for phase in ("frozen", "unfrozen"):  # vgg16-paper's own configuration beside the fast one
        assert ("tinytransfer[paper]", phase) in systems
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
    assert run["phase_train"] == ["head", "all", "all"] and "learnable" in tta["data"]
    assert [c["phase"] for c in run["compile_phases"]] == [1, 2, 3]  # recorded although the run was --quiet
    assert all(c["dynamo_disabled"] and c["complete"] for c in run["compile_phases"])
    (row,) = tta["rows"]
    assert row["model"] == "vgg16-paper (vgg16)" and row["input_size"] == 64
    # the compile step: real dynamo (eager backend), fullgraph, frozen base and all layers, no fallback
    cg = docs["compile.json"]["rows"]
    assert [r["phase"] for r in cg] == ["frozen", "unfrozen"]
    for r in cg:  # the gate measures the configuration step 4 trains: vgg16-paper's own
        assert r["system"] == "tinytransfer[paper]+compile(reduce-overhead)" and r["config"] == "paper"
        assert r["img_s"] > 0 and "compile_s" in r["compile"] and r["compile"]["cudagraph_skips"] == 0
        assert r["compile"]["graphs"] >= 1 and r["compile"]["graphs_while_timed"] == 0 and not r["compile_fallback"]
    assert all(r["ok"] for r in docs["sync_check.json"]["rows"]) and len(docs["sync_check.json"]["rows"]) == 2
    assert {r["system"] for r in docs["optim.json"]["rows"]} >= {"adam-keras (fused)", "adam (fused)"}
    ck = {r["system"]: r for r in docs["checkpoint.json"]["rows"]}
    assert set(ck) == {"checkpoint: synchronous", "checkpoint: async"}
    assert all(r["train_thread_s"] > 0 for r in ck.values())
    assert len(docs["pipeline.json"]["rows"]) >= 2 and docs["pipeline.json"]["ops_per_batch"]["ops"] > 0
    assert "aten ops a batch" in log
    # runs stopped before their end (by an epoch budget, by SIGINT): clean partial results
    short = docs["short_tta.json"]["runs"][0]
    assert short["stopped"] == "budget" and 3 <= len(short["curve"]) < 150
    assert docs["short_throughput.json"]["partial"] is True and 4 <= len(docs["short_throughput.json"]["rows"]) < 6
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
    # each phase's remaining epochs at its own steady time (after its first epoch)
    frozen = [{"phase": 1, "seconds": s} for s in (12.0, 14.0, 16.0)]  # 12 s first (compiling), then 2 s
    two = frozen + [{"phase": 2, "seconds": s} for s in (46.0, 51.0)]  # 30 s first, then 5 s
    assert project_wall(two, [3, 4]) == pytest.approx(51.0 + 2 * 5.0)
    assert project_wall([], [25, 15, 15]) is None
    # steady epoch time from the wall-clock gaps between epoch ends (evaluation and checkpoint included), not from
    # the seconds column: 2 s of training and evaluation an epoch, 3 s between the rows
    gaps = [{"phase": 1, "seconds": 2.0 * (i + 1), "wall": 5.0 + 3.0 * (i + 1)} for i in range(4)]
    assert project_wall(gaps, [10]) == pytest.approx(17.0 + 6 * 3.0)


def test_projection_never_times_a_phase_at_another_trainable_sets_epoch_time():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_summary import project

    # the case: cut inside the frozen phase after 20 epochs of 3 s (+ 20 s of start-up); the old
    # projection said 80 + 35 x 3 = 185 s, "met"; an all-layers epoch takes 7 s: ~305 s is true
    cut = [{"phase": 1, "seconds": 3.0 * (i + 1), "wall": 20.0 + 3.0 * (i + 1)} for i in range(20)]
    train = ["head", "all", "all"]
    p = project(cut, [25, 15, 15], train)
    assert p["wall_s"] is None and p["basis"] == "not measured" and "phase 2" in p["note"]
    ratio = {"from": "head", "to": "all", "ratio": 7.0 / 3.0}  # the throughput step's measured step-time ratio
    p = project(cut, [25, 15, 15], train, ratio)
    assert p["basis"] == "extrapolated" and p["wall_s"] == pytest.approx(80 + 5 * 3 + 30 * 7)
    assert project(cut, [25, 15, 15], train, {**ratio, "from": "all"})["basis"] == "not measured"  # another ratio
    # cut at the end of phase 2: phase 3 trains the same parameters: measured, at phase 2's steady time
    two = cut[:] + [{"phase": 1, "seconds": 63.0 + 3 * i, "wall": 83.0 + 3 * i} for i in range(5)]
    two += [{"phase": 2, "seconds": 100.0 + 7 * i, "wall": 130.0 + 7 * i} for i in range(15)]
    p = project(two, [25, 15, 15], train)
    assert p["basis"] == "measured" and p["wall_s"] == pytest.approx(228.0 + 15 * 7) and "same trainable" in p["note"]


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
    assert got["no"] == ("-", None) and got["adam-keras"] == ("-", None)  # steps that did not run: not measured
    assert got["input"] == ("6.0 %", False)
    assert got["5x"][1] is True and got["5x"][0].startswith("6.0x")  # 15k eager over the better plain variant
    assert gpu_summary.compile_speedup(gpu_summary.load(tmp_path)) == pytest.approx(24_000 / 15_000)


def test_a_signal_whose_interrupt_was_swallowed_is_raised_at_the_next_row(tmp_path):
    import signal

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _common

    res = _common.Results(tmp_path / "r.json")
    _common._OWNER[0] = os.getpid()
    _common._SIGNALLED.append(signal.SIGINT)  # as _on_int records it before its KeyboardInterrupt got lost
    with pytest.raises(KeyboardInterrupt):
        res.add({"img_s": 1.0})
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == [{"img_s": 1.0}]  # the row is kept
    res.add({"img_s": 2.0})  # raised once only
    res.finish(partial=True)
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) == 2
