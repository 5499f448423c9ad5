"""The line search as pure logic, and property tests (hypothesis) on its guarantees."""

import copy
import functools
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alsals
from alsals.search import SearchConfig as _SearchConfig
from alsals.search import (
    SearchStatus,
    armijo_holds,
    backtrack,
    effective_c,
    search_interval,
    smooth,
)

# The one-way search with fixed cuts (version 0.1's), unless a test asks for interpolation or an
# increase itself: most checks below are about the classical rule.
SearchConfig = functools.partial(_SearchConfig, interpolate=False, max_increase=1.0)


def run_search(profile, step_size, slope, smoothed_slope, smoothed_decrease, config):
    """Drive :func:`backtrack` on a synthetic decrease profile; record the requested step sizes."""
    asked = []

    def decrease_at(eta):
        asked.append(eta)
        return profile(eta)

    result = backtrack(profile(step_size), step_size, slope, smoothed_slope, smoothed_decrease, config, decrease_at)
    return result, asked


def test_effective_c_swaps_on_ascent():
    assert effective_c(0.3, 1.0, True) == 0.3
    assert effective_c(0.3, 0.0, True) == pytest.approx(1 / 0.3)
    assert effective_c(0.3, -2.0, True) == pytest.approx(1 / 0.3)
    assert effective_c(0.3, -2.0, False) == 0.3


