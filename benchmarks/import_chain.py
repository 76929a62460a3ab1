"""The package's import graph in figures: modules, the longest chain of imports (module A imports B imports C ...),
and how many imports climb back to a stage already left. Reads source only (nothing is imported).

    python benchmarks/import_chain.py [SRC_DIR] [--json OUT]

SRC_DIR defaults to this checkout's src/tinytransfer; give an older checkout's to compare (git worktree add).
Counts every import of a package module, lazy ones inside functions included, TYPE_CHECKING-only ones excluded.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(pkg: Path, path: Path) -> str:
    rel = path.relative_to(pkg).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def import_graph(pkg: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (names relative to the package, dotted)."""
    files = {_module_name(pkg, p): p for p in sorted(pkg.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        here = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        if name == "__init__":
            here = []
        deps: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.lineno in skip:
                continue
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == pkg.name:
                target = node.module.split(".")[1:]
            else:
                continue
            cands = [".".join(target + [a.name]) for a in node.names] if True else []
            hit = [c for c in cands if c in files]
            if hit:
                deps.update(hit)
            elif ".".join(target) in files:
                deps.add(".".join(target))
        deps.discard(name)
        graph[name] = deps
    return graph


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (a DAG is assumed; a cycle is cut where it closes)."""
    @functools.lru_cache(maxsize=None)
    def best(node: str, stack: frozenset) -> tuple[str, ...]:
        tails = [best(d, stack | {node}) for d in sorted(graph.get(node, ())) if d not in stack]
        return (node, *max(tails, key=len, default=()))

    return list(max((best(n, frozenset()) for n in sorted(graph)), key=len))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=str(ROOT / "src" / "tinytransfer"))
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    pkg = Path(a.src).resolve()
    graph = import_graph(pkg)
    chain = longest_chain(graph)
    lines = {n: len((pkg / (n.replace(".", "/") + ".py")).read_text().splitlines())
             for n in graph if (pkg / (n.replace(".", "/") + ".py")).is_file()}
    out = {"src": str(pkg), "modules": len(graph), "edges": sum(len(v) for v in graph.values()),
           "longest_chain": chain, "longest_chain_modules": len(chain),
           "largest_module": max(lines.items(), key=lambda kv: kv[1]), "modules_over_400_lines":
           sorted(k for k, v in lines.items() if v > 400)}
    print(f"{out['modules']} modules, {out['edges']} import edges; longest chain {len(chain)} modules:")
    print("  " + " -> ".join(chain))
    print(f"largest module: {out['largest_module'][0]} ({out['largest_module'][1]} lines); over 400 lines: "
          f"{', '.join(out['modules_over_400_lines']) or 'none'}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
