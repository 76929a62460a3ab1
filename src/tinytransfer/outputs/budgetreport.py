"""report.html's part on a time budget: the plan the run was given, what was measured and every re-plan.

Reads only the config dict (config.yaml's ``budget`` and ``plan``, written by ``training/budgetrun.py``); empty for a
run without a budget.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = ["budget_part"]


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def budget_part(cfg: Mapping) -> str:
    """An ``<h3>`` part: budget, start, per-phase epochs (recipe → planned) and seconds an epoch, the finish, the
    choices made and every re-plan; "" where the run had no budget plan."""
    plan = cfg.get("plan") if isinstance(cfg, Mapping) else None
    if not cfg.get("budget") or not isinstance(plan, Mapping) or not plan.get("budget_s"):
        return ""
    phases = [p for p in cfg.get("phases") or [] if isinstance(p, Mapping)]
    recipe = list(plan.get("recipe_epochs") or [])
    epoch_s = list(plan.get("epoch_s") or [])
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{_e(p.get('name', ''))}</td><td>{_e(p.get('train', ''))}</td>"
        f'<td class="num">{_e(recipe[i] if i < len(recipe) else "")}</td><td class="num">{_e(p.get("epochs", ""))}</td>'
        f'<td class="num">{_e(f"{epoch_s[i]:.1f}" if i < len(epoch_s) else "")}</td></tr>'
        for i, p in enumerate(phases))
    table = ('<div class="scroll"><table><thead><tr><th>phase</th><th>name</th><th>trains</th><th>recipe epochs</th>'
             f"<th>planned epochs</th><th>measured s an epoch</th></tr></thead><tbody>{rows}</tbody></table></div>")
    facts = (f"<p>Budget {_e(cfg['budget'])} ({float(plan['budget_s']):.0f} s) for the whole command: start "
             f"(data, model, measurement) {float(plan.get('start_s', 0)):.1f} s, report and predictions estimated at "
             f"{float(plan.get('finish_s', 0)):.1f} s; at the last plan {float(plan.get('elapsed_s', 0)):.0f} s spent "
             f"and {float(plan.get('planned_s', 0)):.0f} s planned in all. The recipe's proportions between phases "
             "are kept, at least one epoch each.</p>")
    choices = "".join(f"<li>{_e(c)}</li>" for c in plan.get("choices") or [])
    replans = "".join(f"<li>{_e(r)}</li>" for r in plan.get("replans") or [])
    return ("<h3>Time budget</h3>" + facts + table
            + (f"<p>Chosen where the recipe said auto:</p><ul>{choices}</ul>" if choices else "")
            + (f"<p>Re-plans at epoch ends (a running phase's LR schedule is fitted into its new end):</p>"
               f"<ul>{replans}</ul>" if replans else "<p>No re-plan changed the epochs.</p>"))
