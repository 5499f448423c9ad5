"""The anytime average of the iterates, for runs whose length is not known.

With ``total_steps`` the committed step is annealed over the last ``f = anneal_fraction`` of the run
(:mod:`alsals.anneal`), which is what lets a line-searched run end below the noise floor of its step
size. Without it there is nothing to anneal by, and ALSALS keeps instead a polynomial-decay average
of its iterates (Shamir & Zhang, 2013), which the user evaluates through ``opt.eval()`` (and leaves
with ``opt.train()``), as with schedule-free optimizers:

    x̄_t = Σ_s ω_s·w_s / Σ_s ω_s,     ω_s = s^γ

Weights growing as ``s^γ`` forget the early iterates: the average is concentrated on the last
``1/(γ + 1)`` of the run or so (the mean distance of its weight from the end is ``t/(γ + 2)``). A
linear cooldown over the last ``f`` of a run has its mass at ``f·t/2`` from the end, so the average
that matches the built-in anneal is ``γ = 2/f − 2``: 8 for the default ``f = 0.2``. One constant,
``anneal_fraction``, therefore sets both: the cooldown when the length is known, the average when
it is not. (Weight averaging and a cooldown are known to play the same part: Sanyal et al., 2023;
Hägele et al., 2024.)

Sampling. An average over the last tenth of a run needs a few dozen iterates, not every one: the
optimizer samples the iterates ``SAMPLES_PER_WINDOW`` times per averaging window, that is every
``⌈t/(SAMPLES_PER_WINDOW·(γ + 1))⌉`` steps (every step for the first ``32·(γ+1) = 288`` steps at
``γ = 8``, every 35th at step 10,000), so its cost (one ``lerp`` over the parameters per sample)
shrinks as the run grows. Irregular samples keep the time weighting: a sample at step ``t`` taken
after one at step ``t'`` weighs the mass of ``s^γ`` over ``(t', t]``.

The functions here are pure arithmetic on Python floats (the optimizer does the tensor work:
``kernels.lerp``-style updates and swaps).
"""

from __future__ import annotations

import math
from typing import Tuple

#: iterates sampled per averaging window (its resolution): the average is over about the last
#: ``t/(γ + 1)`` steps, sampled this many times
SAMPLES_PER_WINDOW = 32


def exponent(anneal_fraction: float) -> float:
    """``γ = 2/f − 2``: the average whose weight sits as far from the end of the run as that of a
    linear cooldown over the last ``f`` of it (see the module docstring)."""
    return 2.0 / anneal_fraction - 2.0


def sampling_interval(step: int, gamma: float) -> int:
    """Steps between two samples at step ``step``: ``⌈step/(SAMPLES_PER_WINDOW·(γ + 1))⌉`` (at least 1)."""
    return max(1, math.ceil(step / (SAMPLES_PER_WINDOW * (gamma + 1.0))))


def is_due(step: int, last_sampled: int, gamma: float) -> bool:
    """Whether the iterate after step ``step`` is sampled (the last sample was after ``last_sampled``;
    0: none yet)."""
    return last_sampled == 0 or step - last_sampled >= sampling_interval(step, gamma)


def sample_weight(step: int, last_sampled: int, total_weight: float, gamma: float) -> Tuple[float, float]:
    """The weight ``w`` of the new sample in ``x̄ ← x̄ + w·(x_step − x̄)``, and the new total weight.

    The sample stands for the steps since the previous one and weighs their mass under ``s^γ``,
    ``(step^(γ+1) − last^(γ+1))/(γ + 1)`` (the first sample's ``w`` is 1: the average starts at that
    iterate). With a sample at every step this is the ``s^γ`` weighting up to the discretisation.
    """
    weight = (float(step) ** (gamma + 1.0) - float(last_sampled) ** (gamma + 1.0)) / (gamma + 1.0)
    total = total_weight + weight
    return weight / total, total
