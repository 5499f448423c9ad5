"""The line search under torch.distributed: several processes, the gloo backend, the CPU.

Every rank sees its own data, chosen so that a rank deciding from its own loss would accept another
step size (the negative control shows it does). With the reduction on, the ranks must take the same
steps bit for bit, run one collective per closure evaluation, and match a single process that sees
the concatenated batch.

Each test spawns its ranks with ``multiprocessing`` (spawn), joins them with a deadline, and fails
(instead of stalling) when a rank hangs or dies.
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import alsals
from alsals.distributed import is_dtensor

from helpers import mlp

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

DIM = 10
BATCH = 16  # per rank and step
STEPS = 24  # more than the 10 warm-up searches: the runs take amortized steps
RESUME_AT = 14  # after the warm-up: the resumed part has amortized steps
JOIN_TIMEOUT = 150.0

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


# ---------------------------------------------------------------------------------------------
# Running ranks
# ---------------------------------------------------------------------------------------------


def _entry(worker, rank, world, init_method, out_dir, args):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        result = worker(rank, world, out_dir, *args)
        torch.save(result, os.path.join(out_dir, f"result{rank}.pt"))
        del result
        gc.collect()  # free models and optimizers (which hold the process group) while gloo is up
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        Path(out_dir, f"error{rank}.txt").write_text(traceback.format_exc())
        raise


def run_ranks(worker, world, tmp_path, *args, timeout=JOIN_TIMEOUT):
    """Run ``worker(rank, world, out_dir, *args)`` on ``world`` gloo ranks; return their results."""
    ctx = mp.get_context("spawn")
    out_dir = str(tmp_path)
    init_method = f"file://{tmp_path / 'store'}"
    procs = [ctx.Process(target=_entry, args=(worker, r, world, init_method, out_dir, args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    failed = None
    while time.monotonic() < deadline:
        if all(p.exitcode is not None for p in procs):
            break
        failed = next((r for r, p in enumerate(procs) if p.exitcode not in (None, 0)), None)
        if failed is not None:
            break
        time.sleep(0.05)
    hung = [r for r, p in enumerate(procs) if p.exitcode is None]
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    for p in procs:
        p.join(5)
        if p.exitcode is None:
            p.kill()
            p.join()
    errors = {r: Path(out_dir, f"error{r}.txt").read_text() for r in range(world) if Path(out_dir, f"error{r}.txt").exists()}
    if errors:
        pytest.fail("a rank failed:\n" + "\n".join(f"--- rank {r} ---\n{e}" for r, e in errors.items()))
    if hung:
        pytest.fail(f"ranks {hung} hung (killed after {timeout:.0f} s)" if failed is None else f"rank {failed} died")
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, codes
    return [torch.load(Path(out_dir, f"result{r}.pt"), weights_only=False) for r in range(world)]


# ---------------------------------------------------------------------------------------------
# Data, closures, training loops (shared by the ranks and the single-process reference)
# ---------------------------------------------------------------------------------------------


def rank_batches(rank, steps=STEPS, batch=BATCH):
    """Each rank regresses its own target function: its own loss along the shared direction differs."""
    gen = torch.Generator().manual_seed(1000 + rank)
    w = torch.randn(DIM, generator=gen) * (1.0 + 2.0 * rank)
    X = torch.randn(steps, batch, DIM, generator=gen)
    y = X @ w + (0.1 + rank) * torch.randn(steps, batch, generator=gen)
    return list(zip(X, y))


def concatenated_batches(world, steps=STEPS):
    per_rank = [rank_batches(r, steps) for r in range(world)]
    return [(torch.cat([b[t][0] for b in per_rank]), torch.cat([b[t][1] for b in per_rank])) for t in range(steps)]


def mse(model, x, y):
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def make_optimizer(kind, params, **kwargs):
    if kind == "alsals":
        return alsals.ALSALS(params, initial_step_size=1.0, **kwargs)  # large: every rank backtracks
    if kind == "alsals-match":  # every search starts from the displacement-matched step: ‖d‖ is reduced too
        return alsals.ALSALS(params, initial_step_size=1.0, match_displacement="always", **kwargs)
    if kind == "salsa":
        return alsals.SaLSa(params, **kwargs)
    if kind == "sls":
        return alsals.SLS(params, n_batches_per_epoch=STEPS, **kwargs)
    raise ValueError(kind)


class CollectiveCounter:
    """Counts ``torch.distributed.all_reduce`` calls (the optimizer's packs are float64 vectors)."""

    def __init__(self):
        self.calls = []
        self._original = dist.all_reduce

    def __enter__(self):
        def counting(tensor, *args, **kwargs):
            self.calls.append((tensor.dtype, tensor.dim()))
            return self._original(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._original

    @property
    def packs(self):
        """The optimizer's reductions of its packed float64 values."""
        return sum(dtype == torch.float64 for dtype, _ in self.calls)

    @property
    def flags(self):
        """The optimizer's device-side skip flags of amortized steps (sharded parameters): 0-dim float32."""
        return sum(dtype == torch.float32 and dim == 0 for dtype, dim in self.calls)


def device_amortized(opt):
    """Whether ``opt``'s amortized steps are decided on the device (no read, no collective)."""
    return opt.config.amortized and opt.config.direction == "adam" and opt.config.fused is not False


def train(model, opt, batches, closure_factory=None, counter=None):
    """Steps ``opt`` over ``batches``; records step sizes, trials, and collectives per evaluation.

    ``reads``: the evaluations that read back (and reduce) their loss: every evaluation of a searched
    step, none of an amortized step decided on the device. ``losses``: the first loss of each step,
    averaged over the ranks where the step read it back, this rank's own on device-side steps (NaN
    here: compared only where averaged)."""
    record = {"step_sizes": [], "trials": [], "losses": [], "evaluations": [], "collectives": [], "packs": [],
              "flags": [], "searched": [], "reads": []}
    for x, y in batches:
        closure = closure_factory(model, x, y) if closure_factory else (lambda: mse(model, x, y))
        before = opt.counters
        calls, packs, flags = (len(counter.calls), counter.packs, counter.flags) if counter else (0, 0, 0)
        opt.step(closure)
        after = opt.counters
        searched = after["searches"] > before["searches"]
        evaluations = after["forward_evaluations"] - before["forward_evaluations"]
        record["searched"].append(searched)
        record["reads"].append(0 if not searched and device_amortized(opt) else evaluations)
        averaged = opt.search_state["last_loss"] if record["reads"][-1] else float("nan")
        record["losses"].append(averaged)
        record["step_sizes"].append(opt.step_size)
        record["trials"].append(opt.search_state["last_trials"])
        record["evaluations"].append(evaluations)
        if counter:
            record["collectives"].append(len(counter.calls) - calls)
            record["packs"].append(counter.packs - packs)
            record["flags"].append(counter.flags - flags)
    record["counters"] = opt.counters
    record["search_state"] = opt.search_state
    return record


def plain_params(module):
    return [p.detach().clone() for p in module.parameters()]


def ddp(model):
    return nn.parallel.DistributedDataParallel(model)


# ---------------------------------------------------------------------------------------------
# Workers (module level: spawned processes import them)
# ---------------------------------------------------------------------------------------------


def worker_agreement(rank, world, out_dir, kinds):
    batches = rank_batches(rank)
    results = {}
    for kind in kinds:
        model = ddp(mlp(dim=DIM))
        opt = make_optimizer(kind, model.parameters(), check_consistency=(kind == "alsals"))
        with CollectiveCounter() as counter:
            record = train(model, opt, batches, counter=counter)
        record["params"] = plain_params(model.module)
        results[kind] = record
    return results


def worker_negative_control(rank, world, out_dir):
    batches = rank_batches(rank)
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters(), distributed=False)
    with CollectiveCounter() as counter:
        record = train(model, opt, batches, counter=counter)
    record["params"] = plain_params(model.module)
    # The consistency guard catches the disagreement and names the ranks.
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters(), distributed=False, check_consistency=True)
    try:
        train(model, opt, batches)
        record["guard"] = None
    except RuntimeError as error:
        record["guard"] = (str(error), opt.counters["steps"])
    return record


