"""A loss that becomes NaN/inf stops the run at that step, names the step and LR, and keeps the last good epoch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tinytransfer.cli import main
from tinytransfer.runs.checkpoint import load_checkpoint

from ._util import rows, sets


def test_cli_exploding_lr_stops_with_one_line_naming_step_and_lr(run_tree: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """No monkeypatching: phase 2's LR of 1e30 blows the weights up, and the loss of its next step is not finite."""
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "vgg16-paper", "--data", str(run_tree), "--out", str(out), "--quiet",
               "--no-finish", "--seed", "3",
               *sets(["phases.*.epochs=1", "phases.1.lr_policy=constant", "phases.1.lr_max=1e30"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "phase 2" in err[0] and "step 1 " in err[0] and "(lr 1e+30)" in err[0], err[0]
    assert "last good checkpoint is kept" in err[0]
    last = load_checkpoint(out / "last.pt")
    assert (last["epoch"], last["phase"]) == (1, 1)  # phase 1's epoch: resuming would start phase 2 again
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in rows(out)] == ["1"]  # the poisoned epoch is not recorded
    assert all(math.isfinite(float(r["train_loss"])) for r in rows(out))
    assert not (out / ".lock").exists()
