"""Where the parameters sit during a searched step: the start ``w0``, or a trial point ``w0 − η·d``.

:class:`TrialPoint` owns the parameters for the duration of a line search. It saves a copy of
``w0`` when entered, sets every trial point from that copy (so the committed point never depends on
the path of the trials, and rounding never accumulates), computes the committed point from ``w0``,
and, as a context manager, puts the parameters back to ``w0`` bitwise when anything raises inside it
(an exception or ``KeyboardInterrupt`` in a trial evaluation, a failed collective) or when the search
fails.

Memory: the copy of ``w0`` (one parameter-sized buffer per parameter, in the parameters' dtype)
lives only while the search runs, beside the direction ``d`` (another one); both are freed when the
step returns. Amortized steps use no trial point.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import List, Optional, Protocol, Sequence, Tuple, Type

from torch import Tensor

from . import kernels


class DirectionBucket(Protocol):
    """Parameters that share a device, a dtype and a direction kernel (see the optimizer's buckets)."""

    params: List[Tensor]
    directions: List[Tensor]
    foreach: bool


class TrialPoint:
    """Moves the parameters of ``buckets`` along their directions, from a saved start.

    Use it as a context manager::

        with TrialPoint(buckets) as point:
            point.move_to(eta)          # w = w0 − eta·d
            ...                         # evaluate the closure
            point.commit(eta, steps)    # or point.restore()

    Leaving the block without :meth:`commit` (an exception, or a search that failed) restores ``w0``.
    """

    def __init__(self, buckets: Sequence[DirectionBucket]):
        self._buckets = list(buckets)
        self._origins: List[List[Tensor]] = []
        #: the step size the parameters sit at (0.0: at ``w0``)
        self.step_size = 0.0
        self._settled = False

    def __enter__(self) -> "TrialPoint":
        self._origins = [[p.detach().clone() for p in b.params] for b in self._buckets]
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            if not self._settled:
                self.restore()
        finally:
            self._origins = []

    def move_to(self, step_size: float) -> None:
        """Set the parameters to the trial point ``w0 − step_size·d``."""
        if step_size == self.step_size:
            return
        for bucket, origins in zip(self._buckets, self._origins):
            kernels.set_trial(bucket.params, origins, bucket.directions, step_size, foreach=bucket.foreach)
        self.step_size = step_size

    def directions_changed(self) -> None:
        """The buckets' directions were replaced (the trials' line is not the committed step's): the
        parameters sit on neither line's known point, so :meth:`commit` sets them from ``w0``."""
        self.step_size = math.nan

    def restore(self) -> None:
        """Put the parameters back to ``w0``, bitwise."""
        for bucket, origins in zip(self._buckets, self._origins):
            kernels.restore(bucket.params, origins, foreach=bucket.foreach)
        self.step_size = 0.0
        self._settled = True

    def commit(self, accepted: float, steps: Sequence[Tuple[float, float]]) -> None:
        """Set the committed point ``keep·w0 − s·d`` of each bucket, with ``(s, keep)`` from ``steps``
        (one pair per bucket: ``s = lr·a·accepted`` and ``keep = 1 − s·λ`` for its group).

        A bucket whose committed point is the accepted trial point (``s = accepted``, ``keep = 1``)
        already sits there when the last trial was ``accepted`` and is left as it is.
        """
        for bucket, origins, (step_size, keep) in zip(self._buckets, self._origins, steps):
            if keep == 1.0 and step_size == accepted == self.step_size:
                continue
            kernels.commit(bucket.params, origins, bucket.directions, step_size=step_size, keep=keep, foreach=bucket.foreach)
        self._settled = True
