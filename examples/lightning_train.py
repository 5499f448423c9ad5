"""ALSALS in a PyTorch Lightning Trainer, three ways, with the cost of each per step (CPU).

    python examples/lightning_train.py                      # all three modes, a small MLP
    python examples/lightning_train.py --hidden 1024 --steps 60 --mode manual

Modes:
  automatic      configure_optimizers returns ALSALS; Lightning's closure runs training_step, zero_grad
                 and backward, so every line-search trial also runs a backward pass;
  forward_only   the same module with the alsals.integrations.lightning.ForwardOnlyTrials mixin:
                 trials run training_step under torch.no_grad() only;
  manual         automatic_optimization = False and loss = opt.step(closure) in training_step, with a
                 forward-only closure.

Prints, per mode: the median CPU time of a training step (between on_train_batch_start and
on_train_batch_end, after warm-up steps), forward evaluations and backward passes per step (counted
by a hook on the first weight), and the final full-batch loss. Needs ``pip install 'alsals[lightning]'``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as L
import torch
from torch import nn
from torch.nn import functional as F

import alsals
from alsals.integrations.lightning import ForwardOnlyTrials, StepSizeLogger


def make_data(n: int, dim: int, classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen)
    y = (X @ torch.randn(dim, classes, generator=gen)).argmax(1)
    return X, y


class Classifier(L.LightningModule):
    #: keyword arguments of ALSALS (``--no-amortization`` searches at every step)
    optimizer_kwargs: dict = {}

    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes),
        )

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return alsals.ALSALS(self.parameters(), **self.optimizer_kwargs)


class ForwardOnlyClassifier(ForwardOnlyTrials, Classifier):
    pass


class ManualClassifier(Classifier):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = opt.step(lambda: self.loss(batch))
        self.log("train_loss", loss)


MODES = {"automatic": Classifier, "forward_only": ForwardOnlyClassifier, "manual": ManualClassifier}


class StepTimer(L.Callback):
    """CPU time of each training step (process time: robust to other processes sharing the cores)."""

    def __init__(self):
        self.times = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.process_time() - self._start)


def run(mode: str, steps: int, hidden: int, batch_size: int, warmup: int = 5, dim: int = 64, classes: int = 10):
    X, y = make_data(batch_size * 16, dim, classes)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    model = MODES[mode](dim, hidden, classes)
    backward = []
    model.net[0].weight.register_hook(lambda grad: backward.append(1))
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, StepSizeLogger()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    opt = trainer.optimizers[0]
    model.eval()
    with torch.no_grad():
        final = F.cross_entropy(model.net(X), y).item()
    return {
        "mode": mode,
        "ms_per_step": 1000 * statistics.median(timer.times[warmup:]),
        "forward_per_step": opt.counters["forward_evaluations"] / opt.counters["steps"],
        "backward_per_step": len(backward) / opt.counters["steps"],
        "final_loss": final,
        "step_size": opt.step_size,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-amortization", "--no-amortisation", dest="no_amortization", action="store_true",
        help="search at every step (amortized=False; the second spelling is the old one)",
    )
    args = parser.parse_args(argv)
    Classifier.optimizer_kwargs = {"amortized": False} if args.no_amortization else {}
    torch.set_num_threads(args.threads)
    modes = list(MODES) if args.mode == "all" else [args.mode]
    results = [run(mode, args.steps, args.hidden, args.batch_size) for mode in modes]
    print(f"{'mode':<14}{'ms/step':>10}{'fwd/step':>10}{'bwd/step':>10}{'final loss':>12}")
    for r in results:
        print(f"{r['mode']:<14}{r['ms_per_step']:>10.2f}{r['forward_per_step']:>10.2f}"
              f"{r['backward_per_step']:>10.2f}{r['final_loss']:>12.4f}")
    return results


if __name__ == "__main__":
    main()
