"""Per-layer step sizes: one :class:`alsals.ALSALS` per top-level module, one backward per step.

One step size for a whole model is held at the boundary of its most sensitive layer: on a GRU text
classifier the linear head's part of Adam's direction behaves as the linear model says at step
sizes many times the one the word embedding and the recurrent cell allow (docs/benchmarks.md,
"Sixth round"). The authors' layer-wise line search (Kenneweg et al., arXiv 2403.18506) gives each
part of the network its own step size; :class:`LayerwiseALSALS` does so with ALSALS's own search.

**Parts.** The parameters are split by the top-level module that holds them (the first component of
their qualified name in ``model.named_parameters()``: ``embed``, ``gru``, ``head``; ``0``, ``3``,
``6`` in an ``nn.Sequential``); a parameter registered on the model itself is a part of its own.
The model is read inside ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile``, and
below the levels that only wrap (:func:`wrapper_prefix`: every trained parameter below them in one
child that is not a layer; frozen modules and tied aliases do not count, and a parameter held by
the level itself is a part of its own): a LightningModule that keeps its network as
``self.model`` has the parts ``model.0``, ``model.3``; a Hugging Face GPT-2 ``transformer.wte``,
``transformer.wpe``, ``transformer.h``, ``transformer.ln_f`` (before the tenth round both were one
part, plain ALSALS; ``part_of=top_level_module`` keeps that rule).
``part_of="blocks"`` also splits the elements of a ``ModuleList``/``Sequential`` inside a top-level
module (:func:`repeated_blocks`), and a function maps a qualified name to a part (a model whose
parameters are one part is plain ALSALS: that warns).
Each part has its own :class:`alsals.ALSALS` with the same settings (step size, anneal, average of
the iterates, counters and resume state are that part's own).

**A step.** With ``w0`` the weights before the step:

1. the closure is evaluated once at ``w0`` with gradients (one forward, one backward);
2. for each part ``k``: its optimizer takes its step from that gradient (its own smoothed Armijo
   search along its own part of Adam's direction, only its parameters moving, every trial with the
   first evaluation's random draws), the end ``e_k`` is remembered and the part is put back at ``w0``;
3. the parts move together (Jacobi: no part's search sees another's step).

A part with no gradient in a step (frozen, or a branch the loss did not use) stays and is not
stepped. A step whose first loss (averaged over the ranks) or gradient is not finite is skipped as
a whole, counted once in ``skipped_steps``.

**Exceptions.** Each part's step is staged (:meth:`alsals.ALSALS._staged_step`): run up to its last
evaluation, its end point kept, its state changes held in a :class:`alsals.optimizer.StagedStep`.
They are committed only after the combined test, when no closure is left to evaluate, so an
exception in any evaluation (a part's trial, the combined test) leaves the weights at ``w0`` and
every part's state, and this optimizer's scale and counters, as they were. An amortized part's
update is computed on copies of its moments for its end point and rerun in place at the commit.

**The combined step** (``combined_test=True``, the default). Steps acceptable one part at a time can
add up to one that is not (each layer's step changes what the next one's does), so their sum is
tested along its own line. With ``s_k = e_k − w0`` and ``g_k`` part ``k``'s gradient at ``w0``,
the linear model predicts the sum to lower the loss by ``L = −Σ_k g_kᵀs_k``. The step
``w0 + x·Σ_k s_k`` is kept when it passes Armijo's test on that line, smoothed as ALSALS smooths its
own (the same ``β_s``, so that one batch's noise does not set the scale): with
``Δ(x) = f(w0) − f(w0 + x·Σ_k s_k)``, the carried averages ``h ← β_s·h + (1 − β_s)·Δ(x)`` and
``p ← β_s·p + (1 − β_s)·x·L`` must satisfy ``h ≥ c·p`` (both updated only when a trial passes).
The scale ``x`` is carried from step to step: each step first tries ``min(1, x/β_b)`` (the scale
only undoes interaction, it never enlarges what the parts found) and backtracks by ``β_b`` on
failure, for at most 31 trials; when all fail, or when ``L`` is not positive, the weights stay at
``w0`` (the parts' moments still advance, as after a failed search). The parts' step sizes are never
cut by ``x``, so cuts cannot compound. This costs one forward per step (and one per backtrack).
With ``amortized_combined_test=True`` the summed step is tested only in steps where some part
searches; in the others the carried scale is applied untested (``combined_reused`` counts them), as
ALSALS's amortized steps reuse the step size its last search accepted: the scale is the step size of
the summed direction, searched when the parts search and reused between. Measured on the
benchmark's dev split it loses most of the gain (docs/benchmarks.md, "Eighth round"): the layers'
interaction changes from step to step, so it is off by default.
Not told the run's length, each part's average of the iterates follows the step applied: where a
part sampled its average at this step, the sample is moved by ``(x − 1)·s_k``, weighted by its share.

**The decay** (``total_steps`` given, ``decay_on_plateau=True``, the default). Each part anneals its
committed step as ALSALS does (``"wsd"``: full step, then a linear decay to about zero at ``T``), but
the decay starts as soon as the batch loss has stopped falling (:class:`alsals.anneal.PlateauDetector`:
the last tenth of the run's first losses not below the tenth before by two standard errors), and
at the latest at ``T − ⌈0.2·T⌉`` as before. Why: each part's search holds its step at the largest
size its batch accepts along its own direction, which, in a part of few parameters fitting a small
noisy batch, is far larger than the step that lowers the loss over the data; the loss then stops
at the noise floor of that step early in the run, and the rest at full step buys nothing. On the
benchmark's tabular regression the loss of the per-layer optimizer is such a floor (at batch 256
instead of 32 it ties the tuned AdamW: ``scripts/batch_noise.py``), and a longer decay to zero
finishes lower (docs/benchmarks.md, "Ninth round"). Where the loss still falls (a GRU, the language
models) the decay starts where it did.

With ``decay_on_plateau=False`` the numbers are those of the benchmark's prototype
(``alsals_bench.layerwise``), which pays a backward pass per part instead of sharing one; a test
checks that both give the same weights.

Limits: no fp16 ``GradScaler`` (use bf16 or float32), and no sharded (FSDP2) parameters; with DDP the
combined trial's loss is averaged over the ranks like every trial of ALSALS.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .anneal import wsd_decay_start
from .closure import ClosureEvaluator, RandomState, check_loss
from .optimizer import ALSALS, StagedStep
from .search import plan, smooth

#: the most trials of the combined step in one step (as ALSALS's own search)
MAX_COMBINED_TRIALS = 31


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model inside the wrappers that add a name level (``DistributedDataParallel`` and
    ``DataParallel``: ``module``; ``torch.compile``: ``_orig_mod``), so its parts are its own top-level
    modules, not the wrapper's one child."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def top_level_module(name: str) -> str:
    """A parameter's part before the tenth round: the first component of its qualified name."""
    return name.split(".")[0]


