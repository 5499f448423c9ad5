"""GPU readiness checks of alsals (issue 13, part 4): one script, one line per check.

    python scripts/gpu_check.py                       # on a CUDA machine: all checks, under 5 minutes
    python scripts/gpu_check.py --json gpu-check.json # also write the results
    python scripts/gpu_check.py --device cpu --tiny   # the script's logic on a CPU (CUDA-only checks SKIP)

Each check prints ``PASS``, ``FAIL`` or ``SKIP``, its name and a short measured value; the exit
status is 1 when a check failed, 2 when none failed but the time budget (``--minutes``) stopped a
check, 0 otherwise. ``SKIP (no CUDA)`` (a check that needs CUDA, on the CPU) does not change it.

The checks (docs/gpu.md says what each one means and how its threshold was chosen):

1. ``rng_restore``: inside one ``opt.step(closure)`` every evaluation draws the same dropout masks and
   CPU noise as the first one, a frozen copy of the weights before the step (a trial at step size 0)
   reproduces the first loss bit for bit in every evaluation, and after the step the CPU and CUDA RNG
   states equal those one run of the closure alone leaves. With 2+ GPUs part of the model is on
   ``cuda:1``.
2. ``amp_bf16`` / ``amp_fp16_scaler``: ~100 steps under ``torch.autocast`` (bf16; fp16 with a
   ``torch.amp.GradScaler`` through ``opt.step(closure, grad_scaler=scaler)``): the loss decreases,
   the weights stay finite, and a forced fp16 overflow step is skipped with the weights unchanged.
3. ``amortized_no_sync`` / ``amortized_host_reads`` / ``amortized_nan_skip``: after the 10 warm-up
   searches, the amortized steps run under ``torch.cuda.set_sync_debug_mode("error")`` without an
   error and call no host-reading tensor method; one of them has a NaN loss and is skipped on the
   device (weights unchanged); searched and amortized steps are counted.
4. ``peak_memory_searched`` / ``peak_memory_amortized``: ``torch.cuda.max_memory_allocated`` of one
   step of a GPT-2-small-shaped model (124M parameters, built from its config: nothing is downloaded)
   against one ``torch.optim.Adam(fused=True)`` step, in parameter-sized buffers (4 bytes × params).
5. ``time_amortized`` / ``time_every_step``: time per step against ``torch.optim.Adam(fused=True)``
   (and ``foreach=True``) on the same model, interleaved blocks, median paired ratio.

Only torch, alsals and transformers (for the GPT-2 model class) are used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

import alsals

# PASS thresholds (docs/gpu.md). Peak memory: in parameter-sized fp32 buffers (4 bytes × parameters)
# above Adam(fused=True)'s peak. Time: ratio of the time per step to Adam(fused=True)'s.
SEARCHED_MEMORY_BUFFERS = 1.1
AMORTIZED_MEMORY_BUFFERS = 0.1
AMORTIZED_TIME_RATIO = 1.05
EVERY_STEP_TIME_RATIO = 1.45
# The loss must fall below this fraction of its start (mean of the last 10 steps / first 10).
AMP_LOSS_FRACTION = 0.5

STATUSES = ("PASS", "FAIL", "SKIP")


@dataclass
class Result:
    """One line of the report."""

    name: str
    status: str  # PASS, FAIL or SKIP
    value: str  # the short measured value printed after the name
    details: Dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why a SKIP: "no CUDA" or "time budget"

    def line(self) -> str:
        head = f"{self.status} ({self.reason})" if self.reason else self.status
        return f"{head:<19} {self.name:<22} {self.value}".rstrip()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --------------------------------------------------------------------------------------------------
# Pure pieces (tested in tests/test_gpu_check.py)
# --------------------------------------------------------------------------------------------------


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """The median over repetitions of ``times[r] / reference[r]`` (blocks of one repetition ran next
    to each other, under the same load: the ratio of a pair is robust to drift between repetitions)."""
    pairs = [t / r for t, r in zip(times, reference) if r > 0]
    return statistics.median(pairs) if pairs else float("nan")


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1e3 if seconds else float("nan")


def parameter_buffers(extra_bytes: float, n_params: int) -> float:
    """``extra_bytes`` in parameter-sized fp32 buffers: ``extra_bytes / (4 · n_params)``."""
    return extra_bytes / (4.0 * n_params)


def memory_ok(peak: int, adam_peak: int, n_params: int, allowed_buffers: float) -> bool:
    """Whether a step's peak is at most Adam's peak plus ``allowed_buffers`` parameter-sized buffers."""
    return parameter_buffers(peak - adam_peak, n_params) <= allowed_buffers


def loss_decreased(losses: Sequence[float], fraction: float = AMP_LOSS_FRACTION, window: int = 10) -> bool:
    """Whether the mean of the last ``window`` losses is finite and below ``fraction`` × the mean of the
    first ``window``."""
    if len(losses) < 2 * window:
        return False
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return math.isfinite(first) and math.isfinite(last) and last < fraction * first


def next_step_searches(opt: alsals.ALSALS) -> bool:
    """Whether the optimizer's next step will search (the rule of ``alsals.search.plan``, from the
    public ``search_state``; reading it settles the device-side counts: one host read)."""
    amortization = opt.config.amortization
    state = opt.search_state
    return amortization is None or state["searches"] < amortization.warmup_searches or state["steps_until_search"] <= 0


class Budget:
    """The time guard: a check starts only when its minimum time is left."""

    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.limit = 60.0 * minutes

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit - self.elapsed()


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_indices(devices: Sequence[torch.device]) -> List[int]:
    return sorted({d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"})


def rng_states(indices: Sequence[int]) -> Dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    for i in indices:
        states[f"cuda:{i}"] = torch.cuda.get_rng_state(i)
    return states


def set_rng_states(states: Dict[str, torch.Tensor]) -> None:
    for name, state in states.items():
        if name == "cpu":
            torch.set_rng_state(state)
        else:
            torch.cuda.set_rng_state(state, int(name.split(":")[1]))


def params_of(model: nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def all_equal(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def counting_host_reads() -> Iterator[List[str]]:
    """Record every call of a tensor method that reads a value back to the host (on any device)."""
    calls: List[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counting(original, name))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def sync_debug_error(device: torch.device) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode("error")`` inside (nothing off CUDA)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def regression_task(device: torch.device, seed: int, n: int = 2048, dim: int = 16):
    """Inputs and targets of a random teacher network (learnable), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=gen)
    w1, w2 = torch.randn(dim, 32, generator=gen) / dim**0.5, torch.randn(32, 1, generator=gen) / 32**0.5
    Y = torch.tanh(X @ w1) @ w2
    order = [torch.randint(0, n, (64,), generator=gen) for _ in range(400)]
    return X.to(device), Y.to(device), [idx.to(device) for idx in order]


