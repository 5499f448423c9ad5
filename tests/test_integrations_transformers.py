"""ALSALS in a real Hugging Face Trainer and an accelerate loop (CPU, tiny models, no downloads)."""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.integration

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

import alsals  # noqa: E402
from alsals.integrations.transformers import ALSALSTrainer, ClosureStepAdapter  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class CountingSequences(torch.utils.data.Dataset):
    """Byte sequences that count up by a per-sequence stride: learnable by a tiny GPT-2."""

    def __init__(self, n=256, length=32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        start = torch.randint(0, 256, (n, 1), generator=gen)
        stride = torch.randint(1, 4, (n, 1), generator=gen)
        self.ids = (start + stride * torch.arange(length)) % 256

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def training_args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        logging_steps=5,
        lr_scheduler_type="cosine",
        learning_rate=1.0,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_trains_gpt2_logs_the_step_size_and_follows_the_schedule(tmp_path):
    trainer = ALSALSTrainer(model=tiny_gpt2(), args=training_args(tmp_path), train_dataset=CountingSequences())
    trainer.train()

    opt = trainer.alsals_optimizer
    assert isinstance(opt, alsals.ALSALS)
    assert isinstance(trainer.optimizer.optimizer, ClosureStepAdapter)  # inside accelerate's wrapper
    counters = opt.counters
    assert counters["steps"] == counters["searches"] + counters["skipped_searches"] == 20
    assert counters["searches"] >= 10
    assert counters["backward_passes"] == 20  # one backward per step: the trials are forward-only

    logs = train_logs(trainer)
    assert [entry["step"] for entry in logs] == [5, 10, 15, 20]
    assert logs[-1]["loss"] < 0.92 * logs[0]["loss"]
    assert all("alsals_step_size" in entry and entry["alsals_step_size"] > 0 for entry in logs)
    assert all(entry["alsals_forward_evaluations"] >= 1 for entry in logs)
    assert sum(entry["alsals_forward_evaluations"] for entry in logs) <= counters["forward_evaluations"]
    assert logs[-1]["alsals_step_size"] == pytest.approx(opt.step_size)
    # the step size is searched: it moved away from its initial value
    assert len({entry["alsals_step_size"] for entry in logs}) > 1

    # the cosine schedule drives the lr multiplier (the logged value is the one used at that step)
    for entry in logs:
        used_at = entry["step"] - 1
        assert entry["learning_rate"] == pytest.approx(0.5 * (1 + math.cos(math.pi * used_at / 20)), abs=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the Trainer's weight-decay groups (no decay on biases and LayerNorms) became ALSALS groups
    assert len(opt.param_groups) == 2


def test_gradient_accumulation_and_trials_replay_the_first_evaluation(tmp_path):
    args = training_args(tmp_path, max_steps=12, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         logging_steps=4)
    trainer = ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences())
    trainer.train()
    logs = train_logs(trainer)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert trainer.alsals_optimizer.counters["steps"] == 12

    # One step's closure by hand: two micro-batches with dropout active. A trial at the unchanged
    # weights (step size 0) must reproduce the first evaluation's loss: same batches, same masks.
    model = trainer.model_wrapped
    batches = iter(trainer.get_train_dataloader())
    trainer.current_gradient_accumulation_steps = 2
    first = sum(trainer.training_step(model, next(batches)) for _ in range(2))
    closure = trainer._line_search_closure()
    assert closure() is not None
    trial = closure()
    torch.testing.assert_close(trial, first, rtol=1e-6, atol=1e-6)
    assert any(p.grad is not None for p in model.parameters())  # the first gradients are still there


def test_batchnorm_running_statistics_see_only_the_first_evaluation(tmp_path):
    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x, labels=None):
            out = self.net(x).squeeze(-1)
            return {"loss": nn.functional.mse_loss(out, labels), "logits": out}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            gen = torch.Generator().manual_seed(0)
            self.x = torch.randn(128, 8, generator=gen)
            self.y = self.x.sum(1)

        def __len__(self):
            return 128

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    model = Regressor()
    args = training_args(tmp_path, max_steps=10, lr_scheduler_type="constant", remove_unused_columns=False)
    trainer = ALSALSTrainer(model=model, args=args, train_dataset=Data())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "trial changed a buffer" warning
        trainer.train()
    assert trainer.alsals_optimizer.counters["forward_evaluations"] > 10
    assert int(model.net[1].num_batches_tracked) == 10  # one update per step, none per trial


