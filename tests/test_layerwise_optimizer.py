"""alsals.LayerwiseALSALS: one ALSALS per top-level module sharing one backward pass per step, the
combined step tested on its own line; what a torch user expects of it (bad input, NaN, exceptions,
frozen layers, resume, RNG, torch.compile and DDP naming)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import alsals
from alsals.layerwise import repeated_blocks, split_by_top_level_module, top_level_module, unwrapped, wrapper_prefix

X = torch.randn(48, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randn(48, 1, generator=torch.Generator().manual_seed(1))


def _model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Dropout(0.2), nn.Linear(12, 1))


def _batches(steps: int):
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 48, (16,), generator=gen) for _ in range(steps)]


def _train(model, opt, batches, counts=None):
    for idx in batches:
        def closure(idx=idx):
            if counts is not None:
                counts["forward"] += 1
                counts["with_grad"] += int(torch.is_grad_enabled())
            return nn.functional.mse_loss(model(X[idx]), Y[idx])
        opt.step(closure)


def test_parts_are_the_top_level_modules_through_ddp_dataparallel_and_compile_wrappers():
    model = _model()
    parts = split_by_top_level_module(model, [{"params": list(model.parameters()), "weight_decay": 0.1}])
    assert list(parts) == ["0", "1", "4"]
    assert all(g["weight_decay"] == 0.1 for groups in parts.values() for g in groups)
    assert unwrapped(nn.DataParallel(model)) is model
    compiled = torch.compile(model)
    assert unwrapped(compiled) is model
    assert list(alsals.LayerwiseALSALS(compiled).parts) == ["0", "1", "4"]


def test_one_backward_per_step_and_trials_without_gradients():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=20)
    counts = {"forward": 0, "with_grad": 0}
    _train(model, opt, _batches(20), counts)
    assert counts["with_grad"] == 20  # the one shared first evaluation per step, not one per part
    assert counts["forward"] > 20 + 20  # the parts' trials and one combined trial per step at least
    assert opt.counters["combined_trials"] >= 20
    assert opt.counters["steps"] == 20 and opt.counters["backward_passes"] == 20
    assert opt.counters["forward_evaluations"] == counts["forward"]


def test_a_model_with_one_part_steps_as_plain_alsals():
    model, plain = nn.Sequential(nn.Linear(6, 1)), nn.Sequential(nn.Linear(6, 1))
    plain.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="one part"):
        layerwise = alsals.LayerwiseALSALS(model)
    reference = alsals.ALSALS(plain.parameters())
    _train(model, layerwise, _batches(15))
    _train(plain, reference, _batches(15))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))
    assert layerwise.counters["combined_trials"] == 0


def test_the_combined_test_shrinks_an_overshooting_sum_and_leaves_the_parts_step_sizes():
    """``f = (a + b − 1)²`` from 0: each part's own search accepts ``s = 0.9/0.999`` (its step alone
    reaches the minimum's neighbourhood), their sum overshoots, and the combined test scales it back to
    ``x = 0.9⁶`` (the first ``x`` with ``Δ(x) ≥ c·x·L``); without interaction ``x = 1`` passes."""
    for interacting, scale in ((True, 0.9 ** 6), (False, 1.0)):
        pair = nn.ModuleDict({"a": nn.Linear(1, 1, bias=False), "b": nn.Linear(1, 1, bias=False)})
        with torch.no_grad():
            for p in pair.parameters():
                p.zero_()
        a, b = pair["a"].weight, pair["b"].weight
        opt = alsals.LayerwiseALSALS(pair, initial_step_size=0.9)
        opt.step(lambda: ((a + b - 1.0) ** 2).sum() if interacting else ((a - 1) ** 2 + (b - 1) ** 2).sum())
        first = 0.9 / 0.999
        assert a.item() == pytest.approx(first * scale) and b.item() == pytest.approx(first * scale)
        assert opt.scale == pytest.approx(scale)
        assert all(size == pytest.approx(first) for size in opt.step_sizes.values())
        assert opt.counters["combined_cuts"] == (6 if interacting else 0)


def test_combined_test_false_applies_the_parts_steps_untested():
    pair = nn.ModuleDict({"a": nn.Linear(1, 1, bias=False), "b": nn.Linear(1, 1, bias=False)})
    with torch.no_grad():
        for p in pair.parameters():
            p.zero_()
    a, b = pair["a"].weight, pair["b"].weight
    opt = alsals.LayerwiseALSALS(pair, combined_test=False, initial_step_size=0.9)
    opt.step(lambda: ((a + b - 1.0) ** 2).sum())
    assert a.item() == pytest.approx(0.9 / 0.999) and opt.counters["combined_trials"] == 0


def test_bad_input_gets_a_clear_error():
    model = _model()
    with pytest.raises(TypeError, match="nn.Module"):
        alsals.LayerwiseALSALS(list(model.parameters()))
    with pytest.raises(ValueError, match="not one of the model's"):
        alsals.LayerwiseALSALS(model, [nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError):
        alsals.LayerwiseALSALS(model, initial_step_size=-1.0)  # ALSALS's own validation, per part
    opt = alsals.LayerwiseALSALS(model)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="scalar torch.Tensor"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match="scalar"):
        opt.step(lambda: model(X).sum(dim=1))


def test_a_nan_loss_is_skipped_the_weights_stay_finite_and_counted():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    _train(model, opt, _batches(3))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: nn.functional.mse_loss(model(X), Y) * float("nan"))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.counters["skipped_steps"] == 1  # one step, not one per part
    _train(model, opt, _batches(3))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_exception_inside_a_trial_leaves_the_weights_where_the_step_began():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 3:  # a trial of the second part
            raise KeyboardInterrupt
        return nn.functional.mse_loss(model(X), Y)

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is not None for p in model.parameters())  # the first evaluation's, as after a step
    # the buffers hold the one first evaluation's statistics, as after any step
    assert not all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))


def test_a_layer_frozen_mid_run_stops_moving():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=20)
    _train(model, opt, _batches(5))
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    head = model[4].weight.detach().clone()
    _train(model, opt, _batches(5))
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), frozen))
    assert not torch.equal(model[4].weight, head)


def test_the_rng_is_left_as_one_evaluation_leaves_it():
    """Trials replay the first evaluation's dropout masks and leave no trace in the RNG: after a step
    the generator is where one forward with dropout leaves it."""
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    torch.manual_seed(21)
    opt.step(lambda: nn.functional.mse_loss(model(X), Y))
    after_step = torch.get_rng_state()
    torch.manual_seed(21)
    nn.functional.dropout(torch.zeros(48, 12), 0.2, training=True)
    assert torch.equal(after_step, torch.get_rng_state())


def test_state_dict_resumes_bitwise_and_a_mismatched_state_is_refused():
    batches = _batches(24)
    model = _model()
    opt = alsals.LayerwiseALSALS(model)  # anytime: with averages of the iterates
    torch.manual_seed(9)
    _train(model, opt, batches[:12])
    saved_model, saved_opt, rng = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state()
    _train(model, opt, batches[12:])

    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = alsals.LayerwiseALSALS(resumed)
    opt2.load_state_dict(saved_opt)
    torch.set_rng_state(rng)
    _train(resumed, opt2, batches[12:])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    assert opt2.scale == opt.scale and opt2.counters == opt.counters
    opt.eval()
    opt2.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))

    other = nn.Sequential(nn.Linear(6, 1))
    with pytest.raises(ValueError, match="parts"), pytest.warns(UserWarning, match="one part"):
        alsals.LayerwiseALSALS(other).load_state_dict(saved_opt)


def test_step_after_eval_is_refused_and_eval_train_round_trips():
    model = _model()
    opt = alsals.LayerwiseALSALS(model)
    _train(model, opt, _batches(6))
    iterate = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), iterate))
    with pytest.raises(RuntimeError, match="train"):
        opt.step(lambda: nn.functional.mse_loss(model(X), Y))
    opt.train()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), iterate))


def test_deepcopy_continues_like_the_original():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=30)
    _train(model, opt, _batches(8))
    twin_opt = copy.deepcopy(opt)
    twin = twin_opt.model
    assert twin is not model
    torch.manual_seed(4)
    _train(model, opt, _batches(6))
    torch.manual_seed(4)
    _train(twin, twin_opt, _batches(6))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_step_size_is_the_geometric_mean_of_the_parts_times_the_scale():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    _train(model, opt, _batches(4))
    sizes = list(opt.step_sizes.values())
    assert opt.step_size == pytest.approx(math.prod(sizes) ** (1 / len(sizes)) * opt.scale)


class _Branches(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b = nn.Linear(6, 1), nn.Linear(6, 1)

    def forward(self, x, use_b=True):
        return self.a(x) + (self.b(x) if use_b else 0.0)


def test_a_part_unused_by_a_step_stays_and_the_others_step():
    model = _Branches()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    opt.step(lambda: nn.functional.mse_loss(model(X), Y))
    a, b = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    before = opt.parts["b"].counters
    opt.step(lambda: nn.functional.mse_loss(model(X, use_b=False), Y))
    assert not torch.equal(model.a.weight, a)
    after = opt.parts["b"].counters
    assert torch.equal(model.b.weight, b)
    # the unused part neither searched nor evaluated, but its clock (and so its anneal) follows the run
    assert after["forward_evaluations"] == before["forward_evaluations"] and after["searches"] == before["searches"]
    assert after["steps"] == before["steps"] + 1 == opt.counters["steps"]


def test_a_part_frozen_for_a_while_is_annealed_by_the_end_of_the_run_and_decay_starts_agree():
    """The anneal follows the run's step in every part: a part frozen for some steps, and steps
    skipped as a whole (a NaN loss), still end the run at the anneal's last factor, and every part's
    ``decay_start`` equals the optimizer's."""
    T = 40
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=T)
    batches = _batches(T)
    for t, idx in enumerate(batches, start=1):
        frozen = 10 <= t < 20
        model[4].requires_grad_(not frozen)
        if t == 25:  # a step skipped as a whole
            opt.step(lambda: torch.tensor(float("nan"), requires_grad=True) + 0.0 * model(X[idx]).sum())
            continue
        opt.step(lambda idx=idx: nn.functional.mse_loss(model(X[idx]), Y[idx]))
    assert opt.counters["skipped_steps"] == 1
    for part in opt.parts.values():
        state = part.search_state
        assert state["steps"] == T
        assert state["last_anneal"] == pytest.approx(1 / (T - (opt.decay_start or T - 8) + 1))
        assert state["decay_start"] == opt.decay_start