def student(device: torch.device, seed: int, dim: int = 16, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: List[nn.Module] = [nn.Linear(dim, 64), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)]
    return nn.Sequential(*layers).to(device)


# --------------------------------------------------------------------------------------------------
# 1. RNG restore across devices
# --------------------------------------------------------------------------------------------------


class SplitNet(nn.Module):
    """An MLP with dropout whose second half may live on another device."""

    def __init__(self, first: torch.device, second: torch.device, dim: int = 16):
        super().__init__()
        self.first, self.second = first, second
        self.a = nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Dropout(0.3)).to(first)
        self.b = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Dropout(0.3), nn.Linear(64, 1)).to(second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x.to(self.first)).to(self.second))


def check_rng(args: argparse.Namespace, device: torch.device) -> List[Result]:
    second = torch.device("cuda", 1) if device.type == "cuda" and torch.cuda.device_count() >= 2 else device
    indices = cuda_indices([device, second])
    names = ["cpu"] + [f"cuda:{i}" for i in indices]
    torch.manual_seed(args.seed)
    model = SplitNet(device, second)
    twin = copy.deepcopy(model)  # the weights before each step: evaluated at every evaluation (step size 0)
    for p in twin.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed + 1)
    X, Y = torch.randn(64, 16, generator=gen), torch.randn(64, 1, generator=gen)
    X, Y = X.to(device), Y.to(second)

    masks: List[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(lambda m, inp, out: masks.append((out == 0).detach().clone()))

    def make_closure(net: nn.Module, records: List[Dict[str, Any]]) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            noise = 0.1 * torch.randn(X.shape)  # CPU generator
            x = X + noise.to(device)
            with torch.random.fork_rng(devices=indices), torch.no_grad():
                probe = nn.functional.mse_loss(twin(x), Y)  # the same draws as the model's forward below
            start = len(masks)
            loss = nn.functional.mse_loss(net(x), Y)
            records.append({"noise": noise, "probe": probe, "loss": loss.detach(), "masks": masks[start:]})
            return loss

        return closure

    opt = alsals.ALSALS(model.parameters(), amortized=False, initial_step_size=10.0)  # backtracks: several trials
    failures: List[str] = []
    evaluations: List[int] = []
    steps = 2 if args.tiny else 4
    for step in range(steps):
        twin.load_state_dict(model.state_dict())
        records: List[Dict[str, Any]] = []
        before_rng = rng_states(indices)
        before_counters = opt.counters
        loss = opt.step(make_closure(model, records))
        after_rng = rng_states(indices)
        n = len(records)
        evaluations.append(n)
        if n < 2 or opt.counters["forward_evaluations"] - before_counters["forward_evaluations"] != n:
            failures.append(f"step {step}: {n} evaluations recorded (a searched step has at least 2)")
            continue
        first = records[0]
        if not torch.equal(loss, first["loss"]):
            failures.append(f"step {step}: returned loss differs from the first evaluation's")
        for k, r in enumerate(records):
            if not torch.equal(r["noise"], first["noise"]):
                failures.append(f"step {step} evaluation {k}: CPU noise differs from the first evaluation's")
            if len(r["masks"]) != len(first["masks"]) or not all_equal(r["masks"], first["masks"]):
                failures.append(f"step {step} evaluation {k}: dropout masks differ from the first evaluation's")
            if not torch.equal(r["probe"], first["loss"]):
                failures.append(f"step {step} evaluation {k}: loss at step size 0 {float(r['probe'])!r} != "
                                f"first loss {float(first['loss'])!r}")
        # The first evaluation alone, replayed from the same RNG state on the weights before the step.
        replay: List[Dict[str, Any]] = []
        set_rng_states(before_rng)
        alone = copy.deepcopy(twin).requires_grad_(True)
        with torch.enable_grad():
            make_closure(alone, replay)().backward()
        alone_rng = rng_states(indices)
        set_rng_states(after_rng)
        for name in names:
            if not torch.equal(after_rng[name], alone_rng[name]):
                failures.append(f"step {step}: {name} RNG state after the step != after the first evaluation alone")
            if torch.equal(after_rng[name], before_rng[name]):
                failures.append(f"step {step}: {name} RNG did not advance (the check would prove nothing)")
        if not torch.equal(replay[0]["loss"], first["loss"]):
            failures.append(f"step {step}: the closure run once gives {float(replay[0]['loss'])!r}, the step's first loss "
                            f"{float(first['loss'])!r}")
    value = (
        f"{'+'.join(names)}: {steps} steps, {sum(evaluations)} evaluations (up to {max(evaluations)} per step), "
        "masks/noise/step-0 loss bitwise equal, RNG after = first evaluation alone"
        if not failures
        else failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else "")
    )
    details = {"generators": names, "evaluations_per_step": evaluations, "failures": failures}
    return [Result("rng_restore", verdict(not failures), value, details)]


