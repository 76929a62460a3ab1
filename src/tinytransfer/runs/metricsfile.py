"""``metrics.csv`` and Table 1: the run folder's per-epoch record, its columns, its reader and writer, and the report's
Table 1 computed from it (``table1.md``, ``table1.csv``). File names and ``config.yaml`` live in :mod:`.runfolder`."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PhaseConfig, step_size_of
from ..fsutil import atomic_write, atomic_write_text
from .runfolder import METRICS_CSV, TABLE1_CSV, TABLE1_MD, read_config

__all__ = [
    "console_line",
    "METRIC_COLUMNS",
    "OPTIONAL_COLUMNS",
    "TABLE1_COLUMNS",
    "MetricsWriter",
    "PhaseSpan",
    "base_word",
    "fmt_lr",
    "phase_config",
    "phase_spans",
    "read_metrics",
    "table1",
    "table1_markdown",
    "table1_rows",
]

log = logging.getLogger(__name__)

# One row an epoch; plots read only this file. Accuracies are fractions in [0, 1].
METRIC_COLUMNS = (
    "phase", "epoch", "step", "lr",
    "train_loss", "train_acc", "train_top5",
    "val_loss", "val_acc", "val_top5",
    "seconds", "img_s",
    "ema_val_loss", "ema_val_acc",
)
OPTIONAL_COLUMNS = ("ema_val_loss", "ema_val_acc")  # empty without a weight EMA; absent from older files
_INT_COLUMNS = ("phase", "epoch", "step")
# Table 1 as CSV: one row a phase that ran. Accuracies are fractions; LRs as floats; step_size in iterations.
TABLE1_COLUMNS = (
    "phase", "name", "train", "lr_policy", "base_lr", "max_lr", "step_size",
    "start_epoch", "end_epoch", "planned_epochs", "max_val_acc", "best_epoch",
)
# Phase fields used when config.yaml lacks them: config.PhaseConfig's defaults.
_PHASE_DEFAULTS: dict[str, Any] = {
    k: getattr(PhaseConfig(), k) for k in ("name", "epochs", "train", "lr_policy", "lr_min", "lr_max", "step_size")
}


# ---- reading the run folder ---------------------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of ``metrics.csv`` with typed values, sorted by epoch.

    ``phase``, ``epoch``, ``step`` are ints; the other columns floats (an empty cell, e.g. no validation split, is
    NaN). Extra columns are kept as strings. A malformed file raises ``ValueError("<path>: line N: ...")``. When a
    resumed run wrote an epoch twice, the later row wins.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected the header {','.join(METRIC_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in METRIC_COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        by_epoch: dict[int, dict] = {}
        for values in reader:
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(f"{path}: line {line}: expected {len(header)} fields, got {len(values)}")
            raw = dict(zip(header, (v.strip() for v in values)))
            row: dict[str, Any] = {c: math.nan for c in OPTIONAL_COLUMNS}
            for col, text in raw.items():
                if col in _INT_COLUMNS:
                    row[col] = _parse_int(text, path, line, col)
                elif col in METRIC_COLUMNS:
                    row[col] = _parse_float(text, path, line, col)
                else:
                    row[col] = text
            if row["phase"] < 1 or row["epoch"] < 1 or row["step"] < 0:
                raise ValueError(f"{path}: line {line}: phase and epoch must be >= 1 and step >= 0, got "
                                 f"phase={row['phase']} epoch={row['epoch']} step={row['step']}")
            if row["epoch"] in by_epoch:
                log.warning("%s: line %d: epoch %d appears again; keeping this row", path, line, row["epoch"])
            by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _parse_int(text: str, path: Path, line: int, col: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: column {col}: expected an integer, got {text!r}") from None
    if not v.is_integer():
        raise ValueError(f"{path}: line {line}: column {col}: expected an integer, got {text!r}")
    return int(v)


def _parse_float(text: str, path: Path, line: int, col: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: column {col}: expected a number, got {text!r}") from None


@dataclass(frozen=True)
class PhaseSpan:
    """One phase as it ran, from metrics.csv rows and its config.yaml entry."""

    index: int  # 1-based, as in metrics.csv
    config: dict  # the phase's config.yaml entry with _PHASE_DEFAULTS filled in
    start_epoch: int  # the previous phase's last epoch (0 for the first): the report's "0–25", "25–40"
    end_epoch: int  # last epoch run in this phase (earlier than planned if early stopping ended it)
    epochs_run: int  # epochs of this phase in metrics.csv
    steps: int  # iterations run in the phase (step of its last row)
    steps_per_epoch: int  # iterations an epoch, steps / epochs_run
    iter_offset: int  # iterations of all earlier phases: where this phase starts on the LR plot's x axis
    rows: list[dict] = field(default_factory=list, repr=False)  # its metrics.csv rows

    @property
    def name(self) -> str:
        return str(self.config.get("name", f"phase {self.index}"))

    @property
    def planned_epochs(self) -> int:
        return int(self.config.get("epochs", self.epochs_run))


def phase_spans(rows: Sequence[dict], config: Mapping) -> list[PhaseSpan]:
    """Group metrics rows by phase (in phase order) and join each group with its config.yaml phase entry."""
    phases_cfg = list(config.get("phases") or [])
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(int(r["phase"]), []).append(r)
    spans: list[PhaseSpan] = []
    offset = 0
    for idx in sorted(groups):
        grp = sorted(groups[idx], key=lambda r: r["epoch"])
        if idx - 1 < len(phases_cfg) and isinstance(phases_cfg[idx - 1], Mapping):
            cfg = {**_PHASE_DEFAULTS, **phases_cfg[idx - 1]}
        else:
            log.warning("config.yaml has no entry for phase %d; using default phase fields", idx)
            cfg = {**_PHASE_DEFAULTS, "name": f"phase {idx}", "epochs": len(grp)}
        steps = int(grp[-1]["step"])
        spe = max(1, round(steps / len(grp)))
        spans.append(PhaseSpan(index=idx, config=cfg, start_epoch=grp[0]["epoch"] - 1, end_epoch=grp[-1]["epoch"],
                               epochs_run=len(grp), steps=steps, steps_per_epoch=spe, iter_offset=offset, rows=grp))
        offset += steps
    return spans


def phase_config(phase: Mapping) -> PhaseConfig:
    """A config.yaml phase entry (plus extra keys such as ``steps_per_epoch``) as a PhaseConfig."""
    fields = {k: v for k, v in phase.items() if k in PhaseConfig.__dataclass_fields__}
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return PhaseConfig(**fields)


# ---- metrics.csv --------------------------------------------------------------------------------------------------


class MetricsWriter:
    """Appends rows to ``metrics.csv``; each row is flushed and fsynced so a crash loses at most the current epoch."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (a resumed run rewrites what the checkpoint does not cover)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _complete(r) and int(r["epoch"]) <= epoch]
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        try:
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                if new:
                    w.writeheader()
                w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk: say which file
            raise OSError(e.errno, e.strerror, str(self.path)) from e


