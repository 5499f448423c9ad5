"""Issue 12's targets measured from records (``alsals_bench.targets``): each target can fail."""

from __future__ import annotations

from alsals_bench import compare, targets

from ._records import grid, record

TOLD, ANYTIME = "alsals-layerwise-lib-plateau-unwrap", "alsals-layerwise-lib-anytime-unwrap"


def _task(name: str, told: float, anytime: float, rival: float, test: float, seeds=(0, 1, 2, 3, 4)) -> list[dict]:
    """A holdout task where AdamW's best train loss is 1.0 (test accuracy 0.9) and the rows' are given."""
    kw = {"split": "holdout"}
    runs = grid(name, "adamw", {-6: (1.0, 0.9), -5: (2.0, 0.8)}, seeds=seeds, **kw)
    runs += [record(name, TOLD, s, told, test=test, **kw) for s in seeds]
    runs += [record(name, ANYTIME, s, anytime, test=test, **kw) for s in seeds]
    runs += [record(name, "prodigy", s, rival, **kw) for s in (0, 1, 2)]
    return runs


def _measure(runs):
    return targets.measure(compare.summarize(runs), "holdout", TOLD, ANYTIME)


def test_a_pair_that_meets_every_target_is_reported_so():
    runs = _task("a", 0.5, 0.6, 0.9, 0.95) + _task("b", 0.8, 0.9, 1.1, 0.92)
    m = _measure(runs)
    assert abs(m["geomean"] - (0.5 * 0.8) ** 0.5) < 1e-12 and m["above"] == []
    assert m["diverged"] == 0 and m["runs"] == 20
    assert m["rivals_better"] == {"tabular": []}
    (mean, _), = m["held_out"].values()
    assert abs(mean - 3.5) < 1e-9 and m["held_out_losses"] == []  # +5 and +2 accuracy points
    assert abs(m["anytime"]["a"] - 1.2) < 1e-12
    text = targets.render(compare.summarize(runs), "holdout")
    assert "**missed**" not in text and text.count("met") >= 6


def test_each_target_can_be_missed():
    runs = _task("a", 1.4, 3.0, 1.2, 0.85) + _task("b", 0.9, 1.0, 1.1, 0.95)
    m = _measure(runs)
    assert m["above"] == ["a"] and m["worst"][0] == "a"
    assert [t for t, _ in m["rivals_better"]["tabular"]] == ["a"]  # prodigy 1.2 < 1.4 on a
    assert m["held_out_losses"] == ["a"]
    assert abs(m["anytime"]["a"] - 3.0 / 1.4) < 1e-12
    text = targets.render(compare.summarize(runs), "holdout")
    for phrase in ("**missed** by", "**missed** on 1 of 2 (`a`)", "**missed** in 1 of 1 families",
                   "**missed** on 1 (`a`"):
        assert phrase in text, phrase


def test_rivals_are_compared_on_the_seeds_they_share():
    """The told row is worse on seeds 3-4 only; the rival has seeds 0-2: no rival is better."""
    runs = _task("a", 0.5, 0.5, 0.6, 0.95)
    runs = [dict(r, final_train_loss=5.0) if r["optimizer"] == TOLD and r["seed"] >= 3 else r for r in runs]
    m = _measure(runs)
    assert m["rivals_better"] == {"tabular": []}
    assert m["geomean"] > 0.6  # over all five seeds the told row is worse than the rival's 0.6


def test_no_runs_of_the_split_give_a_placeholder():
    runs = _task("a", 0.5, 0.5, 0.6, 0.95)
    assert targets.measure(compare.summarize(runs), "test", TOLD, ANYTIME) is None
    assert "no runs" in targets.render(compare.summarize(runs), "test")