# --------------------------------------------------------------------------------------------------
# 2. Mixed precision: bf16 autocast, fp16 with a GradScaler
# --------------------------------------------------------------------------------------------------


def check_amp(args: argparse.Namespace, device: torch.device) -> List[Result]:
    X, Y, order = regression_task(device, args.seed)
    steps = 100
    results = []
    for dtype, name in ((torch.bfloat16, "amp_bf16"), (torch.float16, "amp_fp16_scaler")):
        model = student(device, args.seed)
        opt = alsals.ALSALS(model.parameters())
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

        def closure_at(idx: torch.Tensor) -> Callable[[], torch.Tensor]:
            def closure() -> torch.Tensor:
                with torch.autocast(device.type, dtype=dtype):
                    out = model(X[idx])
                return nn.functional.mse_loss(out.float(), Y[idx])

            return closure

        losses = []
        for idx in order[:steps]:
            if scaler is not None:
                losses.append(opt.step(closure_at(idx), grad_scaler=scaler))
                scaler.update()
            else:
                losses.append(opt.step(closure_at(idx)))
        values = torch.stack(losses).tolist()
        counters = opt.counters
        first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
        ok = loss_decreased(values) and all_finite(model)
        details: Dict[str, Any] = {"first10": first, "last10": last, "counters": counters}
        value = (f"loss {first:.4g} -> {last:.4g} in {steps} steps ({counters['searches']} searched, "
                 f"{counters['skipped_searches']} amortized), weights finite: {all_finite(model)}")
        if scaler is not None:
            # A forced overflow: a scale of 2^40 overflows the fp16 gradients (the loss itself is finite).
            scaler.update(new_scale=2.0**40)
            before_params, before_skipped = params_of(model), counters["skipped_steps"]
            loss = opt.step(closure_at(order[steps]), grad_scaler=scaler)
            scaler.update()
            skipped = opt.counters["skipped_steps"] - before_skipped
            unchanged = all_equal(before_params, params_of(model))
            backed_off = scaler.get_scale() < 2.0**40
            ok = ok and skipped == 1 and unchanged and backed_off and math.isfinite(float(loss))
            details.update(overflow_skipped=skipped, overflow_weights_unchanged=unchanged,
                           scale_after_overflow=scaler.get_scale(), training_skipped_steps=counters["skipped_steps"])
            value += (f"; overflow at scale 2^40: skipped {skipped}, weights unchanged: {unchanged}, "
                      f"scale -> 2^{math.log2(scaler.get_scale()):.0f}")
        results.append(Result(name, verdict(ok), value, details))
    return results


