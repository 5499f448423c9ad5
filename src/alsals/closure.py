"""Evaluating the user's closure so that trial evaluations leave no trace.

Within one optimizer step the closure is evaluated once at the current weights (with gradients)
and then at trial weights (the line search). Every evaluation must see the same batch and the same
random draws, and the trials must not change the training run:

- :class:`RandomState` captures the torch RNG state of the CPU and of every CUDA device in use
  before the first evaluation, restores it before each trial (dropout draws the same masks, so a
  trial at step size 0 reproduces the first loss exactly), and finally restores the state left by
  the first evaluation, so the run's random stream is as if only that evaluation had happened.
- :class:`BufferGuard` records which module buffers the first evaluation changed (BatchNorm's
  running statistics and counters, an EMA buffer updated in place or replaced) and puts them back
  after each trial, so after ``step()`` the buffers are exactly those left by the first evaluation
  alone.
- :class:`ClosureEvaluator` detects the closure style (forward-only, or the ``torch.optim.LBFGS``
  convention that runs ``zero_grad()`` and ``backward()`` itself), runs the backward pass when the
  closure does not, runs trials under ``torch.no_grad()`` when it can, and validates what the
  closure returns. A closure that runs ``backward()`` itself but only evaluates when gradients are
  disabled declares so with the attribute ``forward_only_trials = True`` (as the closures of
  :func:`alsals.micro_batch_closure` do); its trials then run under ``torch.no_grad()`` too.
- :class:`ModuleCache` finds the modules the closure runs once (with a hook that exists only
  during that one evaluation, run with ``torch.compile`` suspended) and keeps them weakly, so later
  evaluations run no hook and a compiled model is not recompiled.
- FSDP2 modules (``fully_shard``) that do not reshard after forward (the root module by default)
  keep their all-gathered parameters after a forward pass without backward, and the next forward
  would reuse them although the optimizer moved the shards: the evaluator reshards every FSDP2
  module the closure runs after each trial.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

CLOSURE_REQUIRED_MESSAGE = (
    "{name}.step() needs a closure that returns the loss of the current batch, because the line "
    "search evaluates the loss at trial step sizes. Change\n"
    "    loss = loss_fn(model(x), y); loss.backward(); opt.step()\n"
    "to\n"
    "    loss = opt.step(lambda: loss_fn(model(x), y))"
)


class RandomState:
    """The torch RNG state of the CPU and of the CUDA devices in use, captured once."""

    def __init__(self, cuda_devices: Iterable[torch.device]):
        self.cpu = torch.get_rng_state()
        self.cuda: Dict[int, Tensor] = {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            indices = {d.index if d.index is not None else torch.cuda.current_device() for d in cuda_devices}
            indices.add(torch.cuda.current_device())
            self.cuda = {i: torch.cuda.get_rng_state(i) for i in sorted(indices)}

    def restore(self) -> None:
        """Put every captured generator back to its captured state."""
        torch.set_rng_state(self.cpu)
        for index, state in self.cuda.items():
            torch.cuda.set_rng_state(state, index)


def _compilation_suspended() -> contextlib.AbstractContextManager:
    """A context in which ``torch.compile``'d modules and functions run eagerly (nothing when
    ``torch._dynamo`` was never imported: then nothing is compiled)."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return set_stance("force_eager")