def test_accepts_first_trial_when_condition_holds():
    config = SearchConfig(c=0.5, smoothing=0.0)
    result, asked = run_search(lambda eta: 1.0 * eta, 0.1, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.ACCEPTED
    assert result.step_size == 0.1 and result.trials == 1 and asked == []


def test_backtracks_until_armijo_holds():
    # Quadratic f(w - eta d) with slope 1 and curvature 10: decrease = eta - 5 eta^2; classical Armijo
    # with c = 0.5 holds for eta <= 0.1.
    config = SearchConfig(c=0.5, smoothing=0.0, backtrack=0.5)
    result, asked = run_search(lambda eta: eta - 5 * eta**2, 1.0, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.ACCEPTED
    assert asked == [0.5, 0.25, 0.125, 0.0625]
    assert result.step_size == 0.0625 and result.backtracks == 4


def test_nonfinite_trials_shrink_and_are_counted():
    config = SearchConfig(c=0.1, smoothing=0.0, backtrack=0.5)
    result, _ = run_search(lambda eta: None if eta > 0.3 else eta, 1.0, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.ACCEPTED
    assert result.nonfinite_trials == 2 and result.step_size == 0.25


def test_all_nan_stops_at_floor_and_fails():
    config = SearchConfig(min_step_size=1e-3, backtrack=0.5, max_backtracks=1000)
    result, asked = run_search(lambda eta: None, 1.0, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.FAILED and not result.status.commits
    assert result.step_size == 1e-3
    assert len(asked) == math.ceil(math.log2(1e3))  # bounded by the floor, not by max_backtracks
    assert result.smoothed_decrease == 0.0  # unchanged: nothing is committed


def test_max_backtracks_bounds_the_search():
    config = SearchConfig(max_backtracks=5, min_step_size=1e-30)
    result, asked = run_search(lambda eta: -1.0, 1.0, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.GAVE_UP and result.status.commits
    assert len(asked) == 5 and result.trials == 6


def test_zero_slope_accepts_without_searching():
    result, asked = run_search(lambda eta: -1e-3, 0.1, 0.0, 0.5, 0.0, SearchConfig())
    assert result.status is SearchStatus.ZERO_SLOPE and asked == []


def test_unresolvable_decrease_stops_the_search():
    # A constant loss with a positive smoothed slope: shrinking cannot help.
    result, asked = run_search(lambda eta: 0.0, 0.1, 1.0, 1.0, -1.0, SearchConfig())
    assert result.status is SearchStatus.UNRESOLVABLE and asked == []


def test_search_interval_rule():
    assert search_interval(1.0, 1.0, 10) == 10  # r = 1: the step size is not moving
    assert search_interval(1.5, 1.0, 10) == 2  # 1/(r-1) = 2
    assert search_interval(1.0, 1.5, 10) == 2  # folded above 1
    assert search_interval(3.0, 1.0, 10) == 1
    assert search_interval(1.2, 1.0, 10) == 5
    assert search_interval(0.0, 1.0, 10) == 1  # not initialised yet
    assert search_interval(1.0 + 1e-300, 1.0, 10) == 10


decrease_profiles = st.one_of(
    # quadratic along the direction with noise-free slope a and curvature b (may be negative)
    st.tuples(st.floats(-10, 10), st.floats(-100, 100)).map(lambda ab: (lambda eta: ab[0] * eta - ab[1] * eta**2)),
    # a loss that blows up (non-finite) beyond a threshold
    st.tuples(st.floats(1e-6, 10), st.floats(-5, 5)).map(lambda tb: (lambda eta: None if eta > tb[0] else tb[1] * eta)),
    st.just(lambda eta: None),
    st.just(lambda eta: 0.0),
)


@settings(max_examples=300, deadline=None)
@given(
    profile=decrease_profiles,
    eta_exp=st.floats(-8, 1),
    slope=st.floats(-10, 10) | st.just(0.0),
    s=st.floats(-10, 10),
    h=st.floats(-10, 10),
    c=st.floats(0.01, 0.99),
    beta_s=st.floats(0.0, 0.999),
    beta_b=st.floats(0.1, 0.95),
    min_exp=st.floats(-12, -6),
    max_backtracks=st.integers(0, 200),
)
def test_accepted_steps_satisfy_armijo_or_sit_at_the_floor(
    profile, eta_exp, slope, s, h, c, beta_s, beta_b, min_exp, max_backtracks
):
    config = SearchConfig(
        c=c, smoothing=beta_s, backtrack=beta_b, min_step_size=10.0**min_exp, max_step_size=10.0, max_backtracks=max_backtracks
    )
    start = config.clamp(10.0**eta_exp)
    result, asked = run_search(profile, start, slope, s, h, config)
    # bounds
    assert config.min_step_size <= result.step_size <= config.max_step_size
    assert result.step_size <= start
    assert result.trials == len(asked) + 1 <= max_backtracks + 1
    assert all(a < b for a, b in zip(asked, [start] + asked))  # strictly shrinking
    # the acceptance rule
    c_eff = effective_c(c, s, True)
    last = profile(result.step_size)
    if result.status is SearchStatus.ACCEPTED:
        assert armijo_holds(smooth(h, last, beta_s), result.step_size, c_eff, s)
        assert result.smoothed_decrease == smooth(h, last, beta_s)
    elif result.status in (SearchStatus.GAVE_UP, SearchStatus.FAILED):
        assert result.step_size == config.min_step_size or result.backtracks == max_backtracks
        assert (last is None) == (result.status is SearchStatus.FAILED)
    elif result.status is SearchStatus.ZERO_SLOPE:
        assert slope == 0.0
    else:
        assert result.status is SearchStatus.UNRESOLVABLE and last == 0.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 30.0),
    c=st.floats(0.05, 0.9),
    initial=st.floats(1e-4, 1.0),
    amortized=st.booleans(),
)
def test_optimizer_steps_respect_the_rule_and_bounds(seed, scale, c, initial, amortized):
    """Through the optimizer: after every searched step, the accepted step size satisfies the
    smoothed Armijo condition (read from the carried state), or the search failed at its floor or
    backtrack limit, or it gave up and carries the step size it started from; the step size always
    stays within its bounds."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 5, generator=gen) * scale
    y = torch.randn(64, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = alsals.ALSALS(
        model.parameters(), c=c, initial_step_size=initial, min_step_size=1e-6, max_step_size=2.0,
        max_backtracks=20, amortized=amortized,
    )
    for _ in range(15):
        idx = torch.randint(0, 64, (16,), generator=gen)
        before = opt.step_size
        memory = opt.search_state["smoothed_slope"] != 0.0 or opt.search_state["smoothed_decrease"] != 0.0
        opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
        state = opt.search_state
        eta = state["step_size"]
        assert 1e-6 <= eta <= 2.0
        if state["last_status"] == "accepted":
            c_eff = effective_c(c, state["smoothed_slope"], True)
            assert armijo_holds(state["smoothed_decrease"], eta, c_eff, state["smoothed_slope"])
        elif state["last_status"] == "gave_up" and memory:  # restarts from where it started
            assert eta == opt.config.search.grow(before)
        elif state["last_status"] in ("gave_up", "failed"):
            assert eta == 1e-6 or state["last_trials"] == 21


@pytest.mark.parametrize("halve", [False, True])
def test_interval_doubles_after_a_search_that_confirms_the_step_size(halve):
    from alsals.search import next_interval

    assert [next_interval(L, 0, True, 10, halve=halve) for L in (1, 2, 4, 8, 10)] == [2, 4, 8, 10, 10]
    assert next_interval(0, 0, True, 10, halve=halve) == 2
    # a search that did not commit (gave up / failed): search again at the next step
    assert next_interval(16, 0, False, 20, halve=halve) == 1
    assert next_interval(16, 3, False, 20, halve=halve) == 1


def test_doubling_rule_resets_and_halving_rule_halves_per_cut():
    from alsals.search import next_interval

    assert [next_interval(16, k, True, 20) for k in (1, 2, 5)] == [1, 1, 1]
    assert [next_interval(16, k, True, 20, halve=True) for k in (1, 2, 3, 4, 5, 100)] == [8, 4, 2, 1, 1, 1]
    assert next_interval(20, 1, True, 20, halve=True) == 10
    assert next_interval(1, 1, True, 20, halve=True) == 1


# ---------------------------------------------------------------------------------------------
# The carried state: plan and advance, as pure functions
# ---------------------------------------------------------------------------------------------

from alsals.search import (  # noqa: E402
    AmortizationConfig,
    Outcome,
    SearchResult,
    SearchState,
    StepKind,
    advance,
    plan,
)


def searched(state, config, amortization, step_size, backtracks=0, status=SearchStatus.ACCEPTED, slope=1.0):
    p = plan(state, config, amortization)
    result = SearchResult(step_size, 0.5, status, backtracks + 1, backtracks, 0)
    return advance(state, p, Outcome(StepKind.SEARCHED, 1.0, backtracks + 2, 1, anneal=1.0, slope=slope, result=result),
                   config, amortization)


def test_plan_needs_only_the_carried_state():
    config, amortization = SearchConfig(), AmortizationConfig()
    state = SearchState.initial(config)
    first = plan(state, config, amortization)
    assert first.search and first.step == 1 and first.step_size == config.grow(config.initial_step_size)
    for _ in range(10):  # the warm-up searches, each accepting its first trial: the interval doubles
        state = searched(state, config, amortization, state.step_size)
    assert state.search_interval == 20 and state.steps_until_search == 19
    assert not plan(state, config, amortization).search


def test_advance_after_an_amortized_step_keeps_the_grown_step_size():
    config, amortization = SearchConfig(), AmortizationConfig()
    state = SearchState(step_size=0.1, searches=10, steps_until_search=3, steps=10)
    p = plan(state, config, amortization)
    after = advance(state, p, Outcome(StepKind.AMORTIZED, 0.7, 1, 1, anneal=1.0), config, amortization)
    assert after.step_size == p.step_size and after.steps_until_search == 2 and after.skipped_searches == 1
    assert after.steps == 11 and after.last_status == "amortized" and after.last_loss == 0.7
    per_search = SearchConfig(growth_per="search")
    assert advance(state, p, Outcome(StepKind.AMORTIZED, 0.7, 1, 1), per_search, amortization).step_size == 0.1


def test_advance_after_a_skipped_step_counts_it_only():
    config = SearchConfig()
    state = SearchState(step_size=0.2, smoothed_slope=0.3, steps=4)
    p = plan(state, config, None)
    after = advance(state, p, Outcome(StepKind.SKIPPED_NONFINITE, float("nan"), 1, 1), config, None)
    assert (after.step_size, after.smoothed_slope, after.skipped_steps, after.steps) == (0.2, 0.3, 1, 5)
    no_grad = advance(state, p, Outcome(StepKind.NO_GRADIENTS, 1.0, 1, 0), config, None)
    assert no_grad.skipped_steps == 0 and no_grad.last_status == "no_gradients"


def test_state_round_trips_through_a_plain_dict_and_reads_version_0_1_0():
    state = SearchState(step_size=0.3, searches=4, last_status="accepted")
    assert SearchState.from_dict(state.to_dict(), SearchConfig()) == state
    old = dict(state.to_dict(), last_status="amortised")
    assert SearchState.from_dict(old, SearchConfig()).last_status == "amortized"
    assert SearchState.from_dict(None, SearchConfig(initial_step_size=0.2)).step_size == 0.2


# ---------------------------------------------------------------------------------------------
# Interpolated cuts and the two-way search
# ---------------------------------------------------------------------------------------------

from alsals.search import (  # noqa: E402
    INCREASE_THRESHOLD,
    MIN_CUT,
    boundary_ratio,
    condition_holds,
    next_cut,
    next_interval,
    smoothed_candidate,
)

from helpers import batches, mlp, regression_data  # noqa: E402


def quadratic(slope, curvature):
    """The decrease of the batch loss along the direction: Δ(η) = η·D − ½·κ·η²."""
    return lambda eta: eta * slope - 0.5 * curvature * eta**2


@pytest.mark.parametrize("c", [0.1, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("eta", [1e-3, 0.05, 0.2, 3.0])
def test_the_boundary_ratio_is_exact_on_a_quadratic_without_smoothing(c, eta):
    slope, curvature = 2.0, 10.0
    boundary = 2 * (1 - c) * slope / curvature  # Δ(x) ≥ c·x·D  ⇔  x ≤ 2(1 − c)D/κ
    ratio = boundary_ratio(quadratic(slope, curvature)(eta), eta, slope, slope, 0.0, c, 0.0)
    assert ratio == pytest.approx(boundary / eta, rel=1e-9)


@pytest.mark.parametrize("rate", [False, True], ids=["decrease", "rate"])
@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("carried", [-0.3, 0.0, 0.02, 0.5])
def test_the_boundary_ratio_is_where_the_smoothed_condition_turns_on_a_quadratic(beta, carried, rate):
    slope, curvature, c, eta = 1.0, 20.0, 0.5, 0.01
    smoothed_slope = 0.8
    profile = quadratic(slope, curvature)
    config = SearchConfig(c=c, smoothing=beta, rate_smoothing=rate)
    ratio = boundary_ratio(profile(eta), eta, slope, smoothed_slope, carried, c, beta, rate)

    def holds(x):
        return condition_holds(smoothed_candidate(carried, profile(x), x, config), x, c, smoothed_slope, config)

    if ratio == 0.0:
        assert not any(holds(x) for x in (1e-6, 1e-4, 1e-3, 1e-2, 0.1))
    else:
        boundary = ratio * eta
        assert holds(boundary * (1 - 1e-6)) and not holds(boundary * (1 + 1e-6))


def test_smoothing_caps_how_far_one_search_can_increase():
    """β_s = 0.9, c = 0.5, a nearly flat loss and h built at the current step size: the model allows
    about 0.9/(0.5 − 0.1) = 2.25 times the step, not the unsmoothed boundary."""
    eta, slope, curvature = 0.01, 1.0, 1e-3
    profile = quadratic(slope, curvature)  # boundary without smoothing D/κ = 1000: 1e5 times the step
    carried = profile(eta)  # h ≈ the decrease at η
    ratio = boundary_ratio(profile(eta), eta, slope, slope, carried, 0.5, 0.9)
    assert ratio == pytest.approx(2.25, rel=1e-2)
    unsmoothed = boundary_ratio(profile(eta), eta, slope, slope, 0.0, 0.5, 0.0)
    assert unsmoothed == pytest.approx(slope / curvature / eta, rel=1e-6)


def test_the_boundary_ratio_declines_where_the_model_does_not_apply():
    assert boundary_ratio(None, 0.1, 1.0, 1.0, 0.0, 0.5, 0.0) is None  # a non-finite trial
    assert boundary_ratio(0.1, 0.1, -1.0, -1.0, 0.0, 0.5, 0.0) is None  # an uphill direction
    assert boundary_ratio(0.1, 0.1, 0.0, 0.0, 0.0, 0.5, 0.0) is None
    assert boundary_ratio(0.2, 0.1, 1.0, 1.0, 0.0, 0.5, 0.0) == math.inf  # more than linear: no curvature seen


def test_interpolated_cuts_jump_to_the_boundary_and_are_safeguarded():
    config = SearchConfig(c=0.5, smoothing=0.0, interpolate=True)
    slope, curvature = 1.0, 10.0  # boundary 0.1
    profile = quadratic(slope, curvature)

    def cut(eta, cfg=config):
        return next_cut(profile(eta), eta, slope, slope, 0.0, 0.5, cfg)

    assert cut(0.2) == pytest.approx(0.5)  # exactly to 0.1
    assert cut(100.0) == MIN_CUT  # at most a decade
    assert cut(0.105) == config.backtrack  # at least β_b
    assert next_cut(None, 0.2, slope, slope, 0.0, 0.5, config) == config.backtrack
    assert cut(0.2, SearchConfig(c=0.5, smoothing=0.0)) == 0.9  # interpolate=False: the fixed factor


def test_an_interpolating_search_needs_far_fewer_trials_than_fixed_cuts():
    profile = quadratic(1.0, 1e4)  # boundary 1e-4, the first trial at 0.1: three decades too far
    fixed, _ = run_search(profile, 0.1, 1.0, 1.0, 0.0, SearchConfig(c=0.5, smoothing=0.0))
    interpolated, _ = run_search(profile, 0.1, 1.0, 1.0, 0.0, SearchConfig(c=0.5, smoothing=0.0, interpolate=True))
    assert fixed.status is interpolated.status is SearchStatus.ACCEPTED
    assert fixed.trials >= 60  # 0.9 per trial
    assert interpolated.trials <= 5
    assert 0.9e-4 <= interpolated.step_size <= 1e-4 * (1 + 1e-9)


@pytest.mark.parametrize("boundary_factor", [1.5, 3.0, 10.0])
def test_the_two_way_search_tries_one_increase_only_when_the_model_predicts_room(boundary_factor):
    eta = 0.01
    curvature = 1.0 / (boundary_factor * eta)  # c = 0.5, no smoothing: boundary D/κ = boundary_factor·η
    config = SearchConfig(c=0.5, smoothing=0.0, max_increase=4.0)
    result, asked = run_search(quadratic(1.0, curvature), eta, 1.0, 1.0, 0.0, config)
    assert result.status is SearchStatus.ACCEPTED and result.backtracks == 0
    if boundary_factor < INCREASE_THRESHOLD:  # confirmed: no extra trial
        assert asked == [] and result.increases == 0 and result.step_size == eta and not result.unconfirmed
    else:
        expected = eta * min(0.9 * boundary_factor, 4.0)  # β_b of the boundary, at most max_increase
        assert asked == [pytest.approx(expected)] and result.trials == 2
        assert result.increases == 1 and result.step_size == pytest.approx(expected)


def test_with_smoothing_the_increase_lands_inside_the_smoothed_boundary():
    eta, slope = 0.01, 1.0
    profile = quadratic(slope, 1e-3)  # almost flat
    config = SearchConfig(c=0.5, smoothing=0.9, max_increase=4.0)
    result, asked = run_search(profile, eta, slope, slope, profile(eta), config)
    assert result.increases == 1 and len(asked) == 1
    assert result.step_size == pytest.approx(0.9 * 2.25 * eta, rel=1e-2)  # β_b of the smoothed boundary, not 4η


def test_an_increase_held_back_by_the_smoothing_leaves_the_step_unconfirmed():
    eta, slope = 0.01, 1.0
    profile = quadratic(slope, 1e-3)  # the batch's boundary is far, but h was built at half the step
    config = SearchConfig(c=0.5, smoothing=0.9, max_increase=4.0)
    result, asked = run_search(profile, eta, slope, slope, profile(eta / 2), config)
    assert asked == [] and result.increases == 0 and result.unconfirmed
    assert result.step_size == eta


def test_a_rejected_increase_keeps_the_first_trial():
    eta = 0.01

    def profile(x):  # quadratic up to 2η, then the loss rises sharply (the model was wrong)
        return x - 0.5 * x**2 / (10 * eta) if x <= 2 * eta else -1.0

    config = SearchConfig(c=0.5, smoothing=0.0, max_increase=4.0)
    result, asked = run_search(profile, eta, 1.0, 1.0, 0.0, config)
    assert asked == [pytest.approx(4 * eta)]
    assert result.status is SearchStatus.ACCEPTED and result.step_size == eta
    assert result.increases == 0 and result.trials == 2 and result.backtracks == 0 and result.unconfirmed


def test_an_increase_or_an_unconfirmed_step_halves_the_interval_as_a_cut_does():
    assert next_interval(8, 0, True, 20, halve=True) == 16
    assert next_interval(8, 1, True, 20, halve=True) == 4  # one cut, one increase, or unconfirmed
    config = SearchConfig(max_increase=4.0)
    amortization = AmortizationConfig(warmup_searches=0)
    state = SearchState(step_size=0.01, search_interval=8, searches=12)
    for result, interval in (
        (SearchResult(0.02, 0.0, SearchStatus.ACCEPTED, 2, 0, 0, increases=1), 4),
        (SearchResult(0.01, 0.0, SearchStatus.ACCEPTED, 1, 0, 0, unconfirmed=True), 4),
        (SearchResult(0.01, 0.0, SearchStatus.ACCEPTED, 1, 0, 0), 16),
    ):
        p = plan(state, config, amortization)
        outcome = Outcome(StepKind.SEARCHED, 1.0, 2, 1, anneal=1.0, slope=1.0, result=result)
        after = advance(state, p, outcome, config, amortization)
        assert after.search_interval == interval
        assert after.increases == result.increases


@pytest.mark.parametrize("increase_test", ["smoothed", "batch"])
def test_the_two_way_search_recovers_a_step_size_far_below_the_boundary(increase_test):
    """Started far too small (as after a first search that collapsed on Adam's sign-like step-1
    direction), the two-way search climbs to the Armijo boundary in a few searches; the one-way
    search can only grow by γ = 1/0.999 per step."""
    X, y = regression_data()

    def run(**kwargs):
        model = mlp()
        opt = alsals.ALSALS(model.parameters(), initial_step_size=1e-5, **kwargs)
        for idx in batches(len(X), 32, 40):
            opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
        return opt

    one_way = run(interpolate=False, max_increase=1.0)
    two_way = run(interpolate=True, max_increase=4.0, increase_test=increase_test)
    assert one_way.step_size < 1.1e-5 and one_way.counters["increases"] == 0
    assert two_way.step_size > 100 * one_way.step_size
    assert two_way.counters["increases"] >= 4


def test_rate_smoothing_lets_a_search_increase_without_the_lag_of_the_smoothed_decrease():
    """h built at a smaller step holds a larger one back; the decrease per unit step does not."""
    eta, slope = 0.01, 1.0
    profile = quadratic(slope, 1e-3)  # nearly flat: the batch's boundary is far
    decrease_rate_at_half = profile(eta / 2) / (eta / 2)
    lagging, asked_lagging = run_search(profile, eta, slope, slope, profile(eta / 2), SearchConfig(max_increase=4.0))
    rate, asked_rate = run_search(
        profile, eta, slope, slope, decrease_rate_at_half, SearchConfig(max_increase=4.0, rate_smoothing=True)
    )
    assert lagging.increases == 0 and asked_lagging == [] and lagging.unconfirmed
    assert rate.increases == 1 and rate.step_size == pytest.approx(4 * eta)


def test_a_batch_confirmed_increase_passes_where_the_lagging_smoothed_condition_holds_it_back():
    """increase_test="batch": h built at half the step no longer holds a larger step back; it is moved
    to the larger step, and the state carries the moved value."""
    eta, slope = 0.01, 1.0
    profile = quadratic(slope, 1e-3)  # nearly flat: the batch's boundary is far
    h = profile(eta / 2)
    config = SearchConfig(max_increase=4.0, increase_test="batch")
    result, asked = run_search(profile, eta, slope, slope, h, config)
    assert asked == [pytest.approx(4 * eta)]  # β_b of the (far) batch boundary, capped at max_increase
    assert result.increases == 1 and result.step_size == pytest.approx(4 * eta) and not result.unconfirmed
    assert result.smoothed_decrease == pytest.approx(0.9 * h * 4.0 + 0.1 * profile(4 * eta))


def test_a_batch_confirmed_increase_needs_a_real_decrease_on_this_batch():
    """The smoothed condition passes a step that raises the loss on credit (β_s·h outweighs it); the
    batch's own Armijo condition does not, so a batch-confirmed increase is refused there."""
    eta, slope = 0.01, 1.0

    def profile(x):  # flat up to 2η, then the loss rises by a little
        return x if x <= 2 * eta else -0.1 * x

    h = 10.0 * eta  # a large carried decrease: the credit
    smoothed = SearchConfig(max_increase=4.0)
    batch = SearchConfig(max_increase=4.0, increase_test="batch")
    on_credit, _ = run_search(profile, eta, slope, slope, h, smoothed)
    confirmed, asked = run_search(profile, eta, slope, slope, h, batch)
    assert on_credit.increases == 1 and on_credit.step_size > 2 * eta  # the smoothed test let it through
    assert len(asked) == 1 and confirmed.increases == 0 and confirmed.step_size == eta
    assert confirmed.unconfirmed and confirmed.trials == 2


def test_the_increase_test_is_validated():
    with pytest.raises(ValueError, match="increase_test"):
        SearchConfig(increase_test="raw")
    with pytest.raises(ValueError, match="increase_test"):
        alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))], increase_test="both")
    with pytest.raises(ValueError, match="max_increase > 1"):  # no larger trial to test without it
        alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))], increase_test="batch")
    alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))], increase_test="batch", max_increase=4.0)


