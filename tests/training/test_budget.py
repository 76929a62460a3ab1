"""Training to a time budget: the planner at its corners on given costs, the re-plan on a fake clock, the LR that
still anneals after a re-plan, and one tiny real run (asserting on the plan and the recorded times, not on speed)."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
import torch
import yaml
from test_engine import TINY, read_rows, run, run_killed_at_epoch, tiny_config

from tinytransfer.config import ConfigError, PhaseConfig, PlanConfig, RunConfig, from_dict, parse_budget, to_dict
from tinytransfer.runs.checkpoint import load_checkpoint
from tinytransfer.runs.runfolder import read_config, unplanned
from tinytransfer.training import budgetrun
from tinytransfer.training.budget import (
    capped_epoch_s,
    choose_largest,
    fit_schedule,
    largest_cap,
    plan_epochs,
    planned_seconds,
    replan,
    with_epochs,
)
from tinytransfer.training.schedule import lr_at

# ---- the plan on given costs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", [[2, 3], [25, 15, 15], [1], [3, 0, 2]])
@pytest.mark.parametrize("epoch_s", [[10.0, 20.0, 5.0], [1.0, 1.0, 1.0], [3.0, 40.0, 7.5]])
@pytest.mark.parametrize("available", [0.0, 30.0, 95.0, 400.0, 5000.0])
def test_plan_never_overruns_and_keeps_at_least_one_epoch(recipe, epoch_s, available):
    cost = epoch_s[: len(recipe)]
    got = plan_epochs(recipe, cost, available)
    assert all(g >= 1 for g, e in zip(got, recipe) if e > 0)  # at least one epoch a phase
    assert all(g == 0 for g, e in zip(got, recipe) if e == 0)  # a phase of 0 epochs stays off
    floors = planned_seconds([1 if e else 0 for e in recipe], cost)
    if floors <= available:
        assert planned_seconds(got, cost) <= available  # the plan fits
        # and it is the most that fits: one scale step more overruns (every phase one more epoch is over)
        assert planned_seconds([g + 1 if e else 0 for g, e in zip(got, recipe)], cost) > available
    else:
        assert got == [1 if e else 0 for e in recipe]  # not even one each fits: one each, and the caller warns


def test_plan_keeps_the_recipes_proportions():
    got = plan_epochs([2, 3], [10.0, 10.0], 500.0)
    assert sum(got) * 10 <= 500 and abs(got[1] / got[0] - 1.5) < 0.1
    got = plan_epochs([25, 15, 15], [10.0, 30.0, 30.0], 2000.0)  # the report's 25/15/15 phases
    assert got[1] == got[2] and abs(got[0] / got[1] - 25 / 15) < 0.2
    assert plan_epochs([2, 3], [10.0, 20.0], 80.0) == [2, 3]  # exactly the recipe's cost: the recipe's epochs


def test_choose_largest_candidate_that_keeps_the_recipes_epochs():
    recipe = [2, 3]
    costs = [[1.0, 2.0], [2.0, 4.0], [4.0, 8.0]]  # e.g. input sides 96, 128, 160
    assert choose_largest(costs, recipe, 100.0) == 2  # 2*4 + 3*8 = 32 fits: the largest
    assert choose_largest(costs, recipe, 20.0) == 1  # 16 fits, 32 not
    assert choose_largest(costs, recipe, 5.0) == 0  # nothing keeps the recipe's epochs: the smallest
    assert choose_largest(costs, recipe, [100.0, 100.0, 20.0]) == 1  # each its own time: the largest's is short


# ---- re-planning and the LR schedule -------------------------------------------------------------------------------


def _cfg(epochs=(2, 4), policy="onecycle", budget="10m") -> RunConfig:
    phases = tuple(PhaseConfig(name=f"p{i}", epochs=e, lr_policy=policy, lr_min=1e-4, lr_max=1e-2)
                   for i, e in enumerate(epochs))
    plan = PlanConfig(budget_s=parse_budget(budget), recipe_epochs=tuple(epochs), epoch_s=(10.0,) * len(epochs),
                      finish_s=5.0)
    return RunConfig(phases=phases, budget=budget, plan=plan)


@pytest.mark.parametrize("policy", ["onecycle", "triangular"])
def test_shortened_phase_is_continuous_and_ends_where_its_schedule_ends(policy):
    spe = 10
    phase = PhaseConfig(epochs=6, lr_policy=policy, lr_min=1e-4, lr_max=1e-2, step_size=15)
    short = fit_schedule(phase, done=2, new_epochs=3)
    assert short.epochs == 3 and short.lr_epochs == 6
    for s in range(0, 2 * spe):  # the part already trained (epochs 1 and 2) is unchanged
        assert lr_at(s, short, spe) == pytest.approx(lr_at(s, phase, spe))
    end_old, end_new = lr_at(6 * spe - 1, phase, spe), lr_at(3 * spe - 1, short, spe)
    assert end_new == pytest.approx(end_old, rel=0.05, abs=1e-6)  # the shortened phase still ends annealed
    steps = [lr_at(s, short, spe) for s in range(3 * spe)]
    jumps = [abs(b - a) for a, b in itertools.pairwise(steps)]
    assert max(jumps) < 0.35 * phase.lr_max  # no jump: the rest of the schedule is compressed, not cut
    four = fit_schedule(phase, done=2, new_epochs=4)
    again = fit_schedule(four, done=3, new_epochs=5)  # a later re-plan (here longer) composes with the first
    assert again.lr_epochs == 6 and lr_at(5 * spe - 1, again, spe) == pytest.approx(end_old, rel=0.05, abs=1e-6)
    trained = range(3 * spe)
    assert [lr_at(s, again, spe) for s in trained] == pytest.approx([lr_at(s, four, spe) for s in trained])


def test_replan_after_a_slow_epoch_shortens_the_rest_and_fits():
    cfg = _cfg(epochs=(2, 4))
    plan = cfg.plan
    epochs = replan(cfg, phase=0, phase_done=1, epoch_s=[30.0, 30.0], left_s=100.0)  # 3x slower than measured
    assert epochs[0] == 2  # the running phase keeps one more epoch: its schedule ends
    assert 1 <= epochs[1] < 4
    assert planned_seconds(epochs, [30.0, 30.0], done=[1, 0]) <= 100.0
    new = with_epochs(cfg, epochs, running=0, done=1)
    assert new.phases[1].lr_knots == () and new.phases[1].epochs == epochs[1]  # not started: laid out afresh
    assert plan == new.plan
    # a phase whose schedule has ended is over: the time left goes to the later phases
    assert replan(cfg, phase=0, phase_done=2, epoch_s=[10.0, 10.0], left_s=1000.0)[0] == 2


def test_a_fast_phase_does_not_promise_fast_later_phases(monkeypatch, tmp_path):
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(2, 3), budget="100s"), [2, 3])  # 2 x 10 + 3 x 10 s + 5 s finish, 40 s in
    clock = budgetrun.BudgetClock(started=-40.0)
    state = budgetrun.TrainState(phase_epoch=1, epoch=1)
    now[0] = 2.0  # the head's epoch took 2 s, a fifth of the measured 10
    cfg = clock.replan(cfg, state, tmp_path)
    assert cfg.phases[1].epochs <= 5  # (100 - 42 - 2 - 5) / 10 s at most, not / 2 s


def test_clock_replans_on_measured_epochs_and_never_plans_past_the_budget(monkeypatch, tmp_path):
    """A fake clock: from the third epoch of the second phase on, epochs take 2.5x the measured time; every re-plan's
    plan ends within the budget, the running phase is shortened, and its LR still reaches the annealed end of its
    schedule."""
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = _cfg(epochs=(2, 6), budget="200s")
    cfg = with_epochs(cfg, plan_epochs([2, 6], [10.0, 10.0], 200 - 5 - 5))  # as planned at the start (5 s in)
    assert sum(p.epochs for p in cfg.phases) * 10 <= 190
    now[0] = 5.0
    clock = budgetrun.BudgetClock(started=0.0)
    state = budgetrun.TrainState()
    spe = 7
    annealed = lr_at(cfg.phases[1].epochs * spe - 1, cfg.phases[1], spe)
    while state.phase < len(cfg.phases):
        while state.phase_epoch < cfg.phases[state.phase].epochs:
            now[0] += 25.0 if (state.phase, state.phase_epoch) >= (1, 2) else 10.0  # 2.5x slower from phase 2's 3rd
            state.phase_epoch += 1
            state.epoch += 1
            cfg = clock.replan(cfg, state, tmp_path, main=True)
            assert cfg.plan.planned_s <= 200 + 25  # never planned past the budget by more than the epoch in flight
        last = cfg.phases[state.phase]
        state.phase, state.phase_epoch = state.phase + 1, 0
    assert now[0] + cfg.plan.finish_s <= 200 + 25
    assert cfg.plan.replans  # the slow epochs were re-planned
    assert last.lr_knots  # the running last phase was shortened ...
    laid_out = dataclasses.replace(last, epochs=last.lr_epochs, lr_knots=())
    end = lr_at(laid_out.epochs * spe - 1, laid_out, spe)
    assert lr_at(last.epochs * spe - 1, last, spe) == pytest.approx(end, rel=1e-6)  # ... and still ends annealed
    assert end < last.lr_min and annealed < last.lr_min
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["plan"]["replans"] == list(cfg.plan.replans)


# ---- config, recipe, CLI and API plumbing --------------------------------------------------------------------------


def test_budget_parses_and_bad_ones_name_the_key():
    assert [parse_budget(t) for t in ("90", "90s", "5m", "1.5h", "1h30m", "2 m")] == [90, 90, 300, 5400, 5400, 120]
    for bad in ("", "x", "5x", "m", "0", "-5m"):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad)
    with pytest.raises(ConfigError, match="budget"):
        from_dict({"budget": "soon"})


def test_auto_choices_need_a_budget_and_round_trip_through_the_config():
    raw = {"budget": "5m", "model": {"input_size": "auto", "input_sizes": [96, 128], "head": "pool"},
           "phases": [{"train": "auto", "train_choices": ["from:blocks.5", "from:blocks.4"]}]}
    cfg = from_dict(raw)
    assert cfg.model.input_size == 0 and cfg.model.input_sizes == (96, 128)
    assert from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="input_size: auto needs a budget"):
        from_dict({**raw, "budget": "", "phases": [{}]})
    with pytest.raises(ConfigError, match="train: auto needs"):
        from_dict({"budget": "5m", "phases": [{"train": "auto"}]})
    planned = dataclasses.replace(cfg, plan=PlanConfig(budget_s=300, replans=("a",), step_s=(0.5,), steps=(9,)),
                                  max_steps_per_epoch=7)  # what a budget writes: the plan, a cap on the steps
    assert unplanned(to_dict(planned)) == unplanned(to_dict(cfg))
    assert from_dict(to_dict(planned)) == planned
    with pytest.raises(ConfigError, match="only with head: pool"):
        from_dict({**raw, "model": {"input_size": "auto", "input_sizes": [96, 128]}})
    with pytest.raises(ConfigError, match="input_sizes: each side must be >= 8"):
        from_dict({**raw, "model": {"input_size": 64, "input_sizes": [4, 64], "head": "pool"}})


def test_candidates_beside_a_fixed_value_are_the_budgets_to_pick_from():
    """A recipe may keep its own side and trainable part and still list candidates: without a budget they are
    ignored (the shipped demo recipe runs at 160 px), with one the planner picks among them."""
    raw = {"model": {"input_size": 160, "input_sizes": [64, 160], "head": "pool"},
           "phases": [{"train": "from:blocks.4", "train_choices": ["from:blocks.5", "all"]}]}
    cfg = from_dict(raw)
    assert cfg.model.input_size == 160 and cfg.phases[0].train == "from:blocks.4"
    assert from_dict({**raw, "budget": "5m"}).model.input_sizes == (64, 160)
    demo = from_dict(yaml.safe_load(open(os.path.join(os.path.dirname(budgetrun.__file__), "..", "recipes",
                                                      "demo.yaml"))))
    assert demo.model.input_size == 160 and max(demo.model.input_sizes) == 160


class _FakeProbe:
    """Epoch costs of a side, affine in its pixel count, a validation image's seconds, and which sides were measured."""

    def __init__(self, fixed: float, per_pixel: float, extra: dict | None = None, trim: int = 10) -> None:
        self.fixed, self.per_pixel, self.measured, self.extra, self.trim = fixed, per_pixel, [], extra or {}, trim

    def trim_cap(self) -> int:  # 10 steps an epoch; the fewest a side may keep (10: none left out)
        return self.trim

    def epoch_s(self, size: int, trains, cap: int = 0) -> list[float]:
        self.measured.append(size)
        steps = min(10, cap or 10)  # the pixel part is the steps' (10 an epoch), the fixed part validation's
        c = self.fixed + self.per_pixel * size * size * steps / 10 + self.extra.get(size, 0.0)  # extra: off the line
        return [c, 2 * c]

    def eval_s(self, size: int) -> float:
        return 1e-6 * size * size  # 1 us a pixel of a validation image


