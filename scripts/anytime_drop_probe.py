"""Would halving the step at each plateau make a per-layer run that is not told its length anytime?

A probe, not a benchmark result (``docs/benchmarks.md``, "Tenth round"). On a synthetic regression
(8 inputs, ``y = 2·x₀ + sin(3·x₁)·x₂ + 0.3·noise``, 1,024 samples, batch 32, an MLP 8-64-64-1 with
tanh, 1,500 steps) it trains :class:`alsals.LayerwiseALSALS`

- told the run's length (its default: the decay starts when the loss stops falling),
- not told it (its default: no anneal),
- not told it, with every part's committed step halved (through the groups' ``lr`` multiplier, which
  scales the committed step and not the search) whenever :class:`alsals.anneal.PlateauDetector` of a
  run as long as the steps so far (windows a tenth of them) finds the loss not falling, at most once
  per doubling of the step count (so that the step falls no faster than ``1/t``), from step 8
  (``"from 8"``) or from step 100 (``"from 100"``),

and prints each run's mean batch loss over its last 10% as a ratio to the told run's, with the steps
at which the step was halved. Run: ``python scripts/anytime_drop_probe.py --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import alsals
from alsals.anneal import PlateauDetector

STEPS = 1500
BATCH = 32


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 8, generator=gen)
    y = x[:, :1] * 2 + torch.sin(3 * x[:, 1:2]) * x[:, 2:3] + 0.3 * torch.randn(1024, 1, generator=gen)
    return x, y


def run(seed: int, told: bool, drop_from: int | None = None) -> tuple[float, list[int]]:
    """The mean batch loss over the last 10% of the run, and the steps after which the step was halved."""
    x, y = data(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = alsals.LayerwiseALSALS(model, total_steps=STEPS) if told else alsals.LayerwiseALSALS(model)
    losses: list[float] = []
    drops: list[int] = []
    for t in range(1, STEPS + 1):
        idx = torch.randint(0, len(x), (BATCH,))
        losses.append(float(opt.step(lambda: nn.functional.mse_loss(model(x[idx]), y[idx]))))
        last = drops[-1] if drops else 0
        if drop_from is None or t < max(drop_from, 2 * last):
            continue
        test = PlateauDetector(t)  # a run told it is t steps long: windows of a tenth of t
        found = False
        for loss in losses[-2 * test.window:]:
            found = test.update(loss)
        if found:
            drops.append(t)
            for group in opt.param_groups:
                group["lr"] *= 0.5
    tail = losses[-STEPS // 10:]
    return sum(tail) / len(tail), drops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print("| seed | told: last-10% loss | not told | halved from 8 (halved at) | halved from 100 (halved at) |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        told, _ = run(seed, told=True)
        plain, _ = run(seed, told=False)
        early, early_drops = run(seed, told=False, drop_from=8)
        late, late_drops = run(seed, told=False, drop_from=100)
        print(f"| {seed} | {told:.4f} | {plain / told:.2f}× | {early / told:.2f}× ({early_drops}) | "
              f"{late / told:.2f}× ({late_drops}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