def worker_nonfinite(rank, world, out_dir):
    batches = rank_batches(rank)
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters())
    calls = [0]

    def factory(model, x, y):
        def closure():
            calls[0] += 1
            loss = mse(model, x, y)
            # rank 1 only: the first trial of the first step
            if rank == 1 and calls[0] == 2:
                return loss * float("nan")
            return loss

        return closure

    record = {"after_first": None}
    with CollectiveCounter() as counter:
        first = train(model, opt, batches[:1], factory, counter)
        record["after_first"] = first

        def nan_first_loss(model, x, y):
            def closure():
                loss = mse(model, x, y)
                return loss * float("nan") if rank == 1 else loss

            return closure

        before = plain_params(model.module)
        skipped = train(model, opt, batches[1:2], nan_first_loss, counter)
        record["skipped"] = skipped
        record["unchanged"] = all(torch.equal(a, b) for a, b in zip(before, plain_params(model.module)))
        record["rest"] = train(model, opt, batches[2:], counter=counter)
        # An amortized step (decided on the device, no collective of its own) whose loss is NaN on
        # rank 1 only: DDP's gradient all-reduce spreads the NaN, so every rank skips it.
        more = rank_batches(rank, steps=STEPS + 8)[STEPS:]
        while True:
            state = opt.search_state
            if state["searches"] >= 10 and state["steps_until_search"] > 0:  # the next step is amortized
                break
            train(model, opt, more[:1], counter=counter)
            more = more[1:]
        before = plain_params(model.module)
        skips = opt.counters["skipped_steps"]
        record["amortized_nan"] = train(model, opt, more[:1], nan_first_loss, counter)
        record["amortized_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, plain_params(model.module)))
        record["amortized_skips"] = opt.counters["skipped_steps"] - skips
        record["after_amortized_nan"] = train(model, opt, more[1:], counter=counter)
    record["params"] = plain_params(model.module)
    return record


def worker_resume(rank, world, out_dir):
    batches = rank_batches(rank)
    # Uninterrupted.
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters(), amortized=True)
    full = train(model, opt, batches)
    full_params = plain_params(model.module)
    # Interrupted after RESUME_AT steps: rank 0 saves, every rank loads into fresh objects.
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters(), amortized=True)
    first = train(model, opt, batches[:RESUME_AT])
    path = os.path.join(out_dir, "checkpoint.pt")
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict()}, path)
    dist.barrier()
    checkpoint = torch.load(path, weights_only=False)
    fresh = mlp(dim=DIM, seed=123 + rank)  # other weights on every rank: all must come from the file
    fresh.load_state_dict(checkpoint["model"])
    model = ddp(fresh)
    opt = make_optimizer("alsals", model.parameters(), amortized=True)
    opt.load_state_dict(checkpoint["opt"])
    second = train(model, opt, batches[RESUME_AT:])
    return {
        "full": full,
        "full_params": full_params,
        "resumed_step_sizes": first["step_sizes"] + second["step_sizes"],
        "resumed_trials": first["trials"] + second["trials"],
        "resumed_params": plain_params(model.module),
        "resumed_state": second["search_state"],
    }


