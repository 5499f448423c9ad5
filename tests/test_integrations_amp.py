"""Mixed precision: bf16 autocast in the closure, and the fp16 GradScaler protocol (CPU).

The GradScaler tests run on the CPU (``torch.amp.GradScaler("cpu")``, fp16 autocast on the CPU).
Scaling by a power of two is exact in floating point, so a scaled run must reproduce the unscaled
run bit for bit: that proves the gradients are unscaled before the direction is formed and that the
trials compare unscaled losses.
"""

import warnings

import pytest
import torch
from torch.nn import functional as F

import alsals
from alsals.amp import prepare_scaler

from helpers import batches, mlp, regression_data

torch.set_num_threads(1)


def batch_closure(model, X, y, idx, autocast_dtype=None):
    def closure():
        if autocast_dtype is None:
            return F.mse_loss(model(X[idx]).squeeze(-1), y[idx])
        with torch.autocast("cpu", dtype=autocast_dtype):
            return F.mse_loss(model(X[idx]).squeeze(-1), y[idx])

    return closure


def exact_scaler(**kwargs):
    """A scaler whose scale stays a power of two (no growth within a test)."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6, **kwargs)


def run(recipe, steps=25, dropout=0.2):
    X, y = regression_data()
    model = mlp(dropout=dropout)
    opt = alsals.ALSALS(model.parameters())
    scaler = exact_scaler()
    if recipe == "scaler.step":
        prepare_scaler(scaler)
    etas, losses = [], []
    for idx in batches(len(X), 32, steps):
        closure = batch_closure(model, X, y, idx)
        if recipe == "none":
            loss = opt.step(closure)
        elif recipe == "grad_scaler":
            loss = opt.step(closure, grad_scaler=scaler)
            scaler.update()
        elif recipe == "scaler.step":
            with pytest.warns(FutureWarning, match="GradScaler is going to stop passing itself"):
                loss = scaler.step(opt, closure)  # the closure positionally: scaler.step rejects closure=
            scaler.update()
        elif recipe == "lbfgs_style":
            def lbfgs_closure(closure=closure):
                loss = closure()
                opt.zero_grad()
                scaler.scale(loss).backward()
                return loss

            loss = opt.step(lbfgs_closure, grad_scaler=scaler)
            scaler.update()
        etas.append(opt.step_size)
        losses.append(loss.item())
    return model, opt, etas, losses


@pytest.mark.parametrize("recipe", ["grad_scaler", "scaler.step", "lbfgs_style"])
def test_scaled_training_reproduces_unscaled_training_bitwise(recipe):
    model0, opt0, etas0, losses0 = run("none")
    model1, opt1, etas1, losses1 = run(recipe)
    assert etas1 == etas0
    assert losses1 == losses0  # step returns the unscaled first loss
    for a, b in zip(model0.parameters(), model1.parameters()):
        assert torch.equal(a, b)
    assert opt1.counters["skipped_steps"] == 0
    assert opt1.counters["backtracks"] == opt0.counters["backtracks"]


def test_grad_scaler_keyword_recipe_emits_no_future_warning():
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for idx in batches(len(X), 32, 3):
            opt.step(batch_closure(model, X, y, idx), grad_scaler=scaler)
            scaler.update()


def test_scaler_step_needs_the_scale_created_first():
    """torch's GradScaler.step refuses to run before its first scale(): with a closure that call
    happens inside the step. alsals.amp.prepare_scaler creates the scale up front."""
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(model.parameters())
    closure = batch_closure(model, X, y, torch.arange(32))
    with pytest.raises(AssertionError, match="_scale is None"):
        scaler = torch.amp.GradScaler("cpu")
        scaler.step(opt, closure)
    scaler = prepare_scaler(torch.amp.GradScaler("cpu", init_scale=4.0))
    assert scaler.get_scale() == 4.0  # preparing does not change the scale
    with pytest.warns(FutureWarning):
        loss = scaler.step(opt, closure)
    scaler.update()
    assert torch.isfinite(loss) and opt.counters["steps"] == 1


@pytest.mark.parametrize("recipe", ["grad_scaler", "scaler.step"])
def test_inf_gradient_skips_the_step_and_the_scale_backs_off(recipe):
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(model.parameters())
    scaler = prepare_scaler(exact_scaler())
    poison = {"on": False}
    model[0].weight.register_hook(lambda g: g * float("inf") if poison["on"] else g)

    def step(idx):
        closure = batch_closure(model, X, y, idx)
        if recipe == "grad_scaler":
            loss = opt.step(closure, grad_scaler=scaler)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                loss = scaler.step(opt, closure)
        scaler.update()
        return loss

    idx = batches(len(X), 32, 3)
    step(idx[0])
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    eta = opt.step_size
    scale = scaler.get_scale()

    poison["on"] = True
    loss = step(idx[1])
    assert torch.isfinite(loss)  # the loss is finite; the gradient is not
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)  # weights unchanged
    for m, p in zip(moments, model.parameters()):
        assert torch.equal(m, opt.state[p]["exp_avg"])  # Adam's moments unchanged
    assert opt.step_size == eta
    assert scaler.get_scale() == scale * 0.5  # the scaler backed off
    counters = opt.counters
    assert counters["skipped_steps"] == 1 and counters["steps"] == 2 and counters["searches"] == 1
    assert opt.search_state["last_status"] == "skipped_nonfinite"

    poison["on"] = False
    step(idx[2])  # training goes on
    assert opt.counters["searches"] == 2
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_autocast_with_grad_scaler_trains():
    X, y = regression_data()
    model = mlp(hidden=64)
    opt = alsals.ALSALS(model.parameters())
    scaler = torch.amp.GradScaler("cpu")  # init scale 2**16, growth every 2000 steps
    with torch.no_grad():
        start = F.mse_loss(model(X).squeeze(-1), y).item()
    for idx in batches(len(X), 32, 80):
        loss = opt.step(batch_closure(model, X, y, idx, torch.float16), grad_scaler=scaler)
        scaler.update()
        assert loss.dtype == torch.float32  # autocast computes mse_loss in fp32
    with torch.no_grad():
        end = F.mse_loss(model(X).squeeze(-1), y).item()
    assert end < 0.2 * start
    skipped = opt.counters["skipped_steps"]
    assert scaler.get_scale() == 2.0**16 * 0.5**skipped  # every skipped step backed the scale off once
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_in_the_closure_trains_and_compares_fp32_losses():
    X, y = regression_data()
    model = mlp(hidden=64, dropout=0.1)
    opt = alsals.ALSALS(model.parameters())
    with torch.no_grad():
        start = F.mse_loss(model(X).squeeze(-1), y).item()
    for idx in batches(len(X), 32, 80):
        closure = batch_closure(model, X, y, idx, torch.bfloat16)
        loss = opt.step(closure)
        # the loss reduction runs in fp32 under autocast, and the search reads that value
        assert loss.dtype == torch.float32
        assert opt.search_state["last_loss"] == loss.item()
    model.eval()
    with torch.no_grad():
        end = F.mse_loss(model(X).squeeze(-1), y).item()
    assert end < 0.2 * start
    counters = opt.counters
    assert counters["skipped_steps"] == 0 and counters["searches"] + counters["skipped_searches"] == 80
    assert counters["searches"] >= 10
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_trial_at_the_same_weights_reproduces_the_first_loss():
    """Under bf16 autocast (with dropout), a trial at step size 0 gives exactly the first loss:
    the Armijo comparison sees no rounding noise from recomputation."""
    from alsals.closure import ClosureEvaluator

    X, y = regression_data()
    model = mlp(hidden=64, dropout=0.2)
    params = list(model.parameters())
    evaluator = ClosureEvaluator(batch_closure(model, X, y, torch.arange(64), torch.bfloat16), params, "ALSALS")
    first = evaluator.first()
    with torch.no_grad():
        trial = evaluator.trial()
    evaluator.finish()
    assert trial.item() == first.item()


def test_disabled_scaler_is_a_no_op():
    model0, _, etas0, _ = run("none", steps=10)
    X, y = regression_data()
    model = mlp(dropout=0.2)
    opt = alsals.ALSALS(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    etas = []
    for idx in batches(len(X), 32, 10):
        scaler.step(opt, batch_closure(model, X, y, idx))
        scaler.update()
        etas.append(opt.step_size)
    assert etas == etas0
