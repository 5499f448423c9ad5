"""ALSALS(decay_on_plateau=True): the decay starts where the plateau test says, on the host path at
that step and on the device path at the next searched step, with every loss seen in step order, and
a resumed run continues bitwise."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import alsals
from alsals.anneal import PlateauDetector

STEPS = 200
X = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
Y = X[:, :1] + 0.5 * torch.randn(256, 1, generator=torch.Generator().manual_seed(1))


def _batches(n: int = STEPS):
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(0, 256, (16,), generator=gen) for _ in range(n)]


def _setup(**kwargs):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return model, alsals.ALSALS(model.parameters(), total_steps=STEPS, decay_on_plateau=True, **kwargs)


def _train(model, opt, batches):
    return [float(opt.step(lambda idx=idx: nn.functional.mse_loss(model(X[idx]), Y[idx]))) for idx in batches]


def _first_plateau(losses):
    test = PlateauDetector(STEPS)
    return next(t for t, loss in enumerate(losses, start=1) if test.update(loss))


def test_the_decay_starts_at_the_step_the_plateau_test_names():
    model, opt = _setup(fused=False)  # every step reads its loss on the host
    losses = _train(model, opt, _batches())
    start = _first_plateau(losses)
    assert 0 < start < STEPS - STEPS // 5  # before the anneal's own start
    assert opt.search_state["decay_start"] == start


def test_off_by_default_and_in_every_preset():
    model = nn.Linear(4, 1)
    for preset in (None, "v0.1", "paper", "sls", "salsa"):
        opt = alsals.ALSALS(model.parameters(), total_steps=STEPS, preset=preset)
        assert opt.config.decay_on_plateau is False
    with pytest.raises((TypeError, ValueError), match="decay_on_plateau"):
        alsals.ALSALS(model.parameters(), decay_on_plateau="yes")
    untold = alsals.ALSALS(model.parameters(), decay_on_plateau=True)  # no run length: nothing to start
    _train(model, untold, _batches(30))
    assert untold.search_state["decay_start"] == 0


def test_device_side_amortized_losses_are_read_with_the_next_search_in_step_order():
    model, opt = _setup(fused=True)
    batches = _batches()
    losses = _train(model, opt, batches)
    start = _first_plateau(losses)
    decay_start = opt.search_state["decay_start"]
    assert start <= decay_start < start + opt.config.max_search_interval
    model, opt = _setup(fused=True)
    seen = []
    for idx in batches[:60]:
        seen.append(float(opt.step(lambda idx=idx: nn.functional.mse_loss(model(X[idx]), Y[idx]))))
        if opt.search_state["last_status"] != "amortized":  # a searched step read the pending losses
            window = list(opt._plateau.losses)
            assert window == seen[-len(window):]


@pytest.mark.parametrize("fused", [False, True])
def test_a_resumed_run_continues_bitwise(fused, tmp_path):
    batches = _batches()
    model, opt = _setup(fused=fused)
    _train(model, opt, batches)

    model2, opt2 = _setup(fused=fused)
    _train(model2, opt2, batches[:57])  # mid-interval: amortized losses not read yet (fused)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    model3, opt3 = _setup(fused=fused)
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    _train(model3, opt3, batches[57:])
    assert opt3.search_state["decay_start"] == opt.search_state["decay_start"] > 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model3.parameters()))
    copied = copy.deepcopy(opt2)
    assert list(copied._plateau.losses) == list(opt2._plateau.losses)
    assert len(pickle.loads(pickle.dumps(opt2))._pending_losses) == len(opt2._pending_losses)