# --------------------------------------------------------------------------------------------------
# 3. Amortized steps: no host synchronisation, NaN skipped on the device
# --------------------------------------------------------------------------------------------------


def check_amortized(args: argparse.Namespace, device: torch.device) -> List[Result]:
    X, Y, order = regression_task(device, args.seed + 2)
    model = student(device, args.seed, dropout=0.1)
    opt = alsals.ALSALS(model.parameters())
    # Every batch is materialised on the device before the checked region (a blocking copy from the
    # host is a synchronisation too).
    data = [(X[idx].contiguous(), Y[idx].contiguous()) for idx in order]

    def closure_at(i: int, poison: bool = False) -> Callable[[], torch.Tensor]:
        x, y = data[i]

        def closure() -> torch.Tensor:
            loss = nn.functional.mse_loss(model(x), y)
            return loss * float("nan") if poison else loss

        return closure

    i = 0
    while i < 200 and (i < 12 or next_step_searches(opt) or opt.search_state["steps_until_search"] < 2):
        opt.step(closure_at(i))
        i += 1
    planned = opt.search_state["steps_until_search"]
    before = opt.counters
    error: Optional[str] = None
    reads: List[str] = []
    snapshots: Dict[str, List[torch.Tensor]] = {}
    try:
        with sync_debug_error(device), counting_host_reads() as reads:
            for k in range(planned):
                if k in (0, 1):
                    snapshots[f"before{k}"] = [p.detach().clone() for p in model.parameters()]
                opt.step(closure_at(i, poison=k == 1))
                if k in (0, 1):
                    snapshots[f"after{k}"] = [p.detach().clone() for p in model.parameters()]
                i += 1
    except RuntimeError as exc:  # the sync debug mode raises at the first synchronisation
        error = str(exc).splitlines()[0]
    synchronize(device)
    after = opt.counters
    amortized = after["skipped_searches"] - before["skipped_searches"]
    searched = after["searches"] - before["searches"]
    nan_skipped = after["skipped_steps"] - before["skipped_steps"]
    moved = "after0" in snapshots and not all_equal(snapshots["before0"], snapshots["after0"])
    unchanged = "after1" in snapshots and all_equal(snapshots["before1"], snapshots["after1"])
    # Training goes on past the NaN (searches included): count searched and amortized steps.
    mid = opt.counters
    more = 40 if args.tiny else 60
    for _ in range(more):
        opt.step(closure_at(i % len(data)))
        i += 1
    end = opt.counters
    run_searched, run_amortized = end["searches"] - mid["searches"], end["skipped_searches"] - mid["skipped_searches"]
    region_ok = error is None and planned >= 2 and amortized == planned and searched == 0
    counts = (f"{planned} amortized steps after {before['searches']} searches; then {more} steps: "
              f"{run_searched} searched, {run_amortized} amortized")
    results = []
    if device.type == "cuda":
        value = f"no error in {planned} amortized steps" if error is None else f"error: {error}"
        results.append(Result("amortized_no_sync", verdict(region_ok), value, {"error": error, "planned": planned}))
    else:
        results.append(Result("amortized_no_sync", "SKIP", "torch.cuda.set_sync_debug_mode needs CUDA", reason="no CUDA"))
    reads_ok = region_ok and not reads and run_amortized > 0 and run_searched > 0
    results.append(Result("amortized_host_reads", verdict(reads_ok), f"{len(reads)} host reads; {counts}",
                          {"reads": reads, "planned": planned, "error": error, "after_warmup_searched": run_searched,
                           "after_warmup_amortized": run_amortized}))
    nan_ok = region_ok and nan_skipped == 1 and unchanged and moved and all_finite(model)
    results.append(Result(
        "amortized_nan_skip", verdict(nan_ok),
        f"NaN step: skipped {nan_skipped}, weights unchanged: {unchanged} (a normal amortized step moved them: {moved}); "
        f"finite after {more} more steps: {all_finite(model)}",
        {"skipped": nan_skipped, "unchanged": unchanged, "moved": moved},
    ))
    return results


