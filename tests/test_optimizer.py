"""Behaviour of the ALSALS optimizer: training, closures, state, robustness, API."""

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

import alsals
from alsals.closure import ClosureEvaluator

from helpers import SmallCNN, batches, image_data, mlp, regression_data


def mse_closure(model, X, y, idx):
    return lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()


def train_regression(opt_factory, steps=60, seed=0, dropout=0.0, dtype=torch.float32):
    X, y = regression_data(seed=seed)
    X, y = X.to(dtype), y.to(dtype)
    model = mlp(dropout=dropout, seed=seed, dtype=dtype)
    opt = opt_factory(model.parameters())
    losses, etas = [], []
    for idx in batches(len(X), 32, steps, seed=seed):
        losses.append(opt.step(mse_closure(model, X, y, idx)).item())
        etas.append(opt.step_size)
    return model, opt, losses, etas


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def full_loss(model, X, y):
    with torch.no_grad():
        return ((model(X).squeeze(-1) - y) ** 2).mean().item()


@pytest.mark.parametrize("factory", [alsals.ALSALS, lambda p: alsals.SLS(p, n_batches_per_epoch=8), alsals.SaLSa])
def test_training_reduces_mlp_loss(factory):
    X, y = regression_data()
    model = mlp()
    start = full_loss(model, X, y)
    opt = factory(model.parameters())
    for idx in batches(len(X), 32, 200):
        opt.step(mse_closure(model, X, y, idx))
    assert full_loss(model, X, y) < 0.1 * start
    assert opt.counters["searches"] > 0


def test_training_reduces_cnn_loss_with_batchnorm_and_dropout():
    X, y = image_data()
    model = SmallCNN()
    loss_fn = nn.CrossEntropyLoss()

    def eval_loss():
        model.eval()
        with torch.no_grad():
            out = loss_fn(model(X), y).item()
        model.train()
        return out

    start = eval_loss()
    opt = alsals.ALSALS(model.parameters())
    for idx in batches(len(X), 32, 60):
        opt.step(lambda: loss_fn(model(X[idx]), y[idx]))
    assert eval_loss() < 0.25 * start
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Closure contract
# ---------------------------------------------------------------------------------------------


def test_step_without_closure_shows_the_fix():
    opt = alsals.ALSALS(mlp().parameters())
    with pytest.raises(TypeError, match=r"opt\.step\(lambda: loss_fn\(model\(x\), y\)\)"):
        opt.step()


@pytest.mark.parametrize(
    "closure, error, match",
    [
        (lambda m, x: 1.0, TypeError, "scalar torch.Tensor"),
        (lambda m, x: m(x).sum().item(), TypeError, "not loss.item"),
        (lambda m, x: m(x), ValueError, "scalar loss"),
        (lambda m, x: m(x).sum().detach(), ValueError, "does not require grad"),
    ],
)
def test_bad_closure_results_raise_clear_errors(closure, error, match):
    model = mlp()
    x = torch.randn(4, 10)
    opt = alsals.ALSALS(model.parameters())
    with pytest.raises(error, match=match):
        opt.step(lambda: closure(model, x))


def test_forward_only_and_lbfgs_style_closures_agree():
    X, y = regression_data()
    runs = []
    for style in ("forward", "lbfgs"):
        model = mlp(dropout=0.2)
        opt = alsals.ALSALS(model.parameters())
        etas = []
        for idx in batches(len(X), 32, 25):
            def closure():
                loss = ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean()
                if style == "lbfgs":
                    opt.zero_grad()
                    loss.backward()
                return loss

            opt.step(closure)
            etas.append(opt.step_size)
        runs.append((etas, [p.detach().clone() for p in model.parameters()], opt.counters))
    (etas_f, params_f, counters_f), (etas_l, params_l, counters_l) = runs
    assert etas_f == etas_l
    for a, b in zip(params_f, params_l):
        assert torch.equal(a, b)
    # forward-only: one backward per step; LBFGS style: the closure's backward also runs in every trial
    assert counters_f["backward_passes"] == 25
    assert counters_l["backward_passes"] == counters_l["forward_evaluations"]


