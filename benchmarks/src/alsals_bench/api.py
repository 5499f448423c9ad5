"""The interfaces shared by the benchmark's pieces: a task, and one built instance of it.

A :class:`Task` describes a training problem on real offline data. ``Task.build(seed)`` returns a
:class:`TaskInstance` holding freshly initialised weights (identical for every optimizer for a given
seed) and the data. The harness draws batches itself through ``TaskInstance.batch(indices)``, with
indices from its own ``torch.Generator``, so that every optimizer sees the same batch order per seed
(the reference packages re-seed numpy's global RNG, which must not change what we feed them).

Every task declares its *split*: ``"dev"`` tasks are the ones the defaults of ``alsals`` may be
chosen on; ``"test"`` tasks are run with the final defaults and reported as they come out (see
``docs/benchmarks.md``). Every task also declares its *training recipe* for the tuned baselines:
the weight decay (applied to weight matrices and embeddings only, as practitioners do) and the
gradient clipping (1.0 on transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: "dev" and "test" make the benchmark, "holdout" (the twelfth round's) is a second test split added
#: after the first had been seen; "scale" holds the scale suite's tasks (one model at growing
#: size), which no dev/test split, summary or suite without a task list includes
SPLITS = ("dev", "test", "holdout", "scale")
#: the splits a benchmark report summarises, in its order
REPORTED_SPLITS = ("dev", "test", "holdout")
FAMILIES = ("image", "tabular", "text", "language_model")
KINDS = ("classification", "regression", "language_model")

#: the weight decay of the practitioner's recipe: GPT-2 / nanoGPT use 0.1 on transformers,
#: torch.optim.AdamW's default (0.01) elsewhere
WEIGHT_DECAY_TRANSFORMER = 0.1
WEIGHT_DECAY_DEFAULT = 0.01
#: gradient clipping (global L2 norm) on transformers
GRAD_CLIP_TRANSFORMER = 1.0


@dataclass
class TaskInstance:
    """One task, built for one seed: a model and the data splits."""

    model: nn.Module
    #: number of training examples (batch indices are drawn from ``range(n_train)``)
    n_train: int
    #: ``batch(indices) -> batch``: the training batch for a 1-D LongTensor of indices
    batch: Callable[[torch.Tensor], Any]
    #: ``loss(model, batch) -> scalar tensor``: the training loss (mean over the batch)
    loss: Callable[[nn.Module, Any], torch.Tensor]
    #: ``evaluate(model, split) -> dict``: metrics on "val" (model selection) or "test" (held out);
    #: always holds "loss", plus "accuracy" for classifiers, "mse" for regressions or
    #: "nats_per_byte" for language models.
    evaluate: Callable[[nn.Module, str], dict]


@dataclass
class Task:
    """A benchmark task: name, split, sizes, recipe and a builder."""

    name: str
    #: "classification", "regression" or "language_model"
    kind: str
    #: short description for reports ("MLP on sklearn digits, 1,437 train / 180 val / 180 test")
    description: str
    batch_size: int
    #: training steps in the full suite and in the quick suite
    steps_full: int
    steps_quick: int
    #: train loss considered "reached" for the steps-to-target metric
    target_loss: float
    #: name of the held-out metric reported in tables ("accuracy", "mse" or "nats_per_byte")
    metric: str
    #: True when a larger value of ``metric`` is better
    metric_higher_is_better: bool
    #: ``build(seed) -> TaskInstance``
    build: Callable[[int], TaskInstance]
    #: "dev" (defaults may be chosen here) or "test" (never used to choose anything)
    split: str = "dev"
    #: "image", "tabular", "text" (classification of text) or "language_model"
    family: str = "image"
    #: a transformer: weight decay 0.1 and gradient clipping at 1.0 in the practitioner's recipe
    transformer: bool = False
    #: the model has BatchNorm layers (DoG's README asks for ``reps_rel=1e-4`` there)
    batchnorm: bool = False
    #: extra notes shown in reports
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"task {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def weight_decay(self) -> float:
        """The weight decay of the practitioner's recipe on this task."""
        return WEIGHT_DECAY_TRANSFORMER if self.transformer else WEIGHT_DECAY_DEFAULT

    @property
    def grad_clip(self) -> float | None:
        """The gradient-norm clipping of the practitioner's recipe (None: no clipping)."""
        return GRAD_CLIP_TRANSFORMER if self.transformer else None

    def describe(self) -> dict:
        """The task's settings, for a run's record."""
        return {
            "name": self.name, "split": self.split, "family": self.family, "kind": self.kind,
            "description": self.description, "batch_size": self.batch_size,
            "steps_full": self.steps_full, "steps_quick": self.steps_quick,
            "target_loss": self.target_loss, "metric": self.metric,
            "metric_higher_is_better": self.metric_higher_is_better,
            "transformer": self.transformer, "batchnorm": self.batchnorm,
            "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "notes": dict(self.notes),
        }