def _complete(row: dict) -> bool:
    """A row fully written (a kill during an append can leave half a line)."""
    if None in row or any(row.get(k) is None for k in METRIC_COLUMNS if k not in OPTIONAL_COLUMNS):
        return False
    try:
        int(row["epoch"]), int(row["phase"]), float(row["train_loss"])
    except ValueError:
        return False
    return True


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


# ---- Table 1 ------------------------------------------------------------------------------------------------------


def table1_rows(rows: Sequence[dict], config: Mapping) -> list[dict]:
    """The report's Table 1, one dict a phase that ran (keys: :data:`TABLE1_COLUMNS`).

    ``base_lr``/``max_lr``: the policy's low and high LR (a constant policy has both at ``lr_max``); ``step_size``:
    the CLR half cycle in iterations (resolved when the recipe left it 0), None for other policies; ``start_epoch``
    = the previous phase's end; ``end_epoch`` = its last epoch run; ``max_val_acc`` a fraction (None without val).
    """
    out = []
    for s in phase_spans(rows, config):
        c = s.config
        policy = str(c.get("lr_policy"))
        lr_max = float(c.get("lr_max"))
        lr_min = lr_max if policy == "constant" else float(c.get("lr_min"))
        # the CLR half cycle in iterations; 0 in a recipe means two epochs' worth (schedule.step_size_of)
        step_size = step_size_of(phase_config(c), s.steps_per_epoch) if policy == "triangular" else None
        vals = [(r["val_acc"], r["epoch"]) for r in s.rows if not math.isnan(r["val_acc"])]
        best_acc, best_epoch = max(vals, key=lambda t: t[0]) if vals else (None, None)
        out.append({
            "phase": s.index, "name": s.name, "train": str(c.get("train")), "lr_policy": policy,
            "base_lr": lr_min, "max_lr": lr_max, "step_size": step_size,
            "start_epoch": s.start_epoch, "end_epoch": s.end_epoch, "planned_epochs": s.planned_epochs,
            "max_val_acc": best_acc, "best_epoch": best_epoch,
        })
    return out


