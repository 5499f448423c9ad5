"""The planner of the driver: base runs, grid extension at either edge, extra seeds, context."""

from __future__ import annotations

import dataclasses
import math

import pytest

from alsals_bench import driver, runner
from alsals_bench.optimizers import grid_name

from ._records import grid, record
from ._synthetic import TASK

T = TASK.name
SUITE = driver.Suite(
    "t", "test suite", tasks=(T,), seeds=(0, 1, 2), steps_key="quick", optimizers=("alsals",),
    grids={"adamw": (-8, -7, -6)}, max_extension=2, extra_seeds=(3, 4),
    extra_seed_optimizers=("alsals",), extra_seed_grids=("adamw",),
)


@pytest.fixture(autouse=True)
def _task():
    runner.register_task(TASK)
    yield


def _plan(runs, suite=SUITE, **kw):
    notes = []
    todo = driver.plan(suite, runs, [T], notes=notes, **kw)
    return todo, [n.what for n in notes]


def _alsals(ratios=(1.0, 1.0, 1.0), base=0.1, test=0.9):
    return [record(T, "alsals", s, base * r, test=test) for s, r in enumerate(ratios)]


def test_empty_plan_is_every_base_run():
    todo, _ = _plan([])
    names = {(o, s) for _, o, s in todo}
    assert names == {(o, s) for o in ("alsals", "adamw-lr1e-4", "adamw-lr3e-4", "adamw-lr1e-3") for s in (0, 1, 2)}


def test_missing_base_runs_come_first_and_nothing_else():
    runs = grid(T, "adamw", {-8: 0.3, -7: 0.2, -6: 0.1})  # best at the high edge, but alsals missing
    todo, _ = _plan(runs)
    assert {o for _, o, _ in todo} == {"alsals"}


def test_best_at_the_high_edge_extends_the_grid_upwards_on_every_seed():
    runs = _alsals() + grid(T, "adamw", {-8: 0.3, -7: 0.2, -6: (0.1, 0.9)})
    todo, notes = _plan(runs)
    assert sorted(todo) == [(T, "adamw-lr3e-3", s) for s in (0, 1, 2)]
    assert any("high edge" in n for n in notes)


def test_best_at_the_low_edge_extends_downwards():
    runs = _alsals() + grid(T, "adamw", {-8: (0.1, 0.95), -7: (0.2, 0.9), -6: (0.3, 0.8)})
    todo, _ = _plan(runs)
    assert sorted(todo) == [(T, "adamw-lr3e-5", s) for s in (0, 1, 2)]


def test_each_selection_is_extended_at_its_own_edge():
    # best train loss at the largest lr, best validation accuracy at the smallest
    runs = _alsals() + grid(T, "adamw", {-8: (0.3, 0.95), -7: (0.2, 0.9), -6: (0.1, 0.8)})
    todo, _ = _plan(runs)
    assert {o for _, o, _ in todo} == {"adamw-lr3e-5", "adamw-lr3e-3"}


def test_interior_best_needs_nothing():
    runs = _alsals() + grid(T, "adamw", {-8: 0.3, -7: (0.1, 0.95), -6: 0.2})
    assert _plan(runs)[0] == []


def test_a_diverged_point_beyond_the_edge_stops_the_extension():
    runs = _alsals() + grid(T, "adamw", {-8: 0.3, -7: 0.2, -6: (0.1, 0.95)})
    runs += grid(T, "adamw", {-5: (math.inf, 0.1)}, status="diverged")
    assert _plan(runs)[0] == []


def test_the_extension_cap_is_respected_and_noted():
    losses = {k: (1.0 - 0.1 * i, 0.9 if k == -7 else 0.5) for i, k in enumerate(range(-8, -3))}
    runs = _alsals() + grid(T, "adamw", losses)
    todo, notes = _plan(runs)  # base -8..-6, cap 2: -4 is the last allowed point
    assert todo == []
    assert any("cap reached" in n for n in notes)


def test_extension_waits_for_every_seed_of_a_point():
    runs = _alsals() + grid(T, "adamw", {-8: 0.3, -7: 0.2, -6: 0.1}) + grid(T, "adamw", {-5: 0.05}, seeds=(0,))
    todo, _ = _plan(runs)
    assert sorted(todo) == [(T, "adamw-lr3e-3", 1), (T, "adamw-lr3e-3", 2)]


def _settled(ratios):
    adam = grid(T, "adamw", {-8: 0.3, -7: (0.1, 0.9), -6: 0.2})
    return _alsals(ratios) + adam


def test_seeds_that_agree_get_no_extra_seeds():
    assert _plan(_settled((0.5, 0.6, 0.55)))[0] == []


