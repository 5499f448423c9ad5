"""The scale suite: its tasks stay out of the dev/test splits, what it plans, its report."""

from __future__ import annotations

import math

from alsals_bench import driver, runner, scale, scale_report
from alsals_bench.optimizers import grid_name
from alsals_bench.tasks import TASKS, tasks_of_split

from ._records import record

SUITE = driver.SUITES["scale"]
NAMES = ["scale_gpt_0.2M", "scale_gpt_1M", "scale_gpt_5M"]


def _rec(task, name, train, val, **kw):
    r = record(task, name, 0, train, val=val, split="scale", metric="nats_per_byte", higher=False, val_loss=val, **kw)
    r["initial_train_loss"] = 5.5
    r["step_size_final"], r["step_size_max"], r["step_size_min"] = 1e-3, 2e-3, 1e-4
    r["curves"] = {"step": [1, 2, 3], "loss": [5.0, 4.0, train], "step_size": [1e-3, 2e-3, 1e-3]}
    r["config"]["task"].update(notes={"size": "gpt-" + task.removeprefix("scale_gpt_")})
    return r


def test_the_scale_tasks_are_their_own_split():
    assert list(scale.SCALE_TASKS) == NAMES and list(SUITE.tasks) == NAMES
    assert not set(NAMES) & set(TASKS)
    assert not set(NAMES) & set(tasks_of_split("dev") + tasks_of_split("test"))
    assert not set(NAMES) & set(runner.resolve_tasks(None))  # the quick and full suites
    assert runner.resolve_tasks(["scale"]) == NAMES
    assert runner.resolve_tasks(["dev"]) == tasks_of_split("dev")
    for name in NAMES:
        task = runner.get_task(name)
        assert task.split == "scale" and task.transformer and task.steps_full == scale.SCALE_STEPS


def test_a_scale_task_builds_the_sized_model_on_windows_of_128_bytes():
    inst = runner.get_task("scale_gpt_0.2M").build(0)
    assert sum(p.numel() for p in inst.model.parameters()) == 224_640
    x, y = inst.batch(runner.BatchSampler(inst.n_train, 8, 0).next())
    assert x.shape == (8, 128) and y.shape == (8, 128)


def test_the_plan_starts_with_the_fixed_optimizers_and_the_coarse_grid():
    todo = driver.plan(SUITE, [], NAMES)
    expected = {(t, o, 0) for t in NAMES for o in ("alsals", "sls", "salsa", "salsa-ref",
                                                    "adamw-lr1e-4", "adamw-lr1e-3", "adamw-lr1e-2")}
    assert set(todo) == expected and len(todo) == len(expected)


def test_the_coarse_grid_is_refined_around_its_selections_then_settles():
    t = NAMES[0]
    runs = [_rec(t, o, 2.0, 2.1) for o in SUITE.optimizers]
    runs += [_rec(t, grid_name("adamw", k), loss, loss + 0.1) for k, loss in ((-8, 2.5), (-6, 1.9), (-4, 2.2))]
    notes = []
    todo = driver.plan(SUITE, runs, [t], notes=notes)
    assert sorted(todo) == [(t, "adamw-lr3e-3", 0), (t, "adamw-lr3e-4", 0)]
    assert any("refining" in n.what for n in notes)
    runs += [_rec(t, "adamw-lr3e-4", 2.1, 2.2), _rec(t, "adamw-lr3e-3", 1.95, 2.05)]
    assert driver.plan(SUITE, runs, [t]) == []


def test_a_refined_selection_at_the_edge_is_extended():
    t = NAMES[0]
    runs = [_rec(t, o, 2.0, 2.1) for o in SUITE.optimizers]
    runs += [_rec(t, grid_name("adamw", k), loss, loss) for k, loss in
             ((-8, 2.5), (-6, 2.3), (-5, 2.2), (-4, 2.1), (-3, 2.0))]
    assert driver.plan(SUITE, runs, [t]) == [(t, "adamw-lr1e-1", 0)]


def test_verdicts():
    t = NAMES[0]
    ok = _rec(t, "sls", 2.0, 2.1)
    assert scale_report.verdict(ok) == "ok"
    collapsed = dict(ok, step_size_final=1e-9)
    assert scale_report.verdict(collapsed) == "collapsed"
    assert scale_report.verdict(dict(ok, final_train_loss=6.0)) == "no progress"
    assert scale_report.verdict(_rec(t, "sls", math.nan, 2.1, status="diverged")) == "diverged"


def test_the_report_renders_from_synthetic_records(tmp_path):
    runs = []
    for t, base in zip(NAMES, (2.4, 2.2, 2.0)):
        runs += [_rec(t, "alsals", base, base + 0.1), _rec(t, "salsa", base + 0.1, base + 0.2),
                 _rec(t, "salsa-ref", base + 0.2, base + 0.3)]
        sls = _rec(t, "sls", base + 1.0, base + 1.0)
        sls["step_size_final"] = 1e-9
        runs.append(sls)
        runs += [_rec(t, grid_name("adamw", k), base + d, base + d + 0.1)
                 for k, d in ((-7, 0.3), (-6, 0.0), (-5, 0.2))]
    rows = scale_report.ratio_rows(runs)
    assert [r["size"] for r in rows] == ["gpt-0.2M", "gpt-1M", "gpt-5M"]
    assert all(abs(r["train_ratio"] - 1.0) < 1e-9 and r["sls_verdict"] == "collapsed" for r in rows)
    assert all(r["adamw_train_lr"] == 1e-3 for r in rows)
    paths = scale_report.write_scale_report(str(tmp_path), {"command": "alsals-bench run --suite scale"}, runs)
    md = (tmp_path / "scale.md").read_text()
    assert "ALSALS ÷ AdamW (train)" in md and "collapsed" in md and "best by train" in md
    assert md.count("## gpt-") == 3 and "plots/scale-scale_gpt_1M.png" in md
    assert len(paths["plots"]) == 3 and all((tmp_path / p).exists() for p in
                                            (f"plots/scale-{t}.png" for t in NAMES))