def test_step_returns_the_first_loss_detached():
    X, y = regression_data()
    model = mlp()
    idx = torch.arange(32)
    expected = ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean().item()
    opt = alsals.ALSALS(model.parameters())
    loss = opt.step(mse_closure(model, X, y, idx))
    assert loss.item() == expected and not loss.requires_grad


# ---------------------------------------------------------------------------------------------
# Trials leave no trace: RNG and buffers
# ---------------------------------------------------------------------------------------------


def test_trial_at_the_same_weights_reproduces_the_first_loss_with_dropout():
    model = mlp(dropout=0.5)
    x = torch.randn(64, 10)
    closure = lambda: model(x).pow(2).mean()
    evaluator = ClosureEvaluator(closure, list(model.parameters()), "ALSALS")
    first = evaluator.first()
    for _ in range(3):
        assert evaluator.trial().item() == first.item()  # bit for bit: same dropout masks
    evaluator.finish()


def test_dropout_masks_repeat_within_a_step_and_the_rng_stream_is_untouched():
    model = mlp(dropout=0.5)
    X, y = regression_data()
    masks = []
    model[2].register_forward_hook(lambda mod, inp, out: masks.append((out == 0).clone()))
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0)  # large: forces several trials
    torch.manual_seed(123)
    opt.step(mse_closure(model, X, y, torch.arange(32)))
    after_step = torch.rand(5)
    assert len(masks) >= 3
    assert all(torch.equal(m, masks[0]) for m in masks)
    # The random stream after the step is the one a single evaluation leaves.
    reference = mlp(dropout=0.5)
    torch.manual_seed(123)
    reference(X[:32])
    assert torch.equal(torch.rand(5), after_step)


def test_batchnorm_buffers_are_those_of_the_first_evaluation_alone():
    X, y = image_data()
    model = SmallCNN()
    twin = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss()
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0)
    idx = torch.arange(32)
    torch.manual_seed(0)
    opt.step(lambda: loss_fn(model(X[idx]), y[idx]))
    assert opt.counters["forward_evaluations"] >= 3  # trials did run
    torch.manual_seed(0)
    twin(X[idx])  # one forward at the starting weights, in training mode
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------


def test_nonfinite_first_loss_skips_the_step_and_leaves_everything_untouched():
    model = mlp()
    X, y = regression_data()
    opt = alsals.ALSALS(model.parameters())
    opt.step(mse_closure(model, X, y, torch.arange(32)))
    before_params = [p.detach().clone() for p in model.parameters()]
    before_state = copy.deepcopy(opt.state_dict())
    loss = opt.step(lambda: model(X[:8]).sum() * float("nan"))
    assert math.isnan(loss.item())
    for p, q in zip(model.parameters(), before_params):
        assert torch.equal(p, q)
    after_state = opt.state_dict()
    for key, value in before_state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(after_state["state"][key][name])), name
    assert opt.counters["skipped_steps"] == 1
    assert opt.step_size == before_state["param_groups"][0]["step_size"]


