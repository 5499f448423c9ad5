"""``alsals-bench overhead``: time per step of ALSALS against ``torch.optim.Adam``, like for like.

**References.** Every case times three constructions of ``torch.optim.Adam`` (no weight decay):
``adam-foreach`` (``foreach=True``, the multi-tensor kernels ALSALS uses), ``adam-fused``
(``fused=True``) and ``adam-default`` (as constructed by default: on the CPU torch picks its
single-tensor loop, so this one is labelled and not led with). ALSALS runs without weight decay too.

**Cases** (:data:`CASES`) are the benchmark's own models with real batches: a case is a model builder
and a size label (:class:`OverheadCase`). :func:`task_case` builds one from a benchmark task (its model
for seed 0, and a stream of real training batches drawn as the benchmark draws them, the same stream
for every contender: no small pool of repeated batches, which would make the line search's
behaviour -- and so its number of forwards -- unlike a real run's). The model-size sweep
(:mod:`alsals_bench.sweep`) uses :func:`gpt_case`: the GPT shapes of :mod:`alsals_bench.gpt_sizes`
on the Shakespeare bytes at context 128; :func:`get_case` knows them by their size label.

**Timing.** Each contender gets its own copy of the same initial weights. After ``warmup`` steps each,
the contenders are timed interleaved (A B C, A B C, ... with the order rotated at every repetition),
``block_steps`` steps per timed block, ``repeats`` blocks each. The time per step is the median over
the blocks (with their min-max); the ratio to a reference is the median over repetitions of the
*paired* ratio (the two blocks of a repetition ran next to each other in time, under the same machine
load), with the min-max of the paired ratios as its spread. With amortised search a step with a
search costs one forward more than a step without; a block must span the amortisation cycle (the
default 40 steps is twice ALSALS's longest interval between searches). Forwards and backwards per
step are counted over the timed steps. CUDA is synchronised around every block.

**Memory.** *Optimizer state bytes* are counted exactly: every tensor held by the optimizer (its
``state``, the non-parameter entries of its param groups and its other attributes; parameters and
gradients excluded). *Peak extra memory of a step*: on CUDA ``torch.cuda.max_memory_allocated``
over a window that holds a searched step (:func:`steps_through_next_search`)
minus what was allocated before it; on the CPU the sweep measures it in a process of its own
(:mod:`alsals_bench.memory`).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .optimizers import Adapter, RunContext, get_spec, resolve_optimizers
from .provenance import load_average, provenance
from .results import clean

DEFAULT_OPTIMIZERS = ("alsals", "alsals-no-amortisation")  # amortised search on (default) and off

#: the torch.optim.Adam constructions timed in every case, in the order the tables lead with
REFERENCES: dict[str, dict] = {
    "adam-foreach": {"foreach": True},
    "adam-fused": {"fused": True},
    "adam-default": {},
}


@dataclass
class CaseInstance:
    """A built case: the model, ``batch(i)`` (the i-th step's batch) and ``loss(model, batch)``."""

    model: nn.Module
    batch: Callable[[int], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    n_batches: int


@dataclass(frozen=True)
class OverheadCase:
    """One row of the overhead suite: a model builder and its size label."""

    name: str
    description: str
    #: ``build(n_steps, device) -> CaseInstance`` with at least ``n_steps`` distinct batches
    build: Callable[[int, torch.device], CaseInstance]
    size: str = "bench"


def task_case(task_name: str, size: str = "bench") -> OverheadCase:
    """A case from a benchmark task: its model for seed 0 and its real training batches."""

    def build(n_steps: int, device: torch.device) -> CaseInstance:
        from .runner import BatchSampler, get_task

        task = get_task(task_name)
        inst = task.build(0)
        sampler = BatchSampler(inst.n_train, task.batch_size, seed=0)
        batches = [inst.batch(sampler.next()) for _ in range(n_steps)]
        batches = [tuple(t.to(device) for t in b) for b in batches]
        return CaseInstance(inst.model.to(device), lambda i: batches[i % len(batches)], inst.loss, len(batches))

    return OverheadCase(task_name, f"the {task_name} task's model, real batches", build, size)


def gpt_case(label: str, batch_size: int) -> OverheadCase:
    """A case of the size sweep: the :mod:`alsals_bench.gpt_sizes` shape ``label`` (initialised
    from seed 0) on a stream of real Shakespeare windows of 128 bytes, ``batch_size`` windows a step
    (drawn by the benchmark's sampler from seed 0: the same stream for every contender)."""
    from .gpt_sizes import CONTEXT, get_size

    shape = get_size(label)

    def build(n_steps: int, device: torch.device) -> CaseInstance:
        from .gpt_sizes import shakespeare_windows
        from .runner import BatchSampler
        from .tasks import _build_model, _lm_cross_entropy

        lm = shakespeare_windows()
        model = _build_model(0, shape.build)
        sampler = BatchSampler(lm.n_train, batch_size, seed=0)
        batches = [tuple(t.to(device) for t in lm.batch(sampler.next())) for _ in range(n_steps)]

        def loss(m: nn.Module, batch) -> torch.Tensor:
            return _lm_cross_entropy(m(batch[0]), batch[1])

        return CaseInstance(model.to(device), lambda i: batches[i % len(batches)], loss, len(batches))

    return OverheadCase(label, f"ByteGPT d_model {shape.d_model}, {shape.n_layers} layers, {shape.n_heads} heads, "
                               f"context {CONTEXT}, batch {batch_size}, Shakespeare bytes", build, label)


#: the cases timed by default (the first three are the dev models of the earlier overhead table)
CASES: list[OverheadCase] = [
    task_case(name) for name in (
        "digits_mlp", "mnist_cnn", "shakespeare_gpt", "mnist_resnet", "mnist_vit", "bbc_lstm_lm",
    )
]


def get_case(name: str) -> OverheadCase:
    """A case of :data:`CASES`, or a size of the sweep by its label (``gpt-1M``: the sweep's batch)."""
    for case in CASES:
        if case.name == name:
            return case
    from .gpt_sizes import SWEEP

    if name in SWEEP:
        return gpt_case(name, SWEEP[name].batch_size)
    raise KeyError(f"unknown overhead case {name!r}; known: {', '.join(c.name for c in CASES)} "
                   f"and the sweep's sizes {', '.join(SWEEP)}")


# --------------------------------------------------------------------------------------------------
# memory


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds, parameters and their gradients excluded."""
    exclude: set[int] = set()
    for group in opt.param_groups:
        for p in group["params"]:
            exclude.add(id(p))
            if p.grad is not None:
                exclude.add(id(p.grad))
    seen: set[int] = set()
    total = 0

    def walk(obj: Any, depth: int = 0) -> None:
        nonlocal total
        if depth > 6:
            return
        if torch.is_tensor(obj):
            if id(obj) in exclude or id(obj) in seen:
                return
            seen.add(id(obj))
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)

    walk(dict(opt.state))
    for group in opt.param_groups:
        walk({k: v for k, v in group.items() if k != "params"})
    for name, value in vars(opt).items():
        if name not in ("state", "param_groups", "defaults", "_optimizer_step_pre_hooks",
                        "_optimizer_step_post_hooks"):
            walk(value)
    return total


# --------------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Contender:
    name: str
    optimizer: Any
    step: Callable[[], None]
    counts: dict
    error: str | None = None
    times: list | None = None


def _make_contender(name: str, case: CaseInstance, device, total_steps: int) -> _Contender:
    model = copy.deepcopy(case.model).to(device)
    model.train()
    counts = {"fwd": 0, "bwd": 0}
    state = {"i": 0}

    def _count_backward(grad):
        counts["bwd"] += 1

    def closure():
        counts["fwd"] += 1
        loss = case.loss(model, case.batch(state["i"]))
        if loss.requires_grad:
            loss.register_hook(_count_backward)
        return loss

    if name in REFERENCES:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **REFERENCES[name])

        def step():
            opt.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            opt.step()
            state["i"] += 1
    else:
        ctx = RunContext(total_steps=total_steps, n_batches_per_epoch=100, weight_decay=0.0)
        adapter = Adapter(get_spec(name), model, ctx)
        opt = adapter.optimizer

        def step():
            adapter.step(closure)
            state["i"] += 1
    return _Contender(name, opt, step, counts, times=[])


def paired_ratios(times: list[float], reference: list[float]) -> list[float]:
    """``times[r] / reference[r]`` for every repetition ``r`` (both blocks ran side by side)."""
    return [t / r for t, r in zip(times, reference) if r > 0]


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median over repetitions of the paired ratios (robust to load that changes between
    repetitions, where the ratio of the two medians is not)."""
    pairs = paired_ratios(times, reference)
    return statistics.median(pairs) if pairs else float("nan")


def measure_case(case: OverheadCase, optimizers, *, device: str = "cpu", warmup: int = 100, repeats: int = 9,
                 block_steps: int = 40, references=None) -> list[dict]:
    """Time ``optimizers`` and the Adam ``references`` (default: all of :data:`REFERENCES`) on
    ``case``; one row per contender (see the module docstring)."""
    dev = torch.device(device)
    total_steps = warmup + repeats * block_steps + 1
    inst = case.build(total_steps, dev)
    n_params = sum(p.numel() for p in inst.model.parameters())
    refs_wanted = list(REFERENCES if references is None else references)
    names = [*refs_wanted, *(o for o in optimizers if o not in REFERENCES)]
    contenders: list[_Contender] = []
    rows: list[dict] = []
    for name in names:
        try:
            contenders.append(_make_contender(name, inst, dev, total_steps))
        except Exception as exc:  # e.g. fused Adam missing on a device: report, keep going
            rows.append({"case": case.name, "size": case.size, "optimizer": name, "params": n_params,
                         "error": f"{type(exc).__name__}: {exc}"})
    torch.manual_seed(2)
    for c in contenders:
        try:
            for _ in range(warmup):
                c.step()
        except Exception as exc:
            c.error = f"{type(exc).__name__}: {exc}"
    live = [c for c in contenders if c.error is None]
    for c in live:
        c.counts["fwd"] = c.counts["bwd"] = 0
    for rep in range(repeats):
        k = rep % max(len(live), 1)
        for c in live[k:] + live[:k]:
            if c.error is not None:
                continue
            try:
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(block_steps):
                    c.step()
                _sync(dev)
                c.times.append((time.perf_counter() - t0) / block_steps)
            except Exception as exc:
                c.error = f"{type(exc).__name__}: {exc}"
    timed_steps = repeats * block_steps
    refs = {c.name: c for c in contenders if c.name in REFERENCES and c.times}
    for c in contenders:
        row = {"case": case.name, "size": case.size, "optimizer": c.name, "params": n_params, "device": str(dev),
               "error": c.error}
        if c.times:
            row.update({
                "ms_per_step": statistics.median(c.times) * 1e3,
                "ms_per_step_min": min(c.times) * 1e3,
                "ms_per_step_max": max(c.times) * 1e3,
                "fwd_per_step": c.counts["fwd"] / timed_steps,
                "bwd_per_step": c.counts["bwd"] / timed_steps,
                "ratios": {},
            })
            for ref_name, ref in refs.items():
                pairs = paired_ratios(c.times, ref.times)
                row["ratios"][ref_name] = {"median": statistics.median(pairs) if pairs else float("nan"),
                                           "min": min(pairs) if pairs else float("nan"),
                                           "max": max(pairs) if pairs else float("nan")}
        state_bytes = optimizer_state_bytes(c.optimizer)
        row["state_bytes"] = state_bytes
        row["state_bytes_per_param"] = state_bytes / max(n_params, 1)
        counters = getattr(c.optimizer, "counters", None)
        if isinstance(counters, dict):
            row["optimizer_counters"] = dict(counters)
        row["peak_step_extra_bytes"] = _peak_step_bytes(c, dev) if c.error is None else None
        rows.append(row)
    return rows


def drop_gradients(opt: Any) -> None:
    """Set every parameter's gradient to None."""
    for group in getattr(opt, "param_groups", []):
        for p in group["params"]:
            p.grad = None


def steps_through_next_search(opt: Any) -> int:
    """Steps from now up to and including the next searched step of an amortised line search
    (``search_state["steps_until_search"] + 1``; ``LayerwiseALSALS``: through every part's next
    searched step, the largest of the parts'); 1 for any other optimizer."""
    state = getattr(opt, "search_state", None)
    if not isinstance(state, dict):
        return 1
    parts = state.get("parts")
    if isinstance(parts, dict) and parts:
        return max(int(part.get("steps_until_search", 0)) for part in parts.values()) + 1
    return int(state.get("steps_until_search", 0)) + 1


def _peak_step_bytes(c: _Contender, dev: torch.device) -> int | None:
    """CUDA: the peak allocated during the steps up to and including the next searched one, above
    what was allocated before them (gradients dropped first, so every contender starts alike)."""
    if dev.type != "cuda":
        return None
    drop_gradients(c.optimizer)
    _sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    for _ in range(steps_through_next_search(c.optimizer)):
        c.step()
    _sync(dev)
    return int(torch.cuda.max_memory_allocated(dev) - before)


# --------------------------------------------------------------------------------------------------
# output


def _fmt_bytes(n) -> str:
    if n is None:
        return "not measured on CPU"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _ratio(row: dict, ref: str) -> str:
    r = (row.get("ratios") or {}).get(ref)
    if not r:
        return "—"
    return f"{r['median']:.2f}× [{r['min']:.2f}, {r['max']:.2f}]"


def render_table(rows: list[dict]) -> str:
    head = ["case", "params", "optimizer", "vs Adam foreach", "vs Adam fused", "vs Adam default loop",
            "ms/step (median [min, max])", "fwd/step", "bwd/step", "state bytes/param"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.get("error") and "ms_per_step" not in r:
            lines.append(f"| {r['case']} | {r['params']:,} | {r['optimizer']} | error: {str(r['error'])[:100]} "
                         + "| " * (len(head) - 4) + "|")
            continue
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['optimizer']} | {_ratio(r, 'adam-foreach')} | "
            f"{_ratio(r, 'adam-fused')} | {_ratio(r, 'adam-default')} | "
            f"{r['ms_per_step']:.3g} [{r['ms_per_step_min']:.3g}, {r['ms_per_step_max']:.3g}] | "
            f"{r['fwd_per_step']:.2f} | {r['bwd_per_step']:.2f} | {r['state_bytes_per_param']:.2f} |"
        )
    return "\n".join(lines)


def run_overhead(out_dir: str | None, *, cases=None, optimizers=DEFAULT_OPTIMIZERS, device: str = "cpu",
                 warmup: int = 100, repeats: int = 9, block_steps: int = 40, command: str | None = None,
                 log=print) -> dict:
    torch.set_num_threads(1)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available in this build of torch")
    cases = list(CASES if cases is None else cases)
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "provenance": provenance(),
            "loadavg_start": load_average(), "threads": torch.get_num_threads(), "device": str(dev),
            "warmup": warmup, "repeats": repeats, "block_steps": block_steps, "command": command,
            "optimizers": list(optimizers), "cases": [{"name": c.name, "size": c.size} for c in cases]}
    if dev.type == "cuda":
        meta["cuda_device"] = torch.cuda.get_device_name(dev)
    rows: list[dict] = []
    for case in cases:
        log(f"overhead: {case.name} ({case.size})", file=sys.stderr, flush=True)
        rows += measure_case(case, optimizers, device=device, warmup=warmup, repeats=repeats,
                             block_steps=block_steps)
    meta["loadavg_end"] = load_average()
    table = render_table(rows)
    m = meta["provenance"]["machine"]
    header = [
        "# alsals-bench: time per step of ALSALS vs torch.optim.Adam", "",
        f"- **command**: `{command}`" if command else "",
        f"- **machine**: {m.get('platform')}; CPU {m.get('cpu_model')} ({m.get('cpu_count')} cores)"
        + (f"; GPU {meta['cuda_device']}" if meta.get("cuda_device") else ""),
        f"- **torch** {m.get('torch')}, {meta['threads']} thread(s), device {meta['device']}",
        f"- **git**: {meta['provenance']['git'].get('commit')}"
        + (" (dirty tree)" if meta["provenance"]["git"].get("dirty") else ""),
        f"- **timing**: {warmup} warm-up steps each, then {repeats} interleaved blocks of {block_steps} steps per "
        "optimizer (order rotated); ratios: median [min, max] over the repetitions of the paired ratio "
        "(time per step / the reference's in the same repetition)",
        f"- **load average** at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}",
        "", "",
    ]
    notes = [
        "",
        "- *adam-foreach* / *adam-fused*: `torch.optim.Adam(params, lr, foreach=True)` / `fused=True`; "
        "*adam-default*: `torch.optim.Adam(params, lr)`, which on the CPU runs torch's single-tensor loop.",
        "- *fwd/bwd per step*: counted by the harness around the closure over the timed steps, on the "
        "task's real batches.",
        "- *state bytes/param*: every tensor the optimizer holds (parameters and gradients excluded) per "
        "model parameter (Adam: 8 = two fp32 moments).",
    ]
    md = "\n".join(line for line in header if line is not None) + table + "\n" + "\n".join(notes) + "\n"
    log(table)
    result = {"meta": meta, "rows": rows}
    if out_dir:
        write_outputs(out_dir, "overhead", result, md)
    return result