def _counting_allreduce_hook(counts):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        counts.append(1)
        return allreduce_hook(state, bucket)

    return hook


def micro_factory(model, x, y):
    micro_batches = list(zip(x.chunk(4), y.chunk(4)))
    return alsals.micro_batch_closure(model, micro_batches, lambda mb: mse(model, mb[0], mb[1]))


def worker_accumulation(rank, world, out_dir):
    batches = rank_batches(rank)
    results = {}
    for name, factory in (("whole", None), ("micro", micro_factory)):
        model = ddp(mlp(dim=DIM))
        gradient_syncs = []
        model.register_comm_hook(None, _counting_allreduce_hook(gradient_syncs))
        opt = make_optimizer("alsals", model.parameters())
        with CollectiveCounter() as counter:
            record = train(model, opt, batches, factory, counter)
        record["params"] = plain_params(model.module)
        record["gradient_syncs"] = len(gradient_syncs)
        results[name] = record
    return results


def _fsdp2_model(mesh=None):
    from torch.distributed.fsdp import fully_shard

    model = mlp(dim=DIM)  # Linear(10, 32), Tanh, Linear(32, 1): the last layer leaves rank 1 an empty shard
    fully_shard(model[0], mesh=mesh)
    # The root holds the last layer and, by default, keeps its parameters unsharded after a forward
    # pass: trials would reuse them if the optimizer did not reshard.
    fully_shard(model, mesh=mesh)
    return model


def _full_params(params):
    return [p.full_tensor().detach().clone() if is_dtensor(p) else p.detach().clone() for p in params]


