"""ALSALS in a real PyTorch Lightning Trainer (CPU, tiny models): automatic and manual optimisation,
forward-only trials, logging through the trainer's logger, and the settings that are rejected."""

import csv
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytestmark = pytest.mark.integration

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import alsals  # noqa: E402
from alsals.integrations.lightning import ForwardOnlyTrials, StepSizeLogger, alsals_optimizers, check_trainer  # noqa: E402

torch.set_num_threads(1)


def regression_loader(n=512, dim=8, batch_size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen)
    y = X @ torch.randn(dim, 1, generator=gen) / math.sqrt(dim) + 0.05 * torch.randn(n, 1, generator=gen)
    data = torch.utils.data.TensorDataset(X, y)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)


class Regression(L.LightningModule):
    """The training step and the optimizer configuration of the modules below (their ``forward`` and
    ``make_optimizer`` are their own), with the weights drawn after ``torch.manual_seed(0)``."""

    def __init__(self, schedule=False):
        super().__init__()
        torch.manual_seed(0)
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = self.make_optimizer()
        if not self.schedule:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Automatic(Regression):
    def __init__(self, dropout=0.1, schedule=False):
        super().__init__(schedule)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(dropout), nn.Linear(32, 1))
        self.logged = []

    def forward(self, x):
        return self.net(x)

    def make_optimizer(self):
        return alsals.ALSALS(self.parameters())


class AutomaticForwardOnly(ForwardOnlyTrials, Automatic):
    pass


class ForwardOnlyFallback(AutomaticForwardOnly):
    """The mixin's path for a Lightning whose closure has no ``_step_fn``: trials run the full closure
    with zero_grad, backward and log switched off."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, lambda: optimizer_closure())


class Manual(Automatic):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        loss = opt.step(lambda: F.mse_loss(self.net(x), y))
        self.log("train_loss", loss)


def make_trainer(tmp_path, max_steps=40, **kwargs):
    kwargs.setdefault("logger", CSVLogger(tmp_path, name="run"))
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def fit(model, trainer, **loader_kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        trainer.fit(model, regression_loader(**loader_kwargs))
    return trainer


def full_loss(model):
    loader = regression_loader(batch_size=512)
    x, y = next(iter(loader))
    model.eval()
    with torch.no_grad():
        loss = F.mse_loss(model.net(x), y).item()
    model.train()
    return loss


def read_metrics(trainer):
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows, name):
    return [float(r[name]) for r in rows if r.get(name) not in (None, "")]


@pytest.mark.parametrize("module", [Automatic, AutomaticForwardOnly, Manual])
def test_loss_falls_and_step_size_is_searched(module, tmp_path):
    model = module()
    start = full_loss(model)
    trainer = fit(model, make_trainer(tmp_path, callbacks=[StepSizeLogger()]))
    opt = trainer.optimizers[0]
    assert isinstance(opt, alsals.ALSALS)
    assert full_loss(model) < 0.5 * start
    counters = opt.counters
    assert counters["steps"] == 40 == counters["searches"] + counters["skipped_searches"]
    assert counters["searches"] >= 10  # the first 10 steps always search (then amortised)
    assert counters["forward_evaluations"] > counters["steps"]  # trials ran
    assert opt.step_size != 0.1  # moved away from the initial step size

    rows = read_metrics(trainer)
    step_sizes = column(rows, "alsals/step_size")
    evaluations = column(rows, "alsals/forward_evaluations")
    assert len(step_sizes) == 40 and step_sizes[-1] == pytest.approx(opt.step_size)
    assert sum(evaluations) == counters["forward_evaluations"]
    assert sum(column(rows, "alsals/backtracks")) == counters["backtracks"]
    assert all(e >= 1 for e in evaluations) and sum(e >= 2 for e in evaluations) == counters["searches"]
    # the logged first-evaluation loss is the loss at the weights before the step: it falls
    losses = column(rows, "alsals/loss")
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_trials_cost_a_backward_only_in_plain_automatic_mode(tmp_path):
    """Backward passes per step, counted by hooks on the parameters: automatic mode runs one per
    evaluation; the ForwardOnlyTrials mixin and manual optimisation run one per step."""
    counts = {}
    for module in (Automatic, AutomaticForwardOnly, ForwardOnlyFallback, Manual):
        model = module()
        backward = []
        model.net[0].weight.register_hook(lambda g: backward.append(1))
        trainer = fit(model, make_trainer(tmp_path / module.__name__, max_steps=10, logger=False))
        opt = trainer.optimizers[0]
        counts[module.__name__] = (len(backward), opt.counters["forward_evaluations"], opt.counters["steps"])
        assert opt.counters["backward_passes"] == len(backward)  # the optimizer's counter agrees
    assert counts["Automatic"][0] == counts["Automatic"][1]  # a backward per evaluation
    assert counts["AutomaticForwardOnly"][0] == counts["AutomaticForwardOnly"][2] == 10
    assert counts["ForwardOnlyFallback"][0] == counts["ForwardOnlyFallback"][2] == 10
    assert counts["Manual"][0] == counts["Manual"][2] == 10


def test_forward_only_trials_log_the_first_evaluation(tmp_path):
    """With the mixin, training_step's self.log records the loss at the weights before the step
    (the same value ALSALS returns), not the last trial's."""
    model = AutomaticForwardOnly(dropout=0.0)
    trainer = fit(model, make_trainer(tmp_path, max_steps=15, callbacks=[StepSizeLogger()]))
    rows = read_metrics(trainer)
    logged = column(rows, "train_loss")
    first = column(rows, "alsals/loss")
    assert len(logged) == len(first) == 15
    assert logged == pytest.approx(first, rel=1e-6)