# --------------------------------------------------------------------------------------------------
# GPT-2 (checks 4 and 5)
# --------------------------------------------------------------------------------------------------


def gpt_config(tiny: bool) -> Dict[str, int]:
    if tiny:
        return dict(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def build_gpt(args: argparse.Namespace, device: torch.device) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel  # built from the config: no download

    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(**gpt_config(args.tiny)))  # on the CPU: the same weights on every device
    model.to(device)
    model.loss_type = "ForCausalLM"  # the default causal-LM loss, named (transformers warns otherwise)
    return model.train()


def gpt_batches(args: argparse.Namespace, device: torch.device, count: int = 4) -> List[torch.Tensor]:
    cfg = gpt_config(args.tiny)
    batch, seq = (2, 16) if args.tiny else (args.batch, args.seq)
    gen = torch.Generator().manual_seed(args.seed + 3)
    return [torch.randint(0, cfg["vocab_size"], (batch, seq), generator=gen).to(device) for _ in range(count)]


def gpt_closure(args: argparse.Namespace, model: nn.Module, ids: torch.Tensor,
                device: torch.device) -> Callable[[], torch.Tensor]:
    autocast = device.type == "cuda" and not args.no_autocast

    def closure() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=ids, labels=ids).loss

    return closure


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# 4. Peak memory of a step against Adam
# --------------------------------------------------------------------------------------------------


