"""Amortized steps decided on the device: torch's fused AdamW kernel, no host read, lazy counters.

An amortized step (no search) must not synchronise with the host: whether its loss and gradients are
finite is decided on the device, the fused kernel skips the whole update when they are not, and the
step's loss and skip are kept on the device until the user asks (``counters``, ``search_state``,
``state_dict()``) or the next searched step reads its first loss anyway.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from test_generic import count_host_reads

import alsals
from alsals import kernels

from helpers import batches, mlp, regression_data

X, Y = regression_data()
ORDER = batches(len(X), 32, 60, seed=3)


def closure_for(model, idx, poison=False):
    dtype = next(model.parameters()).dtype

    def closure():
        loss = ((model(X[idx].to(dtype)).squeeze(-1) - Y[idx].to(dtype)) ** 2).mean()
        return loss * float("nan") if poison else loss

    return closure


def planned_amortized(opt):
    state = opt.search_state
    return state["searches"] >= 10 and state["steps_until_search"] > 0


def warmed_up(dtype=torch.float32, **kwargs):
    """A model and optimizer whose next step is amortized."""
    model = mlp(dropout=0.1, dtype=dtype)
    opt = alsals.ALSALS(model.parameters(), **kwargs)
    i = 0
    while i < 12 or not planned_amortized(opt):
        opt.step(closure_for(model, ORDER[i]))
        i += 1
    return model, opt, i


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    # Adam's state (the average of the iterates, kept without total_steps, samples the unchanged
    # iterate at a skipped step like at any other: it is not part of the step's update)
    moments = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and k != "average"}
               for p in model.parameters()]
    steps = [opt.state[p]["step"] for p in model.parameters()]
    return params, moments, steps


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_fused_kernel_matches_the_reference_and_skips_without_touching_anything(dtype, weight_decay):
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 2, 2)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    exp_avgs = [(0.1 * torch.randn(s, generator=gen)).to(dtype) for s in shapes]
    exp_avg_sqs = [(0.01 * torch.rand(s, generator=gen)).to(dtype) for s in shapes]
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=17)
    step_size, keep = 0.03, 1.0 - 0.03 * weight_decay

    ref = [[t.clone() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs)]
    for p, g, m, v in zip(ref[0], grads, ref[1], ref[2]):
        kernels.apply_step_reference(p, g, m, v, kind="adam", **hyper, step_size=step_size, keep=keep)
    fused = [[t.clone() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs)]
    assert kernels.fused_supported(fused[0])
    kernels.apply_step_fused(*[fused[0], grads, fused[1], fused[2]], **hyper, step_size=step_size,
                             weight_decay=weight_decay, skip=torch.zeros(()))
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for a_list, b_list in zip(ref, fused):
        for a, b in zip(a_list, b_list):
            torch.testing.assert_close(b.double(), a.double(), rtol=tol, atol=tol)
    assert not torch.equal(fused[0][0], params[0])  # it did move

    skipped = [[t.clone() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs)]
    kernels.apply_step_fused(*[skipped[0], grads, skipped[1], skipped[2]], **hyper, step_size=step_size,
                             weight_decay=weight_decay, skip=torch.ones(()))
    for before, after in zip((params, exp_avgs, exp_avg_sqs), skipped):
        assert all(torch.equal(a, b) for a, b in zip(before, after))


# ---------------------------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------------------------


def test_an_amortized_step_reads_nothing_back_and_its_counts_arrive_when_asked(monkeypatch):
    model, opt, i = warmed_up()
    before = opt.counters
    calls = count_host_reads(monkeypatch)
    loss = opt.step(closure_for(model, ORDER[i]))
    monkeypatch.undo()
    assert calls == []
    assert loss.shape == () and loss.requires_grad is False
    state = opt.search_state  # reads the device-side counts back
    assert state["last_status"] == "amortized"
    assert state["last_loss"] == pytest.approx(float(loss))
    assert opt.counters["skipped_searches"] == before["skipped_searches"] + 1
    assert opt.counters["skipped_steps"] == 0


def test_a_non_finite_amortized_step_is_skipped_on_the_device(monkeypatch):
    model, opt, i = warmed_up()
    params, moments, steps = snapshot(model, opt)
    calls = count_host_reads(monkeypatch)
    opt.step(closure_for(model, ORDER[i], poison=True))
    monkeypatch.undo()
    assert calls == []  # decided and skipped on the device
    after_params, after_moments, after_steps = snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(params, after_params))
    for a, b in zip(moments, after_moments):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert after_steps == [s + 1 for s in steps]  # the step counts (bias correction) advance anyway
    state = opt.search_state
    assert state["skipped_steps"] == 1 and state["last_status"] == "skipped_nonfinite"
    assert math.isnan(state["last_loss"])
    for idx in ORDER[i + 1 : i + 30]:  # training goes on, searches included
        opt.step(closure_for(model, idx))
    assert opt.counters["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_next_search_folds_the_device_counts_in_with_its_own_one_read(monkeypatch):
    model, opt, i = warmed_up()
    opt.step(closure_for(model, ORDER[i], poison=True))
    i += 1
    while planned_amortized(opt):
        opt.step(closure_for(model, ORDER[i]))
        i += 1
    searches = opt._search_state().searches
    calls = count_host_reads(monkeypatch)
    opt.step(closure_for(model, ORDER[i]))  # a searched step
    monkeypatch.undo()
    state = opt._search_state()  # the carried state, without asking for the device counts
    assert state.searches == searches + 1
    assert calls == ["tolist"] * state.last_trials + ["tolist"]  # first loss (with the counts) + trials
    assert state.skipped_steps == 1 and opt._device_counts is None


def test_state_dict_deepcopy_and_resume_carry_the_device_counts():
    model, opt, i = warmed_up()
    opt.step(closure_for(model, ORDER[i], poison=True))
    opt.step(closure_for(model, ORDER[i + 1]))
    saved = opt.state_dict()
    assert saved["param_groups"][0]["search"]["skipped_steps"] == 1
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh = alsals.ALSALS(model.parameters())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.counters == opt.counters
    copied = copy.deepcopy(opt)
    assert copied.counters == opt.counters and copied.search_state == opt.search_state


def test_reference_kernels_and_fused_false_keep_the_host_read_and_agree_with_the_fused_run():
    runs = {}
    for name, kwargs in (("fused", {}), ("foreach", {"fused": False}), ("reference", {"foreach": False})):
        torch.manual_seed(0)
        model = mlp(dropout=0.1, dtype=torch.float64)
        opt = alsals.ALSALS(model.parameters(), **kwargs)
        torch.manual_seed(0)
        for idx in ORDER[:40]:
            opt.step(closure_for(model, idx))
        runs[name] = (model, opt)
    fused_model, fused_opt = runs["fused"]
    assert fused_opt.counters["skipped_searches"] > 0
    for name in ("foreach", "reference"):
        model, opt = runs[name]
        assert opt.counters == fused_opt.counters
        for a, b in zip(model.parameters(), fused_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_true_is_checked_at_construction():
    with pytest.raises(ValueError, match="foreach=False"):
        alsals.ALSALS(mlp().parameters(), fused=True, foreach=False)
    with pytest.raises(ValueError, match="direction='adam'"):
        alsals.ALSALS(mlp().parameters(), fused=True, direction="gradient")
    with pytest.raises(ValueError, match="fused"):
        alsals.ALSALS([torch.nn.Parameter(torch.zeros(3, device="meta"))], fused=True)  # no fused kernel there
    alsals.ALSALS(mlp().parameters(), fused=True)  # the CPU and fp32: supported


# ---------------------------------------------------------------------------------------------
# CUDA: no synchronisation at all (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amortized_steps_run_under_sync_debug_mode_error():
    device = torch.device("cuda")
    torch.manual_seed(0)
    layers = (torch.nn.Linear(10, 64), torch.nn.Dropout(0.1), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    model = torch.nn.Sequential(*layers).to(device)
    opt = alsals.ALSALS(model.parameters())
    Xd, Yd = X.to(device), Y.to(device)

    def closure_at(idx, poison=False):
        idx = idx.to(device)

        def closure():
            loss = ((model(Xd[idx]).squeeze(-1) - Yd[idx]) ** 2).mean()
            return loss * float("nan") if poison else loss

        return closure

    i = 0
    while i < 12 or not planned_amortized(opt):
        opt.step(closure_at(ORDER[i]))
        i += 1
    amortized = 0
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        while opt._search_state().steps_until_search > 0:
            opt.step(closure_at(ORDER[i], poison=amortized == 1))
            amortized += 1
            i += 1
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert amortized >= 2
    assert opt.counters["skipped_steps"] == 1
