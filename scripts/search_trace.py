"""Where does an ALSALS row's step size fall? The searches that cut it most, with the search state.

For an ``ALSALS`` row on a benchmark task, run through the harness (``alsals_bench.runner.run_one``:
the task's recipe, batch order and dropout seeds), this reads ``opt.search_state`` after every step
and prints every step whose carried step size fell below ``--drop`` times what it was before the
step, or whose search took more than ``--trials`` trials: the step, the step size before and after,
the smoothed slope ``s`` and the carried smoothed decrease ``h`` after it, the search's status and
its trials. Then the step size at each tenth of the run, and the share of searched steps whose
``h`` was negative before the search (with ``h < 0`` and ``s > 0`` the smoothed Armijo condition
``β_s·h + (1 − β_s)·Δ ≥ c·η·s`` fails as ``η → 0``, so no cut can make it pass). Diagnostic only:
nothing here is a benchmark result. Example (``docs/benchmarks.md``, "Thirteenth round")::

    python scripts/search_trace.py friedman_mlp alsals-trial-previous --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from alsals_bench.optimizers import wrapped_step
from alsals_bench.runner import get_task, run_one


def tracing(log: list[dict]):
    """A step wrapper (:func:`alsals_bench.optimizers.wrapped_step`) that appends the search state
    before and after every step to ``log``."""

    def wrap(opt, step):
        def traced_step(*args, **kwargs):
            before = opt.search_state
            loss = step(*args, **kwargs)
            log.append({"before": before, "after": opt.search_state, "searched": opt.counters["searches"]})
            return loss

        return traced_step

    return wrap


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    log: list[dict] = []
    with wrapped_step(args.row, tracing(log)) as row:
        record = run_one(get_task(args.task), row, args.seed, steps_key="full")
    print(f"{args.task} {args.row} seed {args.seed}: final train loss {float(record['final_train_loss']):.4g}")
    searched, negative, previous_count = 0, 0, 0
    for t, entry in enumerate(log, start=1):
        before, after = entry["before"], entry["after"]
        if entry["searched"] > previous_count:
            searched += 1
            negative += before["smoothed_decrease"] < 0.0
        previous_count = entry["searched"]
        if after["step_size"] < args.drop * before["step_size"] or after["last_trials"] > args.trials:
            print(f"  step {t:5d}: step size {before['step_size']:.3g} -> {after['step_size']:.3g}  "
                  f"s {after['smoothed_slope']:+.3g}  h {after['smoothed_decrease']:+.3g}  "
                  f"{after['last_status']}, {after['last_trials']} trials")
    n = len(log)
    tenths = [log[min(n - 1, round(i * n / 10) - 1)]["after"]["step_size"] for i in range(1, 11)]
    print("  step size at each tenth: " + " ".join(f"{x:.2g}" for x in tenths))
    print(f"  searched steps whose carried h was negative before the search: {negative} of {searched}")


if __name__ == "__main__":
    main()
