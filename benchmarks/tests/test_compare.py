"""The two comparisons: each against its own selection of the AdamW grid, per seed, with spreads."""

from __future__ import annotations

import math

import pytest

from alsals_bench import compare

from ._records import grid, record

T = "t1"


def _adam(task=T, split="test", **kw):
    # lr 1e-4: lowest train loss (memorises); lr 3e-4: best validation accuracy
    return grid(task, "adamw", {-8: (0.01, 0.80), -7: (0.05, 0.95), -6: (0.2, 0.90)}, split=split, **kw)


def _alsals(losses, tests, task=T, split="test", name="alsals"):
    return [record(task, name, s, loss, test=acc, split=split) for s, (loss, acc) in enumerate(zip(losses, tests))]


def test_the_two_selections_pick_different_points():
    runs = _adam()
    points = compare.grid_points(runs, "adamw", "accuracy", True)
    assert [p.lr for p in points] == [1e-4, 3e-4, 1e-3]
    assert compare.select(points, "train", True).lr == 1e-4
    assert compare.select(points, "val", True).lr == 3e-4
    assert compare.edge_of(points, compare.select(points, "train", True)) == "low"
    assert compare.edge_of(points, compare.select(points, "val", True)) is None


def test_validation_ties_are_broken_by_validation_loss_and_failures_rank_last():
    runs = grid(T, "adamw", {-8: (0.3, 0.9), -7: (0.2, 0.9)}, val_loss=0.5)
    for r in runs:
        if r["optimizer"] == "adamw-lr3e-4":
            r["val"]["loss"] = 0.4
    runs += grid(T, "adamw", {-6: (math.inf, math.nan)}, status="diverged")
    points = compare.grid_points(runs, "adamw", "accuracy", True)
    assert compare.select(points, "val", True).lr == 3e-4
    assert compare.select(points, "train", True).lr == 3e-4  # the diverged 1e-3 ranks last
    assert points[-1].diverged == 3 and points[-1].train == math.inf


def test_lower_is_better_metrics_select_the_minimum():
    runs = grid(T, "adamw", {-8: (0.3, 0.7), -7: (0.2, 0.5), -6: (0.1, 0.6)}, metric="mse", higher=False)
    points = compare.grid_points(runs, "adamw", "mse", False)
    assert compare.select(points, "val", False).lr == 3e-4


def test_optimisation_is_against_the_train_selection_seed_by_seed():
    runs = _adam() + _alsals([0.005, 0.01, 0.02], [0.9, 0.9, 0.9])
    summary = compare.summarize_task(runs)
    o = summary["entries"]["alsals"]["optimisation"]
    assert o["ratios"] == pytest.approx([0.5, 1.0, 2.0])  # ÷ 0.01, the lr-1e-4 point, not the val pick
    assert o["geomean"] == pytest.approx(1.0)
    assert (o["min"], o["max"]) == pytest.approx((0.5, 2.0))


def test_generalisation_is_against_the_validation_selection_in_points():
    runs = _adam() + _alsals([0.005] * 3, [0.96, 0.97, 0.94])
    g = compare.summarize_task(runs)["entries"]["alsals"]["generalisation"]
    assert g["reference"] == pytest.approx([95.0] * 3)  # the lr-3e-4 point's test accuracy, in percent
    assert g["diffs"] == pytest.approx([1.0, 2.0, -1.0])
    assert g["verdict"] == "tie"
    g = compare.summarize_task(_adam() + _alsals([0.005] * 3, [0.96, 0.97, 0.96]))["entries"]["alsals"]
    assert g["generalisation"]["verdict"] == "win"


def test_a_lower_is_better_metric_wins_with_a_negative_difference():
    runs = grid(T, "adamw", {-8: (0.3, 0.7), -7: (0.2, 0.5), -6: (0.1, 0.6)}, metric="mse", higher=False)
    runs += [record(T, "alsals", s, 0.1, test=0.4, metric="mse", higher=False) for s in range(3)]
    g = compare.summarize_task(runs)["entries"]["alsals"]["generalisation"]
    assert g["diffs"] == pytest.approx([-0.1] * 3)  # test 0.4 vs the reference's 0.5
    assert g["verdict"] == "win"


def test_a_failed_seed_makes_the_ratio_infinite_and_the_difference_a_loss():
    runs = _adam() + _alsals([0.01, 0.01, 0.01], [0.95] * 3)
    runs[-1].update(final_train_loss=None, status="diverged", diverged=True, test={"loss": None, "accuracy": None})
    e = compare.summarize_task(runs)["entries"]["alsals"]
    assert e["optimisation"]["geomean"] == math.inf
    assert e["generalisation"]["verdict"] != "win"


def test_the_references_are_entries_too():
    e = compare.summarize_task(_adam())["entries"]
    assert e["adamw (best by train)"]["optimisation"]["geomean"] == pytest.approx(1.0)
    assert e["adamw (best by val)"]["optimisation"]["geomean"] == pytest.approx(5.0)
    assert e["adamw (best by val)"]["generalisation"]["diffs"] == pytest.approx([0.0] * 3)


