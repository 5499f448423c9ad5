"""Gradient accumulation (alsals.micro_batch_closure) and the forward-only-trials hook, on one process.

The multi-process case (DDP's no_sync, FSDP2) is in test_distributed.py.
"""

import contextlib

import pytest
import torch
from torch import nn

import alsals
from alsals.closure import ClosureEvaluator

from helpers import batches, mlp, regression_data


def mse(model, x, y):
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def run(closure_for, steps=30, dropout=0.0):
    X, y = regression_data()
    model = mlp(dropout=dropout)
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0)
    etas, losses = [], []
    torch.manual_seed(0)
    for idx in batches(len(X), 32, steps):
        losses.append(opt.step(closure_for(model, X[idx], y[idx])).item())
        etas.append(opt.step_size)
    return model, opt, etas, losses


def whole(model, x, y):
    return lambda: mse(model, x, y)


def micro(chunks, weights=None):
    def closure_for(model, x, y):
        micro_batches = list(zip(x.split(chunks), y.split(chunks))) if isinstance(chunks, list) else list(
            zip(x.chunk(chunks), y.chunk(chunks))
        )
        return alsals.micro_batch_closure(model, micro_batches, lambda mb: mse(model, *mb), weights=weights)

    return closure_for


def assert_same_run(a, b):
    (m1, _, e1, l1), (m2, _, e2, l2) = a, b
    assert e1 == pytest.approx(e2, rel=1e-6)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_micro_batches_match_the_whole_batch_and_trials_are_forward_only():
    reference = run(whole)
    accumulated = run(micro(4))
    assert_same_run(accumulated, reference)
    counters = accumulated[1].counters
    assert counters["backward_passes"] == 30  # one accumulated backward per step, none in the trials
    assert counters["forward_evaluations"] == reference[1].counters["forward_evaluations"]
    assert counters["backtracks"] > 0


def test_unequal_micro_batches_with_size_weights_match_the_whole_batch():
    sizes = [20, 8, 4]
    assert_same_run(run(micro(sizes, weights=[n / 32 for n in sizes])), run(whole))


def test_micro_batches_with_dropout_see_the_same_masks_in_every_evaluation():
    model = mlp(dropout=0.5)
    x, y = torch.randn(32, 10), torch.randn(32)
    closure = alsals.micro_batch_closure(model, list(zip(x.chunk(2), y.chunk(2))), lambda mb: mse(model, *mb))
    evaluator = ClosureEvaluator(closure, list(model.parameters()), "ALSALS")
    first = evaluator.first()
    assert evaluator.closure_runs_backward and evaluator.forward_only_trials
    assert all(p.grad is not None for p in model.parameters())
    assert evaluator.trial().item() == first.item()  # bit for bit: same masks, same summation order
    evaluator.finish()


def test_forward_only_trials_attribute_makes_trials_run_without_gradients():
    model = mlp()
    x = torch.randn(8, 10)
    modes = []

    def closure():
        modes.append(torch.is_grad_enabled())
        loss = model(x).pow(2).mean()
        if torch.is_grad_enabled():
            model.zero_grad()
            loss.backward()
        return loss

    for flag, expected_trial_mode in ((False, True), (True, False)):
        modes.clear()
        closure.forward_only_trials = flag
        evaluator = ClosureEvaluator(closure, list(model.parameters()), "ALSALS")
        evaluator.first()
        evaluator.trial()
        evaluator.finish()
        assert modes == [True, expected_trial_mode]
        assert evaluator.backward_passes == (2 if expected_trial_mode else 1)


class RecordingWrapper(nn.Module):
    """Stands in for DDP (``no_sync``) or FSDP2 (``set_requires_gradient_sync``)."""

    def __init__(self, module, style):
        super().__init__()
        self.module = module
        self.events = []
        if style == "ddp":
            self.no_sync = self._no_sync
        else:
            self.set_requires_gradient_sync = lambda flag: self.events.append(("sync", flag))

    @contextlib.contextmanager
    def _no_sync(self):
        self.events.append("enter")
        yield
        self.events.append("exit")

    def forward(self, x):
        self.events.append("forward")
        return self.module(x)


@pytest.mark.parametrize(
    "style, expected",
    [
        ("ddp", ["enter", "forward", "exit", "enter", "forward", "exit", "forward"]),
        ("fsdp2", [("sync", False), "forward", ("sync", True), ("sync", False), "forward", ("sync", True), "forward"]),
    ],
)
def test_gradient_synchronisation_is_skipped_on_all_but_the_last_micro_batch(style, expected):
    model = RecordingWrapper(mlp(), style)
    x, y = torch.randn(12, 10), torch.randn(12)
    closure = alsals.micro_batch_closure(model, list(zip(x.chunk(3), y.chunk(3))), lambda mb: mse(model, *mb))
    closure()
    assert model.events == expected
    model.events.clear()
    with torch.no_grad():
        closure()
    assert model.events == ["forward"] * 3  # trials: forwards only, nothing to synchronise


def test_no_sync_false_synchronises_every_micro_batch():
    model = RecordingWrapper(mlp(), "ddp")
    x, y = torch.randn(12, 10), torch.randn(12)
    closure = alsals.micro_batch_closure(
        model, list(zip(x.chunk(3), y.chunk(3))), lambda mb: mse(model, *mb), no_sync=False
    )
    closure()
    assert model.events == ["forward"] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(micro_batches=[]), "at least one"),
        (dict(weights=[0.5]), "2 micro-batches"),
        (dict(weights=[0.5, float("nan")]), "finite"),
    ],
)
def test_micro_batch_closure_rejects_bad_arguments(kwargs, match):
    model = mlp()
    arguments = {"micro_batches": [torch.randn(2, 10), torch.randn(2, 10)], **kwargs}
    with pytest.raises(ValueError, match=match):
        alsals.micro_batch_closure(model, arguments.pop("micro_batches"), lambda mb: model(mb).sum(), **arguments)


def test_micro_batches_with_a_grad_scaler_match_the_unscaled_run():
    """Each micro-batch's backward is scaled and the step unscales the sum: with a power-of-two
    scale the run is the unscaled run."""
    reference = run(micro(4))
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=10**6)
    etas, losses = [], []
    torch.manual_seed(0)
    for idx in batches(len(X), 32, 30):
        x_b, y_b = X[idx], y[idx]
        closure = alsals.micro_batch_closure(
            model, list(zip(x_b.chunk(4), y_b.chunk(4))), lambda mb: mse(model, *mb), grad_scaler=scaler
        )
        losses.append(opt.step(closure, grad_scaler=scaler).item())
        scaler.update()
        etas.append(opt.step_size)
    assert_same_run((model, opt, etas, losses), reference)
    assert scaler.get_scale() == 2.0**8
