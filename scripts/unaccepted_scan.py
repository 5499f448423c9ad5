"""Replay the benchmark records of some rows and count how their searches ended, to see whether a rule
for searches that passed no trial (``unaccepted_search``) acts on them.

For every (task, row, seed) of ``ROWS`` in the results file, this reruns the run through the harness
(``alsals_bench.runner.run_one``: the task's recipe, batches and dropout seeds) with the optimizer's
``step`` wrapped (:func:`alsals_bench.optimizers.wrapped_step`), reads the search state of ALSALS (or
of every part of ``LayerwiseALSALS``) after every step, and counts each search by its status, plus
``unaccepted``: the searches that cut and passed no trial (``gave_up``, or ``unresolvable`` after a
cut: :func:`alsals.search.is_unaccepted`), the only ones ``unaccepted_search`` treats differently.
Which rule the code runs does not matter here: up to the first such search both rules give the same
run. One JSON line per run goes to ``--out`` (appended, so an interrupted scan can be resumed with
``--resume``); ``--summary`` prints the totals per row from such a file. Diagnostic only: the
replays are this machine's, not records. Example (``docs/benchmarks.md``, "Fourteenth round")::

    python scripts/unaccepted_scan.py alsals alsals-anytime --out scan.jsonl
    python scripts/unaccepted_scan.py --summary scan.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Sequence

from alsals_bench.optimizers import wrapped_step
from alsals_bench.results import load_results
from alsals_bench.runner import get_task, run_one

RESULTS = "docs/benchmarks/results.json.gz"


def search_states(opt) -> list[dict]:
    """The search state of an ALSALS, or of every part of a LayerwiseALSALS."""
    if hasattr(opt, "parts"):
        return [part.search_state for part in opt.parts.values()]
    return [opt.search_state]


def counting(events: collections.Counter):
    """A step wrapper that adds every search's status to ``events``, and the searches the optimizer
    counts as ``unaccepted`` (``counters["unaccepted"]``)."""

    def wrap(opt, step):
        def counted(*args, **kwargs):
            before = [(state["searches"], state["unaccepted"]) for state in search_states(opt)]
            loss = step(*args, **kwargs)
            for (searches, unaccepted), state in zip(before, search_states(opt)):
                if state["searches"] > searches:
                    events[state["last_status"]] += 1
                    events["unaccepted"] += state["unaccepted"] - unaccepted  # the optimizer's own count
            return loss

        return counted

    return wrap


def summary(path: str) -> None:
    """Print the totals per row of a scan's JSON lines."""
    runs: collections.Counter = collections.Counter()
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(path):
        entry = json.loads(line)
        runs[entry["row"]] += 1
        totals[entry["row"]].update(entry["events"])
    for row in runs:
        events = totals[row]
        statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(events.items()) if k != "unaccepted")
        print(f"{row}: {runs[row]} runs; searches by status: {statuses}; unaccepted: {events['unaccepted']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--tasks", nargs="*", help="only these tasks (default: every task the rows ran on)")
    parser.add_argument("--out", help="append one JSON line per run here")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --out")
    parser.add_argument("--summary", metavar="JSONL", help="print the totals of a scan and stop")
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    records = load_results(args.results)[1]
    todo = sorted({(r["task"], r["optimizer"], int(r["seed"])) for r in records
                   if r["optimizer"] in args.rows and (not args.tasks or r["task"] in args.tasks)})
    done = set()
    if args.resume and args.out:
        done = {(e["task"], e["row"], e["seed"]) for e in map(json.loads, open(args.out))}
    for task, row, seed in todo:
        if (task, row, seed) in done:
            continue
        events: collections.Counter = collections.Counter()
        with wrapped_step(row, counting(events)) as spec:
            run_one(get_task(task), spec, seed, steps_key="full")
        line = json.dumps({"task": task, "row": row, "seed": seed, "events": dict(events)})
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        else:
            print(line, flush=True)


if __name__ == "__main__":
    main()
