"""Evaluating the user's closure so that trial evaluations leave no trace.

Within one optimizer step the closure is evaluated once at the current weights (with gradients)
and then at trial weights (the line search). Every evaluation must see the same batch and the same
random draws, and the trials must not change the training run:

- :class:`RandomState` captures the torch RNG state of the CPU and of every CUDA device in use
  before the first evaluation, restores it before each trial (dropout draws the same masks, so a
  trial at step size 0 reproduces the first loss exactly), and finally restores the state left by
  the first evaluation, so the run's random stream is as if only that evaluation had happened.
- :class:`BufferGuard` records which module buffers the first evaluation changed (BatchNorm's
  running statistics and counters) and puts them back after each trial, so after ``step()`` the
  buffers are exactly those left by the first evaluation alone.
- :class:`ClosureEvaluator` detects the closure style (forward-only, or the ``torch.optim.LBFGS``
  convention that runs ``zero_grad()`` and ``backward()`` itself), runs the backward pass when the
  closure does not, runs trials under ``torch.no_grad()`` when it can, and validates what the
  closure returns. A closure that runs ``backward()`` itself but only evaluates when gradients are
  disabled declares so with the attribute ``forward_only_trials = True`` (as the closures of
  :func:`alsals.micro_batch_closure` do); its trials then run under ``torch.no_grad()`` too.
- FSDP2 modules (``fully_shard``) that do not reshard after forward (the root module by default)
  keep their all-gathered parameters after a forward pass without backward, and the next forward
  would reuse them although the optimizer moved the shards: the evaluator reshards every FSDP2
  module the closure ran after each trial.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

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


class BufferGuard:
    """Protects module buffers from the side effects of trial evaluations.

    A global forward pre-hook (active only while the closure runs) records every module the closure
    calls, with the version counters of its buffers. After the first evaluation, the buffers that may
    have been updated are cloned once: every buffer of a module that ran in training mode (BatchNorm
    updates its running statistics in place *without* bumping the version counter, so versions alone
    cannot tell), and any other buffer whose version changed or that was replaced. After each trial
    these are restored. A buffer that only a trial changed cannot be restored: a warning says so.
    """

    def __init__(self) -> None:
        self._seen: Dict[int, Tuple[nn.Module, bool, Dict[str, Tuple[Tensor, int]]]] = {}
        self._saved: List[Tuple[nn.Module, str, Tensor, Tensor]] = []
        self._warned = False

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        key = id(module)
        if key in self._seen or not module._buffers:
            return
        versions = {name: (buf, buf._version) for name, buf in module._buffers.items() if buf is not None}
        self._seen[key] = (module, module.training, versions)

    def _changed(self, include_training: bool) -> List[Tuple[nn.Module, str]]:
        """Buffers of the recorded modules that changed (or may have: training-mode modules)."""
        changed = []
        for module, training, versions in self._seen.values():
            for name, (buf, version) in versions.items():
                current = module._buffers.get(name)
                if (include_training and training) or current is not buf or buf._version != version:
                    changed.append((module, name))
        return changed

    def run(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` with the recording hook installed."""
        self._seen.clear()
        handle = nn.modules.module.register_module_forward_pre_hook(self._pre_hook)
        try:
            return fn()
        finally:
            handle.remove()

    def snapshot(self) -> None:
        """After the first evaluation: clone the buffers it changed (their values now)."""
        self._saved = []
        for module, name in self._changed(include_training=True):
            current = module._buffers.get(name)
            if current is not None:
                self._saved.append((module, name, current, current.detach().clone()))
        self._seen.clear()

    def restore(self) -> None:
        """After a trial: put the mutable buffers back to their post-first-evaluation values."""
        saved_ids = {(id(m), n) for m, n, _, _ in self._saved}
        for module, name, original, value in self._saved:
            if module._buffers.get(name) is not original:
                module._buffers[name] = original
            original.copy_(value)
        if not self._warned and any((id(m), n) not in saved_ids for m, n in self._changed(include_training=False)):
            self._warned = True
            warnings.warn(
                "A trial evaluation of the closure changed a module buffer that the first evaluation "
                "did not change; alsals cannot restore it. Make such updates depend only on the "
                "first evaluation (e.g. update them outside the closure).",
                RuntimeWarning,
                stacklevel=4,
            )
        self._seen.clear()


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