def _searched(state, config, result, amortization=None):
    """One searched step folded into ``state`` (the plan made from ``state``)."""
    p = plan(state, config, amortization)
    outcome = Outcome(StepKind.SEARCHED, 1.0, result.trials, 1, anneal=1.0, slope=1.0, result=result)
    return p, advance(state, p, outcome, config, amortization)


def test_recover_remembers_an_accepted_step_size_that_a_search_cut_and_climbs_back_to_it():
    config = SearchConfig(recover=True, backtrack=0.9)
    # the first search cuts from eta0, which no search had accepted: nothing to recover
    first = SearchResult(0.01, 0.0, SearchStatus.ACCEPTED, 23, 22, 0)
    _, state = _searched(SearchState.initial(config), config, first)
    assert state.recovery_level == 0.0
    # a later search cuts the accepted (and grown) 0.01 four times
    _, state = _searched(state, config, SearchResult(0.01 * 0.9**4, 0.0, SearchStatus.ACCEPTED, 5, 4, 0))
    assert state.recovery_level == pytest.approx(0.01)
    climbed = []
    for _ in range(10):
        p = plan(state, config, None)
        climbed.append(p.step_size)
        if not p.recovering:
            break
        assert p.step_size == pytest.approx(min(state.step_size / 0.9, 0.01))  # one β_b per search
        _, state = _searched(state, config, SearchResult(p.step_size, 0.0, SearchStatus.ACCEPTED, 1, 0, 0))
    assert climbed[:4] == pytest.approx([0.01 * 0.9**3, 0.01 * 0.9**2, 0.01 * 0.9, 0.01])
    assert state.step_size == pytest.approx(0.01) and state.recovery_level == 0.0  # reached: cleared
    assert not plan(state, config, None).recovering


