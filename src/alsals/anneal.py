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

**An earlier start of the decay** (``"wsd"`` only). The stable phase may end before ``T − ⌈f·T⌉``:
with ``decay_start = s`` the factor is 1 up to step ``s`` and then ``(T − t + 1)/(T − s + 1)``, the
same linear decay to ``1/(T − s + 1)`` at ``t = T``, only longer (``ALSALS.begin_decay``).
:class:`PlateauDetector` says when to start it: when the batch loss has stopped falling at the
full step (:class:`alsals.LayerwiseALSALS` uses it). The reason: a line search holds the step at
the largest size the batch accepts, so the loss falls until it reaches the noise floor of that
step and then stays there; from then on a full step only spends the budget, while the decay lowers
the floor, and a longer decay to zero finishes lower than a short one (Defazio et al., 2023; Hägele
et al., 2024, find longer cooldowns better). Where the loss is still falling at ``T − ⌈f·T⌉`` the
decay starts there as before.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict

ANNEAL_SHAPES = ("wsd", "linear", "cosine")


def wsd_decay_start(total_steps: int, fraction: float) -> int:
    """The last step of ``"wsd"``'s stable phase, ``T − ⌈f·T⌉`` (at least one step of decay)."""
    return total_steps - max(1, math.ceil(fraction * total_steps))


def anneal_factor(shape: str, step: int, total_steps: int, fraction: float, decay_start: int = 0) -> float:
    """The factor ``a(t)`` of the committed step at optimizer step ``step`` (1-based).

    Args:
        shape: ``"wsd"``, ``"linear"`` or ``"cosine"``.
        step: the optimizer step, ``1..total_steps`` (larger values are clamped to ``total_steps``).
        total_steps: ``T``, the run's length in optimizer steps.
        fraction: ``f``, the share of the run spent decaying (``"wsd"`` only).
        decay_start: ``s > 0``: the stable phase ends after step ``s`` if that is before
            ``T − ⌈f·T⌉`` (``"wsd"`` only; 0: the fixed start).
    """
    t = min(max(step, 1), total_steps)
    if shape == "linear":
        return (total_steps - t + 1) / total_steps
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (t - 1) / total_steps))
    if shape == "wsd":
        stable = wsd_decay_start(total_steps, fraction)
        if decay_start > 0:
            stable = min(stable, decay_start)
        if t <= stable:
            return 1.0
        return (total_steps - t + 1) / (total_steps - stable + 1)
    raise ValueError(f"anneal must be one of {', '.join(map(repr, ANNEAL_SHAPES))}; got {shape!r}")


#: the plateau test's window, as a share of the run (two windows are compared), and its threshold
#: in standard errors of the difference of the two windows' mean losses
PLATEAU_WINDOW_FRACTION = 0.1
PLATEAU_STANDARD_ERRORS = 2.0
#: the plateau test's measures of the batches' noise (:class:`PlateauDetector`)
PLATEAU_NOISE = ("residual", "spread")