def worker_sharded(rank, world, out_dir):
    batches = rank_batches(rank)
    results = {}
    model = ddp(mlp(dim=DIM))
    opt = make_optimizer("alsals", model.parameters())
    results["ddp"] = train(model, opt, batches)
    results["ddp"]["params"] = plain_params(model.module)

    from torch.distributed.device_mesh import init_device_mesh

    # HSDP: replicated over the first mesh dimension, sharded over the second (of size 1 here: every
    # rank holds whole parameters with placements (Replicate(), Shard(0)), weighted 1/2 in the slope).
    hsdp_mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
    for name, factory, mesh in (
        ("fsdp2", None, None),
        ("fsdp2_micro", micro_factory, None),
        ("hsdp", None, hsdp_mesh),
    ):
        model = _fsdp2_model(mesh)
        opt = make_optimizer("alsals", model.parameters(), check_consistency=True)
        with CollectiveCounter() as counter:
            record = train(model, opt, batches, factory, counter)
        record["left_sharded"] = all(is_dtensor(p) for p in model.parameters())
        params = [p for group in opt.param_groups for p in group["params"]]
        record["local_sizes"] = [p.to_local().numel() for p in params]
        record["placements"] = {str(p.placements) for p in params}
        record["params"] = _full_params(params)
        results[name] = record

    # A gradient that is infinite on one rank's shard only: every rank skips the step.
    model = _fsdp2_model()
    opt = alsals.ALSALS(model.parameters())
    x, y = batches[0]
    weight = model[0].weight
    before = [p.to_local().clone() for p in model.parameters()]
    gradient_check = opt._gradient_check

    def gradient_check_after_poisoning(buckets):
        if rank == 1:
            weight.grad.to_local()[0, 0] = float("inf")  # after the reduce-scatter: this shard only
        return gradient_check(buckets)

    opt._gradient_check = gradient_check_after_poisoning
    opt.step(lambda: mse(model, x, y))
    results["poisoned"] = {
        "skipped": opt.counters["skipped_steps"],
        "unchanged": all(torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters())),
    }
    # The same at an amortized step, decided on the device: the flag's all-reduce makes every rank skip.
    model = _fsdp2_model()
    opt = alsals.ALSALS(model.parameters())
    for x, y in batches[:12]:
        opt.step(lambda: mse(model, x, y))
    while not (opt.search_state["searches"] >= 10 and opt.search_state["steps_until_search"] > 0):
        opt.step(lambda: mse(model, x, y))
    weight = model[0].weight
    gradient_check = opt._gradient_check
    opt._gradient_check = gradient_check_after_poisoning
    before = [p.to_local().clone() for p in model.parameters()]
    searches, skips = opt.counters["searches"], opt.counters["skipped_steps"]
    x, y = batches[12]
    opt.step(lambda: mse(model, x, y))
    results["poisoned_amortized"] = {
        "skipped": opt.counters["skipped_steps"] - skips,
        "unchanged": all(torch.equal(a, p.to_local()) for a, p in zip(before, model.parameters())),
        "amortized": opt.counters["searches"] == searches,
    }
    return results


def worker_construction_errors(rank, world, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor, Partial

    messages = {}

    def error_of(fn):
        try:
            fn()
        except ValueError as error:
            return str(error)
        return None

    fsdp1 = FullyShardedDataParallel(mlp(dim=DIM), use_orig_params=True, device_id=torch.device("cpu"))
    messages["fsdp1"] = error_of(lambda: alsals.ALSALS(fsdp1.parameters()))
    mesh = init_device_mesh("cpu", (world,))
    partial = nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Partial()]))
    messages["partial"] = error_of(lambda: alsals.ALSALS([partial]))
    sharded = _fsdp2_model()
    messages["no_reduction"] = error_of(lambda: alsals.ALSALS(sharded.parameters(), distributed=False))
    subgroup = dist.new_group([0])  # every rank takes part in creating it
    if rank == 0:
        messages["mesh_mismatch"] = error_of(lambda: alsals.ALSALS(sharded.parameters(), process_group=subgroup))
    messages["add_group"] = error_of(
        lambda: alsals.ALSALS(mlp(dim=DIM).parameters()).add_param_group({"params": [partial]})
    )
    return messages