def test_recover_only_changes_where_searches_start_and_a_recovery_shortens_the_interval():
    config = SearchConfig(recover=True)
    amortization = AmortizationConfig(warmup_searches=0)
    state = SearchState(step_size=0.005, recovery_level=0.01, searches=20, search_interval=8, steps_until_search=3)
    amortized = plan(state, config, amortization)
    assert not amortized.search and not amortized.recovering
    assert amortized.step_size == pytest.approx(0.005 / 0.999)  # amortized steps grow by γ only
    due = replace(state, steps_until_search=0)
    p, after = _searched(due, config, SearchResult(0.005 / 0.9, 0.0, SearchStatus.ACCEPTED, 1, 0, 0), amortization)
    assert p.recovering and p.step_size == pytest.approx(0.005 / 0.9)
    assert after.search_interval == 4  # the step size changed: not a confirmation (which doubles it)
    off = SearchConfig(recover=False)
    assert plan(due, off, amortization).step_size == pytest.approx(0.005 / 0.999)


def test_recover_brings_the_step_size_back_after_a_transient_spike_of_the_loss():
    """Five batches whose loss is 30x steeper cut the step size; without recover the cut stays for
    the rest of the run, with it the step size returns to the level before the spike."""
    def run(**kwargs):
        torch.manual_seed(0)
        A = torch.randn(64, 8)
        w = torch.nn.Parameter(torch.randn(8))
        opt = alsals.ALSALS([w], amortized=False, **kwargs)
        for t in range(300):
            scale = 30.0 if 150 <= t < 155 else 1.0
            idx = torch.randint(0, 64, (16,))
            opt.step(lambda: scale * ((A[idx] @ w - 1.0) ** 2).mean())
        return opt

    permanent, recovered = run(), run(recover=True)
    assert permanent.counters["backtracks"] >= 1
    assert recovered.step_size > 1.15 * permanent.step_size
    assert recovered.step_size == pytest.approx(0.1 / 0.999**300, rel=0.05)  # as if there had been no cut
    assert recovered.search_state["recovery_level"] == 0.0