class FSDPModules:
    """The FSDP2 modules a closure runs, recorded once, resharded after each trial."""

    def __init__(self, fsdp_module_class: type) -> None:
        self.modules: Dict[int, nn.Module] = {}
        self._class = fsdp_module_class

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, self._class):
            self.modules.setdefault(id(module), module)

    def record(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` wrapped so that it records the FSDP2 modules it calls."""

        def recording() -> Any:
            handle = nn.modules.module.register_module_forward_pre_hook(self._pre_hook)
            try:
                return fn()
            finally:
                handle.remove()

        return recording

    def reshard(self) -> None:
        """Free the unsharded parameters (local only, no collective): the next forward all-gathers
        the shards as the optimizer left them."""
        for module in self.modules.values():
            module.reshard()


def declares_forward_only_trials(closure: Any) -> bool:
    """Whether ``closure`` (or what a ``functools.partial`` wraps, as Lightning does) carries
    ``forward_only_trials = True``."""
    seen = 0
    while closure is not None and seen < 8:
        if getattr(closure, "forward_only_trials", False):
            return True
        if not isinstance(closure, functools.partial):
            return False
        if any(getattr(a, "forward_only_trials", False) for a in closure.args):
            return True
        closure, seen = closure.func, seen + 1
    return False


class ClosureEvaluator:
    """Evaluates one step's closure: the first evaluation with gradients, then trials.

    Args:
        closure: the user's closure.
        params: every parameter the optimizer updates (their ``grad`` is cleared before the first
            evaluation, which is how the closure style is detected).
        name: the optimizer's class name, for error messages.
        grad_scaler: a ``torch.amp.GradScaler`` when the step runs under fp16 loss scaling.
        sharded: some parameters are ``DTensor`` shards (FSDP2): FSDP2 modules are resharded after
            each trial.
        trials: whether trials may follow the first evaluation. ``False`` (an amortised step that
            will not search) skips the RNG capture and the buffer bookkeeping, which only trials need.
    """

    def __init__(
        self,
        closure: Callable[[], Any],
        params: List[Tensor],
        name: str,
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
        fsdp_module_class = _fsdp_module_class() if sharded else None
        self._fsdp = FSDPModules(fsdp_module_class) if fsdp_module_class is not None else None
        self.evaluations = 0
        self.backward_passes = 0
        self.trials_expected = trials
        self._guard = BufferGuard()
        self._rng_before = RandomState(p.device for p in params if p.device.type == "cuda") if trials else None
        self._rng_after: Optional[RandomState] = None

    def first(self) -> Tensor:
        """Evaluate at the current weights and leave the gradient in ``p.grad``.

        Returns the loss, detached (unscaled when a grad scaler is used).
        """
        for p in self.params:
            p.grad = None
        closure = self.closure if self._fsdp is None else self._fsdp.record(self.closure)
        with torch.enable_grad():
            loss = check_loss(self._guard.run(closure) if self.trials_expected else closure(), self.name)
            self.evaluations += 1
            self.closure_runs_backward = any(p.grad is not None for p in self.params)
            if self.closure_runs_backward:
                self.backward_passes += 1
            else:
                if not loss.requires_grad:
                    raise ValueError(
                        f"The closure passed to {self.name}.step() returned a loss that does not require "
                        "grad and computed no gradients. Return the loss built from the model's "
                        "parameters (do not call .detach() or run it under torch.no_grad())."
                    )
                if self.grad_scaler is not None:
                    self.grad_scaler.scale(loss).backward()
                else:
                    loss.backward()
                self.backward_passes += 1
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(
                    f"{self.name} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                    "use dense gradients, e.g. nn.Embedding(..., sparse=False)."
                )
        if self.trials_expected:
            self._guard.snapshot()
            self._rng_after = RandomState(p.device for p in self.params if p.device.type == "cuda")
        return loss.detach()

    def trial(self) -> Tensor:
        """Evaluate at the current (trial) weights with the first evaluation's random draws.

        Forward-only closures run under ``torch.no_grad()``. Closures that run ``backward()``
        themselves run with gradients enabled (their trial gradients are discarded: this costs a
        backward pass per trial, see the README), unless they set ``forward_only_trials = True``.
        """
        if self._rng_before is None:
            raise RuntimeError("ClosureEvaluator was created with trials=False")
        self._rng_before.restore()
        with_grad = self.closure_runs_backward and not self.forward_only_trials
        grad_mode = torch.enable_grad() if with_grad else torch.no_grad()
        try:
            with grad_mode:
                loss = check_loss(self._guard.run(self.closure), self.name)
        finally:
            self._guard.restore()
            if self._fsdp is not None:
                self._fsdp.reshard()
        self.evaluations += 1
        if with_grad:
            self.backward_passes += 1
        return loss.detach()

    def finish(self) -> None:
        """Leave the RNG as the first evaluation left it (no trace of the trials)."""
        if self._rng_after is not None and self.evaluations > 1:
            self._rng_after.restore()
