"""The tensor kernels: multi-tensor fast path against the single-tensor reference, and exactness."""

import math

import pytest
import torch

from alsals import kernels as k


def tensors(seed, shapes=((3, 4), (5,), (2, 2, 2)), dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def moments(dtype=torch.float64):
    return tensors(1, dtype=dtype), [t.abs() for t in tensors(2, dtype=dtype)]


HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=3)


@pytest.mark.parametrize("kind", k.DIRECTION_KINDS)
def test_direction_fast_path_matches_reference_and_leaves_the_moments_alone(kind):
    grads = tensors(0)
    m_ref, v_ref = moments()
    m_fast, v_fast = [t.clone() for t in m_ref], [t.clone() for t in v_ref]
    before = [t.clone() for t in m_ref + v_ref]
    ref = [k.direction_reference(g, m, v, kind=kind, **HYPER) for g, m, v in zip(grads, m_ref, v_ref)]
    fast = k.direction_foreach(grads, m_fast, v_fast, kind=kind, **HYPER)
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    for a, b in zip(before, m_ref + v_ref):  # the direction does not touch the state
        assert torch.equal(a, b)
    for a, b in zip(before, m_fast + v_fast):
        assert torch.equal(a, b)
    slope_ref = sum(k.slope_reference(g, d) for g, d in zip(grads, ref))
    torch.testing.assert_close(k.slope_foreach(grads, fast), slope_ref, rtol=1e-12, atol=0)


def _direction_after_in_place_update(grad, exp_avg, exp_avg_sq, kind, beta1, beta2, eps, step):
    """The direction as version 0.1.0 formed it: moments updated in place first, then d from them."""
    bias1, sqrt_bias2 = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
    if kind == "gradient":
        return grad.clone()
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if kind == "adam":
        exp_avg.lerp_(grad, 1.0 - beta1)
    d = (exp_avg_sq.sqrt() / sqrt_bias2).add_(eps).reciprocal_()
    return d.mul_(grad) if kind == "preconditioned_gradient" else d.mul_(exp_avg).mul_(1.0 / bias1)


def _directions_after_in_place_update_foreach(grads, exp_avgs, exp_avg_sqs, kind, beta1, beta2, eps, step):
    """The same with the multi-tensor kernels, in the order of version 0.1.0."""
    bias1, sqrt_bias2 = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
    if kind == "gradient":
        return [g.clone() for g in grads]
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    if kind == "adam":
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    d = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(d, sqrt_bias2)
    torch._foreach_add_(d, eps)
    torch._foreach_reciprocal_(d)
    if kind == "preconditioned_gradient":
        torch._foreach_mul_(d, grads)
        return d
    torch._foreach_mul_(d, exp_avgs)
    torch._foreach_mul_(d, 1.0 / bias1)
    return d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("kind", k.DIRECTION_KINDS)
def test_out_of_place_direction_and_commit_time_moments_are_bitwise_the_in_place_ones(kind, foreach, dtype):
    """The searched step forms d from temporaries and updates m, v only at commit; both must be the
    very numbers of updating the moments first (the 0.1.0 order)."""
    grads = tensors(0, dtype=dtype)
    m_old, v_old = moments(dtype)
    if foreach:
        expected = _directions_after_in_place_update_foreach(grads, m_old, v_old, kind, **HYPER)
    else:
        expected = [_direction_after_in_place_update(g, m, v, kind, **HYPER) for g, m, v in zip(grads, m_old, v_old)]
    m_new, v_new = moments(dtype)
    if foreach:
        got = k.direction_foreach(grads, m_new, v_new, kind=kind, **HYPER)
        k.update_moments_foreach(grads, m_new, v_new, kind=kind, beta1=0.9, beta2=0.999)
    else:
        got = [k.direction_reference(g, m, v, kind=kind, **HYPER) for g, m, v in zip(grads, m_new, v_new)]
        for g, m, v in zip(grads, m_new, v_new):
            k.update_moments_reference(g, m, v, kind=kind, beta1=0.9, beta2=0.999)
    for a, b in zip(list(expected) + m_old + v_old, list(got) + m_new + v_new):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", k.DIRECTION_KINDS)
@pytest.mark.parametrize("foreach", [True, False])
def test_applied_step_equals_direction_then_commit(kind, foreach):
    """The amortized step's fused kernel gives the committed point of direction + commit."""
    grads = tensors(0)
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=4)
    eta, lr, decay = 0.03, 0.7, 0.1
    step_size = lr * eta
    keep = 1 - step_size * decay
    # materialised: direction, commit from w0, moments at commit
    params_a, (m_a, v_a) = tensors(3), moments()
    origins = [p.clone() for p in params_a]
    directions = [k.direction_reference(g, m, v, kind=kind, **hyper) for g, m, v in zip(grads, m_a, v_a)]
    k.commit(params_a, origins, directions, step_size=step_size, keep=keep, foreach=False)
    for g, m, v in zip(grads, m_a, v_a):
        k.update_moments_reference(g, m, v, kind=kind, beta1=0.9, beta2=0.999)
    # fused
    params_b, (m_b, v_b) = tensors(3), moments()
    if foreach:
        k.apply_step_foreach(params_b, grads, m_b, v_b, kind=kind, **hyper, step_size=step_size, keep=keep)
    else:
        for p, g, m, v in zip(params_b, grads, m_b, v_b):
            k.apply_step_reference(p, g, m, v, kind=kind, **hyper, step_size=step_size, keep=keep)
    for a, b in zip(params_a + m_a + v_a, params_b + m_b + v_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("foreach", [True, False])
def test_trial_points_come_from_w0_and_restore_is_exact(foreach, dtype):
    params = tensors(3, dtype=dtype)
    origins = [p.clone() for p in params]
    directions = tensors(4, dtype=dtype)
    for eta in (0.5, 0.45, 0.405, 1e-3, 0.7):  # any path of trials
        k.set_trial(params, origins, directions, eta, foreach=foreach)
    for p, w0, d in zip(params, origins, directions):
        assert torch.equal(p, torch.add(w0, d, alpha=-0.7))  # computed from w0, whatever came before
    k.restore(params, origins, foreach=foreach)
    for p, w0 in zip(params, origins):
        assert torch.equal(p, w0)
    k.commit(params, origins, directions, step_size=0.0, keep=1.0, foreach=foreach)  # lr = 0
    for p, w0 in zip(params, origins):
        assert torch.equal(p, w0)
