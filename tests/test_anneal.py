"""The built-in anneal (total_steps) and the presets of ALSALS."""

import math

import pytest
import torch

import alsals
from alsals.anneal import anneal_factor

from helpers import batches, mlp, regression_data


def test_wsd_is_flat_then_decays_linearly():
    factors = [anneal_factor("wsd", t, 100, 0.2) for t in range(1, 101)]
    assert factors[:80] == [1.0] * 80
    assert factors[80:] == pytest.approx([(100 - t + 1) / 21 for t in range(81, 101)])
    assert all(a > b for a, b in zip(factors[79:], factors[80:]))


def test_linear_and_cosine_shapes():
    assert anneal_factor("linear", 1, 10, 0.2) == 1.0
    assert anneal_factor("linear", 10, 10, 0.2) == pytest.approx(0.1)
    assert anneal_factor("cosine", 1, 10, 0.2) == 1.0
    assert anneal_factor("cosine", 6, 10, 0.2) == pytest.approx(0.5)
    assert anneal_factor("cosine", 10, 10, 0.2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    # past the end: the last value
    assert anneal_factor("linear", 50, 10, 0.2) == anneal_factor("linear", 10, 10, 0.2)
    with pytest.raises(ValueError):
        anneal_factor("step", 1, 10, 0.2)


def _built_in_against_lambda_lr(built_in_kwargs, factor, after_step=None, steps=30):
    """Train the same MLP twice on the same batches: with ALSALS's built-in anneal (``built_in_kwargs``,
    ``after_step(opt, i)`` called after step ``i``) and with a ``LambdaLR`` of ``factor(t)`` (``t``
    1-based) on the ``lr`` multiplier; check that both search the same step sizes and end at the same
    weights; return the first run's optimizer."""
    X, y = regression_data()
    order = batches(len(X), 32, steps)
    runs = []
    for built_in in (True, False):
        model = mlp(dropout=0.1)
        if built_in:
            opt = alsals.ALSALS(model.parameters(), total_steps=steps, amortized=False, **built_in_kwargs)
            sched = None
        else:
            opt = alsals.ALSALS(model.parameters(), amortized=False)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factor(t + 1))
        torch.manual_seed(0)
        etas = []
        for i, idx in enumerate(order, start=1):
            opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
            etas.append(opt.step_size)
            if built_in and after_step is not None:
                after_step(opt, i)
            if sched:
                sched.step()
        runs.append((etas, [p.detach().clone() for p in model.parameters()], opt))
    (e1, p1, o1), (e2, p2, _) = runs
    assert e1 == e2
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    return o1


@pytest.mark.parametrize("shape", ["wsd", "linear", "cosine"])
def test_built_in_anneal_equals_the_same_schedule_on_the_lr_multiplier(shape):
    """total_steps scales the committed step exactly as a LambdaLR with the same factor does: the
    search (the step sizes) is untouched by it."""
    opt = _built_in_against_lambda_lr({"anneal": shape}, lambda t: anneal_factor(shape, t, 30, 0.2))
    assert opt.search_state["last_anneal"] == pytest.approx(anneal_factor(shape, 30, 30, 0.2))


def test_running_past_total_steps_warns_once_and_keeps_training():
    model = mlp()
    X, y = regression_data()
    opt = alsals.ALSALS(model.parameters(), total_steps=3)
    with pytest.warns(RuntimeWarning, match="past total_steps"):
        for idx in batches(len(X), 32, 5):
            opt.step(lambda: ((model(X[idx]).squeeze(-1) - y[idx]) ** 2).mean())
    assert opt.search_state["last_anneal"] == pytest.approx(anneal_factor("wsd", 3, 3, 0.2))


@pytest.mark.parametrize(
    "kwargs", [dict(total_steps=0), dict(total_steps=2.5), dict(total_steps=True), dict(anneal="step"),
               dict(anneal_fraction=0.0), dict(anneal_fraction=1.5), dict(preset="adamw")]
)
def test_invalid_anneal_and_preset_arguments(kwargs):
    with pytest.raises(ValueError):
        alsals.ALSALS(mlp().parameters(), **kwargs)