def test_nonfinite_gradient_skips_the_step():
    model = mlp()
    X, y = regression_data()
    opt = alsals.ALSALS(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    handle = model[0].weight.register_hook(lambda g: g * float("inf"))
    opt.step(mse_closure(model, X, y, torch.arange(32)))
    handle.remove()
    assert opt.counters["skipped_steps"] == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert len(opt.state) == 0  # no moments were created from a poisoned gradient


def _poison(value):
    """A gradient hook that puts ``value`` into one entry (two entries of opposite sign for "±inf")."""

    def hook(g):
        g = g.clone()
        if value == "±inf":
            g.view(-1)[0], g.view(-1)[1] = float("inf"), float("-inf")
        else:
            g.view(-1)[0] = value
        return g

    return hook


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "±inf"])
def test_one_nonfinite_gradient_entry_skips_an_amortised_step_too(value):
    model = mlp()
    X, y = regression_data()
    opt = alsals.ALSALS(model.parameters())
    closure = mse_closure(model, X, y, torch.arange(32))
    for _ in range(12):  # past the 10 warm-up searches: the next step is amortised
        opt.step(closure)
    assert opt.search_state["steps_until_search"] > 0
    before = [p.detach().clone() for p in model.parameters()]
    handle = model[2].weight.register_hook(_poison(value))
    opt.step(closure)
    handle.remove()
    assert opt.counters["skipped_steps"] == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_finite_low_precision_gradients_are_not_mistaken_for_overflow(dtype):
    # 4096 entries of 200 (g² = 40000 still fits fp16's moments): their sum, 819200, would overflow
    # an fp16 accumulator (max 65504)
    w = nn.Parameter(torch.zeros(4096, dtype=dtype))
    opt = alsals.ALSALS([w])
    opt.step(lambda: (w.float() * 200.0).sum())
    assert opt.counters["skipped_steps"] == 0 and opt.counters["steps"] == 1
    assert torch.isfinite(w).all() and (w != 0).all()


def test_nonfinite_trial_losses_are_rejected_and_counted():
    X, y = regression_data()
    model = mlp()
    start = [p.detach().clone() for p in model.parameters()]
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0)

    def closure():
        loss = ((model(X[:32]).squeeze(-1) - y[:32]) ** 2).mean()
        moved = sum((p - q).abs().max() for p, q in zip(model.parameters(), start))
        return torch.where(moved > 0.05, torch.full_like(loss, float("nan")), loss)

    opt.step(closure)
    assert opt.counters["rejected_nonfinite"] >= 1
    assert opt.step_size < 0.1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_all_nan_trials_end_the_search_and_restore_the_weights():
    X, y = regression_data()
    model = mlp()
    start = [p.detach().clone() for p in model.parameters()]
    opt = alsals.ALSALS(model.parameters(), max_backtracks=30)
    first = [True]

    def closure():
        loss = ((model(X[:32]).squeeze(-1) - y[:32]) ** 2).mean()
        if first[0]:
            first[0] = False
            return loss
        return loss * float("nan")

    opt.step(closure)
    assert opt.counters["forward_evaluations"] == 1 + 31  # bounded: first + 1 + max_backtracks trials
    assert opt.search_state["last_status"] == "failed"
    for p, q in zip(model.parameters(), start):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_constant_loss_and_zero_gradient_do_not_loop():
    w = nn.Parameter(torch.ones(3))
    opt = alsals.ALSALS([w])
    for _ in range(5):
        opt.step(lambda: (w * 0.0).sum() + 1.0)  # zero gradient, constant loss
    assert opt.counters["forward_evaluations"] == 10  # one trial per step
    assert torch.equal(w.detach(), torch.ones(3))