class ModuleCache:
    """The modules a step's closure runs, discovered once and kept as weak references.

    Buffer protection (:class:`BufferGuard`) and FSDP2 resharding need the modules the closure
    runs. They are found once, during the first evaluation of the first searched step: a global
    forward pre-hook records every module called, and is removed right after. That evaluation runs
    with ``torch.compile`` suspended (``torch.compiler.set_stance("force_eager")``), so the modules
    inside a compiled model (``torch.compile(model)`` or ``model.compile()``) are seen too. Later
    evaluations run no hook at all: a hook that appeared and vanished at every evaluation would make
    ``torch.compile`` recompile the model each time (dynamo guards on the global hooks).

    The modules are held weakly; when all of them are gone (a new model), the next searched step
    discovers again. A closure may also declare its modules (``closure.trial_modules``), which
    then replace discovery (the Hugging Face ``Trainer`` integration does, because its first
    evaluation runs no module).
    """

    def __init__(self) -> None:
        self._refs: List["weakref.ReferenceType[nn.Module]"] = []

    def modules(self) -> List[nn.Module]:
        """The discovered modules still alive."""
        alive = (ref() for ref in self._refs)
        return [m for m in alive if m is not None]

    @property
    def known(self) -> bool:
        """Whether modules were discovered and some are alive."""
        return any(ref() is not None for ref in self._refs)

    def discover(self, fn: Callable[[], Any], on_module: Callable[[nn.Module], None]) -> Any:
        """Call ``fn`` (eagerly) with the recording hook installed; ``on_module`` sees each module
        the first time it is called (before its forward runs)."""
        seen: Dict[int, nn.Module] = {}

        def record(module: nn.Module, args: Any) -> None:
            if id(module) not in seen:
                seen[id(module)] = module
                on_module(module)

        handle = nn.modules.module.register_module_forward_pre_hook(record)
        try:
            with _compilation_suspended(), warnings.catch_warnings():
                # torch warns that a global hook fires for an OptimizedModule too: expected here
                warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
                result = fn()
        finally:
            handle.remove()
        self._refs = [weakref.ref(m) for m in seen.values()]
        return result


class BufferGuard:
    """Protects module buffers from the side effects of trial evaluations.

    Before the first evaluation the buffers of the closure's modules (:class:`ModuleCache`) are
    recorded with their version counters. After it, the buffers that may have been updated are cloned
    once: every buffer of a module in training mode (BatchNorm updates its running statistics in place
    *without* bumping the version counter, so versions alone cannot tell), and any other buffer whose
    version changed or that was replaced. After each trial these are restored. A buffer that only a
    trial changed cannot be restored: a warning says so.

    Args:
        cache: the optimizer's module cache (discovery happens in :meth:`run_first` when it is empty).
        declared: modules the closure declared (``closure.trial_modules``): they and their submodules
            are protected, and nothing is discovered.
    """

    def __init__(self, cache: ModuleCache, declared: Sequence[nn.Module] = ()) -> None:
        self._cache = cache
        self._declared = list(declared)
        self._records: Dict[int, Tuple[nn.Module, Dict[str, Tuple[Tensor, int]]]] = {}
        self._saved: List[Tuple[nn.Module, str, Tensor, Tensor]] = []
        self._after: Dict[Tuple[int, str], Tuple[Tensor, int]] = {}
        self._warned = False

    def _record(self, module: nn.Module) -> None:
        if id(module) not in self._records:
            versions = {name: (buf, buf._version) for name, buf in module._buffers.items() if buf is not None}
            self._records[id(module)] = (module, versions)

    def modules(self) -> List[nn.Module]:
        """The modules whose buffers this guard watches."""
        return [module for module, _ in self._records.values()]

    def run_first(self, fn: Callable[[], Any]) -> Any:
        """Run the first evaluation ``fn``, recording the buffers of the closure's modules before it."""
        if self._declared:
            for root in self._declared:
                for module in root.modules():
                    self._record(module)
            return fn()
        if self._cache.known:
            for module in self._cache.modules():
                self._record(module)
            return fn()
        return self._cache.discover(fn, self._record)

    def snapshot(self) -> None:
        """After the first evaluation: clone the buffers it may have changed (their values now)."""
        self._saved = []
        self._after = {}
        for module, versions in self._records.values():
            for name, buf in module._buffers.items():
                if buf is None:
                    continue
                before = versions.get(name)
                if module.training or before is None or before[0] is not buf or buf._version != before[1]:
                    self._saved.append((module, name, buf, buf.detach().clone()))
                else:
                    self._after[(id(module), name)] = (buf, buf._version)

    def restore(self) -> None:
        """After a trial: put the saved buffers back to their post-first-evaluation values."""
        for module, name, original, value in self._saved:
            if module._buffers.get(name) is not original:
                module._buffers[name] = original
            original.copy_(value)
        if self._warned:
            return
        saved = {(id(m), n) for m, n, _, _ in self._saved}
        for module, _ in self._records.values():
            for name, buf in module._buffers.items():
                key = (id(module), name)
                if buf is None or key in saved:
                    continue
                recorded = self._after.get(key)
                if recorded is None or recorded[0] is not buf or recorded[1] != buf._version:
                    self._warned = True
                    warnings.warn(
                        "A trial evaluation of the closure changed a module buffer that the first evaluation "
                        "did not change; alsals cannot restore it. Make such updates depend only on the "
                        "first evaluation (e.g. update them outside the closure).",
                        RuntimeWarning,
                        stacklevel=5,
                    )
                    return