def _split(ratios_by_task, split="test"):
    runs = []
    for i, ratios in enumerate(ratios_by_task):
        task = f"t{i}"
        runs += grid(task, "adamw", {-8: (0.3, 0.8), -7: (0.1, 0.9), -6: (0.2, 0.85)}, split=split)
        runs += [record(task, "alsals", s, 0.1 * r, test=0.9 + 0.01 * (i - 1), split=split)
                 for s, r in enumerate(ratios)]
    return compare.summarize(runs)


def test_split_summary_geomean_intervals_and_the_most_favourable_task():
    summary = _split([(0.5, 0.5, 0.5), (1.0, 1.1, 0.9), (2.0, 2.0, 2.0)])
    o = summary["splits"]["test"]["entries"]["alsals"]["optimisation"]
    assert o["geomean"] == pytest.approx(1.0, rel=1e-2)
    assert o["most_favourable"] == "t0"
    assert o["geomean_without_most_favourable"] == pytest.approx(math.sqrt(2.0 * o["per_task"]["t1"]))
    assert o["wins"] == 1 and o["losses"] == 1  # t1's seeds straddle 1
    assert o["task_interval_crosses_1"] is True
    lo, hi = o["seed_interval"]
    assert lo < o["geomean"] < hi
    g = summary["splits"]["test"]["entries"]["alsals"]["generalisation"]
    assert (g["wins"], g["ties"], g["losses"]) == (1, 1, 1)  # -1 point on t0, 0 on t1 (a tie), +1 on t2
    assert g["by_metric"]["accuracy"]["mean"] == pytest.approx(0.0)
    assert g["per_task"] == pytest.approx({"t0": -1.0, "t1": 0.0, "t2": 1.0})


def test_dev_and_test_are_summarised_separately():
    runs = _split([(0.5, 0.5, 0.5)])["tasks"]
    assert list(runs) == ["t0"]
    dev = grid("d", "adamw", {-8: 0.3, -7: (0.1, 0.9), -6: 0.2}, split="dev")
    dev += [record("d", "alsals", s, 0.2, split="dev") for s in range(3)]
    test = grid("e", "adamw", {-8: 0.3, -7: (0.1, 0.9), -6: 0.2}, split="test")
    test += [record("e", "alsals", s, 0.05, split="test") for s in range(3)]
    summary = compare.summarize(dev + test)
    assert summary["splits"]["dev"]["tasks"] == ["d"] and summary["splits"]["test"]["tasks"] == ["e"]
    assert summary["splits"]["dev"]["entries"]["alsals"]["optimisation"]["geomean"] == pytest.approx(2.0)
    assert summary["splits"]["test"]["entries"]["alsals"]["optimisation"]["geomean"] == pytest.approx(0.5)


def test_seeds_disagree_by_more_than_the_effect():
    small = compare.summarize_task(_adam() + _alsals([0.009, 0.011, 0.010], [0.95] * 3))["entries"]["alsals"]
    assert compare.seeds_disagree(small, [0, 1, 2])["optimisation"] is True  # effect ~0, spread 20%
    clear = compare.summarize_task(_adam() + _alsals([0.005, 0.0055, 0.006], [0.96, 0.96, 0.961]))
    verdict = compare.seeds_disagree(clear["entries"]["alsals"], [0, 1, 2])
    assert verdict == {"optimisation": False, "generalisation": False}


def test_leave_one_task_out_chooses_on_the_other_tasks_and_checks_the_left_out_one():
    # adamw's train-selected point has train loss 0.01 on every task; "a" is good on t0 and t1 and bad
    # on t2, "b" mediocre everywhere: without t2 the choice is "a" (and it loses on t2), without t0 or
    # t1 the choice is "b" (its geo-mean over the two others is the lower), which wins on t0 and t1.
    ratios = {"a": {"t0": 0.5, "t1": 0.5, "t2": 4.0}, "b": {"t0": 0.9, "t1": 0.9, "t2": 0.9}}
    runs = []
    for task in ("t0", "t1", "t2"):
        runs += _adam(task=task, split="dev")
        for name, by_task in ratios.items():
            runs += [record(task, name, s, 0.01 * by_task[task], split="dev") for s in range(3)]
    # extra seeds of one candidate alone do not take part (they would make "a" lose on t0 and t1)
    runs += [record(task, "a", s, 0.01 * 50.0, split="dev") for task in ("t0", "t1") for s in (3, 4)]
    runs += [record(task, "adamw-lr1e-4", s, 0.01, split="dev") for task in ("t0", "t1") for s in (3, 4)]
    rows = compare.leave_one_task_out(compare.summarize(runs), "dev", ("a", "b", "missing"))
    assert all(r["seeds"] == [0, 1, 2] for r in rows)
    assert [(r["task"], r["choice"]) for r in rows] == [("t0", "b"), ("t1", "b"), ("t2", "a")]
    assert [r["passes"] for r in rows] == [True, True, False]
    assert rows[2]["ratio"] == pytest.approx(4.0) and rows[2]["best_on_task"] == "b"
    assert rows[0]["score_without"] == pytest.approx(0.9)
    assert compare.leave_one_task_out(compare.summarize(runs), "test", ("a",)) == []
