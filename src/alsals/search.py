"""The stochastic Armijo line search, as pure logic on Python floats.

Nothing in this module touches a tensor: the optimizer moves the parameters and evaluates the
closure, and hands the measured decrease of the loss to :func:`backtrack`. That keeps the rules that
decide the step size small, readable and testable on synthetic losses (see ``tests/test_search.py``).

Notation (``docs/algorithm.md``): ``η`` the step size, ``D = gᵀd`` the slope of the loss along the
search direction ``-d``, ``s`` and ``h`` the exponential moving averages of the slope and of the
measured decrease ``Δ = f(w) − f(w − η·d)`` with factor ``β_s``. A trial ``η`` is accepted when the
smoothed Armijo condition holds::

    h' = β_s·h + (1 − β_s)·Δ  ≥  c_eff · η · s,      c_eff = c if s > 0 else 1/c

With momentum the direction can point uphill (``s ≤ 0``); the classical condition then has no
solution, so ALSALS swaps ``c`` for ``1/c`` and the right-hand side bounds how much the smoothed
loss may *increase* (Kenneweg et al., 2024). With ``β_s = 0`` this is the classical Armijo rule of
SLS (Vaswani et al., 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of the search (shared by every parameter group).

    Attributes:
        c: sufficient-decrease constant of the Armijo condition, in (0, 1).
        growth: factor ``γ ≥ 1`` by which the carried step size grows before a search.
        backtrack: factor ``β_b`` in (0, 1) by which a rejected trial step size shrinks.
        smoothing: EMA factor ``β_s`` in [0, 1) of the slope and of the decrease (0: no smoothing).
        min_step_size: floor of the step size; the search stops there.
        max_step_size: ceiling of the step size; growth never passes it.
        max_backtracks: at most this many shrinks per search (the search then gives up).
        ascent_handling: use ``c_eff = 1/c`` when the smoothed slope is not positive.
    """

    c: float = 0.3
    growth: float = 1.0 / 0.999
    backtrack: float = 0.9
    smoothing: float = 0.99
    min_step_size: float = 1e-10
    max_step_size: float = 10.0
    max_backtracks: int = 100
    ascent_handling: bool = True

    def clamp(self, step_size: float) -> float:
        """``step_size`` limited to ``[min_step_size, max_step_size]``."""
        return min(max(step_size, self.min_step_size), self.max_step_size)

    def grow(self, step_size: float) -> float:
        """The trial step size a search starts from: ``clamp(η·γ)``."""
        return self.clamp(step_size * self.growth)


def smooth(average: float, value: float, beta: float) -> float:
    """One step of an exponential moving average: ``β·average + (1 − β)·value``."""
    return beta * average + (1.0 - beta) * value


def effective_c(c: float, smoothed_slope: float, ascent_handling: bool) -> float:
    """``c`` when the smoothed slope is positive, else ``1/c`` (ascent handling), else ``c``."""
    if ascent_handling and smoothed_slope <= 0.0:
        return 1.0 / c
    return c


def armijo_holds(smoothed_decrease: float, step_size: float, c_eff: float, smoothed_slope: float) -> bool:
    """The smoothed Armijo condition ``h' ≥ c_eff·η·s``."""
    return smoothed_decrease >= c_eff * step_size * smoothed_slope


class SearchStatus(str, Enum):
    """How a search ended."""

    #: the smoothed Armijo condition holds at the final step size
    ACCEPTED = "accepted"
    #: the trial loss equalled the first loss bit for bit: the loss cannot resolve a smaller step,
    #: so shrinking further would only spend evaluations (SaLSa's "cancellation" rule)
    UNRESOLVABLE = "unresolvable"
    #: the direction has zero slope (``D == 0``): there is nothing to search for
    ZERO_SLOPE = "zero_slope"
    #: the condition never held; the search stopped at the floor or after ``max_backtracks`` shrinks,
    #: and the last trial had a finite loss (it is committed: a tiny step)
    GAVE_UP = "gave_up"
    #: the search stopped at the floor or after ``max_backtracks`` and the last trial loss was not finite:
    #: the optimizer must not commit this step
    FAILED = "failed"

    @property
    def commits(self) -> bool:
        """Whether the parameters may stay at the final trial point."""
        return self is not SearchStatus.FAILED


@dataclass
class SearchResult:
    """What a search decided."""

    #: the final (accepted, or last tried) step size
    step_size: float
    #: the smoothed decrease ``h`` to carry to the next step (unchanged when the step is not committed)
    smoothed_decrease: float
    status: SearchStatus
    #: closure evaluations spent on trials (at least 1)
    trials: int
    #: shrinks of the step size (``trials − 1``)
    backtracks: int
    #: trials whose loss was not finite
    nonfinite_trials: int