def check_loss(loss: Any, name: str) -> Tensor:
    """Validate the closure's return value: a scalar tensor."""
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"The closure passed to {name}.step() must return the loss as a scalar torch.Tensor, "
            f"got {type(loss).__name__}. Return the tensor itself (not loss.item())."
        )
    if loss.numel() != 1:
        raise ValueError(
            f"The closure passed to {name}.step() must return a scalar loss, got a tensor of shape "
            f"{tuple(loss.shape)}. Reduce it first, e.g. return loss.mean()."
        )
    if loss.is_complex():
        raise TypeError(f"The closure passed to {name}.step() returned a complex loss; it must be real.")
    if loss.dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"The closure passed to {name}.step() returned a {loss.dtype} loss: the line search compares "
            "losses to a few significant digits only. Compute the loss in float32, e.g. "
            "loss_fn(output.float(), target).",
            RuntimeWarning,
            stacklevel=4,
        )
    return loss.reshape(())


def _fsdp_module_class() -> Optional[type]:
    """``torch.distributed.fsdp.FSDPModule`` (FSDP2), or ``None`` where this torch has none."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch or a build without distributed
        return None
    return FSDPModule


def closure_attribute(closure: Any, name: str) -> Any:
    """The attribute ``name`` of ``closure``, or of what a ``functools.partial`` wraps (as Lightning
    does), or of a partial's arguments; ``None`` when absent."""
    seen = 0
    while closure is not None and seen < 8:
        value = getattr(closure, name, None)
        if value is not None:
            return value
        if not isinstance(closure, functools.partial):
            return None
        for arg in closure.args:
            value = getattr(arg, name, None)
            if value is not None:
                return value
        closure, seen = closure.func, seen + 1
    return None


def declares_forward_only_trials(closure: Any) -> bool:
    """Whether ``closure`` carries ``forward_only_trials = True`` (see :func:`closure_attribute`)."""
    return bool(closure_attribute(closure, "forward_only_trials"))


def declared_trial_modules(closure: Any) -> List[nn.Module]:
    """The modules ``closure`` declares with ``closure.trial_modules`` (a module or a sequence)."""
    declared = closure_attribute(closure, "trial_modules")
    if declared is None:
        return []
    if isinstance(declared, nn.Module):
        return [declared]
    return [m for m in declared if isinstance(m, nn.Module)]


