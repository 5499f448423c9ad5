"""A tiny synthetic classification task, so the harness can be tested without the real data.

Module-level functions only: worker processes receive the task pickled by reference.
"""

from __future__ import annotations

import torch
from torch import nn

from alsals_bench.api import Task, TaskInstance

N_TRAIN, N_VAL, N_TEST, DIM, CLASSES = 384, 96, 96, 12, 3


def _data(seed: int):
    g = torch.Generator().manual_seed(1234)  # the data are the same for every seed
    n = N_TRAIN + N_VAL + N_TEST
    x = torch.randn(n, DIM, generator=g)
    teacher = torch.randn(DIM, CLASSES, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, CLASSES, generator=g)).argmax(1)
    return x, y


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


class _Evaluate:
    def __init__(self, splits):
        self.splits = splits

    @torch.no_grad()
    def __call__(self, model, split):
        x, y = self.splits[split]
        logits = model(x)
        return {"loss": float(nn.functional.cross_entropy(logits, y)),
                "accuracy": float((logits.argmax(1) == y).float().mean())}


class _Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __call__(self, idx):
        return self.x[idx], self.y[idx]


def build(seed: int) -> TaskInstance:
    x, y = _data(seed)
    # the model's init comes from the global RNG, seeded by the harness before build()
    model = nn.Sequential(nn.Linear(DIM, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, CLASSES))
    xt, yt = x[:N_TRAIN], y[:N_TRAIN]
    splits = {"val": (x[N_TRAIN:N_TRAIN + N_VAL], y[N_TRAIN:N_TRAIN + N_VAL]),
              "test": (x[N_TRAIN + N_VAL:], y[N_TRAIN + N_VAL:])}
    return TaskInstance(model=model, n_train=N_TRAIN, batch=_Batch(xt, yt), loss=_loss,
                        evaluate=_Evaluate(splits))


def build_dev(seed: int) -> TaskInstance:
    return build(seed)


def build_batchnorm(seed: int) -> TaskInstance:
    inst = build(seed)
    inst.model = nn.Sequential(nn.Linear(DIM, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Linear(32, CLASSES))
    return inst


def _build_broken(seed: int) -> TaskInstance:
    raise RuntimeError("this task cannot be built")


def _build_dies(seed: int) -> TaskInstance:
    """Kills the worker process that builds it (a segfault or the OOM killer, as far as the parent sees)."""
    import multiprocessing
    import os

    if multiprocessing.parent_process() is not None:
        os._exit(3)
    raise RuntimeError("this task kills worker processes; run it with jobs > 1")


TASK = Task(
    name="synthetic", kind="classification", split="test", family="tabular",
    description=f"MLP with dropout on synthetic Gaussian data, {N_TRAIN} train / {N_VAL} val / {N_TEST} test",
    batch_size=32, steps_full=60, steps_quick=20, target_loss=0.9, metric="accuracy",
    metric_higher_is_better=True, build=build,
)

BROKEN_TASK = Task(
    name="synthetic-broken", kind="classification", split="test", family="tabular",
    description="a task whose build raises",
    batch_size=32, steps_full=5, steps_quick=5, target_loss=0.1, metric="accuracy",
    metric_higher_is_better=True, build=_build_broken,
)

DYING_TASK = Task(
    name="synthetic-dies", kind="classification", split="test", family="tabular",
    description="a task whose build kills the worker",
    batch_size=32, steps_full=5, steps_quick=5, target_loss=0.1, metric="accuracy",
    metric_higher_is_better=True, build=_build_dies,
)

BATCHNORM_TASK = Task(
    name="synthetic-bn", kind="classification", split="test", family="tabular", batchnorm=True,
    description="MLP with BatchNorm on synthetic data",
    batch_size=32, steps_full=60, steps_quick=20, target_loss=0.9, metric="accuracy",
    metric_higher_is_better=True, build=build_batchnorm,
)

DEV_TASK = Task(
    name="synthetic-dev", kind="classification", split="dev", family="tabular",
    description="the synthetic task again, declared in the dev split",
    batch_size=32, steps_full=60, steps_quick=20, target_loss=0.9, metric="accuracy",
    metric_higher_is_better=True, build=build_dev,
)