def test_a_non_finite_gradient_in_one_part_skips_the_whole_step_once():
    model = _Branches()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        loss = nn.functional.mse_loss(model(X), Y)
        return loss + 0.0 * model.b.weight.sum() * float("inf") if torch.is_grad_enabled() else loss

    opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.counters["skipped_steps"] == 1
    # no part searched, moved or counted a skip of its own; their clocks follow the run's step
    assert all(o.counters["forward_evaluations"] == 0 and o.counters["skipped_steps"] == 0 for o in opt.parts.values())
    assert all(o.counters["steps"] == 1 for o in opt.parts.values())


def test_a_closure_that_runs_backward_itself_works_and_its_passes_are_counted():
    """LBFGS style (``zero_grad(); backward()`` in the closure): the same steps as a forward-only
    closure, the combined trials included, and every backward pass counted."""
    batches = _batches(12)
    forward_only, lbfgs = _model(), _model()
    opt_a = alsals.LayerwiseALSALS(forward_only, total_steps=12)
    opt_b = alsals.LayerwiseALSALS(lbfgs, total_steps=12)
    torch.manual_seed(1)
    _train(forward_only, opt_a, batches)
    torch.manual_seed(1)
    backwards = {"n": 0}
    for idx in batches:
        def closure(idx=idx):
            opt_b.zero_grad()
            loss = nn.functional.mse_loss(lbfgs(X[idx]), Y[idx])
            loss.register_hook(lambda grad: backwards.__setitem__("n", backwards["n"] + 1))
            loss.backward()
            return loss
        opt_b.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(forward_only.state_dict().values(), lbfgs.state_dict().values()))
    assert opt_b.counters["combined_trials"] >= 12
    assert opt_b.counters["backward_passes"] == backwards["n"] == opt_b.counters["forward_evaluations"]
    assert opt_a.counters["forward_evaluations"] == opt_b.counters["forward_evaluations"]