def _is_trained(param: Tensor, trained: Optional[Set[int]]) -> bool:
    """Whether ``param`` is trained: it requires gradients and, when ``trained`` is given, is among
    those (the ids of the parameters the optimizer was given)."""
    return param.requires_grad and (trained is None or id(param) in trained)


def _trained(module: nn.Module, trained: Optional[Set[int]]) -> Set[int]:
    """The ids of the trained parameters under ``module``."""
    return {id(p) for p in module.parameters() if _is_trained(p, trained)}


def _is_layer(module: nn.Module, trained: Optional[Set[int]]) -> bool:
    """A module that is a part as a whole: it holds trained parameters of its own, or its parameters
    are parametrized (``torch.nn.utils.parametrize``: they sit in its ``parametrizations``)."""
    own = any(_is_trained(p, trained) for p in module.parameters(recurse=False))
    return own or parametrize.is_parametrized(module)


def wrapper_prefix(model: nn.Module, params: Optional[Iterable[Tensor]] = None) -> str:
    """The qualified-name prefix of the levels of ``model`` that only wrap (``""`` when none).

    A level only wraps when every parameter it trains below it sits in one child, and that child is
    not a layer (it holds no trained parameter of its own, and none of its parameters is
    parametrized): a LightningModule's ``model.``, a Hugging Face ``GPT2LMHeadModel``'s
    ``transformer.``. Such a level splits nothing, as ``DistributedDataParallel``'s ``module``
    splits nothing, so the parts are found below it; a parameter held by the level itself (a
    temperature beside ``self.net``) is a part of its own either way.

    What counts: the parameters being trained, those that require gradients and, when ``params`` is
    given, are among them, so a frozen copy (an EMA model, a teacher) beside the network does not
    stop the descent. A child all of whose trained parameters are also another child's (a head tied
    to the embedding: GPT-2's ``lm_head``) is an alias, not a second holder, whatever the order in
    which the two were defined."""
    module = unwrapped(model)
    trained = {id(p) for p in params} if params is not None else None
    if trained is not None and not _trained(module, trained):
        trained = None  # nothing of what was passed trains yet: judge by every parameter
    prefix = ""
    while True:
        holders = [(name, child, _trained(child, trained)) for name, child in module.named_children()]
        holders = [(name, child, ids) for name, child, ids in holders if ids]
        independent = [
            (name, child) for i, (name, child, ids) in enumerate(holders)
            if not any(ids < other or (ids == other and j < i) for j, (_, _, other) in enumerate(holders) if j != i)
        ]
        if len(independent) != 1 or _is_layer(independent[0][1], trained):
            return prefix
        name, module = independent[0]
        prefix += name + "."


def top_level_parts(model: nn.Module, params: Optional[Iterable[Tensor]] = None) -> Callable[[str], str]:
    """The part rule ``part_of="top"`` (the default): the module right below the levels that only
    wrap (:func:`wrapper_prefix`) that holds the parameter, by its qualified name (``embed``, ``head``;
    ``0``, ``3`` in an ``nn.Sequential``; ``model.0`` in a LightningModule that keeps an
    ``nn.Sequential`` as ``self.model``; ``transformer.wte``, ``transformer.h`` in a Hugging Face
    GPT-2); a parameter outside those levels (held by a wrapping level itself, or by a frozen module
    beside the network) is in the part of its first name component. A parameter named twice (tied)
    takes its name below the wrapping levels (:func:`split_by_top_level_module`)."""
    prefix = wrapper_prefix(model, params)

    def part_of(name: str) -> str:
        if not name.startswith(prefix):
            return top_level_module(name)
        return prefix + top_level_module(name[len(prefix):])

    part_of.preferred_prefix = prefix  # type: ignore[attr-defined]
    return part_of


