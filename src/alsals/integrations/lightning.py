"""PyTorch Lightning integration: logging the line search, forward-only trials, configuration checks.

``configure_optimizers`` may return :class:`~alsals.ALSALS` as it is. Lightning's automatic optimisation
passes ``optimizer.step`` a closure that runs ``training_step``, ``zero_grad`` and ``backward``: ALSALS
detects that the closure ran the backward pass itself and stays correct, but then every trial of the
line search also runs ``training_step`` *and* a backward pass, and ``self.log`` calls in
``training_step`` record the last trial's values. Three ways to use it (``docs/integrations.md`` has the
code and the measured cost of each):

1. automatic optimisation, as it is: simplest, costs a backward pass per trial;
2. automatic optimisation with the :class:`ForwardOnlyTrials` mixin: trials run ``training_step``
   under ``torch.no_grad()`` without ``zero_grad``/``backward``, and ``self.log`` is silent in trials;
3. manual optimisation: ``loss = self.optimizers().step(lambda: loss_fn(self(x), y))`` in
   ``training_step``: trials are forward-only by construction.

:class:`StepSizeLogger` logs the accepted step size, the backtracks and the forward evaluations of
every step through the trainer's logger, and :func:`check_trainer` rejects the settings that cannot
work with a line search (it runs in both the callback and the mixin).

Needs the ``lightning`` package: ``pip install 'alsals[lightning]'``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch

from ..layerwise import LayerwiseALSALS
from . import LINE_SEARCH_OPTIMIZERS, _missing_extra

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as _error:  # pragma: no cover - exercised in a subprocess by the tests
    raise _missing_extra("lightning", "lightning", _error) from _error

__all__ = ["StepSizeLogger", "EvaluateAverage", "ForwardOnlyTrials", "check_trainer", "alsals_optimizers"]


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's ``LightningOptimizer`` (or the object itself)."""
    return getattr(optimizer, "_optimizer", optimizer)


def alsals_optimizers(trainer: "pl.Trainer") -> List[Any]:
    """The :class:`~alsals.ALSALS` optimizers (presets included) and :class:`~alsals.LayerwiseALSALS`
    optimizers among the trainer's optimizers."""
    return [opt for opt in map(_unwrap, trainer.optimizers) if isinstance(opt, LINE_SEARCH_OPTIMIZERS)]


def check_trainer(trainer: "pl.Trainer") -> None:
    """Raise a ``ValueError`` for Trainer settings that cannot work with a closure-driven line search.

    - ``accumulate_grad_batches > 1`` with automatic optimisation: Lightning runs the closures of the
      accumulated batches outside ``optimizer.step``, so the search could only see the last batch (and
      the accumulated gradients would be discarded). Use a larger batch instead, or manual
      optimisation with a closure over all micro-batches (``alsals.micro_batch_closure``).
    - fp16 AMP (``precision="16-mixed"``): Lightning's fp16 plugin runs the closure itself and then
      calls ``optimizer.step()`` without it. Use ``precision="bf16-mixed"`` (no scaler needed), or
      manual optimisation with ``opt.step(closure, grad_scaler=scaler)`` (``docs/integrations.md``).
    """
    if not alsals_optimizers(trainer):
        return
    module = trainer.lightning_module
    if module is not None and module.automatic_optimization and trainer.accumulate_grad_batches > 1:
        raise ValueError(
            f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) cannot be used with ALSALS in "
            "automatic optimisation: Lightning evaluates the accumulated batches outside optimizer.step(), so "
            "the line search would see only the last batch. Use a larger batch_size instead, or manual "
            "optimisation with a closure over all micro-batches (alsals.micro_batch_closure)."
        )
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            "ALSALS cannot run under Lightning's fp16 AMP (precision='16-mixed'): its GradScaler plugin calls "
            "the closure itself and then optimizer.step() without it. Use precision='bf16-mixed', or manual "
            "optimisation with loss = opt.step(closure, grad_scaler=scaler); scaler.update()."
        )