def test_size_choice_measures_the_largest_first_and_costs_the_rest_on_the_pixel_line():
    sizes, recipe = [64, 96, 128, 160], [2, 3]
    probe = _FakeProbe(fixed=2.0, per_pixel=1e-3)  # an epoch: 2 s + 1 ms a pixel (phase 2 twice that)
    cost = lambda s: 8 * (2.0 + 1e-3 * s * s)  # noqa: E731  the recipe's 2 + 3 epochs, phase 2 at twice the cost
    left = lambda total: lambda eval_s: total  # noqa: E731  a finish that costs nothing
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe, left(cost(160) + 1)) == 160
    assert probe.measured == [160]  # it fits: nothing else measured
    probe.measured.clear()
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe, left(cost(128) + 1)) == 128
    assert probe.measured == [160, 64, 128]  # 96 and 128 costed on the line through the two, 128 then measured
    probe.measured.clear()
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe, left(1.0)) == 64  # none fits: smallest


def test_a_side_costed_on_the_line_that_does_not_fit_when_measured_gives_way_to_the_next_smaller():
    """The line through the smallest and the largest side can be optimistic between them (a 30-class run took
    128 px on it and then planned 2 + 2 of the recipe's 2 + 3 epochs): the side taken is measured, and where it
    does not keep the recipe's epochs the next smaller side is taken."""
    sizes, recipe = [64, 96, 128, 160], [2, 3]
    cost = lambda s: 8 * (2.0 + 1e-3 * s * s)  # noqa: E731
    probe = _FakeProbe(fixed=2.0, per_pixel=1e-3, extra={128: 1.0})  # 128 px: 1 s an epoch above the line
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe, lambda eval_s: cost(128) + 1) == 96
    assert probe.measured == [160, 64, 128, 96]


