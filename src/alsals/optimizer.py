"""ALSALS: Adam whose step size is chosen at every step by a stochastic Armijo line search.

One step (``docs/algorithm.md`` has the full specification and the paper references):

1. ``f0 = f(w)`` and ``g = ∇f(w)`` from the closure (the first evaluation).
2. The direction ``d`` (``P·m̂`` for ALSALS) from Adam's moments *as they will be*, and the slope
   ``D = gᵀd``; the moments themselves are not touched yet.
3. The carried step size grows: ``η ← clamp(η·γ)``; the slope is smoothed: ``s ← β_s·s + (1 − β_s)·D``.
4. Trials ``w0 − η·d`` (from a saved copy ``w0``; same batch, same random draws, no trace on buffers)
   are evaluated and ``η`` shrinks by ``β_b`` until ``h' = β_s·h + (1 − β_s)·(f0 − f(w0 − η·d)) ≥
   c_eff·η·s``, where ``c_eff = 1/c`` when ``s ≤ 0`` (ascent handling).
5. Commit: the moments, the per-parameter step counts and the parameters are updated together:
   ``w ← w0 − lr·a·η·(d + λ·w0)`` (``lr`` a multiplier that torch LR schedulers may drive, ``a`` the
   built-in anneal, ``λ`` decoupled weight decay). An exception anywhere before leaves everything as
   it was.

:meth:`ALSALS.step` is that sequence: evaluate, :func:`~alsals.search.plan`, search inside a
:class:`~alsals.trial.TrialPoint`, commit, :func:`~alsals.search.advance`. The engine also runs the
SLS and SaLSa presets (:data:`alsals.config.PRESETS`).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import averaging, distributed, kernels
from ._validation import check_range
from .anneal import PlateauDetector, wsd_decay_start
from .closure import CLOSURE_REQUIRED_MESSAGE, ClosureEvaluator, ModuleCache
from .config import ALSALSConfig, resolve_config
from .distributed import Reducer, local_tensor
from .search import (
    COUNTER_KEYS,
    Outcome,
    Plan,
    SearchConfig,
    SearchState,
    StepKind,
    advance,
    backtrack,
    for_search,
    next_smoothed_slope,
    plan,
)
from .trial import TrialPoint

#: keys a parameter group may set for itself; everything else belongs to the one line search
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")


@dataclass
class _Bucket:
    """Parameters of one group with a gradient in this step that share device, dtype, step count and
    slope weight: what the kernels need, and the state to store when the step commits."""

    group: Dict[str, Any]
    device: torch.device
    owners: List[Tensor]  # the optimizer's parameters (keys of ``self.state``)
    params: List[Tensor]  # the tensors the kernels update (local shards of DTensor parameters)
    grads: List[Tensor]
    exp_avgs: List[Optional[Tensor]]  # local views of the moments (fresh zeros before the first step)
    exp_avg_sqs: List[Optional[Tensor]]
    moments: List[Tuple[Optional[Tensor], Optional[Tensor]]]  # the moments as ``self.state`` keeps them
    step: int  # the per-parameter step count this step gives them
    weight: float  # weight of this bucket's partial slope (sharded parameters)
    foreach: bool
    #: its amortized steps take torch's fused AdamW kernel, skipped on the device when not finite
    fused: bool = False
    directions: List[Tensor] = field(default_factory=list)

    @property
    def hyper(self) -> Dict[str, Any]:
        beta1, beta2 = self.group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=self.group["eps"], step=self.step)


@dataclass
class _DeviceCounts:
    """What amortized steps decided on the device since the last host read, not yet in the
    :class:`~alsals.search.SearchState` (read lazily: at the next searched step's first read, or
    when the user asks for ``counters``, ``search_state`` or ``state_dict()``).

    Attributes:
        skipped: how many of those steps were skipped (non-finite loss or gradients), a 0-dim float64.
        last_loss: the first loss of the latest one (this rank's).
        last_skipped: 1.0 when the latest one was skipped, else 0.0.
    """

    skipped: Tensor
    last_loss: Tensor
    last_skipped: Tensor

    def add(self, loss: Tensor, skipped: Tensor) -> "_DeviceCounts":
        """The counts after one more device-side step (device operations only)."""
        return _DeviceCounts(self.skipped + skipped.to(self.skipped), loss, skipped)

    def tensors(self) -> List[Tensor]:
        return [self.skipped, self.last_loss, self.last_skipped]

    @staticmethod
    def fold(state: SearchState, values: List[float], latest: bool) -> SearchState:
        """``state`` with the counts read back (``values`` from :meth:`tensors`). ``latest``: the
        last step of ``state`` was the latest device-side step, so its report comes from here too."""
        skipped, last_loss, last_skipped = values
        state = replace(state, skipped_steps=state.skipped_steps + int(skipped))
        if latest:
            status = StepKind.SKIPPED_NONFINITE.value if last_skipped else state.last_status
            state = replace(state, last_loss=last_loss, last_status=status)
        return state


@dataclass
class StagedStep:
    """A step of :class:`ALSALS` run up to the point where no closure is left to evaluate
    (:meth:`ALSALS._staged_step`): the parameters sit at the step's end point, and nothing else has
    changed. What is left, none of which evaluates the closure or can fail on the user's account:

    - :meth:`commit`: update Adam's moments and the per-parameter step counts, as the step would
      have. An amortized step's update is rerun in place for that (its end point was computed on
      copies of the moments), so it must run with the parameters back at the step's start;
    - :meth:`publish`: the carried search state, the average of the iterates (sampled from the
      parameters, which must then sit at the end point), the distributed consistency check.

    ``LayerwiseALSALS`` stages every part's step and commits them only once its combined test has
    passed, so that an exception in a later part's trial or in the combined test leaves every
    part's state as it was. Dropping a staged step leaves the optimizer as it was before the step
    (the parameters apart: the caller puts them back)."""

    commits: List[Callable[[], None]] = field(default_factory=list)
    published: Optional[Callable[[], None]] = None

    def commit(self) -> None:
        with torch.no_grad():  # in-place updates of leaf parameters, as inside the step
            for action in self.commits:
                action()

    def publish(self) -> None:
        if self.published is not None:
            with torch.no_grad():
                self.published()


def _clone(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return tensor.clone() if tensor is not None else None


def _same(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return tensor


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a gradient sum: fp16/bf16 sums are taken in fp32 (fp16 overflows at 65504)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _validate_group_values(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element (it is a multiplier on the committed step)")
        lr = float(lr)
    check_range("lr (the multiplier on the committed step)", lr, 0.0, math.inf, low_open=False, high_open=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_range("betas[0]", betas[0], 0.0, 1.0, low_open=False, high_open=True)
    check_range("betas[1]", betas[1], 0.0, 1.0, low_open=False, high_open=True)
    check_range("eps", eps, 0.0, math.inf, low_open=False, high_open=True)
    check_range("weight_decay", weight_decay, 0.0, math.inf, low_open=False, high_open=True)


def _constructed_by_zero_redundancy_optimizer() -> bool:
    """Whether a ``ZeroRedundancyOptimizer`` is constructing this optimizer (its local shard)."""
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    zero = getattr(module, "ZeroRedundancyOptimizer", None)
    if zero is None:
        return False
    frame: Optional[FrameType] = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), zero):
            return True
        frame = frame.f_back
    return False


ZERO_MESSAGE = (
    "{name} cannot be the local optimizer of ZeroRedundancyOptimizer: ZeRO gives each rank a shard "
    "of the parameters and steps it alone, so every rank would run its own line search on its own "
    "shard (different step sizes, a slope and trial losses of a part of the model). Use {name} "
    "directly with DistributedDataParallel (the search is then reduced across the ranks), or shard "
    "the model with FSDP2 (torch.distributed.fsdp.fully_shard), whose sharded parameters {name} "
    "supports (docs/distributed.md)."
)


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

    The keyword-only settings below default to the chosen ``preset`` (``None``: ours; the table is
    :data:`alsals.config.PRESETS`, and ``README.md`` lists the values); explicit values win.

    Keyword Args:
        initial_step_size: ``η0``, the step size the first search starts from (0.1).
        c: sufficient-decrease constant of the Armijo condition, in (0, 1) (0.5; the paper: 0.3).
        growth: ``γ``, growth of the carried step size (1/0.999, per step or per search: ``growth_per``).
        growth_per: ``"step"`` (the carried step size grows at every step) or ``"search"`` (only
            when a search starts; amortized steps use the grown size without keeping it).
        backtrack: ``β_b``, shrink factor of a rejected trial (0.9); the largest one with ``interpolate``.
        interpolate: a rejected trial's next step size from the quadratic model of the batch loss along
            ``d`` fitted to that trial, safeguarded to ``[0.1, β_b]`` times it
            (:func:`~alsals.search.next_cut`).
        max_increase: two-way search: when the first trial is accepted and the quadratic model puts
            the Armijo boundary at least twice further, one larger trial (at most ``max_increase``
            times the first) is tried and kept if it passes (:func:`~alsals.search.backtrack`);
            ``1.0``: the search only shrinks.
        rate_smoothing: smooth the decrease per unit step ``Δ/η`` and test ``r' ≥ c_eff·s`` instead of the
            paper's ``h' ≥ c_eff·η·s`` (the same at a constant ``η``; see
            :class:`~alsals.search.SearchConfig`).
        increase_test: what the two-way search's larger trial must pass: ``"smoothed"`` (the
            smoothed condition as it stands; it lags behind a growing step) or ``"batch"`` (the
            batch's own Armijo condition, and the smoothed one with the carried decrease moved to the
            larger step; see :class:`~alsals.search.SearchConfig`).
        recover: cuts are not permanent: after a search cut a step size an earlier search had
            accepted, the following searches start from ``η/β_b`` (instead of ``η·γ``) until the step
            size is back at that level; each recovered step size is tested before it is committed
            (:class:`~alsals.search.SearchConfig`).
        match_displacement: ``"warmup"``: during the warm-up searches a search starts from at least
            ``η₁·‖d₁‖/‖d‖``, the step size that moves the weights as far as the first accepted step
            along Adam's sign-like first direction did; ``"always"``: at every search; ``"off"``
            (:class:`~alsals.search.SearchConfig`).
        smoothing_per: what the smoothing's memory counts: ``"search"`` (the paper's: with the
            amortized search the EMAs span the last ~10 searches) or ``"step"`` (a search ``L`` steps
            after the last folds its measurement in with ``β_s^L``; see
            :func:`~alsals.search.for_search`).
        cut_per: what a cut found by an amortized search counts for: ``"search"`` (the paper's: the
            accepted step size is carried on) or ``"step"`` (a search ``L`` steps after the last that
            cut the step size by ``r`` carries ``r^L`` times the grown one: the cut counted for each
            step since the last search, so that the expected change of ``ln η`` per step is that of a
            search at every step; see :class:`~alsals.search.SearchConfig`).
        unaccepted_search: what a search that cut and ended with no trial passing (it gave up at
            the floor or after ``max_backtracks`` cuts, or stopped where the loss no longer resolves
            the step) leaves to the next one: ``"restart"`` (the default: the step size it started
            from, and the smoothed slope and decrease emptied, so that the next search tests the
            classical Armijo condition on its batch; the step itself is the last trial's) or
            ``"keep"`` (the paper's and 0.1's: the last trial's step size, about ``3·10⁻⁵`` of the
            start after a give-up, which growth undoes only over ~10,000 steps, and the smoothing's
            memory as it is). The condition can fail at every step size because of that memory, e.g.
            a negative carried decrease; that says nothing about the step size. A search that fails
            with an empty memory (the first, the one after a restart, or ``slope_smoothing=0``) tested
            the classical condition: its cut is kept under either rule
            (:class:`~alsals.search.SearchConfig`). ``counters["unaccepted"]`` counts such searches.
        slope_smoothing: ``β_s``, EMA factor of the slope and the decrease (0.9; the paper: 0.99;
            0 disables smoothing).
        min_step_size, max_step_size: bounds of the step size (1e-10, 10).
        max_backtracks: at most this many shrinks per search (100).
        ascent_handling: use ``c → 1/c`` when the smoothed slope is not positive (True).
        direction: ``"adam"`` (``P·m̂``, ALSALS), ``"preconditioned_gradient"`` (``P·g``, SaLSa) or
            ``"gradient"`` (``g``, SLS).
        slope: ``"exact"`` (``gᵀd``, free) or ``"finite_difference"`` (the paper's
            ``(f(w) − f(w − ε·d))/ε``, one more forward pass per step).
        finite_difference_eps: ``ε`` of the finite-difference slope (5e-9).
        trial_direction: what a search's trials move along. ``"current"`` (the paper's): this step's
            direction, formed with this batch's gradient. ``"previous"``: the direction of the step
            before (Adam's moments without this batch's gradient), so the batch tests the step as
            data the direction has not seen: the slope ``gᵀd`` and the decrease along ``d`` are then
            unbiased estimates of those of the expected loss, where this step's direction carries
            ``(1 − β1)·g`` and so rewards a step that fits the batch's own noise. The accepted step
            size is committed along this step's direction, as Adam's update; the first step (no
            moments yet) searches along its own. Needs ``direction="adam"``.
        amortized: search only every few steps (:class:`~alsals.search.AmortizationConfig`; on; the
            paper: off).
        max_search_interval: the longest interval between amortized searches (20).
        search_interval_rule: ``"doubling"`` (the default: the interval doubles after a search that
            did not cut the step size and drops to 1 after any cut), ``"halving"`` (version 0.1's: it
            halves for every cut instead) or ``"salsa"`` (SaLSa's rule from two averages of the
            accepted step size).
        anneal: the built-in anneal's shape when ``total_steps`` is given: ``"wsd"`` (full step, then
            a linear decay over the last ``anneal_fraction`` of the run), ``"linear"`` or ``"cosine"``.
        anneal_fraction: the share of the run spent decaying with ``"wsd"`` (0.2).
        total_steps: the run's length in optimizer steps, when known: the committed step is then
            annealed (:mod:`alsals.anneal`). ``None`` (default): no anneal.
        decay_on_plateau: with ``total_steps`` and the ``"wsd"`` anneal, start the decay as soon as
            the batch loss has stopped falling (:class:`alsals.anneal.PlateauDetector`, the rule of
            :class:`alsals.LayerwiseALSALS`; at the latest where the anneal starts it). The losses of
            amortized steps that run on the device are read with the next searched step's (no extra
            host synchronisation), so the decay then starts at that step. Default ``False``.
        average: keep a polynomial-decay average of the iterates (:mod:`alsals.averaging`), which
            :meth:`eval` puts into the parameters for evaluation and :meth:`train` takes out again.
            ``None``: when ``total_steps`` is not given (the anytime counterpart of the anneal).
            Costs one parameter-sized buffer.
        foreach: use the multi-tensor kernels (default: on, unless a parameter is on a device
            without them); ``False`` uses the single-tensor reference implementation.
        process_group, distributed: see :class:`~alsals.distributed.Reducer`. Under
            ``torch.distributed`` the losses of every evaluation are averaged over the ranks and every
            decision is taken from the averaged values, so all ranks take the same step
            (``docs/distributed.md``). Sharded ``DTensor`` parameters (FSDP2) are detected here; the
            slope is then a sum of per-shard partial sums. Unsupported layouts (FSDP1, ZeRO) raise
            ``ValueError``.
        check_consistency: after every step, gather the step size, trial count and a parameter
            checksum from all ranks and raise ``RuntimeError`` if they differ (a debug guard).
        preset: ``None`` (our defaults), ``"v0.1"`` (the defaults of version 0.1.0), ``"paper"`` (the
            paper's), ``"sls"`` or ``"salsa"`` (what :class:`~alsals.SLS` and :class:`~alsals.SaLSa` use).

    Readable after each step: :attr:`step_size` (the accepted step size, also ``group["step_size"]``
    in every group), :attr:`counters`, :attr:`search_state`, and :attr:`config` (every setting, a
    frozen :class:`~alsals.config.ALSALSConfig`).

    A step that raises (in the closure, a trial, a collective; ``KeyboardInterrupt`` included) leaves
    the parameters, Adam's moments and step counts, and the search state bitwise as they were, and
    re-raises; the next step works as if it had not been tried.
    """

    _step_supports_amp_scaling = True
    #: the preset a subclass is (``alsals.SLS``, ``alsals.SaLSa``); ``None`` for ALSALS itself
    _preset: Optional[str] = None

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        initial_step_size: Optional[float] = None,
        c: Optional[float] = None,
        growth: Optional[float] = None,
        growth_per: Optional[str] = None,
        backtrack: Optional[float] = None,
        slope_smoothing: Optional[float] = None,
        min_step_size: Optional[float] = None,
        max_step_size: Optional[float] = None,
        max_backtracks: Optional[int] = None,
        ascent_handling: Optional[bool] = None,
        direction: Optional[str] = None,
        slope: Optional[str] = None,
        finite_difference_eps: Optional[float] = None,
        trial_direction: Optional[str] = None,
        amortized: Optional[bool] = None,
        max_search_interval: Optional[int] = None,
        search_interval_rule: Optional[str] = None,
        anneal: Optional[str] = None,
        anneal_fraction: Optional[float] = None,
        interpolate: Optional[bool] = None,
        max_increase: Optional[float] = None,
        rate_smoothing: Optional[bool] = None,
        increase_test: Optional[str] = None,
        recover: Optional[bool] = None,
        match_displacement: Optional[str] = None,
        smoothing_per: Optional[str] = None,
        cut_per: Optional[str] = None,
        unaccepted_search: Optional[str] = None,
        average: Optional[bool] = None,
        decay_on_plateau: Optional[bool] = None,
        total_steps: Optional[int] = None,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        process_group: Optional[Any] = None,
        distributed: Optional[bool] = None,
        check_consistency: bool = False,
        preset: Optional[str] = None,
    ):
        name = type(self).__name__
        if _constructed_by_zero_redundancy_optimizer():
            raise ValueError(ZERO_MESSAGE.format(name=name))
        self.config: ALSALSConfig = resolve_config(
            preset if preset is not None else self._preset,
            dict(
                initial_step_size=initial_step_size, c=c, growth=growth, growth_per=growth_per,
                backtrack=backtrack, slope_smoothing=slope_smoothing, min_step_size=min_step_size,
                max_step_size=max_step_size, max_backtracks=max_backtracks, ascent_handling=ascent_handling,
                direction=direction, slope=slope, finite_difference_eps=finite_difference_eps,
                trial_direction=trial_direction, amortized=amortized, max_search_interval=max_search_interval,
                search_interval_rule=search_interval_rule, anneal=anneal, anneal_fraction=anneal_fraction,
                interpolate=interpolate, max_increase=max_increase, rate_smoothing=rate_smoothing,
                increase_test=increase_test, recover=recover, match_displacement=match_displacement,
                smoothing_per=smoothing_per, cut_per=cut_per, unaccepted_search=unaccepted_search,
                average=average, decay_on_plateau=decay_on_plateau,
                total_steps=total_steps, foreach=foreach, fused=fused, distributed=distributed,
                check_consistency=check_consistency,
            ),
        )
        _validate_group_values(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.reducer = Reducer(process_group, distributed)
        self._init_runtime()
        #: decay_on_plateau: the test, the losses of device-side amortized steps not yet read (this
        #: rank's, reduced with the next read), and the averaged first losses read in this step
        self._plateau: Optional[PlateauDetector] = self.config.plateau_test(self.config.decay_on_plateau)
        self._pending_losses: List[Tensor] = []
        self._read_losses: List[float] = []
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        if self.config.fused:
            unsupported = sorted(
                {f"{p.device.type} {p.dtype}" for group in self.param_groups for p in group["params"]
                 if not kernels.fused_supported([cast(Tensor, local_tensor(p))])}
            )
            if unsupported:
                raise ValueError(
                    f"{name}(fused=True) needs parameters on a device and in a dtype torch's fused Adam "
                    f"kernel supports; got {', '.join(unsupported)}. Leave fused at its default (None): "
                    "the multi-tensor kernels then serve those parameters."
                )
        self._publish(SearchState.initial(self.config.search))

    def _init_runtime(self) -> None:
        """Attributes that are derived, not saved (rebuilt on unpickling)."""
        #: weight of the local partial slope of each sharded (DTensor) parameter, by id (empty when
        #: every parameter is a plain replicated tensor)
        self._slope_weights: Dict[int, float] = {}
        #: the modules the closure runs (discovered at the first searched step, held weakly)
        self._modules = ModuleCache()
        self._warned_past_total = False
        self._state_cache: Tuple[Optional[Dict[str, Any]], Optional[SearchState]] = (None, None)
        #: counts of amortized steps decided on the device, not yet read back
        self._device_counts: Optional[_DeviceCounts] = None
        #: the step being staged (_staged_step), whose state changes wait for StagedStep.commit/publish
        self._stage: Optional[StagedStep] = None

    # ------------------------------------------------------------------------------------------
    # Parameter groups, the shared search state, pickling
    # ------------------------------------------------------------------------------------------

    @property
    def search_config(self) -> SearchConfig:
        """The search's rules (``config.search``)."""
        return self.config.search

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
        _validate_group_values(**merged)
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif not isinstance(params, (list, tuple)):
            params = list(params)
        for p in params:
            if isinstance(p, Tensor) and p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters; use torch.view_as_real.")
        self._index_slope_weights(p for p in params if isinstance(p, Tensor))
        super().add_param_group({**param_group, "params": params})
        shared = self.param_groups[0].get("search")
        if shared is not None:  # None while the constructor adds the first groups
            self._publish(self._search_state())

    def _index_slope_weights(self, params: Iterable[Tensor]) -> None:
        for p in params:
            weight = self.reducer.slope_weight(p, type(self).__name__)
            if weight is not None:
                self._slope_weights[id(p)] = weight

    def _search_state(self) -> SearchState:
        """The carried search state (rebuilt from ``param_groups[0]["search"]``, its saved form)."""
        saved = self.param_groups[0].get("search")
        cached_dict, cached_state = self._state_cache
        if saved is cached_dict and cached_state is not None:
            return cached_state
        state = SearchState.from_dict(saved, self.config.search)
        self._state_cache = (saved, state)
        return state

    def _publish(self, state: SearchState) -> None:
        """Make ``state`` the shared search state of every group: a new plain dict each step (so a
        ``state_dict()`` taken earlier keeps the values it had, and ``weights_only`` loading reads it)."""
        saved = state.to_dict()
        for group in self.param_groups:
            group["search"] = saved
            group["step_size"] = state.step_size
        self._state_cache = (saved, state)

    def _settle(self) -> SearchState:
        """The carried state with the device-side counts of amortized steps read back (one host
        synchronisation, only when there are such counts)."""
        counts = self._device_counts
        if counts is not None:
            self._device_counts = None
            values = torch.stack([t.reshape(()).to(counts.skipped) for t in counts.tensors()]).tolist()
            self._publish(_DeviceCounts.fold(self._search_state(), values, latest=True))
        return self._search_state()

    @property
    def search_state(self) -> Dict[str, Any]:
        """The line search's carried state (a copy): step size, smoothed slope and decrease,
        amortization averages, counters, and the last step's loss, trial count and status.

        Amortized steps decide on the device whether they were skipped and keep their loss there;
        reading this (or :attr:`counters`, or ``state_dict()``) reads those back (one host
        synchronisation, on this rank only: no collective)."""
        return self._settle().to_dict()

    @property
    def step_size(self) -> float:
        """The step size ``η`` accepted at the last step (before the ``lr`` multiplier)."""
        return float(self._search_state().step_size)

    @property
    def counters(self) -> Dict[str, int]:
        """Cumulative counts: steps, forward evaluations, backward passes, searches, backtracks,
        rejected non-finite trials, searches skipped by amortization, skipped steps (non-finite
        first loss or gradients), searches that gave up or failed (``gave_up``), and searches that cut
        and passed no trial (``unaccepted``)."""
        return self._settle().counters

    def state_dict(self) -> Dict[str, Any]:
        """The state dict of ``torch.optim.Optimizer`` (the search state in every group's ``"search"``),
        with the device-side counts of amortized steps read back first."""
        self._settle()
        saved = super().state_dict()
        if self._plateau is not None:  # decay_on_plateau: the test's losses, and this rank's unread ones
            pending = torch.stack(self._pending_losses).tolist() if self._pending_losses else []
            saved["param_groups"][0]["plateau"] = {**self._plateau.state_dict(), "pending": pending}
        return saved

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict (tensors are cast to each parameter's dtype and device, as in torch).

        Reads the state dicts of every alsals version: the search state is the ``"search"`` dict of
        the parameter groups (version 0.1.0 wrote the same keys).
        """
        super().load_state_dict(state_dict)
        self._state_cache = (None, None)
        self._device_counts = None
        self._read_losses = []
        plateau = self.param_groups[0].pop("plateau", None) if self.param_groups else None
        if self._plateau is not None:
            self._plateau = self.config.plateau_test(True)
            self._pending_losses = []
            if plateau is not None:
                cast(PlateauDetector, self._plateau).load_state_dict(plateau)
                device = self.param_groups[0]["params"][0].device
                self._pending_losses = [torch.tensor(float(v), device=device) for v in plateau.get("pending", [])]
        self._publish(self._search_state())

    def __getstate__(self) -> Dict[str, Any]:
        self._settle()
        state = super().__getstate__()
        state["config"] = self.config
        state["reducer"] = self.reducer
        state["plateau"] = (self._plateau, list(self._pending_losses))
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Two callers: unpickling (copy.deepcopy, pickle, torch.load of a whole optimizer), with our
        # fields from __getstate__; and torch's load_state_dict, with state and param_groups only.
        config = state.pop("config", None)
        reducer = state.pop("reducer", None)
        plateau = state.pop("plateau", None)
        super().__setstate__(state)
        if config is None:
            return
        self.config = config
        self.reducer = reducer if reducer is not None else Reducer()
        self._init_runtime()
        self._plateau, self._pending_losses = plateau if plateau is not None else (None, [])
        self._read_losses = []
        self._index_slope_weights(p for group in self.param_groups for p in group["params"])
        self._publish(self._search_state())

    # ------------------------------------------------------------------------------------------
    # The step
    # ------------------------------------------------------------------------------------------

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

        A parameter that receives no gradient in this step (frozen with ``requires_grad_(False)``,
        or unused by the loss) does not move and its state does not change; when no parameter gets a
        gradient the step evaluates the closure and changes nothing else.
        """
        closure = self._checked_closure(closure, grad_scaler)
        state = self._search_state()
        if state.averaged_in:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called after opt.eval(): the parameters hold the average of "
                "the iterates, for evaluation. Call opt.train() before training on."
            )
        step_plan = plan(state, self.config.search, self.config.amortization)
        evaluator = ClosureEvaluator(
            closure,
            [p for group in self.param_groups for p in group["params"]],
            type(self).__name__,
            modules=self._modules,
            grad_scaler=grad_scaler,
            sharded=bool(self._slope_weights),
            trials=step_plan.search,
        )
        with evaluator:
            loss = evaluator.first()
            with torch.no_grad():
                outcome = self._take_step(evaluator, loss, step_plan, state, grad_scaler)

        def publish() -> None:
            state = self._search_state()  # with the device-side counts the step's read may have folded in
            state = advance(state, step_plan, outcome, self.config.search, self.config.amortization)
            if self.config.averages:
                state = self._sample_average(state)
            self._publish(state)
            if self._read_losses:
                self._watch_plateau()
            if self.config.check_consistency:
                self._settle()
                distributed.check_consistency(self)

        if self._stage is not None:
            self._stage.published = publish
        else:
            publish()
        return loss

    def _staged_step(self, closure: Callable[[], Any]) -> StagedStep:
        """:meth:`step` (without torch's step hooks) up to the point where no closure is left to
        evaluate: the parameters end at the step's end point and every other change waits in the
        returned :class:`StagedStep`. Used by ``LayerwiseALSALS``, which commits its parts only once
        nothing can raise any more. An exception leaves everything as it was (the parameters at the
        step's start)."""
        stage = self._stage = StagedStep()
        try:
            step = getattr(type(self).step, "__wrapped__", None)  # torch's hooks run around the caller's step
            step(self, closure) if step is not None else self.step(closure)
        finally:
            self._stage = None
        return stage

    def _on_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` (a change of the optimizer's state) now, or at the staged step's commit."""
        if self._stage is not None:
            self._stage.commits.append(action)
        else:
            action()

    def _watch_plateau(self) -> None:
        """decay_on_plateau: feed the first losses read in this step (averaged over the ranks) to the
        plateau test, in step order, and start the decay when it finds one (:meth:`begin_decay`)."""
        losses, self._read_losses = self._read_losses, []
        if self._plateau is None or not self._decay_can_begin_early(self._search_state()):
            return
        if any([self._plateau.update(value) for value in losses]):  # every loss recorded, in order
            self.begin_decay()

    # ------------------------------------------------------------------------------------------
    # The anytime average of the iterates (no total_steps)
    # ------------------------------------------------------------------------------------------

    def _averaged_pairs(self, create: bool) -> Dict[Tuple[torch.device, torch.dtype], Tuple[List[Tensor], List[Tensor]]]:
        """The parameters (local shards) and their averages, by device and dtype. ``create``: start
        the average of a parameter that has none at its current value, once it has been trained
        (it has Adam's moments): a parameter that never had a gradient holds no state, as with torch
        optimizers, and its value is its own average until then."""
        pairs: Dict[Tuple[torch.device, torch.dtype], Tuple[List[Tensor], List[Tensor]]] = defaultdict(lambda: ([], []))
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "average" not in state:
                    if not create or "exp_avg" not in state:
                        continue
                    state["average"] = p.detach().clone(memory_format=torch.preserve_format)
                param, average = cast(Tensor, local_tensor(p.detach())), cast(Tensor, local_tensor(state["average"]))
                params, averages = pairs[(param.device, param.dtype)]
                params.append(param)
                averages.append(average)
        return pairs

    def _sample_average(self, state: SearchState) -> SearchState:
        """Fold the parameters after step ``state.steps`` into their average, when a sample is due."""
        gamma = averaging.exponent(self.config.anneal_fraction)
        if not averaging.is_due(state.steps, state.average_step, gamma):
            return state
        weight, total = averaging.sample_weight(state.steps, state.average_step, state.average_weight, gamma)
        with torch.no_grad():
            for params, averages in self._averaged_pairs(create=True).values():
                if self._use_foreach(params):
                    torch._foreach_lerp_(averages, params, weight)
                else:
                    for average, param in zip(averages, params):
                        average.lerp_(param, weight)
        return replace(state, average_weight=total, average_step=state.steps)

    def _swap_average(self) -> None:
        with torch.no_grad():
            for params, averages in self._averaged_pairs(create=False).values():
                for param, average in zip(params, averages):
                    iterate = param.clone()
                    param.copy_(average)
                    average.copy_(iterate)

    def eval(self) -> None:
        """Put the average of the iterates into the parameters, for evaluation (as schedule-free
        optimizers do; the Hugging Face ``Trainer`` calls this before evaluating). Does nothing
        without an average (``total_steps`` given, or ``average=False``) or when already done.
        Call :meth:`train` before the next :meth:`step`. BatchNorm statistics are those of the
        iterates."""
        state = self._search_state()
        if state.averaged_in or state.average_step == 0:
            return
        self._swap_average()
        self._publish(replace(state, averaged_in=True))

    def train(self) -> None:
        """Put the iterates back into the parameters after :meth:`eval` (otherwise does nothing)."""
        state = self._search_state()
        if not state.averaged_in:
            return
        self._swap_average()
        self._publish(replace(state, averaged_in=False))

    def _checked_closure(self, closure: Optional[Callable[[], Any]], grad_scaler: Optional[Any]) -> Callable[[], Any]:
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
        return closure

    def _take_step(
        self,
        evaluator: ClosureEvaluator,
        loss: Tensor,
        step_plan: Plan,
        state: SearchState,
        grad_scaler: Optional[Any],
    ) -> Outcome:
        """Everything after the first evaluation: read, skip or no-op, amortized step or search. It changes
        parameters and optimizer state only when it returns (an exception leaves them as they were)."""

        def outcome(kind: StepKind, **extra: Any) -> Outcome:
            return Outcome(kind, loss0, evaluator.evaluations, evaluator.backward_passes, **extra)

        scaler_found_inf = self._unscale(grad_scaler)
        # trials that run backward replace p.grad: a searched step keeps copies; so does a staged
        # amortized step, whose update reruns at the commit, after other optimizers' trials
        keep_grads = step_plan.search or self._stage is not None
        buckets = self._gradient_buckets(clone_grads=keep_grads and evaluator.trials_run_backward)
        found_inf = scaler_found_inf if scaler_found_inf is not None else self._gradient_check(buckets)
        if not step_plan.search and all(b.fused for b in buckets):
            return self._amortized_on_device(evaluator, loss, found_inf, buckets, step_plan)
        counts = self._device_counts
        pending, self._pending_losses = self._pending_losses, []
        loss0, *read = self._read(
            [loss, *pending, found_inf], num_means=1 + len(pending), local=counts.tensors() if counts is not None else ()
        )
        found_inf_value, earlier = read[len(pending)], read[len(pending) + 1:]
        if self._plateau is not None:  # in step order: the device-side steps' losses, then this one
            self._read_losses = [*read[: len(pending)], loss0]
        if counts is not None:  # the amortized steps since the last read: into the carried state
            self._device_counts = None
            self._publish(_DeviceCounts.fold(self._search_state(), earlier, latest=False))
        if not math.isfinite(loss0) or found_inf_value != 0.0:  # NaN != 0 too
            return outcome(StepKind.SKIPPED_NONFINITE)
        if not buckets:
            return outcome(StepKind.NO_GRADIENTS)
        anneal = self._anneal_factor(step_plan.step)
        if not step_plan.search:
            self._amortized_update(buckets, step_plan.step_size, anneal)
            return outcome(StepKind.AMORTIZED, anneal=anneal)
        return self._search(evaluator, loss0, buckets, step_plan, state, anneal)

    def _amortized_on_device(
        self,
        evaluator: ClosureEvaluator,
        loss: Tensor,
        found_inf: Tensor,
        buckets: List[_Bucket],
        step_plan: Plan,
    ) -> Outcome:
        """An amortized step with no host synchronisation: whether the loss and the gradients are
        finite is decided on the device, and torch's fused AdamW kernel skips the whole update (weights
        and moments) when they are not. The step count advances either way (a skipped step's bias
        correction is then one step further along: below 1% after the warm-up searches). The loss
        and the skip are kept on the device (:class:`_DeviceCounts`) until they are asked for.

        Distributed: with replicated parameters (DDP) the gradients are the same on every rank after
        DDP's all-reduce, so the skip is decided from them alone, alike on every rank, with no
        collective (a non-finite loss makes non-finite gradients). With sharded parameters (FSDP2)
        each rank checks its own shards, and the flag is all-reduced (MAX) on the device, unread.
        """
        flag = found_inf != 0  # NaN != 0 too
        if not self.reducer.active:
            flag = flag | ~torch.isfinite(loss.to(found_inf.device))
        skip = flag.to(torch.float32)
        if self.reducer.active and self._slope_weights:
            torch.distributed.all_reduce(skip, op=torch.distributed.ReduceOp.MAX, group=self.reducer.process_group)
        nan = math.nan
        anneal = self._anneal_factor(step_plan.step)
        on_device = {b.device: skip.to(b.device) for b in buckets}

        def update(targets: List[_Bucket]) -> None:
            for b in targets:
                committed, _ = self._commit_step(b, step_plan.step_size, anneal)
                kernels.apply_step_fused(
                    b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, **b.hyper,  # type: ignore[arg-type]
                    step_size=committed, weight_decay=float(b.group["weight_decay"]), skip=on_device[b.device],
                )

        def commit() -> None:
            counts = self._device_counts or _DeviceCounts(
                torch.zeros((), dtype=torch.float64, device=skip.device), loss, skip
            )
            self._device_counts = counts.add(loss, skip)
            if self._plateau is not None:
                self._pending_losses.append(loss.detach().reshape(()))
            update(buckets)
            for b in buckets:
                self._record_state(b)

        self._amortized(buckets, update, commit)
        if not buckets:
            return Outcome(StepKind.NO_GRADIENTS, nan, evaluator.evaluations, evaluator.backward_passes)
        return Outcome(StepKind.AMORTIZED, nan, evaluator.evaluations, evaluator.backward_passes, anneal=anneal)

    def _amortized(self, buckets: List[_Bucket], update: Callable[[List[_Bucket]], None],
                   commit: Callable[[], None]) -> None:
        """An amortized step: ``commit()`` (``update(buckets)`` in place, and the state recorded) now;
        or, when the step is staged, the parameters moved to the step's end by ``update`` on copies of
        the moments (one bucket at a time, so at most one bucket's copies are alive, as a searched
        step's trial copy and direction are), and ``commit`` when the staged step commits (from the
        step's start again: the same kernel on the same values, the same end point and moments)."""
        if self._stage is None:
            commit()
            return
        for b in buckets:
            copies = [(_clone(m), _clone(v)) for m, v in zip(b.exp_avgs, b.exp_avg_sqs)]
            update([replace(b, exp_avgs=[m for m, _ in copies], exp_avg_sqs=[v for _, v in copies])])
            del copies
        self._stage.commits.append(commit)

    def _search(
        self,
        evaluator: ClosureEvaluator,
        loss0: float,
        buckets: List[_Bucket],
        step_plan: Plan,
        state: SearchState,
        anneal: float,
    ) -> Outcome:
        """The line search inside a trial point, and the commit."""

        def outcome(kind: StepKind, **extra: Any) -> Outcome:
            return Outcome(kind, loss0, evaluator.evaluations, evaluator.backward_passes, anneal=anneal, **extra)

        slope_tensor = self._directions(buckets)
        config = for_search(self.config.search, state, step_plan.step)
        with TrialPoint(buckets) as point:
            fd_slope = None
            if self.config.slope == "finite_difference":
                eps = self.config.finite_difference_eps
                point.move_to(eps)
                (loss_fd,) = self._read([evaluator.trial()], num_means=1)
                fd_slope = (loss0 - loss_fd) / eps
            point.move_to(step_plan.step_size)
            # Replicated parameters: the slope is the same on every data-parallel rank (the gradients
            # are averaged), and averaging keeps it so. Sharded parameters: each rank holds a weighted
            # partial sum (see _directions), and the sum is the slope. Either way every rank reads the
            # same reduced value, in the same collective as the trial loss (‖d‖², when measured, too).
            values = [evaluator.trial(), slope_tensor]
            if step_plan.measure_direction:
                values.append(self._direction_square_norm(buckets))
            read = self._read(values, num_means=1 if self._slope_weights else len(values))
            loss1, exact_slope = read[0], read[1]
            direction_norm = math.sqrt(read[2]) if step_plan.measure_direction and read[2] >= 0.0 else math.nan
            slope = exact_slope if fd_slope is None else fd_slope
            if not math.isfinite(slope):
                point.restore()
                self._on_commit(lambda: self._store_moments(buckets))  # as a failed search: the moments advance
                return outcome(StepKind.SKIPPED_NONFINITE_SLOPE)

            def decrease_at(step_size: float) -> Optional[float]:
                point.move_to(step_size)
                (trial_loss,) = self._read([evaluator.trial()], num_means=1)
                return loss0 - trial_loss if math.isfinite(trial_loss) else None

            result = backtrack(
                loss0 - loss1 if math.isfinite(loss1) else None,
                step_plan.step_size,
                exact_slope,
                next_smoothed_slope(state, slope, config),
                state.smoothed_decrease,
                config,
                decrease_at,
            )
            # The commit: moments, step counts and parameters together (no evaluation can raise now).
            if result.status.commits:  # the accepted step size is committed along this step's direction
                redirected = [b for b in buckets if self._trials_on_previous(b)]
                for b in redirected:
                    b.directions = []  # the trial direction's memory, before this step's is formed
                    self._form_directions(b)
                if redirected:
                    point.directions_changed()
            self._on_commit(lambda: self._store_moments(buckets))
            if result.status.commits:
                point.commit(result.step_size, [self._commit_step(b, result.step_size, anneal) for b in buckets])
            else:
                point.restore()
        return outcome(StepKind.SEARCHED, slope=slope, result=result, direction_norm=direction_norm)

    # ------------------------------------------------------------------------------------------
    # Pieces of the step
    # ------------------------------------------------------------------------------------------

    def _use_foreach(self, params: List[Tensor]) -> bool:
        if self.config.foreach is not None:
            return bool(self.config.foreach)
        return all(p.device.type in ("cpu", "cuda", "xpu", "mps") for p in params)

    def _use_fused(self, params: List[Tensor]) -> bool:
        """Whether amortized steps of ``params`` take torch's fused AdamW kernel: the ``"adam"``
        direction, not the reference kernels (``foreach=False``) nor ``fused=False``, and a device
        and dtype the kernel supports."""
        config = self.config
        if config.fused is False or config.foreach is False or config.direction != "adam":
            return False
        return kernels.fused_supported(params)

    def _gradient_buckets(self, clone_grads: bool) -> List[_Bucket]:
        """The parameters with a gradient in this step, in buckets that share group, device, dtype,
        step count and slope weight. Nothing is stored: parameters seen for the first time get fresh
        zero moments that enter ``self.state`` only when the step commits.

        ``clone_grads``: keep copies of the gradients (closures whose trials run a backward pass
        replace or overwrite ``p.grad`` while the search runs)."""
        kind = self.config.direction
        sharded = bool(self._slope_weights)
        # With sharded parameters each rank contributes a weighted partial slope and the partial sums
        # are summed across the ranks; a replicated parameter then counts 1/world on every rank.
        replica_weight = 1.0 / self.reducer.world_size if sharded else 1.0
        buckets: List[_Bucket] = []
        for group in self.param_groups:
            grouped: Dict[Tuple[torch.device, torch.dtype, int, float], List[Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                saved = self.state.get(p)
                step = int(saved["step"]) + 1 if saved and "step" in saved else 1
                weight = self._slope_weights.get(id(p), replica_weight) if sharded else 1.0
                grouped[(p.device, p.dtype, step, weight)].append(p)
            for (device, _, step, weight), owners in grouped.items():
                moments = [self._moments_of(p, kind) for p in owners]
                local = local_tensor if sharded else _same
                grads = [cast(Tensor, local(p.grad)) for p in owners]
                if clone_grads:
                    grads = [g.clone() for g in grads]
                params = [cast(Tensor, local(p)) for p in owners]
                buckets.append(
                    _Bucket(
                        group=group,
                        device=device,
                        owners=owners,
                        params=params,
                        grads=grads,
                        exp_avgs=[local(m) for m, _ in moments],
                        exp_avg_sqs=[local(v) for _, v in moments],
                        moments=moments,
                        step=step,
                        weight=weight,
                        foreach=self._use_foreach(params),
                        fused=self._use_fused(params),
                    )
                )
        return buckets

    def _moments_of(self, p: Tensor, kind: str) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        saved = self.state.get(p) or {}
        exp_avg = saved.get("exp_avg")
        exp_avg_sq = saved.get("exp_avg_sq")
        if exp_avg is None and kernels.uses_first_moment(kind):
            exp_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
        if exp_avg_sq is None and kernels.uses_second_moment(kind):
            exp_avg_sq = torch.zeros_like(p, memory_format=torch.preserve_format)
        return exp_avg, exp_avg_sq

    def _store_moments(self, buckets: List[_Bucket]) -> None:
        """Update the moments in place (the same operations as the direction's temporaries, so the
        same numbers) and store them with the new step counts."""
        kind = self.config.direction
        for b in buckets:
            beta1, beta2 = b.group["betas"]
            if b.foreach:
                kernels.update_moments_foreach(b.grads, b.exp_avgs, b.exp_avg_sqs, kind=kind, beta1=beta1, beta2=beta2)  # type: ignore[arg-type]
            else:
                for g, m, v in zip(b.grads, b.exp_avgs, b.exp_avg_sqs):
                    kernels.update_moments_reference(g, m, v, kind=kind, beta1=beta1, beta2=beta2)
            self._record_state(b)

    def _record_state(self, b: _Bucket) -> None:
        for p, (exp_avg, exp_avg_sq) in zip(b.owners, b.moments):
            state = self.state[p]
            state["step"] = b.step
            if exp_avg is not None:
                state["exp_avg"] = exp_avg
            if exp_avg_sq is not None:
                state["exp_avg_sq"] = exp_avg_sq

    def _first_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    def _unscale(self, grad_scaler: Optional[Any]) -> Optional[Tensor]:
        """Unscale the gradients of an fp16 step (``scaler.unscale_``, unless done already) and
        return the scaler's inf/NaN flag as a 0-dim tensor (``None`` without a scaler, or when no
        parameter received a gradient)."""
        if grad_scaler is None or not getattr(grad_scaler, "is_enabled", lambda: True)():
            return None
        scaler_state = grad_scaler._per_optimizer_states[id(self)]
        if scaler_state["stage"].name == "READY":
            grad_scaler.unscale_(self)
        found = list(scaler_state["found_inf_per_device"].values())
        if not found:
            return None
        device = self._first_device()
        return torch.stack([f.to(device, torch.float64) for f in found]).sum()

    def _gradient_check(self, buckets: List[_Bucket]) -> Tensor:
        """A 0-dim tensor that is 0 when every gradient is finite, and positive or NaN otherwise
        (no host synchronisation: it is read back with the first loss)."""
        device = self._first_device()
        by_device: Dict[torch.device, List[Tensor]] = defaultdict(list)
        for b in buckets:
            for grad in b.grads:  # a shard's own values (sharded parameters): the reduced sum makes the check global
                if grad.numel():  # an empty tensor (or shard) has no entries to check
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

    def _form_directions(self, b: _Bucket, previous: bool = False) -> None:
        """Set ``b.directions`` (out of place: the moments do not change): this step's direction, or
        with ``previous`` the step before's (:func:`~alsals.kernels.previous_direction_reference`)."""
        kind = self.config.direction
        if previous:
            if b.foreach:
                b.directions = kernels.previous_direction_foreach(b.exp_avgs, b.exp_avg_sqs, **b.hyper)  # type: ignore[arg-type]
            else:
                b.directions = [
                    kernels.previous_direction_reference(m, v, **b.hyper)  # type: ignore[arg-type]
                    for m, v in zip(b.exp_avgs, b.exp_avg_sqs)
                ]
        elif b.foreach:
            b.directions = kernels.direction_foreach(b.grads, b.exp_avgs, b.exp_avg_sqs, kind=kind, **b.hyper)  # type: ignore[arg-type]
        else:
            b.directions = [
                kernels.direction_reference(g, m, v, kind=kind, **b.hyper)
                for g, m, v in zip(b.grads, b.exp_avgs, b.exp_avg_sqs)
            ]

    def _trials_on_previous(self, b: _Bucket) -> bool:
        """Whether the bucket's trials move along the step before's direction (``trial_direction=
        "previous"`` and the parameters have taken a step: before it there are no moments)."""
        return self.config.trial_direction == "previous" and b.step > 1

    def _directions(self, buckets: List[_Bucket]) -> Tensor:
        """Form every bucket's trial direction (:meth:`_form_directions`) and return the slope
        ``D = gᵀd`` as a 0-dim float64 tensor (not read back to the host here)."""
        slopes: List[Tensor] = []
        first_device = buckets[0].device
        for b in buckets:
            self._form_directions(b, previous=self._trials_on_previous(b))
            if b.foreach:
                bucket_slopes = [kernels.slope_foreach(b.grads, b.directions).to(first_device)]
            else:
                bucket_slopes = [kernels.slope_reference(g, d).to(first_device) for g, d in zip(b.grads, b.directions)]
            if b.weight != 1.0:
                bucket_slopes = [s * b.weight for s in bucket_slopes]
            slopes.extend(bucket_slopes)
        return torch.stack(slopes).sum()

    def _direction_square_norm(self, buckets: List[_Bucket]) -> Tensor:
        """``‖d‖²`` over every bucket's direction (formed by :meth:`_directions`) as a 0-dim float64
        tensor, each bucket weighted as its slope is (sharded parameters: a partial sum)."""
        first_device = buckets[0].device
        parts: List[Tensor] = []
        for b in buckets:
            square = kernels.slope_foreach(b.directions, b.directions).to(first_device)
            parts.append(square * b.weight if b.weight != 1.0 else square)
        return torch.stack(parts).sum()

    def _commit_step(self, b: _Bucket, step_size: float, anneal: float) -> Tuple[float, float]:
        """``(lr·a·η, 1 − lr·a·η·λ)`` of a bucket's group: its committed step and weight-decay factor."""
        committed = float(b.group["lr"]) * anneal * step_size
        return committed, 1.0 - committed * b.group["weight_decay"]

    def _amortized_update(self, buckets: List[_Bucket], step_size: float, anneal: float) -> None:
        """A step without a search: update the moments and set ``w ← w − lr·a·η·(d + λ·w)`` at once,
        with ``d`` never stored (as Adam's kernel does)."""
        kind = self.config.direction

        def update(targets: List[_Bucket]) -> None:
            for b in targets:
                committed, keep = self._commit_step(b, step_size, anneal)
                if b.foreach:
                    kernels.apply_step_foreach(
                        b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, kind=kind, **b.hyper,  # type: ignore[arg-type]
                        step_size=committed, keep=keep,
                    )
                else:
                    for p, g, m, v in zip(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs):
                        kernels.apply_step_reference(p, g, m, v, kind=kind, **b.hyper, step_size=committed, keep=keep)

        def commit() -> None:
            update(buckets)
            for b in buckets:
                self._record_state(b)

        self._amortized(buckets, update, commit)

    def _anneal_factor(self, step: int) -> float:
        """The built-in anneal factor ``a(t)`` of the committed step (1 without ``total_steps``)."""
        total = self.config.total_steps
        if total is not None and step > total and not self._warned_past_total:
            self._warned_past_total = True
            warnings.warn(
                f"{type(self).__name__} has run past total_steps={total}: the committed step "
                "stays at the anneal's final (small) value. Raise total_steps to train longer.",
                RuntimeWarning,
                stacklevel=4,
            )
        return self.config.anneal_factor(step, self._search_state().decay_start)

    def begin_decay(self) -> None:
        """End the anneal's stable phase now (``anneal="wsd"`` with ``total_steps``): from the next
        step the committed step decays linearly from 1 to ``1/(T − s + 1)`` at step ``T``, ``s``
        being the steps taken so far, instead of over the last ``anneal_fraction`` of the run
        (:mod:`alsals.anneal`). Only an earlier start counts: once started, or past the anneal's own
        start, nothing changes. Saved in ``state_dict()``. Without ``total_steps`` it does nothing."""
        state = self._settle()  # the steps taken, amortized ones included
        if self._decay_can_begin_early(state):
            self._publish(replace(state, decay_start=max(1, state.steps)))

    def _decay_can_begin_early(self, state: SearchState) -> bool:
        """Whether :meth:`begin_decay` would start the decay after ``state.steps`` steps: ``"wsd"``
        with ``total_steps``, not started early yet, and before the anneal's own start."""
        total = self.config.total_steps
        if total is None or self.config.anneal != "wsd" or state.decay_start > 0:
            return False
        return state.steps < wsd_decay_start(total, self.config.anneal_fraction)

    def _count_idle_step(self) -> None:
        """Count a step of the run in which this optimizer did not step (``LayerwiseALSALS``: a part
        without gradients, or a step skipped as a whole), so that its anneal follows the run's
        step: ``steps`` advances, nothing else (no counter, no move, no moment)."""
        state = self._settle()
        self._publish(replace(state, steps=state.steps + 1))

    def _read(self, values: List[Tensor], num_means: int, local: Iterable[Tensor] = ()) -> List[float]:
        """Reduce ``values`` across ranks (when distributed) and read them back, with this rank's
        ``local`` values after them, unreduced: the one host synchronisation of an evaluation."""
        device = values[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        packed = self.reducer.reduce(torch.stack([v.reshape(()).to(device=device, dtype=dtype) for v in values]), num_means)
        extra = [v.reshape(()).to(device=device, dtype=dtype) for v in local]
        if extra:
            packed = torch.cat([packed, torch.stack(extra)])
        return packed.tolist()


__all__ = ["ALSALS", "COUNTER_KEYS", "GROUP_KEYS", "StagedStep"]
