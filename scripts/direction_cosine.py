"""Does the next batch still go downhill along the step just taken? Pflug's statistic, per tenth of a run.

For a row on a benchmark task, run through the harness (``alsals_bench.runner.run_one``: the task's
recipe, batch order and dropout seeds), this records at every step ``t ≥ 2`` the cosine between the
step taken before, ``Δw = w_t − w_{t−1}``, and the descent direction of the next batch at ``w_t``,
``−g_t`` (the gradient of the step's first evaluation, which ``p.grad`` holds after the step)::

    cos_t = −g_tᵀ·Δw / (‖g_t‖·‖Δw‖)

Positive: along the last step the loss of a batch it has not seen still falls (the step stopped
short of the line's minimum); negative: the last step went past it, and the next batch points back.
The mean over a stretch of steps is Pflug's (1983) test of stationarity for a constant step size
(SGD's successive gradients: negative at stationarity), which SASA (Lang, Zhang & Xiao, 2019) and
Chee & Toulis (2018) use to decide when to cut the step. It prints the mean of ``cos_t`` over each
tenth of the run, per seed. Diagnostic only: nothing here is a benchmark result. Example
(``docs/benchmarks.md``, "Thirteenth round")::

    python scripts/direction_cosine.py friedman_mlp --rows alsals adamw-lr3e-2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch
from alsals_bench.optimizers import wrapped_step
from alsals_bench.runner import get_task, run_one


def recording(series: list[float]):
    """A step wrapper (:func:`alsals_bench.optimizers.wrapped_step`) that appends ``cos_t`` to
    ``series`` after every step (it only reads: the run's numbers are the row's own)."""

    def wrap(opt, step):
        params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
        last: dict[str, list[torch.Tensor]] = {}

        def recorded_step(*args, **kwargs):
            before = [p.detach().clone() for p in params]
            loss = step(*args, **kwargs)
            grads = [p.grad for p in params]
            if "moved" in last and all(g is not None for g in grads):
                dot = sum(float((g * d).sum()) for g, d in zip(grads, last["moved"]))
                norms = math.sqrt(sum(float((g * g).sum()) for g in grads)) * math.sqrt(
                    sum(float((d * d).sum()) for d in last["moved"]))
                if norms > 0:
                    series.append(-dot / norms)
            last["moved"] = [p.detach() - w for p, w in zip(params, before)]
            return loss

        return recorded_step

    return wrap


def tenths(series: Sequence[float]) -> list[float]:
    """The mean of ``series`` over each tenth of its length."""
    n = len(series)
    edges = [round(i * n / 10) for i in range(11)]
    return [sum(series[a:b]) / (b - a) for a, b in zip(edges, edges[1:]) if b > a]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--rows", nargs="+", default=["alsals", "alsals-layerwise-lib-plateau-unwrap"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    task = get_task(args.task)
    print(f"{args.task}, {task.steps_full} steps: mean of cos_t over each tenth of the run")
    for row in args.rows:
        for seed in args.seeds:
            series: list[float] = []
            with wrapped_step(row, recording(series)) as wrapped:
                record = run_one(task, wrapped, seed, steps_key="full")
            print(f"  {row:38s} seed {seed}  train loss {float(record['final_train_loss']):.4g}  "
                  + " ".join(f"{m:+.3f}" for m in tenths(series)))


if __name__ == "__main__":
    main()