class PlateauDetector:
    """Whether the batch loss has stopped falling: the mean of the last ``w`` first losses is not
    below the mean of the ``w`` before it by ``z`` standard errors of their difference,
    ``mean(last) > mean(before) − z·σ·√(2/w)``, where ``σ²`` is the noise of one batch's loss,
    measured in the last window around its own least-squares line (the residual variance,
    ``RSS/(w − 2)``).

    ``w = max(3, round(0.1·T))``: the end of a run is judged over about its last tenth, and the
    default decay (``f = 0.2``) spans two such windows; ``z = 2``: a fall smaller than twice its
    standard error is not told apart from the batches' noise. The noise is measured around the last
    window's trend, not as the windows' raw spread, so that neither a fall within a window nor the
    large losses of the first steps count as noise (they would make a clear fall look
    insignificant and call a plateau while the loss is still falling). Non-finite losses are not
    recorded.

    Cost: O(1) per step. The windows' sums (of the losses less a reference value, the mean at the
    last exact count, so that the variances do not cancel) slide with each loss and are counted
    again exactly (``math.fsum``) once every ``w`` losses, which bounds their rounding.
    """

    def __init__(self, total_steps: int, window_fraction: float = PLATEAU_WINDOW_FRACTION,
                 standard_errors: float = PLATEAU_STANDARD_ERRORS, noise: str = "residual") -> None:
        if noise not in PLATEAU_NOISE:
            raise ValueError(f"noise must be one of {', '.join(map(repr, PLATEAU_NOISE))}; got {noise!r}")
        self.window = max(3, int(round(window_fraction * total_steps)))
        self.standard_errors = float(standard_errors)
        #: "residual" (default): the last window's residual variance around its line; "spread": the
        #: first version's √((var(before) + var(last))/w) of the windows' raw spread (for the record:
        #: it counts the first steps' losses and a fall within a window as noise)
        self.noise = noise
        self.losses: Deque[float] = deque(maxlen=2 * self.window)
        self._reference = 0.0
        #: over the window before: Σy, Σy²; over the last window: Σy, Σy², Σi·y (y = loss − reference,
        #: i = 0..w−1 the position in the window)
        self._sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._slid = 0  # losses slid in since the last exact count

    def _count(self) -> None:
        values = list(self.losses)
        w = self.window
        self._reference = math.fsum(values) / len(values)
        before = [x - self._reference for x in values[:w]]
        last = [x - self._reference for x in values[w:]]
        self._sums = [math.fsum(before), math.fsum(y * y for y in before), math.fsum(last),
                      math.fsum(y * y for y in last), math.fsum(i * y for i, y in enumerate(last))]
        self._slid = 0

    def update(self, loss: float) -> bool:
        """Record the first loss of a step; True when the last two windows show a plateau."""
        if not math.isfinite(loss):
            return False
        loss = float(loss)
        w = self.window
        full = len(self.losses) == 2 * w
        if full:  # the oldest loss leaves the window before; the oldest of the last moves into it
            leaving, moving = self.losses[0] - self._reference, self.losses[w] - self._reference
        self.losses.append(loss)
        if len(self.losses) < 2 * w:
            return False
        if not full or self._slid + 1 >= w:
            self._count()
        else:
            entering = loss - self._reference
            before, before_squares, last, squares, moments = self._sums
            self._sums = [before - leaving + moving, before_squares - leaving * leaving + moving * moving,
                          last - moving + entering, squares - moving * moving + entering * entering,
                          moments - (last - moving) + (w - 1) * entering]
            self._slid += 1
        before, before_squares, last, squares, moments = self._sums
        if self.noise == "spread":
            variances = (max(0.0, before_squares / w - (before / w) ** 2) + max(0.0, squares / w - (last / w) ** 2))
            return last / w > before / w - self.standard_errors * math.sqrt(variances / w)
        centre, spread = (w - 1) / 2.0, w * (w * w - 1) / 12.0  # of the positions 0..w−1
        trend = moments - centre * last
        residual = max(0.0, squares - last * last / w - trend * trend / spread)
        noise = math.sqrt(residual / (w - 2))
        return last / w > before / w - self.standard_errors * noise * math.sqrt(2.0 / w)

    def state_dict(self) -> Dict[str, Any]:
        return {"window": self.window, "standard_errors": self.standard_errors, "noise": self.noise,
                "losses": list(self.losses)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the sums are counted again exactly from the losses)."""
        self.window = int(state["window"])
        self.standard_errors = float(state["standard_errors"])
        self.noise = str(state.get("noise", "residual"))
        self.losses = deque((float(x) for x in state["losses"]), maxlen=2 * self.window)
        self._reference, self._sums, self._slid = 0.0, [0.0, 0.0, 0.0, 0.0, 0.0], 0
        if len(self.losses) == 2 * self.window:
            self._count()
