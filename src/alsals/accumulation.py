"""Gradient accumulation: one optimizer step over a batch split into micro-batches.

A line search evaluates the loss of the *same* batch several times in one step: once with gradients,
then at trial step sizes. When the batch does not fit in memory at once, split it into micro-batches
and let :func:`micro_batch_closure` build the closure:

- the first evaluation (gradients enabled) runs forward and backward on each micro-batch in turn,
  each loss weighted so that the sum is the loss of the whole batch, and accumulates the gradients;
  under DDP (``model.no_sync()``) and FSDP2 (``model.set_requires_gradient_sync(False)``) the
  gradients are synchronised only on the last micro-batch;
- trial evaluations (run by the optimizer under ``torch.no_grad()``) run only the forwards.

The closure runs ``backward()`` itself (the ``torch.optim.LBFGS`` convention) and carries the
attribute ``forward_only_trials = True``, which tells the optimizer that its trials need no gradients.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, cast

import torch
from torch import Tensor, nn


def _sync_context(model: nn.Module, synchronise: bool) -> contextlib.AbstractContextManager:
    """A context in which backward synchronises gradients only when ``synchronise`` is true."""
    if synchronise:
        return contextlib.nullcontext()
    no_sync: Any = getattr(model, "no_sync", None)  # DDP and FSDP1
    if callable(no_sync):
        return cast(contextlib.AbstractContextManager, no_sync())
    set_sync: Any = getattr(model, "set_requires_gradient_sync", None)  # FSDP2
    if callable(set_sync):
        return _fsdp2_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp2_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def micro_batch_closure(
    model: nn.Module,
    micro_batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    weights: Optional[Sequence[float]] = None,
    no_sync: bool = True,
    grad_scaler: Optional[Any] = None,
) -> Callable[[], Tensor]:
    """A closure that evaluates one batch as several micro-batches (gradient accumulation).

    With gradients enabled (the optimizer's first evaluation) it clears the model's gradients, runs
    ``(w_i · loss_fn(micro_batch_i)).backward()`` for each micro-batch, and returns the detached
    ``Σ w_i·loss_i``. With gradients disabled (the optimizer's trials) it only returns
    ``Σ w_i·loss_i``. Use it as the closure of one step::

        micro_batches = list(zip(x.chunk(4), y.chunk(4)))
        closure = alsals.micro_batch_closure(model, micro_batches, lambda mb: loss_fn(model(mb[0]), mb[1]))
        loss = opt.step(closure)

    Args:
        model: the module whose gradients are accumulated (the DDP or FSDP2 wrapper when
            distributed: its gradient synchronisation is skipped on all micro-batches but the last).
        micro_batches: the micro-batches of this step (anything ``loss_fn`` accepts); evaluated in
            this order at every evaluation.
        loss_fn: maps a micro-batch to its scalar loss (the mean over its samples, typically).
        weights: weight ``w_i`` of each micro-batch's loss. Default ``1/k`` for ``k`` micro-batches:
            with equal-sized micro-batches and mean losses the result is the mean loss of the whole
            batch. For unequal sizes pass ``n_i / N``.
        no_sync: skip the gradient synchronisation of DDP (``no_sync()``) or FSDP2
            (``set_requires_gradient_sync``) on all micro-batches but the last (default). ``False``
            synchronises after every micro-batch: the same result, more communication.
        grad_scaler: the ``torch.amp.GradScaler`` of an fp16 run: each micro-batch's backward is then
            scaled. Pass the same scaler to the step, ``opt.step(closure, grad_scaler=scaler)``, which
            unscales the accumulated gradients.

    Returns:
        The closure, with ``closure.forward_only_trials = True``.
    """
    batches: List[Any] = list(micro_batches)
    count = len(batches)
    if count == 0:
        raise ValueError("micro_batch_closure needs at least one micro-batch")
    if weights is None:
        loss_weights = [1.0 / count] * count
    else:
        loss_weights = [float(w) for w in weights]
        if len(loss_weights) != count:
            raise ValueError(f"weights has {len(loss_weights)} entries for {count} micro-batches")
        if not all(math.isfinite(w) and w >= 0.0 for w in loss_weights):
            raise ValueError(f"weights must be finite and non-negative, got {list(weights)!r}")

    def closure() -> Tensor:
        total: Optional[Tensor] = None
        if not torch.is_grad_enabled():
            for w, batch in zip(loss_weights, batches):
                term = loss_fn(batch) * w
                total = term if total is None else total + term
            assert total is not None
            return total
        model.zero_grad(set_to_none=True)
        for i, (w, batch) in enumerate(zip(loss_weights, batches)):
            with _sync_context(model, synchronise=not no_sync or i == count - 1):
                term = loss_fn(batch) * w
                (term if grad_scaler is None else grad_scaler.scale(term)).backward()
            term = term.detach()
            total = term if total is None else total + term
        assert total is not None
        return total

    closure.forward_only_trials = True  # type: ignore[attr-defined]
    return closure