def test_size_choice_pays_the_finish_at_each_side():
    """The finish predicts val and test at the side chosen: a side whose epochs fit but whose finish then does not
    is not taken (a digits run once took 160 px this way, planned fewer epochs than the recipe's and overran)."""
    sizes, recipe = [64, 96, 128, 160], [2, 3]
    probe = _FakeProbe(fixed=2.0, per_pixel=1e-3)
    cost = lambda s: 8 * (2.0 + 1e-3 * s * s)  # noqa: E731
    images = 1_000  # val + test images the finish predicts: 25.6 s at 160 px, 16.4 s at 128
    total = cost(160) + 1  # the epochs at 160 fit with 1 s to spare, not with 160's finish; 128's fit with its own
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe,
                                  lambda eval_s: total - eval_s * images) == 128
    assert budgetrun._choose_size(probe, sizes, ["head", "head"], recipe, lambda eval_s: total) == 160


def test_a_side_may_keep_the_recipes_epochs_with_a_few_steps_left_out():
    """The demo's 160 px at its own time as the budget: the budget's measurement leaves it a few seconds short of
    the recipe's epochs. With at most TRIM of each epoch's steps left out it still fits, and is taken over a smaller
    side (on a 30-class set 128 px with more epochs was 1.3 points behind the demo at its own time)."""
    sizes, recipe = [64, 96, 128, 160], [2, 3]
    cost = lambda s, steps=10: 8 * (2.0 + 1e-3 * s * s * steps / 10)  # noqa: E731
    total = cost(160) - 5  # 5 s short of the recipe's epochs at 160 px; 9 of 10 steps an epoch would fit
    assert cost(160, 9) <= total
    assert budgetrun._choose_size(_FakeProbe(2.0, 1e-3, trim=9), sizes, ["head", "head"], recipe,
                                  lambda eval_s: total) == 160
    assert budgetrun._choose_size(_FakeProbe(2.0, 1e-3), sizes, ["head", "head"], recipe,
                                  lambda eval_s: total) == 128  # no step may be left out: the next side


