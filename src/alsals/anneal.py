"""The built-in anneal of the committed step, for runs whose length is known.

A line search finds the largest step size that decreases the loss of the current batch enough; held
there, training ends at the noise floor of that step, while a schedule that anneals the step to zero
finishes lower. When ``ALSALS(..., total_steps=T)`` is given, the committed step is multiplied by a
factor ``a(t)`` (on top of the group's ``lr`` multiplier); the search itself is untouched and keeps
finding the unscaled step size, so the anneal is not undone by it.

Shapes (``t = 1..T`` is the optimizer step):

- ``"wsd"`` (warmup-stable-decay without the warmup, which the search does itself): ``a = 1`` until
  the last ``⌈f·T⌉`` steps, then a linear decay to ``1/(⌈f·T⌉ + 1)`` at ``t = T``. A cooldown of
  about 20% of the run matches a cosine schedule at a fixed budget (Hägele et al., 2024, "Scaling
  laws and compute-optimal training beyond fixed training durations") while keeping the full step for
  most of the run.
- ``"linear"``: ``a = (T − t + 1)/T``, the linear decay to zero (Defazio et al., 2023, "When, why and
  how much? Adaptive learning rate scheduling by refinement").
- ``"cosine"``: ``a = (1 + cos(π·(t − 1)/T))/2``.

After ``T`` steps the factor stays at its last value (training goes on, slowly) and a warning says so.
"""

from __future__ import annotations

import math

ANNEAL_SHAPES = ("wsd", "linear", "cosine")


def anneal_factor(shape: str, step: int, total_steps: int, fraction: float) -> float:
    """The factor ``a(t)`` of the committed step at optimizer step ``step`` (1-based).

    Args:
        shape: ``"wsd"``, ``"linear"`` or ``"cosine"``.
        step: the optimizer step, ``1..total_steps`` (larger values are clamped to ``total_steps``).
        total_steps: ``T``, the run's length in optimizer steps.
        fraction: ``f``, the share of the run spent decaying (``"wsd"`` only).
    """
    t = min(max(step, 1), total_steps)
    if shape == "linear":
        return (total_steps - t + 1) / total_steps
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (t - 1) / total_steps))
    if shape == "wsd":
        decay_steps = max(1, math.ceil(fraction * total_steps))
        stable = total_steps - decay_steps
        if t <= stable:
            return 1.0
        return (total_steps - t + 1) / (decay_steps + 1)
    raise ValueError(f"anneal must be one of {', '.join(map(repr, ANNEAL_SHAPES))}; got {shape!r}")