def worker_fault(rank, world, out_dir):
    """Every rank's closure raises in a trial (an out-of-memory error, say): every rank is left at its
    state before the step, and the retried step continues as if the failure had not happened."""
    batches = rank_batches(rank)
    runs = {}
    for fail in (False, True):
        model = ddp(mlp(dim=DIM))
        opt = make_optimizer("alsals", model.parameters())
        train(model, opt, batches[:3])
        record = {}
        if fail:
            before = (plain_params(model.module), {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                                                   for k, v in opt.state_dict()["state"].items()}, opt.search_state)
            calls = [0]
            x, y = batches[3]

            def closure():
                calls[0] += 1
                if calls[0] == 2:
                    raise MemoryError("simulated out-of-memory in a trial")
                return mse(model, x, y)

            try:
                opt.step(closure)
                record["raised"] = False
            except MemoryError:
                record["raised"] = True
            params, state, search = before
            record["params_restored"] = all(torch.equal(a, b) for a, b in zip(params, plain_params(model.module)))
            record["state_restored"] = all(
                torch.equal(t, opt.state_dict()["state"][k][n]) for k, v in state.items() for n, t in v.items()
            )
            record["search_restored"] = search == opt.search_state
        record["rest"] = train(model, opt, batches[3:])
        record["params"] = plain_params(model.module)
        runs["failed" if fail else "clean"] = record
    return runs


def worker_zero(rank, world, out_dir):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = mlp(dim=DIM)
    try:
        ZeroRedundancyOptimizer(model.parameters(), optimizer_class=alsals.ALSALS)
    except ValueError as error:
        return str(error)
    return None


def train_layerwise(model, opt, batches):
    record = {"step_sizes": [], "scales": []}
    for x, y in batches:
        opt.step(lambda x=x, y=y: mse(model, x, y))
        record["step_sizes"].append(opt.step_sizes)
        record["scales"].append(opt.scale)
    record["counters"] = opt.counters
    return record


def worker_layerwise(rank, world, out_dir):
    """LayerwiseALSALS over a DDP model: its parts are the user's modules (not DDP's ``module``), and
    every part's trials and the combined trials are averaged over the ranks."""
    model = ddp(mlp(dim=DIM))
    opt = alsals.LayerwiseALSALS(model, initial_step_size=1.0)
    record = train_layerwise(model, opt, rank_batches(rank))
    record["parts"] = list(opt.parts)
    record["params"] = plain_params(model.module)
    return record


def worker_plateau(rank, world, out_dir, steps=160):
    """decay_on_plateau on the device path (fused amortized steps keep their loss on the device):
    the pending losses are averaged with the next search's read, so every rank sees the same ones."""
    batches = rank_batches(rank, steps=steps)
    model = ddp(mlp(dim=DIM))
    opt = alsals.ALSALS(model.parameters(), total_steps=steps, decay_on_plateau=True, fused=True)
    assert device_amortized(opt)
    train(model, opt, batches)
    return {"decay_start": opt.search_state["decay_start"], "seen": list(opt._plateau.losses),
            "params": plain_params(model.module), "skipped_searches": opt.counters["skipped_searches"]}


def worker_ddp_scenarios(rank, world, out_dir):
    """Every DDP scenario in one job (each job start costs seconds of imports on a small machine)."""
    return {
        "agreement": worker_agreement(rank, world, out_dir, ("alsals", "alsals-match", "salsa", "sls")),
        "negative_control": worker_negative_control(rank, world, out_dir),
        "nonfinite": worker_nonfinite(rank, world, out_dir),
        "resume": worker_resume(rank, world, out_dir),
        "accumulation": worker_accumulation(rank, world, out_dir),
        "fault": worker_fault(rank, world, out_dir),
        "zero": worker_zero(rank, world, out_dir),
        "layerwise": worker_layerwise(rank, world, out_dir),
        "plateau": worker_plateau(rank, world, out_dir),
    }


def worker_sharded_scenarios(rank, world, out_dir):
    return {
        "sharded": worker_sharded(rank, world, out_dir),
        "construction_errors": worker_construction_errors(rank, world, out_dir),
    }


# ---------------------------------------------------------------------------------------------
# Single-process references (run in the test process)
# ---------------------------------------------------------------------------------------------


def single_process(kind, world, factory=None):
    model = mlp(dim=DIM)
    opt = make_optimizer(kind, model.parameters(), distributed=False)
    record = train(model, opt, concatenated_batches(world), factory)
    record["params"] = plain_params(model)
    return record


