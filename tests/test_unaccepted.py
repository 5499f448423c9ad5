"""What a search that cut and ended with no trial passing leaves to the next one
(``unaccepted_search``): by default (``"restart"``) the step size it started from and an empty
smoothing memory; with ``"keep"`` (the paper's and 0.1's rule) its last trial's step size and the
memory as it is."""

import pytest
import torch

import alsals
from alsals.search import (
    AmortizationConfig,
    Outcome,
    SearchConfig,
    SearchResult,
    SearchState,
    SearchStatus,
    StepKind,
    advance,
    backtrack,
    is_unaccepted,
    plan,
)


def _search(first_decrease, decrease_at, smoothed_slope, smoothed_decrease, slope, config, step_size=0.1):
    return backtrack(first_decrease, step_size, slope, smoothed_slope, smoothed_decrease, config, decrease_at)


def test_a_negative_carried_decrease_makes_every_step_size_fail():
    """The mechanism the rule is for: with ``h < 0`` and ``s > 0`` the smoothed condition
    ``β_s·h + (1 − β_s)·Δ ≥ c·η·s`` fails as ``η → 0`` however well the batch decreases (here exactly
    linearly, ``Δ = η·D``), so the search cuts to its limit and gives up; with ``h = 0`` the same batch
    passes at once."""
    config = SearchConfig(max_backtracks=100)
    linear = lambda eta: 2.0 * eta  # noqa: E731
    stuck = _search(linear(0.1), linear, smoothed_slope=1.0, smoothed_decrease=-1e-3, slope=2.0, config=config)
    assert stuck.status is SearchStatus.GAVE_UP and stuck.backtracks == 100
    assert stuck.step_size == pytest.approx(0.1 * 0.9**100)
    fresh = _search(linear(0.1), linear, smoothed_slope=1.0, smoothed_decrease=1e-3, slope=2.0, config=config)
    assert fresh.status is SearchStatus.ACCEPTED and 0 < fresh.backtracks < 100


def test_rate_smoothing_fails_at_every_step_size_on_a_batch_that_goes_uphill():
    """With ``rate_smoothing`` the limit as ``η → 0`` is ``β_s·r + (1 − β_s)·D ≥ c·s``: a batch whose
    slope ``D`` is negative under a positive smoothed slope can fail it at every step size."""
    config = SearchConfig(rate_smoothing=True, max_backtracks=30)
    uphill = lambda eta: -3.0 * eta  # noqa: E731  (D = -3: the loss rises along the direction)
    result = _search(uphill(0.1), uphill, smoothed_slope=4.75, smoothed_decrease=2.5, slope=-3.0, config=config)
    assert result.status is SearchStatus.GAVE_UP


@pytest.mark.parametrize("rule", ["restart", "keep"])
def test_advance_after_giving_up(rule):
    """``"restart"``: the carried step size is the one the search started from (the plan's) and the
    smoothed slope and decrease are emptied; ``"keep"``: the last trial's step size, and the smoothed
    decrease with the last trial's decrease in it. Either way the give-up is counted and the next
    step searches."""
    config = SearchConfig(unaccepted_search=rule)
    amortization = AmortizationConfig(warmup_searches=0)
    state = SearchState(step_size=0.05, smoothed_slope=1.0, smoothed_decrease=-2e-3, searches=30, steps=100,
                        search_interval=8, steps_until_search=0, last_search_step=92)
    p = plan(state, config, amortization)
    assert p.search
    gave_up = SearchResult(p.step_size * 0.9**100, -1.8e-3, SearchStatus.GAVE_UP, 101, 100, 0)
    after = advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 101, 1, anneal=1.0, slope=1.0, result=gave_up),
                    config, amortization)
    assert after.step_size == (p.step_size if rule == "restart" else gave_up.step_size)
    if rule == "restart":
        assert after.smoothed_decrease == 0.0 and after.smoothed_slope == 0.0
    else:
        assert after.smoothed_decrease == -1.8e-3 and after.smoothed_slope == pytest.approx(0.9 + 0.1)
    assert after.gave_up == after.unaccepted == 1 and after.steps_until_search == 0
    failed = SearchResult(p.step_size * 0.9**100, -2e-3, SearchStatus.FAILED, 101, 100, 101)
    after_failed = advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 101, 1, anneal=1.0, slope=1.0, result=failed),
                           config, amortization)
    assert after_failed.step_size == failed.step_size  # a non-finite last trial: the rule does not apply
    assert after_failed.smoothed_decrease == state.smoothed_decrease and after_failed.smoothed_slope != 0.0