def test_bf16_autocast(tmp_path):
    args = training_args(tmp_path, max_steps=12, bf16=True, lr_scheduler_type="constant", logging_steps=4)
    trainer = ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences())
    trainer.train()
    logs = train_logs(trainer)
    assert logs[-1]["loss"] < logs[0]["loss"]
    counters = trainer.alsals_optimizer.counters
    assert counters["skipped_steps"] == 0 and counters["searches"] + counters["skipped_searches"] == 12
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast, fp32 weights


def test_the_trainer_evaluates_at_the_average_of_the_iterates_and_trains_on(tmp_path):
    # ALSALSTrainer gives no total_steps, so ALSALS keeps its average; the Trainer calls
    # optimizer.eval() before evaluating and optimizer.train() before each training step.
    args = training_args(tmp_path, max_steps=20, eval_strategy="steps", eval_steps=10, per_device_eval_batch_size=16)
    trainer = ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences(),
                            eval_dataset=CountingSequences(n=32, seed=1))
    trainer.train()  # an evaluation at step 10, then 10 more steps: they would raise in eval mode
    opt = trainer.alsals_optimizer
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [10, 20]
    assert opt.counters["steps"] == 20 and opt.config.averages
    assert opt.search_state["averaged_in"]  # the last evaluation left the average in the model
    averaged = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.optimizer.train()
    assert not opt.search_state["averaged_in"]
    assert any(not torch.equal(a, p) for a, p in zip(averaged, trainer.model.parameters()))


def test_learning_rate_is_the_multiplier_and_the_adamw_default_warns(tmp_path):
    args = training_args(tmp_path, learning_rate=5e-5)
    with pytest.warns(UserWarning, match="learning_rate=1.0"):
        ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences())


def test_alsals_kwargs_and_given_optimizers(tmp_path):
    trainer = ALSALSTrainer(
        model=tiny_gpt2(), args=training_args(tmp_path, max_steps=2), train_dataset=CountingSequences(),
        alsals_kwargs={"initial_step_size": 0.01, "c": 0.5},
    )
    trainer.train()
    assert trainer.alsals_optimizer.search_config.c == 0.5

    model = tiny_gpt2()
    opt = alsals.SaLSa(model.parameters())
    trainer = ALSALSTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=CountingSequences(),
                            optimizers=(opt, None))
    trainer.train()
    assert trainer.alsals_optimizer is opt and opt.counters["steps"] == 2

    model = tiny_gpt2()
    trainer = ALSALSTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=CountingSequences(),
                            optimizers=(torch.optim.AdamW(model.parameters()), None))
    with pytest.raises(TypeError, match="needs an alsals.ALSALS"):
        trainer.train()


def test_fp16_is_rejected(tmp_path):
    args = training_args(tmp_path)
    args.fp16 = True  # CPU TrainingArguments refuse fp16 themselves; the Trainer check is what we test
    with pytest.raises(ValueError, match="bf16=True"):
        ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences())


def test_accelerate_example_runs_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "accelerate_train.py"), "--steps", "30"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert float(lines["final_loss"]) < 0.5 * float(lines["first_loss"])
    assert int(lines["steps"]) == 30 and 10 <= int(lines["searches"]) <= 30