def assert_identical_across_ranks(records):
    first = records[0]
    for other in records[1:]:
        assert other["step_sizes"] == first["step_sizes"]
        assert other["trials"] == first["trials"]
        assert other["counters"] == first["counters"]
        # last_loss of a device-side amortized step is the rank's own
        mine = {k: v for k, v in first["search_state"].items() if k != "last_loss"}
        theirs = {k: v for k, v in other["search_state"].items() if k != "last_loss"}
        assert theirs == mine
        assert len(other["losses"]) == len(first["losses"])
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(other["losses"], first["losses"]))
        for a, b in zip(first["params"], other["params"]):
            assert torch.equal(a, b)


def _nan_equal(a, b):
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def assert_matches(record, reference, rtol=1e-3, atol=5e-5):  # 24 steps of rounding differences
    assert record["trials"] == reference["trials"]
    assert record["step_sizes"] == pytest.approx(reference["step_sizes"], rel=1e-6)
    averaged = [i for i, loss in enumerate(record["losses"]) if not math.isnan(loss)]
    assert averaged, "no step read its loss back"
    assert [record["losses"][i] for i in averaged] == pytest.approx([reference["losses"][i] for i in averaged], rel=1e-5)
    for a, b in zip(record["params"], reference["params"]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory):
    """One 2-rank DDP job running every DDP scenario."""
    return run_ranks(worker_ddp_scenarios, 2, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def sharded_job(tmp_path_factory):
    """One 2-rank job running the FSDP2 scenarios and the construction errors."""
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch build has no fully_shard (FSDP2)")
    return run_ranks(worker_sharded_scenarios, 2, tmp_path_factory.mktemp("sharded"))


def scenario(job, name):
    return [result[name] for result in job]


@needs_gloo
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_identical_steps_and_match_one_process_on_the_concatenated_batch(request, tmp_path, world):
    if world == 2:
        kinds = ("alsals", "alsals-match", "salsa", "sls")
        results = scenario(request.getfixturevalue("ddp_job"), "agreement")
    else:
        kinds = ("alsals",)
        results = run_ranks(worker_agreement, world, tmp_path, kinds)
    for kind in kinds:
        records = [r[kind] for r in results]
        assert_identical_across_ranks(records)
        record = records[0]
        # one collective (all-reduce of one small pack) per closure evaluation that reads back, and
        # no other: an amortized step decided on the device needs none (DDP's gradient all-reduce
        # makes its skip decision alike on every rank)
        assert record["collectives"] == record["reads"]
        assert record["packs"] == record["reads"]
        if kind == "alsals":
            amortized = [r for r, searched in zip(record["reads"], record["searched"]) if not searched]
            assert amortized and amortized == [0] * len(amortized)
        assert_matches(record, single_process(kind, world))
    # The data made the search work: several step sizes, some backtracking, amortised skips (SaLSa).
    alsals_record = results[0]["alsals"]
    assert len(set(alsals_record["step_sizes"])) > 1
    assert alsals_record["counters"]["backtracks"] > 0
    if "alsals-match" in kinds:  # ‖d‖ was measured, reduced alike on every rank (compared above)
        assert results[0]["alsals-match"]["search_state"]["direction_norm"] > 0.0
    if "salsa" in kinds:
        for kind in ("alsals", "salsa"):  # past the warm-up searches, amortized steps happened and the ranks agreed
            assert results[0][kind]["counters"]["skipped_searches"] > 0, kind
        assert results[0]["sls"]["counters"]["skipped_searches"] == 0  # SLS searches at every step, as published


@needs_gloo
def test_layerwise_ranks_agree_and_match_one_process_on_the_concatenated_batch(ddp_job):
    records = scenario(ddp_job, "layerwise")
    assert records[0]["parts"] == ["0", "2"]
    for other in records[1:]:
        assert other["step_sizes"] == records[0]["step_sizes"] and other["scales"] == records[0]["scales"]
        assert other["counters"] == records[0]["counters"]
        assert all(torch.equal(a, b) for a, b in zip(other["params"], records[0]["params"]))
    model = mlp(dim=DIM)
    reference = train_layerwise(model, alsals.LayerwiseALSALS(model, initial_step_size=1.0, distributed=False),
                                concatenated_batches(2))
    assert records[0]["counters"]["combined_trials"] == reference["counters"]["combined_trials"] >= STEPS
    assert records[0]["counters"]["backtracks"] == reference["counters"]["backtracks"] > 0
    assert [min(s.values()) for s in records[0]["step_sizes"]] == pytest.approx(
        [min(s.values()) for s in reference["step_sizes"]], rel=1e-6)
    for a, b in zip(records[0]["params"], plain_params(model)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=5e-5)


@needs_gloo
def test_decay_on_plateau_ranks_see_the_same_averaged_losses_and_start_the_decay_together(ddp_job):
    records = scenario(ddp_job, "plateau")
    assert records[0]["skipped_searches"] > 0  # amortized steps ran on the device
    assert records[0]["decay_start"] > 0
    for other in records[1:]:
        assert other["decay_start"] == records[0]["decay_start"]
        assert other["seen"] == records[0]["seen"]
        assert all(torch.equal(a, b) for a, b in zip(other["params"], records[0]["params"]))


@needs_gloo
def test_negative_control_ranks_deciding_alone_diverge_and_the_guard_says_so(ddp_job):
    results = scenario(ddp_job, "negative_control")
    steps0, steps1 = results[0]["step_sizes"], results[1]["step_sizes"]
    assert steps0 != steps1  # the data make local decisions differ: the agreement test can fail
    assert any(not torch.equal(a, b) for a, b in zip(results[0]["params"], results[1]["params"]))
    assert results[0]["collectives"] == [0] * STEPS  # no reduction at all
    # the consistency guard raises on every rank, at the first step where they differ, naming the ranks
    first_difference = next(i for i, (a, b) in enumerate(zip(steps0, steps1)) if a != b) + 1
    for result in results:
        message, step = result["guard"]
        assert step == first_difference
        assert "rank 0 = " in message and "rank 1 = " in message and "step_size" in message


@needs_gloo
def test_a_nan_on_one_rank_is_rejected_by_all_ranks_without_hanging(ddp_job):
    results = scenario(ddp_job, "nonfinite")
    for result in results:
        first = result["after_first"]
        assert first["counters"]["rejected_nonfinite"] == 1  # both ranks reject rank 1's NaN trial
        assert first["trials"][0] >= 2
        assert first["collectives"] == first["evaluations"]
        skipped = result["skipped"]
        assert skipped["counters"]["skipped_steps"] == 1  # a NaN first loss on rank 1 skips the step everywhere
        assert skipped["collectives"] == [1] and result["unchanged"]
        assert all(math.isfinite(s) for s in result["rest"]["step_sizes"])
    assert results[0]["after_first"]["step_sizes"] == results[1]["after_first"]["step_sizes"]
    assert results[0]["rest"]["step_sizes"] == results[1]["rest"]["step_sizes"]
    for result in results:  # the amortized step with rank 1's NaN: skipped by every rank, no collective
        nan_step = result["amortized_nan"]
        assert nan_step["searched"] == [False] and nan_step["collectives"] == [0]
        assert result["amortized_unchanged"] and result["amortized_skips"] == 1
        assert all(math.isfinite(s) for s in result["after_amortized_nan"]["step_sizes"])
    assert results[0]["after_amortized_nan"]["step_sizes"] == results[1]["after_amortized_nan"]["step_sizes"]
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)