def test_presets_set_the_defaults_and_explicit_arguments_win():
    params = list(mlp().parameters())
    ours = alsals.ALSALS(params)
    assert (ours.search_config.c, ours.search_config.smoothing, ours.config.amortized) == (0.5, 0.9, True)
    paper = alsals.ALSALS(params, preset="paper")
    assert (paper.search_config.c, paper.search_config.smoothing, paper.config.amortization) == (0.3, 0.99, None)
    mixed = alsals.ALSALS(params, preset="paper", c=0.4, amortized=True)
    assert mixed.search_config.c == 0.4 and mixed.config.amortized and mixed.search_config.smoothing == 0.99


def test_an_earlier_decay_start_lengthens_the_wsd_decay_and_a_later_one_changes_nothing():
    T = 100
    early = [anneal_factor("wsd", t, T, 0.2, decay_start=30) for t in range(1, T + 1)]
    assert early[:30] == [1.0] * 30
    assert early[30:] == pytest.approx([(T - t + 1) / (T - 30 + 1) for t in range(31, T + 1)])
    default = [anneal_factor("wsd", t, T, 0.2) for t in range(1, T + 1)]
    assert [anneal_factor("wsd", t, T, 0.2, decay_start=90) for t in range(1, T + 1)] == default
    assert [anneal_factor("linear", t, T, 0.2, decay_start=30) for t in range(1, T + 1)] == \
        [anneal_factor("linear", t, T, 0.2) for t in range(1, T + 1)]


def test_begin_decay_equals_the_same_schedule_on_the_lr_multiplier_and_resumes():
    """ALSALS.begin_decay() after step s: the committed steps of the later steps are those of a
    LambdaLR with the factor (T − t + 1)/(T − s + 1); the search is untouched; state_dict keeps it;
    once started, or without total_steps, it does nothing."""
    def begin_after_step_10(opt, i):
        if i == 10:
            opt.begin_decay()
            opt.begin_decay()  # a second call changes nothing
            assert opt.search_state["decay_start"] == 10

    o1 = _built_in_against_lambda_lr({}, lambda t: anneal_factor("wsd", t, 30, 0.2, decay_start=10),
                                     after_step=begin_after_step_10)
    assert o1.search_state["decay_start"] == 10
    assert o1.search_state["last_anneal"] == pytest.approx(1 / 21)
    resumed = alsals.ALSALS(mlp().parameters(), total_steps=30)
    resumed.load_state_dict(o1.state_dict())
    assert resumed.search_state["decay_start"] == 10
    anytime = alsals.ALSALS(mlp().parameters())
    anytime.begin_decay()
    assert anytime.search_state["decay_start"] == 0


def test_plateau_detector_calls_a_flat_noisy_loss_a_plateau_and_a_falling_one_not():
    from alsals.anneal import PlateauDetector

    gen = torch.Generator().manual_seed(0)
    noise = (0.05 * torch.randn(400, generator=gen)).tolist()
    falling = PlateauDetector(total_steps=400)  # window 40
    assert falling.window == 40
    assert not any(falling.update(2.0 - 0.004 * t + n) for t, n in enumerate(noise))
    flat = PlateauDetector(total_steps=400)
    calls = [flat.update(1.0 + n) for n in noise]
    assert not any(calls[:79]) and any(calls[79:])  # only once two windows are full
    assert not flat.update(float("nan"))  # a non-finite loss is not recorded
    # a large first loss and a fast fall: the noise is measured around the last window's trend, so
    # neither counts as noise, and the still-falling loss is not called a plateau at the first chance
    transient = PlateauDetector(total_steps=400)
    calls = [transient.update((29.4 if t == 0 else 0.3 + 2.0 * math.exp(-t / 40)) + n) for t, n in enumerate(noise)]
    assert not any(calls[:200]) and any(calls[200:])
    # the first version (noise="spread", for the benchmark's record) counts the transient as noise
    # and calls the plateau earlier, while the loss still falls
    def slower(t):
        return 29.4 if t == 0 else 0.3 + math.exp(-t / 30)

    first, fixed = PlateauDetector(total_steps=400, noise="spread"), PlateauDetector(total_steps=400)
    spread_calls = [first.update(slower(t) + n) for t, n in enumerate(noise)]
    residual_calls = [fixed.update(slower(t) + n) for t, n in enumerate(noise)]
    assert spread_calls[79] and not any(residual_calls[:120])  # at step 80 the loss still falls 3.6x per window
    with pytest.raises(ValueError, match="noise"):
        PlateauDetector(total_steps=400, noise="range")
    resumed = PlateauDetector(total_steps=400)
    resumed.load_state_dict(flat.state_dict())
    assert resumed.update(1.0) == flat.update(1.0)