@pytest.mark.parametrize("rule", ["restart", "keep"])
def test_advance_after_an_unresolvable_search(rule):
    """A search that cut down to where the trial loss equals the first one bit for bit passed no
    trial either: with ``"restart"`` it carries the step size it started from and an empty memory;
    with ``"keep"`` the last trial's step size (as a cut). One that was unresolvable at its first trial
    cut nothing: its step size and memory, by either rule."""
    config = SearchConfig(unaccepted_search=rule)
    state = SearchState(step_size=0.05, smoothed_slope=1.0, smoothed_decrease=-2e-3, searches=30, steps=100,
                        last_search_step=99)
    p = plan(state, config, None)
    cut = SearchResult(p.step_size * 0.9**60, -1.8e-3, SearchStatus.UNRESOLVABLE, 61, 60, 0)
    assert is_unaccepted(cut)
    after = advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 61, 1, anneal=1.0, slope=1.0, result=cut), config, None)
    assert after.step_size == (p.step_size if rule == "restart" else cut.step_size)
    assert (after.smoothed_decrease == 0.0) == (rule == "restart")
    assert after.gave_up == 0 and after.unaccepted == 1  # unresolvable after cuts: not a give-up
    first = SearchResult(p.step_size, -1.8e-3, SearchStatus.UNRESOLVABLE, 1, 0, 0)
    assert not is_unaccepted(first)
    after_first = advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 1, 1, anneal=1.0, slope=1.0, result=first),
                          config, None)
    assert after_first.step_size == p.step_size and after_first.smoothed_decrease == -1.8e-3
    accepted = SearchResult(p.step_size * 0.9, 1e-3, SearchStatus.ACCEPTED, 2, 1, 0)
    assert not is_unaccepted(accepted)
    assert advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 2, 1, anneal=1.0, slope=1.0, result=accepted),
                   config, None).step_size == accepted.step_size  # an accepted cut is carried by either rule


def test_presets_and_validation():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert alsals.ALSALS(w).config.unaccepted_search == "restart"
    for preset in ("v0.1", "paper", "sls", "salsa"):
        assert alsals.ALSALS(w, preset=preset).config.unaccepted_search == "keep", preset
    assert alsals.ALSALS(w, preset="paper", unaccepted_search="restart").config.search.unaccepted_search == "restart"
    with pytest.raises(ValueError, match="unaccepted_search"):
        alsals.ALSALS(w, unaccepted_search="first")


def _trap_run(rule, trap_step=12, steps=20, quantum=0.0):
    """A regression trained with ``ALSALS(amortized=False, slope_smoothing=0)`` (the classical Armijo
    condition, so that no carried decrease pays for a trial); at ``trap_step`` the closure adds
    ``100·‖w − w_t‖₁``, zero at the step's own weights (and without gradient there) and larger than
    the decrease at every trial, so that search gives up after its 100 cuts. With ``quantum`` the
    trap step's loss is rounded to a multiple of it (the gradient left as it is), so that the search
    stops unresolvable once a trial's rounded loss equals the first. Returns the step sizes carried
    after each step and the optimizer."""
    torch.manual_seed(0)
    X, y = torch.randn(64, 4), torch.randn(64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = alsals.ALSALS(model.parameters(), amortized=False, slope_smoothing=0.0, unaccepted_search=rule)
    sizes = []
    for t in range(steps):
        idx = torch.arange(t % 4 * 16, t % 4 * 16 + 16)
        start = [p.detach().clone() for p in model.parameters()]

        def closure(idx=idx, start=start, trap=t == trap_step):
            loss = ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()
            if trap:
                loss = loss + 100.0 * sum((p - s).abs().sum() for p, s in zip(model.parameters(), start))
                if quantum:
                    loss = loss + (torch.round(loss / quantum) * quantum - loss).detach()
            return loss

        opt.step(closure)
        sizes.append(opt.step_size)
        if t == trap_step:
            assert opt.search_state["last_status"] == ("unresolvable" if quantum else "gave_up")
            assert opt.search_state["last_trials"] > 1
    return sizes, opt


@pytest.mark.parametrize("quantum", [0.0, 1e-3])
def test_through_the_optimizer_a_classical_test_that_fails_at_every_step_keeps_its_cut(quantum):
    """With ``slope_smoothing=0`` the search has no memory: a batch that fails the classical
    condition at every step size is evidence about the step size, and both rules carry the cut (so
    batches that keep failing do not restart every search at 100 trials). Given up after 100 cuts,
    or, with the loss rounded, stopped unresolvable after cuts."""
    restart_sizes, restart_opt = _trap_run("restart", quantum=quantum)
    keep_sizes, keep_opt = _trap_run("keep", quantum=quantum)
    assert restart_sizes == keep_sizes
    assert restart_opt.counters == keep_opt.counters
    assert restart_opt.counters["unaccepted"] == 1
    assert restart_opt.counters["gave_up"] == (0 if quantum else 1)
    grown = restart_opt.config.search.grow(restart_sizes[11])
    assert restart_sizes[12] < 0.5 * grown
    if not quantum:
        assert restart_sizes[12] == pytest.approx(grown * 0.9**100)


def _advance_unaccepted(rule, status=SearchStatus.GAVE_UP, interval_rule="doubling", **state_values):
    config = SearchConfig(unaccepted_search=rule)
    amortization = AmortizationConfig(warmup_searches=0, rule=interval_rule)
    values = dict(step_size=0.05, smoothed_slope=1.0, smoothed_decrease=-2e-3, searches=30, steps=100,
                  search_interval=16, steps_until_search=0, last_search_step=84, step_size_fast=0.05,
                  step_size_slow=0.05)
    values.update(state_values)
    state = SearchState(**values)
    p = plan(state, config, amortization)
    result = SearchResult(p.step_size * 0.9**100, -1.8e-3, status, 101, 100, 0)
    return state, p, advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 101, 1, anneal=1.0, slope=1.0,
                                               result=result), config, amortization), result


