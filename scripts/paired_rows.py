"""Two rows' runs paired task by task and seed by seed: the ratio of their final train losses.

For every task both run files hold, the geometric mean over the shared seeds of ``row ÷ base``
(final train loss) with its range, how many seeds are worse (ratio above 1), both rows' median final
step sizes and mean forwards per step, then the geo-mean over the tasks. The run files are a run
folder's ``runs.jsonl`` or a ``.jsonl.gz`` of records. Used for same-machine ablations, where the
committed records of a row were made on another machine (``docs/benchmarks.md``, "Thirteenth round")::

    python scripts/paired_rows.py RUNS_A.jsonl alsals-trial-previous RUNS_B.jsonl.gz alsals
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
from collections.abc import Sequence


def records(path: str) -> dict[tuple[str, str, int], dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as lines:
        runs = [json.loads(line) for line in lines if line.strip()]
    return {(r["optimizer"], r["task"], int(r["seed"])): r for r in runs if r.get("status") == "ok"}


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("row")
    parser.add_argument("base_runs")
    parser.add_argument("base")
    args = parser.parse_args(argv)
    runs, base = records(args.runs), records(args.base_runs)
    tasks = list(dict.fromkeys(task for (row, task, _) in runs if row == args.row))
    per_task = []
    print(f"{args.row} ÷ {args.base}, final train loss, paired by seed")
    for task in tasks:
        seeds = sorted(s for (row, t, s) in runs if row == args.row and t == task and (args.base, task, s) in base)
        if not seeds:
            continue
        mine = [runs[(args.row, task, s)] for s in seeds]
        theirs = [base[(args.base, task, s)] for s in seeds]
        ratios = [a["final_train_loss"] / b["final_train_loss"] for a, b in zip(mine, theirs)]
        per_task.append(geomean(ratios))
        print(f"  {task:20s} {per_task[-1]:9.3g} [{min(ratios):.3g}, {max(ratios):.3g}]  "
              f"final step size median {statistics.median(r['step_size_final'] for r in mine):.2g} / "
              f"{statistics.median(r['step_size_final'] for r in theirs):.2g}  forwards per step "
              f"{statistics.mean(r['forward_per_step'] for r in mine):.2f} / "
              f"{statistics.mean(r['forward_per_step'] for r in theirs):.2f}  worse on "
              f"{sum(x > 1 for x in ratios)}/{len(ratios)} seeds")
    if per_task:
        print(f"  geo-mean over {len(per_task)} tasks: {geomean(per_task):.3g}")


if __name__ == "__main__":
    main()
