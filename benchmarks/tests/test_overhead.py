"""The overhead suite: Adam foreach / fused / default loop as references, paired ratios with their
spread, forwards and backwards per step on real batches, exact optimizer state bytes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alsals_bench import overhead


def _tiny_case() -> overhead.OverheadCase:
    def build(n_steps, device):
        g = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        batches = [(torch.randn(16, 8, generator=g), torch.randint(3, (16,), generator=g)) for _ in range(n_steps)]
        def loss(m, b):
            return nn.functional.cross_entropy(m(b[0]), b[1])

        return overhead.CaseInstance(model, lambda i: batches[i], loss, len(batches))

    return overhead.OverheadCase("tiny", "a tiny MLP", build, size="tiny")


def test_state_bytes_of_adam_are_exact():
    model = nn.Linear(10, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    steps = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
    assert overhead.optimizer_state_bytes(opt) == 8 * n + steps


def test_state_bytes_exclude_parameters_and_gradients():
    model = nn.Linear(10, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    assert overhead.optimizer_state_bytes(opt) == 0


def test_paired_ratio_cancels_load_that_changes_between_repetitions():
    reference = [1.0, 2.0, 4.0]  # the machine got slower between repetitions
    times = [1.1, 2.2, 4.4]
    assert overhead.paired_ratio(times, reference) == pytest.approx(1.1)
    assert overhead.paired_ratios(times, reference) == pytest.approx([1.1, 1.1, 1.1])


def test_a_tiny_case_writes_every_reference_and_ratio(tmp_path):
    result = overhead.run_overhead(str(tmp_path), cases=[_tiny_case()], optimizers=["alsals"], warmup=3,
                                   repeats=3, block_steps=4, log=lambda *a, **k: None)
    rows = {r["optimizer"]: r for r in result["rows"]}
    assert list(rows) == ["adam-foreach", "adam-fused", "adam-default", "alsals"]
    alsals = rows["alsals"]
    assert set(alsals["ratios"]) == {"adam-foreach", "adam-fused", "adam-default"}
    for ratio in alsals["ratios"].values():
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert alsals["fwd_per_step"] >= 1.0 and alsals["bwd_per_step"] == 1.0
    assert rows["adam-fused"]["fwd_per_step"] == 1.0
    assert rows["adam-foreach"]["state_bytes_per_param"] == pytest.approx(8.0, abs=0.5)
    saved = json.loads((tmp_path / "overhead.json").read_text())
    assert saved["meta"]["provenance"]["git"]["commit"]
    md = (tmp_path / "overhead.md").read_text()
    assert "vs Adam foreach" in md and "vs Adam fused" in md and "single-tensor loop" in md


def test_the_cases_are_benchmark_tasks_with_real_batches():
    names = [c.name for c in overhead.CASES]
    assert names[:3] == ["digits_mlp", "mnist_cnn", "shakespeare_gpt"]
    assert {"mnist_resnet", "bbc_lstm_lm"} <= set(names)
    inst = overhead.get_case("digits_mlp").build(5, torch.device("cpu"))
    assert inst.n_batches == 5
    first, second = inst.batch(0), inst.batch(1)
    assert not torch.equal(first[0], second[0])  # a stream of batches, not one repeated
    with pytest.raises(KeyError, match="unknown overhead case"):
        overhead.get_case("nope")


def test_rejects_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        overhead.run_overhead(None, cases=[_tiny_case()], device="cuda", log=lambda *a, **k: None)
