"""report.html's part on a time budget: the plan the run was given, what was measured and every re-plan.

Reads only the config dict (config.yaml's ``budget`` and ``plan``, written by ``training/budgetrun.py``); empty for a
run without a budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from .htmlparts import esc, table

__all__ = ["budget_part"]


def budget_part(cfg: Mapping) -> str:
    """An ``<h3>`` part: budget, start, per-phase epochs (recipe → planned) and seconds an epoch, the finish, the
    choices made and every re-plan; "" where the run had no budget plan."""
    plan = cfg.get("plan") if isinstance(cfg, Mapping) else None
    if not cfg.get("budget") or not isinstance(plan, Mapping) or not plan.get("budget_s"):
        return ""
    phases = [p for p in cfg.get("phases") or [] if isinstance(p, Mapping)]
    recipe = list(plan.get("recipe_epochs") or [])
    epoch_s = list(plan.get("epoch_s") or [])
    rows = [[i + 1, p.get("name", ""), p.get("train", ""), recipe[i] if i < len(recipe) else "",
             p.get("epochs", ""), f"{epoch_s[i]:.1f}" if i < len(epoch_s) else ""] for i, p in enumerate(phases)]
    facts = (f"<p>Budget {esc(cfg['budget'])} ({float(plan['budget_s']):.0f} s) for the whole command: start "
             f"(data, model, measurement) {float(plan.get('start_s', 0)):.1f} s, report and predictions estimated at "
             f"{float(plan.get('finish_s', 0)):.1f} s; at the last plan {float(plan.get('elapsed_s', 0)):.0f} s spent "
             f"and {float(plan.get('planned_s', 0)):.0f} s planned in all. The recipe's proportions between phases "
             "are kept, at least one epoch each.</p>")
    choices = "".join(f"<li>{esc(c)}</li>" for c in plan.get("choices") or [])
    replans = "".join(f"<li>{esc(r)}</li>" for r in plan.get("replans") or [])
    return ("<h3>Time budget</h3>" + facts
            + table(("phase", "name", "trains", "recipe epochs", "planned epochs", "measured s an epoch"), rows,
                    numeric=(3, 4, 5))
            + (f"<p>Chosen where the recipe said auto:</p><ul>{choices}</ul>" if choices else "")
            + ("<p>Re-plans at epoch ends (a running phase's LR schedule is fitted into its new end):</p>"
               f"<ul>{replans}</ul>" if replans else "<p>No re-plan changed the epochs.</p>"))
