"""Data-parallel training with ALSALS on the CPU (gloo): every rank takes the same step.

Run with:

    torchrun --nproc_per_node=2 examples/ddp_train.py
    torchrun --nproc_per_node=2 examples/ddp_train.py --micro-batches 4     # gradient accumulation
    torchrun --nproc_per_node=2 examples/ddp_train.py --fsdp2               # sharded parameters
    torchrun --nproc_per_node=2 examples/ddp_train.py --check-consistency   # the debug guard

Each rank draws its own mini-batches, so each sees its own loss. ALSALS averages the first loss and
every trial loss over the ranks (one small all-reduce per closure evaluation) and decides from the
averaged values: the step sizes and trial counts printed by every rank are identical.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch import nn

import alsals


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64, help="samples per rank and step")
    parser.add_argument("--micro-batches", type=int, default=1, help="split each batch (gradient accumulation)")
    parser.add_argument("--fsdp2", action="store_true", help="shard the parameters with fully_shard instead of DDP")
    parser.add_argument("--check-consistency", action="store_true", help="verify after every step that ranks agree")
    parser.add_argument("--print-every", type=int, default=5)
    return parser.parse_args()


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def wrap(model: nn.Module, fsdp2: bool) -> nn.Module:
    if not fsdp2:
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def train(args: argparse.Namespace) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()

    # A teacher network (the same on every rank) labels random inputs; every rank draws its own inputs.
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
    data = torch.Generator().manual_seed(1000 + rank)

    model = wrap(make_model(), args.fsdp2)
    opt = alsals.ALSALS(model.parameters(), check_consistency=args.check_consistency)
    loss_fn = nn.CrossEntropyLoss()

    for step in range(1, args.steps + 1):
        x = torch.randn(args.batch_size, 20, generator=data)
        with torch.no_grad():
            y = teacher(x).argmax(dim=1)
        if args.micro_batches > 1:
            micro_batches = list(zip(x.chunk(args.micro_batches), y.chunk(args.micro_batches)))
            closure = alsals.micro_batch_closure(model, micro_batches, lambda mb: loss_fn(model(mb[0]), mb[1]))
        else:
            closure = lambda: loss_fn(model(x), y)  # noqa: E731
        local_loss = opt.step(closure)
        if step % args.print_every == 0 or step == 1:
            state = opt.search_state
            print(
                f"[rank {rank}/{world}] step {step:3d}  local loss {local_loss.item():.4f}  "
                f"mean loss {state['last_loss']:.4f}  step size {opt.step_size:.6f}  trials {state['last_trials']}",
                flush=True,
            )

    # Every rank reports its final step size and search counters; rank 0 compares them.
    mine = (opt.step_size, opt.counters["forward_evaluations"], opt.counters["backtracks"])
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        for r, (step_size, evaluations, backtracks) in enumerate(everyone):
            print(f"rank {r}: final step size {step_size:.6f}, {evaluations} evaluations, {backtracks} backtracks")
        print("all ranks agree" if all(e == everyone[0] for e in everyone) else "RANKS DISAGREE", flush=True)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    train(args)
    # The model, its DDP reducer and the optimizer hold the process group. Free them while gloo is
    # still up: left to interpreter shutdown, gloo's threads can be torn down in the wrong order and
    # the process aborts ("terminate called without an active exception") after training finished.
    gc.collect()
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