def write_outputs(out_dir: str, stem: str, result: dict, markdown: str) -> None:
    """``{stem}.json`` (the result, strict JSON) and ``{stem}.md`` in ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(clean(result), f, indent=1, allow_nan=False, default=str)
    with open(os.path.join(out_dir, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(markdown)


def run_overhead_cli(args, parser) -> int:
    names = [x.strip() for v in (args.cases or []) for x in v.split(",") if x.strip()]
    try:
        cases = [get_case(n) for n in names] if names else None
        wanted = [x.strip() for v in (args.optimizers or []) for x in v.split(",") if x.strip()]
        optimizers = resolve_optimizers(wanted) if wanted else list(DEFAULT_OPTIMIZERS)
    except KeyError as exc:
        parser.error(exc.args[0])
    optimizers = [o for o in optimizers if o not in REFERENCES]
    command = " ".join(["alsals-bench", *args.argv])
    out = args.out or os.path.join("bench-out", "overhead")
    try:
        run_overhead(out, cases=cases, optimizers=optimizers, device=args.device, warmup=args.warmup or 100,
                     repeats=args.repeats or 9, block_steps=args.block_steps or 40, command=command,
                     log=lambda *a, **k: print(*a, **{"file": sys.stderr, **k}))
    except RuntimeError as exc:
        parser.error(str(exc))
    print(f"\nwrote {os.path.join(out, 'overhead.md')} and overhead.json", file=sys.stderr)
    return 0
