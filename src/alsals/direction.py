"""Tensor kernels: the search direction, its slope, and moves of the parameters along it.

Each kernel has two implementations that compute the same numbers:

- a readable single-tensor reference (``foreach=False``), one parameter at a time;
- a multi-tensor fast path (``foreach=True``) over lists of tensors that share a device and dtype,
  built on ``torch._foreach_*`` (one fused kernel per list on CUDA).

``tests/test_direction.py`` checks that both agree, and that a whole optimizer run gives the same
step sizes and parameters with either.

Directions (``P = 1/(√v̂ + ε)`` elementwise, ``m̂ = m/(1 − β1^t)``, ``v̂ = v/(1 − β2^t)``):

============================  ==================  ==========================
kind                          direction ``d``     slope ``D = gᵀd``
============================  ==================  ==========================
``"adam"`` (ALSALS)            ``P·m̂``            ``Σ g·P·m̂``
``"preconditioned_gradient"``  ``P·g`` (SaLSa)     ``Σ g·P·g``
``"gradient"`` (SLS)           ``g``               ``‖g‖²``
============================  ==================  ==========================

The Adam moments are updated in place (``m ← β1·m + (1 − β1)·g``, ``v ← β2·v + (1 − β2)·g²``); the
direction is a fresh tensor per parameter that lives for one optimizer step only.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

DIRECTION_KINDS = ("adam", "preconditioned_gradient", "gradient")


def uses_first_moment(kind: str) -> bool:
    """Whether the direction needs Adam's first moment ``m``."""
    return kind == "adam"


def uses_second_moment(kind: str) -> bool:
    """Whether the direction needs Adam's second moment ``v``."""
    return kind in ("adam", "preconditioned_gradient")


def _bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """``(1 − β1^t, √(1 − β2^t))``."""
    return 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)


# --------------------------------------------------------------------------------------------------
# Reference implementation: one tensor at a time, the maths as written.
# --------------------------------------------------------------------------------------------------