def test_trainable_part_is_the_largest_that_fits_measured_from_the_smallest_up():
    """Candidates are measured smallest first and the search stops at the first that does not keep the recipe's
    epochs: a tight budget pays for one measurement more, never for the largest part's; the time left is asked
    again after every measurement (measuring spends the budget)."""
    cost = {"from:blocks.4": 10.0, "from:blocks.2": 14.0, "all": 21.0}  # seconds a fine-tune epoch
    measured, asked = [], []

    class Probe:
        def epoch_s(self, size, trains):
            measured.append(trains[1])
            return [5.0, cost[trains[1]]]

    cands, recipe = list(cost), [2, 3]
    choose = lambda total: budgetrun._choose_train(  # noqa: E731
        Probe(), 160, ["head", cands[0]], 1, cands, recipe, lambda: asked.append(1) or total)
    assert choose(10 + 3 * 21) == "all" and measured == ["from:blocks.2", "all"] and len(asked) == 2
    measured.clear()
    assert choose(10 + 3 * 14) == "from:blocks.2" and measured == ["from:blocks.2", "all"]
    measured.clear()
    assert choose(10 + 3 * 10) == "from:blocks.4" and measured == ["from:blocks.2"]  # stops at the first misfit
    assert budgetrun._choose_train(Probe(), 160, ["head", "all"], 1, ["all"], recipe, lambda: 0.0) == "all"


@pytest.mark.parametrize("late, dropped", [(0.02, False), (0.06, True)])
def test_a_plan_a_little_late_keeps_its_epochs(monkeypatch, tmp_path, late, dropped):
    """A plan that ends up to OVER past the budget keeps its epochs (an epoch dropped would leave a fifth of the
    budget unused: a 30-class run ended at 0.80 so); one later than that is shortened."""
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(2, 3), budget="100s"), [2, 3])  # 10 s epochs, 5 s finish: 55 s + 45 s start
    clock = budgetrun.BudgetClock(started=-45.0 - 100 * late)  # the start took a share of the budget more
    for phase, phase_epoch, epoch in ((0, 1, 1), (0, 2, 2), (1, 1, 3)):  # every epoch on time
        now[0] += 10.0
        cfg = clock.replan(cfg, budgetrun.TrainState(phase=phase, phase_epoch=phase_epoch, epoch=epoch), tmp_path)
    assert ([p.epochs for p in cfg.phases] == [2, 3]) is not dropped


