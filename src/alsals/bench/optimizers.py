"""The optimizers compared by ``alsals bench``: a registry of names, and one adapter per calling protocol.

Every entry of :data:`OPTIMIZERS` is an :class:`OptimizerSpec`: a factory
``factory(params, total_steps, n_batches_per_epoch)`` returning an optimizer (or an
``(optimizer, scheduler)`` pair) and the *protocol* the optimizer is driven with:

``standard``
    ``zero_grad(); loss = closure(); loss.backward(); opt.step(); scheduler.step()``.
``alsals``
    ``loss = opt.step(closure)`` with a forward-only closure (the optimizer runs backward itself).
``salsa``
    the authors' ``salsa.SaLSA.SaLSA``: ``opt.step(closure)`` where the optimizer calls
    ``closure(backwards=True)`` once (the closure must zero the gradients and run backward) and
    ``closure(backwards=False)`` for its trial evaluations.
``adamsls``
    the authors' ``salsa.adam_sls.AdamSLS``: gradients zeroed by the caller, then ``opt.step(closure)``
    with a forward-only closure; the optimizer calls ``loss.backward()`` on the first evaluation itself.

The reported *step size* is the scalar that multiplies the optimizer's update direction at the last
step: for the line searches the accepted step size (ALSALS: ``lr · η``; SLS: the step along the raw
gradient), for Adam ``lr × schedule``, for Prodigy and D-Adaptation ``d × lr × schedule``, for
schedule-free AdamW its warmed-up ``lr``, for DoG its ``η`` (an SGD step, on another scale).

Adding a variant of ALSALS is one line (see the end of this file)::

    register_alsals_variant("alsals-growth1.01", growth=1.01, knows_total_steps=True)
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

PROTOCOLS = ("standard", "alsals", "salsa", "adamsls")

#: the learning rates of the tuned-Adam grid, and the names they are registered under
ADAM_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: fraction of the steps spent in linear warm-up by the scheduled baselines
WARMUP_FRACTION = 0.05


def adam_name(lr: float) -> str:
    """``1e-3 -> "adam-lr1e-3"``."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"adam-lr{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class OptimizerSpec:
    """One entry of the registry."""

    name: str
    #: ``factory(params, total_steps, n_batches_per_epoch) -> optimizer | (optimizer, scheduler)``
    factory: Callable[[list, int, int], Any]
    protocol: str
    #: "alsals" (this package), "reference" (the paper authors' package), "adam" (the tuned grid),
    #: "lr-free" (other learning-rate-free methods)
    family: str
    description: str
    #: the settings, for the results' config (informative)
    hparams: dict = field(default_factory=dict)
    #: ``step_size(optimizer) -> float``: see the module docstring
    step_size: Callable[[Any], float] | None = None
    #: schedule-free: call ``optimizer.train()`` / ``optimizer.eval()`` around training / evaluation
    schedulefree: bool = False
    #: "polynomial": evaluate DoG's polynomial-decay average of the iterates (Ivgi et al. 2023)
    averaging: str | None = None
    #: the tuned-Adam learning rate, for grid entries
    grid_lr: float | None = None


OPTIMIZERS: dict[str, OptimizerSpec] = {}
#: names that expand to several registry entries
GROUPS: dict[str, list[str]] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {spec.protocol!r}; expected one of {PROTOCOLS}")
    OPTIMIZERS[spec.name] = spec
    return spec


def resolve_optimizers(names: Iterable[str]) -> list[str]:
    """Expand group names (``adam-tuned``) and check every name; keeps the order, drops duplicates."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        expanded = GROUPS.get(name, [name])
        for n in expanded:
            if n not in OPTIMIZERS:
                known = ", ".join(sorted(OPTIMIZERS) + sorted(GROUPS))
                raise KeyError(f"unknown optimizer {n!r}; known optimizers and groups: {known}")
            if n not in out:
                out.append(n)
    return out


# --------------------------------------------------------------------------------------------------
# schedules


def warmup_cosine(total_steps: int, warmup_fraction: float = WARMUP_FRACTION) -> Callable[[int], float]:
    """Multiplier at step ``t`` (0-based): linear warm-up over ``warmup_fraction`` of the steps (at least
    one step), then cosine decay to 0 at ``total_steps``."""
    total = max(int(total_steps), 1)
    warm = max(1, int(round(warmup_fraction * total)))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        rest = max(total - warm, 1)
        progress = min((t - warm) / rest, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def cosine(total_steps: int) -> Callable[[int], float]:
    """Cosine annealing to 0 over ``total_steps`` with no warm-up (``CosineAnnealingLR(T_max=total)``)."""
    total = max(int(total_steps), 1)
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t / total, 1.0)))


def _lambda_lr(opt: torch.optim.Optimizer, factor: Callable[[int], float]):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)


# --------------------------------------------------------------------------------------------------
# step-size readers


def _group_lr(opt) -> float:
    return float(opt.param_groups[0]["lr"])


def _d_times_lr(opt) -> float:
    g = opt.param_groups[0]
    return float(g.get("d", 1.0)) * float(g["lr"])


def _alsals_step(opt) -> float:
    return float(getattr(opt, "step_size", float("nan"))) * float(opt.param_groups[0].get("lr", 1.0))


def _salsa_ref_step(opt) -> float:
    return float(opt.step_size)


def _adamsls_ref_step(opt) -> float:
    sizes = opt.state.get("step_sizes") or opt.init_step_sizes
    return float(sizes[0])


def _schedulefree_step(opt) -> float:
    g = opt.param_groups[0]
    return float(g.get("scheduled_lr", g["lr"]))


def _dog_step(opt) -> float:
    eta = opt.param_groups[0].get("eta")
    if not eta:
        return float("nan")
    e = eta[0]
    return float(e.item() if torch.is_tensor(e) else e)


# --------------------------------------------------------------------------------------------------
# this package's optimizers


def _alsals_class(name: str):
    try:
        import alsals
    except ImportError as exc:  # pragma: no cover - the package itself
        raise RuntimeError(f"cannot import alsals: {exc}") from exc
    cls = getattr(alsals, name, None)
    if cls is None:
        raise RuntimeError(
            f"alsals.{name} is not available in this build of alsals (the optimizer core is missing?)"
        )
    return cls


def register_alsals_variant(
    name: str,
    class_name: str = "ALSALS",
    description: str | None = None,
    *,
    knows_total_steps: bool = False,
    **kwargs: Any,
) -> OptimizerSpec:
    """Register ``alsals.<preset>(params, **kwargs)`` under ``name``; one line per ablation.

    ``class_name`` is the class in :mod:`alsals` (``ALSALS``, ``SLS``, ``SaLSa``). ``SLS`` receives
    ``n_batches_per_epoch`` from the task unless ``kwargs`` sets it. With ``knows_total_steps`` the
    optimizer is told the run's length (``total_steps=``, as the scheduled competitors are).
    """
    kw = dict(kwargs)

    def factory(params, total_steps, n_batches_per_epoch):
        cls = _alsals_class(class_name)
        args = dict(kw)
        if class_name == "SLS":
            args.setdefault("n_batches_per_epoch", n_batches_per_epoch)
        if knows_total_steps:
            args.setdefault("total_steps", total_steps)
        return cls(params, **args)

    settings = ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "defaults"
    return register_optimizer(
        OptimizerSpec(
            name=name,
            factory=factory,
            protocol="alsals",
            family="alsals",
            description=description or f"alsals.{class_name} ({settings})",
            hparams={"class": f"alsals.{class_name}", **kw, **({"total_steps": "run length"} if knows_total_steps else {})},
            step_size=_alsals_step,
        )
    )


# --------------------------------------------------------------------------------------------------
# the competitors


def _adam_factory(lr: float):
    def factory(params, total_steps, n_batches_per_epoch):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        return opt, _lambda_lr(opt, warmup_cosine(total_steps))

    return factory


def _salsa_ref_factory(params, total_steps, n_batches_per_epoch):
    from salsa.SaLSA import SaLSA

    return SaLSA(params)


def _adamsls_ref_factory(params, total_steps, n_batches_per_epoch):
    from salsa.adam_sls import AdamSLS

    # AdamSLS takes a list of parameter lists (one "group" per inner list).
    return AdamSLS([list(params)], n_batches_per_epoch=n_batches_per_epoch)


def _prodigy_factory(params, total_steps, n_batches_per_epoch):
    from prodigyopt import Prodigy

    opt = Prodigy(params, lr=1.0, weight_decay=0.0)
    return opt, _lambda_lr(opt, cosine(total_steps))


def _dadapt_factory(params, total_steps, n_batches_per_epoch):
    from dadaptation import DAdaptAdam

    opt = DAdaptAdam(params, lr=1.0, weight_decay=0.0)
    return opt, _lambda_lr(opt, warmup_cosine(total_steps))


def _schedulefree_factory(params, total_steps, n_batches_per_epoch):
    from schedulefree import AdamWScheduleFree

    warm = max(1, int(round(WARMUP_FRACTION * max(total_steps, 1))))
    return AdamWScheduleFree(params, lr=0.0025, weight_decay=0.0, warmup_steps=warm)


def _dog_factory(params, total_steps, n_batches_per_epoch):
    from dog import DoG

    return DoG(params, lr=1.0, reps_rel=1e-6)


def _register_defaults() -> None:
    register_alsals_variant(
        "alsals", "ALSALS", "ALSALS, defaults untouched, told the run's length (total_steps=T, as the "
        "scheduled competitors are); no learning rate", knows_total_steps=True,
    )
    register_alsals_variant(
        "alsals-anytime", "ALSALS", "ALSALS, defaults untouched, not told the run's length (no anneal)"
    )
    register_alsals_variant(
        "alsals-paper", "ALSALS", "ALSALS with the paper's settings (preset='paper')", preset="paper"
    )
    register_alsals_variant("sls", "SLS", "SLS preset of alsals (Vaswani et al. 2019: SGD + Armijo)")
    register_alsals_variant("salsa", "SaLSa", "SaLSa preset of alsals (amortised Adam line search)")

    register_optimizer(OptimizerSpec(
        name="salsa-ref", factory=_salsa_ref_factory, protocol="salsa", family="reference",
        description="salsa-optimizer's SaLSA (paper authors' package), defaults",
        hparams={"class": "salsa.SaLSA.SaLSA", "init_step_size": 1, "c": 0.5, "speed_up": True},
        step_size=_salsa_ref_step,
    ))
    register_optimizer(OptimizerSpec(
        name="adamsls-ref", factory=_adamsls_ref_factory, protocol="adamsls", family="reference",
        description="salsa-optimizer's AdamSLS (paper authors' package), defaults",
        hparams={"class": "salsa.adam_sls.AdamSLS", "init_step_size": 0.1, "c": 0.2, "gamma": 2.0},
        step_size=_adamsls_ref_step,
    ))
    grid = []
    for lr in ADAM_GRID:
        name = adam_name(lr)
        grid.append(name)
        register_optimizer(OptimizerSpec(
            name=name, factory=_adam_factory(lr), protocol="standard", family="adam",
            description=f"Adam (torch.optim.AdamW, weight_decay=0), lr={lr:g}, "
                        f"{WARMUP_FRACTION:.0%} linear warm-up + cosine decay to 0",
            hparams={"class": "torch.optim.AdamW", "lr": lr, "weight_decay": 0.0,
                     "schedule": "warmup_cosine", "warmup_fraction": WARMUP_FRACTION},
            step_size=_group_lr, grid_lr=lr,
        ))
    GROUPS["adam-tuned"] = grid
    register_optimizer(OptimizerSpec(
        name="prodigy", factory=_prodigy_factory, protocol="standard", family="lr-free",
        description="Prodigy, lr=1.0, cosine annealing to 0 (its README's recommendation)",
        hparams={"class": "prodigyopt.Prodigy", "lr": 1.0, "weight_decay": 0.0,
                 "schedule": "cosine", "warmup_fraction": 0.0},
        step_size=_d_times_lr,
    ))
    register_optimizer(OptimizerSpec(
        name="dadapt-adam", factory=_dadapt_factory, protocol="standard", family="lr-free",
        description="D-Adaptation Adam, lr=1.0, the same warm-up + cosine schedule as Adam "
                    "(its README: use the schedule you would use otherwise)",
        hparams={"class": "dadaptation.DAdaptAdam", "lr": 1.0, "weight_decay": 0.0,
                 "schedule": "warmup_cosine", "warmup_fraction": WARMUP_FRACTION},
        step_size=_d_times_lr,
    ))
    register_optimizer(OptimizerSpec(
        name="schedulefree-adamw", factory=_schedulefree_factory, protocol="standard", family="lr-free",
        description=f"schedule-free AdamW, default lr=0.0025, warmup_steps={WARMUP_FRACTION:.0%} of steps; "
                    "evaluated at its averaged point x (optimizer.eval())",
        hparams={"class": "schedulefree.AdamWScheduleFree", "lr": 0.0025, "weight_decay": 0.0,
                 "warmup_fraction": WARMUP_FRACTION},
        step_size=_schedulefree_step, schedulefree=True,
    ))
    register_optimizer(OptimizerSpec(
        name="dog", factory=_dog_factory, protocol="standard", family="lr-free",
        description="DoG (lr=1, reps_rel=1e-6), evaluated with its polynomial-decay iterate average "
                    "(gamma=8), as its authors require",
        hparams={"class": "dog.DoG", "lr": 1.0, "reps_rel": 1e-6, "averaging": "PolynomialDecayAverager(gamma=8)"},
        step_size=_dog_step, averaging="polynomial",
    ))


_register_defaults()

# Ablations and variants of this package's optimizers: one line each (not in the default suites;
# docs/benchmarks.md has their results). "b" = slope_smoothing, "c" = the Armijo constant.
register_alsals_variant("alsals-paper-anneal", preset="paper", knows_total_steps=True)
register_alsals_variant("alsals-paper-b9c5", preset="paper", slope_smoothing=0.9, c=0.5)
register_alsals_variant("alsals-paper-b9c5-anneal", preset="paper", slope_smoothing=0.9, c=0.5, knows_total_steps=True)
register_alsals_variant("alsals-no-amortisation", amortized=False, knows_total_steps=True)
register_alsals_variant("alsals-salsa-interval", search_interval_rule="salsa", knows_total_steps=True)
register_alsals_variant("alsals-interval10", max_search_interval=10, knows_total_steps=True)
register_alsals_variant("alsals-interval40", max_search_interval=40, knows_total_steps=True)
register_alsals_variant("alsals-doubling", search_interval_rule="doubling", knows_total_steps=True)
register_alsals_variant("alsals-cosine", anneal="cosine", knows_total_steps=True)
register_alsals_variant("alsals-linear", anneal="linear", knows_total_steps=True)
register_alsals_variant("alsals-growth1.01", growth=1.01, knows_total_steps=True)
register_alsals_variant("alsals-finite-difference", slope="finite_difference", knows_total_steps=True)


# --------------------------------------------------------------------------------------------------
# adapters


class _StdoutCounter(io.TextIOBase):
    """Swallows what a reference package prints in its hot path (it would garble progress bars)."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, s: str) -> int:
        self.lines += s.count("\n")
        return len(s)


class Adapter:
    """Drives one optimizer through one training run, whatever its calling convention.

    ``step(closure)`` takes a forward-only closure (returns the loss of the current batch, counted by
    the harness) and returns the loss of the first evaluation as a float.
    """

    def __init__(self, spec: OptimizerSpec, model: nn.Module, total_steps: int, n_batches_per_epoch: int):
        self.spec = spec
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        built = spec.factory(params, int(total_steps), int(max(n_batches_per_epoch, 1)))
        if isinstance(built, tuple):
            self.optimizer, self.scheduler = built
        else:
            self.optimizer, self.scheduler = built, None
        self.averager = None
        if spec.averaging == "polynomial":
            from dog import PolynomialDecayAverager

            self.averager = PolynomialDecayAverager(model, gamma=8.0)
        self._silenced = _StdoutCounter()
        self.last_step_size = float("nan")
        self.train_mode()

    # -- modes -------------------------------------------------------------------------------
    def train_mode(self) -> None:
        self.model.train()
        if self.spec.schedulefree:
            self.optimizer.train()

    def eval_mode(self) -> nn.Module:
        """Put the optimizer and the model in evaluation mode; returns the model to evaluate."""
        if self.spec.schedulefree:
            self.optimizer.eval()
        model = self.averager.averaged_model if self.averager is not None else self.model
        model.eval()
        return model

    # -- one step ----------------------------------------------------------------------------
    def step(self, closure: Callable[[], torch.Tensor]) -> float:
        protocol = self.spec.protocol
        opt = self.optimizer
        if protocol == "standard":
            opt.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            opt.step()
        elif protocol == "alsals":
            loss = opt.step(closure)
        elif protocol == "salsa":
            def salsa_closure(backwards: bool = False):
                if backwards:
                    opt.zero_grad(set_to_none=False)
                    out = closure()
                    out.backward()
                    return out
                return closure()

            with contextlib.redirect_stdout(self._silenced):
                loss = opt.step(salsa_closure)
        elif protocol == "adamsls":
            opt.zero_grad(set_to_none=False)
            with contextlib.redirect_stdout(self._silenced):
                loss = opt.step(closure)
        else:  # pragma: no cover - guarded by register_optimizer
            raise ValueError(protocol)
        # the step size used by this step: read before the scheduler moves on
        self.last_step_size = self._read_step_size()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.averager is not None:
            self.averager.step()
        return float(loss.detach().item()) if torch.is_tensor(loss) else float(loss)

    def current_step_size(self) -> float:
        """The step size (or effective learning rate) used by the last step; see the module docstring."""
        return self.last_step_size

    def _read_step_size(self) -> float:
        if self.spec.step_size is None:
            return float("nan")
        try:
            return self.spec.step_size(self.optimizer)
        except Exception:  # a reader must never stop a run
            return float("nan")

    def counters(self) -> dict:
        """The optimizer's own counters, when it has them (alsals: ``opt.counters``)."""
        out: dict = {}
        c = getattr(self.optimizer, "counters", None)
        if isinstance(c, dict):
            for k, v in c.items():
                try:
                    out[k] = float(v) if not isinstance(v, int) else v
                except (TypeError, ValueError):
                    pass
        if self.spec.protocol in ("salsa", "adamsls"):
            st = self.optimizer.state
            for key in ("n_forwards", "n_backwards", "backtracks"):
                if key in st and isinstance(st[key], (int, float)):
                    out[key] = st[key]
            if isinstance(st.get("n_backtr"), (int, float)):
                out["n_backtr"] = st["n_backtr"]
            if self._silenced.lines:
                out["printed_lines"] = self._silenced.lines
        return out


def make_adapter(name: str, model: nn.Module, total_steps: int, n_batches_per_epoch: int) -> Adapter:
    if name not in OPTIMIZERS:
        resolve_optimizers([name])  # raises the clear message
    return Adapter(OPTIMIZERS[name], model, total_steps, n_batches_per_epoch)


def describe(names: Sequence[str] | None = None) -> list[dict]:
    """Name, family, protocol and description of registered optimizers (for ``--list`` and reports)."""
    names = list(OPTIMIZERS) if names is None else names
    return [
        {"name": n, "family": OPTIMIZERS[n].family, "protocol": OPTIMIZERS[n].protocol,
         "description": OPTIMIZERS[n].description}
        for n in names
    ]
