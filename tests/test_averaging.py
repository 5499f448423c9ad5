"""The anytime average of the iterates (runs without ``total_steps``): weights, sampling, eval/train."""

from __future__ import annotations

import io
import math

import pytest
import torch

import alsals
from alsals import averaging

from helpers import batches, mlp, regression_data

X, Y = regression_data()


def closure_for(model, idx):
    return lambda: ((model(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()


def test_the_exponent_matches_the_cooldown():
    assert averaging.exponent(0.2) == pytest.approx(8.0)
    # the mean distance of the average's weight from the end, t/(γ + 2), is the cooldown's f·t/2
    for f in (0.1, 0.2, 0.5):
        assert 1.0 / (averaging.exponent(f) + 2.0) == pytest.approx(f / 2)


def test_samples_thin_out_as_the_run_grows():
    gamma = 8.0
    window = averaging.SAMPLES_PER_WINDOW * (gamma + 1)
    assert [averaging.sampling_interval(t, gamma) for t in (1, 100, int(window))] == [1, 1, 1]
    assert averaging.sampling_interval(10_000, gamma) == math.ceil(10_000 / window)
    sampled, last = [], 0
    for t in range(1, 20_001):
        if averaging.is_due(t, last, gamma):
            sampled.append(t)
            last = t
    late = [t for t in sampled if t > 20_000 * (1 - 1 / (gamma + 1))]  # the average's window at the end
    assert len(sampled) < 2_000  # a tenth of the steps
    assert len(late) >= averaging.SAMPLES_PER_WINDOW // 2


def test_irregular_samples_keep_the_polynomial_time_weighting():
    """Sampling every k-th iterate, each sample weighing the mass of s^γ since the previous one, gives
    the every-iterate s^γ average up to the iterate's change within one gap."""
    gamma, steps = 8.0, 3000
    iterate = [math.sin(t / 300.0) for t in range(1, steps + 1)]  # |dx/dt| <= 1/300
    exact = sum(t**gamma * x for t, x in enumerate(iterate, 1)) / sum(t**gamma for t in range(1, steps + 1))
    average, total, last, gaps = 0.0, 0.0, 0, []
    for t, x in enumerate(iterate, 1):
        if averaging.is_due(t, last, gamma):
            w, total = averaging.sample_weight(t, last, total, gamma)
            average += w * (x - average)
            gaps.append(t - last)
            last = t
    assert max(gaps) > 5  # the samples did thin out
    assert abs(average - exact) <= max(gaps) / 300.0  # within the change over one gap
    assert abs(average - exact) <= 0.5 * max(gaps) / 300.0 + 1e-3  # and it is the half-gap lag, not more


def run(model, opt, steps, start=0):
    for idx in batches(len(X), 32, start + steps, seed=5)[start:]:
        opt.step(closure_for(model, idx))


def test_without_total_steps_the_optimizer_averages_its_iterates_and_eval_puts_the_average_in():
    model = mlp(dropout=0.0)
    opt = alsals.ALSALS(model.parameters(), average=True)
    gamma = averaging.exponent(opt.config.anneal_fraction)
    iterates = []
    numerator, denominator, last = None, 0.0, 0
    for t, idx in enumerate(batches(len(X), 32, 60, seed=5), 1):
        opt.step(closure_for(model, idx))
        current = [p.detach().clone().double() for p in model.parameters()]
        iterates.append(current)
        if averaging.is_due(t, last, gamma):
            w = (float(t) ** (gamma + 1) - float(last) ** (gamma + 1)) / (gamma + 1)
            last = t
            numerator = [w * c for c in current] if numerator is None else [n + w * c for n, c in zip(numerator, current)]
            denominator += w
    expected = [n / denominator for n in numerator]
    final = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p.detach(), f) for p, f in zip(model.parameters(), final))
    with pytest.raises(RuntimeError, match="opt.train"):
        opt.step(closure_for(model, torch.arange(32)))
    opt.eval()  # twice: nothing more happens
    opt.train()
    for p, f in zip(model.parameters(), final):
        assert torch.equal(p.detach(), f)  # the iterate back, bitwise
    opt.train()  # twice: nothing
    run(model, opt, 2)


def test_the_average_is_kept_exactly_when_no_total_steps_is_given():
    for kwargs, keeps in (({}, True), ({"preset": "v0.1"}, False), ({"average": True}, True),
                          ({"total_steps": 50, "average": True}, True),
                          ({"total_steps": 50}, False), ({"average": False}, False)):
        model = mlp()
        opt = alsals.ALSALS(model.parameters(), **kwargs)
        run(model, opt, 3)
        assert opt.config.averages == keeps
        assert all(("average" in opt.state[p]) == keeps for p in model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        opt.eval()
        assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before)) == (not keeps)
        opt.train()


def test_the_average_resumes_bitwise_and_a_state_saved_in_eval_mode_loads_in_eval_mode():
    torch.manual_seed(0)
    model = mlp()
    opt = alsals.ALSALS(model.parameters(), average=True)
    run(model, opt, 30)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    run(model, opt, 10, start=30)
    opt.eval()
    expected = [p.detach().clone() for p in model.parameters()]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = mlp(seed=3)
    fresh.load_state_dict(saved["model"])
    again = alsals.ALSALS(fresh.parameters(), average=True)
    again.load_state_dict(saved["opt"])
    run(fresh, again, 10, start=30)
    again.eval()
    for p, e in zip(fresh.parameters(), expected):
        assert torch.equal(p.detach(), e)

    in_eval = again.state_dict()  # saved while the average is in the parameters
    assert in_eval["param_groups"][0]["search"]["averaged_in"] is True
    other = alsals.ALSALS(mlp().parameters(), average=True)
    other.load_state_dict(in_eval)
    with pytest.raises(RuntimeError, match="opt.train"):
        other.step(closure_for(fresh, torch.arange(32)))