def fmt_lr(v: float) -> str:
    """1e-4 → "1e-4", 2.5e-5 → "2.5e-5" (the report's style)."""
    mant, exp = f"{v:.3e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def base_word(train: str) -> str:
    return {"head": "frozen", "all": "unfrozen"}.get(train, train)


def table1_markdown(table: Sequence[dict]) -> str:
    """Table 1 as Markdown, with a note under it for phases that ran fewer epochs than planned."""
    lines = [
        "| phase | name | base | LR policy | base LR | max LR | step size (iterations) | start epoch | end epoch "
        "| max val accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for i, t in enumerate(table):
        acc = "–" if t["max_val_acc"] is None else f"{100 * t['max_val_acc']:.2f} %"
        step = "–" if t["step_size"] is None else str(t["step_size"])
        name = str(t["name"]).replace("|", "\\|")
        lines.append(f"| {t['phase']} | {name} | {base_word(t['train'])} | {t['lr_policy']} | {fmt_lr(t['base_lr'])} "
                     f"| {fmt_lr(t['max_lr'])} | {step} | {t['start_epoch']} | {t['end_epoch']} | {acc} |")
        run = t["end_epoch"] - t["start_epoch"]
        if run < t["planned_epochs"]:
            why = "early stopping" if i < len(table) - 1 else "early stopping, or the run is unfinished"
            notes.append(f"Phase {t['phase']} ran {run} of {t['planned_epochs']} planned epochs ({why}).")
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def table1(run_dir: str | os.PathLike) -> list[dict]:
    """Compute Table 1 from ``metrics.csv`` + ``config.yaml`` and write ``table1.md`` and ``table1.csv``."""
    run_dir = Path(run_dir)
    table = table1_rows(read_metrics(run_dir / METRICS_CSV), read_config(run_dir))
    atomic_write_text(run_dir / TABLE1_MD, table1_markdown(table))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE1_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if t[k] is None else t[k]) for k in TABLE1_COLUMNS} for t in table)
    atomic_write_text(run_dir / TABLE1_CSV, buf.getvalue())
    log.info("Table 1 (%d phases) written to %s", len(table), run_dir / TABLE1_MD)
    return table


def console_line(row: dict) -> str:
    """One fixed-column console line an epoch; the same values go to metrics.csv."""
    val = (f"val {row['val_loss']:7.4f} {100 * row['val_acc']:6.2f}% top5 {100 * row['val_top5']:6.2f}%"
           if row.get("val_acc") is not None else "val      -       -")
    ema = f" | ema {100 * row['ema_val_acc']:6.2f}%" if row.get("ema_val_acc") is not None else ""
    return (f"phase {row['phase']:>2} epoch {row['epoch']:>4} step {row['step']:>7} lr {row['lr']:.2e} | "
            f"train {row['train_loss']:7.4f} {100 * row['train_acc']:6.2f}% | {val} | "
            f"{row['seconds']:7.1f}s {row['img_s']:8.1f} img/s{ema}")