def test_a_failure_with_an_empty_memory_keeps_its_cut():
    """Right after a restart (``s = h = 0``) the search tested the classical condition; if it fails
    again, its cut is carried and nothing restarts."""
    state, p, after, result = _advance_unaccepted("restart", smoothed_slope=0.0, smoothed_decrease=0.0)
    assert after.step_size == result.step_size and after.smoothed_decrease == result.smoothed_decrease
    assert after.unaccepted == 1


@pytest.mark.parametrize("interval_rule", ["doubling", "halving", "salsa"])
def test_after_a_restart_the_next_step_searches_under_every_interval_rule(interval_rule):
    """The restored step size is untested: whatever the interval rule, the next step searches, and
    SaLSa's averages of the accepted step size do not take the failed search in."""
    state, p, after, _ = _advance_unaccepted("restart", status=SearchStatus.UNRESOLVABLE, interval_rule=interval_rule)
    assert after.step_size == p.step_size
    assert after.search_interval == 1 and after.steps_until_search == 0
    assert (after.step_size_fast, after.step_size_slow) == (state.step_size_fast, state.step_size_slow)


def test_a_restart_does_not_carry_a_raised_start():
    """With ``recover`` a search may start above ``η·γ``; a restart carries ``η·γ``, so that failed
    searches cannot ratchet the step size up."""
    config = SearchConfig(recover=True)
    state = SearchState(step_size=0.01, smoothed_slope=1.0, smoothed_decrease=-1e-3, searches=30, steps=100,
                        recovery_level=0.05, last_search_step=99)
    p = plan(state, config, None)
    assert p.recovering and p.step_size > config.grow(state.step_size)
    gave_up = SearchResult(p.step_size * 0.9**100, -1e-3, SearchStatus.GAVE_UP, 101, 100, 0)
    after = advance(state, p, Outcome(StepKind.SEARCHED, 1.0, 101, 1, anneal=1.0, slope=1.0, result=gave_up),
                    config, None)
    assert after.step_size == config.grow(state.step_size)


def test_layerwise_parts_take_the_rule():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = alsals.LayerwiseALSALS(model, unaccepted_search="keep")
    assert {part.config.unaccepted_search for part in opt.parts.values()} == {"keep"}
    assert {part.config.unaccepted_search for part in alsals.LayerwiseALSALS(model).parts.values()} == {"restart"}


@pytest.mark.parametrize("rule", ["restart", "keep"])
def test_a_negative_carried_decrease_blocks_every_later_search_unless_the_memory_is_emptied(rule):
    """Through the optimizer, with the default smoothing: a run whose carried smoothed decrease is made
    negative (through the state dict, as an ascent accepted under ``c_eff = 1/c`` leaves it) passes no
    trial at its next search (it stops unresolvable here: the float loss cannot resolve the trials
    before the 100 cuts are spent). With ``"restart"`` the search after it accepts (the classical condition on its
    batch) and training goes on at the step size from before; with ``"keep"`` every following search
    gives up as well, the step size falls by ``β_b^100`` each time and the loss stops falling."""
    torch.manual_seed(0)
    X, y = torch.randn(64, 4), torch.randn(64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = alsals.ALSALS(model.parameters(), amortized=False, unaccepted_search=rule)

    def closure_for(t):
        idx = torch.arange(t % 4 * 16, t % 4 * 16 + 16)
        return lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    for t in range(10):
        opt.step(closure_for(t))
    assert opt.counters["gave_up"] == 0 and opt.search_state["smoothed_slope"] > 0.0
    state = opt.state_dict()
    state["param_groups"][0]["search"]["smoothed_decrease"] = -1e-2
    opt.load_state_dict(state)
    before = opt.step_size
    statuses, sizes = [], []
    for t in range(10, 16):
        opt.step(closure_for(t))
        statuses.append(opt.search_state["last_status"])
        sizes.append(opt.step_size)
    unaccepted = ("gave_up", "unresolvable")  # the float loss stops resolving the trials before 100 cuts
    assert statuses[0] in unaccepted
    if rule == "restart":
        assert statuses[1:] == ["accepted"] * 5
        assert sizes[0] == opt.config.search.grow(before) and sizes[-1] > 0.1 * before
        assert opt.counters["unaccepted"] == 1
    else:
        assert all(status in unaccepted for status in statuses)  # later ones unresolvable at once, no cut
        assert sizes[-1] < 1e-3 * before
