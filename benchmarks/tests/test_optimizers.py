"""The registry and the recipe: grids on the lattice, weight-decay groups, clipping, the committed
anneal of the authors' line searches, DoG's reps_rel, the recorded configuration."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from alsals_bench import optimizers as opts
from alsals_bench import runner

from ._synthetic import BATCHNORM_TASK, TASK


@pytest.fixture(autouse=True)
def _tasks():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for t in (TASK, BATCHNORM_TASK):
        runner.register_task(t)
    yield
    torch.set_num_threads(threads)


def _ctx(**kw):
    return opts.RunContext(**{"total_steps": 20, "n_batches_per_epoch": 10, **kw})


def test_lattice_round_trip():
    assert [opts.lattice_lr(k) for k in (-8, -7, -6, -1, 0)] == [1e-4, 3e-4, 1e-3, 0.3, 1.0]
    for k in range(-14, 3):
        assert opts.lattice_index(opts.lattice_lr(k)) == k
        assert opts.parse_grid_name(opts.grid_name("adamw", k)) == ("adamw", k)
    assert opts.grid_name("sfadamw", -5) == "sfadamw-lr3e-3"
    assert opts.parse_grid_name("adamw-lr2e-3") is None
    assert opts.parse_grid_name("nope-lr1e-3") is None
    with pytest.raises(ValueError):
        opts.lattice_index(2e-3)


def test_any_lattice_point_is_a_valid_optimizer():
    spec = opts.get_spec("adamw-lr1e-5")
    assert (spec.grid, spec.grid_lr, spec.family) == ("adamw", 1e-5, "tuned")
    assert opts.get_spec("sfadamw-lr1e0").schedulefree


def test_decay_groups_split_weights_from_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Embedding(5, 8))
    decay, rest = opts.decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert {tuple(p.shape) for p in decay["params"]} == {(8, 4), (5, 8)}
    assert all(p.ndim == 1 for p in rest["params"])


@pytest.mark.parametrize("name", ["adamw-lr1e-3", "sfadamw-lr1e-3", "alsals", "sls-anneal", "prodigy", "dadapt-adam"])
def test_the_recipes_weight_decay_reaches_the_optimizer(name):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    adapter = opts.make_adapter(name, model, _ctx(weight_decay=0.1))
    decays = sorted(g["weight_decay"] for g in adapter.optimizer.param_groups)
    assert decays == [0.0, 0.1]


def test_dog_and_the_authors_packages_run_without_weight_decay():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    dog = opts.make_adapter("dog", model, _ctx(weight_decay=0.1)).optimizer
    assert [g["weight_decay"] for g in dog.param_groups] == [0.0]  # one group: DoG's step size is per group
    for name in ("salsa-ref", "adamsls-ref"):
        settings = opts.make_adapter(name, model, _ctx(weight_decay=0.1)).settings
        assert "none" in settings["weight_decay"]


def test_dog_reps_rel_follows_batchnorm():
    model = nn.Linear(4, 2)
    assert opts.make_adapter("dog", model, _ctx()).optimizer.param_groups[0]["reps_rel"] == 1e-6
    assert opts.make_adapter("dog", model, _ctx(batchnorm=True)).optimizer.param_groups[0]["reps_rel"] == 1e-4


def test_salsa_ref_runs_as_recommended_and_at_its_default():
    model = nn.Linear(4, 2)
    assert opts.make_adapter("salsa-ref", model, _ctx()).optimizer.use_mv is True
    assert opts.make_adapter("salsa-ref-default", model, _ctx()).optimizer.use_mv is False


def test_clipping_applies_to_the_standard_loop_only(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c: calls.append(c) or real(p, c))
    transformer = dataclasses.replace(TASK, name="synthetic-transformer", transformer=True)
    runner.register_task(transformer)
    try:
        rec = runner.run_one("synthetic-transformer", "adamw-lr1e-3", 0, 4, train_eval_examples=32)
        assert calls == [1.0] * 4 and rec["optimizer_config"]["grad_clip"] == 1.0
        assert rec["config"]["task"]["weight_decay"] == 0.1
        calls.clear()
        rec = runner.run_one("synthetic-transformer", "alsals", 0, 4, train_eval_examples=32)
        assert calls == [] and rec["optimizer_config"]["grad_clip"] is None
        calls.clear()
        runner.run_one("synthetic", "adamw-lr1e-3", 0, 4, train_eval_examples=32)
        assert calls == []  # not a transformer: no clipping
    finally:
        runner.unregister_task("synthetic-transformer")


def test_the_committed_anneal_is_alsals_own():
    import alsals
    from alsals.anneal import anneal_factor

    shape, fraction = opts.alsals_anneal_settings()
    probe = alsals.ALSALS([torch.zeros(1, requires_grad=True)], total_steps=10)
    assert (shape, fraction) == (probe.config.anneal, probe.config.anneal_fraction)
    factor = opts.committed_anneal(50)
    assert [factor(t) for t in (1, 40, 41, 50)] == [anneal_factor(shape, t, 50, fraction) for t in (1, 40, 41, 50)]
    assert factor(1) == 1.0 and factor(50) < 0.1


def test_the_committed_anneal_scales_the_update_of_the_authors_line_search():
    model = nn.Linear(3, 1)

    class Fixed(torch.optim.Optimizer):  # moves every weight by exactly +1 per step
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure):
            loss = closure(backwards=True)
            with torch.no_grad():
                for g in self.param_groups:
                    for p in g["params"]:
                        p.add_(1.0)
            return loss

    spec = opts.OptimizerSpec("test-fixed", lambda m, ctx: opts.Built(Fixed(m.parameters())), "salsa",
                              "line-search", "moves by one", anneal_committed=True)
    adapter = opts.Adapter(spec, model, _ctx(total_steps=10))
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    before = model.weight.detach().clone()
    moves = []
    for _ in range(10):
        w = model.weight.detach().clone()
        adapter.step(lambda: nn.functional.mse_loss(model(x), y))
        moves.append(float((model.weight.detach() - w).mean()))
    factor = opts.committed_anneal(10)
    assert moves == pytest.approx([factor(t) for t in range(1, 11)], rel=1e-5)
    total = float((model.weight.detach() - before).mean())
    assert total == pytest.approx(sum(factor(t) for t in range(1, 11)), rel=1e-5)


def test_the_recorded_configuration_of_alsals_and_of_torch():
    rec = runner.run_one("synthetic", "alsals", 0, 3, train_eval_examples=32)
    cfg = rec["optimizer_config"]["optimizer"]
    assert cfg["class"] == "alsals.optimizer.ALSALS"
    assert cfg["config"]["c"] == 0.5 and cfg["config"]["total_steps"] == 3
    assert cfg["config"]["average"] is None and cfg["config"]["preset"] == "default"
    assert cfg["settings"]["arguments"] == {"total_steps": 3}
    rec = runner.run_one("synthetic", "adamw-lr3e-3", 0, 3, train_eval_examples=32)
    cfg = rec["optimizer_config"]["optimizer"]
    assert cfg["class"] == "torch.optim.adamw.AdamW"
    assert cfg["defaults"]["lr"] == pytest.approx(3e-3)
    assert [g["weight_decay"] for g in cfg["param_groups"]] == [0.01, 0.0]
    assert rec["optimizer_config"]["scheduler"] == "LambdaLR"


def test_alsals_without_total_steps_is_evaluated_at_its_average_and_v0_1_at_its_iterate():
    rec = runner.run_one("synthetic-bn", "alsals-anytime", 0, 6, train_eval_examples=64)
    assert rec["status"] == "ok", rec["error"]
    assert rec["optimizer_config"]["evaluated_at_average"] is True
    assert rec["config"]["batchnorm_recalibrated"] is True  # BatchNorm statistics of the averaged weights
    for name in ("alsals", "alsals-v0.1-anytime"):
        rec = runner.run_one("synthetic", name, 0, 6, train_eval_examples=32)
        assert rec["optimizer_config"]["evaluated_at_average"] is False


def test_schedulefree_is_evaluated_at_its_averaged_point_with_batchnorm_recomputed():
    rec = runner.run_one("synthetic-bn", "sfadamw-lr3e-3", 0, 6, train_eval_examples=64)
    assert rec["status"] == "ok", rec["error"]
    assert rec["config"]["batchnorm_recalibrated"] is True
    assert rec["optimizer_config"]["schedulefree_eval"] is True
    assert not math.isnan(rec["final_train_loss"])


@pytest.mark.parametrize("name", [
    "alsals-no-amortisation", "alsals-interpolate-only", "alsals-increase-only", "alsals-two-way",
    "alsals-two-way-anytime", "alsals-two-way-anytime-no-average", "alsals-batch-increase",
    "alsals-batch-increase-anytime", "alsals-recover", "alsals-recover-anytime", "alsals-match-warmup",
    "alsals-match-always", "alsals-match-warmup-anytime", "alsals-smooth-per-step", "alsals-smooth-per-step-anytime",
    "alsals-interval10", "alsals-interval10-anytime", "alsals-cosine", "alsals-linear",
])
def test_the_ablations_of_0_1_keep_0_1s_engine_when_the_defaults_move_on(name):
    """The "0.1 + X" rows were measured with 0.1's halving interval rule; they stay pinned to it (a rerun
    of them under the doubling default would mix two configurations in one row)."""
    model = nn.Linear(3, 2)
    opt = opts.get_spec(name).factory(model, _ctx()).optimizer
    assert opt.config.search_interval_rule == "halving"
    anytime = name.endswith("-anytime")
    assert opt.config.averages == anytime  # the anytime rows evaluate at the average; no-average does not
    new = opts.get_spec("alsals-cut-per-step").factory(model, _ctx()).optimizer
    assert new.config.search_interval_rule == "doubling"  # the fourth round's rows start from the defaults


@pytest.mark.parametrize("row", ["alsals", "adamw-lr3e-3"])
def test_a_wrapped_step_reads_every_step_leaves_the_run_as_it_was_and_is_removed_after(row):
    calls = []

    def counting(opt, step):
        def counted(*args, **kwargs):
            calls.append(type(opt).__name__)
            return step(*args, **kwargs)

        return counted

    plain = runner.run_one("synthetic", row, 0, 5, train_eval_examples=32)
    with opts.wrapped_step(row, counting) as name:
        assert name in opts.OPTIMIZERS
        wrapped = runner.run_one("synthetic", name, 0, 5, train_eval_examples=32)
    assert name not in opts.OPTIMIZERS
    assert len(calls) == 5
    assert wrapped["final_train_loss"] == plain["final_train_loss"]
    assert wrapped["forward_calls"] == plain["forward_calls"]