def test_a_resumed_run_keeps_recovering_where_it_stopped():
    """The recovery level is part of the saved search state: a run saved mid-recovery and resumed
    takes the same steps as one that was not interrupted."""
    torch.manual_seed(0)
    A = torch.randn(64, 8)
    batches = [torch.randint(0, 64, (16,)) for _ in range(220)]

    def closure_for(w, t):
        scale = 30.0 if 150 <= t < 155 else 1.0
        return lambda: scale * ((A[batches[t]] @ w - 1.0) ** 2).mean()

    def start():
        torch.manual_seed(1)
        w = torch.nn.Parameter(torch.randn(8))
        return w, alsals.ALSALS([w], amortized=False, recover=True)

    w, opt = start()
    for t in range(220):
        opt.step(closure_for(w, t))
    w2, opt2 = start()
    for t in range(151):
        opt2.step(closure_for(w2, t))
    assert opt2.search_state["recovery_level"] > 0.0  # saved in the middle of a recovery
    saved_opt, saved_w = opt2.state_dict(), w2.detach().clone()
    w3, opt3 = start()
    with torch.no_grad():
        w3.copy_(saved_w)
    opt3.load_state_dict(saved_opt)
    for t in range(151, 220):
        opt3.step(closure_for(w3, t))
    assert torch.equal(w3.detach(), w.detach())
    assert opt3.step_size == opt.step_size