class CudaMemory:
    """The allocator's counters of one CUDA device (the tests substitute a stand-in on the CPU)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))


def check_memory(args: argparse.Namespace, device: torch.device, memory: Optional[Any] = None) -> List[Result]:
    memory = memory if memory is not None else CudaMemory(device)
    model = build_gpt(args, device)
    batches = gpt_batches(args, device)
    n_params = sum(p.numel() for p in model.parameters())

    def measure(step: Callable[[], Any]) -> Dict[str, int]:
        """The peak of one step (gradients freed first, as a ``zero_grad(set_to_none=True)`` loop does)."""
        model.zero_grad(set_to_none=True)
        synchronize(device)
        memory.reset_peak()
        before = memory.allocated()
        step()
        synchronize(device)
        return {"before": before, "peak": memory.peak()}

    adam = contender(args, "adam_fused", model, device, copy_model=False)
    for k in range(2):  # its state exists
        adam.step(batches[k % len(batches)])
    adam_mem = measure(lambda: adam.step(batches[2 % len(batches)]))
    adam.opt.state.clear()  # Adam's moments go before ALSALS's are made
    model.zero_grad(set_to_none=True)
    free_memory(device)

    opt = alsals.ALSALS(model.parameters())
    measured: Dict[str, Dict[str, Any]] = {}
    k = 0
    while k < 80 and len(measured) < 2:
        searches = next_step_searches(opt)
        kind = "searched" if searches else "amortized"
        closure = gpt_closure(args, model, batches[k % len(batches)], device)
        if kind not in measured and opt.counters["searches"] >= 10:
            before = opt.counters
            mem = measure(lambda: opt.step(closure))
            after = opt.counters
            took = "searched" if after["searches"] > before["searches"] else "amortized"
            measured[kind] = {**mem, "took": took}
        else:
            opt.step(closure)
        k += 1

    results = []
    for kind, allowed in (("searched", SEARCHED_MEMORY_BUFFERS), ("amortized", AMORTIZED_MEMORY_BUFFERS)):
        name = f"peak_memory_{kind}"
        if kind not in measured:
            results.append(Result(name, "FAIL", f"no {kind} step within {k} steps"))
            continue
        mem = measured[kind]
        extra = mem["peak"] - adam_mem["peak"]
        buffers = parameter_buffers(extra, n_params)
        ok = mem["took"] == kind and memory_ok(mem["peak"], adam_mem["peak"], n_params, allowed)
        value = (f"{extra / 2**20:+.1f} MiB = {buffers:+.3f} parameter buffers vs Adam(fused) (allowed {allowed:+.1f}); "
                 f"peak {mem['peak'] / 2**30:.2f} GiB vs {adam_mem['peak'] / 2**30:.2f} GiB, {n_params / 1e6:.1f}M params")
        if mem["took"] != kind:
            value = f"the measured step was {mem['took']}, not {kind}"
        results.append(Result(name, verdict(ok), value, {
            "n_params": n_params, "adam": adam_mem, "alsals": mem, "extra_bytes": extra, "extra_buffers": buffers,
            "allowed_buffers": allowed,
        }))
    return results


# --------------------------------------------------------------------------------------------------
# 5. Time per step against Adam
# --------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    step: Callable[[torch.Tensor], None]
    times: List[float] = field(default_factory=list)


def contender(args: argparse.Namespace, name: str, base: nn.Module, device: torch.device, copy_model: bool = True) -> Contender:
    """One optimizer with its own copy of the weights. Adam's step is the plain loop
    ``zero_grad(set_to_none=True); closure().backward(); step()``; ALSALS's is ``step(closure)``."""
    model = copy.deepcopy(base) if copy_model else base
    if name.startswith("adam"):
        kernel = {"fused": True} if name == "adam_fused" else {"foreach": True}
        adam = torch.optim.Adam(model.parameters(), lr=1e-4, **kernel)  # type: ignore[arg-type]

        def adam_step(ids: torch.Tensor) -> None:
            adam.zero_grad(set_to_none=True)
            gpt_closure(args, model, ids, device)().backward()
            adam.step()

        return Contender(name, model, adam, adam_step)
    opt = alsals.ALSALS(model.parameters(), amortized=name == "alsals")

    def alsals_step(ids: torch.Tensor) -> None:
        opt.step(gpt_closure(args, model, ids, device))

    return Contender(name, model, opt, alsals_step)


