"""The CPU memory probe: peak resident memory of a step, in a process of its own."""

from __future__ import annotations

import alsals
import pytest
import torch

from alsals_bench import memory, overhead

pytestmark = pytest.mark.skipif(not memory.available(), reason="needs Linux /proc/self/clear_refs")


def test_the_window_reaches_the_next_search_of_an_amortised_search():
    model = torch.nn.Linear(4, 1)
    x = torch.randn(16, 4)

    def closure():
        return (model(x) ** 2).mean()

    adam = torch.optim.Adam(model.parameters())
    assert overhead.steps_through_next_search(adam) == 1
    opt = alsals.ALSALS(model.parameters())
    for _ in range(6):
        opt.step(closure)
    assert overhead.steps_through_next_search(opt) == opt.search_state["steps_until_search"] + 1


def test_the_window_of_the_per_layer_optimizer_reaches_every_parts_next_search():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 4)
    opt = alsals.LayerwiseALSALS(model)
    for _ in range(8):
        opt.step(lambda: (model(x) ** 2).mean())
    waits = [part.search_state["steps_until_search"] for part in opt.parts.values()]
    assert overhead.steps_through_next_search(opt) == max(waits) + 1 > 1


def test_the_probe_measures_adam_and_a_searched_alsals_step():
    adam = memory.measure("gpt-tiny", "adam-foreach")
    searched = memory.measure("gpt-tiny", "alsals-no-amortisation")
    for row in (adam, searched):
        assert "error" not in row, row
        assert row["peak_extra_bytes"] > 0 and row["mmap_threshold"] == str(memory.MMAP_THRESHOLD)
        # at least the gradients (4 bytes per fp32 parameter) are new in the window
        assert row["peak_extra_bytes_per_param"] >= 3.5, row
    assert searched["last_status"] == "accepted" and searched["window_steps"] == 1
    extra = searched["peak_extra_bytes_per_param"] - adam["peak_extra_bytes_per_param"]
    assert -4.0 < extra < 12.0, (adam, searched)  # within a few parameter-sized buffers of Adam's


def test_an_unknown_case_is_reported_not_raised():
    row = memory.measure("no-such-case", "adam-foreach")
    assert "error" in row and "exited" in row["error"]
