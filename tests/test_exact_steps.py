"""Exact and interruptible steps (issue 11, defects 1, 2, 3 and 8).

- An exception anywhere in a step (the first evaluation, a trial, the finite-difference evaluation;
  ``KeyboardInterrupt`` included) leaves the weights, Adam's moments and step counts, the counters
  and the search state bitwise as they were, and propagates; the next step is the one an optimizer
  that never saw the failure takes.
- The committed point does not depend on the trials' path: a failed search leaves the weights
  bitwise unchanged, a committed step is the direct update from ``w``, an ``lr = 0`` group never
  moves.
- A parameter without a fresh gradient (frozen mid-run, or unused) does not move; a step with
  nothing to train changes nothing.

These tests use only the public API of version 0.1.0, so they can be run against it (they fail there).
"""

import copy

import pytest
import torch
from torch import nn

import alsals

from helpers import batches, mlp, regression_data


def snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        copy.deepcopy(opt.state_dict()["state"]),
        opt.search_state,
        opt.counters,
    )


def assert_same(a, b):
    params_a, state_a, search_a, counters_a = a
    params_b, state_b, search_b, counters_b = b
    for p, q in zip(params_a, params_b):
        assert torch.equal(p, q)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].keys() == state_b[key].keys()
        for name in state_a[key]:
            x, y = state_a[key][name], state_b[key][name]
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), name
    assert search_a == search_b
    assert counters_a == counters_b


class Boom(Exception):
    pass


def raising_on_call(closure, call, error):
    calls = [0]

    def wrapped():
        calls[0] += 1
        if calls[0] == call:
            raise error
        return closure()

    return wrapped


def mse(model, X, y, idx):
    return lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()


FAULT_CASES = {
    # name: (optimizer kwargs, which closure call raises)
    "first-evaluation": (dict(), 1),
    "first-trial": (dict(), 2),
    "backtracking-trial": (dict(initial_step_size=1.0), 3),  # a large step: the search backtracks
    "finite-difference": (dict(slope="finite_difference"), 2),
    # trials along the step before's direction, the commit along this step's
    "trial-previous-backtracking": (dict(initial_step_size=1.0, trial_direction="previous"), 3),
    "amortized-first-evaluation": (dict(), 1),
}


@pytest.mark.parametrize("error", [Boom("data error"), KeyboardInterrupt()], ids=["exception", "interrupt"])
@pytest.mark.parametrize("case", sorted(FAULT_CASES))
def test_an_exception_in_a_step_changes_nothing_and_the_next_step_is_unaffected(case, error):
    kwargs, call = FAULT_CASES[case]
    X, y = regression_data()
    order = batches(len(X), 32, 16)
    warmup = 12 if case.startswith("amortized") else 3  # past the 10 warm-up searches: amortized steps
    runs = []
    for fail in (False, True):
        model = mlp(dropout=0.1)
        opt = alsals.ALSALS(model.parameters(), **kwargs)
        torch.manual_seed(0)
        for idx in order[:warmup]:
            opt.step(mse(model, X, y, idx))
        if fail:
            before = snapshot(model, opt)
            rng = torch.get_rng_state()
            with pytest.raises(type(error)):
                opt.step(raising_on_call(mse(model, X, y, order[warmup]), call, error))
            assert_same(before, snapshot(model, opt))
            torch.set_rng_state(rng)
        for idx in order[warmup:]:  # the retried batch and the rest
            opt.step(mse(model, X, y, idx))
        runs.append(snapshot(model, opt))
    assert_same(runs[0], runs[1])


def away_from_zero(n, dtype):
    """Entries of magnitude 1..2 (their Adam moments neither underflow nor overflow in fp16)."""
    torch.manual_seed(0)
    return nn.Parameter((torch.sign(torch.randn(n)) * (1 + torch.rand(n))).to(dtype))


def steep(w, target, scale):
    return lambda: scale * ((w.float() - target) ** 2).sum()


def first_step_direction(grad, eps=1e-8, beta1=0.9, beta2=0.999):
    """Adam's direction at step 1 computed in float64: m̂ = g, v̂ = g² (up to the moments' rounding)."""
    g = grad.double()
    m_hat = ((1 - beta1) * g) / (1 - beta1)
    v_hat = ((1 - beta2) * g * g) / (1 - beta2)
    return m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_failed_search_leaves_the_weights_bitwise_unchanged(dtype):
    w = away_from_zero(321, dtype)
    start = w.detach().clone()
    opt = alsals.ALSALS([w], initial_step_size=1.0, max_backtracks=40)
    calls = [0]

    def closure():
        calls[0] += 1
        loss = (w.float() ** 2).sum()
        return loss if calls[0] == 1 else loss * float("nan")  # every trial is non-finite

    opt.step(closure)
    assert opt.search_state["last_status"] == "failed"
    assert torch.equal(w.detach(), start)