def test_parameters_without_gradient_are_left_alone():
    model = mlp()
    frozen = nn.Parameter(torch.ones(4))
    opt = alsals.ALSALS([{"params": model.parameters()}, {"params": [frozen]}])
    X, y = regression_data()
    for idx in batches(len(X), 32, 5):
        opt.step(mse_closure(model, X, y, idx))
    assert torch.equal(frozen.detach(), torch.ones(4)) and frozen not in opt.state


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-1.0), dict(lr=float("nan")), dict(betas=(1.0, 0.999)), dict(betas=(0.9,)), dict(betas=(0.9, -0.1)),
        dict(eps=-1e-8), dict(weight_decay=-0.1), dict(c=0.0), dict(c=1.0), dict(growth=0.9),
        dict(backtrack=1.0), dict(backtrack=0.0), dict(slope_smoothing=1.0), dict(min_step_size=0.0),
        dict(max_step_size=1e-12), dict(initial_step_size=100.0), dict(max_backtracks=-1), dict(max_backtracks=2.5),
        dict(direction="newton"), dict(slope="approx"), dict(growth_per="epoch"), dict(amortized="yes"),
        dict(max_search_interval=0), dict(finite_difference_eps=0.0), dict(c="0.3"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        alsals.ALSALS(mlp().parameters(), **kwargs)


def test_search_settings_are_rejected_in_parameter_groups():
    model = mlp()
    with pytest.raises(ValueError, match="shared by all groups"):
        alsals.ALSALS([{"params": model.parameters(), "c": 0.5}])


def test_invalid_group_values_raise():
    model = mlp()
    with pytest.raises(ValueError, match="weight_decay"):
        alsals.ALSALS([{"params": model[0].parameters(), "weight_decay": -1.0}, {"params": model[2].parameters()}])


def test_sparse_gradients_raise_a_clear_error():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = alsals.ALSALS(emb.parameters())
    with pytest.raises(ValueError, match="sparse"):
        opt.step(lambda: emb(torch.tensor([1, 2])).sum())


def test_complex_parameters_are_rejected():
    with pytest.raises(ValueError, match="complex"):
        alsals.ALSALS([nn.Parameter(torch.zeros(2, dtype=torch.complex64))])


# ---------------------------------------------------------------------------------------------
# Parameter groups, weight decay, the lr multiplier and schedulers
# ---------------------------------------------------------------------------------------------


def test_weight_decay_per_group_is_applied_with_the_accepted_step():
    X, y = regression_data()
    idx = torch.arange(32)
    results = []
    for decay in (0.0, 0.5):
        model = mlp()
        start = [p.detach().clone() for p in model.parameters()]
        opt = alsals.ALSALS(
            [{"params": model[0].parameters(), "weight_decay": decay}, {"params": model[2].parameters()}]
        )
        opt.step(mse_closure(model, X, y, idx))
        results.append((opt.step_size, start, [p.detach().clone() for p in model.parameters()]))
    (eta0, start, plain), (eta1, _, decayed) = results
    assert eta0 == eta1  # decay is not part of the search
    for i in (0, 1):  # first layer: w_new = w_plain - eta * lambda * w_old
        torch.testing.assert_close(decayed[i], plain[i] - eta0 * 0.5 * start[i], rtol=1e-5, atol=1e-7)
    for i in (2, 3):  # second group has no decay: exactly the accepted trial point
        assert torch.equal(decayed[i], plain[i])


def test_lr_multiplier_scales_the_committed_step_not_the_search():
    X, y = regression_data()
    idx = torch.arange(32)
    moves, etas = [], []
    for lr in (1.0, 0.25):
        model = mlp()
        start = [p.detach().clone() for p in model.parameters()]
        opt = alsals.ALSALS(model.parameters(), lr=lr)
        opt.step(mse_closure(model, X, y, idx))
        etas.append(opt.step_size)
        moves.append([p.detach() - q for p, q in zip(model.parameters(), start)])
    assert etas[0] == etas[1]
    for full, quarter in zip(*moves):
        torch.testing.assert_close(quarter, 0.25 * full, rtol=1e-4, atol=1e-7)


def test_lr_scheduler_composes_with_the_search():
    X, y = regression_data()
    model = mlp()
    opt = alsals.ALSALS(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}], amortized=False
    )
    steps = 40
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / 30))
    for t, idx in enumerate(batches(len(X), 32, steps)):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(mse_closure(model, X, y, idx))
        sched.step()
        for group in opt.param_groups:
            assert group["step_size"] == opt.step_size
        if t >= 30:  # the schedule reached 0: parameters no longer move (up to the rounding of
            # moving out to the trial point and back), the search still runs
            for p, q in zip(model.parameters(), before):
                torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert opt.param_groups[1]["lr"] == 0.0
    assert opt.step_size > 1e-3  # the search did not shrink eta to undo the schedule
    assert opt.counters["searches"] == steps


