"""``alsals bench --suite overhead``: time per step and optimizer memory of ALSALS vs ``torch.optim.Adam``.

Method. For each model (an MLP, a CNN and a small GPT, built here, on synthetic inputs: no data
package needed) every optimizer gets its own copy of the same initial weights and the same fixed pool
of batches. After ``warmup`` steps each, the optimizers are timed interleaved (A B C, A B C, ... with
the order rotated at every repetition), ``block_steps`` steps per timed block, ``repeats`` blocks
each; the time per step is the median over the blocks, and the ratio to Adam is the median over
the repetitions of the paired ratio (the two blocks of a repetition ran next to each other in time,
under the same machine load).
With amortised search, a step with a search costs one forward more than a step without; a block must
therefore span the amortisation cycle (the command's default is 40 steps, twice ALSALS's longest
interval between searches), or the median over blocks picks the blocks without a search and
understates the cost (or those with one and overstates it).
Adam's step is the plain loop ``zero_grad; loss = closure(); loss.backward(); step()`` and ALSALS's is
``step(closure)``; neither reads the loss on the host, and CUDA is synchronised around every block.

Memory. *Optimizer state bytes* are counted exactly: every tensor held by the optimizer (its
``state``, the non-parameter entries of its param groups and its other attributes; parameters and
gradients excluded), also per parameter. *Peak extra memory of a step* is measured on CUDA only
(``torch.cuda.max_memory_allocated`` during one step, minus the memory allocated before it): torch's
CPU allocations are invisible to ``tracemalloc``, and RSS deltas of one process that interleaves
several optimizers cannot be attributed to one of them, so on CPU it is reported as not measured.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .optimizers import OPTIMIZERS, Adapter, resolve_optimizers

MODELS = ("mlp", "cnn", "gpt")
DEFAULT_OPTIMIZERS = ("alsals", "alsals-no-amortisation")  # amortised search on (default) and off

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "mlp": {"d_in": 32, "hidden": 32, "classes": 10, "batch": 16},
        "cnn": {"side": 12, "c1": 4, "c2": 8, "classes": 10, "batch": 8},
        "gpt": {"vocab": 64, "d": 32, "layers": 1, "heads": 2, "ctx": 16, "batch": 4},
    },
    "small": {
        "mlp": {"d_in": 784, "hidden": 512, "classes": 10, "batch": 128},
        "cnn": {"side": 28, "c1": 32, "c2": 64, "classes": 10, "batch": 64},
        "gpt": {"vocab": 256, "d": 128, "layers": 4, "heads": 4, "ctx": 64, "batch": 16},
    },
    "large": {
        "mlp": {"d_in": 3072, "hidden": 4096, "classes": 100, "batch": 512},
        "cnn": {"side": 32, "c1": 64, "c2": 128, "classes": 100, "batch": 256},
        "gpt": {"vocab": 256, "d": 512, "layers": 8, "heads": 8, "ctx": 256, "batch": 32},
    },
}


# --------------------------------------------------------------------------------------------------
# models on synthetic data


class TinyGPT(nn.Module):
    """A pre-norm causal transformer language model (byte vocabulary), dropout 0.1."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int, dropout: float = 0.1):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.ln(x))


def build_model(kind: str, size: str, seed: int = 0) -> tuple[nn.Module, list, Callable]:
    """``(model, batches, loss_fn)`` with ``loss_fn(model, batch) -> loss`` and a pool of 4 batches."""
    cfg = SIZES[size][kind]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(cfg["d_in"], cfg["hidden"]), nn.ReLU(),
                              nn.Linear(cfg["hidden"], cfg["hidden"]), nn.ReLU(),
                              nn.Linear(cfg["hidden"], cfg["classes"]))
        batches = [(torch.randn(cfg["batch"], cfg["d_in"], generator=g),
                    torch.randint(cfg["classes"], (cfg["batch"],), generator=g)) for _ in range(4)]

        def loss_fn(m, b):
            return nn.functional.cross_entropy(m(b[0]), b[1])
    elif kind == "cnn":
        side = cfg["side"]
        flat = cfg["c2"] * (side // 4) * (side // 4)
        model = nn.Sequential(nn.Conv2d(1, cfg["c1"], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(cfg["c1"], cfg["c2"], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, cfg["classes"]))
        batches = [(torch.randn(cfg["batch"], 1, side, side, generator=g),
                    torch.randint(cfg["classes"], (cfg["batch"],), generator=g)) for _ in range(4)]

        def loss_fn(m, b):
            return nn.functional.cross_entropy(m(b[0]), b[1])
    elif kind == "gpt":
        model = TinyGPT(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["ctx"])
        batches = []
        for _ in range(4):
            tokens = torch.randint(cfg["vocab"], (cfg["batch"], cfg["ctx"] + 1), generator=g)
            batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))

        def loss_fn(m, b):
            logits = m(b[0])
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[1].reshape(-1))
    else:
        raise KeyError(f"unknown overhead model {kind!r}; known: {', '.join(MODELS)}")
    return model, batches, loss_fn


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
    model: nn.Module
    optimizer: Any
    step: Callable[[], None]
    counts: dict
    error: str | None = None
    times: list | None = None


