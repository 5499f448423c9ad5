"""Mixed precision helpers.

ALSALS works with ``torch.autocast`` inside the closure (bf16 needs nothing else) and with a
``torch.amp.GradScaler`` for fp16. Two equivalent fp16 recipes::

    scaler = torch.amp.GradScaler("cuda")

    # (a) recommended: no FutureWarning, nothing to prepare
    loss = opt.step(closure, grad_scaler=scaler)
    scaler.update()

    # (b) torch's scaler protocol: scaler.step passes itself to the optimizer (torch >= 2.4 warns that
    # this keyword protocol is deprecated) and must find its scale already created: create it once
    scaler = alsals.amp.prepare_scaler(torch.amp.GradScaler("cuda"))
    loss = scaler.step(opt, closure)          # the closure positionally: scaler.step rejects closure=
    scaler.update()

In both, the optimizer scales the loss for the backward pass of the first evaluation (forward-only
closures), unscales the gradients (``scaler.unscale_``) before forming the direction, skips the step
when a gradient holds inf/NaN (``counters["skipped_steps"]``; ``scaler.update()`` then backs the scale
off), and compares the unscaled trial losses.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

__all__ = ["prepare_scaler"]


def prepare_scaler(scaler: Any, device: Optional[Union[str, torch.device]] = None) -> Any:
    """Create the scale of a fresh ``torch.amp.GradScaler`` so ``scaler.step(opt, closure)`` works at once.

    ``GradScaler.step`` refuses to run before the scale exists, and the scale is created lazily by the
    first ``scaler.scale(loss)``: with a closure-driven optimizer that call happens *inside* the step,
    too late. This does what that first call would do (it scales a dummy tensor; an existing scale is
    left unchanged). Not needed for ``opt.step(closure, grad_scaler=scaler)``.

    Args:
        scaler: a ``torch.amp.GradScaler`` (a disabled one is returned untouched).
        device: where the scale lives: the device of the loss (default: the scaler's device).

    Returns:
        The same scaler.
    """
    if getattr(scaler, "is_enabled", lambda: False)():
        if device is None:
            device = getattr(scaler, "_device", "cuda")
        scaler.scale(torch.ones((), device=device))
    return scaler
