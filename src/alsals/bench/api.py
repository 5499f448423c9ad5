"""The interfaces shared by the benchmark's pieces: a task, and one run's record.

A :class:`Task` describes a training problem on real offline data. ``Task.build(seed)`` returns a
:class:`TaskInstance` holding freshly initialised weights (identical for every optimizer for a given
seed) and the data. The harness draws batches itself through ``TaskInstance.batch(indices)``, with
indices from its own ``torch.Generator``, so that every optimizer sees the same batch order per seed
(the reference packages re-seed numpy's global RNG, which must not change what we feed them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


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
    #: always holds "loss", plus "accuracy" for classifiers or "nats_per_byte" for language models.
    evaluate: Callable[[nn.Module, str], dict]


@dataclass
class Task:
    """A benchmark task: name, sizes and a builder."""

    name: str
    #: "classification" or "language_model"
    kind: str
    #: short description for reports ("MLP on sklearn digits, 1,437 train / 180 val / 180 test")
    description: str
    batch_size: int
    #: training steps in the full suite and in the quick suite
    steps_full: int
    steps_quick: int
    #: train loss considered "reached" for the steps/seconds-to-target metric
    target_loss: float
    #: name of the held-out metric reported in tables ("accuracy" or "nats_per_byte")
    metric: str
    #: True when a larger value of ``metric`` is better
    metric_higher_is_better: bool
    #: ``build(seed) -> TaskInstance``
    build: Callable[[int], TaskInstance]
    #: extra notes shown in reports
    notes: dict = field(default_factory=dict)