def test_plain_automatic_mode_matches_the_forward_only_mixin(tmp_path):
    """Same data, same seed: the backward in every trial changes nothing but the cost."""
    params = []
    for module in (Automatic, AutomaticForwardOnly, ForwardOnlyFallback):
        torch.manual_seed(1)
        model = module(dropout=0.1)
        fit(model, make_trainer(tmp_path / module.__name__, max_steps=12, logger=False))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[0], params[2], rtol=1e-5, atol=1e-6)


def test_gradient_clipping_and_lr_scheduler_compose(tmp_path):
    model = Automatic(schedule=True)
    start = full_loss(model)
    trainer = fit(model, make_trainer(tmp_path, max_steps=30, gradient_clip_val=0.5, callbacks=[StepSizeLogger()]))
    opt = trainer.optimizers[0]
    assert full_loss(model) < start
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / 31)  # the scheduler drove the multiplier
    assert opt.counters["searches"] + opt.counters["skipped_searches"] == 30 and opt.counters["searches"] >= 10


def test_bf16_mixed_precision(tmp_path):
    model = AutomaticForwardOnly(dropout=0.0)
    start = full_loss(model)
    trainer = fit(model, make_trainer(tmp_path, max_steps=30, precision="bf16-mixed", logger=False))
    assert full_loss(model) < 0.7 * start
    assert trainer.optimizers[0].counters["skipped_steps"] == 0


def test_training_step_returning_none_skips_the_step_with_the_mixin(tmp_path):
    class Skipping(AutomaticForwardOnly):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    model = Skipping()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*returned `None`.*")
        trainer = fit(model, make_trainer(tmp_path, max_steps=10, logger=False))
    assert trainer.optimizers[0].counters["steps"] == 5


def test_gradient_accumulation_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit(Automatic(), make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=2, callbacks=[StepSizeLogger()]))
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit(AutomaticForwardOnly(), make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=2, logger=False))


def test_fp16_precision_plugin_is_rejected(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = make_trainer(tmp_path, max_steps=2, plugins=[plugin], callbacks=[StepSizeLogger()], logger=False)
    with pytest.raises(ValueError, match="bf16-mixed"):
        fit(Automatic(), trainer)


def test_check_trainer_ignores_other_optimizers(tmp_path):
    class WithAdam(Automatic):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    trainer = fit(WithAdam(), make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=2, callbacks=[StepSizeLogger()]))
    check_trainer(trainer)  # no ALSALS: nothing to reject
    assert not math.isnan(full_loss(trainer.lightning_module))