def check_time(args: argparse.Namespace, device: torch.device, budget: Budget) -> List[Result]:
    base = build_gpt(args, device)
    batches = gpt_batches(args, device)
    repeats = 3 if args.tiny else args.repeats
    block = 5 if args.tiny else args.block_steps

    contenders = [contender(args, n, base, device) for n in ("adam_fused", "adam_foreach", "alsals", "alsals_every_step")]
    del base
    counter = 0
    for c in contenders:  # warm-up: past ALSALS's 10 initial searches, kernels compiled, state allocated
        if c.name == "alsals":
            while c.opt.counters["searches"] < 10:  # type: ignore[attr-defined]
                c.step(batches[counter % len(batches)])
                counter += 1
        for _ in range(3):
            c.step(batches[counter % len(batches)])
            counter += 1
        c.model.zero_grad(set_to_none=True)
    synchronize(device)
    start_counts = {c.name: c.opt.counters for c in contenders if isinstance(c.opt, alsals.ALSALS)}
    rep_seconds = 0.0
    completed = 0
    for r in range(repeats):
        if budget.left() < 1.2 * rep_seconds + 5:  # stop cleanly: the next repetition might not fit
            break
        t_rep = time.perf_counter()
        for c in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:  # rotated order
            synchronize(device)
            t0 = time.perf_counter()
            for s in range(block):
                c.step(batches[(counter + s) % len(batches)])
            synchronize(device)
            c.times.append((time.perf_counter() - t0) / block)
            c.model.zero_grad(set_to_none=True)  # only one contender's gradients at a time
        counter += block
        completed += 1
        rep_seconds = time.perf_counter() - t_rep
    adam, foreach = contenders[0], contenders[1]
    results = []
    for c, name, allowed in ((contenders[2], "time_amortized", AMORTIZED_TIME_RATIO),
                             (contenders[3], "time_every_step", EVERY_STEP_TIME_RATIO)):
        counts = c.opt.counters  # type: ignore[attr-defined]
        start = start_counts[c.name]
        steps = counts["steps"] - start["steps"]
        forwards = (counts["forward_evaluations"] - start["forward_evaluations"]) / max(steps, 1)
        searched = (counts["searches"] - start["searches"]) / max(steps, 1)
        ratio, ratio_foreach = paired_ratio(c.times, adam.times), paired_ratio(c.times, foreach.times)
        ms, adam_ms = median_ms(c.times), median_ms(adam.times)
        value = (f"{ratio:.3f}x Adam(fused) (allowed {allowed:.2f}x), {ratio_foreach:.3f}x Adam(foreach); "
                 f"{ms:.1f} vs {adam_ms:.1f} ms/step; {forwards:.2f} forwards/step, {100 * searched:.0f}% searched; "
                 f"{completed}x{block} steps")
        details = {"ratio_vs_adam_fused": ratio, "ratio_vs_adam_foreach": ratio_foreach, "ms_per_step": ms,
                   "adam_fused_ms_per_step": adam_ms, "adam_foreach_ms_per_step": median_ms(foreach.times),
                   "forwards_per_step": forwards, "searched_fraction": searched, "repeats": completed,
                   "block_steps": block, "times": {x.name: x.times for x in contenders}}
        if completed < 3:
            results.append(Result(name, "SKIP", value, details, reason="time budget"))
        elif device.type != "cuda":
            results.append(Result(name, "SKIP", value + " (thresholds apply on CUDA)", details, reason="no CUDA"))
        else:
            results.append(Result(name, verdict(ratio <= allowed), value, details))
    return results


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


@dataclass
class Check:
    names: List[str]
    run: Callable[[argparse.Namespace, torch.device, Budget], List[Result]]
    minimum_seconds: float  # on CUDA at full size; a check starts only with this much time left
    needs_cuda: str = ""  # what it needs CUDA for (SKIP on the CPU)