@needs_gloo
def test_state_dict_saved_on_rank_zero_resumes_identically_on_every_rank(ddp_job):
    results = scenario(ddp_job, "resume")
    for result in results:
        assert result["resumed_step_sizes"] == result["full"]["step_sizes"]
        assert result["resumed_trials"] == result["full"]["trials"]
        assert result["resumed_state"] == result["full"]["search_state"]
        for a, b in zip(result["resumed_params"], result["full_params"]):
            assert torch.equal(a, b)
    for a, b in zip(results[0]["resumed_params"], results[1]["resumed_params"]):
        assert torch.equal(a, b)


@needs_gloo
def test_gradient_accumulation_with_ddp_matches_the_whole_batch(ddp_job):
    results = scenario(ddp_job, "accumulation")
    assert_identical_across_ranks([r["micro"] for r in results])
    whole, micro = results[0]["whole"], results[0]["micro"]
    assert_matches(micro, whole)
    # the micro-batches synchronise gradients once per step (no_sync on all but the last), and
    # trials are forward-only: one backward "pass" (of 4 micro-batches) per step
    assert micro["gradient_syncs"] == whole["gradient_syncs"] == STEPS
    assert micro["counters"]["backward_passes"] == STEPS
    # the optimizer's one pack per evaluation, plus the one gradient all-reduce of the step (the
    # counting comm hook goes through torch.distributed.all_reduce)
    assert micro["packs"] == micro["reads"]
    assert [c - r for c, r in zip(micro["collectives"], micro["reads"])] == [1] * STEPS


