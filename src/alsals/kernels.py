"""Tensor kernels: the search direction, its slope, Adam's moments, and the moves of the parameters.

Each kernel has two implementations that compute the same numbers:

- a readable single-tensor reference (``foreach=False``), one parameter at a time;
- a multi-tensor fast path (``foreach=True``) over lists of tensors that share a device and dtype,
  built on ``torch._foreach_*`` (one fused kernel per list on CUDA);
- for the amortized step of the ``"adam"`` direction, torch's fused AdamW kernel
  (:func:`apply_step_fused`): one pass over the tensors, and a skip decided on the device.

``tests/test_kernels.py`` checks that both agree, and that a whole optimizer run gives the same step
sizes and parameters with either.

Directions (``P = 1/(√v̂ + ε)`` elementwise, ``m̂ = m/(1 − β1^t)``, ``v̂ = v/(1 − β2^t)``):

============================  ==================  ==========================
kind                          direction ``d``     slope ``D = gᵀd``
============================  ==================  ==========================
``"adam"`` (ALSALS)            ``P·m̂``            ``Σ g·P·m̂``
``"preconditioned_gradient"``  ``P·g`` (SaLSa)     ``Σ g·P·g``
``"gradient"`` (SLS)           ``g``               ``‖g‖²``
============================  ==================  ==========================

A searched step never changes the optimizer state before it commits: :func:`direction_reference`
forms ``d`` from the moments *as they will be* (``m' = β1·m + (1 − β1)·g``, ``v' = β2·v + (1 − β2)·g²``,
computed into temporaries), and :func:`update_moments_reference` applies the same operations in
place when the step commits, so ``m`` and ``v`` end bitwise as if they had been updated first. Trial
points are set from a saved copy ``w0`` of the parameters (:func:`set_trial`), never reached by
accumulating moves, and the committed point is computed from ``w0`` (:func:`commit`). An amortized
step (no search) is one update, :func:`apply_step_reference`, as in ``torch.optim.Adam``; its fast path
is torch's fused AdamW kernel (:func:`apply_step_fused`). With ``trial_direction="previous"`` the
trials move along :func:`previous_direction_reference`, the direction the step before formed
(``P·m̂`` from the moments as they are, with that step's bias corrections), and the commit along
this step's.
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


def _bias_corrections(beta1: float, beta2: float, step: int) -> Tuple[float, float]:
    """``(1 − β1^t, √(1 − β2^t))``."""
    return 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)


# --------------------------------------------------------------------------------------------------
# Reference implementation: one tensor at a time, the maths as written.
# --------------------------------------------------------------------------------------------------


def update_moments_reference(
    grad: Tensor, exp_avg: Optional[Tensor], exp_avg_sq: Optional[Tensor], *, kind: str, beta1: float, beta2: float
) -> None:
    """``v ← β2·v + (1 − β2)·g²`` and ``m ← β1·m + (1 − β1)·g`` in place (those the direction uses)."""
    if uses_second_moment(kind):
        assert exp_avg_sq is not None
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if uses_first_moment(kind):
        assert exp_avg is not None
        exp_avg.lerp_(grad, 1.0 - beta1)


def _denominator_reference(sqrt_v: Tensor, sqrt_bias2: float, eps: float) -> Tensor:
    """``√v̂ + ε`` from ``√v``, in place of the temporary ``sqrt_v``."""
    return sqrt_v.div_(sqrt_bias2).add_(eps)


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
    """The direction ``d`` of one parameter at step ``step``, from the moments before this step's
    update (they are not changed: the updated moments are temporaries)."""
    if kind == "gradient":
        return grad.clone()
    assert exp_avg_sq is not None
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    updated_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    direction = _denominator_reference(updated_sq.sqrt_(), sqrt_bias2, eps).reciprocal_()
    if kind == "preconditioned_gradient":
        return direction.mul_(grad)
    assert exp_avg is not None
    return direction.mul_(exp_avg.lerp(grad, 1.0 - beta1)).mul_(1.0 / bias1)


def previous_direction_reference(
    exp_avg: Tensor, exp_avg_sq: Tensor, *, beta1: float, beta2: float, eps: float, step: int
) -> Tensor:
    """Adam's direction of the step before (``trial_direction="previous"``): ``P·m̂`` from the moments
    as they are, with the bias corrections of step ``step − 1`` (``step`` is this step's count, at
    least 2). This step's gradient takes no part, so its batch can test a step along it without the
    selection bias of a direction formed from the batch itself."""
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step - 1)
    denominator = _denominator_reference(exp_avg_sq.sqrt(), sqrt_bias2, eps)
    return exp_avg.div(denominator).mul_(1.0 / bias1)


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
    step_size: float,
    keep: float,
) -> None:
    """A whole step without a search (an amortized step): update the moments of one parameter and
    set ``w ← keep·w − step_size·d`` in place (``step_size`` is the committed ``lr·a·η``).

    ``d`` is applied as ``m/(bias1·denom)`` in one ``addcdiv`` (as ``torch.optim.Adam`` does) and never
    stored: the same numbers as :func:`direction_reference` and :func:`commit` up to rounding.
    """
    if keep != 1.0:
        param.mul_(keep)
    update_moments_reference(grad, exp_avg, exp_avg_sq, kind=kind, beta1=beta1, beta2=beta2)
    if kind == "gradient":
        param.add_(grad, alpha=-step_size)
        return
    assert exp_avg_sq is not None
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    denom = _denominator_reference(exp_avg_sq.sqrt(), sqrt_bias2, eps)
    if kind == "preconditioned_gradient":
        param.addcdiv_(grad, denom, value=-step_size)
    else:
        assert exp_avg is not None
        param.addcdiv_(exp_avg, denom, value=-step_size / bias1)


def slope_reference(grad: Tensor, direction: Tensor) -> Tensor:
    """``gᵀd`` of one parameter as a float64 scalar."""
    return torch.dot(grad.reshape(-1).float(), direction.reshape(-1).float()).double()


# --------------------------------------------------------------------------------------------------
# Multi-tensor fast path: lists of tensors on one device with one dtype.
# --------------------------------------------------------------------------------------------------


def update_moments_foreach(
    grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], *, kind: str, beta1: float, beta2: float
) -> None:
    """:func:`update_moments_reference` for a list of parameters."""
    if uses_second_moment(kind):
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    if uses_first_moment(kind):
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)


def _denominator_foreach(sqrt_vs: List[Tensor], sqrt_bias2: float, eps: float) -> List[Tensor]:
    """:func:`_denominator_reference` for a list of temporaries."""
    torch._foreach_div_(sqrt_vs, sqrt_bias2)
    torch._foreach_add_(sqrt_vs, eps)
    return sqrt_vs


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
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    directions = list(torch._foreach_mul(exp_avg_sqs, beta2))
    torch._foreach_addcmul_(directions, grads, grads, value=1.0 - beta2)
    torch._foreach_sqrt_(directions)
    _denominator_foreach(directions, sqrt_bias2, eps)
    torch._foreach_reciprocal_(directions)
    if kind == "preconditioned_gradient":
        torch._foreach_mul_(directions, grads)
        return directions
    torch._foreach_mul_(directions, list(torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1)))
    torch._foreach_mul_(directions, 1.0 / bias1)
    return directions


def previous_direction_foreach(
    exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], *, beta1: float, beta2: float, eps: float, step: int
) -> List[Tensor]:
    """:func:`previous_direction_reference` for a list of parameters."""
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step - 1)
    denominators = _denominator_foreach(list(torch._foreach_sqrt(exp_avg_sqs)), sqrt_bias2, eps)
    directions = list(torch._foreach_div(exp_avgs, denominators))
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
    step_size: float,
    keep: float,
) -> None:
    """:func:`apply_step_reference` for a list of parameters, with ``torch._foreach_*`` kernels."""
    if keep != 1.0:
        torch._foreach_mul_(params, keep)
    update_moments_foreach(grads, exp_avgs, exp_avg_sqs, kind=kind, beta1=beta1, beta2=beta2)
    if kind == "gradient":
        torch._foreach_add_(params, grads, alpha=-step_size)
        return
    bias1, sqrt_bias2 = _bias_corrections(beta1, beta2, step)
    denom = _denominator_foreach(list(torch._foreach_sqrt(exp_avg_sqs)), sqrt_bias2, eps)
    if kind == "preconditioned_gradient":
        torch._foreach_addcdiv_(params, grads, denom, value=-step_size)
    else:
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size / bias1)


#: parameter dtypes torch's fused Adam kernel takes
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_supported(params: List[Tensor]) -> bool:
    """Whether :func:`apply_step_fused` can update ``params`` (one device, a floating dtype torch's
    fused Adam kernel takes, on a device type it exists for)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    if not params:
        return False
    device, dtype = params[0].device, params[0].dtype
    return (
        device.type in _get_fused_kernels_supported_devices()
        and dtype in FUSED_DTYPES
        and all(p.device == device and p.dtype == dtype for p in params)
    )