def test_a_slow_machine_makes_the_finish_slower_too(monkeypatch, tmp_path):
    """Epochs at twice their measured time: the re-plan counts the finish (predictions, report) at twice its
    estimate too, so the epochs it keeps leave room for it (a digits run once overran on a slow finish)."""
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(2, 3), budget="100s"), [2, 3])  # 5 x 10 s epochs + 5 s finish
    cfg = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, finish_s=20.0))
    clock = budgetrun.BudgetClock(started=0.0)
    now[0] = 20.0  # the first epoch took 20 s, twice the measured 10
    cfg = clock.replan(cfg, budgetrun.TrainState(phase_epoch=1, epoch=1), tmp_path)
    rest = planned_seconds([p.epochs for p in cfg.phases], [20.0, 20.0], done=[1, 0])
    assert cfg.plan.planned_s == pytest.approx(20.0 + rest + 40.0, abs=0.1)  # the finish at 2 x 20 s
    assert cfg.plan.planned_s <= 100 and [p.epochs for p in cfg.phases] == [2, 1]


def test_largest_cap_fits_the_epochs_still_to_run():
    epoch_s, step_s, steps = [12.0, 22.0], [1.0, 2.0], [10, 10]  # 2 s (phase 1) and 2 s (phase 2) besides the steps
    assert capped_epoch_s(epoch_s, step_s, steps, 4) == [6.0, 10.0]
    # phase 1 is over (2 of 2 run); phase 2's one epoch: 2 + 2 x cap s
    assert largest_cap([2, 1], epoch_s, step_s, steps, 12.0, done=[2, 0]) == 5
    assert largest_cap([2, 1], epoch_s, step_s, steps, 100.0, done=[2, 0]) == 10  # everything fits: all steps
    assert largest_cap([2, 1], epoch_s, step_s, steps, 0.0, done=[2, 0]) == 1  # nothing fits: one step


def _late_at_a_phase_end(monkeypatch, tmp_path, head_epoch_s: float, *, phase_epoch: int = 2):
    """A 2 + 1 plan (10 s epochs of 10 one-second steps and nothing else, 5 s finish, a 60 s budget) whose head
    epochs took ``head_epoch_s`` each; re-planned after epoch ``phase_epoch`` of the head."""
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(2, 1), budget="60s"), [2, 1])
    cfg = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, step_s=(1.0, 1.0), steps=(10, 10)))
    clock = budgetrun.BudgetClock(started=-25.0)  # 25 s of start
    state = budgetrun.TrainState()
    for _ in range(phase_epoch):
        now[0] += head_epoch_s
        state.phase_epoch += 1
        state.epoch += 1
        cfg = clock.replan(cfg, state, tmp_path)
    return cfg


def test_a_run_late_at_a_phase_end_cuts_the_later_epochs_steps(monkeypatch, tmp_path):
    """At its floor (one epoch of the last phase) and late at the end of the head phase, the plan cannot drop an
    epoch: the later epochs take fewer steps (max_steps_per_epoch) so the command still ends within its budget."""
    cfg = _late_at_a_phase_end(monkeypatch, tmp_path, 15.0)  # 25 + 2 x 15 = 55 s in: 5 s left before the finish
    assert [p.epochs for p in cfg.phases] == [2, 1]
    # the fine-tune's epoch at 1.5x: 15 s, of which 1.5 s a step; finish 5 x 1.5 = 7.5 s; 60 - 55 - 7.5 < 0
    assert cfg.max_steps_per_epoch == 1 and "later epochs at most 1 steps" in cfg.plan.replans[-1]
    cfg = _late_at_a_phase_end(monkeypatch, tmp_path, 10.5)  # a little late: 46 s in, 60 - 46 - 5.25 = 8.75 s left
    assert cfg.max_steps_per_epoch == 8 and cfg.plan.planned_s <= 60  # 8 steps of 1.05 s
    cfg = _late_at_a_phase_end(monkeypatch, tmp_path, 8.0)  # on time: nothing cut
    assert cfg.max_steps_per_epoch == 0