def test_the_first_gradient_is_left_in_grad_and_other_optimizers_grads_are_kept():
    model = _Branches()
    opt = alsals.LayerwiseALSALS(model, [model.a.weight, model.a.bias, model.b.weight])
    model.b.bias.grad = torch.ones_like(model.b.bias)  # another optimizer's parameter
    loss = nn.functional.mse_loss(model(X), Y)
    expected = torch.autograd.grad(loss, model.a.weight)[0]
    opt.step(lambda: nn.functional.mse_loss(model(X), Y))
    assert torch.allclose(model.a.weight.grad, expected)
    assert model.b.bias.grad is not None


def test_part_of_splits_deeper_and_params_accept_named_parameters():
    blocks = nn.Module()
    blocks.h = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    opt = alsals.LayerwiseALSALS(blocks, blocks.named_parameters(), part_of=lambda name: ".".join(name.split(".")[:2]))
    assert list(opt.parts) == ["h.0", "h.1", "h.2"]
    assert list(alsals.LayerwiseALSALS(blocks).parts) == ["h.0", "h.1", "h.2"]  # below the one child
    with pytest.warns(UserWarning, match="part_of"):
        alsals.LayerwiseALSALS(blocks, part_of=top_level_module)  # the rule before: one part
    model = _model()
    with pytest.warns(UserWarning, match="one part"):
        grouped = alsals.LayerwiseALSALS(model, [{"params": model[0].weight, "weight_decay": 0.1}])
    assert list(grouped.parts) == ["0"] and grouped.param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(TypeError, match="not one tensor"):
        alsals.LayerwiseALSALS(model, model[0].weight)


def test_state_maps_every_trained_parameter_to_its_parts_state():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    _train(model, opt, _batches(2))
    assert set(opt.state) == set(model.parameters())
    assert all("exp_avg" in st for st in opt.state.values())


