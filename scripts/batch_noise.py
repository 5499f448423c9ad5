"""Is an optimizer's loss on a task a gradient-noise floor? The same run at a larger batch.

Runs a benchmark task through the harness (``alsals_bench.runner.run_one``: its recipe, batch order,
dropout seeds and final train loss on the fixed training subset) at its own batch size and at larger
ones, with the same number of steps, for the ALSALS rows and the AdamW grid points named; prints each
row's final train loss (geometric mean over the seeds) and its ratio to the best AdamW grid point at
that batch size. When a row that loses at the task's batch size draws level at a larger one, the
loss was set by the noise of the small batch's gradient, not by the model or the direction.
Diagnostic only: nothing here is a benchmark result. Example (``docs/benchmarks.md``, "Ninth round")::

    python scripts/batch_noise.py friedman_mlp --batch-sizes 32 256 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence

from alsals_bench.runner import get_task, run_one

#: the rows compared by default: ALSALS, the per-layer optimizer with its decay at 80% of the run and on
#: a plateau (its default), and AdamW around its tuned rate
ROWS = ("alsals", "alsals-layerwise-lib", "alsals-layerwise-lib-plateau",
        "adamw-lr3e-3", "adamw-lr1e-2", "adamw-lr3e-2", "adamw-lr1e-1")


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if all(v > 0 for v in values) else math.inf


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    args = parser.parse_args(argv)
    base = get_task(args.task)
    for batch_size in args.batch_sizes:
        task = dataclasses.replace(base, batch_size=batch_size)
        losses = {row: [float(run_one(task, row, seed, steps_key="full")["final_train_loss"]) for seed in args.seeds]
                  for row in args.rows}
        adamw = min((geomean(v) for row, v in losses.items() if row.startswith("adamw-")), default=math.nan)
        print(f"{args.task}, batch {batch_size}, {task.steps_full} steps, seeds {args.seeds}")
        for row, values in losses.items():
            g = geomean(values)
            print(f"  {row:30s} train loss {g:.4g}  ({', '.join(f'{v:.4g}' for v in values)})  "
                  f"÷ best AdamW {g / adamw:.3f}")


if __name__ == "__main__":
    main()
