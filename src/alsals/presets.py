"""Relatives of ALSALS as presets of the same engine, for fair comparison.

Each preset is :class:`~alsals.ALSALS` with other defaults (see ``docs/algorithm.md``, "Relatives"),
so the benchmark compares search rules, not implementations. Every keyword of :class:`~alsals.ALSALS`
can still be overridden.
"""

from __future__ import annotations

from typing import Any, Iterable

from .optimizer import ALSALS


class SLS(ALSALS):
    """Stochastic line search of Vaswani et al. (2019): SGD direction, classical Armijo rule.

    Direction ``g``, slope ``‖g‖²``, no smoothing, ``c = 0.1``, ``η0 = 1``, backtracking by 0.9 and
    growth ``2^(1/n_batches_per_epoch)`` per step (the step size may double over an epoch).

    Args:
        params: parameters or parameter groups.
        n_batches_per_epoch: sets the growth factor; the number of optimizer steps per epoch.
        **overrides: any keyword of :class:`~alsals.ALSALS`.
    """

    def __init__(self, params: Iterable[Any], n_batches_per_epoch: int = 500, **overrides: Any):
        if isinstance(n_batches_per_epoch, bool) or not isinstance(n_batches_per_epoch, int) or n_batches_per_epoch < 1:
            raise ValueError(f"n_batches_per_epoch must be a positive int, got {n_batches_per_epoch!r}")
        settings = dict(
            direction="gradient",
            initial_step_size=1.0,
            c=0.1,
            slope_smoothing=0.0,
            growth=2.0 ** (1.0 / n_batches_per_epoch),
            backtrack=0.9,
            ascent_handling=False,
            max_step_size=1e3,
        )
        settings.update(overrides)
        super().__init__(params, **settings)


class SaLSa(ALSALS):
    """SaLSa (Kenneweg et al., 2024, arXiv 2407.20650) as a preset of the ALSALS engine.

    Direction ``P·g`` (Adam's preconditioner on the raw gradient), slope ``gᵀPg``, smoothing
    ``β_s = 0.9`` (the authors' package), ``c = 0.5``, ``η0 = 1``, growth ×1.1 at each search,
    backtracking by 0.8, and the amortised search. Unlike the authors' code, the bias correction is
    not a step late, weight decay is applied with the accepted step (not before the search), and the
    direction of the trials is the direction that is committed.

    Args:
        params: parameters or parameter groups.
        **overrides: any keyword of :class:`~alsals.ALSALS`.
    """

    def __init__(self, params: Iterable[Any], **overrides: Any):
        settings = dict(
            direction="preconditioned_gradient",
            initial_step_size=1.0,
            c=0.5,
            slope_smoothing=0.9,
            growth=1.1,
            growth_per="search",
            backtrack=0.8,
            ascent_handling=False,
            amortized=True,
            search_interval_rule="salsa",
            max_search_interval=10,
        )
        settings.update(overrides)
        super().__init__(params, **settings)
