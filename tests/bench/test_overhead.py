"""The overhead suite at a tiny size, and the exact optimizer-state byte count."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from alsals.bench import cli, overhead


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_state_bytes_of_adam_are_exact():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    assert overhead.optimizer_state_bytes(opt) == 0
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    expected = 0
    for p in model.parameters():
        st = opt.state[p]
        expected += st["exp_avg"].numel() * 4 + st["exp_avg_sq"].numel() * 4
        expected += st["step"].numel() * st["step"].element_size()  # a 0-dim tensor per parameter
    assert overhead.optimizer_state_bytes(opt) == expected
    assert expected >= 8 * n


def test_state_bytes_exclude_parameters_and_gradients():
    model = nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    assert overhead.optimizer_state_bytes(opt) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    assert overhead.optimizer_state_bytes(opt) == 110 * 4


@pytest.mark.parametrize("kind", overhead.MODELS)
def test_models_build_and_train(kind):
    model, batches, loss_fn = overhead.build_model(kind, "tiny")
    loss = loss_fn(model, batches[0])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()


def test_overhead_suite_tiny_writes_its_files(tmp_path, capsys):
    code = cli.main(["bench", "--suite", "overhead", "--size", "tiny", "--models", "mlp,gpt", "--repeats", "2",
                     "--warmup", "1", "--block-steps", "1", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mlp |" in printed and "| gpt |" in printed
    data = json.loads((tmp_path / "overhead.json").read_text())
    rows = {(r["model"], r["optimizer"]): r for r in data["rows"]}
    names = ("adam", "adam-foreach", "alsals", "alsals-no-amortisation")
    assert set(rows) == {(m, o) for m in ("mlp", "gpt") for o in names}
    for (model, name), r in rows.items():
        assert r["error"] is None, r["error"]
        assert r["ms_per_step"] > 0 and math.isfinite(r["ratio_to_adam"])
        assert math.isfinite(r["ratio_to_adam_foreach"])
        assert r["bwd_per_step"] == 1.0
        assert r["peak_step_extra_bytes"] is None  # not measured on CPU
    for model in ("mlp", "gpt"):
        adam, als = rows[(model, "adam")], rows[(model, "alsals")]
        assert adam["ratio_to_adam"] == 1.0 and rows[(model, "adam-foreach")]["ratio_to_adam_foreach"] == 1.0
        assert adam["fwd_per_step"] == 1.0
        assert als["fwd_per_step"] >= 2.0
        assert 8.0 <= adam["state_bytes_per_param"] < 8.5
        assert als["state_bytes"] > 0
    md = (tmp_path / "overhead.md").read_text()
    assert "ms/step" in md and "bytes/param" in md and "not measured on CPU" in md and "vs Adam (foreach)" in md


def test_overhead_rejects_unknown_models_and_missing_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--suite", "overhead", "--models", "resnet", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "unknown overhead model 'resnet'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--suite", "overhead", "--device", "cuda", "--size", "tiny", "--out", str(tmp_path)])
        assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_paired_ratio_cancels_load_that_changes_between_repetitions():
    from alsals.bench.overhead import paired_ratio

    load = [1.0, 3.0, 1.0, 3.0, 3.0]  # the machine is 3x slower in some repetitions
    adam = [10.0 * x for x in load]
    alsals = [11.0 * x for x in load]
    assert abs(paired_ratio(alsals, adam) - 1.1) < 1e-12
    assert paired_ratio([1.0], [0.0]) != paired_ratio([1.0], [0.0])  # no valid pair: NaN