@needs_gloo
def test_an_exception_in_a_trial_restores_every_rank_and_the_retry_is_unaffected(ddp_job):
    results = scenario(ddp_job, "fault")
    for result in results:
        failed, clean = result["failed"], result["clean"]
        assert failed["raised"] and failed["params_restored"] and failed["state_restored"] and failed["search_restored"]
        assert failed["rest"]["step_sizes"] == clean["rest"]["step_sizes"]
        for a, b in zip(failed["params"], clean["params"]):
            assert torch.equal(a, b)
    for a, b in zip(results[0]["failed"]["params"], results[1]["failed"]["params"]):
        assert torch.equal(a, b)


@needs_gloo
def test_zero_redundancy_optimizer_is_refused_with_what_to_use_instead(ddp_job):
    for message in scenario(ddp_job, "zero"):
        assert message is not None, "ZeroRedundancyOptimizer(optimizer_class=ALSALS) was accepted"
        assert "ZeroRedundancyOptimizer" in message
        assert "DistributedDataParallel" in message and "fully_shard" in message


@needs_gloo
def test_sharded_fsdp2_run_matches_the_ddp_run(sharded_job):
    results = scenario(sharded_job, "sharded")
    ddp_record = results[0]["ddp"]
    for name in ("fsdp2", "fsdp2_micro", "hsdp"):
        records = [r[name] for r in results]
        assert_identical_across_ranks(records)  # full parameters, gathered
        record = records[0]
        assert_matches(record, ddp_record)
        assert record["packs"] == record["reads"]  # the partial slopes ride with the first trial loss
        # an amortized step's only collective of the optimizer: the device-side skip flag (never read)
        assert [int(not searched) for searched in record["searched"]] == record["flags"]
        assert [r for r, searched in zip(record["reads"], record["searched"]) if not searched] == [0] * record["flags"].count(1)
        assert record["left_sharded"]  # after the trials, every module holds its shards again
    assert 0 in results[1]["fsdp2"]["local_sizes"]  # an empty shard was part of the run
    assert results[0]["fsdp2"]["placements"] == {"(Shard(dim=0),)"}
    assert results[0]["hsdp"]["placements"] == {"(Replicate(), Shard(dim=0))"}
    for result in results:
        assert result["poisoned"] == {"skipped": 1, "unchanged": True}
        assert result["poisoned_amortized"] == {"skipped": 1, "unchanged": True, "amortized": True}


@needs_gloo
def test_unsupported_parallel_layouts_raise_at_construction(sharded_job):
    results = scenario(sharded_job, "construction_errors")
    for rank, messages in enumerate(results):
        assert "FSDP1" in messages["fsdp1"] and "fully_shard" in messages["fsdp1"]
        assert "Shard and Replicate" in messages["partial"]
        assert "distributed=False" in messages["no_reduction"]
        assert "Shard and Replicate" in messages["add_group"]
        if rank == 0:
            assert "device mesh" in messages["mesh_mismatch"] and "process_group" in messages["mesh_mismatch"]


@needs_gloo
def test_the_torchrun_example_runs_and_its_ranks_agree():
    example = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(example)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command + ["--steps", "6", "--micro-batches", "2", "--check-consistency"],
        capture_output=True, text=True, timeout=JOIN_TIMEOUT, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all ranks agree" in result.stdout
    assert "[rank 1/2] step   5" in result.stdout


# ---------------------------------------------------------------------------------------------
# On one process: the distributed options are inert, or explain themselves
# ---------------------------------------------------------------------------------------------


def test_on_one_process_the_guard_does_nothing_and_bad_options_explain_themselves():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    model = mlp(dim=DIM)
    opt = alsals.ALSALS(model.parameters(), check_consistency=True)
    x, y = rank_batches(0)[0]
    opt.step(lambda: mse(model, x, y))
    alsals.distributed.check_consistency(opt)  # no process group: nothing to compare
    assert opt.counters["steps"] == 1
    with pytest.raises(ValueError, match="check_consistency must be True or False"):
        alsals.ALSALS(model.parameters(), check_consistency="yes")
    with pytest.raises(ValueError, match="init_process_group"):
        alsals.ALSALS(model.parameters(), distributed=True)
    with pytest.raises(ValueError, match="init_process_group"):
        alsals.ALSALS(model.parameters(), process_group=object())