def test_an_amortized_combined_test_runs_only_when_a_part_searches_and_reuses_the_scale_between():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=60, amortized_combined_test=True)
    counts = {"forward": 0, "with_grad": 0}
    for idx in _batches(60):
        searching = any(opt._searches_now(name) for name in opt.parts)
        before = opt.counters
        scale = opt.scale
        _train(model, opt, [idx], counts)
        after = opt.counters
        tested = after["combined_trials"] > before["combined_trials"]
        assert searching or not tested  # (a searching step tests unless the prediction is not positive)
        if not searching:  # the carried scale applied untested
            assert after["combined_reused"] == before["combined_reused"] + 1 and opt.scale == scale
    assert opt.counters["combined_reused"] > 20  # the parts' searches are amortized after their warm-up
    assert opt.counters["forward_evaluations"] == counts["forward"]
    every_step = alsals.LayerwiseALSALS(_model(), total_steps=60)
    model2 = every_step.model
    _train(model2, every_step, _batches(60))
    assert every_step.counters["combined_reused"] == 0
    assert opt.counters["forward_evaluations"] < every_step.counters["forward_evaluations"]


def test_part_of_blocks_gives_each_repeated_block_its_own_part():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 8)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2)])
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            h = self.embed(x)
            for block in self.blocks:
                h = h + block(h)
            return self.head(h)

    model = Tiny()
    opt = alsals.LayerwiseALSALS(model, part_of="blocks")
    assert list(opt.parts) == ["embed", "blocks.0", "blocks.1", "head"]
    _train(model, opt, _batches(3))
    assert list(alsals.LayerwiseALSALS(_model(), part_of="blocks").parts) == ["0", "1", "4"]  # a Sequential model
    with pytest.raises(ValueError, match="part_of"):
        alsals.LayerwiseALSALS(model, part_of="layers")


def test_it_is_a_torch_optimizer_whose_groups_are_the_parts_groups_also_after_resume():
    """A ``torch.optim.Optimizer`` (what Lightning, the HF Trainer and LR schedulers require): its
    ``param_groups`` are the parts' group dicts, before and after ``load_state_dict`` (which gives
    the parts new dicts), so a scheduler's multiplier scales each part's committed step; groups
    cannot be added later and ``state`` cannot be assigned; step hooks run."""
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=20)
    assert isinstance(opt, torch.optim.Optimizer)
    _train(model, opt, _batches(3))
    resumed = alsals.LayerwiseALSALS(model, total_steps=20)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for candidate in (opt, resumed):
        parts_groups = [g for part in candidate.parts.values() for g in part.param_groups]
        assert len(candidate.param_groups) == len(parts_groups)
        assert all(a is b for a, b in zip(candidate.param_groups, parts_groups))
    sched = torch.optim.lr_scheduler.LambdaLR(resumed, lambda t: 0.25)
    assert all(g["lr"] == 0.25 for part in resumed.parts.values() for g in part.param_groups)
    calls = []
    resumed.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    # with the multiplier 0.25 every part moves by a quarter of what it moves at 1 (the same search)
    twin_model = copy.deepcopy(model)
    twin = alsals.LayerwiseALSALS(twin_model, total_steps=20, combined_test=False)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # (torch shares a state dict's tensors on load)
    quarter = alsals.LayerwiseALSALS(model, total_steps=20, combined_test=False)
    quarter.load_state_dict(copy.deepcopy(opt.state_dict()))
    torch.optim.lr_scheduler.LambdaLR(quarter, lambda t: 0.25)
    before = [p.detach().clone() for p in model.parameters()]
    idx = _batches(4)[3]
    torch.manual_seed(11)  # the same dropout masks
    twin.step(lambda: nn.functional.mse_loss(twin_model(X[idx]), Y[idx]))
    torch.manual_seed(11)
    quarter.step(lambda: nn.functional.mse_loss(model(X[idx]), Y[idx]))
    for w0, full, part in zip(before, twin_model.parameters(), model.parameters()):
        torch.testing.assert_close(part - w0, 0.25 * (full - w0), rtol=1e-4, atol=1e-7)
    resumed.step(lambda: nn.functional.mse_loss(model(X[idx]), Y[idx]))
    assert calls == [resumed]
    sched.step()
    with pytest.raises(ValueError, match="after construction"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(AttributeError, match="read only"):
        opt.state = {model[0].weight: {}}


def test_decay_on_plateau_starts_every_parts_decay_when_the_loss_stops_falling_and_resumes():
    """On a target of pure noise the batch loss is flat within a few steps: with
    ``decay_on_plateau=True`` (the default) every part's decay starts at the first step where two windows of the
    run's tenth show no fall (before the anneal's own start at 0.8·T), and a run resumed from a
    state saved before that point starts it at the same step, bitwise; off, nothing starts early."""
    T = 60
    gen = torch.Generator().manual_seed(2)
    noise_y = torch.randn(48, 1, generator=gen)
    order = [torch.randint(0, 48, (16,), generator=gen) for _ in range(T)]

    def run(opt, model, steps):
        for idx in steps:
            opt.step(lambda idx=idx: nn.functional.mse_loss(model(X[idx]), noise_y[idx]))

    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=T)
    torch.manual_seed(0)
    run(opt, model, order[:10])
    saved_model, saved_opt, rng = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state()
    run(opt, model, order[10:])
    start = opt.decay_start
    assert 12 <= start < 48  # two windows of 6 steps at least; earlier than T − ⌈0.2·T⌉
    assert {part.search_state["decay_start"] for part in opt.parts.values()} == {start}
    assert all(part.search_state["last_anneal"] == pytest.approx(1 / (T - start + 1)) for part in opt.parts.values())

    resumed_model = _model()
    resumed_model.load_state_dict(saved_model)
    resumed = alsals.LayerwiseALSALS(resumed_model, total_steps=T, decay_on_plateau=True)
    resumed.load_state_dict(saved_opt)
    torch.set_rng_state(rng)
    run(resumed, resumed_model, order[10:])
    assert resumed.decay_start == start
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))

    plain_model = _model()
    plain = alsals.LayerwiseALSALS(plain_model, total_steps=T, decay_on_plateau=False)
    torch.manual_seed(0)
    run(plain, plain_model, order)
    assert plain.decay_start == 0 and all(p.search_state["decay_start"] == 0 for p in plain.parts.values())


