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
    # COMPILE_MIN_SPEEDUP=0: the 55-epoch step takes its compiled branch (CUDA graphs; dynamo is off in MINI)
    env = dict(os.environ, MINI="1", OUT=str(tmp_path / "out"), PY=sys.executable, TOTAL="300", COMPILE_MIN_SPEEDUP="0")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for step in ("throughput", "throughput_big", "compile", "tta", "pipeline"):
        assert f"== {step}: exit 0" in proc.stdout, proc.stdout[-3000:]
    tp = json.loads((tmp_path / "out" / "throughput.json").read_text())
    systems = {(r["system"], r["phase"]) for r in tp["rows"]}
    for phase in ("frozen", "unfrozen", "inference"):
        assert ("tinytransfer", phase) in systems and ("plain-pytorch", phase) in systems
    assert all(r["img_s"] > 0 for r in tp["rows"])
    ours_train = [r for r in tp["rows"] if r["system"] == "tinytransfer" and r["phase"] != "inference"]
    assert ours_train and all(0 < r["input_fraction"] < 1 for r in ours_train)
    tta = json.loads((tmp_path / "out" / "tta.json").read_text())
    (run,) = tta["runs"]
    assert run["label"] == "random init" and not run["stopped_by_budget"]
    assert "== tta with compile: 1" in proc.stdout and "compile_mode=reduce-overhead" in run["sets"]
    assert [c["phase"] for c in run["curve"]] == [1, 2, 3]  # all three phases of vgg16-paper, one epoch each
    (row,) = tta["rows"]
    assert row["model"] == "vgg16-paper (vgg16)" and row["input_size"] == 64
    (cg,) = json.loads((tmp_path / "out" / "compile.json").read_text())["rows"]
    assert cg["system"] == "tinytransfer+compile(reduce-overhead)" and cg["img_s"] > 0
    pipe = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert len(pipe["rows"]) >= 2
    assert "== summary" in proc.stdout and "tta.json random init 3 epochs" in proc.stdout
