"""The statistics of the reports: geometric means, intervals and the seed bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from alsals_bench import stats


def test_geomean_and_failed_values():
    assert stats.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert stats.geomean([2.0, math.inf]) == math.inf  # a failed run dominates
    assert math.isnan(stats.geomean([2.0, float("nan")]))
    assert math.isnan(stats.geomean([]))
    assert math.isnan(stats.geomean([1.0, 0.0]))


def test_t_interval_matches_scipy():
    values = [0.1, -0.3, 0.25, 0.05, -0.1]
    lo, hi = stats.t_interval(values)
    ref = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (lo, hi) == pytest.approx(ref)
    assert all(math.isnan(v) for v in stats.t_interval([1.0]))
    assert all(math.isnan(v) for v in stats.t_interval([1.0, math.inf]))


def test_bootstrap_over_seeds_is_deterministic_and_holds_the_mean():
    groups = [[0.1, 0.2, 0.3], [-0.1, 0.0, 0.4], [0.5, 0.5, 0.6]]
    lo, hi = stats.bootstrap_over_seeds(groups)
    assert (lo, hi) == stats.bootstrap_over_seeds(groups)
    point = np.mean([np.mean(g) for g in groups])
    assert lo < point < hi
    # no spread within tasks: nothing to resample
    assert stats.bootstrap_over_seeds([[0.2, 0.2], [0.4, 0.4]]) == pytest.approx((0.3, 0.3))
    assert all(math.isnan(v) for v in stats.bootstrap_over_seeds([[0.1, math.inf]]))


def test_the_seed_bootstrap_is_narrower_than_the_task_interval_when_tasks_disagree():
    groups = [[-0.5, -0.49, -0.51], [0.5, 0.49, 0.51], [0.0, 0.01, -0.01]]
    seed_lo, seed_hi = stats.bootstrap_over_seeds(groups)
    task_lo, task_hi = stats.t_interval([np.mean(g) for g in groups])
    assert seed_hi - seed_lo < 0.1 < task_hi - task_lo


def test_intervals_on_logs_and_crossing():
    iv = stats.exp_interval((math.log(0.8), math.log(1.25)))
    assert iv == pytest.approx((0.8, 1.25))
    assert stats.crosses(iv, 1.0) is True
    assert stats.crosses((0.7, 0.9), 1.0) is False
    assert stats.crosses((float("nan"), 1.0), 1.0) is None
    assert stats.min_max([3.0, 1.0, 2.0]) == (1.0, 3.0)
