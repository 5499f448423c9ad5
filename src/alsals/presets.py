"""Relatives of ALSALS as presets of the same engine, for fair comparison.

Each class is :class:`~alsals.ALSALS` with a row of the one preset table,
:data:`alsals.config.PRESETS` (``docs/algorithm.md``, "Relatives"), so the benchmark compares search
rules, not implementations. Every keyword of :class:`~alsals.ALSALS` can still be overridden.
"""

from __future__ import annotations

from typing import Any, Iterable

from ._validation import check_int
from .optimizer import ALSALS


class SLS(ALSALS):
    """Stochastic line search of Vaswani et al. (2019): SGD direction, classical Armijo rule.

    ``ALSALS(params, preset="sls")``: direction ``g``, slope ``‖g‖²``, no smoothing, ``c = 0.1``,
    ``η0 = 1``, backtracking by 0.9 and growth ``2^(1/n_batches_per_epoch)`` per step (the step size
    may double over an epoch), and a search at every step, as published (version 0.1.0's SLS took
    the amortized search of the defaults; ``amortized=True`` gives that back).

    Args:
        params: parameters or parameter groups.
        n_batches_per_epoch: sets the growth factor; the number of optimizer steps per epoch.
        **overrides: any keyword of :class:`~alsals.ALSALS`.
    """

    _preset = "sls"

    def __init__(self, params: Iterable[Any], n_batches_per_epoch: int = 500, **overrides: Any):
        check_int("n_batches_per_epoch", n_batches_per_epoch, 1)
        overrides.setdefault("growth", 2.0 ** (1.0 / n_batches_per_epoch))
        super().__init__(params, **overrides)


class SaLSa(ALSALS):
    """SaLSa (Kenneweg et al., 2024, arXiv 2407.20650) as a preset of the ALSALS engine.

    ``ALSALS(params, preset="salsa")``: direction ``P·g`` (Adam's preconditioner on the raw gradient),
    slope ``gᵀPg``, smoothing ``β_s = 0.9`` (the authors' package), ``c = 0.5``, ``η0 = 1``, growth
    ×1.1 at each search, backtracking by 0.8, and the amortized search with SaLSa's interval rule
    (at most 10 steps). Unlike the authors' code, the bias correction is not a step late, weight decay
    is applied with the accepted step (not before the search), and the direction of the trials is the
    direction that is committed.

    Args:
        params: parameters or parameter groups.
        **overrides: any keyword of :class:`~alsals.ALSALS`.
    """

    _preset = "salsa"

    def __init__(self, params: Iterable[Any], **overrides: Any):
        super().__init__(params, **overrides)