class StepSizeLogger(Callback):
    """Logs the line search of every :class:`~alsals.ALSALS` (or :class:`~alsals.LayerwiseALSALS`)
    optimizer after each training batch.

    Through ``pl_module.log`` (so every logger attached to the trainer receives them, at the trainer's
    ``log_every_n_steps``), per step:

    - ``{prefix}/step_size``: the accepted step size ``η`` (before the ``lr`` multiplier);
    - ``{prefix}/backtracks``: the backtracks of this step's search;
    - ``{prefix}/forward_evaluations``: the closure evaluations of this step (first + trials);
    - ``{prefix}/loss`` (``log_loss=True``): the loss of the first evaluation, i.e. at the weights
      before the step (in automatic optimisation without :class:`ForwardOnlyTrials`, ``self.log`` in
      ``training_step`` records the last trial's loss instead);
    - for :class:`~alsals.LayerwiseALSALS`, also ``{prefix}/step_size/{part}`` (each part's step size;
      ``{prefix}/step_size`` is then their geometric mean times the scale) and
      ``{prefix}/combined_scale`` (the combined step's carried scale).

    The counts are this batch's increments of :attr:`ALSALS.counters` (cumulative totals are in
    ``opt.counters``). With several ALSALS optimizers the prefix gets the optimizer's index
    (``alsals_1/step_size``). The callback also runs :func:`check_trainer` when fitting starts.

    Args:
        prefix: the metric names' prefix.
        log_loss: also log the first evaluation's loss.
        prog_bar: show the step size in the progress bar.
    """

    def __init__(self, prefix: str = "alsals", log_loss: bool = True, prog_bar: bool = False):
        super().__init__()
        self.prefix = prefix
        self.log_loss = log_loss
        self.prog_bar = prog_bar
        self._before: List[Dict[str, int]] = []

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        check_trainer(trainer)

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        self._before = [opt.counters for opt in alsals_optimizers(trainer)]

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        optimizers = alsals_optimizers(trainer)
        for index, (opt, before) in enumerate(zip(optimizers, self._before)):
            after = opt.counters
            if after["steps"] == before["steps"]:
                continue  # no step this batch (e.g. skipped by training_step returning None)
            prefix = self.prefix if index == 0 else f"{self.prefix}_{index}"
            metrics = {
                f"{prefix}/step_size": opt.step_size,
                f"{prefix}/backtracks": float(after["backtracks"] - before["backtracks"]),
                f"{prefix}/forward_evaluations": float(after["forward_evaluations"] - before["forward_evaluations"]),
            }
            if isinstance(opt, LayerwiseALSALS):  # each part's step size, and the combined step's scale
                metrics.update({f"{prefix}/step_size/{part}": size for part, size in opt.step_sizes.items()})
                metrics[f"{prefix}/combined_scale"] = float(opt.scale)
            if self.log_loss:
                metrics[f"{prefix}/loss"] = float(opt.search_state["last_loss"])
            for name, value in metrics.items():
                pl_module.log(
                    name,
                    value,
                    on_step=True,
                    on_epoch=False,
                    prog_bar=self.prog_bar and name.endswith("/step_size"),
                    batch_size=1,
                )


class EvaluateAverage(Callback):
    """Validate, test and predict at ALSALS's average of the iterates, and train at the iterates.

    Without ``total_steps`` :class:`~alsals.ALSALS` keeps a polynomial-decay average of its iterates
    (``average=None``, the default); Lightning does not call ``optimizer.eval()``/``optimizer.train()``
    itself (the Hugging Face Trainer does), so this callback does, for every ALSALS optimizer:
    ``opt.eval()`` when a validation, test or predict loop starts, ``opt.train()`` when the next
    training batch starts. In between, the model holds the weights that were evaluated: a checkpoint
    written after validation (``ModelCheckpoint`` runs after every other callback) holds the average
    that earned its score, with the optimizer state that swaps the iterates back when training
    resumes, and after ``fit()`` the model holds the average of its last validation (call
    ``opt.train()`` for the last iterate). With ``total_steps`` (no average) it changes nothing.
    """

    @staticmethod
    def _to_average(trainer: "pl.Trainer") -> None:
        for opt in alsals_optimizers(trainer):
            opt.eval()

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._to_average(trainer)

    def on_test_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._to_average(trainer)

    def on_predict_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._to_average(trainer)

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        for opt in alsals_optimizers(trainer):
            opt.train()