class EMARegressor(nn.Module):
    """A regressor with an EMA codebook buffer updated in forward (training mode), not a BatchNorm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.register_buffer("codebook", torch.zeros(16))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x, labels=None):
        hidden = self.net[1](self.net[0](x))
        if self.training:
            self.codebook.mul_(0.5).add_(hidden.detach().mean(0), alpha=0.5)
            self.updates.add_(1)
        out = self.net[2](hidden + self.codebook).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class RegressionData(torch.utils.data.Dataset):
    def __init__(self, n=128):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=gen)
        self.y = self.x.sum(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_trials_leave_every_buffer_as_the_first_evaluation_left_it(tmp_path):
    model = EMARegressor()
    twin = EMARegressor()
    args = training_args(tmp_path, max_steps=6, lr_scheduler_type="constant", remove_unused_columns=False)
    trainer = ALSALSTrainer(model=model, args=args, train_dataset=RegressionData(),
                            alsals_kwargs={"initial_step_size": 1.0, "amortized": False})
    seen = []
    original = trainer.training_step

    def recording_step(model_, inputs, num_items_in_batch=None):
        twin.load_state_dict(model.state_dict())  # weights and buffers before the step
        twin.train()
        twin(**inputs)  # what one forward leaves in the buffers
        seen.append({k: v.clone() for k, v in twin.named_buffers()})
        return original(model_, inputs, num_items_in_batch)

    trainer.training_step = recording_step
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "trial changed a buffer" warning
        trainer.train()
    counters = trainer.alsals_optimizer.counters
    assert counters["forward_evaluations"] > 2 * counters["steps"]  # trials ran
    assert int(model.updates) == 6  # one update per step, none per trial
    for name, value in model.named_buffers():
        assert torch.equal(value, seen[-1][name]), name


def test_logged_values_after_resume_from_checkpoint_average_the_same_window(tmp_path):
    def run(output_dir, max_steps, resume=None):
        args = training_args(output_dir, max_steps=max_steps, logging_steps=4, save_strategy="steps", save_steps=6,
                             lr_scheduler_type="constant")
        trainer = ALSALSTrainer(model=tiny_gpt2(), args=args, train_dataset=CountingSequences())
        trainer.train(resume_from_checkpoint=resume)
        return {entry["step"]: entry for entry in train_logs(trainer)}

    full = run(tmp_path / "full", 12)
    run(tmp_path / "first", 6)  # saves checkpoint-6 (after the log at step 4)
    resumed = run(tmp_path / "first", 12, resume=str(tmp_path / "first" / "checkpoint-6"))
    assert {8, 12} <= set(resumed)  # (step 4 comes from the checkpoint's log history)
    for step in (8, 12):  # the window of step 8 is steps 5..8, as in the uninterrupted run
        for key in ("alsals_forward_evaluations", "alsals_backtracks", "alsals_step_size"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-6), (step, key)


def test_layerwise_trainer_gives_each_block_its_step_size_and_follows_the_schedule(tmp_path):
    """ALSALSTrainer(layerwise=True, alsals_kwargs={"part_of": "blocks"}) trains with LayerwiseALSALS
    over the Trainer's weight-decay groups: a part per GPT-2 block and per other module of the
    transformer (the LM head's weight is the embedding's),
    one backward per step, the scheduler's multiplier in every part's groups; a LayerwiseALSALS given
    through ``optimizers=`` is stepped as it is."""
    trainer = ALSALSTrainer(model=tiny_gpt2(), args=training_args(tmp_path), train_dataset=CountingSequences(),
                            layerwise=True, alsals_kwargs={"part_of": "blocks"})
    trainer.train()
    opt = trainer.alsals_optimizer
    assert isinstance(opt, alsals.LayerwiseALSALS)
    assert list(opt.parts) == ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1",
                               "transformer.ln_f"]  # below the transformer, which only wraps
    counters = opt.counters
    assert counters["steps"] == 20 and counters["backward_passes"] == 20  # trials and combined trials forward-only
    assert counters["combined_trials"] >= 20
    assert len(set(opt.step_sizes.values())) > 1  # the parts' step sizes differ
    logs = train_logs(trainer)
    assert logs[-1]["loss"] < 0.92 * logs[0]["loss"]
    assert logs[-1]["alsals_step_size"] == pytest.approx(opt.step_size)
    for part in opt.parts.values():  # the cosine schedule reached every part; decay groups kept
        assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in part.param_groups)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, trainer.args.weight_decay}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default parts of a Hugging Face model are several: no warning
        default = alsals.LayerwiseALSALS(tiny_gpt2())
    assert list(default.parts) == ["transformer.wte", "transformer.wpe", "transformer.h", "transformer.ln_f"]

    model = tiny_gpt2()
    given = alsals.LayerwiseALSALS(model, part_of="blocks")
    trainer = ALSALSTrainer(model=model, args=training_args(tmp_path, max_steps=3), train_dataset=CountingSequences(),
                            optimizers=(given, None))
    trainer.train()
    assert trainer.alsals_optimizer is given and given.counters["steps"] == 3
