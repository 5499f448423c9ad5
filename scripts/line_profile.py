"""The loss along ALSALS's search direction, four ways, at chosen steps of a benchmark run.

Trains a benchmark task with ``ALSALS(total_steps=T)`` (defaults, the harness's batches and
recipe), and before the chosen steps prints, for trial step sizes ``η`` on a fixed grid, the linear
prediction ``η·D`` (``D = gᵀd``, the slope the search tests against) beside the measured decrease
``f(w) − f(w − η·d)`` of

- ``batch``: the step's batch in train mode with one fixed dropout mask at every ``η`` -- what the
  search's trials measure (they replay the first evaluation's random draws);
- ``batch_eval``: the same batch in eval mode (no dropout);
- ``other``: another training batch in train mode (fixed mask);
- ``train``: 512 training examples in eval mode (the quantity training is meant to lower).

``d`` is formed by the optimizer's own direction kernel (Adam's direction with this step's gradient
folded into the moments, bias-corrected); the weights are restored afterwards and the run goes on unchanged, so
the steps of the printout are those of the real run. Diagnostic only: nothing here is a benchmark
result. Example (``docs/benchmarks.md``, "Sixth round")::

    python scripts/line_profile.py genre_gru --seed 0 --steps 100 111 200
    python scripts/line_profile.py genre_gru --seed 0 --steps 200 --only head   # one layer's part of d
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence

import torch
from alsals_bench.optimizers import decay_groups
from alsals_bench.runner import BatchSampler, _seed_everything, dropout_seed, get_task, train_subset

import alsals
from alsals import kernels

#: trial step sizes
STEP_SIZES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1)
#: the seed of the one dropout mask every trial of a profile uses
MASK_SEED = 123


@contextlib.contextmanager
def _fixed_mask(model: torch.nn.Module, train: bool) -> Iterator[None]:
    """Evaluate with the mode ``train`` and the random draws of :data:`MASK_SEED`; restore both."""
    state, was_training = torch.get_rng_state(), model.training
    torch.manual_seed(MASK_SEED)
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
        torch.set_rng_state(state)


def adam_direction(opt: alsals.ALSALS, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``d = m̂/(√v̂ + ε)`` with the current gradients folded into copies of the moments: the library's
    own direction kernel (:func:`alsals.kernels.direction_reference`), as a search step forms it."""
    directions = []
    for group in opt.param_groups:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = opt.state[p]
            directions.append(kernels.direction_reference(
                p.grad, state.get("exp_avg", torch.zeros_like(p)), state.get("exp_avg_sq", torch.zeros_like(p)),
                kind=opt.config.direction, beta1=beta1, beta2=beta2, eps=group["eps"],
                step=int(state.get("step", 0)) + 1,
            ))
    if len(directions) != len(params):
        raise RuntimeError("every trained parameter needs a gradient for the profile")
    return directions


def profile(task_name: str, seed: int, steps: Sequence[int], step_sizes: Sequence[float] = STEP_SIZES,
            total_steps: int | None = None, only: str | None = None) -> list[dict]:
    """The rows of the profile (one per chosen step and trial step size); also printed.

    ``only``: move only the parameters whose qualified name starts with it (e.g. ``"head"``); the
    others keep their weights (their part of ``d`` is zero, and so is their part of ``D``)."""
    task = get_task(task_name)
    torch.set_num_threads(1)
    _seed_everything(seed)
    inst = task.build(seed)
    model = inst.model
    model.train()
    n_steps = total_steps or task.steps_full
    sampler = BatchSampler(inst.n_train, task.batch_size, seed)
    opt = alsals.ALSALS(decay_groups(model, task.weight_decay), total_steps=n_steps)
    params = [p for group in opt.param_groups for p in group["params"]]
    _seed_everything(dropout_seed(seed))
    train_batch = inst.batch(train_subset(inst.n_train, 512, seed))  # the same examples at every step
    rows: list[dict] = []
    current: dict = {}

    def closure() -> torch.Tensor:
        return inst.loss(model, current["batch"])

    for step in range(1, n_steps + 1):
        current["batch"] = inst.batch(sampler.next())
        if step in steps:
            rows += _profile_step(inst, model, opt, params, current["batch"], train_batch, seed, step,
                                  step_sizes, only)
        opt.step(closure)
    return rows


def _profile_step(inst, model, opt, params, batch, train_batch, seed: int, step: int, step_sizes,
                  only) -> list[dict]:
    other = inst.batch(BatchSampler(inst.n_train, len(batch[0]), seed + 1000 + step).next())
    views = {"batch": (batch, True), "batch_eval": (batch, False), "other": (other, True),
             "train": (train_batch, False)}
    model.zero_grad()
    with _fixed_mask(model, True):
        inst.loss(model, batch).backward()
    start = [p.detach().clone() for p in params]
    d = adam_direction(opt, params)
    if only is not None:
        names = {id(p): name for name, p in model.named_parameters()}
        if not any(names[id(p)].startswith(only) for p in params):
            raise ValueError(f"no trained parameter's name starts with {only!r}")
        d = [di if names[id(p)].startswith(only) else torch.zeros_like(di) for p, di in zip(params, d)]
    slope = float(sum((p.grad.double() * di.double()).sum() for p, di in zip(params, d)))

    def losses_at(step_size: float) -> dict:
        out = {}
        with torch.no_grad():
            for p, w, di in zip(params, start, d):
                p.copy_(w - step_size * di)
            for name, (b, train) in views.items():
                with _fixed_mask(model, train):
                    out[name] = float(inst.loss(model, b))
        return out

    base = losses_at(0.0)
    print(f"step {step}: carried step size {opt.step_size:.4g}, slope D = {slope:.4g}, losses at w: "
          + ", ".join(f"{k} {v:.4f}" for k, v in base.items()))
    rows = []
    for eta in step_sizes:
        at = losses_at(eta)
        row = {"step": step, "step_size": eta, "predicted": eta * slope, "slope": slope,
               **{k: base[k] - at[k] for k in views}}
        rows.append(row)
        print(f"  η={eta:<7g} η·D={eta * slope:9.4f}  " + "  ".join(f"{k} Δ={row[k]:+.4f}" for k in views))
    with torch.no_grad():
        for p, w in zip(params, start):
            p.copy_(w)
    model.zero_grad()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="steps to profile (1-based)")
    parser.add_argument("--total-steps", type=int, help="the run's length (default: the task's full length)")
    parser.add_argument("--only", metavar="PREFIX", help="move only the parameters whose name starts with PREFIX")
    args = parser.parse_args(argv)
    profile(args.task, args.seed, args.steps, total_steps=args.total_steps, only=args.only)


if __name__ == "__main__":
    main()