def test_checkpoint_round_trip_keeps_the_search_state(tmp_path):
    model = Manual()
    trainer = fit(model, make_trainer(tmp_path, max_steps=8, logger=False))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["optimizer_states"][0]
    fresh = alsals.ALSALS(Manual().parameters())
    fresh.load_state_dict(saved)
    assert fresh.step_size == trainer.optimizers[0].step_size
    assert fresh.counters == trainer.optimizers[0].counters


def test_fp16_in_manual_optimisation_with_a_grad_scaler(tmp_path):
    """The fp16 route in Lightning: precision 32 for Lightning, autocast and GradScaler in the closure;
    LightningOptimizer.step forwards grad_scaler= to ALSALS."""

    class ManualFp16(Manual):
        def __init__(self):
            super().__init__(dropout=0.0)
            self.scaler = torch.amp.GradScaler("cpu")

        def training_step(self, batch, batch_idx):
            x, y = batch

            def closure():
                with torch.autocast("cpu", dtype=torch.float16):
                    return F.mse_loss(self.net(x), y)

            loss = self.optimizers().step(closure, grad_scaler=self.scaler)
            self.scaler.update()
            self.log("train_loss", loss)

    model = ManualFp16()
    start = full_loss(model)
    trainer = fit(model, make_trainer(tmp_path, max_steps=30, logger=False))
    opt = trainer.optimizers[0]
    assert full_loss(model) < 0.5 * start
    assert model.scaler.get_scale() == 2.0**16 * 0.5 ** opt.counters["skipped_steps"]


def test_cost_example_runs_and_the_three_modes_agree():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "lightning_train.py"
    spec = importlib.util.spec_from_file_location("lightning_train_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = {r["mode"]: r for r in example.main(["--steps", "8", "--hidden", "16", "--batch-size", "32", "--no-amortisation"])}
    assert results["automatic"]["final_loss"] == pytest.approx(results["manual"]["final_loss"], rel=1e-5)
    assert results["forward_only"]["final_loss"] == pytest.approx(results["manual"]["final_loss"], rel=1e-5)
    assert results["automatic"]["backward_per_step"] == results["automatic"]["forward_per_step"]
    assert results["forward_only"]["backward_per_step"] == results["manual"]["backward_per_step"] == 1.0


class Validated(Automatic):
    """Records the weights its validation steps see."""

    def __init__(self):
        super().__init__(dropout=0.0)
        self.seen = []

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append([p.detach().clone() for p in self.parameters()])
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))


def test_evaluate_average_validates_and_checkpoints_the_average_and_trains_at_the_iterates(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from alsals.integrations.lightning import EvaluateAverage

    def trainer_with(callbacks, max_steps):
        return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, val_check_interval=16,
                         limit_val_batches=1, num_sanity_val_steps=0)

    model = Validated()
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True)
    trainer = trainer_with([EvaluateAverage(), best], 32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, regression_loader(), regression_loader(batch_size=64))
    opt = alsals_optimizers(trainer)[0]
    assert opt.config.averages and opt.counters["steps"] == 32 and len(model.seen) == 2
    # after fit the model holds what the last validation scored: the average after step 32
    assert opt.search_state["averaged_in"]
    assert all(torch.equal(a, b) for a, b in zip(model.seen[-1], model.parameters()))
    # the best checkpoint holds the weights that earned its score
    best_index = 0 if "step=16" in best.best_model_path else 1
    saved = torch.load(best.best_model_path, weights_only=False)["state_dict"]
    assert all(torch.equal(saved[name], w) for (name, _), w in zip(model.named_parameters(), model.seen[best_index]))
    opt.train()  # the iterate back, and it differs from the average
    assert any(not torch.equal(a, b) for a, b in zip(model.seen[-1], model.parameters()))
    # training resumes from the checkpoint at the iterates, exactly
    resumed = Validated()
    trainer2 = trainer_with([EvaluateAverage(), ModelCheckpoint(dirpath=tmp_path / "ckpt2")], 33)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer2.fit(resumed, regression_loader(), regression_loader(batch_size=64), ckpt_path=best.last_model_path)
    opt2 = alsals_optimizers(trainer2)[0]
    assert opt2.counters["steps"] == 33 and not opt2.search_state["averaged_in"]
    assert all(torch.isfinite(p).all() for p in resumed.parameters())


