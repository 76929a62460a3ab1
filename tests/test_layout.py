"""The code's shape: imports flow one way through the stages, and no module imports another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import tinytransfer

PKG = Path(tinytransfer.__file__).parent

# Each module may import only modules of its own stage or an earlier one (docs/CONTRACTS.md).
STAGES = [
    {"config", "fsutil"},
    {"decode", "cache", "data", "sources", "augment", "loader"},
    {"weights", "keras_weights", "heads", "models"},
    {"schedule", "metrics", "optim", "ema", "mixing"},
    {"checkpoint", "runfolder", "parallel", "asyncsave", "compilestats", "tb"},
    {"steps", "engine", "lrfind", "autolr"},
    {"predict", "cam", "plots", "report", "export", "outputs"},
    {"run", "api"},
    {"cli", "__main__", "__init__"},
]
STAGE = {m: i for i, group in enumerate(STAGES) for m in group}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every relative import in ``path``, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.append((node.module.split(".")[0], [a.name for a in node.names], node.lineno))
            else:  # from . import x
                out += [(a.name, [], node.lineno) for a in node.names]
    return out


def test_every_module_has_a_stage() -> None:
    modules = {p.stem for p in PKG.glob("*.py")}
    assert modules - set(STAGE) == set(), "add new modules to STAGES (and docs/CONTRACTS.md)"


def test_imports_flow_one_way() -> None:
    bad = []
    for path in sorted(PKG.glob("*.py")):
        me = STAGE[path.stem]
        for mod, _, line in _imports(path):
            if mod in STAGE and STAGE[mod] > me:
                bad.append(f"{path.name}:{line} imports the later stage {mod}")
    assert bad == []


def test_no_module_imports_another_modules_private_name() -> None:
    bad = [f"{path.name}:{line} imports {name} from {mod}"
           for path in sorted(PKG.glob("*.py")) for mod, names, line in _imports(path)
           for name in names if name.startswith("_") and not name.startswith("__")]
    assert bad == []


def test_contracts_list_the_checkpoint_keys_the_code_writes(tmp_path) -> None:
    import re

    import torch

    from tinytransfer.checkpoint import load_checkpoint
    from tinytransfer.config import from_dict
    from tinytransfer.data import Dataset, Split
    from tinytransfer.engine import fit
    from tinytransfer.models import create_model

    doc = (PKG.parents[1] / "docs" / "CONTRACTS.md").read_text()
    listed = re.search(r"<!-- checkpoint-keys -->(.*?)<!-- /checkpoint-keys -->", doc, re.S)
    assert listed, "docs/CONTRACTS.md lost its checkpoint-keys list"
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
