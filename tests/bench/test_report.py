"""The report: tuned-Adam selection, ranks, scores, ratios, files, on hand-made results."""

from __future__ import annotations

import json
import math
import os

import pytest

from alsals.bench import report

NAN = float("nan")


def _rec(task, optimizer, seed, train, *, val=None, test=None, init=2.0, lr=None, metric="accuracy",
         higher=True, status="ok", steps=10):
    family = "adam" if lr is not None else "alsals"
    return {
        "task": task, "optimizer": optimizer, "seed": seed, "steps": steps, "status": status,
        "error": "boom" if status == "error" else None, "diverged": status != "ok",
        "initial_train_loss": init, "final_train_loss": train, "final_batch_loss_avg": train,
        "val": {"loss": val if val is not None else train + 0.1},
        "test": {"loss": train, metric: test if test is not None else 0.5},
        "wall_seconds": 1.0, "steps_done": steps, "forward_calls": steps * (2 if lr is None else 1),
        "backward_calls": steps, "forward_equivalents": steps * (4 if lr is None else 3),
        "steps_to_target": 5, "seconds_to_target": 0.5, "fwd_equiv_to_target": 15,
        "step_size_final": 0.1, "step_size_min": 0.05, "step_size_max": 0.2,
        "curves": {"step": [5, 10], "loss": [init, train], "step_size": [0.1, 0.1], "seconds": [0.5, 1.0],
                   "fwd_equiv": [15, 30]},
        "config": {"task": {"name": task, "metric": metric, "metric_higher_is_better": higher,
                            "description": f"{task} (hand-made)", "target_loss": 0.5},
                   "optimizer": {"name": optimizer, "family": family, "grid_lr": lr}},
    }


def hand_made() -> list[dict]:
    runs = []
    # task A: two seeds, classification
    for seed, a in ((0, 0.10), (1, 0.14)):
        runs.append(_rec("A", "alsals", seed, a, test=0.9))
        runs.append(_rec("A", "sls", seed, 0.30, test=0.8))
        runs.append(_rec("A", "adam-lr1e-4", seed, 0.60, val=0.7, lr=1e-4, test=0.6))
        runs.append(_rec("A", "adam-lr1e-3", seed, 0.20, val=0.5, lr=1e-3, test=0.85))
        # the lowest train loss of the grid, but not the lowest val loss: must not be picked
        runs.append(_rec("A", "adam-lr1e-2", seed, 0.05, val=0.9, lr=1e-2, test=0.7))
    # task B: one seed, language model (lower metric is better); sls crashed
    kw = dict(init=5.5, metric="nats_per_byte", higher=False)
    runs.append(_rec("B", "alsals", 0, 1.5, test=1.6, **kw))
    runs.append(_rec("B", "sls", 0, NAN, test=NAN, status="error", **kw))
    runs.append(_rec("B", "adam-lr1e-3", 0, 1.6, val=1.7, lr=1e-3, test=1.7, **kw))
    runs.append(_rec("B", "adam-lr1e-2", 0, 2.0, val=1.65, lr=1e-2, test=1.9, **kw))
    return runs


def test_tuned_adam_is_selected_by_validation_loss():
    runs = hand_made()
    sel_a = report.adam_selection([r for r in runs if r["task"] == "A"])
    assert sel_a["best"] == "adam-lr1e-3"  # val 0.5, although 1e-2 has the lowest train loss
    assert sel_a["median"] == "adam-lr1e-4"  # val order: 1e-3 (0.5), 1e-4 (0.7), 1e-2 (0.9)
    assert [g["lr"] for g in sel_a["grid"]] == [1e-4, 1e-3, 1e-2]
    assert {g["optimizer"]: g["rank"] for g in sel_a["grid"]} == {
        "adam-lr1e-3": 1, "adam-lr1e-4": 2, "adam-lr1e-2": 3}
    sel_b = report.adam_selection([r for r in runs if r["task"] == "B"])
    assert sel_b["best"] == "adam-lr1e-2"  # val 1.65 < 1.7
    assert sel_b["median"] == "adam-lr1e-2"  # (2 - 1) // 2 = 0: the better of two


def test_failed_grid_points_rank_last():
    runs = [_rec("C", "adam-lr1e-3", 0, NAN, val=NAN, lr=1e-3, status="error"),
            _rec("C", "adam-lr1e-2", 0, 1.0, val=3.0, lr=1e-2)]
    assert report.adam_selection(runs)["best"] == "adam-lr1e-2"