def test_deepcopy_and_pickle_with_a_scheduler_and_hooks_attached_step_the_copy():
    """An LR scheduler wraps ``opt.step`` on the instance and hooks hold closures: a deep copy (or an
    unpickled optimizer) drops both, as torch's optimizers do, and steps itself, not the original."""
    import pickle

    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=20)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    opt.register_step_post_hook(lambda optimizer, args, kwargs: None)
    _train(model, opt, _batches(2))
    twin = copy.deepcopy(opt)
    idx = _batches(3)[2]
    twin.step(lambda: nn.functional.mse_loss(twin.model(X[idx]), Y[idx]))
    assert twin.counters["steps"] == 3 and opt.counters["steps"] == 2
    restored = pickle.loads(pickle.dumps(opt))
    restored.step(lambda: nn.functional.mse_loss(restored.model(X[idx]), Y[idx]))
    assert restored.counters["steps"] == 3 and opt.counters["steps"] == 2
    torch.optim.lr_scheduler.LambdaLR(restored, lambda t: 0.5)  # a scheduler attaches to the copy
    assert all(g["lr"] == 0.5 for part in restored.parts.values() for g in part.param_groups)


def test_unsupported_scalers_and_foreign_state_dicts_get_clear_errors():
    model = _model()
    opt = alsals.LayerwiseALSALS(model)
    with pytest.raises(TypeError, match="bf16"):
        opt.step(lambda: nn.functional.mse_loss(model(X), Y), grad_scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="not a LayerwiseALSALS state dict"):
        opt.load_state_dict(alsals.ALSALS(model.parameters()).state_dict())
    with pytest.warns(UserWarning, match="part_of='blocks'"):  # a wrapped layer is one part
        alsals.LayerwiseALSALS(nn.Sequential(nn.Linear(6, 1)))


def test_state_of_a_parameter_without_state_reads_empty_as_a_torch_optimizers_does():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    first = model[0].weight
    assert opt.state[first] == {}  # before any step: torch's defaultdict(dict)
    model[4].requires_grad_(False)  # a part that never gets a gradient
    _train(model, opt, _batches(2))
    assert "exp_avg" in opt.state[first]
    assert opt.state[model[4].weight] == {}
    assert model[4].weight not in opt.parts["4"].state  # reading it stored nothing in the part


def test_torch_step_hooks_fire_once_per_step_not_once_more_per_part():
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    assert len(opt.parts) == 3
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append(("global pre", type(o)))),
               register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(("global post", type(o)))),
               opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", type(o)))),
               opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", type(o))))]
    try:
        _train(model, opt, _batches(2))
    finally:
        for handle in handles:
            handle.remove()
    kind = alsals.LayerwiseALSALS
    assert calls == [("global pre", kind), ("pre", kind), ("post", kind), ("global post", kind)] * 2
    assert opt.counters["searches"] >= 3  # the parts did step


def test_state_dict_hooks_run_as_torch_runs_them():
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    _train(model, opt, _batches(2))
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": calls.append("post") or "saved"})
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: calls.append("load pre") or {k: v for k, v in sd.items() if k != "note"})
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    saved = opt.state_dict()
    assert saved["note"] == "saved" and calls == ["pre", "post"]
    twin = alsals.LayerwiseALSALS(model, total_steps=10)
    twin.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "note"})
    twin.load_state_dict(saved)  # the pre hook's dict is the one loaded
    assert twin.counters == opt.counters
    opt.load_state_dict(saved)
    assert calls == ["pre", "post", "load pre", "load post"]
    assert "note" in saved  # the caller's dict is not changed


