"""A prototype of per-layer step sizes for ALSALS, built outside the library to measure the idea.

Motivation (docs/benchmarks.md, "Sixth round"): on ``genre_gru`` the part of Adam's direction in the
linear head behaves as the linear model says up to step sizes 85 times the carried one, while the
parts in the word embedding and the GRU saturate; one step size for the whole model is held at the
boundary of the saturating layers. The authors' layer-wise line search (Kenneweg et al., arXiv
2403.18506) gives each part of the network its own step size.

:class:`LayerwiseALSALS` splits the parameters by the top-level module that holds them (the first
component of their qualified name: ``tokens``, ``gru``, ``head``; ``0``, ``3``, ``6`` in a
``Sequential``) and runs one :class:`alsals.ALSALS` per part, each with the same settings. A step:

1. remember ``w0``, the torch RNG state and the model's buffers;
2. for each part ``k``: put the RNG state and the buffers back, let part ``k``'s optimizer take its
   step (its gradient at ``w0`` on the step's batch with the step's dropout masks, its own smoothed
   Armijo search along its own part of the direction, only its parameters moving), remember where
   they went, and put them back to ``w0``;
3. move every part to where its own step went (Jacobi: no part's search sees another's step) and
   keep the buffers of the first part's step (one training-mode forward's statistics, as a single
   optimizer would leave them).

With ``joint=True`` the combined step is then tested as a whole, because steps that are acceptable
one part at a time can add up to one that is not (the layers of an MLP interact: each layer's step
changes what the next one's step does). Let ``Δ_k = f(w0) − f(w0 + s_k)`` be the decrease of part
``k``'s step ``s_k`` alone and ``Δ = f(w0) − f(w0 + x·Σ_k s_k)`` that of the combined step scaled by
``x``. The combined step is kept when ``Δ ≥ c·x·Σ_k max(Δ_k, 0)`` (with ALSALS's ``c``: the parts
together must deliver at least that share of what they deliver apart); otherwise ``x`` shrinks by
ALSALS's backtrack factor, for at most 31 combined trials (when all fail, ``x = 0.9^31`` is applied
untested), and every part's carried step size is cut by the final ``x`` too. Each ``Δ_k`` and each
combined trial costs one more forward pass.

With ``scaled=True`` the combined step is tested instead along its own line, with a scale ``x`` that
is carried from step to step as search state of its own (the parts' step sizes are never cut by it,
so cuts cannot compound as they do with ``joint``). With ``s_k = e_k − w0`` part ``k``'s step and
``g_k`` its gradient at ``w0``, the linear model predicts the combined step to lower the loss by
``L = −Σ_k g_kᵀs_k``; the step ``w0 + x·Σ_k s_k`` is kept when it passes Armijo's test on that line,
smoothed as ALSALS smooths its own (the same ``β_s``, so one batch's noise does not set the scale):
with ``Δ(x) = f(w0) − f(w0 + x·Σ_k s_k)``, the carried EMAs ``h ← β_s·h + (1 − β_s)·Δ(x)`` and
``p ← β_s·p + (1 − β_s)·x·L`` must satisfy ``h ≥ c·p`` (both updated only when a trial passes;
on the first step this is ``Δ(x) ≥ c·x·L``). Each step first tries ``x/β_b`` (capped at 1: the scale
only ever undoes interaction, it never enlarges what the parts found) and backtracks by ``β_b`` on
failure (at most 31 trials; when all fail, or when ``L`` is not positive, the step is not taken),
so ``x`` follows the boundary of the combined step from above and recovers at ``1/β_b`` per step
when the layers stop interacting.
Its reason: the parts' searches each see their own step alone, and what stacking layers adds is a
single number per step, how far their sum overshoots; one forward per step (and one per backtrack)
measures it. Not told the run's length, each part's average is moved by the part's share of
``(x − 1)·s_k`` where it was sampled at this step, so the averages follow the steps applied.

A library implementation would share one backward pass between the parts; this prototype pays for
``K`` backward passes per step instead (the harness counts them), so that part of its cost is not the
idea's. Everything per part (step size, anneal, average of the iterates,
counters) is that part's own ALSALS's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from alsals.layerwise import move_averages, split_by_top_level_module
from alsals.search import smooth
from torch import nn


def parts_of(model: nn.Module, groups: Sequence[dict]) -> dict[str, list[dict]]:
    """The parameter groups ``groups`` split by top-level module: part name -> its groups (each
    group's settings kept, empty groups dropped), in the order the parts first appear (the
    library's :func:`alsals.layerwise.split_by_top_level_module`)."""
    return split_by_top_level_module(model, groups)


class LayerwiseALSALS:
    """One :class:`alsals.ALSALS` per top-level module of ``model``, stepping together (module docstring)."""

    def __init__(self, model: nn.Module, groups: Sequence[dict], joint: bool = False, scaled: bool = False,
                 **kwargs: Any) -> None:
        import alsals

        if joint and scaled:
            raise ValueError("joint=True and scaled=True are two ways of testing the combined step: pick one")
        self.model = model
        self.joint = joint
        self.scaled = scaled
        #: the carried scale of the combined step and the EMAs its test compares (scaled=True)
        self.scale = 1.0
        self.smoothed_decrease = 0.0
        self.smoothed_prediction = 0.0
        #: combined steps scaled down, and the combined trials evaluated
        self.joint_cuts = 0
        self.joint_trials = 0
        self.parts = {name: alsals.ALSALS(part_groups, **kwargs)
                      for name, part_groups in parts_of(model, groups).items()}
        if not self.parts:
            raise ValueError("the model has no parameters to optimize")
        self.config = next(iter(self.parts.values())).config

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def step_size(self) -> float:
        """The geometric mean of the parts' step sizes, times the carried scale with ``scaled=True``
        (what the harness records per step)."""
        sizes = [opt.step_size for opt in self.parts.values()]
        if not all(s > 0 for s in sizes):
            return math.nan
        return math.exp(sum(math.log(s) for s in sizes) / len(sizes)) * (self.scale if self.scaled else 1.0)

    @property
    def step_sizes(self) -> dict[str, float]:
        return {name: opt.step_size for name, opt in self.parts.items()}

    @property
    def counters(self) -> dict[str, int]:
        """Every counter summed over the parts."""
        total: dict[str, int] = {}
        for opt in self.parts.values():
            for key, value in opt.counters.items():
                total[key] = total.get(key, 0) + value
        if self.joint or self.scaled:
            total["joint_cuts"] = self.joint_cuts
            total["joint_trials"] = self.joint_trials
        return total

    def eval(self) -> None:
        for opt in self.parts.values():
            opt.eval()

    def train(self) -> None:
        for opt in self.parts.values():
            opt.train()

    def _params(self, name: str) -> list[torch.Tensor]:
        return [p for g in self.parts[name].param_groups for p in g["params"]]

    def _restore_buffers(self, saved: list[torch.Tensor]) -> None:
        """Put the model's buffers (BatchNorm statistics) back to ``saved``."""
        with torch.no_grad():
            for b, value in zip(self.model.buffers(), saved):
                b.copy_(value)

    def _loss_at(self, closure: Callable[[], torch.Tensor], rng: torch.Tensor, buffers: list) -> float:
        """The batch loss at the current weights with the step's random draws, the buffers untouched."""
        torch.set_rng_state(rng)
        with torch.no_grad():
            value = float(closure())
        self._restore_buffers(buffers)
        return value

    def _set(self, starts: dict, ends: dict, names, scale: float) -> None:
        """Each part in ``names`` at ``w0 + scale·(end − w0)``; the others at ``w0``."""
        with torch.no_grad():
            for name in self.parts:
                for p, w, e in zip(self._params(name), starts[name], ends[name]):
                    if name in names:
                        p.copy_(w + scale * (e - w) if scale != 1.0 else e)
                    else:
                        p.copy_(w)

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        rng = torch.get_rng_state()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        starts = {name: [p.detach().clone() for p in self._params(name)] for name in self.parts}
        ends: dict[str, list[torch.Tensor]] = {}
        predicted = 0.0  # the combined step's linear prediction (scaled=True only)
        weights_before = ({name: opt._search_state().average_weight for name, opt in self.parts.items()}
                          if self.scaled else {})
        first_loss = None
        kept_buffers = None
        for name, opt in self.parts.items():
            torch.set_rng_state(rng)
            self._restore_buffers(buffers)
            self.model.zero_grad(set_to_none=True)
            loss = opt.step(closure)
            if first_loss is None:
                first_loss = loss
                kept_buffers = [b.detach().clone() for b in self.model.buffers()]
            with torch.no_grad():
                ends[name] = [p.detach().clone() for p in self._params(name)]
                for p, w, e in zip(self._params(name), starts[name], ends[name]):
                    if self.scaled and p.grad is not None:
                        predicted -= float((p.grad * (e - w)).sum())
                    p.copy_(w)
        assert first_loss is not None and kept_buffers is not None
        self.model.zero_grad(set_to_none=True)
        scale = 1.0
        if len(self.parts) > 1 and math.isfinite(float(first_loss)):
            if self.joint:
                scale = self._joint_scale(closure, rng, buffers, starts, ends, float(first_loss))
            elif self.scaled:
                scale = self._carried_scale(closure, rng, buffers, starts, ends, float(first_loss), predicted)
                if scale != 1.0:
                    move_averages(self.parts, starts, ends, weights_before, scale)
        self._set(starts, ends, set(self.parts), scale)
        self._restore_buffers(kept_buffers)
        return first_loss

    def _carried_scale(self, closure, rng, buffers, starts, ends, loss0: float, predicted: float) -> float:
        """The carried scale ``x`` of the combined step after this step's test (module docstring)."""
        config = self.config.search
        if not math.isfinite(predicted) or predicted <= 0.0:
            return 0.0
        scale = min(1.0, self.scale / config.backtrack)
        for _ in range(31):
            self._set(starts, ends, set(self.parts), scale)
            self.joint_trials += 1
            together = loss0 - self._loss_at(closure, rng, buffers)
            decrease = smooth(self.smoothed_decrease, together, config.smoothing)
            prediction = smooth(self.smoothed_prediction, scale * predicted, config.smoothing)
            if math.isfinite(together) and decrease >= config.c * prediction:
                self.scale = scale
                self.smoothed_decrease, self.smoothed_prediction = decrease, prediction
                return scale
            self.joint_cuts += 1
            scale = max(scale * config.backtrack, config.min_step_size)
        self.scale = scale
        return 0.0

    def _joint_scale(self, closure, rng, buffers, starts, ends, loss0: float) -> float:
        """The factor ``x`` of the combined step (module docstring), and the parts' step sizes cut by it."""
        config = self.config.search
        apart = 0.0
        for name in self.parts:
            self._set(starts, ends, {name}, 1.0)
            apart += max(loss0 - self._loss_at(closure, rng, buffers), 0.0)
        scale = 1.0
        for _ in range(31):
            self._set(starts, ends, set(self.parts), scale)
            self.joint_trials += 1
            together = loss0 - self._loss_at(closure, rng, buffers)
            if math.isfinite(together) and together >= config.c * scale * apart:
                break
            scale *= config.backtrack
        if scale < 1.0:
            self.joint_cuts += 1
            for opt in self.parts.values():
                state = opt._search_state()
                opt._publish(replace(state, step_size=max(state.step_size * scale, config.min_step_size)))
        return scale
