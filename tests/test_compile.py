"""ALSALS with torch.compile'd models (issue 11, defect 5).

A compiled model must compile at most two graphs over a run (one with and one without gradients)
and work with ``fullgraph=True``, for ``torch.compile(model)`` (an ``OptimizedModule``) and
``model.compile()`` (in place: the module's whole ``_call_impl``, global hooks included, is
compiled), with the ``aot_eager`` and ``inductor`` backends. Trials must still leave BatchNorm
statistics and other buffers as the first evaluation left them.
"""

import pytest
import torch
import torch._dynamo
from torch import nn

import alsals


class EMACodebook(nn.Module):
    """A buffer updated in forward (training mode) with in-place ops, as VQ-VAE codebooks are."""

    def __init__(self, dim):
        super().__init__()
        self.register_buffer("code", torch.zeros(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.code.mul_(0.9).add_(x.detach().mean(0), alpha=0.1)
            self.updates.add_(1)
        return x + self.code


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), EMACodebook(16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1)
    )


class CountingBackend:
    """A dynamo backend that counts the graphs it is given and hands them to a real backend."""

    def __init__(self, backend):
        self.backend = backend
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        return lookup_backend(self.backend)(gm, example_inputs)


def train(model, forward, steps=14, **kwargs):
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(256, 6, generator=gen)
    y = X.sum(1, keepdim=True)
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0, **kwargs)
    torch.manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)
        opt.step(lambda: ((forward(X[idx]) - y[idx]) ** 2).mean())
    return opt


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("style", ["torch.compile(model)", "model.compile()"])
def test_a_compiled_model_compiles_two_graphs_and_fullgraph_works(style, backend):
    model = make_model()
    counting = CountingBackend(backend)
    if style == "torch.compile(model)":
        forward = torch.compile(model, backend=counting, fullgraph=True)
    else:
        model.compile(backend=counting, fullgraph=True)
        forward = model
    with torch._dynamo.config.patch(error_on_recompile=False):
        opt = train(model, forward, amortized=False)
    evaluations = opt.counters["forward_evaluations"]
    assert evaluations > 2 * opt.counters["steps"]  # trials ran (no_grad graphs)
    assert counting.graphs <= 2, f"{counting.graphs} graphs for {evaluations} evaluations"
    # nothing fell back to eager: every evaluation ran a compiled graph, none recompiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def test_no_recompilation_at_all_after_the_first_two_graphs():
    model = make_model()
    forward = torch.compile(model, backend="aot_eager", fullgraph=True)
    train(model, forward, steps=2, amortized=False)  # the first step discovers, the graphs exist
    with torch._dynamo.config.patch(error_on_recompile=True):
        train(model, forward, steps=12)  # amortized steps too: they run no trial and no hook


@pytest.mark.parametrize("style", ["eager", "torch.compile(model)", "model.compile()"])
def test_trials_leave_buffers_as_the_first_evaluation_left_them(style):
    model = make_model()
    twin = make_model()
    if style == "torch.compile(model)":
        forward = torch.compile(model, backend="aot_eager")
    elif style == "model.compile()":
        model.compile(backend="aot_eager")
        forward = model
    else:
        forward = model
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(64, 6, generator=gen)
    y = X.sum(1, keepdim=True)
    opt = alsals.ALSALS(model.parameters(), initial_step_size=10.0, amortized=False)  # many trials
    for step in range(3):
        twin.load_state_dict(model.state_dict())  # the weights and buffers before the step
        torch.manual_seed(step)
        opt.step(lambda: ((forward(X) - y) ** 2).mean())
        torch.manual_seed(step)
        twin(X)  # one forward at the weights before the step, in training mode
        for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
            assert torch.equal(a, b), name
    assert opt.counters["forward_evaluations"] >= 3 * 3  # trials ran
    assert int(model[2].updates) == 3  # one update per step, none per trial
