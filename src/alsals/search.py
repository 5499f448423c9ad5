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

What the search carries from one optimizer step to the next is one small value, :class:`SearchState`;
two pure functions decide a step and fold its result back (``docs/algorithm.md``, "State"):

- :func:`plan` (before the closure runs): search or not, and from which step size. It reads only the
  carried state, never the current loss, so every rank of a distributed job plans alike and an
  amortized step can be decided without a host synchronisation;
- :func:`advance` (after the step): the next state from the :class:`Outcome` the optimizer reports
  (growth, the smoothed slope and decrease, the amortization rules and the counters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any, Callable, Dict, Mapping, Optional

from ._validation import check_bool, check_choice, check_int, check_range

#: when the carried step size grows: at every step, or only when a search starts
GROWTH_PER = ("step", "search")
#: what the memory of the smoothed slope and decrease counts: searches, or steps
SMOOTHING_PER = ("search", "step")
#: what a cut found by an amortized search counts for (:func:`carried_after_cut`)
CUT_PER = ("search", "step")
#: what a search that cut and passed no trial leaves to the next (:class:`SearchConfig`)
UNACCEPTED_SEARCH = ("restart", "keep")
#: how the interval between amortized searches adapts
INTERVAL_RULES = ("halving", "doubling", "salsa")
#: what a two-way search's larger trial must pass (:func:`backtrack`)
INCREASE_TESTS = ("smoothed", "batch")
#: when the searches start from the step size that moves the weights as far as the first one did
MATCH_DISPLACEMENT = ("off", "warmup", "always")
#: the searches the displacement is matched over with ``match_displacement="warmup"`` (without
#: amortization; with it, its ``warmup_searches``)
DISPLACEMENT_WARMUP = 10


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of the search (shared by every parameter group), validated on creation.

    The defaults are those of ``alsals.ALSALS()``; the presets (``preset="paper"``, SLS, SaLSa) are in
    :data:`alsals.config.PRESETS`.

    Attributes:
        c: sufficient-decrease constant of the Armijo condition, in (0, 1).
        growth: factor ``γ ≥ 1`` by which the carried step size grows before a search.
        backtrack: factor ``β_b`` in (0, 1) by which a rejected trial step size shrinks.
        smoothing: EMA factor ``β_s`` in [0, 1) of the slope and of the decrease (0: no smoothing;
            the optimizer's keyword is ``slope_smoothing``).
        min_step_size: floor of the step size; the search stops there.
        max_step_size: ceiling of the step size; growth never passes it.
        max_backtracks: at most this many shrinks per search (the search then gives up).
        ascent_handling: use ``c_eff = 1/c`` when the smoothed slope is not positive.
        growth_per: ``"step"`` (the carried step size grows at every step) or ``"search"`` (only when a
            search starts; amortized steps use the grown size without keeping it).
        initial_step_size: ``η0``, where the first search starts.
        interpolate: a rejected trial's next step size comes from the quadratic model of the loss
            along ``d`` (:func:`boundary_ratio`), safeguarded to ``[MIN_CUT, backtrack]`` times the
            trial; ``False``: always ``backtrack`` times it.
        max_increase: when the first trial is accepted and the quadratic model puts the Armijo boundary
            at least ``INCREASE_THRESHOLD`` times further, one larger trial, at most ``max_increase``
            times the first, is tried (a two-way search); ``1.0``: the search only ever shrinks.
        rate_smoothing: smooth the decrease per unit step, ``r ← β_s·r + (1 − β_s)·Δ/η``, and test
            ``r' ≥ c_eff·s``, instead of the paper's ``h' = β_s·h + (1 − β_s)·Δ ≥ c_eff·η·s``. The two are
            the same while ``η`` is constant; the paper's mixes decreases measured at earlier step
            sizes with the current one, so after ``η`` changes it lags for about ``1/(1 − β_s)``
            searches (a larger step cannot pass, a smaller one passes on credit).
        increase_test: what the larger trial of a two-way search must pass. ``"smoothed"``: the
            smoothed condition as it stands (it lags behind a growing step, so increases are rare).
            ``"batch"``: the batch's own Armijo condition ``Δ(x) ≥ c·x·D`` (no credit from earlier
            batches: the loss must really fall on this batch), *and* the smoothed condition with the
            carried ``h`` moved to the new step size, ``β_s·h·x/η + (1 − β_s)·Δ(x) ≥ c_eff·x·s``
            (``h`` was measured at ``η``; along a direction where the loss is nearly linear a decrease
            scales with the step); the moved ``h`` is what the next search carries. The paper's
            smoothing is kept everywhere else, so the search only ever moves to a larger step that
            this batch confirms.
        recover: cuts are not permanent. After a search that cut a step size that an earlier search
            had accepted, the state remembers that level (``recovery_level``); while the carried step
            size is below it, every *search* starts from ``min(η/β_b, level)`` instead of ``η·γ``:
            the step size climbs back at the rate it was cut (one ``β_b`` per search), and each
            recovered step size is tested by the search before it is committed (amortized steps still
            grow by ``γ`` only). Without it, undoing one cut at ``γ = 1/0.999`` takes about 105 steps,
            so a few bad batches lower the step size for the rest of the run. The level is never above
            a step size an earlier search accepted (the first search's cuts from ``η0`` set none), and
            it is cleared once reached.
        match_displacement: the first search accepts ``η₁`` along Adam's first direction, which is
            sign-like (``|d_i| = 1``: every weight moves by ``η₁``); Adam's later directions are
            shorter (``|m̂|/√v̂ < 1`` where the gradient is noisy), so the same step size moves the
            weights less and less. ``"warmup"``: during the warm-up searches, a search starts from at
            least ``η₁·‖d₁‖/‖d_{t−1}‖``, the step size that moves the weights as far as the first
            accepted step did (the search still tests it); afterwards the step size evolves as
            usual. ``"always"``: at every search. ``"off"``: never (the paper's rule).
        smoothing_per: what the EMAs' memory ``1/(1 − β_s)`` counts. ``"search"`` (the paper's): every
            search folds its measurement in with ``β_s``, however many amortized steps passed since the
            last one, so with the amortized search the EMAs remember the last ~10 *searches* (up to 200
            steps) and decreases measured early in training keep paying for later steps. ``"step"``: a
            search ``L`` steps after the previous one folds it in with ``β_s^L``
            (:func:`for_search`), so the memory is ~10 steps whether or not the steps between were
            searched; without amortization the two are the same.
        cut_per: what a cut found by a search counts for. ``"search"`` (the paper's): the carried step
            size is the accepted one. ``"step"``: a search ``L`` steps after the previous one that cut
            the grown step size by the factor ``r < 1`` carries ``r^L`` times it forward
            (:func:`carried_after_cut`); the step itself is taken at the accepted step size. Reason:
            the carried step size grows by ``γ`` at every step, searched or not, but only one batch
            in ``L`` can cut it. A search at every step settles where the share of batches that
            reject is ``p* = ln γ / ln(1/β_b)`` (about 1% at the defaults, one cut per rejecting batch);
            the amortized search, which grows ``L`` times per sample and cuts once, settles where about
            ``L·p*`` of the sampled batches reject (about 20% at a fixed ``L = 20``; less under the
            doubling rule, which resets the interval after a cut), a larger step size nearer the edge
            of stability. Counting the sampled cut once for each of the ``L`` steps it stands for
            makes the expected change of ``ln η`` per step that of a search at every step (an unbiased
            estimate of it from one batch in ``L``), at the amortized cost; without amortization the
            two are the same.
        unaccepted_search: what a search that cut and ended without the condition holding at any
            trial (:func:`is_unaccepted`) leaves to the next one: it gave up (``GAVE_UP``: at the
            floor or after ``max_backtracks`` cuts, the last trial's loss finite) or stopped where the
            loss no longer resolves the step (``UNRESOLVABLE``: a trial's loss equal to the first one
            bit for bit). ``"keep"`` (the paper's, and version 0.1's): the last trial's step size
            (about ``β_b^100 ≈ 3·10⁻⁵`` times where it started after a give-up) and the smoothed slope
            and decrease as they are. ``"restart"`` (``alsals.ALSALS()``'s default since 0.2): the
            step size it started from, and the smoothing's memory emptied (``s = h = 0``, as before the
            first search), so that the next search tests the classical Armijo condition on its own
            batch. Reason: the condition can fail at every step size for reasons that say nothing
            about the step size, and those reasons are in the memory. With a carried decrease
            ``h < 0`` (left by a search that accepted an ascent under ``c_eff = 1/c``) and ``s > 0``,
            the left side tends to ``β_s·h < 0`` and the right side to 0 as ``η → 0``; with
            ``rate_smoothing`` and a batch whose slope is negative under a positive smoothed slope,
            ``β_s·r + (1 − β_s)·D`` can stay below ``c·s``. Each cut then moves away from passing, and
            the last trial is where the search stopped (the backtrack limit, or the float resolution
            of the loss), not a step size it measured. Kept, one such batch lowers the step size for
            the rest of the run (growth at ``γ = 1/0.999`` undoes ``3·10⁻⁵`` in about 10,000 steps),
            and the next searches, starting that low, end unresolvable and cut further; with the
            step size restored but the memory kept, the next searches fail the same way (each of
            them 100 trials), since the carried ``h`` decays towards 0 only by ``β_s`` per search and
            ``h ≈ 0`` still asks ``(1 − β_s)·Δ ≥ c·η·s``. Emptied, both EMAs restart together, and the
            classical condition ``Δ ≥ c·η·D`` holds at a small enough step whenever ``D > 0``. The
            step itself is still the last trial's (tiny) one; the restored step size is ``η·γ`` (not
            a start raised by ``recover`` or ``match_displacement``), and the next step searches
            whatever the interval rule. A search that fails with an empty memory (the first one, the
            one right after a restart, or any with ``β_s = 0``) tested the batch's own classical
            condition, so its cut is evidence about the step size and is carried as with ``"keep"``
            (:func:`restarts`): batches that keep failing that test do not restart every search at
            100 trials. ``FAILED`` (the last trial's loss not finite) keeps both either way, and a
            search that stopped at its first trial has cut nothing.
    """

    c: float = 0.5
    growth: float = 1.0 / 0.999
    backtrack: float = 0.9
    smoothing: float = 0.9
    min_step_size: float = 1e-10
    max_step_size: float = 10.0
    max_backtracks: int = 100
    ascent_handling: bool = True
    growth_per: str = "step"
    initial_step_size: float = 0.1
    interpolate: bool = False
    max_increase: float = 1.0
    rate_smoothing: bool = False
    increase_test: str = "smoothed"
    recover: bool = False
    match_displacement: str = "off"
    smoothing_per: str = "search"
    cut_per: str = "search"
    unaccepted_search: str = "restart"

    def __post_init__(self) -> None:
        check_range("c", self.c, 0.0, 1.0, low_open=True, high_open=True)
        check_range("growth", self.growth, 1.0, math.inf, low_open=False, high_open=True)
        check_range("backtrack", self.backtrack, 0.0, 1.0, low_open=True, high_open=True)
        check_range("smoothing", self.smoothing, 0.0, 1.0, low_open=False, high_open=True)
        check_range("min_step_size", self.min_step_size, 0.0, math.inf, low_open=True, high_open=True)
        check_range("max_step_size", self.max_step_size, self.min_step_size, math.inf, low_open=False, high_open=True)
        check_range(
            "initial_step_size", self.initial_step_size, self.min_step_size, self.max_step_size,
            low_open=False, high_open=False,
        )
        check_int("max_backtracks", self.max_backtracks, 0)
        check_bool("ascent_handling", self.ascent_handling)
        check_choice("growth_per", self.growth_per, GROWTH_PER)
        check_bool("interpolate", self.interpolate)
        check_bool("rate_smoothing", self.rate_smoothing)
        check_range("max_increase", self.max_increase, 1.0, math.inf, low_open=False, high_open=True)
        check_choice("increase_test", self.increase_test, INCREASE_TESTS)
        check_bool("recover", self.recover)
        check_choice("match_displacement", self.match_displacement, MATCH_DISPLACEMENT)
        check_choice("smoothing_per", self.smoothing_per, SMOOTHING_PER)
        check_choice("cut_per", self.cut_per, CUT_PER)
        check_choice("unaccepted_search", self.unaccepted_search, UNACCEPTED_SEARCH)

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


def smoothed_candidate(smoothed_decrease: float, decrease: float, step_size: float, config: SearchConfig) -> float:
    """The carried EMA with this trial's decrease in it: ``h'`` of ``Δ``, or with ``rate_smoothing``
    ``r'`` of ``Δ/η``."""
    value = decrease / step_size if config.rate_smoothing else decrease
    return smooth(smoothed_decrease, value, config.smoothing)


def condition_holds(candidate: float, step_size: float, c_eff: float, smoothed_slope: float, config: SearchConfig) -> bool:
    """The smoothed Armijo condition the search tests: ``h' ≥ c_eff·η·s``, or with ``rate_smoothing``
    ``r' ≥ c_eff·s``."""
    if config.rate_smoothing:
        return candidate >= c_eff * smoothed_slope
    return armijo_holds(candidate, step_size, c_eff, smoothed_slope)


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
    #: shrinks of the step size
    backtracks: int
    #: trials whose loss was not finite
    nonfinite_trials: int
    #: accepted increases of the step size beyond the first trial (0 or 1)
    increases: int = 0
    #: a two-way search left the step size at least ``INCREASE_THRESHOLD`` below the batch's Armijo
    #: boundary (its increase was held back by the smoothed condition, or rejected): not confirmed
    unconfirmed: bool = False


#: the smallest factor an interpolated cut may take (the safeguard of Nocedal & Wright's
#: interpolating backtracking, "Numerical Optimization", §3.5): at most a decade per rejected trial
MIN_CUT = 0.1
#: a larger trial is worth a closure evaluation only when the quadratic model puts the boundary of the
#: smoothed Armijo condition at least this factor above the accepted step; below it the accepted step
#: is within a factor 2 of the boundary and counts as confirmed (the amortized search then lengthens
#: its interval)
INCREASE_THRESHOLD = 2.0


def boundary_ratio(
    decrease: Optional[float],
    step_size: float,
    slope: float,
    smoothed_slope: float,
    smoothed_decrease: float,
    c_eff: float,
    smoothing: float,
    rate_smoothing: bool = False,
) -> Optional[float]:
    """Where the quadratic model of one trial puts the boundary of the smoothed Armijo condition,
    relative to the trial's step size.

    Along the direction the batch loss is ``f(w − x·d) ≈ f(w) − x·D + ½·κ·x²``; a trial at ``η`` with
    decrease ``Δ`` gives ``κ = 2·(η·D − Δ)/η²``. The condition the search tests at a step size ``x``,
    ``β_s·h + (1 − β_s)·Δ(x) ≥ c_eff·x·s``, is then ``β_s·h − b·x − a·x² ≥ 0`` with
    ``a = ½·(1 − β_s)·κ`` and ``b = c_eff·s − (1 − β_s)·D``; its largest root ``x*`` is the boundary and
    the result is ``x*/η``. Without smoothing (``β_s = 0``, ``s = D``) this is the classical
    ``x* = 2·(1 − c)·D/κ``. With smoothing the carried ``h`` weighs in: a step far larger than the ones
    that built ``h`` cannot pass at once, however flat the loss (with ``β_s = 0.9`` and ``c = 0.5``, at
    most about 2.25 times the step that built it). With ``rate_smoothing`` the condition
    ``β_s·r + (1 − β_s)·(D − ½·κ·x) ≥ c_eff·s`` is linear in ``x``: ``x* = 2·(β_s·r + (1 − β_s)·D −
    c_eff·s)/((1 − β_s)·κ)``, and no lag limits it.

    ``None`` where the model does not apply: a non-finite trial or a direction that is not downhill
    (``D ≤ 0``). ``inf`` when the trial saw no curvature (``κ ≤ 0``: the model has no boundary), ``0.0``
    when no positive step passes.
    """
    if decrease is None or not slope > 0.0 or not step_size > 0.0:
        return None
    curvature = 2.0 * (step_size * slope - decrease) / (step_size * step_size)
    if not math.isfinite(curvature):
        return None
    if curvature <= 0.0:
        return math.inf
    if rate_smoothing:
        margin = smoothing * smoothed_decrease + (1.0 - smoothing) * slope - c_eff * smoothed_slope
        return max(2.0 * margin / ((1.0 - smoothing) * curvature), 0.0) / step_size
    a = 0.5 * (1.0 - smoothing) * curvature
    b = c_eff * smoothed_slope - (1.0 - smoothing) * slope
    h0 = smoothing * smoothed_decrease
    discriminant = b * b + 4.0 * a * h0
    if discriminant < 0.0:
        return 0.0
    root_of_discriminant = math.sqrt(discriminant)
    # the larger root of a·x² + b·x − β_s·h, in the form that does not cancel for small a
    root = 2.0 * h0 / (b + root_of_discriminant) if b > 0.0 else (root_of_discriminant - b) / (2.0 * a)
    return max(root, 0.0) / step_size


def smoothed_boundary_ratio(
    decrease: Optional[float],
    step_size: float,
    slope: float,
    smoothed_slope: float,
    smoothed_decrease: float,
    c_eff: float,
    config: SearchConfig,
) -> Optional[float]:
    """:func:`boundary_ratio` of the condition the search tests (``config``'s smoothing and rate
    smoothing)."""
    return boundary_ratio(
        decrease, step_size, slope, smoothed_slope, smoothed_decrease, c_eff, config.smoothing, config.rate_smoothing
    )


def next_cut(
    decrease: Optional[float],
    step_size: float,
    slope: float,
    smoothed_slope: float,
    smoothed_decrease: float,
    c_eff: float,
    config: SearchConfig,
) -> float:
    """The factor by which a rejected trial's step size shrinks: ``backtrack``, or with ``interpolate``
    the model's boundary ratio (:func:`boundary_ratio`) clipped to ``[MIN_CUT, backtrack]``
    (``backtrack`` where the model does not apply)."""
    if not config.interpolate:
        return config.backtrack
    ratio = smoothed_boundary_ratio(decrease, step_size, slope, smoothed_slope, smoothed_decrease, c_eff, config)
    if ratio is None:
        return config.backtrack
    return min(config.backtrack, max(MIN_CUT, ratio))


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

    Two-way search (``config.max_increase > 1``): when the *first* trial is accepted and the quadratic
    model of it (:func:`boundary_ratio`) puts the boundary of the smoothed condition at ``ρ ≥
    INCREASE_THRESHOLD`` times the trial, one more trial at ``η·min(β_b·ρ, max_increase)`` is evaluated
    and kept if the condition holds there too (``increases = 1``); otherwise the first trial stands
    (``unconfirmed`` when the batch's own boundary is that far away). So the accepted step size can
    grow towards the boundary instead of only by the growth factor. Cuts of a rejected trial follow
    :func:`next_cut` (a fixed factor, or the model's interpolation).

    Returns:
        The decision. The caller's parameters sit at the last trial point (with a rejected increase,
        not the accepted one); it commits ``result.step_size`` when ``result.status.commits`` and
        otherwise moves back to the start.
    """
    c_eff = effective_c(config.c, smoothed_slope, config.ascent_handling)
    decrease = first_decrease
    trials, nonfinite = 1, 0
    while True:
        if decrease is None:
            nonfinite += 1
        else:
            candidate = smoothed_candidate(smoothed_decrease, decrease, step_size, config)
            if slope == 0.0:
                return SearchResult(step_size, candidate, SearchStatus.ZERO_SLOPE, trials, trials - 1, nonfinite)
            if condition_holds(candidate, step_size, c_eff, smoothed_slope, config):
                accepted = SearchResult(step_size, candidate, SearchStatus.ACCEPTED, trials, trials - 1, nonfinite)
                if trials == 1 and config.max_increase > 1.0:
                    return _try_increase(accepted, decrease, slope, smoothed_slope, smoothed_decrease, c_eff, config, decrease_at)
                return accepted
            if decrease == 0.0:
                return SearchResult(step_size, candidate, SearchStatus.UNRESOLVABLE, trials, trials - 1, nonfinite)
        if trials - 1 >= config.max_backtracks or step_size <= config.min_step_size:
            if decrease is None:
                return SearchResult(step_size, smoothed_decrease, SearchStatus.FAILED, trials, trials - 1, nonfinite)
            return SearchResult(step_size, candidate, SearchStatus.GAVE_UP, trials, trials - 1, nonfinite)
        cut = next_cut(decrease, step_size, slope, smoothed_slope, smoothed_decrease, c_eff, config)
        step_size = max(step_size * cut, config.min_step_size)
        decrease = decrease_at(step_size)
        trials += 1


def _try_increase(
    accepted: SearchResult,
    decrease: float,
    slope: float,
    smoothed_slope: float,
    smoothed_decrease: float,
    c_eff: float,
    config: SearchConfig,
    decrease_at: Callable[[float], Optional[float]],
) -> SearchResult:
    """The increase of a two-way search after an accepted first trial (see :func:`backtrack`).

    The batch's own boundary (the unsmoothed condition's model, ``raw``) says whether the step size
    is confirmed. Where the larger trial goes and what it must pass depends on
    ``config.increase_test``:

    - ``"smoothed"``: the boundary of the smoothed condition the search tests (it lags behind a
      growing step size, see :func:`boundary_ratio`) says whether a larger trial can pass; it is put
      at ``β_b`` of that boundary and must pass that condition;
    - ``"batch"``: it is put at ``β_b`` of the batch's boundary and must pass the batch's own Armijo
      condition and the smoothed one with ``h`` moved to its step size (:func:`increase_candidate`).

    Either way at most ``max_increase`` times the first trial."""
    step_size = accepted.step_size
    raw = boundary_ratio(decrease, step_size, slope, slope, 0.0, config.c, 0.0)
    if raw is None or raw < INCREASE_THRESHOLD:
        return accepted  # the accepted step is within a factor INCREASE_THRESHOLD of the boundary
    accepted = replace(accepted, unconfirmed=True)
    if config.increase_test == "batch":
        room: Optional[float] = raw
    else:
        room = smoothed_boundary_ratio(decrease, step_size, slope, smoothed_slope, smoothed_decrease, c_eff, config)
        if room is None or room < INCREASE_THRESHOLD:
            return accepted  # held back by the smoothed condition: search again soon
    assert room is not None
    larger = min(step_size * min(config.backtrack * room, config.max_increase), config.max_step_size)
    if larger <= step_size:
        return accepted
    larger_decrease = decrease_at(larger)
    accepted = replace(accepted, trials=accepted.trials + 1)
    if larger_decrease is None:
        return replace(accepted, nonfinite_trials=accepted.nonfinite_trials + 1)
    candidate = increase_candidate(smoothed_decrease, larger_decrease, step_size, larger, config)
    passes = condition_holds(candidate, larger, c_eff, smoothed_slope, config)
    if config.increase_test == "batch":
        passes = passes and armijo_holds(larger_decrease, larger, config.c, slope)
    if passes:
        return replace(accepted, step_size=larger, smoothed_decrease=candidate, increases=1, unconfirmed=False)
    return accepted


def increase_candidate(
    smoothed_decrease: float, decrease: float, step_size: float, larger: float, config: SearchConfig
) -> float:
    """The smoothed decrease a larger trial at ``larger`` (first trial at ``step_size``) is tested with.

    ``increase_test="smoothed"``: :func:`smoothed_candidate`, the carried ``h`` as it is. ``"batch"``:
    ``β_s·h·(larger/step_size) + (1 − β_s)·Δ``, the carried ``h`` moved to the larger step first (it
    was measured at ``step_size``, and the decrease along a nearly linear direction scales with the
    step); with ``rate_smoothing`` the carried value is already per unit step and is not moved."""
    if config.increase_test == "batch" and not config.rate_smoothing:
        return smooth(smoothed_decrease * (larger / step_size), decrease, config.smoothing)
    return smoothed_candidate(smoothed_decrease, decrease, larger, config)


@dataclass(frozen=True)
class AmortizationConfig:
    """When to search, when searching only every few steps.

    Between searches the optimizer takes the grown step along the current direction with no trial
    evaluation. The first ``warmup_searches`` steps always search. Then the interval ``L`` to the
    next search follows ``rule``:

    - ``"halving"`` (version 0.1's default): a search that accepted its first trial (it did not have to
      cut the step size) doubles the interval, up to ``max_interval``; a search that committed after
      ``k`` cuts of the step size divides it by ``2^k`` (at least 1); a search that gave up or failed
      resets it to 1. Searches become rare while they only confirm the step size. One cut (the step
      size was ``1/β`` too large, as when it drifts slowly down while the carried step grows by
      ``γ`` per step) is weak evidence and only halves the interval; several cuts (the landscape
      changed) bring the next search close. See :func:`next_interval`.
    - ``"doubling"`` (ALSALS's default since 0.2): the same, but any cut resets the interval to 1:
      the search looks again at the next step whenever it had to correct the step size. Where the
      step size drifts down slowly this searches more often than ``"halving"`` (every 6–9 steps
      instead of every 12–15 on the overhead suite's GPT); on the benchmark's dev split it gave the
      lower losses (docs/benchmarks.md, "Third round").
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
    rule: str = "halving"  # 0.1's; ALSALS passes its own (``search_interval_rule``, default "doubling")

    def __post_init__(self) -> None:
        check_range("fast", self.fast, 0.0, 1.0, low_open=False, high_open=True)
        check_range("slow", self.slow, 0.0, 1.0, low_open=False, high_open=True)
        check_int("max_search_interval", self.max_interval, 1)
        check_int("warmup_searches", self.warmup_searches, 0)
        check_choice("search_interval_rule", self.rule, INTERVAL_RULES)


def next_interval(previous: int, adjustments: int, committed: bool, max_interval: int, halve: bool = False) -> int:
    """The interval to the next search after a search that changed the step size ``adjustments`` times
    (its cuts, plus its accepted increase in a two-way search).

    ``min(2·L, max_interval)`` after a search that confirmed the carried step size (it accepted its
    first trial and did not increase it); ``1`` after a search that did not commit (gave up, or
    failed). After a search that committed after adjusting the step size: ``1`` (the ``"doubling"``
    rule), or ``max(1, ⌊L / 2^adjustments⌋)`` (``halve``: the ``"halving"`` rule, each adjustment
    halves the interval).
    """
    previous = max(previous, 1)
    if not committed:
        return 1
    if adjustments == 0:
        return min(2 * previous, max_interval)
    if not halve:
        return 1
    return max(1, previous >> min(adjustments, 62))


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


# --------------------------------------------------------------------------------------------------
# The carried state and the two rules over it
# --------------------------------------------------------------------------------------------------

#: counters of :class:`SearchState` (all start at 0)
COUNTER_KEYS = (
    "steps",
    "forward_evaluations",
    "backward_passes",
    "searches",
    "backtracks",
    "increases",
    "rejected_nonfinite",
    "skipped_searches",
    "skipped_steps",
    "gave_up",
    "unaccepted",
)


@dataclass(frozen=True)
class SearchState:
    """Everything the search carries from one optimizer step to the next (plain floats, ints, str).

    ``state_dict()`` holds it as a plain dict (:meth:`to_dict`, in every parameter group under
    ``"search"``), so ``torch.load(..., weights_only=True)`` reads it; the keys of version 0.1.0
    keep their meaning, and keys added since load with their initial values where a saved state
    lacks them (:meth:`from_dict`).

    Attributes:
        step_size: the carried step size ``η`` (the last accepted one, grown when ``growth_per="step"``).
        smoothed_slope, smoothed_decrease: the EMAs ``s`` and ``h`` of the Armijo test.
        step_size_fast, step_size_slow: SaLSa's two EMAs of the accepted step size (rule ``"salsa"``).
        search_interval: ``L``, the current interval between amortized searches.
        steps_until_search: amortized steps left before the next search.
        steps ... unaccepted: the counters (:data:`COUNTER_KEYS`); ``gave_up`` counts the searches that
            gave up or failed, ``unaccepted`` those that cut and passed no trial (gave up, or stopped
            unresolvable after a cut: what ``unaccepted_search`` acts on).
        last_loss, last_trials, last_status, last_anneal: the report of the last step (its first loss,
            averaged over the ranks; its trial evaluations; how it ended; the anneal factor used).
        average_weight, average_step: the total weight of the iterate average's samples and the step
            of the last one (:mod:`alsals.averaging`; 0 when no average is kept).
        averaged_in: the parameters hold the average (``opt.eval()``) instead of the iterate.
        recovery_level: with ``recover``, the accepted step size a search cut from, which the searches
            climb back to (0: nothing to recover).
        displacement, direction_norm: with ``match_displacement``, ``η₁·‖d₁‖`` of the first search
            and ``‖d‖`` of the last measured search (0: not measured).
        last_search_step: the step of the last search (0: none yet).
        decay_start: the step after which the anneal's decay began early (``ALSALS.begin_decay``;
            0: at the anneal's own start).
    """

    step_size: float
    smoothed_slope: float = 0.0
    smoothed_decrease: float = 0.0
    step_size_fast: float = 0.0
    step_size_slow: float = 0.0
    search_interval: int = 1
    steps_until_search: int = 0
    steps: int = 0
    forward_evaluations: int = 0
    backward_passes: int = 0
    searches: int = 0
    backtracks: int = 0
    increases: int = 0
    rejected_nonfinite: int = 0
    skipped_searches: int = 0
    skipped_steps: int = 0
    gave_up: int = 0
    unaccepted: int = 0
    last_loss: float = math.nan
    last_trials: int = 0
    last_status: str = ""
    last_anneal: float = 1.0
    average_weight: float = 0.0
    average_step: int = 0
    averaged_in: bool = False
    recovery_level: float = 0.0
    displacement: float = 0.0
    direction_norm: float = 0.0
    last_search_step: int = 0
    decay_start: int = 0

    @classmethod
    def initial(cls, config: SearchConfig) -> "SearchState":
        """The state before the first step."""
        return cls(step_size=config.initial_step_size)

    def to_dict(self) -> Dict[str, Any]:
        """The state as a plain dict (what ``state_dict()`` saves)."""
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    @classmethod
    def from_dict(cls, saved: Optional[Mapping[str, Any]], config: SearchConfig) -> "SearchState":
        """Rebuild the state from :meth:`to_dict` output, or from a state dict of version 0.1.0 (the
        same keys; its status ``"amortised"`` reads as ``"amortized"``). Missing keys take their
        initial values, except ``last_search_step``, which a state saved before it existed lacks: it
        is reconstructed from the interval in progress (the last search was
        ``search_interval − 1 − steps_until_search`` steps before the last step; later by the number of
        steps skipped since, which did not count down the interval), so that the rules that count
        steps since the last search (``smoothing_per``, ``cut_per``) resume as if it had been saved.
        Unknown keys are ignored."""
        if not saved:
            return cls.initial(config)
        values: Dict[str, Any] = {}
        for name in _STATE_FIELDS:
            if name in saved:
                value = saved[name]
                values[name] = value.item() if hasattr(value, "item") else value
        values.setdefault("step_size", config.initial_step_size)
        if values.get("last_status") == "amortised":
            values["last_status"] = StepKind.AMORTIZED.value
        if "last_search_step" not in values and int(values.get("searches", 0)) > 0:
            since = int(values.get("search_interval", 1)) - 1 - int(values.get("steps_until_search", 0))
            values["last_search_step"] = max(0, int(values.get("steps", 0)) - max(0, since))
        return cls(**values)

    @property
    def counters(self) -> Dict[str, int]:
        """The counters as a dict of ints."""
        return {k: int(getattr(self, k)) for k in COUNTER_KEYS}


_STATE_FIELDS = tuple(f.name for f in fields(SearchState))


@dataclass(frozen=True)
class Plan:
    """What a step will do, decided before its closure runs (from the carried state only).

    Attributes:
        step: this step's number (1-based; it drives the built-in anneal).
        search: run the line search; otherwise an amortized step along the direction with no trial.
        step_size: the grown step size ``clamp(η·γ)``: where the search starts, or the step size of an
            amortized step (with ``recover`` or ``match_displacement``, a search may start higher).
        recovering: the search starts from a recovered step size (``recover``), above ``η·γ``.
        matching: the search starts from the displacement-matched step size, above ``η·γ``.
        measure_direction: the optimizer measures ``‖d‖`` in this search (``match_displacement``).
    """

    step: int
    search: bool
    step_size: float
    recovering: bool = False
    matching: bool = False
    measure_direction: bool = False


class StepKind(str, Enum):
    """How a step ended, besides the end of its search (:class:`SearchStatus`)."""

    #: the first loss or a gradient was not finite: nothing moved
    SKIPPED_NONFINITE = "skipped_nonfinite"
    #: the slope was not finite: the weights stay, the moments advance
    SKIPPED_NONFINITE_SLOPE = "skipped_nonfinite_slope"
    #: no parameter received a gradient (all frozen, or unused): nothing moved
    NO_GRADIENTS = "no_gradients"
    #: an amortized step: the grown step along the direction, no trial
    AMORTIZED = "amortized"
    #: the line search ran (its :class:`SearchResult` says how it ended)
    SEARCHED = "searched"


@dataclass(frozen=True)
class Outcome:
    """What the optimizer reports after a step, for :func:`advance`.

    Attributes:
        kind: how the step ended.
        loss: the first loss (averaged over the ranks).
        evaluations, backward_passes: closure evaluations and backward passes of this step.
        anneal: the anneal factor the step used (``None``: not reached, the step was skipped first).
        slope: the raw slope ``D`` of a searched step.
        result: the search's result (``kind`` is ``SEARCHED``).
        direction_norm: ``‖d‖`` of a searched step whose plan asked for it (NaN otherwise).
    """

    kind: StepKind
    loss: float
    evaluations: int
    backward_passes: int
    anneal: Optional[float] = None
    slope: float = math.nan
    result: Optional[SearchResult] = None
    direction_norm: float = math.nan


def plan(state: SearchState, config: SearchConfig, amortization: Optional[AmortizationConfig]) -> Plan:
    """Decide the next step from the carried state alone: search or not, from which step size.

    Every step of the first ``warmup_searches`` searches, and every step without amortization,
    searches; afterwards a step searches when ``steps_until_search`` has run out. A search starts
    from ``clamp(η·γ)``, or with ``recover`` below the recovery level from ``min(η/β_b, level)``.
    """
    search = (
        amortization is None
        or state.searches < amortization.warmup_searches
        or state.steps_until_search <= 0
    )
    grown = config.grow(state.step_size)
    if search and config.recover and state.recovery_level > grown:
        recovered = config.clamp(min(state.step_size / config.backtrack, state.recovery_level))
        return Plan(step=state.steps + 1, search=True, step_size=recovered, recovering=True)
    window = amortization.warmup_searches if amortization is not None else DISPLACEMENT_WARMUP
    measuring = search and (
        config.match_displacement == "always"
        or (config.match_displacement == "warmup" and state.searches < window)
    )
    if measuring and state.displacement > 0.0 and state.direction_norm > 0.0:
        matched = config.clamp(state.displacement / state.direction_norm)
        if matched > grown:
            return Plan(step=state.steps + 1, search=True, step_size=matched, matching=True, measure_direction=True)
    return Plan(step=state.steps + 1, search=search, step_size=grown, measure_direction=measuring)


def next_recovery_level(state: SearchState, result: SearchResult, config: SearchConfig) -> float:
    """The recovery level after a search (``recover``): raised to the carried step size when a search
    cut it and an earlier search had accepted it, cleared once growth alone reaches it (``η·γ`` at or
    above the level: the next search would not start from a recovered step size anyway)."""
    if not config.recover:
        return 0.0
    level = state.recovery_level
    if result.backtracks > 0 and state.searches > 0 and result.status.commits:
        level = max(level, state.step_size)
    if config.grow(result.step_size) >= level:
        return 0.0
    return level


def steps_since_search(state: SearchState, step: int) -> int:
    """``L = step − last_search_step``, the steps since the last search (the first search: since the
    start), at least 1: what ``smoothing_per="step"`` and ``cut_per="step"`` count."""
    return max(1, step - state.last_search_step)


def for_search(config: SearchConfig, state: SearchState, step: int) -> SearchConfig:
    """The search's rules for a search at ``step``: ``config`` itself, or with ``smoothing_per="step"``
    the smoothing ``β_s^L`` for the ``L = step − last_search_step`` steps since the last search (the
    first search: since the start), so that the EMAs' memory is counted in steps."""
    if config.smoothing_per != "step" or config.smoothing == 0.0:
        return config
    gap = steps_since_search(state, step)
    return config if gap == 1 else replace(config, smoothing=config.smoothing ** gap)


def is_unaccepted(result: SearchResult) -> bool:
    """Whether a search cut and ended without the condition holding at any of its trials: it gave up,
    or it stopped unresolvable, after at least one cut (what ``unaccepted_search`` is about)."""
    return result.backtracks > 0 and result.status in (SearchStatus.GAVE_UP, SearchStatus.UNRESOLVABLE)


def restarts(state: SearchState, result: SearchResult, config: SearchConfig) -> bool:
    """Whether the next search restarts (``unaccepted_search="restart"``): this one cut and passed no
    trial (:func:`is_unaccepted`) with a smoothing memory to empty (``β_s > 0`` and ``s``, ``h`` not
    both 0). One that failed with an empty memory (the first search, the one right after a restart,
    or any with ``β_s = 0``) tested the batch's own classical condition, whose cuts are evidence about
    the step size: it is carried as with ``"keep"``, so that batches that fail that test too do not
    restart every search from the same step size."""
    memory = config.smoothing > 0.0 and (state.smoothed_slope != 0.0 or state.smoothed_decrease != 0.0)
    return config.unaccepted_search == "restart" and memory and is_unaccepted(result)


def carried_after_cut(state: SearchState, plan: Plan, result: SearchResult, config: SearchConfig) -> float:
    """The step size a search carries forward: ``result.step_size``, or with ``cut_per="step"``, after a
    search that committed a step size below the grown one ``clamp(η·γ)`` (factor ``r``),
    ``clamp(η·γ·r^L)``: the cut counted once for every step it stands for (:class:`SearchConfig`,
    ``cut_per``). ``L`` is :func:`steps_since_search`, at most the interval that just ended
    (``search_interval``): after the warm-up, steps skipped for a non-finite loss, which did not grow
    the step size, are not counted. A search that gave up or failed, or that cut nothing, carries its
    step size as it is; one that stopped because the loss could no longer resolve a smaller step
    (``UNRESOLVABLE``) after cuts counts as one that cut. (A search that restarts, :func:`restarts`,
    carries the step size it started from instead; :func:`advance` decides that.)"""
    accepted = result.step_size
    if config.cut_per != "step" or result.status in (SearchStatus.GAVE_UP, SearchStatus.FAILED):
        return accepted
    gap = min(steps_since_search(state, plan.step), max(state.search_interval, 1))
    grown = config.grow(state.step_size)
    if gap <= 1 or not 0.0 < accepted < grown:
        return accepted
    return config.clamp(grown * (accepted / grown) ** gap)


def next_smoothed_slope(state: SearchState, slope: float, config: SearchConfig) -> float:
    """``s ← β_s·s + (1 − β_s)·D``: the smoothed slope a search with raw slope ``slope`` tests against."""
    return smooth(state.smoothed_slope, slope, config.smoothing)


def advance(
    state: SearchState,
    plan: Plan,
    outcome: Outcome,
    config: SearchConfig,
    amortization: Optional[AmortizationConfig],
) -> SearchState:
    """The state after a step: fold the step's :class:`Outcome` into the carried state.

    - every step: the step counter, evaluation counters and the last-step report;
    - a skipped step (non-finite loss, gradient or slope): ``skipped_steps``, nothing else;
    - an amortized step: one step closer to the next search; the grown step size is kept when
      ``growth_per="step"``;
    - a searched step: the accepted step size, the smoothed slope and (when it commits) the
      smoothed decrease, the search counters, and the next search interval (:func:`next_interval`
      or, for the ``"salsa"`` rule, :func:`search_interval` of the step-size EMAs).
    """
    kind = outcome.kind
    common: Dict[str, Any] = dict(
        steps=plan.step,
        forward_evaluations=state.forward_evaluations + outcome.evaluations,
        backward_passes=state.backward_passes + outcome.backward_passes,
        last_loss=outcome.loss,
        last_trials=0,
        last_status=kind.value,
    )
    if outcome.anneal is not None:
        common["last_anneal"] = outcome.anneal
    if kind in (StepKind.SKIPPED_NONFINITE, StepKind.SKIPPED_NONFINITE_SLOPE):
        return replace(state, **common, skipped_steps=state.skipped_steps + 1)
    if kind is StepKind.NO_GRADIENTS:
        return replace(state, **common)
    if kind is StepKind.AMORTIZED:
        kept = plan.step_size if config.growth_per == "step" else state.step_size
        return replace(
            state, **common, step_size=kept,
            steps_until_search=state.steps_until_search - 1,
            skipped_searches=state.skipped_searches + 1,
        )
    result = outcome.result
    if result is None:
        raise ValueError("a searched step's outcome needs its SearchResult")
    rules = for_search(config, state, plan.step)
    status = result.status
    common.update(last_trials=result.trials, last_status=status.value)
    # A restart (SearchConfig, unaccepted_search): the step size where the search started, not a start
    # raised by recover or matching, and the memory that failed every trial emptied.
    restarted = restarts(state, result, config)
    searched = replace(
        state, **common,
        step_size=config.grow(state.step_size) if restarted else carried_after_cut(state, plan, result, config),
        smoothed_slope=0.0 if restarted else next_smoothed_slope(state, outcome.slope, rules),
        smoothed_decrease=0.0 if restarted else (
            result.smoothed_decrease if status.commits else state.smoothed_decrease),
        searches=state.searches + 1,
        backtracks=state.backtracks + result.backtracks,
        increases=state.increases + result.increases,
        rejected_nonfinite=state.rejected_nonfinite + result.nonfinite_trials,
        gave_up=state.gave_up + (status in (SearchStatus.GAVE_UP, SearchStatus.FAILED)),
        unaccepted=state.unaccepted + is_unaccepted(result),
        recovery_level=next_recovery_level(state, result, config),
        last_search_step=plan.step,
    )
    if math.isfinite(outcome.direction_norm) and outcome.direction_norm > 0.0:
        searched = replace(searched, direction_norm=outcome.direction_norm)
        if state.searches == 0 and status.commits:
            searched = replace(searched, displacement=result.step_size * outcome.direction_norm)
    if amortization is None:
        return searched
    if restarted:  # the restored step size is untested: search at the next step (every interval rule)
        return replace(searched, search_interval=1, steps_until_search=0)
    if amortization.rule in ("doubling", "halving"):
        committed = status.commits and status is not SearchStatus.GAVE_UP
        # An increase, a search started above η·γ (recovered or matched) that held, or a step size left
        # well below the batch's boundary, says the carried step size was off, as a cut does: each
        # shortens the interval.
        raised_start = int((plan.recovering or plan.matching) and result.backtracks == 0)
        adjustments = result.backtracks + result.increases + int(result.unconfirmed) + raised_start
        interval = next_interval(
            state.search_interval, adjustments, committed, amortization.max_interval,
            halve=amortization.rule == "halving",
        )
        return replace(searched, search_interval=interval, steps_until_search=interval - 1)
    if searched.searches == 1:
        fast = slow = result.step_size
    else:
        fast = smooth(state.step_size_fast, result.step_size, amortization.fast)
        slow = smooth(state.step_size_slow, result.step_size, amortization.slow)
    interval = search_interval(fast, slow, amortization.max_interval)
    return replace(
        searched, step_size_fast=fast, step_size_slow=slow, search_interval=interval,
        steps_until_search=interval - 1,
    )


def __getattr__(name: str) -> Any:
    # Renamed in 0.2 (one spelling: "amortized", as the optimizer's keyword).
    if name == "AmortisationConfig":
        import warnings

        warnings.warn(
            "alsals.search.AmortisationConfig is now AmortizationConfig", DeprecationWarning, stacklevel=2
        )
        return AmortizationConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
