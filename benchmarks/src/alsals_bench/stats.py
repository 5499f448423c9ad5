"""Small statistics for the reports: geometric means, spreads and intervals.

Two intervals are reported for a summary over tasks, because two sources of variation matter:

- **seed interval** (:func:`bootstrap_over_seeds`): a percentile bootstrap that resamples the seeds
  *within* each task (tasks held fixed), 10,000 resamples with a fixed generator. It answers "how
  much would this number move with other seeds on these tasks?". With 3 seeds per task it is
  crude, and it is narrower than the honest uncertainty about a new task.
- **task interval** (:func:`t_interval`): a Student-t interval over the per-task values (log ratios
  for ratios, differences for differences), ``n_tasks - 1`` degrees of freedom. It answers "what
  would a new task of this kind give?" and is wide with 6 tasks.

Per task, the spread is the min-max over seeds (a bootstrap of 3 values says little more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: bootstrap resamples and the generator's seed (fixed: a report is a function of its results)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20240327
LEVEL = 0.95


def finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x) -> float:
    """A float; NaN for ``None`` and anything that is not a number."""
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def mean(values: Sequence[float]) -> float:
    vals = [num(v) for v in values]
    return float(np.mean(vals)) if vals else float("nan")


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive values; ``inf`` if one is infinite (a failed run), NaN if one is
    NaN or not positive, or if there are none."""
    vals = [num(v) for v in values]
    if not vals or any(math.isnan(v) or v <= 0 for v in vals):
        return float("nan")
    if any(math.isinf(v) for v in vals):
        return float("inf")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def min_max(values: Sequence[float]) -> tuple[float, float]:
    vals = [num(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return float("nan"), float("nan")
    return min(vals), max(vals)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN with fewer than 2 or non-finite values)."""
    vals = [num(v) for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        return float("nan"), float("nan")
    from scipy import stats

    m = float(np.mean(vals))
    half = float(stats.t.ppf(0.5 + level / 2, len(vals) - 1)) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals))
    return m - half, m + half


def bootstrap_over_seeds(groups: Sequence[Sequence[float]], level: float = LEVEL,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of ``mean over groups of (mean over a group's values)``, resampling the
    values within each group with replacement (groups fixed). NaN if any value is not finite."""
    arrays = [np.asarray([num(v) for v in g], dtype=float) for g in groups]
    if not arrays or any(len(a) == 0 or not np.all(np.isfinite(a)) for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for a in arrays:
        picks = rng.integers(0, len(a), size=(resamples, len(a)))
        total += a[picks].mean(axis=1)
    stat = total / len(arrays)
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def exp_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """An interval on logs mapped back to ratios."""
    return tuple(math.exp(v) if finite(v) else float("nan") for v in interval)  # type: ignore[return-value]


def crosses(interval: tuple[float, float], value: float) -> bool | None:
    """Whether ``interval`` contains ``value`` (None when the interval is undefined)."""
    lo, hi = interval
    if not (finite(lo) and finite(hi)):
        return None
    return lo <= value <= hi