def test_tensor_lr_is_accepted():
    model = mlp()
    opt = alsals.ALSALS(model.parameters(), lr=torch.tensor(0.5))
    X, y = regression_data()
    opt.step(mse_closure(model, X, y, torch.arange(32)))
    assert opt.counters["steps"] == 1


# ---------------------------------------------------------------------------------------------
# State: checkpoints and resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amortized", [False, True])
def test_resume_is_bitwise_identical(amortized):
    X, y = regression_data()
    order = batches(len(X), 32, 40)

    def run(model, opt, idxs):
        out = []
        for idx in idxs:
            out.append(opt.step(mse_closure(model, X, y, idx)).item())
        return out

    torch.manual_seed(7)
    model = mlp(dropout=0.2)
    opt = alsals.ALSALS(model.parameters(), amortized=amortized)
    torch.manual_seed(7)
    full = run(model, opt, order)
    final_params = [p.detach().clone() for p in model.parameters()]
    final_state = opt.search_state

    torch.manual_seed(7)
    model = mlp(dropout=0.2)
    opt = alsals.ALSALS(model.parameters(), amortized=amortized)
    torch.manual_seed(7)
    first = run(model, opt, order[:20])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=False)

    model = mlp(dropout=0.2, seed=99)  # different weights: everything must come from the checkpoint
    opt = alsals.ALSALS(model.parameters(), amortized=amortized)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    second = run(model, opt, order[20:])
    assert first + second == full
    for p, q in zip(model.parameters(), final_params):
        assert torch.equal(p, q)
    assert opt.search_state == final_state
    if amortized:
        assert final_state["skipped_searches"] > 0


def test_state_dict_carries_the_search_state_and_is_a_snapshot():
    model, opt, _, _ = train_regression(alsals.ALSALS, steps=5)
    saved = opt.state_dict()
    snapshot = copy.deepcopy(saved["param_groups"][0]["search"])
    X, y = regression_data()
    opt.step(mse_closure(model, X, y, torch.arange(32)))
    assert saved["param_groups"][0]["search"] == snapshot  # later steps do not alter it
    assert set(snapshot) >= {"step_size", "smoothed_slope", "smoothed_decrease", "step_size_fast", "step_size_slow"}


def test_load_state_dict_casts_state_to_the_parameters_dtype():
    model64, opt64, _, _ = train_regression(alsals.ALSALS, steps=3, dtype=torch.float64)
    model32 = mlp()
    opt32 = alsals.ALSALS(model32.parameters())
    opt32.load_state_dict(opt64.state_dict())
    for p in model32.parameters():
        assert opt32.state[p]["exp_avg"].dtype == torch.float32
    assert opt32.step_size == opt64.step_size


def test_state_holds_only_adams_moments():
    model, opt, _, _ = train_regression(lambda params: alsals.ALSALS(params, total_steps=100), steps=2)
    for p in model.parameters():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


def test_without_total_steps_the_state_also_holds_the_average_of_the_iterates():
    model, opt, _, _ = train_regression(alsals.ALSALS, steps=2)
    for p in model.parameters():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq", "average"}


# ---------------------------------------------------------------------------------------------
# Fast path vs reference; host synchronisations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda p, fe: alsals.ALSALS(p, foreach=fe, weight_decay=0.01, lr=0.7),
        lambda p, fe: alsals.SaLSa(p, foreach=fe),
        lambda p, fe: alsals.SLS(p, n_batches_per_epoch=8, foreach=fe),
    ],
)
def test_foreach_and_reference_paths_agree(factory):
    runs = [train_regression(lambda p: factory(p, fe), steps=40, dropout=0.1) for fe in (True, False)]
    (m1, _, l1, e1), (m2, _, l2, e2) = runs
    assert e1 == pytest.approx(e2, rel=1e-6)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_one_host_synchronisation_per_closure_evaluation(monkeypatch):
    X, y = regression_data()
    model = mlp(dropout=0.1)
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0, slope="exact")
    opt.step(mse_closure(model, X, y, torch.arange(32)))  # warm-up (lazy state)
    calls = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    before = opt.counters["forward_evaluations"]
    for idx in batches(len(X), 32, 5):
        opt.step(mse_closure(model, X, y, idx))
    evaluations = opt.counters["forward_evaluations"] - before
    monkeypatch.undo()
    assert evaluations > 10
    assert calls == ["tolist"] * evaluations


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def test_amortised_search_skips_trials():
    _, opt, losses, _ = train_regression(lambda p: alsals.ALSALS(p, amortized=True), steps=80)
    counters = opt.counters
    assert counters["skipped_searches"] > 0
    assert counters["searches"] + counters["skipped_searches"] == 80
    assert counters["forward_evaluations"] < 2 * 80
    assert losses[-1] < losses[0]