def apply_step_fused(
    params: List[Tensor],
    grads: List[Tensor],
    exp_avgs: List[Tensor],
    exp_avg_sqs: List[Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    step_size: float,
    weight_decay: float,
    skip: Tensor,
) -> None:
    """:func:`apply_step_reference` of the ``"adam"`` direction for a list of parameters, in one pass
    of torch's fused AdamW kernel (``torch._fused_adamw_``, on the CPU and on CUDA), decided on the device.

    ``w ← (1 − step_size·λ)·w − step_size·m̂/(√v̂ + ε)`` with the moments updated first: AdamW's update
    with learning rate ``step_size`` (the committed ``lr·a·η``) and weight decay ``λ``, the same
    numbers as the reference up to rounding (the kernel fuses the operations). ``skip`` is a 0-dim
    float32 tensor on the parameters' device: ``1.0`` leaves the parameters and the moments untouched
    (the kernel returns before it reads them), ``0.0`` applies the update. Nothing is read back to the
    host: a step whose loss or gradients are not finite is skipped without a synchronisation.
    """
    # The kernel reads the bias corrections' step count from a tensor; every parameter of the list
    # has the same one (the optimizer buckets by step count), so one tensor serves them all.
    count = torch.full((), float(step), dtype=torch.float32, device=params[0].device)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], [count] * len(params),
        lr=step_size, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
        amsgrad=False, maximize=False, grad_scale=None, found_inf=skip,
    )


