"""Would an s/t decay from the first plateau make the per-layer optimizer anytime on the dev tasks?

A probe, not a benchmark result (``docs/benchmarks.md``, "Thirteenth round"). Through the harness
(``alsals_bench.runner.run_one``: the task's recipe, batch order, dropout seeds and final train loss)
it trains ``alsals-layerwise-lib-anytime-unwrap`` (``LayerwiseALSALS(model)``, not told the run's
length) with every group's ``lr`` multiplier (which scales the committed step, not the search) set to
``s/t`` from the first step ``s`` at which :class:`alsals.anneal.PlateauDetector` of a run as long as
the steps so far (windows of a tenth of them) finds the batch loss not falling, looked for once the
window holds at least ``--min-window`` losses; ``1/t`` is the anytime decay of a step set by the
gradient's noise. It prints, per task and seed, the step ``s`` and the final train loss as a ratio to
the told default's record (``alsals-layerwise-lib-plateau-unwrap`` in the results file). Example::

    python scripts/anytime_plateau_probe.py friedman_mlp mnist1d_gru --min-window 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from alsals_bench.optimizers import wrapped_step
from alsals_bench.results import load_results
from alsals_bench.runner import get_task, run_one

from alsals.anneal import PlateauDetector

NOT_TOLD, TOLD = "alsals-layerwise-lib-anytime-unwrap", "alsals-layerwise-lib-plateau-unwrap"
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "results.json.gz"


def decayed_from_plateau(min_window: int, found: dict):
    """A step wrapper (:func:`alsals_bench.optimizers.wrapped_step`) that scales the committed step
    by ``s/t`` from the first plateau ``s`` (recorded in ``found``)."""

    def wrap(opt, step):
        losses: list[float] = []

        def decayed_step(*args, **kwargs):
            t = len(losses) + 1
            for group in opt.param_groups:
                group["lr"] = 1.0 if "s" not in found else found["s"] / t
            loss = step(*args, **kwargs)
            losses.append(float(loss))
            if "s" not in found and round(0.1 * t) >= min_window:
                test = PlateauDetector(t)  # a run told it is t steps long
                plateau = False
                for value in losses[-2 * test.window:]:
                    plateau = test.update(value)
                if plateau:
                    found["s"] = t
            return loss

        return decayed_step

    return wrap


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-window", type=int, default=10)
    args = parser.parse_args(argv)
    told = {(r["task"], r["seed"]): float(r["final_train_loss"])
            for r in load_results(str(RESULTS))[1] if r["optimizer"] == TOLD}
    print(f"min window {args.min_window}: final train loss of the not-told run with the decay, ÷ the told default's")
    for task in args.tasks:
        for seed in args.seeds:
            found: dict = {}
            with wrapped_step(NOT_TOLD, decayed_from_plateau(args.min_window, found)) as row:
                loss = float(run_one(get_task(task), row, seed, steps_key="full")["final_train_loss"])
            ratio = loss / told.get((task, seed), math.nan)
            print(f"  {task:20s} seed {seed}  plateau at step {found.get('s')} of {get_task(task).steps_full}  "
                  f"train loss {loss:.4g}  ÷ told {ratio:.3f}")


if __name__ == "__main__":
    main()