def test_finite_difference_slope_matches_the_exact_slope_in_float64():
    X, y = regression_data()
    X, y = X.double(), y.double()
    slopes = {}
    for method in ("exact", "finite_difference"):
        model = mlp(dtype=torch.float64)
        opt = alsals.ALSALS(model.parameters(), slope=method, finite_difference_eps=1e-7, slope_smoothing=0.5)
        opt.step(mse_closure(model, X, y, torch.arange(32)))
        slopes[method] = opt.search_state["smoothed_slope"]
    assert slopes["finite_difference"] == pytest.approx(slopes["exact"], rel=1e-4)
    assert opt.counters["forward_evaluations"] >= 3  # one more evaluation for the finite difference


def test_presets_use_their_rules():
    model = mlp()
    sls = alsals.SLS(model.parameters(), n_batches_per_epoch=4)
    assert sls.search_config.growth == pytest.approx(2 ** 0.25)
    assert sls.config.direction == "gradient" and sls.search_config.smoothing == 0.0
    salsa = alsals.SaLSa(model.parameters())
    assert salsa.config.direction == "preconditioned_gradient" and salsa.config.amortized
    assert not alsals.SaLSa(model.parameters(), amortized=False).config.amortized
    with pytest.raises(ValueError):
        alsals.SLS(model.parameters(), n_batches_per_epoch=0)


def test_sls_direction_is_the_gradient():
    # One SLS step on a quadratic moves exactly along -g by the accepted step size.
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = alsals.SLS([w], n_batches_per_epoch=1)
    grad = 2 * torch.tensor([1.0, -2.0], dtype=torch.float64)
    opt.step(lambda: (w**2).sum())
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64) - opt.step_size * grad)


def test_low_precision_loss_warns():
    model = mlp()
    x = torch.randn(8, 10)
    opt = alsals.ALSALS(model.parameters())
    with pytest.warns(RuntimeWarning, match="float32"):
        opt.step(lambda: model(x).pow(2).mean().bfloat16())


