"""scripts/line_profile.py: the diagnostic of docs/benchmarks.md ("Sixth round") measures what it says
and leaves the run it profiles unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from ._scripts import load_script


@pytest.fixture(scope="module")
def line_profile():
    return load_script("line_profile")


def test_rows_hold_the_linear_prediction_and_finite_decreases(line_profile, capsys):
    rows = line_profile.profile("friedman_mlp", 0, [2, 3], step_sizes=(1e-4, 1e-2), total_steps=4)
    assert [(r["step"], r["step_size"]) for r in rows] == [(2, 1e-4), (2, 1e-2), (3, 1e-4), (3, 1e-2)]
    for r in rows:
        assert r["predicted"] == pytest.approx(r["step_size"] * r["slope"])
        assert all(math.isfinite(r[k]) for k in ("batch", "batch_eval", "other", "train"))
    # at a tiny step the fixed-mask batch loss falls as the linear model says (the slope is gᵀd)
    tiny = rows[0]
    assert tiny["slope"] > 0
    assert tiny["batch"] == pytest.approx(tiny["predicted"], rel=0.05)
    assert "slope D" in capsys.readouterr().out


def test_profiling_does_not_change_the_run(line_profile, monkeypatch):
    """The profiled run ends at the same weights as the same run unprofiled (the profile restores the
    weights, the gradients and the global RNG)."""
    def capture(profile_steps):
        kept = {}
        real = line_profile.alsals.ALSALS

        class Keeping(real):
            def step(self, closure=None, grad_scaler=None):
                loss = super().step(closure, grad_scaler)
                kept["weights"] = [p.detach().clone() for g in self.param_groups for p in g["params"]]
                return loss

        monkeypatch.setattr(line_profile.alsals, "ALSALS", Keeping)
        line_profile.profile("friedman_mlp", 1, profile_steps, step_sizes=(1e-3,), total_steps=5)
        monkeypatch.setattr(line_profile.alsals, "ALSALS", real)
        return kept["weights"]

    finals = [capture([]), capture([2, 4])]
    assert all(torch.equal(a, b) for a, b in zip(*finals))


def test_the_parts_of_the_direction_add_up_to_the_whole(line_profile):
    """Restricted to complementary groups of parameters, the slopes add up to the full slope."""
    kw = dict(step_sizes=(1e-3,), total_steps=3)
    full = line_profile.profile("friedman_mlp", 2, [3], **kw)[0]["slope"]
    parts = [line_profile.profile("friedman_mlp", 2, [3], only=prefix, **kw)[0]["slope"]
             for prefix in ("0.", "3.", "6.")]
    assert sum(parts) == pytest.approx(full, rel=1e-9)
    assert all(part != 0.0 for part in parts)
    with pytest.raises(ValueError, match="no trained parameter"):
        line_profile.profile("friedman_mlp", 2, [3], only="nothing", **kw)
