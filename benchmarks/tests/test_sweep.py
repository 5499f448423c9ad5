"""The model-size sweep of the overhead suite: the GPT shapes, the sweep's cases on real Shakespeare
batches, a tiny sweep end to end (no memory probes: see test_memory.py), the table's goal lines."""

from __future__ import annotations

import json

import pytest
import torch

from alsals_bench import cli, gpt_sizes, overhead, sweep


def test_the_shapes_have_the_parameter_counts_of_their_labels():
    for label, shape in gpt_sizes.SIZES.items():
        model = shape.build()
        assert sum(p.numel() for p in model.parameters()) == shape.parameters, label
    millions = {label: gpt_sizes.SIZES[label].parameters / 1e6 for label in sweep.DEFAULT_SIZES}
    for label, n in millions.items():
        nominal = float(label.removeprefix("gpt-").removesuffix("M"))
        assert 0.75 * nominal <= n <= 1.25 * nominal, (label, n)


def test_every_default_size_is_a_case_with_a_stream_of_real_batches():
    assert list(sweep.DEFAULT_SIZES) == ["gpt-0.2M", "gpt-1M", "gpt-5M", "gpt-20M"]
    assert "gpt-50M" in sweep.SWEEP and "gpt-50M" not in sweep.DEFAULT_SIZES
    case = overhead.get_case("gpt-0.2M")
    assert case.size == "gpt-0.2M"
    inst = case.build(3, torch.device("cpu"))
    x, y = inst.batch(0)
    assert x.shape == (sweep.SWEEP["gpt-0.2M"].batch_size, gpt_sizes.CONTEXT) and torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(inst.batch(0)[0], inst.batch(1)[0])
    assert torch.isfinite(inst.loss(inst.model, inst.batch(0)))


def test_a_block_spans_the_amortisation_cycle_at_every_size():
    for label in sweep.DEFAULT_SIZES + ("gpt-50M",):
        s = sweep.SWEEP[label]
        assert s.block_steps >= 20 and s.warmup >= 2 * 20, label  # ALSALS: searches at most 20 steps apart


def test_a_tiny_sweep_times_the_four_contenders_and_writes_the_table_and_the_plot(tmp_path):
    result = sweep.run_sweep(str(tmp_path), sizes=["gpt-tiny"], with_memory=False, log=lambda *a, **k: None)
    by = {r["optimizer"]: r for r in result["rows"]}
    assert list(by) == ["adam-foreach", "adam-fused", "alsals", "alsals-no-amortisation"]
    for r in by.values():
        assert r["error"] is None and r["ms_per_step"] > 0 and r["bwd_per_step"] == 1.0
        assert set(r["ratios"]) == {"adam-foreach", "adam-fused"} and r["size"] == "gpt-tiny"
    assert by["alsals-no-amortisation"]["fwd_per_step"] >= 2.0  # a trial every step
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["meta"]["sizes"]["gpt-tiny"]["block_steps"] == sweep.SWEEP["gpt-tiny"].block_steps
    md = (tmp_path / "sweep.md").read_text()
    assert "gpt-tiny" in md and "Goals (issue 13)" in md and "vs Adam fused" in md
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def _row(size, params, name, foreach, fused, buffers=None):
    r = {"size": size, "params": params, "optimizer": name, "ms_per_step": 1.0, "fwd_per_step": 1.0,
         "bwd_per_step": 1.0, "state_bytes_per_param": 8.0, "error": None,
         "ratios": {"adam-foreach": {"median": foreach, "min": foreach, "max": foreach},
                    "adam-fused": {"median": fused, "min": fused, "max": fused}}}
    if buffers is not None:
        r["peak_vs_adam_foreach_buffers"] = buffers
        r["peak_extra_bytes_per_param"] = 10 + 4 * buffers
    return r


def test_goal_lines_compare_against_the_slower_reference_and_the_size():
    rows = [_row("gpt-1M", 1_000_000, "alsals", 1.04, 1.02, 0.5),
            _row("gpt-1M", 1_000_000, "alsals-no-amortisation", 1.30, 1.50, 1.0),
            _row("gpt-5M", 4_837_376, "alsals", 1.04, 1.01)]
    lines = sweep.goal_lines(rows)
    assert "goal ≤ 1.05×: met" in lines[0] and "1.500×" in lines[0] and "goal ≤ 1.45×: **not met**" in lines[0]
    assert "+1.00 buffers" in lines[0] and "goal ≤ +1: met" in lines[0]
    assert "goal ≤ 1.03×: **not met**" in lines[1]
    table = sweep.render_table(rows)
    assert table.count("\n") == len(rows) + 1 and "+0.50" in table


def test_the_command_rejects_an_unknown_size(capsys):
    with pytest.raises(SystemExit):
        cli.main(["overhead", "--sweep", "--sizes", "gpt-7M"])
    assert "unknown sweep size" in capsys.readouterr().err
