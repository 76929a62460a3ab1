"""The HTML pieces report.html is made of (escaping, tables, sections, embedded images, the page's CSS), for every
module that writes a part of the report."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CSS", "NOT_PRODUCED", "esc", "flatten", "img", "img_or_missing", "missing", "pct", "section", "table"]

NOT_PRODUCED = "not produced for this run"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232a;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 0 1.2rem 3rem; }
header#run { background: #24324a; color: #fff; padding: 1.2rem 1.2rem 0.8rem; }
header#run h1 { margin: 0 auto; max-width: 1100px; font-size: 1.6rem; }
header#run p { margin: 0.3rem auto 0; max-width: 1100px; opacity: 0.85; }
nav { max-width: 1100px; margin: 0.6rem auto 0; font-size: 0.9rem; }
nav a { color: #cfe0ff; margin-right: 1rem; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; margin: 1.2rem 0; padding: 0.4rem 1.2rem
          1rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #e4e7eb; padding-bottom: 0.3rem; }
h3 { font-size: 1.02rem; margin-bottom: 0.4rem; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.4rem 0 0.8rem; }
th, td { border: 1px solid #d5d9de; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.6rem 0 1rem; }
figure img { max-width: 100%; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.82rem; color: #5a6470; }
.missing { color: #8a6d3b; font-style: italic; }
.cols { display: flex; gap: 2rem; flex-wrap: wrap; }
pre { background: #f3f4f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.big { font-size: 1.4rem; font-weight: 600; }
.label { font-size: 0.78rem; color: #5a6470; text-transform: uppercase; letter-spacing: 0.03em; }
"""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def missing(what: str = "") -> str:
    return f'<p class="missing">{esc(what + ": " if what else "")}{NOT_PRODUCED}</p>'


def img(path: Path, caption: str | None = None) -> str:
    """<figure> with the PNG embedded as a data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = caption if caption is not None else path.name
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(cap)}">'
            f"<figcaption>{esc(cap)}</figcaption></figure>")


def img_or_missing(run_dir: Path, name: str, caption: str) -> str:
    p = run_dir / name
    return img(p, caption) if p.is_file() else missing(caption)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(v)}</td>' if i in numeric else f"<td>{esc(v)}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * float(v):.2f} %"


def flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += flatten(v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            continue  # lists of mappings (phases) get their own table
        else:
            out.append((key, v))
    return out


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'
