"""The documentation holds together: every relative link in README.md and docs/*.md resolves (file and #anchor), every
Python file they name exists (modules move: the docs must follow), the README stays a front door (at most 200 lines,
every page of docs/ reachable from it), and its command list names real commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200
EXTERNAL_FILES = {"keras/src/applications/vgg16.py"}  # files of other projects that the docs cite
SEARCHED = ("", "src/tinytransfer", "benchmarks", "tests")  # where a path named in the docs may be relative to

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where a bracket is not a link."""
    return _CODE.sub("", _FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of ``path`` define, repeats numbered as GitHub does (x, x-1, x-2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for title in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(title)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto: ... are not checked here


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in _links(path):
        if not _relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.relative_to(ROOT)}: {target}: no heading with anchor #{anchor} in {dest.name}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# Title\n\n## What \"exact\" covers\n\n## Twice\n\n## Twice\n")
    (tmp_path / "a.md").write_text(
        "[ok](b.md) [ok](b.md#what-exact-covers) [ok](b.md#twice-1) [ok](#here) [web](https://example.com/x)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n# Here\n"
        "[gone](c.md) [no anchor](b.md#nope) [no such twin](b.md#twice-2)\n")
    assert broken_links(tmp_path / "a.md") == [
        "a.md: c.md: no such file",
        "a.md: b.md#nope: no heading with anchor #nope in b.md",
        "a.md: b.md#twice-2: no heading with anchor #twice-2 in b.md",
    ]


_PY_FILE = re.compile(r"(?<![\w./-])([\w./-]*\w\.py)\b")


def missing_files(text: str, root: Path) -> list[str]:
    """The ``.py`` files named in ``text`` that exist nowhere: a path with a folder must exist below one of
    ``SEARCHED``; a bare name anywhere under them."""
    missing = []
    for name in sorted(set(_PY_FILE.findall(text)) - EXTERNAL_FILES):
        if "/" in name:
            found = any((root / base / name).is_file() for base in SEARCHED)
        else:
            found = any(next((root / base).rglob(name), None) for base in SEARCHED[1:] if (root / base).is_dir())
        if not found:
            missing.append(name)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_python_file_named_exists(page: Path) -> None:
    assert missing_files(page.read_text(encoding="utf-8"), ROOT) == []


def test_the_file_checker_catches_a_moved_module(tmp_path) -> None:
    (tmp_path / "src" / "tinytransfer" / "data").mkdir(parents=True)
    (tmp_path / "src" / "tinytransfer" / "data" / "augment.py").write_text("")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "pipeline.py").write_text("")
    text = ("`data/augment.py`, `src/tinytransfer/data/augment.py`, augment.py, `benchmarks/pipeline.py`, "
            "pipeline.py, keras/src/applications/vgg16.py; gone: `augment.py` as data/keras_warp.py, models.py")
    assert missing_files(text, tmp_path) == ["data/keras_warp.py", "models.py"]


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to a docs/ page"
    assert lines[0] == "# tinytransfer"
    setup = "\n".join(lines[:12])
    assert "make demo" in setup and "make test" in setup, "the two set-up commands come first"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README) if _relative(t)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_the_readme_command_list_names_real_commands() -> None:
    from tinytransfer.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    block = re.search(r"^## Commands\n\n```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    assert block, "README.md lost its ## Commands block"
    used = set(re.findall(r"^tinytransfer ([a-z-]+)", block.group(1), re.M))
    assert used and used <= set(sub.choices), used - set(sub.choices)
    assert set(sub.choices) <= used, f"commands missing from the README: {set(sub.choices) - used}"
