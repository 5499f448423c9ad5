"""``trial_direction="previous"``: the search's trials move along Adam's direction of the step before
(formed without this batch's gradient) and the accepted step size is committed along this step's.

The generic checks (state dict, deepcopy, resume, frozen parameters, exceptions) run on it through
``tests/optim_db.py``; these tests pin what the option itself does.
"""

import copy

import pytest
import torch

import alsals
from alsals import kernels

from helpers import batches, mlp, regression_data


def _moments(n=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("step", [2, 3, 40])
def test_previous_direction_is_the_direction_the_step_before_formed(step):
    """The direction formed at step ``t − 1`` from its moments and gradient equals, after those
    moments are updated, :func:`previous_direction_reference` at step ``t``; the multi-tensor path
    gives the same numbers."""
    grad, m, v = _moments()
    v = v.abs()
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8)
    formed = kernels.direction_reference(grad, m, v, kind="adam", step=step - 1, **hyper)
    kernels.update_moments_reference(grad, m, v, kind="adam", beta1=0.9, beta2=0.999)
    previous = kernels.previous_direction_reference(m, v, step=step, **hyper)
    torch.testing.assert_close(previous, formed, rtol=1e-6, atol=0.0)
    (fast,) = kernels.previous_direction_foreach([m], [v], step=step, **hyper)
    torch.testing.assert_close(fast, previous, rtol=1e-6, atol=0.0)


def _recording_closure(model, X, y, idx, seen):
    def closure():
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        return ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    return closure


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_trials_move_along_the_previous_direction_and_the_commit_along_the_current():
    X, y = regression_data()
    order = batches(len(X), 32, 6)
    model = mlp()
    opt = alsals.ALSALS(model.parameters(), trial_direction="previous", amortized=False)
    for idx in order[:4]:
        opt.step(_recording_closure(model, X, y, idx, []))
    at_start = copy.deepcopy(model)  # w0, for the gradient of the step's batch
    moments = [(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()) for p in model.parameters()]
    seen = []
    opt.step(_recording_closure(model, X, y, order[4], seen))
    eta = opt.step_size
    assert len(seen) >= 2, "a searched step evaluates at least one trial"
    loss = ((at_start(X[order[4]]).squeeze(-1) - y[order[4]]) ** 2).mean()
    loss.backward()
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=5)
    d_cur = _flat([kernels.direction_reference(p.grad, m, v, kind="adam", **hyper)
                   for p, (m, v) in zip(at_start.parameters(), moments)])
    d_prev = _flat([kernels.previous_direction_reference(m, v, **hyper) for m, v in moments])
    start = _flat([p.detach() for p in at_start.parameters()])
    # Every trial (the calls after the first) lies on the line w0 − x·d_previous, not on w0 − x·d_current.
    for trial in seen[1:]:
        offset = start - trial
        x = float(offset @ d_prev / (d_prev @ d_prev))
        assert x > 0
        torch.testing.assert_close(offset, x * d_prev, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(offset, x * d_cur, rtol=1e-2, atol=1e-6)
    # The committed point is w0 − η·d_current with the accepted η.
    end = _flat([p.detach() for p in model.parameters()])
    torch.testing.assert_close(end, start - eta * d_cur, rtol=1e-5, atol=1e-7)


def test_the_first_step_searches_along_its_own_direction():
    """Before the first step there are no moments (no direction of a step before): the first search
    is the default's, bitwise."""
    X, y = regression_data()
    (idx,) = batches(len(X), 32, 1)
    ends = []
    for trial_direction in ("current", "previous"):
        model = mlp()
        opt = alsals.ALSALS(model.parameters(), trial_direction=trial_direction)
        opt.step(_recording_closure(model, X, y, idx, []))
        ends.append((_flat([p.detach() for p in model.parameters()]), opt.step_size, opt.counters))
    assert torch.equal(ends[0][0], ends[1][0])
    assert ends[0][1:] == ends[1][1:]


def test_previous_trials_change_the_run_and_reference_kernels_agree():
    X, y = regression_data()
    order = batches(len(X), 32, 30)
    finals = {}
    for trial_direction, foreach in (("current", True), ("previous", True), ("previous", False)):
        model = mlp()
        opt = alsals.ALSALS(model.parameters(), trial_direction=trial_direction, foreach=foreach, fused=False)
        for idx in order:
            opt.step(_recording_closure(model, X, y, idx, []))
        finals[trial_direction, foreach] = (_flat([p.detach() for p in model.parameters()]), opt.counters["searches"])
    assert not torch.allclose(finals["current", True][0], finals["previous", True][0])
    torch.testing.assert_close(finals["previous", False][0], finals["previous", True][0], rtol=1e-5, atol=1e-6)
    assert finals["previous", False][1] == finals["previous", True][1]


@pytest.mark.parametrize("direction", ["preconditioned_gradient", "gradient"])
def test_previous_trials_need_adams_direction(direction):
    model = mlp()
    with pytest.raises(ValueError, match="trial_direction='previous'.*direction='adam'"):
        alsals.ALSALS(model.parameters(), direction=direction, trial_direction="previous")
    with pytest.raises(ValueError, match="trial_direction"):
        alsals.ALSALS(model.parameters(), trial_direction="next")


def test_layerwise_parts_take_the_option():
    X, y = regression_data()
    model = mlp()
    opt = alsals.LayerwiseALSALS(model, trial_direction="previous")
    for idx in batches(len(X), 32, 5):
        opt.step(_recording_closure(model, X, y, idx, []))
    assert all(part.config.trial_direction == "previous" for part in opt.parts.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