def test_seeds_that_disagree_by_more_than_the_effect_get_the_extra_seeds():
    todo, notes = _plan(_settled((0.7, 1.4, 1.0)))
    expected = {("alsals", s) for s in (3, 4)} | {(grid_name("adamw", k), s) for k in (-8, -7, -6) for s in (3, 4)}
    assert {(o, s) for _, o, s in todo} == expected
    assert any("seeds disagree" in n for n in notes)


def test_generalisation_disagreement_also_adds_seeds():
    runs = _settled((0.5, 0.5, 0.5))
    for r, acc in zip(runs[:3], (0.95, 0.85, 0.9)):  # alsals' test accuracy around AdamW's 0.9
        r["test"]["accuracy"] = acc
    todo, _ = _plan(runs)
    assert {s for _, _, s in todo} == {3, 4}


def test_once_extra_seeds_started_they_are_completed_and_the_grid_extended_on_them():
    runs = _settled((0.7, 1.4, 1.0)) + [record(T, "alsals", 3, 0.1)]
    # the extra seeds moved the best point to the edge: the extension runs first, on all five seeds
    runs += grid(T, "adamw", {-8: 0.3, -7: (0.2, 0.9), -6: 0.01}, seeds=(3, 4))
    todo, _ = _plan(runs)
    assert sorted(todo) == [(T, "adamw-lr3e-3", s) for s in range(5)]
    runs += grid(T, "adamw", {-5: 0.5}, seeds=range(5))
    todo, _ = _plan(runs)  # settled again: the extra seed left is run
    assert todo == [(T, "alsals", 4)]


def test_a_suite_without_extra_seeds_stops_after_the_grids():
    suite = dataclasses.replace(SUITE, extra_seeds=())
    assert _plan(_settled((0.7, 1.4, 1.0)), suite=suite)[0] == []


def test_context_records_of_the_rerun_optimizers_are_ignored():
    old = _settled((0.5, 0.6, 0.55))
    context = driver.context_records(old, ["alsals"], {})
    assert {r["optimizer"] for r in context} == {"adamw-lr1e-4", "adamw-lr3e-4", "adamw-lr1e-3"}
    todo, _ = _plan(context, optimizers=["alsals"], grids={})
    assert sorted(todo) == [(T, "alsals", s) for s in (0, 1, 2)]


def test_rivals_run_on_the_rival_split_only():
    from ._synthetic import DEV_TASK

    runner.register_task(DEV_TASK)
    suite = dataclasses.replace(SUITE, optimizers=("alsals", "prodigy"), grids={"adamw": (-8,), "sfadamw": (-7,)},
                                core_optimizers=("alsals",), core_grids=("adamw",), rival_splits=("test",))
    todo = driver.plan(suite, [], [T, DEV_TASK.name])
    dev = {o for t, o, _ in todo if t == DEV_TASK.name}
    test = {o for t, o, _ in todo if t == T}
    assert dev == {"alsals", "adamw-lr1e-4"}
    assert test == {"alsals", "prodigy", "adamw-lr1e-4", "sfadamw-lr3e-4"}
    assert suite.runs_on("prodigy", "test") and not suite.runs_on("prodigy", "dev")
    assert SUITE.runs_on("prodigy", "dev")  # no rival split: everything everywhere


def test_the_documented_suites_are_well_formed():
    full = driver.SUITES["full"]
    assert full.seeds == (0, 1, 2) and full.extra_seeds == (3, 4)
    assert set(full.grids) == {"adamw", "sfadamw"}
    assert "alsals" in full.optimizers and "alsals-anytime" in full.optimizers
    for name in ("salsa-ref", "salsa-ref-default", "salsa-ref-anneal", "sls-anneal", "salsa-anneal"):
        assert name in full.optimizers
    assert driver.SUITES["quick"].smoke and not full.smoke
    assert full.rival_splits == ("test", "holdout") and full.core_optimizers == ("alsals", "alsals-anytime")
    assert not full.runs_on("sfadamw", "dev", grid=True) and full.runs_on("adamw", "dev", grid=True)
    assert full.runs_on("prodigy", "holdout") and full.runs_on("sfadamw", "holdout", grid=True)


def test_in_suite_keeps_the_suites_own_records_only():
    full = driver.SUITES["full"]
    assert driver.in_suite(full, record("x", "alsals", 4, 0.1, split="dev"))
    assert driver.in_suite(full, record("x", "adamw-lr1e-5", 0, 0.1, split="dev"))
    assert not driver.in_suite(full, record("x", "sfadamw-lr1e-3", 0, 0.1, split="dev"))
    assert driver.in_suite(full, record("x", "sfadamw-lr1e-3", 0, 0.1, split="test"))
    assert not driver.in_suite(full, record("x", "prodigy", 0, 0.1, split="dev"))
    assert not driver.in_suite(full, record("x", "alsals-paper", 0, 0.1, split="test"))
    assert not driver.in_suite(full, record("x", "alsals", 7, 0.1, split="test"))
