"""Checkpoints, archives and settings cannot be turned into code execution or writes outside their folder."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tinytransfer.cli import main
from tinytransfer.config import from_dict, to_dict
from tinytransfer.data import dataset as data
from tinytransfer.data import sources
from tinytransfer.runs.checkpoint import FORMAT, CheckpointError, load_checkpoint

from ._util import sets


class _Payload:
    """Unpickling this runs ``touch marker`` (pickle stores the call to os.system, not this class)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _crafted(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint that looks like ours but carries the payload."""
    ckpt = {"format": FORMAT, "model": {"w": torch.zeros(2)}, "config": to_dict(from_dict({})),
            "classes": ["a", "b"], "names": ["a", "b"], "epoch": 1, "mean": [0.5] * 3, "std": [0.5] * 3,
            "note": _Payload(marker)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip-format", "legacy-format"])
def test_pickled_callable_in_a_checkpoint_is_refused(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "PWNED"
    path = _crafted(tmp_path / "best.pt", marker, legacy)
    with pytest.raises(CheckpointError, match=r"best.pt: refused: not a plain tensor checkpoint") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "evaluate-last", "predict", "export", "visualize", "resume"])
def test_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      command: str) -> None:
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "last.pt"):
        _crafted(run / name, marker)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(from_dict({"data": {"root": str(tmp_path)}}))))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    argv = {"evaluate": ["evaluate", str(run)], "evaluate-last": ["evaluate", str(run), "--which", "last"],
            "predict": ["predict", str(run), str(tmp_path / "x.png")], "export": ["export", str(run)],
            "visualize": ["visualize", str(run), "--image", str(tmp_path / "x.png")],
            "resume": ["train", "--resume", str(run), "--quiet", "--no-finish"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused: not a plain tensor checkpoint" in err[0], err
    assert not marker.exists()


def _link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize("members", [
    # the depth check alone would pass d/up/d/out (3 folders deep, 3 levels up); it is really d/out -> ../../..
    [("file", "d/a.txt", "a"), ("link", "d/up", ".."), ("link", "d/up/d/out", "../../..")],
    [("file", "d/a.txt", "a"), ("link", "d/here", "."), ("file", "d/here/b.txt", "b")],  # a write through a link
    [("file", "d/a.txt", "a"), ("link", "d/etc", "/etc")],  # an absolute link
    [("file", "d/a.txt", "a"), ("link", "d/x", "../../escape")],  # a relative link out
    # lexically d/x -> up/../.. stays inside; but up is a link to .., so x really points two levels above the folder
    [("file", "d/a.txt", "a"), ("link", "d/up", ".."), ("link", "d/x", "up/../..")],
], ids=["link-through-link", "write-through-link", "absolute-link", "relative-link-out", "target-through-link"])
def test_safe_extract_refuses_links_that_escape_or_are_traversed(tmp_path: Path, members: list) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for kind, name, payload in members:
            _link(zf, name, payload) if kind == "link" else zf.writestr(name, payload)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(data.DataError, match="refusing member"):
        sources.safe_extract(z, dest)
    assert not dest.exists() or list(dest.iterdir()) == []  # nothing left, not even a temp folder
    assert {p.name for p in tmp_path.iterdir()} <= {"evil.zip", "out"}
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("how", ["shell-syntax", "yaml-tag-in-set", "yaml-tag-in-name", "yaml-tag-in-recipe"])
def test_settings_are_never_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture, how: str) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    argv = ["train", "--out", str(tmp_path / "run"), "--quiet", "--no-finish", *sets()]
    if how == "shell-syntax":  # as typed inside single quotes: no shell ever sees it
        argv += ["--set", f"data.root=$(touch {marker})"]
    elif how == "yaml-tag-in-set":
        argv += ["--set", f"data.root={tag}"]
    elif how == "yaml-tag-in-name":
        argv += ["--data", str(tmp_path), "--set", f"name={tag}"]
    else:
        (tmp_path / "evil.yaml").write_text(f"name: evil\ndata:\n  root: {tag}\n")
        argv += ["--recipe", str(tmp_path / "evil.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytransfer: error:"), err
    assert not marker.exists()


def test_yaml_tag_in_a_run_config_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    try:
        main(["train", "--resume", str(run), "--quiet", "--no-finish"])
    except yaml.YAMLError:
        pass  # refused (the CLI reports it in one line: see the next test)
    assert not marker.exists()


def test_damaged_run_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text('name: !!python/object/apply:os.system ["true"]\n')
    assert main(["train", "--resume", str(run), "--quiet", "--no-finish"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml" in err[0], err