def test_grad_scaler_step_with_a_closure_gets_the_clear_error():
    model = _model()
    opt = alsals.LayerwiseALSALS(model)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="bf16"):
        scaler.step(opt, lambda: nn.functional.mse_loss(model(X), Y))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


class _Wrapper(nn.Module):
    """A LightningModule's shape: the network in one attribute, a loss module without parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net
        self.loss = nn.MSELoss()

    def forward(self, x):
        return self.model(x)


class _TiedLM(nn.Module):
    """A Hugging Face ``*LMHeadModel``'s shape: a body in ``transformer``, a head tied to its embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(11, 4)
        self.transformer.h = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.transformer.ln_f = nn.LayerNorm(4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, tokens):
        x = self.transformer.wte(tokens)
        for block in self.transformer.h:
            x = torch.tanh(block(x))
        return self.lm_head(self.transformer.ln_f(x))


def test_the_parts_are_found_below_the_levels_that_only_wrap():
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    assert wrapper_prefix(net) == ""
    assert wrapper_prefix(_Wrapper(net)) == "model."
    assert wrapper_prefix(_Wrapper(_Wrapper(net))) == "model.model."
    assert wrapper_prefix(_TiedLM()) == "transformer."  # the tied head is named once, in the body
    assert wrapper_prefix(nn.Sequential(nn.Linear(6, 1))) == ""  # a wrapped layer is not split
    own = _Wrapper(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)))
    own.temperature = nn.Parameter(torch.ones(()))  # a parameter of the level itself: a part of its own
    assert wrapper_prefix(own) == "model."
    assert list(alsals.LayerwiseALSALS(own).parts) == ["temperature", "model.0", "model.2"]

    wrapped = _Wrapper(_model())
    opt = alsals.LayerwiseALSALS(wrapped, total_steps=10)
    assert list(opt.parts) == ["model.0", "model.1", "model.4"]
    assert list(alsals.LayerwiseALSALS(_TiedLM()).parts) == ["transformer.wte", "transformer.h", "transformer.ln_f"]
    blocks = alsals.LayerwiseALSALS(_TiedLM(), part_of="blocks").parts
    assert list(blocks) == ["transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    legacy = repeated_blocks(_TiedLM(), below_wrappers=False)
    assert [legacy(n) for n in ("transformer.wte.weight", "transformer.h.1.bias")] == ["transformer", "transformer.h.1"]
    with pytest.warns(UserWarning, match="one part"):  # the rule before: the first component of the name
        assert list(alsals.LayerwiseALSALS(_TiedLM(), part_of=top_level_module).parts) == ["transformer"]


def test_a_wrapped_model_steps_as_the_model_itself():
    """The wrapper adds a name level and nothing else: the same weights after the same steps."""
    plain, wrapped = _model(), _Wrapper(_model())
    batches = _batches(6)
    opt_plain = alsals.LayerwiseALSALS(plain, total_steps=6)
    opt_wrapped = alsals.LayerwiseALSALS(wrapped, total_steps=6)
    torch.manual_seed(9)
    _train(plain, opt_plain, batches)
    torch.manual_seed(9)
    _train(wrapped, opt_wrapped, batches)
    assert opt_wrapped.counters == opt_plain.counters
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), wrapped.parameters()))


def test_frozen_copies_tied_heads_and_parametrized_layers_do_not_change_the_parts():
    import torch.nn.utils.parametrize as parametrize

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(11, 4), nn.Tanh(), nn.Linear(4, 11))

    class WithEMA(nn.Module):  # a frozen copy beside the network
        def __init__(self) -> None:
            super().__init__()
            self.model = net()
            self.ema = copy.deepcopy(self.model).requires_grad_(False)

    assert list(alsals.LayerwiseALSALS(WithEMA()).parts) == ["model.0", "model.2", "ema"]
    only_trained = WithEMA()
    assert wrapper_prefix(only_trained, only_trained.model.parameters()) == "model."

    class HeadFirst(nn.Module):  # a head tied to the embedding, defined before the body
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 11, bias=False)
            self.body = nn.Sequential(nn.Embedding(11, 4), nn.Tanh(), nn.LayerNorm(4))
            self.head.weight = self.body[0].weight

    tied = HeadFirst()
    assert wrapper_prefix(tied) == "body."
    parts = alsals.LayerwiseALSALS(tied).parts
    assert list(parts) == ["body.0", "body.2"]  # the shared weight is the embedding's, not a part 'head'
    assert parts["body.0"].param_groups[0]["params"][0] is tied.head.weight

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    layer = _Wrapper(nn.Linear(4, 4))  # a wrapped layer whose weight and bias are both parametrized
    parametrize.register_parametrization(layer.model, "weight", Scale())
    parametrize.register_parametrization(layer.model, "bias", Scale())
    assert wrapper_prefix(layer) == ""
    with pytest.warns(UserWarning, match="one part"):
        assert list(alsals.LayerwiseALSALS(layer).parts) == ["model"]
    stack = _Wrapper(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)))
    parametrize.register_parametrization(stack.model[0], "weight", Scale())
    assert list(alsals.LayerwiseALSALS(stack).parts) == ["model.0", "model.1"]
    assert list(alsals.LayerwiseALSALS(stack, part_of="blocks").parts) == ["model.0", "model.1"]


