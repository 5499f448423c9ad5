"""Hugging Face ``transformers`` integration: :class:`ALSALSTrainer`, a ``Trainer`` that trains with ALSALS.

The ``Trainer`` runs ``training_step`` (forward and backward) on each micro-batch, clips the gradients
(``max_grad_norm``), then calls ``optimizer.step()`` *without a closure*, then steps its LR scheduler.
:class:`ALSALSTrainer` keeps that loop as it is and supplies the closure the line search needs:

- ``training_step`` runs the Trainer's own ``training_step`` (so the gradients are computed once per
  step, by ``accelerator.backward``, exactly as with AdamW) and remembers the micro-batches of the
  step, their loss, and the random-number state before the first of them;
- ``optimizer.step()`` reaches an adapter around :class:`~alsals.ALSALS` that calls
  ``ALSALS.step(closure)``: the closure's first call hands back the gradients already computed (after
  the Trainer's clipping) and the step's loss; its trial calls re-run the Trainer's ``training_step``
  on the same micro-batches under ``torch.no_grad()`` with the backward pass switched off (the same
  loss computation, autocast and gradient-accumulation normalisation, the same dropout masks; the
  closure declares the model (``closure.trial_modules``), so its buffers, BatchNorm statistics and
  any other, are put back after each trial as the core optimizer does): a trial costs one forward
  pass per micro-batch;
- the Trainer's LR scheduler drives ALSALS's ``lr`` *multiplier*: ``TrainingArguments.learning_rate``
  is the peak multiplier on the searched step size (use ``learning_rate=1.0``; warmup and decay then
  scale the committed step while the search keeps finding ``η``);
- the Trainer's logs (``trainer.state.log_history`` and every reporter) get ``alsals_step_size`` (the
  last accepted ``η``), and ``alsals_backtracks`` and ``alsals_forward_evaluations`` per step (means
  over the logging interval; the interval's start is saved in checkpoints, so a run resumed with
  ``resume_from_checkpoint`` logs the same values).

Gradient accumulation works: the trials evaluate every micro-batch of the step. ``max_grad_norm``
clips the gradient before the direction is formed, as it does for AdamW. Not supported: ``fp16=True``
(use ``bf16=True``), DeepSpeed (it owns the optimizer step).

Needs ``transformers`` and ``accelerate``: ``pip install 'alsals[transformers]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, cast

import torch
from torch import nn

from ..closure import RandomState
from ..layerwise import LayerwiseALSALS
from ..optimizer import ALSALS
from . import LINE_SEARCH_OPTIMIZERS, _missing_extra

try:
    from transformers import Trainer, TrainingArguments
except ImportError as _error:  # pragma: no cover - exercised in a subprocess by the tests
    raise _missing_extra("transformers", "transformers", _error) from _error

__all__ = ["ALSALSTrainer", "ClosureStepAdapter"]


class ClosureStepAdapter(torch.optim.Optimizer):
    """Lets a caller that runs ``optimizer.step()`` without arguments drive :class:`~alsals.ALSALS`.

    ``step()`` asks ``make_closure()`` for the closure of the current step and runs
    ``optimizer.step(closure)``; ``step(closure)`` passes the given closure through. Everything else
    (``param_groups``, ``state``, ``state_dict``, ``zero_grad``; ``step_size``, ``counters``,
    ``search_state``) is the wrapped optimizer's, so LR schedulers and checkpoints see ALSALS itself.
    Like ``accelerate``'s ``AcceleratedOptimizer``, it does not call ``Optimizer.__init__``.
    """

    #: the key under which :meth:`state_dict` saves :attr:`log_window` beside ALSALS's own state
    LOG_WINDOW_KEY = "alsals_log_window"

    def __init__(self, optimizer: Any, make_closure: Callable[[], Callable[[], Any]]):
        self.optimizer = optimizer
        self.make_closure = make_closure
        #: the counters at the last log (``ALSALSTrainer`` averages its logged values since then);
        #: saved in checkpoints, so a resumed run averages over the same window
        self.log_window: Optional[Dict[str, int]] = None

    # the wrapped optimizer's data -------------------------------------------------------------
    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: List[Dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> Dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: Dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def step_size(self) -> float:
        return self.optimizer.step_size

    @property
    def counters(self) -> Dict[str, int]:
        return self.optimizer.counters

    @property
    def search_state(self) -> Dict[str, Any]:
        return self.optimizer.search_state

    def state_dict(self) -> Dict[str, Any]:
        state = self.optimizer.state_dict()
        if self.log_window is not None:
            state[self.LOG_WINDOW_KEY] = dict(self.log_window)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        window = state_dict.pop(self.LOG_WINDOW_KEY, None)
        self.optimizer.load_state_dict(state_dict)
        self.log_window = {k: int(v) for k, v in window.items()} if window is not None else self.optimizer.counters

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        return self.optimizer.step(closure if closure is not None else self.make_closure())

    def eval(self) -> None:
        """The wrapped optimizer's :meth:`~alsals.ALSALS.eval` (the Trainer calls it before evaluating):
        the average of the iterates into the parameters, when ALSALS keeps one."""
        self.optimizer.eval()

    def train(self) -> None:
        """The wrapped optimizer's :meth:`~alsals.ALSALS.train` (the Trainer calls it before each
        training step): the iterates back."""
        self.optimizer.train()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"


def _find_adapter(optimizer: Any) -> Optional[ClosureStepAdapter]:
    """The adapter inside the wrappers (``AcceleratedOptimizer`` and the like), if any."""
    for _ in range(8):
        if isinstance(optimizer, ClosureStepAdapter):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        if optimizer is None:
            return None
    return None


class ALSALSTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with :class:`~alsals.ALSALS` (see the module docstring).

    Use it as the ``Trainer``, with ``learning_rate=1.0`` (the peak of the ``lr`` multiplier, not a
    learning rate)::

        args = TrainingArguments(output_dir="out", learning_rate=1.0, lr_scheduler_type="cosine", ...)
        trainer = ALSALSTrainer(model=model, args=args, train_dataset=data)
        trainer.train()

    The optimizer is ``ALSALS(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
    eps=args.adam_epsilon)`` with the Trainer's weight-decay groups (``args.weight_decay`` on the
    weights, none on biases and norms) and ``**alsals_kwargs``; with ``layerwise=True`` it is
    :class:`~alsals.LayerwiseALSALS` ``(model, groups, ...)`` with the same settings (one step size
    per part of the model, found below the levels that only wrap: a GPT-2's ``transformer.wte``,
    ``transformer.h``, ...; where a model's body sits beside a head of its own, as BERT's ``bert``
    beside ``classifier``, the body is one part: pass ``alsals_kwargs={"part_of": "blocks"}`` or a
    function of the parameter's name to split it). To
    choose another optimizer of the library (a preset, other settings, a ``LayerwiseALSALS`` built
    yourself) pass ``optimizers=(opt, None)`` or ``optimizer_cls_and_kwargs=(alsals.SaLSa, {...})`` as
    to any ``Trainer``.

    Args:
        *args, **kwargs: those of ``transformers.Trainer``.
        alsals_kwargs: extra keywords for :class:`ALSALS` (e.g. ``initial_step_size``, ``c``), or for
            :class:`~alsals.LayerwiseALSALS` with ``layerwise=True`` (also ``part_of``, ``combined_test``).
        layerwise: train with :class:`~alsals.LayerwiseALSALS` instead of :class:`ALSALS`.
    """

    def __init__(self, *args: Any, alsals_kwargs: Optional[Dict[str, Any]] = None, layerwise: bool = False,
                 **kwargs: Any):
        self.alsals_kwargs = dict(alsals_kwargs or {})
        self.layerwise = bool(layerwise)
        self._alsals_window: List[Tuple[nn.Module, Dict[str, Any], Any]] = []
        self._alsals_window_loss: Optional[torch.Tensor] = None
        self._alsals_window_rng: Optional[RandomState] = None
        super().__init__(*args, **kwargs)
        self._check_alsals_args()

    # ------------------------------------------------------------------------------------------
    # Configuration
    # ------------------------------------------------------------------------------------------

    def _check_alsals_args(self) -> None:
        args = self.args
        if args.fp16:
            raise ValueError(
                "ALSALSTrainer does not support fp16=True: the Trainer's GradScaler steps the optimizer without "
                "the closure the line search needs. Use bf16=True, or a custom loop with "
                "opt.step(closure, grad_scaler=scaler) (see alsals docs/integrations.md)."
            )
        if getattr(self, "is_deepspeed_enabled", False):
            raise ValueError("ALSALSTrainer does not support DeepSpeed: DeepSpeed owns the optimizer step.")
        uses_own_optimizer = self.optimizer is None and getattr(self, "optimizer_cls_and_kwargs", None) is None
        default_lr = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}.get("learning_rate")
        if uses_own_optimizer and args.learning_rate == default_lr:
            warnings.warn(
                f"TrainingArguments.learning_rate={args.learning_rate} is the Trainer's default for AdamW. With "
                "ALSALS it is the multiplier on the searched step size (the peak of the LR schedule): "
                f"{args.learning_rate} shrinks every step {1 / args.learning_rate:.0f}-fold. Pass learning_rate=1.0.",
                UserWarning,
                stacklevel=3,
            )

    def get_optimizer_cls_and_kwargs(  # type: ignore[override]
        self, args: TrainingArguments, model: Optional[nn.Module] = None
    ) -> Tuple[Any, Dict[str, Any]]:
        """:class:`ALSALS` with ``lr=args.learning_rate`` (the peak multiplier), Adam's betas and eps
        from ``args``, and ``alsals_kwargs`` (instead of ``args.optim``)."""
        kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
        return ALSALS, {**kwargs, **self.alsals_kwargs}

    def create_optimizer(self, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
        """Create :class:`ALSALS` (unless an optimizer was given) and wrap it in a
        :class:`ClosureStepAdapter`, so the Trainer's ``optimizer.step()`` runs the line search."""
        if _find_adapter(self.optimizer) is not None:
            return cast(torch.optim.Optimizer, self.optimizer)
        if self.layerwise and self.optimizer is None and getattr(self, "optimizer_cls_and_kwargs", None) is None:
            optimizer: torch.optim.Optimizer = self._create_layerwise(cast(nn.Module, self.model if model is None else model))
        else:
            optimizer = super().create_optimizer(model)
        if not isinstance(optimizer, LINE_SEARCH_OPTIMIZERS):
            raise TypeError(
                f"ALSALSTrainer needs an alsals.ALSALS optimizer (a preset, or alsals.LayerwiseALSALS), got "
                f"{type(optimizer).__name__}. Use transformers.Trainer for other optimizers."
            )
        self.optimizer = ClosureStepAdapter(optimizer, self._line_search_closure)
        return self.optimizer

    def _create_layerwise(self, model: nn.Module) -> LayerwiseALSALS:
        """:class:`~alsals.LayerwiseALSALS` over the Trainer's weight-decay groups, with the settings
        :meth:`get_optimizer_cls_and_kwargs` gives ALSALS."""
        decay = set(self.get_decay_parameter_names(model))
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in trained if n in decay], "weight_decay": self.args.weight_decay},
                  {"params": [p for n, p in trained if n not in decay], "weight_decay": 0.0}]
        _, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        return LayerwiseALSALS(model, [g for g in groups if g["params"]], **kwargs)

    @property
    def alsals_optimizer(self) -> Optional[Any]:
        """The :class:`ALSALS` (or :class:`~alsals.LayerwiseALSALS`) instance the Trainer steps
        (``None`` before training creates it)."""
        adapter = _find_adapter(self.optimizer)
        return adapter.optimizer if adapter is not None else None

    # ------------------------------------------------------------------------------------------
    # The step: the Trainer's training_step is the first evaluation, trials re-run it without backward
    # ------------------------------------------------------------------------------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: Dict[str, Any],
        num_items_in_batch: Optional[Any] = None,
    ) -> torch.Tensor:
        """The Trainer's ``training_step`` (forward and backward), remembered for the line search."""
        if not self._alsals_window:
            params = [p for p in model.parameters() if p.device.type == "cuda"]
            self._alsals_window_rng = RandomState(p.device for p in params)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._alsals_window.append((model, inputs, num_items_in_batch))
        total = self._alsals_window_loss
        self._alsals_window_loss = loss if total is None else total + loss
        return loss

    @contextlib.contextmanager
    def _backward_switched_off(self) -> Iterator[None]:
        accelerator = self.accelerator
        patched = "backward" in vars(accelerator)
        original = vars(accelerator).get("backward")
        accelerator.backward = lambda loss, **kwargs: None
        try:
            yield
        finally:
            if patched:
                accelerator.backward = original
            else:
                del accelerator.backward

    def _trial_loss(self, window: List[Tuple[nn.Module, Dict[str, Any], Any]]) -> torch.Tensor:
        """The step's loss at the current (trial) weights: the Trainer's ``training_step`` on every
        micro-batch, under ``torch.no_grad()``, without the backward pass."""
        total: Optional[torch.Tensor] = None
        with torch.no_grad(), self._backward_switched_off():
            for model, inputs, num_items_in_batch in window:
                loss = Trainer.training_step(self, model, inputs, num_items_in_batch)
                total = loss if total is None else total + loss
        assert total is not None
        return total

    def _line_search_closure(self) -> Callable[[], torch.Tensor]:
        """The closure of the current step (called by the adapter when the Trainer steps)."""
        window, loss, rng = self._alsals_window, self._alsals_window_loss, self._alsals_window_rng
        self._alsals_window, self._alsals_window_loss, self._alsals_window_rng = [], None, None
        if not window or loss is None or rng is None:
            raise RuntimeError(
                "ALSALSTrainer's optimizer.step() ran without a training_step before it: the line search "
                "evaluates the micro-batches that training_step saw."
            )
        optimizer = self.alsals_optimizer
        assert optimizer is not None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        calls = 0

        def closure() -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:  # the first evaluation already ran in training_step: its gradients and loss
                for p, g in zip(params, grads):
                    p.grad = g
                return loss
            rng.restore()  # the dropout masks of the first evaluation
            return self._trial_loss(window)

        # The first call hands back gradients (the LBFGS convention); trials need none.
        closure.forward_only_trials = True  # type: ignore[attr-defined]
        # The first call runs no module (training_step already ran): declare the modules whose
        # buffers (BatchNorm statistics, EMA codebooks, ...) the trials must leave as they are now.
        models: List[nn.Module] = []
        for model, _, _ in window:
            if all(model is not m for m in models):
                models.append(model)
        closure.trial_modules = models  # type: ignore[attr-defined]
        return closure

    # ------------------------------------------------------------------------------------------
    # Logging
    # ------------------------------------------------------------------------------------------

    def log(self, logs: Dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the line search's numbers to the training logs (those with a ``loss``)."""
        optimizer = self.alsals_optimizer
        adapter = _find_adapter(self.optimizer)
        if optimizer is not None and adapter is not None and "loss" in logs:
            counters = optimizer.counters
            last = adapter.log_window or {k: 0 for k in counters}
            steps = counters["steps"] - last["steps"]
            logs["alsals_step_size"] = optimizer.step_size
            if steps > 0:
                logs["alsals_backtracks"] = (counters["backtracks"] - last["backtracks"]) / steps
                logs["alsals_forward_evaluations"] = (
                    counters["forward_evaluations"] - last["forward_evaluations"]
                ) / steps
            adapter.log_window = counters
        super().log(logs, *args, **kwargs)
