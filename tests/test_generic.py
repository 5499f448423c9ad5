"""The generic checks, run on every variant of the database (``tests/optim_db.py``).

Resume bitwise, one host read per evaluation, fault safety, parameter groups and schedulers,
frozen and ``None`` gradients, bf16/fp16/fp64 parameters, deepcopy and pickling, weights-only
checkpoints.
"""

import copy
import io

import pytest
import torch
from torch import nn

from helpers import batches, mlp, regression_data
from optim_db import VARIANT_IDS, VARIANTS

variants = pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)

X, Y = regression_data()
ORDER = batches(len(X), 32, 30)


def closure_for(model, idx, dtype=torch.float32):
    x, y = X[idx].to(dtype), Y[idx].to(dtype)
    return lambda: ((model(x).squeeze(-1) - y) ** 2).mean().float()


def run(model, opt, order, dtype=torch.float32):
    losses = []
    for idx in order:
        losses.append(opt.step(closure_for(model, idx, dtype)).item())
    return losses


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(a, b):
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def state_tensors(opt):
    return {k: {n: torch.as_tensor(t).clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}


def assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), (k, n)


@variants
def test_resume_is_bitwise(variant):
    torch.manual_seed(7)
    model = mlp(dropout=0.2)
    opt = variant.make(model.parameters())
    torch.manual_seed(7)
    full = run(model, opt, ORDER)
    final = params_of(model), opt.search_state

    torch.manual_seed(7)
    model = mlp(dropout=0.2)
    opt = variant.make(model.parameters())
    torch.manual_seed(7)
    first = run(model, opt, ORDER[:15])  # past the warm-up searches: amortized steps follow
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model = mlp(dropout=0.2, seed=99)
    opt = variant.make(model.parameters())
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    torch.set_rng_state(checkpoint["rng"])
    second = run(model, opt, ORDER[15:])
    assert first + second == full
    assert_params_equal(params_of(model), final[0])
    assert opt.search_state == final[1]
    if variant.amortized:
        assert final[1]["skipped_searches"] > 0


def count_host_reads(monkeypatch):
    """Record every tensor method that reads a value back to the host."""
    calls = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@variants
def test_one_host_read_per_searched_evaluation_and_none_on_device_amortized_steps(variant, monkeypatch):
    """A searched step reads once per closure evaluation; an amortized step decided on the device
    (torch's fused AdamW kernel) reads nothing, and its counts come back with the next read."""
    model = mlp(dropout=0.1)
    opt = variant.make(model.parameters())
    run(model, opt, ORDER[:2])  # lazy state exists
    before = opt.counters
    calls = count_host_reads(monkeypatch)
    for idx in ORDER[2:30]:
        opt.step(closure_for(model, idx))
    monkeypatch.undo()
    after = opt.counters
    evaluations = after["forward_evaluations"] - before["forward_evaluations"]
    amortized = after["skipped_searches"] - before["skipped_searches"]
    assert (amortized > 0) == variant.amortized
    reads = evaluations - amortized if variant.device_amortized else evaluations
    assert calls == ["tolist"] * reads
    assert after["steps"] - before["steps"] == 28


class Interrupted(Exception):
    pass


@variants
def test_an_exception_in_a_trial_leaves_everything_as_it_was(variant):
    runs = []
    for fail in (False, True):
        torch.manual_seed(3)
        model = mlp(dropout=0.1)
        opt = variant.make(model.parameters(), amortized=False) if variant.amortized else variant.make(model.parameters())
        run(model, opt, ORDER[:3])
        if fail:
            before = params_of(model), state_tensors(opt), opt.search_state
            rng = torch.get_rng_state()
            calls = [0]
            inner = closure_for(model, ORDER[3])

            def failing():
                calls[0] += 1
                if calls[0] == 2:
                    raise Interrupted
                return inner()

            with pytest.raises(Interrupted):
                opt.step(failing)
            assert_params_equal(params_of(model), before[0])
            assert_states_equal(state_tensors(opt), before[1])
            assert opt.search_state == before[2]
            torch.set_rng_state(rng)
        run(model, opt, ORDER[3:8])
        runs.append((params_of(model), opt.search_state))
    assert_params_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


@variants
def test_parameter_groups_and_a_scheduler(variant):
    model = mlp()
    opt = variant.make([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    losses = []
    for idx in ORDER:
        losses.append(opt.step(closure_for(model, idx)).item())
        sched.step()
        assert all(group["step_size"] == opt.step_size for group in opt.param_groups)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 / (1 + 0.1 * len(ORDER)))


@variants
def test_frozen_and_unused_parameters_do_not_move(variant):
    model = mlp()
    unused = nn.Parameter(torch.ones(3))
    opt = variant.make([{"params": model.parameters()}, {"params": [unused]}])
    run(model, opt, ORDER[:12])
    model[0].requires_grad_(False)
    frozen = params_of(model[0])
    run(model, opt, ORDER[12:])
    assert_params_equal(params_of(model[0]), frozen)
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in opt.state


@variants
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_parameters(variant, dtype):
    model = mlp(dtype=dtype)
    opt = variant.make(model.parameters())
    losses = run(model, opt, ORDER[:20], dtype=dtype)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-5:]) < sum(losses[:5])
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq"):
            if name in opt.state[p]:
                assert opt.state[p][name].dtype == dtype


@variants
def test_deepcopy_and_pickle_continue_bitwise_like_the_original(variant):
    torch.manual_seed(0)
    model = mlp(dropout=0.1)
    opt = variant.make(model.parameters())
    run(model, opt, ORDER[:12])
    copied_model, copied_opt = copy.deepcopy((model, opt))
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)
    buffer.seek(0)
    loaded_model, loaded_opt = torch.load(buffer, weights_only=False)
    public = {k for k in vars(opt) if not k.startswith("_")}
    assert {k for k in vars(copied_opt) if not k.startswith("_")} == public
    assert copied_opt.config == opt.config and loaded_opt.config == opt.config
    results = []
    for m, o in ((model, opt), (copied_model, copied_opt), (loaded_model, loaded_opt)):
        torch.manual_seed(1)
        results.append((run(m, o, ORDER[12:20]), params_of(m), o.search_state))
    for other in results[1:]:
        assert other[0] == results[0][0]
        assert_params_equal(other[1], results[0][1])
        assert other[2] == results[0][2]


@variants
def test_the_state_dict_loads_with_weights_only_and_is_a_snapshot(variant):
    model = mlp()
    opt = variant.make(model.parameters())
    run(model, opt, ORDER[:5])
    saved = opt.state_dict()
    snapshot = copy.deepcopy(saved)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    run(model, opt, ORDER[5:7])
    assert saved["param_groups"] == snapshot["param_groups"]  # later steps do not alter it
    assert loaded["param_groups"] == snapshot["param_groups"]
    fresh = variant.make(mlp().parameters())
    fresh.load_state_dict(loaded)
    assert fresh.search_state == snapshot["param_groups"][0]["search"]


@variants
def test_foreach_and_reference_kernels_agree(variant):
    if "foreach" in variant.kwargs:
        pytest.skip("the variant fixes the kernels")
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = mlp(dropout=0.1)
        opt = variant.make(model.parameters(), foreach=foreach)
        torch.manual_seed(0)
        runs.append((run(model, opt, ORDER[:20]), params_of(model), opt.counters))
    (l1, p1, c1), (l2, p2, c2) = runs
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert c1 == c2
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