def backtrack(
    first_decrease: Optional[float],
    step_size: float,
    slope: float,
    smoothed_slope: float,
    smoothed_decrease: float,
    config: SearchConfig,
    decrease_at: Callable[[float], Optional[float]],
) -> SearchResult:
    """Backtrack from a first trial that has already been evaluated.

    The optimizer evaluates the first trial at ``step_size`` before it knows the slope (the slope is
    read back from the device in the same synchronisation as that trial's loss), so the first
    measured decrease is passed in and further trials are requested through ``decrease_at``.

    Args:
        first_decrease: ``Δ = f(w) − f(w − η·d)`` at ``step_size``, or ``None`` if the trial loss was
            not finite.
        step_size: the step size of the first trial, within the configured bounds.
        slope: the raw slope ``D`` of this step (used only for the zero-slope rule).
        smoothed_slope: ``s`` already updated with this step's ``D``.
        smoothed_decrease: ``h`` carried from the last committed search.
        config: the search's hyper-parameters.
        decrease_at: evaluates a trial at a new step size and returns its decrease (``None`` when the
            loss is not finite). Called at most ``max_backtracks`` times.

    Returns:
        The decision. The caller's parameters sit at the final trial point; it commits them when
        ``result.status.commits`` and otherwise moves back to the start.
    """
    c_eff = effective_c(config.c, smoothed_slope, config.ascent_handling)
    decrease = first_decrease
    trials, nonfinite = 1, 0
    while True:
        if decrease is None:
            nonfinite += 1
        else:
            candidate = smooth(smoothed_decrease, decrease, config.smoothing)
            if slope == 0.0:
                return SearchResult(step_size, candidate, SearchStatus.ZERO_SLOPE, trials, trials - 1, nonfinite)
            if armijo_holds(candidate, step_size, c_eff, smoothed_slope):
                return SearchResult(step_size, candidate, SearchStatus.ACCEPTED, trials, trials - 1, nonfinite)
            if decrease == 0.0:
                return SearchResult(step_size, candidate, SearchStatus.UNRESOLVABLE, trials, trials - 1, nonfinite)
        if trials - 1 >= config.max_backtracks or step_size <= config.min_step_size:
            if decrease is None:
                return SearchResult(step_size, smoothed_decrease, SearchStatus.FAILED, trials, trials - 1, nonfinite)
            return SearchResult(step_size, candidate, SearchStatus.GAVE_UP, trials, trials - 1, nonfinite)
        step_size = max(step_size * config.backtrack, config.min_step_size)
        decrease = decrease_at(step_size)
        trials += 1


@dataclass(frozen=True)
class AmortisationConfig:
    """When to search, when searching only every few steps.

    Between searches the optimizer takes the grown step along the current direction with no trial
    evaluation. The first ``warmup_searches`` steps always search. Then the interval ``L`` to the
    next search follows ``rule``:

    - ``"halving"`` (ALSALS's default): a search that accepted its first trial (it did not have to
      cut the step size) doubles the interval, up to ``max_interval``; a search that committed after
      ``k`` cuts of the step size divides it by ``2^k`` (at least 1); a search that gave up or failed
      resets it to 1. Searches become rare while they only confirm the step size. One cut (the step
      size was ``1/β`` too large, as when it drifts slowly down while the carried step grows by
      ``γ`` per step) is weak evidence and only halves the interval; several cuts (the landscape
      changed) bring the next search close. See :func:`next_interval`.
    - ``"doubling"``: the same, but any cut resets the interval to 1. Where the step size drifts
      down slowly this searches every 6–9 steps instead of every 12–15 (the overhead suite's GPT),
      for the same final losses on the benchmark tasks.
    - ``"salsa"`` (SaLSa's rule, the SaLSa preset): two EMAs of the accepted step size, fast
      (``β = 0.9``) and slow (``β = 0.99``) per search; with ``r = η̄_f/η̄_s`` (inverted below 1),
      ``L = clamp(round(1/(r − 1)), 1, max_interval)`` (:func:`search_interval`). After the step size
      settles at a new level, the slow average needs about 100 searches to follow, and until then
      ``L`` stays near 1 (measured: a third of all steps searched on our benchmark tasks).
    """

    fast: float = 0.9
    slow: float = 0.99
    max_interval: int = 20
    warmup_searches: int = 10
    rule: str = "halving"


INTERVAL_RULES = ("doubling", "halving", "salsa")


def next_interval(previous: int, backtracks: int, committed: bool, max_interval: int, halve: bool = False) -> int:
    """The interval to the next search after a search with ``backtracks`` cuts of the step size.

    ``min(2·L, max_interval)`` after a search that accepted its first trial; ``1`` after a search that
    did not commit (gave up, or failed). After a search that committed after cutting the step size:
    ``1`` (the ``"doubling"`` rule), or ``max(1, ⌊L / 2^backtracks⌋)`` (``halve``: the ``"halving"``
    rule, each cut halves the interval).
    """
    previous = max(previous, 1)
    if not committed:
        return 1
    if backtracks == 0:
        return min(2 * previous, max_interval)
    if not halve:
        return 1
    return max(1, previous >> min(backtracks, 62))


def search_interval(fast_average: float, slow_average: float, max_interval: int) -> int:
    """``L = clamp(round(1/(r − 1)), 1, max_interval)`` with ``r = fast/slow`` folded above 1."""
    if not (fast_average > 0.0 and slow_average > 0.0) or not math.isfinite(fast_average / slow_average):
        return 1
    ratio = fast_average / slow_average
    if ratio < 1.0:
        ratio = 1.0 / ratio
    if ratio - 1.0 < 1.0 / (max_interval + 1):  # 1/(r - 1) > max_interval + 1 (and never divides by 0)
        return max_interval
    return max(1, min(max_interval, round(1.0 / (ratio - 1.0))))
