"""The line search as pure logic, and property tests (hypothesis) on its guarantees."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alsals
from alsals.search import (
    SearchConfig,
    SearchStatus,
    armijo_holds,
    backtrack,
    effective_c,
    search_interval,
    smooth,
)


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
    smoothed Armijo condition (read from the carried state) or the search gave up at its floor or
    backtrack limit; the step size always stays within its bounds."""
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
        opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
        state = opt.search_state
        eta = state["step_size"]
        assert 1e-6 <= eta <= 2.0
        if state["last_status"] == "accepted":
            c_eff = effective_c(c, state["smoothed_slope"], True)
            assert armijo_holds(state["smoothed_decrease"], eta, c_eff, state["smoothed_slope"])
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