def test_grad_scaler_without_closure_explains_the_framework_case():
    opt = alsals.ALSALS(mlp().parameters())
    with pytest.raises(TypeError, match="bf16"):
        opt.step(grad_scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize("rule", ["halving", "doubling"])
def test_interval_grows_while_searches_confirm_the_step_size(rule):
    # A very flat quadratic: no trial is ever rejected, so during the 10 warm-up searches the interval
    # doubles to its maximum (20), and then the optimizer searches every 20 steps.
    w = nn.Parameter(torch.ones(4))
    opt = alsals.ALSALS([w], preset="v0.1", initial_step_size=1e-3, search_interval_rule=rule)
    assert opt.config.search_interval_rule == rule
    assert opt.config.max_search_interval == 20
    for _ in range(100):
        opt.step(lambda: 1e-3 * (w**2).sum())
    counters = opt.counters
    assert counters["backtracks"] == 0
    assert counters["searches"] == 10 + 4  # steps 1..10, then 30, 50, 70, 90
    assert opt.search_state["search_interval"] == 20


def test_doubling_interval_drops_to_one_after_a_backtrack():
    w = nn.Parameter(torch.ones(4))
    opt = alsals.ALSALS([w], preset="v0.1", initial_step_size=1e-3, search_interval_rule="doubling")
    for _ in range(30):
        opt.step(lambda: 1e-3 * (w**2).sum())
    assert opt.search_state["search_interval"] == 20
    while opt.search_state["steps_until_search"] > 0:  # the next step searches
        opt.step(lambda: 1e-3 * (w**2).sum())
    # a steep minimum just beside the weights: the next search overshoots it and must backtrack
    target = w.detach() + 1e-4
    steep = lambda: 1e6 * ((w - target) ** 2).sum()  # noqa: E731
    opt.step(steep)
    assert opt.search_state["last_status"] == "accepted" and opt.search_state["last_trials"] > 1
    assert opt.search_state["search_interval"] == 1 and opt.search_state["steps_until_search"] == 0
    opt.step(steep)
    assert opt.search_state["last_status"] != "amortised"  # searched again at once


def test_halving_interval_rule_halves_the_interval_per_cut_of_the_step_size():
    w = nn.Parameter(torch.ones(4))
    opt = alsals.ALSALS([w], preset="v0.1", initial_step_size=1e-3)
    assert opt.config.search_interval_rule == "halving"  # version 0.1's default
    assert alsals.ALSALS([w]).config.search_interval_rule == "doubling"  # ours
    for _ in range(30):
        opt.step(lambda: 1e-3 * (w**2).sum())
    assert opt.search_state["search_interval"] == 20
    while opt.search_state["steps_until_search"] > 0:
        opt.step(lambda: 1e-3 * (w**2).sum())
    target = w.detach() + 1e-4
    steep = lambda: 1e6 * ((w - target) ** 2).sum()  # noqa: E731
    before = opt.counters["backtracks"]
    opt.step(steep)
    cuts = opt.counters["backtracks"] - before
    assert opt.search_state["last_status"] == "accepted" and cuts >= 1
    assert opt.search_state["search_interval"] == max(1, 20 >> cuts)
    # and a search that accepts its first trial doubles it again
    interval = opt.search_state["search_interval"]
    flat = lambda: 1e-12 * (w**2).sum()  # noqa: E731
    while opt.search_state["steps_until_search"] > 0:
        opt.step(flat)
    opt.step(flat)
    assert opt.search_state["last_trials"] == 1
    assert opt.search_state["search_interval"] == min(20, 2 * interval)


def test_salsa_preset_keeps_salsas_interval_rule():
    assert alsals.SaLSa(mlp().parameters()).config.search_interval_rule == "salsa"
    with pytest.raises(ValueError):
        alsals.ALSALS(mlp().parameters(), search_interval_rule="tripling")


class EMABuffer(nn.Module):
    """A buffer updated in forward, three ways: in place (mul_/add_), by copy_, or by assignment."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.register_buffer("code", torch.zeros(32))

    def forward(self, h):
        if self.training:
            new = 0.9 * self.code + 0.1 * h.detach().mean(0)
            if self.how == "in-place":
                self.code.mul_(0.9).add_(h.detach().mean(0), alpha=0.1)
            elif self.how == "copy_":
                self.code.copy_(new)
            else:
                self.code = new  # replaces the registered buffer
        return h + self.code


@pytest.mark.parametrize("how", ["in-place", "copy_", "assignment"])
def test_buffers_updated_in_forward_are_those_of_the_first_evaluation_alone(how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), EMABuffer(how), nn.Tanh(), nn.Linear(32, 1))
    twin = copy.deepcopy(model)
    X, y = regression_data()
    opt = alsals.ALSALS(model.parameters(), initial_step_size=1.0, amortized=False)  # several trials
    for idx in batches(len(X), 32, 4):
        twin.load_state_dict(model.state_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            opt.step(mse_closure(model, X, y, idx))
        twin(X[idx])  # one forward at the weights before the step
        assert torch.equal(model[1].code, twin[1].code)
    assert opt.counters["forward_evaluations"] > 2 * 4
