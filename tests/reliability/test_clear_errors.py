"""One line instead of a traceback or a silent wrong result: bad values refused when the config is built, a full disk
that names the file, Ctrl-C messages that say what there is to resume, file names that are not UTF-8, ``report
--data`` for a dataset that moved."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

import tinytransfer.api
from tinytransfer.cli import main
from tinytransfer.fsutil import atomic_write
from tinytransfer.runs import metricsfile
from tinytransfer.runs.checkpoint import CheckpointError, save_checkpoint

from ._util import sets

QUICK = ["phases.*.epochs=1", "max_steps_per_epoch=2"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")  # as a write or fsync raises it: no file name


def _train(data: Path, out: Path, *extra: str, argv: tuple[str, ...] = (), finish: bool = False) -> int:
    return main(["train", "--recipe", "vgg16-paper", "--data", str(data), "--out", str(out), "--quiet", "--seed", "3",
                 *([] if finish else ["--no-finish"]), *argv, *sets([*QUICK, *extra])])


def _lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [x for x in capsys.readouterr().err.strip().splitlines() if x.strip()]


@pytest.mark.parametrize("extra, argv, words", [
    (["device=tpu"], (), "device: 'tpu' is not auto, cpu, mps, cuda or cuda:N"),
    (["phases.*.label_smoothing=2"], (), "phases.0.label_smoothing: must be >= 0 and < 1"),
    ([], ("--seed", str(2**70)), "seed: must be in [0, 2**63)"),
    (["phases.0.lr_min=1e-2", "phases.0.lr_max=1e-3"], (), "phases.0: lr_min 0.01 is above lr_max 0.001"),
    (["phases.0.weight_decay=-1"], (), "phases.0.weight_decay: must be >= 0"),
    (["phases.0.step_size=-5"], (), "phases.0.step_size: must be >= 0"),
    (["phases.*.epochs=0"], (), "every phase has epochs=0"),
    ([], ("--nproc", "0"), "nproc=0: must be >= 1"),
])
def test_bad_values_are_refused_in_one_line(tmp_path: Path, capsys, extra, argv, words) -> None:
    """Each was a traceback (device, label_smoothing), an overflow message, or accepted and trained wrongly."""
    assert _train(tmp_path / "no-data-needed", tmp_path / "run", *extra, argv=argv) == 2
    err = _lines(capsys)
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert _train(tmp_path / "data", tmp_path / "run", "device=cuda") == 2
    err = _lines(capsys)
    assert len(err) == 1 and "device cuda: no CUDA device is available here" in err[0], err


def test_a_full_disk_names_the_file(tmp_path: Path) -> None:
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"x")
        raise ENOSPC

    with pytest.raises(OSError) as e:  # the report, figures, predictions, config.yaml, the cache's manifest
        atomic_write(tmp_path / "report.html", fill)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "report.html")
    assert os.listdir(tmp_path) == []


def test_a_lock_that_cannot_be_written_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    """Was "No space left on device" with no file, and an empty .lock that the next try read as a run starting."""
    from tinytransfer.runs.runfolder import RunLock

    from .test_crash_safety import file_size_limit

    with pytest.raises(OSError) as e, file_size_limit(1):  # a real write error (EFBIG) from the kernel
        RunLock(tmp_path).acquire()
    assert e.value.filename == str(tmp_path / ".lock") and e.value.errno == errno.EFBIG
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").is_file()


def test_a_full_disk_on_metrics_csv_names_it(run_tree: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    class Full(io.StringIO):
        def write(self, s: str) -> int:
            raise ENOSPC

    monkeypatch.setattr(metricsfile, "open", lambda *a, **k: Full(), raising=False)
    assert _train(run_tree, tmp_path / "run") == 2
    err = _lines(capsys)
    assert err == [f"tinytransfer: error: {tmp_path / 'run' / 'metrics.csv'}: No space left on device"], err


def test_a_full_disk_while_finishing_says_the_checkpoints_are_safe(run_tree: Path, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    import tinytransfer.outputs.finish as finish

    def full(run_dir: Path, **_: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(run_dir) / "report.html"))

    monkeypatch.setattr(finish, "write_report", full)
    out = tmp_path / "run"
    assert _train(run_tree, out, finish=True) == 2
    err = _lines(capsys)
    assert len(err) == 1 and f"{out / 'report.html'}: No space left on device while writing the report" in err[0]
    assert "checkpoints" in err[0] and f"tinytransfer report {out}" in err[0], err
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()


def test_a_failed_first_checkpoint_does_not_claim_a_previous_one(tmp_path: Path, monkeypatch) -> None:
    import tinytransfer.runs.checkpoint as checkpoint

    def full(path: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint({"format": "x"}, tmp_path / "last.pt")
    assert "No space left on device" in str(e.value) and "previous" not in str(e.value)
    (tmp_path / "last.pt").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="the previous one is kept"):
        save_checkpoint({"format": "x"}, tmp_path / "last.pt")


def test_ctrl_c_during_the_cache_build_suggests_no_resume(run_tree: Path, tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    def interrupted(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tinytransfer.api, "load_data", interrupted)
    out = tmp_path / "run"
    assert _train(run_tree, out) == 130
    err = _lines(capsys)
    assert len(err) == 1 and "--resume" not in err[0] and "nothing to resume" in err[0], err
    assert not (out / "last.pt").exists()


def test_file_names_that_are_not_utf8_train_predict_and_land_in_predictions_csv(run_tree: Path, tmp_path: Path,
                                                                               capsys) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(run_tree, tree)
    images = os.fsencode(tree / "train" / "n00000000" / "images")
    odd = os.path.join(images, b"bad\xff.JPEG")
    try:
        shutil.copy(os.path.join(images, b"n00000000_0.JPEG"), odd)
        (tree / "test" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(odd, os.path.join(os.fsencode(tree / "test" / "images"), b"t\xfe.JPEG"))
        with open(os.path.join(images, b"junk\xfe.JPEG"), "wb") as f:
            f.write(b"not an image")  # skipped with --skip-bad-images, its name in the log
    except OSError:  # pragma: no cover - a file system that takes only UTF-8 names
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "run"
    assert _train(tree, out, argv=("--skip-bad-images",), finish=True) == 0, capsys.readouterr().err
    text = (out / "predictions.csv").read_bytes().decode("utf-8")  # valid UTF-8, the odd byte escaped
    assert "test/images/t\\xfe.JPEG," in text
    capsys.readouterr()
    assert main(["predict", str(out), os.fsdecode(odd), "--out", str(tmp_path / "p.csv")]) == 0
    assert "bad\\xff.JPEG" in (tmp_path / "p.csv").read_text(encoding="utf-8")


def test_report_after_the_dataset_moved_takes_data(run_tree: Path, tmp_path: Path, capsys) -> None:
    data, moved, out = tmp_path / "data", tmp_path / "moved", tmp_path / "run"
    shutil.copytree(run_tree, data)
    assert _train(data, out) == 0
    data.rename(moved)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = _lines(capsys)
    assert len(err) == 1 and f"tinytransfer report {out} --data DIR" in err[0], err
    assert main(["report", str(out), "--data", str(moved)]) == 0
    assert (out / "report.html").is_file() and (out / "analysis.json").is_file()