def test_a_few_steps_late_at_a_phase_end_cuts_steps_not_an_epoch(monkeypatch, tmp_path):
    """Late by less than TRIM of the later phases' steps: the plan keeps its epochs, and at the running phase's end
    cuts the later epochs' steps (a Fashion-MNIST run dropped a fine-tune epoch of three for 5 % and ended at 0.81
    of the budget)."""
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(2, 3), budget="200s"), [2, 3])
    plan = dataclasses.replace(cfg.plan, epoch_s=(10.0, 40.0), step_s=(0.1, 0.4), steps=(100, 100))
    cfg = dataclasses.replace(cfg, plan=plan)  # 55 s start + 20 + 120 + 5 s finish = 200 s
    clock = budgetrun.BudgetClock(started=-63.0)  # the start took 8 s more
    for phase_epoch in (1, 2):  # the head's epochs on time
        now[0] += 10.0
        cfg = clock.replan(cfg, budgetrun.TrainState(phase_epoch=phase_epoch, epoch=phase_epoch), tmp_path)
    # 83 s in: 3 fine-tune epochs of 0.4 s steps in 200 - 83 - 5 = 112 s: 93 steps each, not 100
    assert [p.epochs for p in cfg.phases] == [2, 3] and cfg.max_steps_per_epoch == 93
    assert cfg.plan.planned_s <= 200


def test_a_running_phase_never_gets_its_steps_cut(monkeypatch, tmp_path):
    """Mid-phase its LR schedule is laid out on its steps an epoch: a late run keeps them there. At the last
    phase's end nothing is left to cut."""
    cfg = _late_at_a_phase_end(monkeypatch, tmp_path, 30.0, phase_epoch=1)  # far behind after the head's 1st epoch
    assert cfg.max_steps_per_epoch == 0
    now = [0.0]
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: now[0])
    cfg = with_epochs(_cfg(epochs=(1, 1), budget="60s"), [1, 1])
    cfg = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, step_s=(1.0, 1.0), steps=(10, 10)))
    clock = budgetrun.BudgetClock(started=0.0)
    now[0] = 70.0  # the last phase's one epoch ends past the budget
    cfg = clock.replan(cfg, budgetrun.TrainState(phase=1, phase_epoch=1, epoch=2), tmp_path)
    assert cfg.max_steps_per_epoch == 0 and not any("steps" in r for r in cfg.plan.replans)


def test_eval_measurement_warms_up_at_the_batchs_own_shape():
    """A first pass at a new shape costs several times a later one (measured 4x at 160 px on a CPU): the warm-up
    pass has the timed batch's shape, so the finish and validation are not overestimated."""
    from tinytransfer.config import RunConfig as _RC

    shapes = []

    class Net(torch.nn.Module):
        def forward(self, x):
            shapes.append(tuple(x.shape))
            return x.mean((2, 3))

    loader = [(torch.zeros(24, 3, 8, 8), torch.zeros(24, dtype=torch.long))]
    seconds = budgetrun._measure_eval(Net(), loader, _RC(amp="off"), torch.device("cpu"))
    assert seconds > 0 and shapes and all(s == (24, 3, 8, 8) for s in shapes) and len(shapes) >= 2


def test_cli_and_api_pass_the_budget(monkeypatch, tmp_path):
    import types

    import tinytransfer.api as api
    from tinytransfer.cli import main

    seen = {}
    monkeypatch.setattr(api, "_train", lambda cfg, run_dir, ckpt, **k: seen.setdefault("cfg", cfg))
    api.train("demo", tmp_path, out=tmp_path / "r", budget="3m", finish=False, verbose=False)
    assert seen["cfg"].budget == "3m" and seen["cfg"].plan == PlanConfig()
    stub = types.SimpleNamespace(metrics=[], dir=tmp_path / "r2")
    monkeypatch.setattr(api, "train", lambda *a, **k: seen.update(k) or stub)
    assert main(["train", "--recipe", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "r2"),
                 "--budget", "90s", "--no-finish"]) == 0
    assert seen["budget"] == "90s"
    # the command line's budget counts from the process's start: before this call, by the process's age
    assert seen["started"] <= budgetrun.time.perf_counter() - budgetrun.process_age_s() + 1.0
    assert budgetrun.process_age_s() > 0 or not os.path.exists("/proc/self/stat")
    with pytest.raises(api.UserError, match="data-parallel"):
        api._check_procs(from_dict({"budget": "1m", "phases": [{"batch_size": 64}]}), 2)


def test_report_shows_the_plan_and_its_replans(tmp_path):
    from tinytransfer.outputs.report import write_report
    from tinytransfer.runs.runfolder import write_config

    cfg = dataclasses.replace(_cfg(epochs=(2, 3)), plan=PlanConfig(
        budget_s=300, recipe_epochs=(2, 3), epoch_s=(12.5, 30.0), start_s=20, finish_s=15, planned_s=290,
        elapsed_s=120, choices=("model.input_size: 128 of [96, 128, 160]",),
        replans=("after epoch 3 (120 s, epochs 1.40x the measured time): [3, 5] -> [3, 4]",)))
    write_config(tmp_path, cfg)
    page = (tmp_path / write_report(tmp_path)).read_text()
    assert "Time budget" in page and "[3, 5] -&gt; [3, 4]" in page and "128 of [96, 128, 160]" in page
    assert "<td class=\"num\">12.5</td>" in page  # the measured seconds an epoch of phase 1
    write_config(tmp_path, RunConfig())
    assert "Time budget" not in (tmp_path / write_report(tmp_path)).read_text()  # no budget, no part