def _moments_reference(
    grad: Tensor,
    exp_avg: Optional[Tensor],
    exp_avg_sq: Tensor,
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> Tuple[Tensor, float]:
    """Update the moments in place; return the denominator ``√v̂ + ε`` (a new tensor) and ``1 − β1^t``."""
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if kind == "adam":
        exp_avg.lerp_(grad, 1.0 - beta1)
    return (exp_avg_sq.sqrt() / sqrt_bias2).add_(eps), bias1


def direction_reference(
    grad: Tensor,
    exp_avg: Optional[Tensor],
    exp_avg_sq: Optional[Tensor],
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> Tensor:
    """Update the moments of one parameter in place and return its direction ``d``."""
    if kind == "gradient":
        return grad.clone()
    hyper = dict(kind=kind, beta1=beta1, beta2=beta2, eps=eps, step=step)
    preconditioner, bias1 = _moments_reference(grad, exp_avg, exp_avg_sq, **hyper)
    preconditioner.reciprocal_()
    if kind == "preconditioned_gradient":
        return preconditioner.mul_(grad)
    return preconditioner.mul_(exp_avg).mul_(1.0 / bias1)


def apply_step_reference(
    param: Tensor,
    grad: Tensor,
    exp_avg: Optional[Tensor],
    exp_avg_sq: Optional[Tensor],
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    scale: float,
    keep: float,
) -> None:
    """A whole step without a search (amortised steps): update the moments of one parameter and
    set ``w ← keep·w − scale·d`` in place.

    The same numbers as :func:`direction_reference` followed by the move, with ``d`` applied as
    ``m/(bias1·denom)`` in one ``addcdiv`` (as ``torch.optim.Adam`` does) instead of being stored.
    """
    if keep != 1.0:
        param.mul_(keep)
    if kind == "gradient":
        param.add_(grad, alpha=-scale)
        return
    denom, bias1 = _moments_reference(grad, exp_avg, exp_avg_sq, kind=kind, beta1=beta1, beta2=beta2, eps=eps, step=step)
    if kind == "preconditioned_gradient":
        param.addcdiv_(grad, denom, value=-scale)
    else:
        param.addcdiv_(exp_avg, denom, value=-scale / bias1)


def slope_reference(grad: Tensor, direction: Tensor) -> Tensor:
    """``gᵀd`` of one parameter as a float64 scalar."""
    return torch.dot(grad.reshape(-1).float(), direction.reshape(-1).float()).double()


# --------------------------------------------------------------------------------------------------
# Multi-tensor fast path: lists of tensors on one device with one dtype.
# --------------------------------------------------------------------------------------------------


def _moments_foreach(
    grads: List[Tensor],
    exp_avgs: List[Tensor],
    exp_avg_sqs: List[Tensor],
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> Tuple[List[Tensor], float]:
    """:func:`_moments_reference` for a list of parameters."""
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    if kind == "adam":
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, sqrt_bias2)
    torch._foreach_add_(denom, eps)
    return denom, bias1


def direction_foreach(
    grads: List[Tensor],
    exp_avgs: List[Tensor],
    exp_avg_sqs: List[Tensor],
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> List[Tensor]:
    """:func:`direction_reference` for a list of parameters, with ``torch._foreach_*`` kernels."""
    if kind == "gradient":
        return [g.clone() for g in grads]
    hyper = dict(kind=kind, beta1=beta1, beta2=beta2, eps=eps, step=step)
    directions, bias1 = _moments_foreach(grads, exp_avgs, exp_avg_sqs, **hyper)
    torch._foreach_reciprocal_(directions)
    if kind == "preconditioned_gradient":
        torch._foreach_mul_(directions, grads)
        return directions
    torch._foreach_mul_(directions, exp_avgs)
    torch._foreach_mul_(directions, 1.0 / bias1)
    return directions


def apply_step_foreach(
    params: List[Tensor],
    grads: List[Tensor],
    exp_avgs: List[Tensor],
    exp_avg_sqs: List[Tensor],
    *,
    kind: str,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    scale: float,
    keep: float,
) -> None:
    """:func:`apply_step_reference` for a list of parameters, with ``torch._foreach_*`` kernels."""
    if keep != 1.0:
        torch._foreach_mul_(params, keep)
    if kind == "gradient":
        torch._foreach_add_(params, grads, alpha=-scale)
        return
    denom, bias1 = _moments_foreach(grads, exp_avgs, exp_avg_sqs, kind=kind, beta1=beta1, beta2=beta2, eps=eps, step=step)
    if kind == "preconditioned_gradient":
        torch._foreach_addcdiv_(params, grads, denom, value=-scale)
    else:
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-scale / bias1)


def slope_foreach(grads: List[Tensor], directions: List[Tensor]) -> Tensor:
    """``Σ gᵀd`` over a list of parameters as a float64 scalar."""
    dots = [torch.dot(g.reshape(-1).float(), d.reshape(-1).float()) for g, d in zip(grads, directions)]
    return torch.stack(dots).double().sum()


# --------------------------------------------------------------------------------------------------
# Moves along the direction (both paths).
# --------------------------------------------------------------------------------------------------


def move(params: List[Tensor], directions: List[Tensor], alpha: float, *, foreach: bool) -> None:
    """``w ← w + alpha·d`` in place (trial points are reached from the last one, no copy of ``w``)."""
    if alpha == 0.0:
        return
    if foreach:
        torch._foreach_add_(params, directions, alpha=alpha)
    else:
        for p, d in zip(params, directions):
            p.add_(d, alpha=alpha)


def commit(
    params: List[Tensor],
    directions: List[Tensor],
    *,
    step_size: float,
    lr: float,
    weight_decay: float,
    foreach: bool,
) -> None:
    """Turn the accepted trial point ``w − η·d`` into the committed point.

    The committed point is ``w − lr·η·(d + λ·w)``: the search tested the unscaled step ``η``; the
    parameters move by the multiplier ``lr`` times it, and decoupled weight decay ``λ`` is scaled by
    the same accepted step (as AdamW scales it by its learning rate). Written from the trial point
    ``u = w − η·d`` (so ``w = u + η·d``)::

        w_new = (1 − lr·η·λ)·u + η·(1 − lr − lr·η·λ)·d

    When ``lr = 1`` and ``λ = 0`` the parameters are exactly the accepted trial point.
    """
    decay = lr * step_size * weight_decay
    keep = 1.0 - decay
    alpha = step_size * (1.0 - lr - decay)
    if keep != 1.0:
        if foreach:
            torch._foreach_mul_(params, keep)
        else:
            for p in params:
                p.mul_(keep)
    move(params, directions, alpha, foreach=foreach)