class ClosureEvaluator:
    """Evaluates one step's closure: the first evaluation with gradients, then trials.

    Use it as a context manager: on leaving, the RNG is left as the first evaluation left it (as if
    the trials had never run), whether the step ended normally or raised.

    Args:
        closure: the user's closure.
        params: every parameter of the optimizer's groups, frozen ones included: their ``grad`` is
            cleared before the first evaluation, so a parameter that gets no gradient in this step
            (frozen, or unused) is recognised and left alone, and the closure style is detected.
        name: the optimizer's class name, for error messages.
        modules: the optimizer's :class:`ModuleCache` (buffer protection and FSDP2 resharding).
        grad_scaler: a ``torch.amp.GradScaler`` when the step runs under fp16 loss scaling.
        sharded: some parameters are ``DTensor`` shards (FSDP2): FSDP2 modules are resharded after
            each trial.
        trials: whether trials may follow the first evaluation. ``False`` (an amortized step that
            will not search) skips the RNG capture and the buffer bookkeeping, which only trials need.
    """

    def __init__(
        self,
        closure: Callable[[], Any],
        params: List[Tensor],
        name: str,
        modules: Optional[ModuleCache] = None,
        grad_scaler: Optional[Any] = None,
        sharded: bool = False,
        trials: bool = True,
    ):
        self.closure = closure
        self.params = params
        self.name = name
        self.grad_scaler = grad_scaler
        self.closure_runs_backward = False
        #: the closure runs backward() itself on the first evaluation but only evaluates under
        #: torch.no_grad() (see alsals.micro_batch_closure): its trials need no gradients
        self.forward_only_trials = declares_forward_only_trials(closure)
        self._sharded = sharded
        self._fsdp_modules: List[nn.Module] = []
        self.evaluations = 0
        self.backward_passes = 0
        self.trials_expected = trials
        # Only trials need the buffer bookkeeping (an amortized step skips it, and the RNG capture).
        self._guard = (
            BufferGuard(modules if modules is not None else ModuleCache(), declared_trial_modules(closure))
            if trials
            else None
        )
        self._rng_before = RandomState(p.device for p in params if p.device.type == "cuda") if trials else None
        self._rng_after: Optional[RandomState] = None

    def __enter__(self) -> "ClosureEvaluator":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.finish()

    @property
    def trials_run_backward(self) -> bool:
        """Whether trial evaluations run a backward pass (closures in the LBFGS style): they then
        replace the parameters' gradients."""
        return self.closure_runs_backward and not self.forward_only_trials

    def first(self) -> Tensor:
        """Evaluate at the current weights and leave the gradient in ``p.grad``.

        Returns the loss, detached (unscaled when a grad scaler is used).
        """
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            raw = self._guard.run_first(self.closure) if self._guard is not None else self.closure()
            loss = check_loss(raw, self.name)
            self.evaluations += 1
            self.closure_runs_backward = any(p.grad is not None for p in self.params)
            if self.closure_runs_backward:
                self.backward_passes += 1
            elif loss.requires_grad:
                if self.grad_scaler is not None:
                    self.grad_scaler.scale(loss).backward()
                else:
                    loss.backward()
                self.backward_passes += 1
            elif any(p.requires_grad for p in self.params):
                raise ValueError(
                    f"The closure passed to {self.name}.step() returned a loss that does not require "
                    "grad and computed no gradients. Return the loss built from the model's "
                    "parameters (do not call .detach() or run it under torch.no_grad())."
                )
            # else: every parameter is frozen; there is nothing to differentiate (a no-op step)
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(
                    f"{self.name} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                    "use dense gradients, e.g. nn.Embedding(..., sparse=False)."
                )
        if self._guard is not None:
            self._guard.snapshot()
            if self._sharded:
                fsdp_module_class = _fsdp_module_class()
                if fsdp_module_class is not None:
                    self._fsdp_modules = [m for m in self._guard.modules() if isinstance(m, fsdp_module_class)]
            self._rng_after = RandomState(p.device for p in self.params if p.device.type == "cuda")
        return loss.detach()

    def trial(self) -> Tensor:
        """Evaluate at the current (trial) weights with the first evaluation's random draws.

        Forward-only closures run under ``torch.no_grad()``. Closures that run ``backward()``
        themselves run with gradients enabled (their trial gradients are discarded: this costs a
        backward pass per trial, see the README), unless they set ``forward_only_trials = True``.
        """
        if self._rng_before is None or self._guard is None:
            raise RuntimeError("ClosureEvaluator was created with trials=False")
        self._rng_before.restore()
        with_grad = self.trials_run_backward
        grad_mode = torch.enable_grad() if with_grad else torch.no_grad()
        try:
            with grad_mode:
                loss = check_loss(self.closure(), self.name)
        finally:
            self._guard.restore()
            # FSDP2 modules that keep their unsharded parameters after forward (the root, by default)
            # would reuse them in the next forward although the shards moved: free them (local, no
            # collective); the next forward all-gathers the shards as the optimizer left them.
            for module in self._fsdp_modules:
                module.reshard()  # type: ignore[operator]
        self.evaluations += 1
        if with_grad:
            self.backward_passes += 1
        return loss.detach()

    def finish(self) -> None:
        """Leave the RNG as the first evaluation left it (no trace of the trials)."""
        if self._rng_after is not None and self.evaluations > 1:
            self._rng_after.restore()
