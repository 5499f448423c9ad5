"""alsals_bench.layerwise: the per-layer step-size prototype steps each part as a lone ALSALS would from
the same point (Jacobi), keeps one forward's BatchNorm statistics, and forwards eval/train."""

from __future__ import annotations

import alsals
import pytest
import torch
from torch import nn

from alsals_bench.layerwise import LayerwiseALSALS, parts_of
from alsals_bench.tasks import TASKS

X = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randn(32, 1, generator=torch.Generator().manual_seed(1))


def _model(batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(3)
    norm = [nn.BatchNorm1d(8)] if batchnorm else []
    layers = [nn.Linear(6, 8), *norm, nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 1)]
    return nn.Sequential(*layers)


def _closure(model):
    return lambda: nn.functional.mse_loss(model(X), Y)


def test_parts_are_the_top_level_modules_and_keep_their_group_settings():
    model = _model()
    groups = [{"params": [model[0].weight, model[3].weight], "weight_decay": 0.1},
              {"params": [model[0].bias, model[3].bias], "weight_decay": 0.0}]
    parts = parts_of(model, groups)
    assert list(parts) == ["0", "3"]
    assert [[g["weight_decay"] for g in part] for part in parts.values()] == [[0.1, 0.0], [0.1, 0.0]]
    assert parts["3"][0]["params"][0] is model[3].weight


def test_one_step_moves_each_part_as_a_lone_alsals_over_it_would():
    """Step 1 from the same weights and RNG state: each part ends where an ALSALS over that part
    alone (the other part untouched) puts it, so no part's search sees another part's step."""
    model = _model()
    torch.manual_seed(7)
    layerwise = LayerwiseALSALS(model, [{"params": list(model.parameters())}], total_steps=10)
    layerwise.step(_closure(model))
    for index in (0, 3):
        alone = _model()
        torch.manual_seed(7)
        alsals.ALSALS(alone[index].parameters(), total_steps=10).step(_closure(alone))
        for moved, expected in zip(model[index].parameters(), alone[index].parameters()):
            assert torch.equal(moved, expected)
        assert not torch.equal(model[index].weight, _model()[index].weight)  # it did move


def test_a_model_with_one_part_steps_as_plain_alsals():
    model, plain = nn.Sequential(nn.Linear(6, 1)), nn.Sequential(nn.Linear(6, 1))
    plain.load_state_dict(model.state_dict())
    layerwise = LayerwiseALSALS(model, [{"params": list(model.parameters())}])
    reference = alsals.ALSALS(plain.parameters())
    for _ in range(15):
        layerwise.step(_closure(model))
        reference.step(_closure(plain))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))
    assert layerwise.counters == reference.counters
    assert layerwise.step_size == pytest.approx(reference.step_size)


def test_batchnorm_statistics_are_those_of_one_forward_and_counters_add_up():
    model, plain = _model(batchnorm=True), _model(batchnorm=True)
    torch.manual_seed(5)
    layerwise = LayerwiseALSALS(model, [{"params": list(model.parameters())}], total_steps=10)
    layerwise.step(_closure(model))
    torch.manual_seed(5)
    alsals.ALSALS(plain.parameters(), total_steps=10).step(_closure(plain))
    assert torch.equal(model[1].running_mean, plain[1].running_mean)
    assert model[1].num_batches_tracked.item() == 1
    parts = layerwise.parts.values()
    assert len(parts) == 3  # Linear, BatchNorm, Linear
    assert layerwise.counters["forward_evaluations"] == sum(p.counters["forward_evaluations"] for p in parts) >= 6


def test_eval_and_train_swap_every_parts_average():
    model = _model()
    layerwise = LayerwiseALSALS(model, [{"params": list(model.parameters())}])  # anytime: keeps averages
    assert layerwise.config.averages
    for _ in range(5):
        layerwise.step(_closure(model))
    trained = [p.detach().clone() for p in model.parameters()]
    layerwise.eval()
    averaged = [p.detach().clone() for p in model.parameters()]
    layerwise.train()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), trained))
    assert all(not torch.equal(a, b) for a, b in zip(averaged, trained))


