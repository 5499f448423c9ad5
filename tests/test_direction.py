"""The tensor kernels: multi-tensor fast path against the single-tensor reference."""

import pytest
import torch

from alsals import direction as k


def tensors(seed, shapes=((3, 4), (5,), (2, 2, 2))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("kind", k.DIRECTION_KINDS)
def test_direction_fast_path_matches_reference(kind):
    grads = tensors(0)
    m_ref, v_ref = tensors(1), [t.abs() for t in tensors(2)]
    m_fast, v_fast = [t.clone() for t in m_ref], [t.clone() for t in v_ref]
    hyper = dict(kind=kind, beta1=0.9, beta2=0.999, eps=1e-8, step=3)
    ref = [k.direction_reference(g, m, v, **hyper) for g, m, v in zip(grads, m_ref, v_ref)]
    fast = k.direction_foreach(grads, m_fast, v_fast, **hyper)
    for a, b in zip(ref + m_ref + v_ref, list(fast) + m_fast + v_fast):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    slope_ref = sum(k.slope_reference(g, d) for g, d in zip(grads, ref))
    torch.testing.assert_close(k.slope_foreach(grads, fast), slope_ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", k.DIRECTION_KINDS)
@pytest.mark.parametrize("foreach", [True, False])
def test_applied_step_equals_direction_then_commit(kind, foreach):
    """The amortised step's fused kernel gives the committed point of direction + move + commit."""
    grads = tensors(0)
    hyper = dict(kind=kind, beta1=0.9, beta2=0.999, eps=1e-8, step=4)
    eta, lr, decay = 0.03, 0.7, 0.1
    # materialised: direction, trial point, commit
    params_a, m_a, v_a = tensors(3), tensors(1), [t.abs() for t in tensors(2)]
    directions = [k.direction_reference(g, m, v, **hyper) for g, m, v in zip(grads, m_a, v_a)]
    k.move(params_a, directions, -eta, foreach=False)
    k.commit(params_a, directions, step_size=eta, lr=lr, weight_decay=decay, foreach=False)
    # fused
    params_b, m_b, v_b = tensors(3), tensors(1), [t.abs() for t in tensors(2)]
    scale = lr * eta
    if foreach:
        k.apply_step_foreach(params_b, grads, m_b, v_b, scale=scale, keep=1 - scale * decay, **hyper)
    else:
        for p, g, m, v in zip(params_b, grads, m_b, v_b):
            k.apply_step_reference(p, g, m, v, scale=scale, keep=1 - scale * decay, **hyper)
    for a, b in zip(params_a + m_a + v_a, params_b + m_b + v_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