def test_match_displacement_starts_the_warmup_searches_where_the_weights_move_as_far_as_at_first():
    config = SearchConfig(match_displacement="warmup")
    amortization = AmortizationConfig(warmup_searches=3)
    state = SearchState.initial(config)
    first = plan(state, config, amortization)
    assert first.measure_direction and not first.matching  # nothing to match yet, but ‖d₁‖ is measured
    outcome = Outcome(StepKind.SEARCHED, 1.0, 5, 1, anneal=1.0, slope=1.0,
                      result=SearchResult(0.01, 0.0, SearchStatus.ACCEPTED, 5, 4, 0), direction_norm=10.0)
    state = advance(state, first, outcome, config, amortization)
    assert state.displacement == pytest.approx(0.1) and state.direction_norm == 10.0
    state = replace(state, direction_norm=2.5)  # Adam's direction has shrunk to a quarter
    second = plan(state, config, amortization)
    assert second.matching and second.measure_direction
    assert second.step_size == pytest.approx(0.04)  # η₁·‖d₁‖/‖d‖
    state = replace(state, direction_norm=20.0)  # a longer direction: the grown step size stands
    assert not plan(state, config, amortization).matching
    assert plan(state, config, amortization).step_size == pytest.approx(0.01 / 0.999)
    past = replace(state, direction_norm=2.5, searches=3)  # after the warm-up searches: as usual
    assert not plan(past, config, amortization).matching and not plan(past, config, amortization).measure_direction
    assert plan(past, SearchConfig(match_displacement="always"), amortization).matching
    assert not plan(replace(state, direction_norm=2.5), SearchConfig(), amortization).measure_direction


