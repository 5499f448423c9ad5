"""scripts/unaccepted_scan.py: the diagnostic of docs/benchmarks.md ("Fourteenth round") counts every
search of a run by how it ended, and the searches that cut and passed no trial."""

from __future__ import annotations

import collections
import json

import pytest

from alsals_bench import optimizers as opts
from alsals_bench import runner

from ._scripts import load_script
from ._synthetic import TASK


@pytest.fixture(autouse=True)
def _task():
    runner.register_task(TASK)


@pytest.fixture(scope="module")
def scan():
    return load_script("unaccepted_scan")


@pytest.mark.parametrize("row", ["alsals", "alsals-layerwise-lib-plateau-unwrap"])
def test_every_search_is_counted(scan, row):
    events: collections.Counter = collections.Counter()
    searches = []

    def total(opt, step):
        def stepped(*args, **kwargs):
            loss = step(*args, **kwargs)
            searches.append(sum(state["searches"] for state in scan.search_states(opt)))
            return loss

        return stepped

    with opts.wrapped_step(row, scan.counting(events)) as counted:
        with opts.wrapped_step(counted, total) as name:
            runner.run_one("synthetic", name, 0, 12, train_eval_examples=32)
    counted_searches = sum(v for k, v in events.items() if k != "unaccepted")
    assert counted_searches == searches[-1] > 0
    assert events["unaccepted"] <= events["gave_up"] + events["unresolvable"]


def test_a_search_that_passed_no_trial_is_counted_as_unaccepted(scan):
    """A row whose every trial fails (``c`` close to 1 and the classical condition on a nonlinear
    loss), so that its searches give up or stop unresolvable after cuts."""
    spec = opts.register_alsals_variant("test-unaccepted-scan", c=0.999999, slope_smoothing=0.0,
                                        max_backtracks=3, amortized=False)
    try:
        events: collections.Counter = collections.Counter()
        with opts.wrapped_step(spec.name, scan.counting(events)) as name:
            runner.run_one("synthetic", name, 0, 6, train_eval_examples=32)
        assert events["unaccepted"] >= 1
        assert events["unaccepted"] <= events["gave_up"] + events["unresolvable"]
    finally:
        opts.OPTIMIZERS.pop(spec.name, None)


def test_summary_totals_per_row(scan, tmp_path, capsys):
    path = tmp_path / "scan.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in (
        {"task": "a", "row": "r", "seed": 0, "events": {"accepted": 3, "gave_up": 1, "unaccepted": 1}},
        {"task": "b", "row": "r", "seed": 0, "events": {"accepted": 2}},
    )) + "\n")
    scan.summary(str(path))
    assert capsys.readouterr().out.strip() == "r: 2 runs; searches by status: accepted 5, gave_up 1; unaccepted: 1"