def test_state_is_read_only_and_step_size_ignores_parts_that_never_searched():
    model = _model()
    model[0].requires_grad_(False)  # a frozen first layer: its part never searches
    opt = alsals.LayerwiseALSALS(model, total_steps=10)
    _train(model, opt, _batches(3))
    weight = model[4].weight
    with pytest.raises(TypeError, match="read only"):
        opt.state[weight] = {}
    with pytest.raises(TypeError, match="read only"):
        del opt.state[weight]
    assert "exp_avg" in opt.state[weight] and opt.state[weight] is opt.parts["4"].state[weight]
    assert opt.parts["0"].step_size == opt.parts["0"].config.initial_step_size  # never searched
    stepped = [opt.parts[name].step_size for name in ("1", "4")]
    assert opt.step_size == pytest.approx(math.sqrt(stepped[0] * stepped[1]) * opt.scale)


def test_a_state_saved_with_other_parts_names_the_rule_that_loads_it():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _model()

    wrapped = Wrapped()
    with pytest.warns(UserWarning, match="one part"):
        before = alsals.LayerwiseALSALS(wrapped, part_of=top_level_module)
    with pytest.raises(ValueError, match="part_of=alsals.layerwise.top_level_module"):
        alsals.LayerwiseALSALS(wrapped).load_state_dict(before.state_dict())


def _train_zeroing_grads(set_to_none: bool, total_steps: int, steps: int):
    """A model trained by LayerwiseALSALS with a closure in the ``torch.optim.LBFGS`` style, which
    zeroes ``p.grad`` (in place when ``set_to_none=False``) before its own backward pass."""
    model = _model()
    opt = alsals.LayerwiseALSALS(model, total_steps=total_steps)
    for idx in _batches(steps):
        def closure(idx=idx):
            model.zero_grad(set_to_none=set_to_none)
            loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
            loss.backward()
            return loss
        opt.step(closure)
    return model, opt


def test_a_closure_that_zeroes_gradients_in_place_does_not_reach_the_first_gradient():
    """A closure in the ``torch.optim.LBFGS`` style that zeroes ``p.grad`` in place
    (``set_to_none=False``) before its backward pass gives the steps one that sets it to None gives:
    no trial reaches the first evaluation's gradients, which every part's search uses."""
    results = []
    for set_to_none in (True, False):
        model, opt = _train_zeroing_grads(set_to_none, total_steps=10, steps=4)
        results.append(([p.detach().clone() for p in model.parameters()], [p.grad.clone() for p in model.parameters()],
                        opt.counters))
    (weights, grads, counters), (weights_z, grads_z, counters_z) = results
    assert counters == counters_z and counters["combined_trials"] >= 4
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_z))
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_z))
    assert any(g.abs().sum() > 0 for g in grads_z)  # the first evaluation's gradient is left in p.grad