def repeated_blocks(model: nn.Module, below_wrappers: bool = True,
                    params: Optional[Iterable[Tensor]] = None) -> Callable[[str], str]:
    """The part rule ``part_of="blocks"``: a parameter's part of :func:`top_level_parts`, except
    that an element of an ``nn.ModuleList`` or ``nn.Sequential`` inside it (a transformer's or
    ResNet's repeated block: ``blocks.0``, ``transformer.h.3``) is a part of its own. A model that is
    itself an ``nn.Sequential`` keeps its top-level layers (``0``, ``3``) as parts.
    ``below_wrappers=False``: the rule before the tenth round, whose other parts are the first
    components of the names (:func:`top_level_module`)."""
    unwrapped_model = unwrapped(model)
    containers = {name for name, module in unwrapped_model.named_modules()
                  if name and isinstance(module, (nn.ModuleList, nn.Sequential))
                  and not isinstance(module, parametrize.ParametrizationList)}
    outer = top_level_parts(unwrapped_model, params) if below_wrappers else top_level_module

    def part_of(name: str) -> str:
        components = name.split(".")
        for i in range(1, len(components) - 1):
            if ".".join(components[:i]) in containers:
                return ".".join(components[: i + 1])
        return outer(name)

    if below_wrappers:
        part_of.preferred_prefix = outer.preferred_prefix  # type: ignore[attr-defined]
    return part_of


def split_by_top_level_module(model: nn.Module, groups: Sequence[Dict[str, Any]],
                              part_of: Callable[[str], str] = top_level_module) -> Dict[str, List[Dict[str, Any]]]:
    """The parameter groups ``groups`` split by part: ``part_of`` of each parameter's qualified name in
    the (unwrapped) ``model``, by default the top-level module that holds it. Part name -> its groups
    (each group's settings kept, empty groups dropped), in the order the parts first appear. Raises
    ``ValueError`` for a parameter that is not ``model``'s."""
    names: Dict[int, str] = {}
    preferred = getattr(part_of, "preferred_prefix", None)
    for name, p in unwrapped(model).named_parameters(remove_duplicate=False):
        # a parameter named twice (tied) takes its first name, or, for a rule that says so, its first
        # name below the levels that only wrap (so the part does not depend on the order of definition)
        if id(p) not in names or (preferred and not names[id(p)].startswith(preferred) and name.startswith(preferred)):
            names[id(p)] = name
    part_names = {key: part_of(name) for key, name in names.items()}
    parts: Dict[str, List[Dict[str, Any]]] = {}
    for group in groups:
        by_part: Dict[str, List[Tensor]] = {}
        for p in group["params"]:
            if id(p) not in part_names:
                raise ValueError(
                    f"LayerwiseALSALS: a parameter of shape {tuple(p.shape)} is not one of the model's "
                    "(model.named_parameters()); pass the model whose parameters you optimize."
                )
            by_part.setdefault(str(part_names[id(p)]), []).append(p)
        for part, params in by_part.items():
            parts.setdefault(part, []).append({**group, "params": params})
    return parts


def _tensors(params: Any) -> List[Tensor]:
    """A group's parameters as tensors: a tensor, tensors, or ``(name, tensor)`` pairs."""
    if isinstance(params, Tensor):
        return [params]
    out = []
    for item in params:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            item = item[1]  # model.named_parameters()
        if not isinstance(item, Tensor):
            raise TypeError(f"LayerwiseALSALS: a parameter must be a tensor, got {type(item).__name__}")
        out.append(item)
    return out


def _as_groups(model: nn.Module, params: Optional[Iterable[Any]]) -> List[Dict[str, Any]]:
    """``params`` as parameter groups: ``None`` (every parameter of ``model``), tensors, ``(name,
    tensor)`` pairs, or dicts with ``"params"`` and per-group settings."""
    if params is None:
        return [{"params": list(model.parameters())}]
    if isinstance(params, Tensor):
        raise TypeError("LayerwiseALSALS: params should be an iterable of tensors or of parameter groups, "
                        "not one tensor (e.g. model.parameters())")
    items = list(params)
    if not items:
        raise ValueError("LayerwiseALSALS got an empty parameter list")
    if all(isinstance(item, dict) for item in items):
        return [{**group, "params": _tensors(group["params"])} for group in items]
    if any(isinstance(item, dict) for item in items):
        raise TypeError("LayerwiseALSALS: params must be all tensors or all parameter-group dicts, not a mix")
    return [{"params": _tensors(items)}]


class _FirstEvaluationGiven:
    """The closure a part's optimizer sees: its first call hands back the step's shared first
    evaluation (the loss, and the part's gradients put into ``p.grad``) without running the model;
    later calls (the part's trials) run the user's closure."""

    def __init__(self, closure: Callable[[], Any], loss: Tensor, grads: Dict[Tensor, Tensor],
                 model: nn.Module, forward_only_trials: bool) -> None:
        self._closure = closure
        self._loss = loss
        self._grads = grads
        self._given = False
        #: the part's trial evaluations (calls after the first)
        self.trials = 0
        #: the trials' buffer protection watches the whole model (the first call runs no module)
        self.trial_modules = model
        self.forward_only_trials = forward_only_trials

    def __call__(self) -> Any:
        if not self._given:
            self._given = True
            for p, g in self._grads.items():
                p.grad = g.clone()
            return self._loss
        self.trials += 1
        return self._closure()