class _Pair(nn.Module):
    """Two scalar weights in two top-level modules, both starting at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 1, bias=False)
        self.b = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.a.weight)
        nn.init.zeros_(self.b.weight)


@pytest.mark.parametrize("interacting", [True, False])
def test_joint_scales_a_combined_step_that_delivers_less_than_the_parts_apart(interacting):
    """``f = (a + b − 1)²``: each part alone steps to 0.9/0.999 (its first trial, accepted: a decrease
    of 0.99 each), together they overshoot to 1.8 (a decrease of 0.36 < c·1.98), so the combined
    step is scaled by 0.9³ (the first factor at which it delivers c times its share) and the parts'
    step sizes are cut alike.
    ``f = (a − 1)² + (b − 1)²`` does not interact: the combined step stands."""
    pair = _Pair()
    a, b = pair.a.weight, pair.b.weight

    def closure():
        if interacting:
            return ((a + b - 1.0) ** 2).sum()
        return ((a - 1.0) ** 2 + (b - 1.0) ** 2).sum()

    layerwise = LayerwiseALSALS(pair, [{"params": [a, b]}], joint=True, initial_step_size=0.9)
    layerwise.step(closure)
    scale = 0.9 ** 3 if interacting else 1.0
    first = 0.9 / 0.999  # the first trial: η0·γ
    assert a.item() == pytest.approx(first * scale) and b.item() == pytest.approx(first * scale)
    assert layerwise.counters["joint_cuts"] == int(interacting)
    assert layerwise.counters["joint_trials"] == (4 if interacting else 1)
    assert all(size == pytest.approx(first * scale) for size in layerwise.step_sizes.values())


def _pair_closure(pair, interacting):
    a, b = pair.a.weight, pair.b.weight
    if interacting:
        return lambda: ((a + b - 1.0) ** 2).sum()
    return lambda: ((a - 1.0) ** 2 + (b - 1.0) ** 2).sum()


@pytest.mark.parametrize("interacting", [True, False])
def test_scaled_tests_the_combined_step_on_its_own_line_and_leaves_the_parts_step_sizes(interacting):
    """``f = (a + b − 1)²`` from 0: each part alone steps by ``s = 0.9/0.999``, so the linear model
    predicts the combined step to lower ``f`` by ``L = 2·2s`` and it lowers it by
    ``Δ(x) = L·x − 4s²·x²``; Armijo's ``Δ(x) ≥ c·x·L`` holds for ``x ≤ 1/(4s)`` = 0.2775·2 = 0.555,
    first reached at ``x = 0.9⁶`` (seven trials). The parts' step sizes are not cut. Without the
    interaction the combined step passes at ``x = 1``."""
    pair = _Pair()
    layerwise = LayerwiseALSALS(pair, [{"params": [pair.a.weight, pair.b.weight]}], scaled=True,
                                initial_step_size=0.9)
    layerwise.step(_pair_closure(pair, interacting))
    first = 0.9 / 0.999
    scale = 0.9 ** 6 if interacting else 1.0
    assert pair.a.weight.item() == pytest.approx(first * scale)
    assert pair.b.weight.item() == pytest.approx(first * scale)
    assert layerwise.scale == pytest.approx(scale)
    assert layerwise.counters["joint_trials"] == (7 if interacting else 1)
    assert layerwise.counters["joint_cuts"] == (6 if interacting else 0)
    assert all(size == pytest.approx(first) for size in layerwise.step_sizes.values())
    assert layerwise.step_size == pytest.approx(first * scale)


def test_scaled_carries_its_scale_and_first_tries_it_enlarged():
    """The first combined trial is the carried ``x/β_b`` (capped at 1), not 1: on the separable pair,
    where ``x = 1`` would pass, a carried scale of 0.5 gives a step of ``s·0.5/0.9``, which passes
    and becomes the scale carried on."""
    pair = _Pair()
    layerwise = LayerwiseALSALS(pair, [{"params": [pair.a.weight, pair.b.weight]}], scaled=True,
                                initial_step_size=0.9)
    layerwise.scale = 0.5
    layerwise.step(_pair_closure(pair, False))
    assert pair.a.weight.item() == pytest.approx(0.9 / 0.999 * 0.5 / 0.9)
    assert layerwise.scale == pytest.approx(0.5 / 0.9)
    assert layerwise.counters["joint_trials"] == 1


def test_scaled_anytime_average_follows_the_step_applied():
    """Not told the run's length, each part samples its average at its own end; after a scaled step
    the average sits where the weights were moved, so ``eval()`` after one step shows the weights."""
    pair = _Pair()
    layerwise = LayerwiseALSALS(pair, [{"params": [pair.a.weight, pair.b.weight]}], scaled=True,
                                initial_step_size=0.9)
    layerwise.step(_pair_closure(pair, True))
    assert layerwise.scale < 1.0
    applied = [pair.a.weight.item(), pair.b.weight.item()]
    layerwise.eval()
    assert [pair.a.weight.item(), pair.b.weight.item()] == pytest.approx(applied)
    layerwise.train()


def test_joint_and_scaled_together_are_refused():
    pair = _Pair()
    with pytest.raises(ValueError, match="pick one"):
        LayerwiseALSALS(pair, [{"params": list(pair.parameters())}], joint=True, scaled=True)


@pytest.mark.parametrize("told", [True, False])
@pytest.mark.parametrize("combined", [True, False])
def test_the_library_version_takes_the_prototypes_steps_with_one_backward(told, combined):
    """alsals.LayerwiseALSALS (one shared backward per step) against this prototype (one backward per
    part), the reference: bitwise the same weights, BatchNorm statistics, averages and RNG state over
    40 steps with dropout, with and without the combined test, told the run's length or not."""
    def deep():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3),
                             nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))

    kwargs = {"total_steps": 40} if told else {}
    reference_model, library_model = deep(), deep()
    reference = LayerwiseALSALS(reference_model, [{"params": list(reference_model.parameters())}], scaled=combined,
                                **kwargs)
    # the prototype is the eighth round's: the decay at the anneal's own start (no plateau test)
    library = alsals.LayerwiseALSALS(library_model, combined_test=combined, decay_on_plateau=False, **kwargs)
    rng_after = []
    for model, opt in ((reference_model, reference), (library_model, library)):
        torch.manual_seed(11)
        for _ in range(40):
            idx = torch.randint(0, 32, (16,))
            opt.step(lambda model=model, idx=idx: nn.functional.mse_loss(model(X[idx]), Y[idx]))
        rng_after.append(torch.get_rng_state())
        opt.eval()
    assert all(torch.equal(a, b) for a, b in zip(reference_model.state_dict().values(),
                                                 library_model.state_dict().values()))
    assert torch.equal(*rng_after)
    assert library.step_size == reference.step_size
    if combined:
        assert library.counters["combined_trials"] == reference.counters["joint_trials"] >= 40
        assert library.scale == reference.scale


@pytest.mark.parametrize("name", list(TASKS))
def test_parts_below_wrappers_change_only_the_hugging_face_gpt2s_parts(name):
    """The library's part rule of the tenth round (the parts below the levels that only wrap) gives
    every benchmark task the parts it had before, except the Hugging Face GPT-2, whose parameters all
    sit in ``transformer``; so only that task's runs of the new rows differ from the old rows'."""
    import warnings

    from alsals.layerwise import top_level_module

    model = TASKS[name].build(0).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-part warning of the rule before, on the GPT-2
        old = {part: [p for g in opt.param_groups for p in g["params"]]
               for part, opt in alsals.LayerwiseALSALS(model, part_of=top_level_module).parts.items()}
    new = {part: [p for g in opt.param_groups for p in g["params"]]
           for part, opt in alsals.LayerwiseALSALS(model).parts.items()}
    if name == "shakespeare_hf_gpt2":
        assert list(old) == ["transformer"]
        assert list(new) == ["transformer.wte", "transformer.wpe", "transformer.h", "transformer.ln_f"]
    else:
        assert list(new) == list(old)
        assert all(a is b for part in new for a, b in zip(new[part], old[part], strict=True))
