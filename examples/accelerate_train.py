"""A custom training loop with Hugging Face accelerate and ALSALS (runs on the CPU).

    python examples/accelerate_train.py --steps 200
    accelerate launch examples/accelerate_train.py     # the same script on several processes/GPUs

``accelerator.prepare`` wraps the optimizer in ``AcceleratedOptimizer``, whose ``step(closure)``
forwards the closure to ALSALS. The wrapper does not return what ``ALSALS.step`` returns, so the loss
of the step is read from the ALSALS instance (``search_state["last_loss"]``). The closure is
forward-only: ALSALS runs the backward pass of the first evaluation itself (what
``accelerator.backward`` would do without fp16 loss scaling), and the trials under ``torch.no_grad()``.
With ``--mixed-precision bf16`` the prepared model runs under autocast. Needs
``pip install 'alsals[transformers]'`` (which brings accelerate).
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

import alsals


def make_data(n: int = 1024, dim: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen)
    y = torch.tanh(X @ torch.randn(dim, 1, generator=gen) / dim**0.5)
    return X, y


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--cpu", action="store_true", default=not torch.cuda.is_available())
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    X, y = make_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    model = nn.Sequential(nn.Linear(X.shape[1], args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1))
    optimizer = alsals.ALSALS(model.parameters())  # no learning rate
    model, opt, loader = accelerator.prepare(model, optimizer, loader)

    def full_loss() -> float:
        with torch.no_grad():
            return F.mse_loss(model(X.to(accelerator.device)), y.to(accelerator.device)).item()

    first_loss = full_loss()
    step = 0
    while step < args.steps:
        for x, target in loader:
            # AcceleratedOptimizer.step(closure) hands the closure to ALSALS.step
            opt.step(lambda: F.mse_loss(model(x), target))
            step += 1
            if step % 50 == 0:
                accelerator.print(f"step {step}: loss {optimizer.search_state['last_loss']:.4f} "
                                  f"step size {optimizer.step_size:.4g}")
            if step == args.steps:
                break

    result = {
        "first_loss": first_loss,
        "final_loss": full_loss(),
        "steps": optimizer.counters["steps"],
        "searches": optimizer.counters["searches"],
        "step_size": optimizer.step_size,
    }
    for name, value in result.items():
        accelerator.print(f"{name}={value}")
    return result


if __name__ == "__main__":
    main()
