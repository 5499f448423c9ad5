"""The benchmark runner: counting, identical starts, metrics, crashes, worker processes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alsals_bench import optimizers as opt_registry
from alsals_bench import runner
from alsals_bench.optimizers import OPTIMIZERS, Built, OptimizerSpec, register_optimizer, warmup_cosine

from ._synthetic import BATCHNORM_TASK, BROKEN_TASK, DYING_TASK, TASK

STEPS = 6


@pytest.fixture(autouse=True)
def _one_thread_and_tasks():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for t in (TASK, BROKEN_TASK, DYING_TASK, BATCHNORM_TASK):
        runner.register_task(t)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def temporary_optimizer():
    """Register optimizers for one test only."""
    added = []

    def add(spec: OptimizerSpec) -> str:
        register_optimizer(spec)
        added.append(spec.name)
        return spec.name

    yield add
    for name in added:
        OPTIMIZERS.pop(name, None)


def _run(optimizer, seed=0, steps=STEPS, task="synthetic", **kw):
    return runner.run_one(task, optimizer, seed, steps, train_eval_examples=128, **kw)


# ------------------------------------------------------------------------------------------------
# counting


def test_adam_counts_one_forward_and_one_backward_per_step():
    rec = _run("adamw-lr1e-3")
    assert rec["status"] == "ok", rec["error"]
    assert rec["steps_done"] == STEPS
    assert rec["forward_calls"] == STEPS
    assert rec["backward_calls"] == STEPS
    assert rec["forward_equivalents"] == 3 * STEPS
    assert rec["forward_per_step"] == 1.0 and rec["backward_per_step"] == 1.0


@pytest.mark.parametrize("name", ["alsals", "sls", "salsa"])
def test_line_searches_count_their_own_backward_and_trial_forwards(name):
    rec = _run(name)
    assert rec["status"] == "ok", rec["error"]
    assert rec["backward_calls"] == STEPS  # the optimizer runs backward itself: counted by the hook
    if name == "alsals":
        assert rec["forward_calls"] >= 2 * STEPS  # at least one trial per step
    else:
        assert rec["forward_calls"] >= STEPS + 1
    counters = rec["optimizer_counters"]
    # the optimizer's own count agrees with the harness's
    assert counters["forward_evaluations"] == rec["forward_calls"]


def test_reference_salsa_counts_agree_with_its_own_counters():
    rec = _run("salsa-ref")
    assert rec["status"] == "ok", rec["error"]
    assert rec["backward_calls"] == STEPS  # closure(backwards=True) once per step
    assert rec["forward_calls"] == rec["optimizer_counters"]["n_forwards"]
    assert rec["forward_calls"] >= 2 * STEPS  # searches on every one of the first 10 steps


def test_reference_adamsls_runs_backward_itself():
    rec = _run("adamsls-ref")
    assert rec["status"] == "ok", rec["error"]
    assert rec["backward_calls"] == STEPS
    assert rec["forward_calls"] == rec["optimizer_counters"]["n_forwards"]


# ------------------------------------------------------------------------------------------------
# identical starts


def test_same_initial_weights_and_batch_order_for_every_optimizer():
    names = ["alsals", "salsa-ref", "adamw-lr1e-3", "sfadamw-lr3e-3", "dog"]
    recs = []
    for name in names:
        # scramble the global RNGs between runs: the harness must not depend on them
        torch.manual_seed(len(recs) * 7919 + 1)
        recs.append(_run(name))
    for r in recs:
        assert r["status"] == "ok", (r["optimizer"], r["error"])
    assert len({r["init_weights_sha256"] for r in recs}) == 1
    assert len({r["batch_order_sha256"] for r in recs}) == 1
    assert len({tuple(r["first_batch"]) for r in recs}) == 1
    assert len({r["initial_train_loss"] for r in recs}) == 1
    other_seed = _run("adamw-lr1e-3", seed=1)
    assert other_seed["batch_order_sha256"] != recs[0]["batch_order_sha256"]
    assert other_seed["init_weights_sha256"] != recs[0]["init_weights_sha256"]


def test_batch_sampler_ignores_the_global_rng_and_covers_epochs():
    torch.manual_seed(0)
    a = runner.BatchSampler(100, 32, seed=3)
    first = [a.next() for _ in range(7)]
    torch.manual_seed(12345)
    torch.rand(10)
    b = runner.BatchSampler(100, 32, seed=3)
    second = [b.next() for _ in range(7)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert a.hash.hexdigest() == b.hash.hexdigest()
    assert a.per_epoch == 3  # the incomplete last batch is dropped
    epoch = torch.cat(first[:3])
    assert len(set(epoch.tolist())) == 96  # no index twice within an epoch
    assert all(len(x) == 32 for x in first)


def test_train_subset_is_fixed_per_seed():
    assert torch.equal(runner.train_subset(500, 64, 0), runner.train_subset(500, 64, 0))
    assert not torch.equal(runner.train_subset(500, 64, 0), runner.train_subset(500, 64, 1))
    assert len(runner.train_subset(10, 64, 0)) == 10


# ------------------------------------------------------------------------------------------------
# metrics


def test_record_holds_every_metric():
    rec = _run("alsals", steps=12, curve_points=5)
    assert rec["status"] == "ok"
    for key in ("initial_train_loss", "final_train_loss", "final_batch_loss_avg", "wall_seconds", "cpu_seconds",
                "step_size_final", "step_size_min", "step_size_max"):
        assert math.isfinite(rec[key]), key
    assert rec["step_size_min"] <= rec["step_size_final"] <= rec["step_size_max"]
    assert set(rec["val"]) == {"loss", "accuracy"} and set(rec["test"]) == {"loss", "accuracy"}
    curves = rec["curves"]
    assert set(curves) == {"step", "loss", "step_size", "seconds", "fwd_equiv"}
    assert all(len(v) == 5 for v in curves.values())
    assert curves["step"][-1] == 12
    assert curves["fwd_equiv"][-1] == rec["forward_equivalents"]
    assert rec["config"]["optimizer"]["protocol"] == "alsals"
    assert rec["config"]["task"]["metric"] == "accuracy"
    assert rec["config"]["task"]["split"] == rec["split"] == "test"
    assert rec["forward_per_step"] == rec["forward_calls"] / 12


def test_adam_step_size_is_the_scheduled_learning_rate():
    steps = 40
    rec = _run("adamw-lr1e-2", steps=steps)
    factor = warmup_cosine(steps)
    assert rec["step_size_max"] == pytest.approx(1e-2, rel=1e-6)
    assert rec["step_size_final"] == pytest.approx(1e-2 * factor(steps - 1), rel=1e-6)
    assert rec["step_size_min"] == pytest.approx(1e-2 * min(factor(t) for t in range(steps)), rel=1e-6)


def test_warmup_cosine_schedule():
    f = warmup_cosine(100)
    assert f(0) == pytest.approx(1 / 5)
    assert f(4) == pytest.approx(1.0)
    assert f(5) == pytest.approx(1.0)
    assert 0 <= f(99) < 0.01
    assert all(f(t) >= f(t + 1) for t in range(5, 99))


def test_steps_to_target():
    easy = dataclasses.replace(TASK, name="synthetic-easy", target_loss=100.0)
    hard = dataclasses.replace(TASK, name="synthetic-hard", target_loss=1e-9)
    runner.register_task(easy)
    runner.register_task(hard)
    try:
        rec = _run("adamw-lr1e-3", task="synthetic-easy")
        assert rec["steps_to_target"] == 1
        assert rec["fwd_equiv_to_target"] == 3
        assert rec["seconds_to_target"] <= rec["wall_seconds"]
        rec = _run("adamw-lr1e-3", task="synthetic-hard")
        assert rec["steps_to_target"] is None and rec["seconds_to_target"] is None
    finally:
        runner.unregister_task("synthetic-easy")
        runner.unregister_task("synthetic-hard")


def test_final_batch_loss_average_is_the_last_five_percent():
    rec = _run("adamw-lr1e-3", steps=40, curve_points=40)
    assert rec["final_batch_loss_avg"] == pytest.approx(sum(rec["curves"]["loss"][-2:]) / 2)


@pytest.mark.parametrize("name", sorted(n for n in OPTIMIZERS if not n.startswith("test-"))
                         + ["adamw-lr3e-3", "sfadamw-lr1e-2"])
def test_every_registered_optimizer_runs(name):
    rec = _run(name, steps=4)
    assert rec["status"] == "ok", rec["error"]
    assert math.isfinite(rec["final_train_loss"])
    assert math.isfinite(rec["final_batch_loss_avg"])
    # one backward pass per step; the per-layer prototype (alsals_bench.layerwise) takes one per part,
    # the library's LayerwiseALSALS one shared by its parts
    settings = rec["optimizer_config"]["optimizer"]["settings"]
    parts = [None] if settings.get("shared_backward") else settings.get("parts", [None])
    assert rec["backward_calls"] == 4 * len(parts)


def test_schedulefree_recomputes_batchnorm_statistics_at_its_evaluation_point():
    rec = _run("sfadamw-lr3e-3", task="synthetic-bn")
    assert rec["status"] == "ok", rec["error"]
    assert rec["config"].get("batchnorm_recalibrated") is True
    assert "batchnorm_recalibrated" not in _run("adamw-lr1e-3", task="synthetic-bn")["config"]


def test_recalibrate_batchnorm_averages_the_batch_statistics():
    inst = BATCHNORM_TASK.build(0)
    bn = inst.model[1]
    bn.running_mean.fill_(5.0)
    idx = torch.arange(64)
    runner.recalibrate_batchnorm(inst, inst.model, idx, 32)
    with torch.no_grad():
        h = inst.model[0](inst.batch(idx)[0])
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and inst.model.training


# ------------------------------------------------------------------------------------------------
# failures


def _raising_factory(model, ctx):
    class Boom(torch.optim.SGD):
        def step(self, closure=None):
            if self.state.setdefault("calls", 0) >= 2:
                raise ValueError("nans detected")
            self.state["calls"] += 1
            return super().step(closure)

    return Built(Boom(model.parameters(), lr=0.01))


def test_an_optimizer_that_raises_is_recorded_as_an_error(temporary_optimizer):
    name = temporary_optimizer(OptimizerSpec("test-raises", _raising_factory, "standard", "lr-free", "raises"))
    rec = _run(name)
    assert rec["status"] == "error"
    assert rec["diverged"] is True
    assert "nans detected" in rec["error"]
    assert rec["steps_done"] == 2


def test_exploding_learning_rate_is_flagged_diverged(temporary_optimizer):
    name = temporary_optimizer(OptimizerSpec(
        "test-explodes", lambda m, ctx: Built(torch.optim.SGD(m.parameters(), lr=1e4)), "standard", "lr-free",
        "SGD lr=1e4"))
    rec = _run(name, steps=30)
    assert rec["diverged"] is True
    assert rec["status"] in ("diverged", "error")
    assert rec["divergence_reason"]


def test_a_task_that_cannot_be_built_is_an_error_record():
    rec = runner.run_one("synthetic-broken", "adamw-lr1e-3", 0, 3)
    assert rec["status"] == "error" and "cannot be built" in rec["error"]


def test_unknown_names_raise_clear_errors():
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        runner.run_one("nope", "alsals", 0, 1)
    with pytest.raises(KeyError, match="unknown optimizer 'nope'.*adamw-grid"):
        runner.run_one("synthetic", "nope", 0, 1)
    with pytest.raises(KeyError, match="unknown optimizer 'adamw-lr2e-3'"):
        runner.run_one("synthetic", "adamw-lr2e-3", 0, 1)  # off the half-decade lattice


def test_group_alias_expands_to_the_base_grid():
    names = opt_registry.resolve_optimizers(["alsals", "adamw-grid", "alsals"])
    assert names == ["alsals", "adamw-lr1e-4", "adamw-lr3e-4", "adamw-lr1e-3", "adamw-lr3e-3", "adamw-lr1e-2",
                     "adamw-lr3e-2"]
    assert opt_registry.resolve_optimizers(["sfadamw-grid"])[-1] == "sfadamw-lr1e-1"


def test_alsals_variant_is_one_line(temporary_optimizer):
    spec = opt_registry.register_alsals_variant("test-alsals-c05", c=0.5)
    try:
        assert "c=0.5" in spec.description
        rec = _run("test-alsals-c05", steps=3)
        assert rec["status"] == "ok", rec["error"]
        assert rec["optimizer_config"]["optimizer"]["settings"]["arguments"] == {"c": 0.5}
    finally:
        OPTIMIZERS.pop("test-alsals-c05", None)


# ------------------------------------------------------------------------------------------------
# several runs


def test_run_many_in_process_streams_results_in_order():
    specs = runner.plan_runs(["synthetic"], ["adamw-lr1e-3", "alsals"], [0, 1], steps=3, train_eval_examples=64)
    seen = []
    results = runner.run_many(specs, jobs=1, on_result=seen.append)
    assert [(r["optimizer"], r["seed"]) for r in results] == [
        ("adamw-lr1e-3", 0), ("alsals", 0), ("adamw-lr1e-3", 1), ("alsals", 1)]
    assert len(seen) == 4


def test_run_many_with_two_worker_processes():
    specs = runner.plan_runs(["synthetic", "synthetic-broken"], ["alsals", "salsa-ref"], [0], steps=3,
                             train_eval_examples=64)
    results = runner.run_many(specs, jobs=2)
    assert [(r["task"], r["optimizer"]) for r in results] == [(s.task, s.optimizer) for s in specs]
    assert [r["status"] for r in results] == ["ok", "ok", "error", "error"]
    in_process = _run("alsals", steps=3)
    # a worker computes exactly what the parent process computes
    assert results[0]["init_weights_sha256"] == in_process["init_weights_sha256"]
    assert results[0]["batch_order_sha256"] == in_process["batch_order_sha256"]


@pytest.mark.slow
def test_a_dying_worker_is_recorded_and_the_bench_goes_on():
    specs = runner.plan_runs(["synthetic-dies", "synthetic"], ["adamw-lr1e-3"], [0], steps=3,
                             train_eval_examples=64)
    results = runner.run_many(specs, jobs=2)
    assert results[0]["status"] == "error" and "worker process died" in results[0]["error"]
    assert results[1]["status"] == "ok"