# --------------------------------------------------------------------------------------------------
# LayerwiseALSALS (a torch.optim.Optimizer: configure_optimizers may return it)


class LayerwiseAutomatic(Regression):
    """Two top-level modules, two parts: ``hidden`` and ``out``."""

    def __init__(self, schedule=False):
        super().__init__(schedule)
        self.hidden = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(self.hidden(x))

    def make_optimizer(self):
        return alsals.LayerwiseALSALS(self)


class LayerwiseForwardOnly(ForwardOnlyTrials, LayerwiseAutomatic):
    pass


class LayerwiseManual(LayerwiseAutomatic):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.optimizers().step(lambda: F.mse_loss(self(x), y))
        self.log("train_loss", loss)


def layerwise_full_loss(model):
    x, y = next(iter(regression_loader(batch_size=512)))
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def test_layerwise_steps_in_lightning_as_in_a_plain_loop(tmp_path):
    """Automatic (a backward per trial), automatic with the ForwardOnlyTrials mixin, and manual
    optimisation give the weights of LayerwiseALSALS in a plain loop over the same batches; the
    StepSizeLogger logs each part's step size and the combined step's scale."""
    steps = 16
    reference = LayerwiseAutomatic()
    opt = alsals.LayerwiseALSALS(reference)
    start = layerwise_full_loss(reference)
    for (x, y), _ in zip(regression_loader(), range(steps)):
        opt.step(lambda: F.mse_loss(reference(x), y))
    assert layerwise_full_loss(reference) < 0.5 * start
    expected = torch.cat([p.detach().flatten() for p in reference.parameters()])
    for module in (LayerwiseAutomatic, LayerwiseForwardOnly, LayerwiseManual):
        model = module()
        trainer = fit(model, make_trainer(tmp_path / module.__name__, max_steps=steps, callbacks=[StepSizeLogger()]))
        lightning_opt = alsals_optimizers(trainer)[0]
        assert isinstance(lightning_opt, alsals.LayerwiseALSALS) and list(lightning_opt.parts) == ["hidden", "out"]
        assert lightning_opt.counters["steps"] == steps
        got = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert lightning_opt.step_sizes == pytest.approx(opt.step_sizes, rel=1e-5)
        rows = read_metrics(trainer)
        for part, size in opt.step_sizes.items():
            logged = column(rows, f"alsals/step_size/{part}")
            assert len(logged) == steps and logged[-1] == pytest.approx(size, rel=1e-5)
        assert column(rows, "alsals/combined_scale")[-1] == pytest.approx(opt.scale, rel=1e-5)
        assert sum(column(rows, "alsals/forward_evaluations")) == lightning_opt.counters["forward_evaluations"]


def test_layerwise_lr_scheduler_drives_every_part_and_checkpoints_resume(tmp_path):
    model = LayerwiseForwardOnly(schedule=True)
    trainer = fit(model, make_trainer(tmp_path, max_steps=10, logger=False))
    opt = alsals_optimizers(trainer)[0]
    # the scheduler's multiplier reached every part's groups (the same dicts)
    assert all(g["lr"] == pytest.approx(1.0 / 11) for part in opt.parts.values() for g in part.param_groups)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["optimizer_states"][0]
    fresh = alsals.LayerwiseALSALS(LayerwiseAutomatic())
    fresh.load_state_dict(saved)
    assert fresh.step_sizes == opt.step_sizes and fresh.counters == opt.counters
    assert fresh.search_state["last_loss"] == opt.search_state["last_loss"]