def _equal(a, b) -> bool:
    """Bitwise equality of nested state (dicts, sequences, tensors, numbers; NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _snapshot(model, opt):
    return (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in model.parameters()],
            [b.detach().clone() for b in model.buffers()])


@pytest.mark.parametrize("amortized", [True, False], ids=["amortized", "every-step"])
@pytest.mark.parametrize("told", [True, False], ids=["told", "anytime"])
def test_an_exception_at_any_evaluation_of_a_step_leaves_every_parts_state_as_it_was(told, amortized):
    """Whichever evaluation raises (a part's trial, the combined test), no part has committed: the
    moments, step counts, search states, averages and the combined step's scale and counters are
    as before the step, and the run then goes on exactly as one that never saw the exceptions."""
    kwargs = {"total_steps": 40} if told else {}
    batches = _batches(30)
    model = _model()
    opt = alsals.LayerwiseALSALS(model, amortized=amortized, **kwargs)
    torch.manual_seed(2)
    _train(model, opt, batches[:2])
    twin_opt = copy.deepcopy(opt)
    twin = twin_opt.model
    kinds = set()
    for step, idx in enumerate(batches[2:24]):
        probe = copy.deepcopy(opt)  # how many evaluations this step makes
        evaluations = {"n": 0}

        def counted(idx=idx, probe=probe):
            evaluations["n"] += 1
            return nn.functional.mse_loss(probe.model(X[idx]), Y[idx])

        torch.manual_seed(100 + step)
        probe.step(counted)
        kinds.add("part trials" if evaluations["n"] > 1 + probe.combined_trials - opt.combined_trials else "combined only")
        for failing in range(2, evaluations["n"] + 1):
            before = _snapshot(model, opt)
            calls = {"n": 0}

            def closure(idx=idx, failing=failing):
                calls["n"] += 1
                if calls["n"] == failing:
                    raise RuntimeError("out of memory in this trial")
                return nn.functional.mse_loss(model(X[idx]), Y[idx])

            torch.manual_seed(100 + step)
            with pytest.raises(RuntimeError, match="out of memory"):
                opt.step(closure)
            after = _snapshot(model, opt)
            assert _equal(before[0], after[0]), f"the state changed when evaluation {failing} of step {step} raised"
            assert _equal(before[1], after[1])
            # the buffers hold the first evaluation's statistics, as after any step (no trial's)
            first_only = copy.deepcopy(model)
            with torch.no_grad():
                for b, saved in zip(first_only.buffers(), before[2]):
                    b.copy_(saved)
                torch.manual_seed(100 + step)
                first_only(X[idx])
            assert _equal([b.detach() for b in first_only.buffers()], after[2])
        for m, o in ((model, opt), (twin, twin_opt)):
            torch.manual_seed(100 + step)
            o.step(lambda m=m, idx=idx: nn.functional.mse_loss(m(X[idx]), Y[idx]))
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert kinds == ({"part trials", "combined only"} if amortized else {"part trials"}), kinds
    assert opt.counters == twin_opt.counters and _equal(opt.state_dict(), twin_opt.state_dict())


@pytest.mark.parametrize("kernels", [{}, {"fused": False}, {"foreach": False}], ids=["fused", "foreach", "reference"])
@pytest.mark.parametrize("told", [True, False], ids=["told", "anytime"])
def test_a_staged_alsals_step_committed_is_the_step_and_dropped_changes_nothing(told, kernels):
    """What LayerwiseALSALS builds on: ALSALS's step staged up to its last evaluation, then committed
    and published, gives the plain step's weights and state bitwise, on searched and amortized steps
    and with each kernel; a staged step that is dropped (the weights put back) leaves the state as
    it was."""
    kwargs = {"total_steps": 30, **kernels} if told else dict(kernels)
    models = [_model(), _model()]
    plain, staged = (alsals.ALSALS(m.parameters(), **kwargs) for m in models)
    kinds = set()
    for step, idx in enumerate(_batches(20)):
        torch.manual_seed(step)
        plain.step(lambda: nn.functional.mse_loss(models[0](X[idx]), Y[idx]))
        kinds.add(plain.search_state["last_status"])

        def closure(idx=idx):
            return nn.functional.mse_loss(models[1](X[idx]), Y[idx])

        start = [p.detach().clone() for p in models[1].parameters()]
        if step % 3 == 2:  # dropped, then staged again
            state = copy.deepcopy(staged.state_dict())
            torch.manual_seed(step)
            staged._staged_step(closure)
            with torch.no_grad():
                for p, w in zip(models[1].parameters(), start):
                    p.copy_(w)
            assert _equal(state, staged.state_dict())
        torch.manual_seed(step)
        stage = staged._staged_step(closure)
        end = [p.detach().clone() for p in models[1].parameters()]
        with torch.no_grad():
            for p, w in zip(models[1].parameters(), start):
                p.copy_(w)
        stage.commit()
        with torch.no_grad():
            for p, e in zip(models[1].parameters(), end):
                p.copy_(e)
        stage.publish()
        assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    assert "amortized" in kinds and len(kinds) >= 2  # searched steps report how their search ended
    assert _equal(plain.state_dict(), staged.state_dict())


def test_a_closure_that_zeroes_gradients_in_place_gives_the_amortized_parts_the_first_gradient():
    """The amortized parts' updates wait for the commit, after the other parts' trials: a closure in
    the LBFGS style that zeroes ``p.grad`` in place before its backward pass must not reach the
    gradient those updates use, over a run long enough for amortized steps."""
    results = []
    for set_to_none in (True, False):
        model, opt = _train_zeroing_grads(set_to_none, total_steps=40, steps=25)
        results.append(([p.detach().clone() for p in model.parameters()], opt.state_dict()))
    (weights, state), (weights_z, state_z) = results
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_z))
    assert _equal(state, state_z)
    statuses = {part.search_state["last_status"] for part in opt.parts.values()}
    amortized = sum(part.counters["steps"] - part.counters["searches"] for part in opt.parts.values())
    assert amortized > 0, statuses
