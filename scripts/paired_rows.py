"""Two rows' runs paired task by task and seed by seed: the ratio of their final train losses.

For every task both results hold, the geometric mean over the shared seeds of ``row ÷ base``
(final train loss; :func:`alsals_bench.compare.optimisation`) with its range, how many seeds are
worse (ratio above 1), both rows' median final step sizes and mean forwards per step, then the
geo-mean over the tasks. Each results argument is what ``alsals-bench report`` reads: a run folder
or a results file. Used for same-machine ablations, where the committed records of a row were made
on another machine (``docs/benchmarks.md``, "Thirteenth round")::

    python scripts/paired_rows.py docs/benchmarks/results.json.gz alsals-trial-previous \\
        docs/benchmarks/rerun-defaults-dev-c91ec0a.json.gz alsals
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from alsals_bench import compare, stats
from alsals_bench.results import load_results


def by_task_and_seed(path: str, row: str) -> dict[str, dict[int, dict]]:
    """``row``'s finished runs in the results at ``path``: task -> seed -> record."""
    out: dict[str, dict[int, dict]] = {}
    for run in load_results(path)[1]:
        if run["optimizer"] == row and run.get("status") == "ok":
            out.setdefault(run["task"], {})[int(run["seed"])] = run
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("row")
    parser.add_argument("base_runs")
    parser.add_argument("base")
    args = parser.parse_args(argv)
    runs, base = by_task_and_seed(args.runs, args.row), by_task_and_seed(args.base_runs, args.base)
    per_task = []
    print(f"{args.row} ÷ {args.base}, final train loss, paired by seed")
    for task, mine in runs.items():
        paired = compare.optimisation(mine, base.get(task, {}))
        if not paired["seeds"]:
            continue
        theirs = [base[task][s] for s in paired["seeds"]]
        ours = [mine[s] for s in paired["seeds"]]
        per_task.append(paired["geomean"])
        print(f"  {task:20s} {paired['geomean']:9.3g} [{paired['min']:.3g}, {paired['max']:.3g}]  "
              f"final step size median {statistics.median(r['step_size_final'] for r in ours):.2g} / "
              f"{statistics.median(r['step_size_final'] for r in theirs):.2g}  forwards per step "
              f"{statistics.mean(r['forward_per_step'] for r in ours):.2f} / "
              f"{statistics.mean(r['forward_per_step'] for r in theirs):.2f}  worse on "
              f"{sum(x > 1 for x in paired['ratios'])}/{len(paired['ratios'])} seeds")
    if per_task:
        print(f"  geo-mean over {len(per_task)} tasks: {stats.geomean(per_task):.3g}")


if __name__ == "__main__":
    main()