def _make_contender(name: str, base: nn.Module, batches, loss_fn, device, total_steps: int) -> _Contender:
    model = copy.deepcopy(base).to(device)
    model.train()
    counts = {"fwd": 0, "bwd": 0}
    state = {"i": 0}

    def _count_backward(grad):
        counts["bwd"] += 1

    def closure():
        counts["fwd"] += 1
        loss = loss_fn(model, batches[state["i"] % len(batches)])
        if loss.requires_grad:
            loss.register_hook(_count_backward)
        return loss

    if name in REFERENCES:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=REFERENCES[name])

        def step():
            opt.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            opt.step()
            state["i"] += 1
    else:
        adapter = Adapter(OPTIMIZERS[name], model, total_steps, 100)
        opt = adapter.optimizer
        if adapter.spec.protocol == "alsals":
            def step():
                opt.step(closure)
                state["i"] += 1
        elif adapter.spec.protocol == "standard":
            sched = adapter.scheduler

            def step():
                opt.zero_grad(set_to_none=True)
                loss = closure()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                state["i"] += 1
        else:
            def step():
                adapter.step(closure)
                state["i"] += 1
    return _Contender(name, model, opt, step, counts, times=[])


#: the references timed in every run: torch.optim.Adam as constructed by default (on the CPU its
#: single-tensor loop: torch picks the multi-tensor path only on CUDA-like devices), and with
#: ``foreach=True`` (the multi-tensor kernels ALSALS uses). Ratios are against the first.
REFERENCES = {"adam": None, "adam-foreach": True}


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median over repetitions of ``times[r] / reference[r]``.

    Block ``r`` of every optimizer runs in the same repetition, next to each other in time, so the
    ratio of a pair is taken under the same machine load; the median of the pairs is robust to
    load that changes between repetitions (other tenants of a shared machine), where the ratio of
    the two medians is not.
    """
    pairs = [t / r for t, r in zip(times, reference) if r > 0]
    return statistics.median(pairs) if pairs else float("nan")


def measure_model(kind: str, optimizers, *, size: str = "small", device: str = "cpu", warmup: int = 5,
                  repeats: int = 7, block_steps: int = 5, seed: int = 0) -> list[dict]:
    dev = torch.device(device)
    base, batches, loss_fn = build_model(kind, size, seed)
    batches = [tuple(t.to(dev) for t in b) for b in batches]
    n_params = sum(p.numel() for p in base.parameters())
    total_steps = warmup + repeats * block_steps + 1
    names = [*REFERENCES, *(o for o in optimizers if o not in REFERENCES)]
    contenders: list[_Contender] = []
    rows: list[dict] = []
    for name in names:
        try:
            contenders.append(_make_contender(name, base, batches, loss_fn, dev, total_steps))
        except Exception as exc:  # e.g. alsals' core missing: report, keep going
            rows.append({"model": kind, "optimizer": name, "params": n_params,
                         "error": f"{type(exc).__name__}: {exc}"})
    torch.manual_seed(seed + 2)
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
    adam = next((c for c in contenders if c.name == "adam"), None)
    adam_foreach = next((c for c in contenders if c.name == "adam-foreach"), None)
    adam_ms = statistics.median(adam.times) * 1e3 if adam is not None and adam.times else float("nan")
    for c in contenders:
        row = {"model": kind, "optimizer": c.name, "params": n_params, "device": str(dev), "size": size,
               "error": c.error}
        if c.times:
            ms = statistics.median(c.times) * 1e3
            row.update({
                "ms_per_step": ms,
                "ms_per_step_min": min(c.times) * 1e3,
                "ms_per_step_max": max(c.times) * 1e3,
                "ratio_to_adam": paired_ratio(c.times, adam.times) if adam is not None else float("nan"),
                "ratio_to_adam_foreach": (
                    paired_ratio(c.times, adam_foreach.times) if adam_foreach is not None else float("nan")
                ),
                "fwd_per_step": c.counts["fwd"] / timed_steps,
                "bwd_per_step": c.counts["bwd"] / timed_steps,
            })
        state_bytes = optimizer_state_bytes(c.optimizer)
        row["state_bytes"] = state_bytes
        row["state_bytes_per_param"] = state_bytes / max(n_params, 1)
        counters = getattr(c.optimizer, "counters", None)
        if isinstance(counters, dict):
            row["optimizer_counters"] = dict(counters)
        row["peak_step_extra_bytes"] = _peak_step_bytes(c, dev) if c.error is None else None
        rows.append(row)
    return rows


def _peak_step_bytes(c: _Contender, dev: torch.device) -> int | None:
    if dev.type != "cuda":
        return None
    _sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
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


def render_table(rows: list[dict]) -> str:
    head = ["model", "params", "optimizer", "ms/step (median)", "vs Adam", "vs Adam (foreach)", "fwd/step", "bwd/step",
            "state bytes", "bytes/param", "peak extra per step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.get("error") and "ms_per_step" not in r:
            lines.append(f"| {r['model']} | {r['params']:,} | {r['optimizer']} | error: "
                         f"{str(r['error'])[:120]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['optimizer']} | {r['ms_per_step']:.3g} "
            f"[{r['ms_per_step_min']:.3g}, {r['ms_per_step_max']:.3g}] | {r['ratio_to_adam']:.2f}× | "
            f"{r.get('ratio_to_adam_foreach', float('nan')):.2f}× | "
            f"{r['fwd_per_step']:.2f} | {r['bwd_per_step']:.2f} | {_fmt_bytes(r['state_bytes'])} | "
            f"{r['state_bytes_per_param']:.2f} | {_fmt_bytes(r['peak_step_extra_bytes'])} |"
        )
    return "\n".join(lines)


def run_overhead(out_dir: str | None, *, models=MODELS, optimizers=DEFAULT_OPTIMIZERS, size: str = "small",
                 device: str = "cpu", warmup: int = 5, repeats: int = 7, block_steps: int = 5,
                 log=print) -> dict:
    from .runner import load_average, machine_info

    torch.set_num_threads(1)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available in this build of torch")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "loadavg_start": load_average(), "threads": torch.get_num_threads(), "device": str(dev),
            "size": size, "warmup": warmup, "repeats": repeats, "block_steps": block_steps,
            "optimizers": list(optimizers), "models": list(models)}
    if dev.type == "cuda":
        meta["cuda_device"] = torch.cuda.get_device_name(dev)
    rows: list[dict] = []
    for kind in models:
        rows += measure_model(kind, optimizers, size=size, device=device, warmup=warmup, repeats=repeats,
                              block_steps=block_steps)
    meta["loadavg_end"] = load_average()
    table = render_table(rows)
    m = meta["machine"]
    header = [
        "# alsals bench: overhead of ALSALS vs torch.optim.Adam", "",
        f"- **machine**: {m.get('platform')}; CPU {m.get('cpu_model')} ({m.get('cpu_count')} cores)"
        + (f"; GPU {meta['cuda_device']}" if meta.get("cuda_device") else ""),
        f"- **torch** {m.get('torch')}, {meta['threads']} thread(s), device {meta['device']}, size {size}",
        f"- **timing**: {warmup} warm-up steps each, then {repeats} interleaved blocks of {block_steps} steps "
        "per optimizer (order rotated), median time per step; ratio: median over repetitions of "
        "(time per step / Adam's in the same repetition); *adam* is torch.optim.Adam as constructed by "
        "default (on the CPU its single-tensor loop), *adam-foreach* the same with foreach=True",
        f"- **load average** at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}",
        "",
        "",
    ]
    notes = [
        "",
        "- *state bytes*: every tensor the optimizer holds (parameters and gradients excluded); "
        "*bytes/param*: the same per model parameter (Adam: 8 = two fp32 moments).",
        "- *peak extra per step*: CUDA only (max_memory_allocated during one step minus the memory "
        "allocated before it, activations included). Not measured on CPU: torch's CPU allocations are "
        "invisible to tracemalloc, and RSS deltas in a process that interleaves optimizers cannot be "
        "attributed to one of them.",
        "- fwd/bwd per step: counted by the harness around the closure (ALSALS: the first forward with "
        "its backward, plus one forward per trial).",
    ]
    md = "\n".join(header) + table + "\n" + "\n".join(notes) + "\n"
    log(table)
    result = {"meta": meta, "rows": rows}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        from .report import _clean

        with open(os.path.join(out_dir, "overhead.json"), "w") as f:
            json.dump(_clean(result), f, indent=1, allow_nan=False, default=str)
        with open(os.path.join(out_dir, "overhead.md"), "w") as f:
            f.write(md)
    return result


def run_overhead_cli(args, parser) -> int:
    from .cli import _split

    models = _split(args.models) or list(MODELS)
    bad = [m for m in models if m not in MODELS]
    if bad:
        parser.error(f"unknown overhead model {bad[0]!r}; known: {', '.join(MODELS)}")
    try:
        optimizers = resolve_optimizers(_split(args.optimizers) if args.optimizers else DEFAULT_OPTIMIZERS)
    except KeyError as exc:
        parser.error(exc.args[0])
    optimizers = [o for o in optimizers if o not in REFERENCES]
    out_dir = args.out or os.path.join("bench-out", "overhead")
    try:
        run_overhead(out_dir, models=models, optimizers=optimizers, size=args.size, device=args.device,
                     warmup=args.warmup, repeats=args.repeats, block_steps=args.block_steps)
    except RuntimeError as exc:
        parser.error(str(exc))
    print(f"\nwrote {os.path.join(out_dir, 'overhead.md')} and overhead.json", file=sys.stderr)
    return 0