class _SkipStep(Exception):
    """Raised from the closure when ``training_step`` returned ``None`` (Lightning's "skip this step")."""


class ForwardOnlyTrials:
    """LightningModule mixin: automatic optimisation whose line-search trials are forward-only.

    Put it before ``LightningModule`` in the bases::

        class Model(ForwardOnlyTrials, L.LightningModule):
            def training_step(self, batch, batch_idx): ...   # unchanged
            def configure_optimizers(self):
                return alsals.ALSALS(self.parameters())

    For an :class:`~alsals.ALSALS` optimizer, :meth:`optimizer_step` hands the optimizer a closure
    whose first call is Lightning's own (``training_step``, ``zero_grad``, ``backward``, then gradient
    clipping and the ``on_before_optimizer_step`` hooks as usual), and whose trial calls run only
    Lightning's ``training_step`` under ``torch.no_grad()`` (the strategy's wrappers and the precision
    plugin's autocast included): no graph, no ``zero_grad`` and no backward pass, so a trial costs a
    forward pass as in plain PyTorch. During trials ``self.log`` does nothing, so what
    ``training_step`` logs is the first evaluation's value, and the outputs passed to
    ``on_train_batch_end`` are the first evaluation's. A ``training_step`` that returns ``None`` skips
    the step, as in Lightning. Other optimizers are stepped as usual.

    If you override ``optimizer_step``, ``optimizer_zero_grad``, ``backward`` or ``log`` yourself, call
    ``super()``. Side effects of ``training_step`` other than logging (e.g. updating a torchmetrics
    metric) still happen in every trial: keep them out of ``training_step`` or guard them with
    ``if not self.in_line_search_trial``.
    """

    _alsals_trial: bool = False

    @property
    def in_line_search_trial(self) -> bool:
        """True while the line search evaluates a trial step (``training_step`` is then a trial)."""
        return self._alsals_trial

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Optional[Callable[[], Any]] = None,
    ) -> None:
        if optimizer_closure is None or not isinstance(_unwrap(optimizer), LINE_SEARCH_OPTIMIZERS):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        check_trainer(self.trainer)  # type: ignore[attr-defined]
        step_fn = getattr(optimizer_closure, "_step_fn", None)  # Lightning's training_step runner
        first: List[Any] = []

        def closure() -> Any:
            if not first:
                loss = optimizer_closure()
                first.append(getattr(optimizer_closure, "_result", None))
                if loss is None:
                    raise _SkipStep
                return loss
            self._alsals_trial = True
            try:
                if step_fn is None:  # another Lightning version: the full closure, backward skipped below
                    return optimizer_closure()
                with torch.no_grad():
                    result = step_fn()  # a ClosureResult: the loss with its (here absent) graph
                return getattr(result, "closure_loss", result)
            finally:
                self._alsals_trial = False

        # Its first call runs the backward pass itself; its trials need no gradients. (Lightning's
        # precision plugin hands ALSALS a functools.partial around this closure.)
        closure.forward_only_trials = True  # type: ignore[attr-defined]
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, closure)  # type: ignore[misc]
        except _SkipStep:
            pass
        finally:
            if first and first[0] is not None:
                optimizer_closure._result = first[0]  # type: ignore[attr-defined]

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        if not self._alsals_trial:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)  # type: ignore[misc]

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if not self._alsals_trial:
            super().backward(loss, *args, **kwargs)  # type: ignore[misc]

    def log(self, *args: Any, **kwargs: Any) -> None:
        if not self._alsals_trial:
            super().log(*args, **kwargs)  # type: ignore[misc]
