"""ALSALS: Adam whose step size is chosen at every step by a stochastic Armijo line search.

One step (``docs/algorithm.md`` has the full specification and the paper references):

1. ``f0 = f(w)`` and ``g = ∇f(w)`` from the closure (the first evaluation).
2. Adam moments ``m, v`` and the direction ``d`` (``P·m̂`` for ALSALS), the slope ``D = gᵀd``.
3. The carried step size grows: ``η ← clamp(η·γ)``.
4. The slope is smoothed: ``s ← β_s·s + (1 − β_s)·D``.
5. Trials ``w − η·d`` are evaluated (same batch, same random draws, no trace on buffers) and ``η``
   shrinks by ``β_b`` until ``h' = β_s·h + (1 − β_s)·(f0 − f(w − η·d)) ≥ c_eff·η·s``, where
   ``c_eff = 1/c`` when ``s ≤ 0`` (ascent handling).
6. The accepted point is committed: the parameters move by ``lr·η·d`` (``lr`` is a multiplier,
   default 1, that torch LR schedulers may drive) and decoupled weight decay ``lr·η·λ·w``.

The engine also runs the SLS and SaLSa presets (:mod:`alsals.presets`) through its ``direction``,
``slope_smoothing``, ``growth``/``growth_per`` and ``amortized`` options.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import direction as kernels
from .closure import CLOSURE_REQUIRED_MESSAGE, ClosureEvaluator
from . import distributed
from .distributed import Reducer, local_tensor
from .anneal import ANNEAL_SHAPES, anneal_factor
from .search import (
    INTERVAL_RULES,
    AmortisationConfig,
    SearchConfig,
    SearchStatus,
    backtrack,
    next_interval,
    search_interval,
    smooth,
)

#: keys a parameter group may set for itself; everything else belongs to the one line search
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

#: counters kept in the search state (all start at 0)
COUNTER_KEYS = (
    "steps",
    "forward_evaluations",
    "backward_passes",
    "searches",
    "backtracks",
    "rejected_nonfinite",
    "skipped_searches",
    "skipped_steps",
    "gave_up",
)

#: Defaults that differ between our ALSALS (``preset=None``) and the paper's (``preset="paper"``);
#: docs/benchmarks.md has the ablation behind each change. Explicit arguments override a preset.
PRESETS: Dict[Optional[str], Dict[str, Any]] = {
    None: dict(c=0.5, slope_smoothing=0.9, amortized=True),
    "paper": dict(c=0.3, slope_smoothing=0.99, amortized=False),
}

SLOPE_METHODS = ("exact", "finite_difference")
GROWTH_PER = ("step", "search")

_Bucket = Tuple[List[Tensor], List[Tensor], bool]  # (params, directions, foreach): one device, dtype, group


class _MomentBucket(NamedTuple):
    """Parameters of one group that share device, dtype, step and slope weight, with their state."""

    device: torch.device
    params: List[Tensor]
    grads: List[Tensor]
    exp_avgs: List[Optional[Tensor]]
    exp_avg_sqs: List[Optional[Tensor]]
    hyper: Dict[str, Any]  # kind, betas, eps, step: the keywords of the direction kernels
    foreach: bool
    weight: float


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a gradient sum: fp16/bf16 sums are taken in fp32 (fp16 overflows at 65504)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}")


class ALSALS(Optimizer):
    r"""Adam with a stochastic Armijo line search on the step size (no learning rate to tune).

    Call :meth:`step` with a closure that returns the loss of the current batch::

        opt = alsals.ALSALS(model.parameters())
        for x, y in loader:
            loss = opt.step(lambda: loss_fn(model(x), y))

    Args:
        params: parameters or parameter groups. A group may set ``lr``, ``betas``, ``eps`` and
            ``weight_decay``; the search's settings are shared by all groups (one step size for the
            whole model).
        lr: multiplier on the committed step (default 1.0): the search finds ``η`` for the unscaled
            direction and the parameters move by ``lr·η·d``. LR schedulers (warmup, cosine decay)
            drive it and compose with the search instead of being undone by it.
        betas: Adam's ``(β1, β2)``.
        eps: added to ``√v̂`` in the preconditioner.
        weight_decay: decoupled weight decay ``λ``: the committed point is ``w − lr·η·(d + λ·w)``.
        initial_step_size: ``η0``, the step size the first search starts from.
        c: sufficient-decrease constant of the Armijo condition, in (0, 1). Default 0.5 (the
            paper: 0.3).
        growth: ``γ``, growth of the carried step size (per step, or per search: ``growth_per``).
        backtrack: ``β_b``, shrink factor of a rejected trial.
        slope_smoothing: ``β_s``, EMA factor of the slope and the decrease (0 disables smoothing).
            Default 0.9 (the paper: 0.99).
        min_step_size, max_step_size: bounds of the step size.
        max_backtracks: at most this many shrinks per search.
        ascent_handling: use ``c → 1/c`` when the smoothed slope is not positive.
        direction: ``"adam"`` (``P·m̂``, ALSALS), ``"preconditioned_gradient"`` (``P·g``, SaLSa) or
            ``"gradient"`` (``g``, SLS).
        slope: ``"exact"`` (``gᵀd``, free) or ``"finite_difference"`` (the paper's
            ``(f(w) − f(w − ε·d))/ε``, one more forward pass per step).
        finite_difference_eps: ``ε`` of the finite-difference slope.
        growth_per: ``"step"`` (the carried step size grows at every step) or ``"search"`` (only
            when a search starts; steps between amortised searches use the grown size without
            keeping it).
        amortized: search only every few steps (:class:`~alsals.search.AmortisationConfig`).
            Default on (the paper: off).
        max_search_interval: the longest interval between amortised searches.
        search_interval_rule: ``"halving"`` (default: the interval doubles after a search that did
            not cut the step size and halves for every cut of one that did), ``"doubling"`` (it drops
            to 1 after any cut) or ``"salsa"`` (SaLSa's rule from two averages of the accepted step
            size). See :class:`~alsals.search.AmortisationConfig`.
        foreach: use the multi-tensor kernels (default: on, unless a parameter is on a device
            without them); ``False`` uses the single-tensor reference implementation.
        process_group, distributed: see :class:`~alsals.distributed.Reducer`. Under
            ``torch.distributed`` the losses of every evaluation are averaged over the ranks and every
            decision is taken from the averaged values, so all ranks take the same step
            (``docs/distributed.md``). Sharded ``DTensor`` parameters (FSDP2) are detected here; the
            slope is then a sum of per-shard partial sums. Unsupported layouts raise ``ValueError``.
        check_consistency: after every step, gather the step size, trial count and a parameter
            checksum from all ranks and raise ``RuntimeError`` if they differ (a debug guard: one
            more collective and host synchronisation per step; see
            :func:`alsals.distributed.check_consistency`).
        total_steps: the run's length in optimizer steps, when known: the committed step is then
            annealed by the built-in schedule ``anneal`` (:mod:`alsals.anneal`). ``None`` (default):
            no anneal.
        anneal: the anneal's shape: ``"wsd"`` (full step, then a linear decay over the last
            ``anneal_fraction`` of the run; default), ``"linear"`` or ``"cosine"``.
        anneal_fraction: the share of the run spent decaying with ``"wsd"`` (default 0.2).
        preset: ``None`` (our defaults) or ``"paper"`` (the paper's: ``c = 0.3``, ``β_s = 0.99``, no
            amortisation); explicit arguments override the preset.

    Readable after each step: :attr:`step_size` (the accepted step size, also ``group["step_size"]``
    in every group), :attr:`counters`, and :attr:`search_state`.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        initial_step_size: float = 0.1,
        c: Optional[float] = None,
        growth: float = 1.0 / 0.999,
        backtrack: float = 0.9,
        slope_smoothing: Optional[float] = None,
        min_step_size: float = 1e-10,
        max_step_size: float = 10.0,
        max_backtracks: int = 100,
        ascent_handling: bool = True,
        direction: str = "adam",
        slope: str = "exact",
        finite_difference_eps: float = 5e-9,
        growth_per: str = "step",
        amortized: Optional[bool] = None,
        max_search_interval: int = 20,
        search_interval_rule: str = "halving",
        foreach: Optional[bool] = None,
        process_group: Optional[Any] = None,
        distributed: Optional[bool] = None,
        check_consistency: bool = False,
        total_steps: Optional[int] = None,
        anneal: str = "wsd",
        anneal_fraction: float = 0.2,
        preset: Optional[str] = None,
    ):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}; got {preset!r}")
        chosen = PRESETS[preset]
        c = chosen["c"] if c is None else c
        slope_smoothing = chosen["slope_smoothing"] if slope_smoothing is None else slope_smoothing
        amortized = chosen["amortized"] if amortized is None else amortized
        self.preset = preset
        self._validate_group_values(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        _check_range("c", c, 0.0, 1.0, True, True)
        _check_range("growth", growth, 1.0, math.inf, False, True)
        _check_range("backtrack", backtrack, 0.0, 1.0, True, True)
        _check_range("slope_smoothing", slope_smoothing, 0.0, 1.0, False, True)
        _check_range("min_step_size", min_step_size, 0.0, math.inf, True, True)
        _check_range("max_step_size", max_step_size, min_step_size, math.inf, False, True)
        _check_range("initial_step_size", initial_step_size, min_step_size, max_step_size, False, False)
        _check_range("finite_difference_eps", finite_difference_eps, 0.0, math.inf, True, True)
        if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 0:
            raise ValueError(f"max_backtracks must be an int >= 0, got {max_backtracks!r}")
        if isinstance(max_search_interval, bool) or not isinstance(max_search_interval, int) or max_search_interval < 1:
            raise ValueError(f"max_search_interval must be an int >= 1, got {max_search_interval!r}")
        for name, value, allowed in (
            ("search_interval_rule", search_interval_rule, INTERVAL_RULES),
            ("direction", direction, kernels.DIRECTION_KINDS),
            ("slope", slope, SLOPE_METHODS),
            ("growth_per", growth_per, GROWTH_PER),
            ("anneal", anneal, ANNEAL_SHAPES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(f"total_steps must be a positive int (the run's length in steps) or None, got {total_steps!r}")
        _check_range("anneal_fraction", anneal_fraction, 0.0, 1.0, True, False)
        for name, flag in (
            ("ascent_handling", ascent_handling),
            ("amortized", amortized),
            ("check_consistency", check_consistency),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")

        self.search_config = SearchConfig(
            c=float(c),
            growth=float(growth),
            backtrack=float(backtrack),
            smoothing=float(slope_smoothing),
            min_step_size=float(min_step_size),
            max_step_size=float(max_step_size),
            max_backtracks=max_backtracks,
            ascent_handling=ascent_handling,
        )
        self.amortisation = (
            AmortisationConfig(max_interval=max_search_interval, rule=search_interval_rule) if amortized else None
        )
        self.direction_kind = direction
        self.slope_method = slope
        self.finite_difference_eps = float(finite_difference_eps)
        self.growth_per = growth_per
        self.initial_step_size = float(initial_step_size)
        self.foreach = foreach
        self.reducer = Reducer(process_group, distributed)
        self.check_consistency = check_consistency
        self.total_steps = total_steps
        self.anneal = anneal
        self.anneal_fraction = float(anneal_fraction)
        #: weight of the local partial slope of each sharded (DTensor) parameter, by id (empty when
        #: every parameter is a plain replicated tensor)
        self._slope_weights: Dict[int, float] = {}
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._publish(self._initial_search_state())

    # ------------------------------------------------------------------------------------------
    # Parameter groups and the shared search state
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _validate_group_values(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("lr given as a tensor must hold one value")
            lr = float(lr)
        _check_range("lr (the multiplier on the committed step)", lr, 0.0, math.inf, False, True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_range("betas[0]", betas[0], 0.0, 1.0, False, True)
        _check_range("betas[1]", betas[1], 0.0, 1.0, False, True)
        _check_range("eps", eps, 0.0, math.inf, False, True)
        _check_range("weight_decay", weight_decay, 0.0, math.inf, False, True)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group; it may set ``lr``, ``betas``, ``eps`` and ``weight_decay`` (see the class doc)."""
        if not isinstance(param_group, dict):
            param_group = {"params": param_group}
        reserved = {"step_size", "search"}
        unknown = set(param_group) - set(GROUP_KEYS) - {"params", "param_names"} - reserved
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ValueError(
                f"Parameter groups of {type(self).__name__} may set only {', '.join(GROUP_KEYS)}; got {names}. "
                "The line search's settings are shared by all groups (one step size for the whole "
                "model): pass them to the constructor."
            )
        merged = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        self._validate_group_values(**merged)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        param_group = {**param_group, "params": params}
        for p in params:
            if isinstance(p, Tensor) and p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters; use torch.view_as_real.")
        for p in params:
            if isinstance(p, Tensor):
                weight = self.reducer.slope_weight(p, type(self).__name__)
                if weight is not None:
                    self._slope_weights[id(p)] = weight
        super().add_param_group(param_group)
        shared = self.param_groups[0].get("search")
        if shared is not None:  # None while the constructor adds the first groups
            self._publish(shared)

    def _initial_search_state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {
            "step_size": self.initial_step_size,
            "smoothed_slope": 0.0,
            "smoothed_decrease": 0.0,
            "step_size_fast": 0.0,
            "step_size_slow": 0.0,
            "steps_until_search": 0,
            "search_interval": 1,
            "last_loss": math.nan,
            "last_trials": 0,
            "last_status": "",
            "last_anneal": 1.0,
        }
        state.update({k: 0 for k in COUNTER_KEYS})
        return state

    def _publish(self, state: Dict[str, Any]) -> None:
        """Make ``state`` the shared search state of every group (a new dict object each step, so a
        ``state_dict()`` taken earlier keeps the values it had)."""
        for group in self.param_groups:
            group["search"] = state
            group["step_size"] = state["step_size"]

    @property
    def search_state(self) -> Dict[str, Any]:
        """The line search's carried state (a copy): step size, smoothed slope and decrease,
        amortisation averages, counters, and the last step's loss, trial count and status."""
        return dict(self.param_groups[0]["search"])

    @property
    def step_size(self) -> float:
        """The step size ``η`` accepted at the last step (before the ``lr`` multiplier)."""
        return float(self.param_groups[0]["search"]["step_size"])

    @property
    def counters(self) -> Dict[str, int]:
        """Cumulative counts: steps, forward evaluations, backward passes, searches, backtracks,
        rejected non-finite trials, searches skipped by amortisation, skipped steps (non-finite
        first loss or gradients), and searches that gave up."""
        state = self.param_groups[0]["search"]
        return {k: int(state[k]) for k in COUNTER_KEYS}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict (tensors are cast to each parameter's dtype and device, as in torch)."""
        super().load_state_dict(state_dict)
        saved = self.param_groups[0].get("search")
        state = self._initial_search_state()
        if saved is not None:
            state.update(saved)
        self._publish(state)

    # ------------------------------------------------------------------------------------------
    # The step
    # ------------------------------------------------------------------------------------------

    def _trainable_params(self) -> List[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _use_foreach(self, params: List[Tensor]) -> bool:
        if self.foreach is not None:
            return bool(self.foreach)
        return all(p.device.type in ("cpu", "cuda", "xpu", "mps") for p in params)

    def _found_inf(self, params: List[Tensor], grad_scaler: Optional[Any]) -> Tensor:
        """A 0-dim tensor that is 0 when every gradient is finite, and positive or NaN otherwise
        (no host synchronisation: it is read back with the first loss)."""
        device = params[0].device if params else torch.device("cpu")
        if grad_scaler is not None and getattr(grad_scaler, "is_enabled", lambda: True)():
            state = grad_scaler._per_optimizer_states[id(self)]
            if state["stage"].name == "READY":
                grad_scaler.unscale_(self)
            found = list(state["found_inf_per_device"].values())
            if found:  # empty when no parameter received a gradient: fall through to our own check
                return torch.stack([f.to(device, torch.float64) for f in found]).sum()
        by_device: Dict[torch.device, List[Tensor]] = defaultdict(list)
        sharded = bool(self._slope_weights)
        for p in params:
            # a shard's own values (sharded parameters): the reduced sum makes the check global
            grad = local_tensor(p.grad) if sharded else p.grad
            if grad is not None and grad.numel():  # an empty tensor (or shard) has no infinity norm
                by_device[grad.device].append(grad)
        if not by_device:
            return torch.zeros((), dtype=torch.float64, device=device)
        # The sum of all gradient entries, times 0: 0 if every entry is finite, NaN if one is inf or
        # NaN (they propagate through a sum; +inf and -inf give NaN). A plain sum is one cheap pass
        # (on the CPU 15x faster than torch._foreach_norm(grads, inf)); it is accumulated in at least
        # fp32, so only a finite sum beyond ~3e38 could be mistaken for an overflow, and a step with
        # such gradients is better skipped anyway (Adam's g² would overflow).
        totals = [
            torch.stack([g.sum(dtype=_sum_dtype(g.dtype)) for g in grads]).sum().to(device)
            for grads in by_device.values()
        ]
        return (totals[0] if len(totals) == 1 else torch.stack(totals).sum()) * 0.0

    def _moment_buckets(self, group: Dict[str, Any]) -> Iterable[_MomentBucket]:
        """Count a step for every parameter of ``group`` with a gradient (creating its moments on the
        first one), then yield them in buckets that share device, dtype, step and slope weight, with
        what the kernels need. Sharded (DTensor) parameters are yielded as their local shards."""
        kind = self.direction_kind
        sharded = bool(self._slope_weights)
        # With sharded parameters each rank contributes a weighted partial slope and the partial sums
        # are summed across the ranks; a replicated parameter then counts 1/world on every rank.
        replica_weight = 1.0 / self.reducer.world_size if sharded else 1.0
        beta1, beta2 = group["betas"]
        buckets: Dict[Tuple[torch.device, torch.dtype, int, float], List[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                if kernels.uses_first_moment(kind):
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if kernels.uses_second_moment(kind):
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            weight = self._slope_weights.get(id(p), replica_weight) if sharded else 1.0
            buckets[(p.device, p.dtype, state["step"], weight)].append(p)
        for (device, _, step, weight), params in buckets.items():
            grads = [p.grad for p in params]
            exp_avgs = [self.state[p].get("exp_avg") for p in params]
            exp_avg_sqs = [self.state[p].get("exp_avg_sq") for p in params]
            if sharded:  # DTensors are worked on through their local shards (no collectives)
                params, grads, exp_avgs, exp_avg_sqs = (
                    [local_tensor(t) for t in tensors] for tensors in (params, grads, exp_avgs, exp_avg_sqs)
                )
            hyper = dict(kind=kind, beta1=beta1, beta2=beta2, eps=group["eps"], step=step)
            yield _MomentBucket(device, params, grads, exp_avgs, exp_avg_sqs, hyper, self._use_foreach(params), weight)

    def _prepare_directions(self) -> Tuple[List[Tuple[Dict[str, Any], List[_Bucket]]], Tensor]:
        """Update the moments of every parameter with a gradient and form the direction.

        Returns per group its buckets of (params, directions, foreach), and the slope ``D = gᵀd`` as a
        0-dim float64 tensor (not read back to the host here).
        """
        per_group = []
        slopes: List[Tensor] = []
        first_device: Optional[torch.device] = None
        for group in self.param_groups:
            group_buckets: List[_Bucket] = []
            for b in self._moment_buckets(group):
                first_device = first_device or b.device
                if b.foreach:
                    directions = kernels.direction_foreach(b.grads, b.exp_avgs, b.exp_avg_sqs, **b.hyper)
                    bucket_slopes = [kernels.slope_foreach(b.grads, directions).to(first_device)]
                else:
                    directions = [
                        kernels.direction_reference(g, m, v, **b.hyper)
                        for g, m, v in zip(b.grads, b.exp_avgs, b.exp_avg_sqs)
                    ]
                    bucket_slopes = [kernels.slope_reference(g, d).to(first_device) for g, d in zip(b.grads, directions)]
                group_buckets.append((b.params, directions, b.foreach))
                if b.weight != 1.0:
                    bucket_slopes = [s * b.weight for s in bucket_slopes]
                slopes.extend(bucket_slopes)
            per_group.append((group, group_buckets))
        if slopes:
            slope = torch.stack(slopes).sum()
        else:
            slope = torch.zeros((), dtype=torch.float64, device=first_device or torch.device("cpu"))
        return per_group, slope

    def _apply_amortised_step(self, step_size: float, anneal: float) -> None:
        """A step without a search: update the moments and set ``w ← w − lr·a·η·(d + λ·w)`` at once,
        with ``d`` never stored (as Adam's kernel does)."""
        for group in self.param_groups:
            scale = float(group["lr"]) * anneal * step_size
            keep = 1.0 - scale * group["weight_decay"]
            for b in self._moment_buckets(group):
                if b.foreach:
                    kernels.apply_step_foreach(
                        b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, **b.hyper, scale=scale, keep=keep
                    )
                else:
                    for p, g, m, v in zip(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs):
                        kernels.apply_step_reference(p, g, m, v, **b.hyper, scale=scale, keep=keep)

    def _move(self, per_group: List[Tuple[Dict[str, Any], List[_Bucket]]], alpha: float) -> None:
        """``w ← w + alpha·d`` for every parameter with a direction."""
        for _, buckets in per_group:
            for params, directions, foreach in buckets:
                kernels.move(params, directions, alpha, foreach=foreach)

    def _annealing(self, step: int) -> float:
        """The built-in anneal factor ``a(t)`` of the committed step (1 without ``total_steps``)."""
        if self.total_steps is None:
            return 1.0
        if step > self.total_steps and not getattr(self, "_warned_past_total", False):
            self._warned_past_total = True
            warnings.warn(
                f"{type(self).__name__} has run past total_steps={self.total_steps}: the committed step "
                "stays at the anneal's final (small) value. Raise total_steps to train longer.",
                RuntimeWarning,
                stacklevel=4,
            )
        return anneal_factor(self.anneal, step, self.total_steps, self.anneal_fraction)

    def _commit(self, per_group: List[Tuple[Dict[str, Any], List[_Bucket]]], step_size: float, scale: float) -> None:
        """From the trial point ``w − η·d`` to the committed point ``w − lr·a·η·(d + λ·w)`` (``a`` the
        built-in anneal factor ``scale``)."""
        for group, buckets in per_group:
            lr = float(group["lr"]) * scale
            for params, directions, foreach in buckets:
                kernels.commit(
                    params,
                    directions,
                    step_size=step_size,
                    lr=lr,
                    weight_decay=group["weight_decay"],
                    foreach=foreach,
                )

    def _read(self, values: List[Tensor], num_means: int) -> List[float]:
        """Reduce across ranks (when distributed) and read back: the one host synchronisation of
        an evaluation."""
        device = values[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        packed = torch.stack([v.reshape(()).to(device=device, dtype=dtype) for v in values])
        return self.reducer.reduce(packed, num_means).tolist()

    def _should_search(self, state: Dict[str, Any]) -> bool:
        amortisation = self.amortisation
        if amortisation is None or state["searches"] < amortisation.warmup_searches:
            return True
        return state["steps_until_search"] <= 0

    def step(self, closure: Optional[Callable[[], Any]] = None, grad_scaler: Optional[Any] = None) -> Tensor:  # type: ignore[override]
        """Evaluate the closure, search the step size, and update the parameters.

        Args:
            closure: returns the loss of the current batch (a scalar tensor). Forward-only closures
                are recommended; closures that call ``zero_grad()`` and ``backward()`` themselves
                (the ``torch.optim.LBFGS`` convention) also work, at the cost of a backward pass per
                trial.
            grad_scaler: a ``torch.amp.GradScaler`` for fp16 training (passed by ``scaler.step``,
                or directly: ``opt.step(closure, grad_scaler=scaler)``).

        Returns:
            The loss of the first evaluation (at the weights before the step), detached.
        """
        if closure is None:
            message = CLOSURE_REQUIRED_MESSAGE.format(name=type(self).__name__)
            if grad_scaler is not None:
                message += (
                    "\nA GradScaler called step() without a closure: framework fp16 plugins (Lightning's "
                    "precision='16-mixed', the HF Trainer's fp16=True) consume the closure themselves. Use "
                    "bf16 there, or the recipe opt.step(closure, grad_scaler=scaler); scaler.update()."
                )
            raise TypeError(message)
        if not callable(closure):
            raise TypeError(f"closure must be callable, got {type(closure).__name__}")
        params = self._trainable_params()
        if not params:
            raise ValueError(f"{type(self).__name__} has no parameters that require grad")
        state = dict(self.param_groups[0]["search"])
        searching = self._should_search(state)  # decided from carried state: the same on every rank
        evaluator = ClosureEvaluator(
            closure, params, type(self).__name__, grad_scaler, sharded=bool(self._slope_weights), trials=searching
        )
        try:
            loss = evaluator.first()
            with torch.no_grad():
                self._step(evaluator, loss, params, grad_scaler, state, searching)
        finally:
            evaluator.finish()
            state["forward_evaluations"] += evaluator.evaluations
            state["backward_passes"] += evaluator.backward_passes
            self._publish(state)
        if self.check_consistency:
            distributed.check_consistency(self)
        return loss

    def _step(
        self,
        evaluator: ClosureEvaluator,
        loss: Tensor,
        params: List[Tensor],
        grad_scaler: Optional[Any],
        state: Dict[str, Any],
        searching: bool,
    ) -> None:
        config = self.search_config
        state["steps"] += 1
        loss0, found_inf = self._read([loss, self._found_inf(params, grad_scaler)], num_means=1)
        state["last_loss"] = loss0
        state["last_trials"] = 0
        if not math.isfinite(loss0) or found_inf != 0.0:  # NaN != 0 too
            state["skipped_steps"] += 1
            state["last_status"] = "skipped_nonfinite"
            return

        grown = config.grow(state["step_size"])
        scale = self._annealing(state["steps"])
        state["last_anneal"] = scale

        if not searching:
            # Amortised step: the grown step along d, no trial evaluation, d never stored.
            self._apply_amortised_step(grown, scale)
            state["steps_until_search"] -= 1
            state["skipped_searches"] += 1
            state["last_status"] = "amortised"
            if self.growth_per == "step":
                state["step_size"] = grown
            return

        per_group, slope_tensor = self._prepare_directions()

        start = 0.0  # the parameters sit at w − start·d
        fd_slope = None
        if self.slope_method == "finite_difference":
            eps = self.finite_difference_eps
            self._move(per_group, -eps)
            start = eps
            (loss_fd,) = self._read([evaluator.trial()], num_means=1)
            fd_slope = (loss0 - loss_fd) / eps

        self._move(per_group, start - grown)
        start = grown
        # Replicated parameters: the slope is the same on every data-parallel rank (the gradients are
        # averaged), and averaging keeps it so. Sharded parameters: each rank holds a weighted partial
        # sum (see _prepare_directions), and the sum is the slope. Either way every rank reads the
        # same reduced value, in the same collective as the trial loss.
        slope_is_partial = bool(self._slope_weights)
        loss1, exact_slope = self._read([evaluator.trial(), slope_tensor], num_means=1 if slope_is_partial else 2)
        slope = exact_slope if fd_slope is None else fd_slope
        if not math.isfinite(slope):
            self._move(per_group, start)
            state["skipped_steps"] += 1
            state["last_status"] = "skipped_nonfinite_slope"
            return
        smoothed_slope = smooth(state["smoothed_slope"], slope, config.smoothing)

        def decrease_at(step_size: float) -> Optional[float]:
            nonlocal start
            self._move(per_group, start - step_size)
            start = step_size
            (trial_loss,) = self._read([evaluator.trial()], num_means=1)
            return loss0 - trial_loss if math.isfinite(trial_loss) else None

        first_decrease = loss0 - loss1 if math.isfinite(loss1) else None
        result = backtrack(
            first_decrease,
            grown,
            exact_slope,
            smoothed_slope,
            state["smoothed_decrease"],
            config,
            decrease_at,
        )
        if result.status.commits:
            self._commit(per_group, result.step_size, scale)
            state["smoothed_decrease"] = result.smoothed_decrease
        else:
            self._move(per_group, start)  # back to w
        state["smoothed_slope"] = smoothed_slope
        state["step_size"] = result.step_size
        state["searches"] += 1
        state["backtracks"] += result.backtracks
        state["rejected_nonfinite"] += result.nonfinite_trials
        state["gave_up"] += result.status in (SearchStatus.GAVE_UP, SearchStatus.FAILED)
        state["last_trials"] = result.trials
        state["last_status"] = result.status.value
        if self.amortisation is not None:
            committed = result.status.commits and result.status is not SearchStatus.GAVE_UP
            self._update_amortisation(state, result.step_size, result.backtracks, committed)

    def _update_amortisation(self, state: Dict[str, Any], step_size: float, backtracks: int, committed: bool) -> None:
        amortisation = self.amortisation
        if amortisation.rule in ("doubling", "halving"):
            interval = next_interval(
                state["search_interval"], backtracks, committed, amortisation.max_interval,
                halve=amortisation.rule == "halving",
            )
            state["search_interval"] = interval
            state["steps_until_search"] = interval - 1
            return
        if state["searches"] == 1:
            state["step_size_fast"] = state["step_size_slow"] = step_size
        else:
            state["step_size_fast"] = smooth(state["step_size_fast"], step_size, amortisation.fast)
            state["step_size_slow"] = smooth(state["step_size_slow"], step_size, amortisation.slow)
        interval = search_interval(state["step_size_fast"], state["step_size_slow"], amortisation.max_interval)
        state["search_interval"] = interval
        state["steps_until_search"] = interval - 1