def slope_foreach(grads: List[Tensor], directions: List[Tensor]) -> Tensor:
    """``Σ gᵀd`` over a list of parameters as a float64 scalar."""
    dots = [torch.dot(g.reshape(-1).float(), d.reshape(-1).float()) for g, d in zip(grads, directions)]
    return torch.stack(dots).double().sum()


# --------------------------------------------------------------------------------------------------
# Where the parameters sit (both paths): from the saved start ``w0``, never by accumulated moves.
# --------------------------------------------------------------------------------------------------


def set_trial(params: List[Tensor], origins: List[Tensor], directions: List[Tensor], step_size: float, *, foreach: bool) -> None:
    """``w ← w0 − step_size·d`` (the trial point; ``origins`` hold ``w0``)."""
    if foreach:
        torch._foreach_copy_(params, origins)
        torch._foreach_add_(params, directions, alpha=-step_size)
    else:
        for p, w0, d in zip(params, origins, directions):
            p.copy_(w0).add_(d, alpha=-step_size)


def restore(params: List[Tensor], origins: List[Tensor], *, foreach: bool) -> None:
    """``w ← w0``: bitwise the parameters before the step."""
    if foreach:
        torch._foreach_copy_(params, origins)
    else:
        for p, w0 in zip(params, origins):
            p.copy_(w0)


def commit(
    params: List[Tensor],
    origins: List[Tensor],
    directions: List[Tensor],
    *,
    step_size: float,
    keep: float,
    foreach: bool,
) -> None:
    """The committed point ``w ← keep·w0 − step_size·d`` computed from ``w0``.

    ``step_size`` is ``lr·a·η`` (the group's multiplier, the anneal factor and the accepted step size)
    and ``keep = 1 − step_size·λ`` applies decoupled weight decay with the same step, as AdamW does.
    """
    restore(params, origins, foreach=foreach)
    if keep != 1.0:
        if foreach:
            torch._foreach_mul_(params, keep)
        else:
            for p in params:
                p.mul_(keep)
    if step_size != 0.0:
        if foreach:
            torch._foreach_add_(params, directions, alpha=-step_size)
        else:
            for p, d in zip(params, directions):
                p.add_(d, alpha=-step_size)