def test_match_displacement_measures_the_norm_of_adams_first_direction():
    """At step 1 Adam's direction is g/(|g| + ε), ±1 in every coordinate with a gradient: ‖d₁‖ is the
    square root of their number, and the first displacement η₁·‖d₁‖."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    X, y = torch.randn(32, 6), torch.randn(32, 3)
    opt = alsals.ALSALS(model.parameters(), match_displacement="warmup")
    opt.step(lambda: ((model(X) - y) ** 2).mean())
    state = opt.search_state
    n = sum(p.numel() for p in model.parameters())
    assert state["direction_norm"] == pytest.approx(math.sqrt(n), rel=1e-6)
    assert state["displacement"] == pytest.approx(opt.step_size * math.sqrt(n), rel=1e-6)
    for _ in range(4):
        opt.step(lambda: ((model(X) - y) ** 2).mean())
    assert 0.0 < opt.search_state["direction_norm"] < math.sqrt(n)  # Adam's later directions are shorter
    other = torch.nn.Linear(6, 3)
    off = alsals.ALSALS(other.parameters())
    off.step(lambda: ((other(X) - y) ** 2).mean())
    assert off.counters["searches"] == 1 and off.search_state["direction_norm"] == 0.0  # not measured when off


def test_smoothing_per_step_forgets_by_the_steps_since_the_last_search():
    from alsals.search import for_search

    per_step = SearchConfig(smoothing=0.9, smoothing_per="step")
    state = SearchState(step_size=0.01, smoothed_slope=1.0, smoothed_decrease=0.5, searches=12, last_search_step=10)
    assert for_search(per_step, state, 30).smoothing == pytest.approx(0.9**20)
    assert for_search(per_step, state, 11) is per_step  # one step since the last search: β_s itself
    assert for_search(SearchConfig(smoothing=0.9), state, 30).smoothing == 0.9  # the paper's: per search
    amortization = AmortizationConfig(warmup_searches=0)
    due = replace(state, steps=29, steps_until_search=0)
    p = plan(due, per_step, amortization)
    result = SearchResult(p.step_size, 0.0, SearchStatus.ACCEPTED, 1, 0, 0)
    outcome = Outcome(StepKind.SEARCHED, 1.0, 1, 1, anneal=1.0, slope=0.0, result=result)
    after = advance(due, p, outcome, per_step, amortization)
    assert after.smoothed_slope == pytest.approx(0.9**20)  # the old slope weighs β_s^20, this one's 0 the rest
    assert after.last_search_step == 30
    paper = advance(due, plan(due, SearchConfig(smoothing=0.9), amortization), outcome, SearchConfig(smoothing=0.9),
                    amortization)
    assert paper.smoothed_slope == pytest.approx(0.9)


def test_smoothing_per_step_changes_nothing_when_every_step_searches():
    def run(**kwargs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        X, y = torch.randn(128, 5), torch.randn(128)
        opt = alsals.ALSALS(model.parameters(), **kwargs)
        for t in range(60):
            idx = torch.arange(t % 4 * 32, t % 4 * 32 + 32)
            opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
        return [p.detach().clone() for p in model.parameters()], opt

    (paper, a), (per_step, b) = run(amortized=False), run(amortized=False, smoothing_per="step")
    assert all(torch.equal(x, y) for x, y in zip(paper, per_step)) and a.step_size == b.step_size
    (_, c), (_, d) = run(), run(smoothing_per="step")  # amortized: the searches forget faster
    assert c.counters["skipped_searches"] > 0
    assert d.search_state["smoothed_slope"] != c.search_state["smoothed_slope"]


def test_cut_per_step_counts_a_cut_for_every_step_since_the_last_search():
    """A search 20 steps after the last one that cut the grown step size by r carries r^20 times it; the
    step itself was taken at the accepted step size (what the search returned)."""
    per_step = SearchConfig(cut_per="step")
    amortization = AmortizationConfig(warmup_searches=0)
    due = SearchState(step_size=0.01, smoothed_slope=1.0, searches=12, steps=29, steps_until_search=0,
                      last_search_step=10, search_interval=20)
    p = plan(due, per_step, amortization)
    assert p.search and p.step_size == pytest.approx(0.01 / 0.999)
    cut = SearchResult(p.step_size * 0.9, 0.0, SearchStatus.ACCEPTED, 2, 1, 0)
    outcome = Outcome(StepKind.SEARCHED, 1.0, 2, 1, anneal=1.0, slope=1.0, result=cut)
    after = advance(due, p, outcome, per_step, amortization)
    assert after.step_size == pytest.approx(p.step_size * 0.9**20)
    paper = advance(due, p, outcome, SearchConfig(), amortization)
    assert paper.step_size == pytest.approx(p.step_size * 0.9)  # "search": the accepted one
    # no cut, a search right after the last one, a search that gave up: carried as accepted
    kept = SearchResult(p.step_size, 0.0, SearchStatus.ACCEPTED, 1, 0, 0)
    assert advance(due, p, replace(outcome, result=kept), per_step, amortization).step_size == p.step_size
    next_step = replace(due, last_search_step=29)
    assert advance(next_step, p, outcome, per_step, amortization).step_size == pytest.approx(p.step_size * 0.9)
    gave_up = SearchResult(1e-10, 0.0, SearchStatus.GAVE_UP, 101, 100, 0)
    assert advance(due, p, replace(outcome, result=gave_up), per_step, amortization).step_size == p.step_size
    last = replace(per_step, unaccepted_search="keep")
    assert advance(due, p, replace(outcome, result=gave_up), last, amortization).step_size == 1e-10
    floor = SearchConfig(cut_per="step", min_step_size=5e-3)
    assert advance(due, p, outcome, floor, amortization).step_size == 5e-3  # clamped to the bounds


def _curvature_change(**kwargs):
    """A least-squares problem on mini-batches whose curvature grows 100-fold at step 120 (where the
    amortized search finds the carried step size too large), with ``ALSALS([w], initial_step_size=1,
    **kwargs)``: returns ``w``, the optimizer and ``closure_for(t)``, the closure of step ``t``."""
    torch.manual_seed(0)
    A = torch.randn(64, 8)
    batches = [torch.randint(0, 64, (16,)) for _ in range(200)]
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(8))
    opt = alsals.ALSALS([w], initial_step_size=1.0, **kwargs)

    def closure_for(t):
        scale = 10.0 if t >= 120 else 1.0
        return lambda: ((scale * A[batches[t]] @ w - 1.0) ** 2).mean()

    return w, opt, closure_for


def test_cut_per_step_changes_nothing_when_every_step_searches_and_cuts_harder_when_amortized():
    """On :func:`_curvature_change` the amortized search cuts at step 120; counted per step, that cut
    lowers the step size further."""

    def run(**kwargs):
        w, opt, closure_for = _curvature_change(**kwargs)
        sizes = []
        for t in range(200):
            opt.step(closure_for(t))
            sizes.append(opt.step_size)
        return w.detach().clone(), opt, sizes

    (w1, a, _), (w2, b, _) = run(amortized=False), run(amortized=False, cut_per="step")
    assert torch.equal(w1, w2) and a.step_size == b.step_size  # every step searches: L = 1 always
    (_, c, sizes_c), (_, d, sizes_d) = run(), run(cut_per="step")
    assert c.counters["skipped_searches"] > 0
    first = next(i for i, (x, y) in enumerate(zip(sizes_c, sizes_d)) if x != y)
    assert first >= 120  # the same trajectory up to the first cut after an amortized stretch
    assert sizes_d[first] < 0.5 * sizes_c[first]  # there the cut counts for the steps since the last search
    assert d.step_size < c.step_size


def test_cut_per_is_checked_and_resumes_bitwise():
    with pytest.raises(ValueError, match="cut_per"):
        alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))], cut_per="steps")
    assert alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))]).config.cut_per == "search"
    assert alsals.ALSALS([torch.nn.Parameter(torch.zeros(2))], preset="v0.1").config.cut_per == "search"

    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return model, alsals.ALSALS(model.parameters(), initial_step_size=1.0, cut_per="step")

    X, y = torch.randn(128, 4), torch.randn(128)

    def closure_for(model, t):
        idx = torch.arange(t % 4 * 32, t % 4 * 32 + 32)
        return lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    model, opt = make()
    for t in range(60):
        opt.step(closure_for(model, t))
    saved_model, saved_opt = [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())
    for t in range(60, 140):
        opt.step(closure_for(model, t))
    model2, opt2 = make()
    with torch.no_grad():
        for p, q in zip(model2.parameters(), saved_model):
            p.copy_(q)
    opt2.load_state_dict(saved_opt)
    for t in range(60, 140):
        opt2.step(closure_for(model2, t))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert opt2.step_size == opt.step_size and opt2.counters == opt.counters


def test_a_state_saved_without_last_search_step_resumes_as_if_it_had_it():
    """State dicts saved before ``last_search_step`` existed rebuild it from the interval in progress, so
    the rules that count steps since the last search (``cut_per``, ``smoothing_per``) do not see a gap
    of the whole run: the resumed run's whole search state is the uninterrupted run's."""

    w, opt, closure_for = _curvature_change(cut_per="step", smoothing_per="step")
    for t in range(100):
        opt.step(closure_for(t))
    assert opt.search_state["steps_until_search"] > 0  # saved in the middle of an amortized stretch
    saved, saved_w = copy.deepcopy(opt.state_dict()), w.detach().clone()
    for t in range(100, 200):
        opt.step(closure_for(t))
    old = copy.deepcopy(saved)
    for group in old["param_groups"]:
        del group["search"]["last_search_step"]
    w2, opt2, closure_for2 = _curvature_change(cut_per="step", smoothing_per="step")
    with torch.no_grad():
        w2.copy_(saved_w)
    opt2.load_state_dict(old)
    assert opt2.search_state["last_search_step"] == saved["param_groups"][0]["search"]["last_search_step"]
    for t in range(100, 200):
        opt2.step(closure_for2(t))
    assert torch.equal(w2.detach(), w.detach()) and opt2.step_size == opt.step_size > 1e-6
    assert opt2.search_state == opt.search_state


def test_cut_per_step_counts_only_the_steps_of_the_interval_that_ended():
    per_step = SearchConfig(cut_per="step")
    amortization = AmortizationConfig(warmup_searches=0)
    # 20 steps since the last search, of which the interval accounts for 8 (the others were skipped)
    due = SearchState(step_size=0.01, searches=12, steps=29, steps_until_search=0, last_search_step=10,
                      search_interval=8)
    p = plan(due, per_step, amortization)
    cut = SearchResult(p.step_size * 0.9, 0.0, SearchStatus.ACCEPTED, 2, 1, 0)
    outcome = Outcome(StepKind.SEARCHED, 1.0, 2, 1, anneal=1.0, slope=1.0, result=cut)
    assert advance(due, p, outcome, per_step, amortization).step_size == pytest.approx(p.step_size * 0.9**8)