@pytest.mark.parametrize("dtype, trials", [(torch.bfloat16, 10), (torch.bfloat16, 47), (torch.float16, 10), (torch.float32, 47)])
def test_a_committed_step_is_the_direct_update_from_w_whatever_the_trials(dtype, trials):
    """After ``trials`` trials the committed point is ``w − η·d`` rounded once (within one ulp of the
    exact value in bf16/fp16; fp32 to float32 rounding), not the end of a path of moves."""
    w = away_from_zero(321, dtype)
    start = w.detach().clone()
    # The minimum sits close beside w: the first step 1.0 overshoots by far, and the search needs
    # about `trials` cuts of 0.9 to reach an accepted step size.
    target = start.float() - 0.9 ** (trials - 1) * torch.sign(start.float())
    opt = alsals.ALSALS([w], initial_step_size=1.0, growth=1.0, slope_smoothing=0.0, c=0.5, interpolate=False)
    closure = steep(w, target, 1.0)
    w.grad = None
    loss = closure()
    loss.backward()
    grad = w.grad.detach().clone()
    w.grad = None
    opt.step(closure)
    assert opt.search_state["last_trials"] >= trials - 2
    eta = opt.step_size
    exact = start.double() - eta * first_step_direction(grad)
    ulp = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(exact.abs()))  # spacing of `dtype` there
    err = (w.detach().double() - exact).abs()
    assert (err <= ulp).all(), f"max {(err / ulp).max():.2f} ulps from w - eta*d"


def test_an_lr_zero_group_never_moves():
    X, y = regression_data()
    model = mlp()
    frozen_by_lr = [p.detach().clone() for p in model[2].parameters()]
    opt = alsals.ALSALS(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], initial_step_size=1.0
    )
    for idx in batches(len(X), 32, 30):
        opt.step(mse(model, X, y, idx))
    assert opt.counters["backtracks"] > 0  # trials moved the group out and back
    for p, q in zip(model[2].parameters(), frozen_by_lr):
        assert torch.equal(p, q)


@pytest.mark.parametrize("amortized", [False, True])
def test_a_layer_frozen_mid_run_stops_moving(amortized):
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(model.parameters(), amortized=amortized)
    order = batches(len(X), 32, 40)
    for idx in order[:15]:
        opt.step(mse(model, X, y, idx))
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    moments = {k: copy.deepcopy(v) for k, v in opt.state_dict()["state"].items() if k in (0, 1)}
    live = [p.detach().clone() for p in model[2].parameters()]
    for idx in order[15:]:
        opt.step(mse(model, X, y, idx))
    for p, q in zip(model[0].parameters(), frozen):
        assert torch.equal(p, q)
    for key, value in moments.items():  # its Adam state does not advance either
        for name, tensor in value.items():
            if name == "average":  # the average of the iterates keeps sampling the (still) iterate
                continue
            assert torch.equal(torch.as_tensor(opt.state_dict()["state"][key][name]), torch.as_tensor(tensor)), name
    assert any(not torch.equal(p, q) for p, q in zip(model[2].parameters(), live))
    if amortized:
        assert opt.counters["skipped_searches"] > 0


def test_a_parameter_without_a_gradient_in_this_step_does_not_move():
    X, y = regression_data()
    model = mlp()
    extra = nn.Linear(10, 1)
    opt = alsals.ALSALS(list(model.parameters()) + list(extra.parameters()))
    use_extra = [True]

    def closure():
        out = model(X[:32]).squeeze(-1)
        if use_extra[0]:
            out = out + extra(X[:32]).squeeze(-1)
        return ((out - y[:32]) ** 2).mean()

    for _ in range(5):
        opt.step(closure)
    use_extra[0] = False  # the head is no longer used: its gradient is None, not stale
    before = [p.detach().clone() for p in extra.parameters()]
    for _ in range(15):
        opt.step(closure)
    for p, q in zip(extra.parameters(), before):
        assert torch.equal(p, q)


def test_a_step_with_nothing_to_train_evaluates_the_closure_and_changes_nothing():
    X, y = regression_data()
    model = mlp()
    model.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    opt = alsals.ALSALS(model.parameters())
    closure = mse(model, X, y, torch.arange(32))
    loss = opt.step(closure)
    assert loss.item() == closure().item()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert len(opt.state) == 0
    assert opt.counters["steps"] == 1 and opt.step_size == 0.1
    # torch's own check: parameters that do not require grad and a constant loss
    params = [torch.randn(2, 3) for _ in range(2)]
    old = [p.clone() for p in params]
    opt = alsals.ALSALS(params)
    assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert all(torch.equal(p, q) for p, q in zip(params, old))


def test_parameters_that_require_grad_but_get_none_make_a_no_op_step():
    used = nn.Parameter(torch.ones(3))
    unused = nn.Parameter(torch.ones(3))
    opt = alsals.ALSALS([unused])
    loss = opt.step(lambda: (used**2).sum())  # a loss that requires grad, not through these params
    assert loss.item() == 3.0
    assert torch.equal(unused.detach(), torch.ones(3))
    assert len(opt.state) == 0