class PartsState(Mapping):
    """``LayerwiseALSALS.state``: the parts' per-parameter state in one read-only mapping. A missing
    parameter reads as ``{}`` (a new dict, not stored), as torch's ``defaultdict(dict)`` does;
    assigning or deleting an entry raises a ``TypeError`` (the state is the parts'; restore it with
    ``load_state_dict``)."""

    def __init__(self, entries: Dict[Tensor, Dict[str, Any]]) -> None:
        self._entries = entries

    def __getitem__(self, param: Tensor) -> Dict[str, Any]:
        return self._entries.get(param, {})

    def __contains__(self, param: object) -> bool:
        return param in self._entries

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __setitem__(self, param: Tensor, value: Any) -> None:
        raise TypeError("LayerwiseALSALS.state is read only: it is the parts' state (opt.parts[name].state); "
                        "restore a saved state with load_state_dict")

    def __delitem__(self, param: Tensor) -> None:
        self.__setitem__(param, None)

    def __repr__(self) -> str:
        return f"PartsState({len(self)} parameters)"


class LayerwiseALSALS(torch.optim.Optimizer):
    """One :class:`alsals.ALSALS` per top-level module of ``model``, stepping together (module
    docstring: the parts, one shared backward, the combined step's test).

    It is a ``torch.optim.Optimizer``, so frameworks that require one accept it (Lightning's
    ``configure_optimizers``, the Hugging Face ``Trainer``, ``accelerate``, torch's LR schedulers).
    Its ``param_groups`` are the parts' own group dicts (the same objects), so a scheduler that sets
    a group's ``lr`` multiplier sets that part's; ``state`` is the parts' state, read only; groups
    cannot be added after construction (build a new optimizer).

    Args:
        model: the model; its top-level modules define the parts.
        params: what to optimize: tensors or parameter groups (dicts with per-group settings, e.g.
            ``weight_decay``), all of them ``model``'s; ``None``: every parameter of ``model``.
        combined_test: test the parts' summed step on its own line with a carried scale (default);
            ``False``: apply the parts' steps as they are.
        amortized_combined_test: test the summed step only in steps where a part searches, and
            reuse the carried scale in the others (fewer forwards; off by default).
        decay_on_plateau: with ``total_steps`` and the ``"wsd"`` anneal (default), start the decay
            as soon as the batch loss has stopped falling (:class:`alsals.anneal.PlateauDetector`; at
            the latest where the anneal starts it), through every part's
            :meth:`alsals.ALSALS.begin_decay` (module docstring, "The decay"). ``False``: the decay
            over the anneal's last ``anneal_fraction`` of the run, as ``ALSALS`` does.
        plateau_noise: the plateau test's measure of the noise: ``"residual"`` (default; the last
            window's residuals around its trend) or ``"spread"`` (its first version, kept for the
            benchmark's record: the windows' raw spread, which a fast early fall inflates).
        part_of: ``"top"`` (default: a parameter's top-level module below the levels that only wrap:
            :func:`top_level_parts`), ``"blocks"`` (also each element
            of a ``ModuleList``/``Sequential`` inside one: :func:`repeated_blocks`), or the part of a
            parameter from its qualified name in ``model.named_parameters()``; e.g.
            ``lambda name: ".".join(name.split(".")[:3])`` gives each block of a Hugging Face
            transformer (``transformer.h.0``) its own part. A single part warns: it is plain ALSALS.
        **kwargs: settings of every part's :class:`alsals.ALSALS` (``total_steps``, ``preset``, ...).

    Use it like ALSALS: ``opt.step(closure)`` with a closure that returns the batch loss, ``eval()``
    and ``train()`` around evaluation when it keeps averages of the iterates (no ``total_steps``),
    ``state_dict()`` / ``load_state_dict()`` to resume.
    """

    #: torch's GradScaler then passes itself as ``grad_scaler=`` to :meth:`step`, which says what to
    #: do instead (without it, ``scaler.step(opt, closure)`` would unscale gradients the closure has
    #: not made yet and step on scaled ones)
    _step_supports_amp_scaling = True

    def __init__(self, model: nn.Module, params: Optional[Iterable[Any]] = None, *, combined_test: bool = True,
                 part_of: Union[None, str, Callable[[str], str]] = None, amortized_combined_test: bool = False,
                 decay_on_plateau: bool = True, plateau_noise: str = "residual", **kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"LayerwiseALSALS needs the model (an nn.Module) first, got {type(model).__name__}")
        self.model = model
        self.combined_test = bool(combined_test)
        self.amortized_combined_test = bool(amortized_combined_test)
        groups = _as_groups(model, params)
        given = [p for group in groups for p in group["params"]]
        if part_of is None or part_of == "top":
            rule: Callable[[str], str] = top_level_parts(model, given)
        elif part_of == "blocks":
            rule = repeated_blocks(model, params=given)
        elif callable(part_of):
            rule = part_of
        else:
            raise ValueError(f"LayerwiseALSALS: part_of must be 'top', 'blocks' or a function of a parameter's "
                             f"name, got {part_of!r}")
        split = split_by_top_level_module(model, groups, rule)
        # the parts do not watch for a plateau themselves: this optimizer does, on the model's loss
        self.parts: Dict[str, ALSALS] = {name: ALSALS(groups, **kwargs, decay_on_plateau=False)
                                         for name, groups in split.items()}
        if not self.parts:
            raise ValueError("LayerwiseALSALS: the model has no parameters to optimize")
        if len(self.parts) == 1:
            warnings.warn(
                f"LayerwiseALSALS found one part ({next(iter(self.parts))!r}): it steps as ALSALS does. Its parts "
                "are the model's top-level modules (below the levels that only wrap); to split deeper pass "
                "part_of='blocks' (each element of a ModuleList/Sequential inside a top-level module: a "
                "transformer's blocks) or a function of the parameter's qualified name (with ALSALSTrainer: "
                "alsals_kwargs={'part_of': 'blocks'}).",
                UserWarning, stacklevel=2,
            )
        self.config = next(iter(self.parts.values())).config
        #: the plateau test that starts the anneal's decay early (decay_on_plateau), and the step after
        #: which it started (0: not yet)
        self.decay_on_plateau = bool(decay_on_plateau)
        total = self.config.total_steps
        self._plateau = self.config.plateau_test(self.decay_on_plateau, plateau_noise)
        self.decay_start = 0
        #: where the anneal's own decay starts (the plateau test runs only before it)
        self._fixed_decay_start = wsd_decay_start(total, self.config.anneal_fraction) if total is not None else 0
        # torch.optim.Optimizer's bookkeeping (hooks, defaults) over the parts' own group dicts, the
        # same objects: a scheduler's lr reaches the part. Optimizer.__init__ assigns an empty state,
        # which the read-only ``state`` property accepts; the parts keep the real one.
        self._building = True
        super().__init__([g for opt in self.parts.values() for g in opt.param_groups],
                         dict(next(iter(self.parts.values())).defaults))
        self._building = False
        if any(opt._slope_weights for opt in self.parts.values()):
            raise ValueError("LayerwiseALSALS does not support sharded (FSDP2) parameters; use ALSALS there")
        #: the combined step's carried scale, and the averages its test compares
        self.scale = 1.0
        self.smoothed_decrease = 0.0
        self.smoothed_prediction = 0.0
        #: combined trials evaluated, those that failed (a backtrack each), and combined steps that
        #: reused the carried scale untested (amortized_combined_test)
        self.combined_trials = 0
        self.combined_cuts = 0
        self.combined_reused = 0
        #: steps taken, the model's forward and backward passes, steps skipped as a whole (non-finite)
        self._steps = 0
        self._forwards = 0
        self._backward_passes = 0
        self._skipped_steps = 0
        #: the first evaluation's loss of the last step (averaged over the ranks)
        self._last_loss = math.nan

    # -- what a user reads ----------------------------------------------------------------------

    # ``param_groups`` is torch.optim.Optimizer's list, holding every part's group dicts in part order.

    @property  # type: ignore[override]
    def state(self) -> "PartsState":
        """Every part's per-parameter state (Adam's moments, the average) in one read-only mapping
        (:class:`PartsState`): a parameter with no state yet reads as ``{}``, as with a torch
        optimizer; the entries are the parts' own dicts (a tensor moved in them, as Lightning moves
        state to a device, is moved in the part), and assigning an entry raises."""
        return PartsState({p: st for opt in self.parts.values() for p, st in opt.state.items()})

    @state.setter
    def state(self, value: Any) -> None:
        # torch.optim.Optimizer.__init__ assigns an empty mapping; the parts hold the state
        if value:
            raise AttributeError("LayerwiseALSALS.state is read only: it is the parts' state; use load_state_dict")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if not getattr(self, "_building", False):
            raise ValueError("LayerwiseALSALS cannot add a parameter group after construction (its parts are "
                             "fixed by the model); build a new LayerwiseALSALS with every group")
        super().add_param_group(param_group)

    def __getstate__(self) -> Dict[str, Any]:
        # every attribute (the parts, the model, the combined step's state), not torch.optim.Optimizer's
        # three; as torch does, without the hooks and without an LR scheduler's wrapper of ``step``
        # (an instance attribute bound to this object: a copy would step the original)
        return {key: value for key, value in self.__dict__.items()
                if key != "step" and not (key.startswith("_optimizer_") and key.endswith("_hooks"))}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        for key in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                    "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                    "_optimizer_load_state_dict_post_hooks"):
            self.__dict__.setdefault(key, OrderedDict())
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(parts={list(self.parts)}, combined_test={self.combined_test})"

    @property
    def search_state(self) -> Dict[str, Any]:
        """The carried state of the step (copies): the last step's first loss (``last_loss``), the step
        after which the decay began early (``decay_start``, 0: not early), the combined step's scale
        and averages, and each part's :attr:`alsals.ALSALS.search_state`."""
        return {"last_loss": self._last_loss, "decay_start": self.decay_start, "scale": self.scale,
                "smoothed_decrease": self.smoothed_decrease,
                "smoothed_prediction": self.smoothed_prediction,
                "parts": {name: opt.search_state for name, opt in self.parts.items()}}

    @property
    def step_sizes(self) -> Dict[str, float]:
        """Each part's carried step size."""
        return {name: opt.step_size for name, opt in self.parts.items()}

    @property
    def step_size(self) -> float:
        """The geometric mean of the step sizes of the parts that have searched (all parts before any
        has: a frozen part keeps its initial step size, which says nothing of the training), times
        the combined step's scale."""
        searched = [opt.step_size for opt in self.parts.values() if opt._search_state().searches > 0]
        sizes = searched or list(self.step_sizes.values())
        if not all(s > 0 for s in sizes):
            return math.nan
        scale = self.scale if self.combined_test else 1.0
        return math.exp(sum(math.log(s) for s in sizes) / len(sizes)) * scale

    @property
    def counters(self) -> Dict[str, int]:
        """ALSALS's counters of searches, backtracks and skips summed over the parts; ``steps``,
        ``forward_evaluations`` and ``backward_passes`` those of this optimizer (the model's forward
        and backward passes: the shared first evaluation once per step, not once per part); and the
        combined step's trials and cuts."""
        total: Dict[str, int] = {}
        for opt in self.parts.values():
            for key, value in opt.counters.items():
                total[key] = total.get(key, 0) + value
        total["steps"] = self._steps
        total["forward_evaluations"] = self._forwards
        total["backward_passes"] = self._backward_passes
        total["skipped_steps"] = total.get("skipped_steps", 0) + self._skipped_steps
        total["combined_trials"] = self.combined_trials
        total["combined_cuts"] = self.combined_cuts
        total["combined_reused"] = self.combined_reused
        return total

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def eval(self) -> None:
        """Every part's average of the iterates into the parameters (see :meth:`alsals.ALSALS.eval`)."""
        for opt in self.parts.values():
            opt.eval()

    def train(self) -> None:
        for opt in self.parts.values():
            opt.train()

    def state_dict(self) -> Dict[str, Any]:
        """The parts' state dicts and the combined step's state. torch's state-dict hooks registered on
        this optimizer run as torch runs them (a pre hook before, a post hook may return a new dict)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self._state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _state_dict(self) -> Dict[str, Any]:
        return {
            "parts": {name: opt.state_dict() for name, opt in self.parts.items()},
            "combined": {"scale": self.scale, "smoothed_decrease": self.smoothed_decrease,
                         "smoothed_prediction": self.smoothed_prediction,
                         "trials": self.combined_trials, "cuts": self.combined_cuts, "reused": self.combined_reused,
                         "steps": self._steps, "forward_evaluations": self._forwards,
                         "backward_passes": self._backward_passes, "skipped_steps": self._skipped_steps,
                         "last_loss": self._last_loss, "decay_start": self.decay_start,
                         "plateau": self._plateau.state_dict() if self._plateau is not None else None},
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (an optimizer of the same model and parts). torch's
        load-state-dict hooks registered on this optimizer run as torch runs them (a pre hook may
        return a new dict; post hooks after loading)."""
        if isinstance(state_dict, dict):
            state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load_state_dict(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or "parts" not in state_dict or "combined" not in state_dict:
            raise ValueError("LayerwiseALSALS.load_state_dict: this is not a LayerwiseALSALS state dict (it has no "
                             "'parts' and 'combined'; an ALSALS or torch optimizer's state loads into that optimizer)")
        parts = state_dict.get("parts")
        if not isinstance(parts, dict) or list(parts) != list(self.parts):
            found = list(parts) if isinstance(parts, dict) else None
            raise ValueError(f"LayerwiseALSALS.load_state_dict: the state holds parts {found}, this optimizer "
                             f"has {list(self.parts)}; load it into an optimizer of the same model and part_of "
                             "(a state saved before alsals found the parts below the levels that only wrap, e.g. "
                             "['model'] for a LightningModule's self.model, loads with "
                             "part_of=alsals.layerwise.top_level_module)")
        for name, opt in self.parts.items():
            opt.load_state_dict(parts[name])
        # torch's load_state_dict gives each part new group dicts: hold those, so that an LR
        # scheduler (or accelerate, which reloads the state to place it) still reaches the parts
        self.param_groups = [g for opt in self.parts.values() for g in opt.param_groups]
        combined = state_dict["combined"]
        self.scale = float(combined["scale"])
        self.smoothed_decrease = float(combined["smoothed_decrease"])
        self.smoothed_prediction = float(combined["smoothed_prediction"])
        self.combined_trials = int(combined["trials"])
        self.combined_cuts = int(combined["cuts"])
        self.combined_reused = int(combined.get("reused", 0))
        self._steps = int(combined["steps"])
        self._forwards = int(combined["forward_evaluations"])
        self._backward_passes = int(combined["backward_passes"])
        self._skipped_steps = int(combined["skipped_steps"])
        self._last_loss = float(combined.get("last_loss", math.nan))
        self.decay_start = int(combined.get("decay_start", 0))
        if self._plateau is not None and combined.get("plateau") is not None:
            self._plateau.load_state_dict(combined["plateau"])

    # -- the step -------------------------------------------------------------------------------

    def _params(self, name: str) -> List[Tensor]:
        return [p for g in self.parts[name].param_groups for p in g["params"]]

    def _all_params(self) -> List[Tensor]:
        return [p for name in self.parts for p in self._params(name)]

    def step(self, closure: Optional[Callable[[], Any]] = None,  # type: ignore[override]
             grad_scaler: Optional[Any] = None) -> Tensor:
        """Evaluate the closure once with gradients, let every part search its own step from that
        gradient, test their sum (``combined_test``) and move. Returns the first loss, detached.

        A step whose first loss (averaged over the data-parallel ranks) or gradient is not finite is
        skipped as a whole (no part moves or advances; ``skipped_steps`` counts it). A part that
        gets no gradient in this step (frozen, or an unused branch) stays where it is. The first
        evaluation's gradient is left in ``p.grad``, as ALSALS leaves it."""
        if grad_scaler is not None:
            raise TypeError("LayerwiseALSALS does not support fp16 with a GradScaler (grad_scaler=); use bf16 "
                            "autocast inside the closure (no scaler needed), or ALSALS, which takes grad_scaler=")
        if closure is None or not callable(closure):
            raise TypeError("LayerwiseALSALS.step() needs a closure that returns the batch loss, as ALSALS does: "
                            "opt.step(lambda: loss_fn(model(x), y))")
        for opt in self.parts.values():
            if opt._search_state().averaged_in:
                raise RuntimeError("LayerwiseALSALS.step() was called after opt.eval(): the parameters hold the "
                                   "average of the iterates, for evaluation. Call opt.train() before training on.")
        params = self._all_params()
        devices = [p.device for p in params if p.device.type == "cuda"]
        before = RandomState(devices)
        evaluator = ClosureEvaluator(closure, params, type(self).__name__, trials=False)
        loss = evaluator.first()
        after = RandomState(devices)
        carried = self._carried()  # put back if the step raises
        self._steps += 1
        self._forwards += 1
        self._backward_passes += evaluator.backward_passes
        with torch.no_grad():
            grads = {p: p.grad.detach().clone() for p in params if p.grad is not None}
        forward_only = not evaluator.trials_run_backward
        loss0, found_inf = self._read_first(loss, list(grads.values()))
        self._last_loss = loss0
        if not math.isfinite(loss0) or found_inf != 0.0:
            self._skipped_steps += 1
            for opt in self.parts.values():  # the parts' anneal follows the run's step
                opt._count_idle_step()
            return loss
        with torch.no_grad():
            buffers = [b.detach().clone() for b in self.model.buffers()]
            starts = {name: [p.detach().clone() for p in self._params(name)] for name in self.parts}
        weights_before = {name: opt._search_state().average_weight for name, opt in self.parts.items()}
        stepping = [name for name in self.parts if any(p in grads for p in self._params(name))]
        # amortized_combined_test: the summed step is tested only when a part searches in this step
        testing = self.combined_test and len(stepping) > 1 and (
            not self.amortized_combined_test or any(self._searches_now(name) for name in stepping))
        ends: Dict[str, List[Tensor]] = {}
        staged: Dict[str, StagedStep] = {}
        predicted = 0.0
        scale = 1.0
        try:
            for name, opt in self.parts.items():
                part_grads = {p: grads[p] for p in self._params(name) if p in grads}
                if not part_grads:  # frozen, or unused by this step's loss: the part stays
                    ends[name] = starts[name]
                    continue
                before.restore()
                given = _FirstEvaluationGiven(closure, loss, part_grads, self.model, forward_only)
                # torch's step hooks fire once, around this optimizer's step; the part's state changes
                # wait until no closure is left to evaluate (below)
                staged[name] = opt._staged_step(given)
                self._forwards += given.trials
                self._backward_passes += 0 if forward_only else given.trials
                with torch.no_grad():
                    ends[name] = [p.detach().clone() for p in self._params(name)]
                    for p, w, e in zip(self._params(name), starts[name], ends[name]):
                        if testing and p in grads:
                            predicted -= float((grads[p] * (e - w)).sum())
                        p.copy_(w)
            if testing:
                scale = self._combined_scale(closure, before, buffers, starts, ends, loss0, predicted, forward_only)
            elif self.combined_test and len(stepping) > 1:  # amortized: the carried scale, untested
                scale = self.scale
                self.combined_reused += 1
        except BaseException:
            # nothing is committed yet: the weights back at w0, and this optimizer's own state
            self._set(starts, starts, set(), 1.0)
            self._restore_carried(carried)
            raise
        finally:
            self._restore_buffers(buffers)
            after.restore()
            for p in params:  # the first evaluation's gradient, as ALSALS leaves it
                p.grad = grads.get(p)
        self._commit_parts(staged, starts, ends)  # every part at its own end: the step when the scale is 1
        if scale != 1.0:
            move_averages(self.parts, starts, ends, weights_before, scale)
            self._set(starts, ends, set(self.parts), scale)
        if (self._plateau is not None and self.decay_start == 0 and self._steps < self._fixed_decay_start
                and self._plateau.update(loss0)):
            self.decay_start = self._steps
            for opt in self.parts.values():
                opt.begin_decay()
        return loss

    def _commit_parts(self, staged: Dict[str, StagedStep], starts: Dict[str, List[Tensor]],
                      ends: Dict[str, List[Tensor]]) -> None:
        """The parts' staged steps, committed once no closure is left to evaluate: the moments and
        step counts (from ``w0``, where an amortized part reruns its update), then, with every part at
        its own end, the search states and the averages' samples; a part without gradients in this
        step only counts the step (its anneal follows the run's)."""
        self._set(starts, starts, set(), 1.0)
        for stage in staged.values():
            stage.commit()
        self._set(starts, ends, set(staged), 1.0)
        for name, opt in self.parts.items():
            if name in staged:
                staged[name].publish()
            else:
                opt._count_idle_step()

    #: this optimizer's own scalars that a step changes before it commits (the combined step's scale
    #: and averages, the counters), put back when the step raises
    _CARRIED = ("scale", "smoothed_decrease", "smoothed_prediction", "combined_trials", "combined_cuts",
                "combined_reused", "_steps", "_forwards", "_backward_passes", "_last_loss")

    def _carried(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self._CARRIED}

    def _restore_carried(self, carried: Dict[str, Any]) -> None:
        for name, value in carried.items():
            setattr(self, name, value)

    def _searches_now(self, name: str) -> bool:
        """Whether part ``name``'s optimizer will search in its next step (its plan, from its state)."""
        opt = self.parts[name]
        return plan(opt._search_state(), opt.config.search, opt.config.amortization).search

    def _read_first(self, loss: Tensor, grads: List[Tensor]) -> Tuple[float, float]:
        """The first loss averaged over the data-parallel ranks, and whether any rank's gradient has a
        non-finite value (nonzero then), in one read."""
        first = next(iter(self.parts.values()))
        if grads:
            finite = torch.stack([torch.isfinite(g).all().to(loss.device) for g in grads]).all()
            found_inf = (~finite).to(torch.float64)
        else:
            found_inf = torch.zeros((), dtype=torch.float64, device=loss.device)
        loss0, flag = first._read([loss.detach(), found_inf], num_means=2)
        return loss0, flag

    def _restore_buffers(self, saved: List[Tensor]) -> None:
        with torch.no_grad():
            for b, value in zip(self.model.buffers(), saved):
                b.copy_(value)

    def _set(self, starts: Dict[str, List[Tensor]], ends: Dict[str, List[Tensor]], names: Iterable[str],
             scale: float) -> None:
        """Each part in ``names`` at ``w0 + scale·(e − w0)``; the others at ``w0``."""
        names = set(names)
        with torch.no_grad():
            for name in self.parts:
                for p, w, e in zip(self._params(name), starts[name], ends.get(name, starts[name])):
                    if name in names:
                        p.copy_(w + scale * (e - w) if scale != 1.0 else e)
                    else:
                        p.copy_(w)

    def _combined_loss(self, closure: Callable[[], Any], rng: RandomState, buffers: List[Tensor],
                       forward_only: bool) -> float:
        """The batch loss at the current weights with the step's random draws (averaged over the
        data-parallel ranks, as ALSALS reads its trials), the buffers put back."""
        rng.restore()
        self._forwards += 1
        self._backward_passes += 0 if forward_only else 1
        try:
            with torch.no_grad() if forward_only else torch.enable_grad():  # LBFGS-style closures run backward
                value = closure()
        finally:
            self._restore_buffers(buffers)
        return self._mean_over_ranks(check_loss(value, type(self).__name__))

    def _mean_over_ranks(self, loss: Tensor) -> float:
        """``loss`` read back, averaged over the data-parallel ranks (every rank then decides alike)."""
        first = next(iter(self.parts.values()))
        value: float = first._read([loss.detach()], num_means=1)[0]
        return value

    def _combined_scale(self, closure: Callable[[], Any], rng: RandomState, buffers: List[Tensor],
                        starts: Dict[str, List[Tensor]], ends: Dict[str, List[Tensor]], loss0: float,
                        predicted: float, forward_only: bool) -> float:
        """The scale applied to the parts' summed step, and the carried scale after this step's test
        (module docstring); 0 when no trial passes or the prediction ``L`` is not positive."""
        config = self.config.search
        if not math.isfinite(predicted) or predicted <= 0.0:
            return 0.0
        scale = min(1.0, self.scale / config.backtrack)
        for _ in range(MAX_COMBINED_TRIALS):
            self._set(starts, ends, self.parts, scale)
            self.combined_trials += 1
            together = loss0 - self._combined_loss(closure, rng, buffers, forward_only)
            decrease = smooth(self.smoothed_decrease, together, config.smoothing)
            prediction = smooth(self.smoothed_prediction, scale * predicted, config.smoothing)
            if math.isfinite(together) and decrease >= config.c * prediction:
                self.scale = scale
                self.smoothed_decrease, self.smoothed_prediction = decrease, prediction
                return scale
            self.combined_cuts += 1
            scale = max(scale * config.backtrack, config.min_step_size)
        self.scale = scale
        return 0.0


def move_averages(parts: Dict[str, ALSALS], starts: Dict[str, List[Tensor]], ends: Dict[str, List[Tensor]],
                  weights_before: Dict[str, float], scale: float) -> None:
    """Where a part sampled its average of the iterates at this step, move the sample from the part's
    own end to the end applied: ``x̄ += w·(x − 1)·s_k``, ``w`` the sample's share of the new total
    weight (``weights_before``: each part's total weight before the step). ``parts``: part name ->
    its optimizer, ``starts``/``ends``: its parameters before the step and where its search ended."""
    for name, opt in parts.items():
        state = opt._search_state()
        if not opt.config.averages or state.average_step != state.steps or state.average_weight <= 0:
            continue
        weight = (state.average_weight - weights_before[name]) / state.average_weight
        params = [p for g in opt.param_groups for p in g["params"]]
        with torch.no_grad():
            for p, w, e in zip(params, starts[name], ends[name]):
                average = opt.state[p].get("average")
                if average is not None:
                    average.add_((e - w) * ((scale - 1.0) * weight))


__all__ = ["LayerwiseALSALS", "MAX_COMBINED_TRIALS", "PartsState", "move_averages", "repeated_blocks",
           "split_by_top_level_module", "top_level_module", "top_level_parts", "unwrapped", "wrapper_prefix"]