CHECKS = [
    Check(["rng_restore"], lambda a, d, b: check_rng(a, d), 10),
    Check(["amp_bf16", "amp_fp16_scaler"], lambda a, d, b: check_amp(a, d), 20),
    Check(["amortized_no_sync", "amortized_host_reads", "amortized_nan_skip"], lambda a, d, b: check_amortized(a, d), 10),
    Check(["peak_memory_searched", "peak_memory_amortized"], lambda a, d, b: check_memory(a, d), 40,
          needs_cuda="torch.cuda.max_memory_allocated"),
    Check(["time_amortized", "time_every_step"], check_time, 60),
]


def environment(device: torch.device) -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "alsals": alsals.__version__, "device": str(device)}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default where available) or cpu; cuda:N picks a GPU")
    parser.add_argument("--tiny", action="store_true", help="a tiny GPT and few steps (a smoke run of the logic)")
    parser.add_argument("--json", metavar="PATH", help="write the results and the environment to PATH")
    parser.add_argument("--minutes", type=float, default=4.5,
                        help="time budget: a check that cannot finish in what is left is skipped (default 4.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="CHECK", help="run only these checks (names as printed)")
    parser.add_argument("--batch", type=int, default=8, help="GPT batch size (checks 4-5; default 8)")
    parser.add_argument("--seq", type=int, default=256, help="GPT tokens per sequence (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--block-steps", type=int, default=40,
                        help="steps per timed block (default 40: twice the longest amortization interval, so "
                             "every block holds the searches of an amortization cycle)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of torch (default: 1 with --device cpu, where the tensors are tiny and two "
                             "threads on a shared CPU mostly wait for each other; torch's default with CUDA)")
    parser.add_argument("--no-autocast", action="store_true", help="GPT checks in fp32 (default: bf16 autocast on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False (use --device cpu --tiny)")
    if device.type not in ("cuda", "cpu"):
        parser.error("--device must be cuda or cpu")
    known = {n for c in CHECKS for n in c.names}
    for name in args.only or ():
        if name not in known:
            parser.error(f"unknown check {name!r}; known: {', '.join(sorted(known))}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    budget = Budget(args.minutes)
    threads = args.threads if args.threads is not None else 1 if device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)
    env = environment(device)
    env["threads"] = torch.get_num_threads()
    print(f"# alsals {env['alsals']} gpu_check on {device}"
          f"{' (' + ', '.join(env['gpus']) + ')' if device.type == 'cuda' else ''}, torch {env['torch']}"
          f"{', tiny' if args.tiny else ''}, budget {args.minutes:g} min", flush=True)
    results: List[Result] = []
    for check in CHECKS:
        if args.only and not set(check.names) & set(args.only):
            continue
        started = time.perf_counter()
        minimum = check.minimum_seconds * (0.1 if args.tiny else 1.0)
        if check.needs_cuda and device.type != "cuda":
            out = [Result(n, "SKIP", f"needs {check.needs_cuda}", reason="no CUDA") for n in check.names]
        elif budget.left() < minimum:
            out = [Result(n, "SKIP", f"{budget.left():.0f} s left, needs {minimum:.0f} s", reason="time budget")
                   for n in check.names]
        else:
            try:
                out = check.run(args, device, budget)
            except Exception as exc:  # a check that crashes fails; the others still run
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                out = [Result(n, "FAIL", message, {"exception": repr(exc)}) for n in check.names]
            free_memory(device)
        for r in out:
            r.details["seconds"] = round(time.perf_counter() - started, 2)
            if not args.only or r.name in args.only:
                results.append(r)
                print(r.line(), flush=True)
    failed = [r.name for r in results if r.status == "FAIL"]
    cut = [r.name for r in results if r.reason == "time budget"]
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    print(f"# {len(results)} checks: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
          f"in {budget.elapsed():.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "elapsed_s": budget.elapsed(),
                       "results": [asdict(r) for r in results]}, f, indent=2, default=str)
    return 1 if failed else 2 if cut else 0


if __name__ == "__main__":
    sys.exit(main())
