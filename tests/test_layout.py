"""The code's shape: imports flow one way through the stages, and no module imports another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import tinytransfer

PKG = Path(tinytransfer.__file__).parent

# The package's stages in data-flow order (docs/internals.md): a module may import only from its own stage or an
# earlier one. A stage is a folder, or for the modules on top, a group of them.
STAGES = [
    {"config", "fsutil"},
    {"data"},
    {"models"},
    {"runs"},
    {"training"},
    {"outputs"},
    {"run", "api"},
    {"cli", "__main__", "__init__"},
]
STAGE = {m: i for i, group in enumerate(STAGES) for m in group}
FOLDERS = ("data", "models", "runs", "training", "outputs")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _stage_of(path: Path) -> str:
    """The stage a file belongs to: its folder, or its own name on top."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(stage, names, line) of every import of the package in ``path``, lazy ones inside functions included."""
    rel = path.relative_to(PKG)
    here = list(rel.parts[:-1])  # the package path of ``path`` below tinytransfer
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[: len(here) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
        elif node.module and node.module.split(".")[0] == "tinytransfer":
            target = node.module.split(".")[1:]
        else:
            continue
        if target:
            out.append((target[0], [a.name for a in node.names], node.lineno))
        else:  # from . import x (on top)
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def test_every_module_has_a_stage() -> None:
    stages = {_stage_of(p) for p in _modules()}
    assert stages - set(STAGE) == set(), "add new top-level modules or folders to STAGES (and docs/internals.md)"
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(FOLDERS)


def test_imports_flow_one_way() -> None:
    bad = []
    for path in _modules():
        me = STAGE[_stage_of(path)]
        for mod, _, line in _imports(path):
            if mod in STAGE and STAGE[mod] > me:
                bad.append(f"{path.relative_to(PKG)}:{line} imports the later stage {mod}")
    assert bad == []


def test_no_module_imports_another_modules_private_name() -> None:
    bad = [f"{path.relative_to(PKG)}:{line} imports {name} from {mod}"
           for path in _modules() for mod, names, line in _imports(path)
           for name in names if name.startswith("_") and not name.startswith("__")]
    assert bad == []


def test_every_folder_says_what_it_holds_and_may_import() -> None:
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text()))
        assert doc and "Imports" in doc, f"{folder}/__init__.py must say what it holds and what it may import"


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(PKG)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_test_folders_mirror_the_package() -> None:
    tests = Path(__file__).parent
    assert {f for f in FOLDERS if (tests / f).is_dir()} == set(FOLDERS)


def test_contracts_list_the_checkpoint_keys_the_code_writes(tmp_path) -> None:
    import re

    import torch

    from tinytransfer.config import from_dict
    from tinytransfer.data.dataset import Dataset, Split
    from tinytransfer.models.backbones import create_model
    from tinytransfer.runs.checkpoint import load_checkpoint
    from tinytransfer.training.engine import fit

    doc = (PKG.parents[1] / "docs" / "internals.md").read_text()
    listed = re.search(r"<!-- checkpoint-keys -->(.*?)<!-- /checkpoint-keys -->", doc, re.S)
    assert listed, "docs/internals.md lost its checkpoint-keys list"
    keys = set(re.findall(r"`([a-z_0-9]+)`", listed.group(1)))
    g = torch.Generator().manual_seed(0)
    split = Split(images=torch.randint(0, 256, (8, 16, 16, 3), generator=g, dtype=torch.uint8).numpy(),
                  labels=torch.arange(8).remainder(2).numpy(), files=[f"{i}.png" for i in range(8)])
    data = Dataset(root=str(tmp_path), classes=["a", "b"], names=["a", "b"], train=split, val=split, test=None,
                   image_size=16)
    cfg = from_dict({"model": {"backbone": "timm:test_resnet", "head": "pool", "pretrained": False,
                               "input_size": 16}, "phases": [{"epochs": 1, "batch_size": 4}], "data": {"augment": "none"}})
    fit(create_model("timm:test_resnet", 2, head="pool", input_size=16), data, cfg, tmp_path / "run",
        show_progress=False)
    assert set(load_checkpoint(tmp_path / "run" / "last.pt")) == keys
    assert set(load_checkpoint(tmp_path / "run" / "best.pt")) == keys | {"weights"}  # which weights it holds