# ---- a tiny real run ------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(make_tiny_tree):
    return make_tiny_tree(n_classes=3, train_per_class=16, n_val=9, size=32, n_odd_size=0)


@pytest.mark.parametrize("train", ["auto", "from:layer4"])
def test_measuring_puts_back_weights_batchnorm_statistics_and_every_generator(tree, tmp_path, train):
    from tinytransfer.data.augment import make_transform
    from tinytransfer.data.dataset import load_dataset
    from tinytransfer.data.loader import DeviceLoader
    from tinytransfer.models.backbones import create_model
    from tinytransfer.training.snapshot import rng_state

    raw = tiny_config(tree, budget="1h")
    raw["phases"][1]["train"] = train  # auto, or its own part with candidates beside it: a budget picks either way
    raw["phases"][1]["train_choices"] = ["from:layer4", "all"]
    cfg = from_dict(raw)
    data = load_dataset(tree, workers=1)
    torch.manual_seed(0)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    gens = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    tf = make_transform("keras", (0.5,) * 3, (0.5,) * 3, input_size=32)
    loader = DeviceLoader(data.train, 16, device="cpu", shuffle=True, generator=gens[0], transform=tf,
                          aug_generator=gens[1])
    val = DeviceLoader(data.val, 32, device="cpu", transform=tf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = rng_state(*gens)
    planned, _ = budgetrun.start_budget(model, loader, val, cfg, budgetrun.TrainState(), tmp_path,
                                        norm=((0.5,) * 3, (0.5,) * 3), device=torch.device("cpu"), generators=gens,
                                        started=budgetrun.time.perf_counter(), test_images=4)
    after = model.state_dict()
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are among what is compared
    assert all(torch.equal(before[k], after[k]) for k in before)
    now = rng_state(*gens)
    assert all(torch.equal(rng[k], now[k]) for k in rng)
    assert loader.batch_size == 16 and loader.transform is tf and val.transform is tf
    assert planned.phases[1].train in ("from:layer4", "all") and planned.plan.budget_s == 3600
    assert planned.plan.choices == ("phases.1.train: " + planned.phases[1].train + " of ['from:layer4', 'all']",)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["plan"]["epoch_s"] == list(planned.plan.epoch_s)


def _plan_tiny(tree, tmp_path, cfg: RunConfig, batch_size: int, started: float | None = None) -> RunConfig:
    """``start_budget`` on the tiny tree (measure_phase mocked by the caller); the planned config. ``started``:
    the command's start on ``time.perf_counter``'s clock (default: now, once the data and model are loaded)."""
    from tinytransfer.data.augment import make_transform
    from tinytransfer.data.dataset import load_dataset
    from tinytransfer.data.loader import DeviceLoader
    from tinytransfer.models.backbones import create_model

    data = load_dataset(tree, workers=1)
    model = create_model(TINY, len(data.classes), pretrained=False, head="pool", input_size=32)
    gens = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    tf = make_transform("keras", (0.5,) * 3, (0.5,) * 3, input_size=32)
    loader = DeviceLoader(data.train, batch_size, device="cpu", shuffle=True, generator=gens[0], transform=tf,
                          aug_generator=gens[1])
    planned, _ = budgetrun.start_budget(model, loader, DeviceLoader(data.val, 32, device="cpu", transform=tf), cfg,
                                        budgetrun.TrainState(), tmp_path, norm=((0.5,) * 3, (0.5,) * 3),
                                        device=torch.device("cpu"), generators=gens,
                                        started=budgetrun.time.perf_counter() if started is None else started,
                                        test_images=4)
    return planned


def test_a_budget_too_short_for_one_full_epoch_a_phase_caps_the_steps_an_epoch(tree, tmp_path, monkeypatch):
    """A large dataset and a short budget: one full epoch of each phase would overrun, so every epoch trains on a
    random part of the split (max_steps_per_epoch), the largest that fits, recorded as a choice."""
    cfg = from_dict(tiny_config(tree, budget="1m"))  # 48 train images, batch 16: 3 steps an epoch, 2 + 2 epochs
    monkeypatch.setattr(budgetrun, "measure_phase", lambda *a, **k: 8.0)  # 8 s a step: 24 s a full epoch
    planned = _plan_tiny(tree, tmp_path, cfg, 16)
    # 60 s less the start and the finish (12 s and change) leave under 48 s: two steps an epoch, one epoch a phase
    assert planned.max_steps_per_epoch == 2 and [p.epochs for p in planned.phases] == [1, 1]
    assert "max_steps_per_epoch: 2 of 3 (one full epoch a phase does not fit)" in planned.plan.choices
    assert planned.plan.planned_s <= 60 and planned.plan.epoch_s[0] < 24


def test_the_recipes_epochs_a_few_steps_short_are_kept_with_fewer_steps(tree, tmp_path, monkeypatch):
    """Where the recipe's epochs miss the budget by a little, the plan keeps them and leaves out a few steps an
    epoch (at most TRIM of them), recorded as a choice, rather than dropping an epoch."""
    raw = tiny_config(tree, budget="60s")  # 48 train images
    for p in raw["phases"]:
        p["batch_size"] = 4  # 12 steps an epoch, 2 + 2 epochs
    monkeypatch.setattr(budgetrun, "measure_phase", lambda *a, **k: 1.0)  # 1 s a step: 12 s a full epoch
    monkeypatch.setattr(budgetrun.time, "perf_counter", lambda: 2.0)  # 2 s in; validation and checkpoints free
    planned = _plan_tiny(tree, tmp_path, from_dict(raw), 4, started=0.0)
    # 60 - 2 (start) - 12 (finish) = 46 s: 4 full epochs take 48, of 11 steps 44
    assert [p.epochs for p in planned.phases] == [2, 2] and planned.max_steps_per_epoch == 11
    assert "max_steps_per_epoch: 11 of 12 (the recipe's epochs at this side)" in planned.plan.choices
    assert planned.plan.steps == (11, 11) and planned.plan.planned_s <= 60


def test_cap_is_the_largest_that_fits():
    epoch_s, step_s, steps = [12.0, 12.0], [1.0, 0.5], [10, 20]  # 2 s an epoch besides its steps
    # one epoch each: cap 10 -> 12 + 7 = 19 s; cap 12 -> 12 + 8 = 20; cap 20 -> 12 + 12 = 24
    assert largest_cap([1, 1], epoch_s, step_s, steps, 20.0) == 12
    assert largest_cap([1, 1], epoch_s, step_s, steps, 1.0) == 1  # nothing fits: one step
    assert largest_cap([1, 0], epoch_s, step_s, steps, 14.0) == 20  # a phase of 0 epochs costs nothing
    # the recipe's 2 + 3 epochs: cap 12 -> 2 x 12 + 3 x 8 = 48 s; cap 13 -> 2 x 12 + 3 x 8.5 = 49.5
    assert largest_cap([2, 3], epoch_s, step_s, steps, 49.0) == 12


def test_tiny_budgeted_run_records_its_plan_and_resume_continues_it(tree, tmp_path, monkeypatch):
    """A real run with a budget, killed in its third epoch and resumed: the plan is measured once and written to
    config.yaml and the checkpoints; the resumed run continues it (nothing measured again) and runs the planned
    epochs."""
    raw = tiny_config(tree, budget="1h")
    raw["phases"][1]["train"] = "auto"
    raw["phases"][1]["train_choices"] = ["from:layer4", "all"]
    calls = []
    real = budgetrun.measure_phase
    monkeypatch.setattr(budgetrun, "measure_phase", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    monkeypatch.setattr(budgetrun, "plan_epochs", lambda recipe, *a, **k: list(recipe))  # keep the test short:
    monkeypatch.setattr(budgetrun, "replan", lambda cfg, *a: [p.epochs for p in cfg.phases])  # the recipe's epochs
    run_killed_at_epoch(tree, tmp_path / "k", raw, 3, monkeypatch)
    cfg = read_config(tmp_path / "k")  # config.yaml without the run's id
    plan = cfg["plan"]
    assert plan["budget_s"] == 3600 and plan["recipe_epochs"] == [2, 2] and len(plan["epoch_s"]) == 2
    assert all(s > 0 for s in plan["epoch_s"]) and plan["start_s"] > 0 and plan["finish_s"] > 0
    assert cfg["phases"][1]["train"] == "all"  # an hour keeps the recipe's epochs with the largest part trained
    assert plan["choices"] == ["phases.1.train: all of ['from:layer4', 'all']"]
    assert "all" in calls and plan["elapsed_s"] >= plan["start_s"]
    assert load_checkpoint(tmp_path / "k" / "last.pt")["config"]["plan"]["epoch_s"] == plan["epoch_s"]

    calls.clear()
    run(tree, tmp_path / "k", cfg, resume=load_checkpoint(tmp_path / "k" / "last.pt"))
    assert calls == []  # nothing measured again
    resumed = yaml.safe_load((tmp_path / "k" / "config.yaml").read_text())
    assert resumed["plan"]["epoch_s"] == plan["epoch_s"] and resumed["plan"]["elapsed_s"] >= plan["elapsed_s"]
    rows = read_rows(tmp_path / "k" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert len(rows) == sum(p["epochs"] for p in resumed["phases"])
    assert all(float(r["seconds"]) > 0 for r in rows)  # the recorded times the re-plans use