def test_summary_numbers():
    s = report.summarize(hand_made())
    a = s["tasks"]["A"]["stats"]
    assert a["alsals"]["train_loss"][0] == pytest.approx(0.12)
    assert a["alsals"]["train_loss"][1] == pytest.approx(math.sqrt(((0.10 - 0.12) ** 2 + (0.14 - 0.12) ** 2) / 1))
    assert a["alsals"]["ratio_to_adam"] == pytest.approx(0.12 / 0.20)
    assert a["sls"]["ratio_to_adam"] == pytest.approx(0.30 / 0.20)
    assert a[report.ADAM_BEST]["ratio_to_adam"] == pytest.approx(1.0)
    assert a[report.ADAM_MEDIAN]["ratio_to_adam"] == pytest.approx(0.60 / 0.20)
    # normalised score: L0 = 2.0, L* = 0.05 (the lowest train loss of any run: adam lr 1e-2)
    assert a["alsals"]["score"] == pytest.approx((2.0 - 0.12) / (2.0 - 0.05))
    assert a[report.ADAM_MEDIAN]["score"] == pytest.approx((2.0 - 0.60) / (2.0 - 0.05))
    # ranks by train loss: alsals 0.12, adam best 0.20, sls 0.30, adam median 0.60
    assert [a[k]["rank_train"] for k in ("alsals", report.ADAM_BEST, "sls", report.ADAM_MEDIAN)] == [1, 2, 3, 4]
    # by test accuracy (higher is better): alsals 0.9, adam best 0.85, sls 0.8, median 0.6
    assert [a[k]["rank_metric"] for k in ("alsals", report.ADAM_BEST, "sls", report.ADAM_MEDIAN)] == [1, 2, 3, 4]

    b = s["tasks"]["B"]["stats"]
    assert b["alsals"]["ratio_to_adam"] == pytest.approx(1.5 / 2.0)
    assert math.isinf(b["sls"]["ratio_to_adam"])
    assert b["sls"]["score"] == 0.0 and b["sls"]["errors"] == 1
    assert b["sls"]["rank_train"] == 4  # failed: last (best and median are the same run here)
    assert b[report.ADAM_BEST]["rank_train"] == pytest.approx(2.5)  # tie with the median entry
    # lower nats per byte is better: alsals 1.6 first
    assert b["alsals"]["rank_metric"] == 1

    across = s["across"]
    assert across["alsals"]["ratio_geomean"] == pytest.approx(math.sqrt((0.12 / 0.20) * (1.5 / 2.0)))
    assert across["alsals"]["mean_rank_train"] == pytest.approx(1.0)
    assert across["alsals"]["score"] == pytest.approx(
        ((2.0 - 0.12) / (2.0 - 0.05) + (5.5 - 1.5) / (5.5 - 1.5)) / 2)
    assert math.isinf(across["sls"]["ratio_geomean"])
    assert across["sls"]["mean_rank_train"] == pytest.approx((3 + 4) / 2)
    assert across[report.ADAM_BEST]["ratio_geomean"] == pytest.approx(1.0)
    assert across["sls"]["diverged"] == 1


def test_helpers():
    assert report.ranks([3.0, 1.0, NAN, 1.0]) == [3, 1.5, 4, 1.5]
    assert report.ranks([0.5, 0.9], higher_is_better=True) == [2, 1]
    assert report.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isinf(report.geometric_mean([2.0, float("inf")]))
    m, s = report.mean_std([1.0, NAN])
    assert math.isinf(m)
    m, s = report.mean_std([1.0])
    assert m == 1.0 and math.isnan(s)


def test_markdown_tables():
    md = report.render_markdown({"suite": "quick", "jobs": 2, "loadavg_start": [0.1, 0.2, 0.3],
                                 "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "torch": "2.x",
                                             "platform": "Linux"}}, hand_made())
    assert "## Summary across tasks" in md
    assert "## A" in md and "## B" in md
    assert "adam-tuned (best) lr=0.001" in md
    assert "adam-tuned (median) lr=0.0001" in md
    assert "0.12 ± 0.028" in md
    assert "Test CPU (2 cores" in md
    assert "test nats_per_byte ↓" in md and "test accuracy ↑" in md
    assert "## Errors" in md and "boom" in md
    section_a = md[md.index("## A"):md.index("## B")]
    assert "| 0.001 **best** |" in section_a and "| 0.0001 *median* |" in section_a
    assert "| 0.01 **best** *median* |" in md[md.index("## B"):]


def test_write_report_and_rebuild_from_json(tmp_path):
    runs = hand_made()
    meta = {"suite": "quick", "jobs": 1}
    paths = report.write_report(str(tmp_path), meta, runs)
    assert os.path.exists(paths["json"]) and os.path.exists(paths["md"])
    assert set(paths["plots"]) == {"A", "B"}
    for p in paths["plots"].values():
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["json"]) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    json.loads(text)
    meta2, runs2 = report.load_results(str(tmp_path))
    assert meta2 == meta and len(runs2) == len(runs)
    s1, s2 = report.summarize(runs), report.summarize(runs2)
    assert s1["across"]["alsals"]["ratio_geomean"] == pytest.approx(s2["across"]["alsals"]["ratio_geomean"])
    assert math.isinf(s2["across"]["sls"]["ratio_geomean"])
    assert "plots/A.png" in open(paths["md"]).read()
