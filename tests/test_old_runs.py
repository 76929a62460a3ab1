"""A run folder written before the package moved into stage folders still loads, predicts and evaluates the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_tree

import tinytransfer as tt
from tinytransfer.runs.checkpoint import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "run-9b29a2d"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("old")
    run = Path(shutil.copytree(FIXTURE, tmp / "run"))
    data = write_tiny_tree(tmp / "data", n_classes=3, train_per_class=6, n_val=6, n_test=3, size=16, n_gray=1,
                           n_odd_size=0)
    return run, data, json.loads((FIXTURE / "expected.json").read_text())


def test_old_checkpoint_loads_with_weights_only(old_run) -> None:
    run, _, _ = old_run
    ck = load_checkpoint(run / "best.pt")
    assert ck["config"]["model"]["backbone"] == "timm:test_resnet" and ck["classes"] == [f"n{k:08d}" for k in range(3)]


def test_old_run_evaluates_and_predicts_as_it_did(old_run) -> None:
    run, data, expected = old_run
    r = tt.load(run)
    got = r.evaluate("val", data=data)
    want = expected["evaluate_val"]
    assert got["images"] == want["images"] and got["top1"] == pytest.approx(want["top1"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    files = [data / "val" / "images" / p["file"] for p in expected["predict"]]
    for pred, exp in zip(r.predict(files), expected["predict"]):
        assert [w for w, _ in pred.top5] == [w for w, _ in exp["top5"]]
        assert [p for _, p in pred.top5] == pytest.approx([p for _, p in exp["top5"]], abs=1e-5)


def test_old_run_reports(old_run) -> None:
    run, data, _ = old_run  # its config names the folder it was trained on (/tmp/fx/data), gone since: --data
    page = tt.load(run).report(data=data)
    assert Path(page).is_file() and "Table 1" in Path(page).read_text()
