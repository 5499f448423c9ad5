"""``alsals-bench overhead --sweep``: the cost of ALSALS as the model grows.

For every size of :mod:`alsals_bench.gpt_sizes` in the sweep (0.2M, 1M, 5M, 20M parameters by default;
50M on request) the overhead suite's :func:`~alsals_bench.overhead.measure_case` times, like for like
on the same stream of real Shakespeare batches, ALSALS with amortised search (``alsals``, its
default), ALSALS searching every step (``alsals-no-amortisation``), ``torch.optim.Adam(foreach=True)``
and ``Adam(fused=True)``; and :mod:`alsals_bench.memory` measures the peak memory of a step of each
in a process of its own (on CUDA: ``torch.cuda.max_memory_allocated`` in the timing process).

**Steps per size** (:data:`SWEEP`). The timing protocol is the overhead suite's (warm-up, then
interleaved blocks in rotating order, paired ratios). A timed block must span ALSALS's amortisation
cycle: ALSALS searches at each of its first steps, then at intervals that double after a search that
did not cut the step size and halve for every cut, up to 20 steps (on ``gpt-0.2M`` the interval is 20
from step 10 on). After a warm-up of 40 steps, then, a block of 20 steps holds one search in the
steady state, and a block of 40 two. Up to 1M parameters
the blocks are 40 steps, from 5M on 20 (the shortest that spans the cycle), with fewer repetitions
as the model grows; the batch (windows of 128 bytes) halves from 5M on, which makes the optimizer's
share of a step larger, so the ratios there are if anything pessimistic. Measured on the 2-core
development machine (one thread, another job on the other core): an Adam step takes about 0.05 s,
0.16 s, 0.27 s and 0.55 s at the four default sizes; with four contenders (the ALSALS variants 1.05
and 1.3 Adam steps) that is about 1.3, 3, 3 and 4 minutes of timing, plus about 2.5 minutes of
memory probes (a fresh process each: 8-30 s at 20M, where ALSALS's first steps search): 13-14
minutes in all (50M adds about 8).

======== ===== ====== ======= ============= ==========
size     batch warmup repeats steps/block   timed steps
======== ===== ====== ======= ============= ==========
gpt-0.2M 8     40     7       40            280
gpt-1M   8     40     5       40            200
gpt-5M   4     40     5       20            100
gpt-20M  2     40     3       20            60
gpt-50M  1     40     3       20            60
======== ===== ====== ======= ============= ==========

**Outputs** in the output folder: ``sweep.json`` (every row), ``sweep.md`` (the table, with the goals
of issue 13 next to the numbers) and ``sweep.png`` (log-log: the time ratios to Adam foreach and fused
against the parameter count; the peak extra memory per parameter).
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

from . import memory
from .gpt_sizes import DEFAULT_SIZES, SWEEP, SweepSize  # noqa: F401 (SweepSize: re-exported)
from .optimizers import resolve_optimizers
from .overhead import REFERENCES, gpt_case, measure_case, write_outputs
from .provenance import load_average, provenance

#: the ALSALS variants of the sweep (the Adam references are :data:`SWEEP_REFERENCES`)
CONTENDERS = ("alsals", "alsals-no-amortisation")
SWEEP_REFERENCES = ("adam-foreach", "adam-fused")
#: bytes of one fp32 parameter-sized buffer, per parameter
BUFFER_BYTES = 4

#: the goals of issue 13, compared against in the notes of the table (not asserted anywhere)
GOAL_AMORTISED = 1.05
GOAL_AMORTISED_LARGE = 1.03
GOAL_LARGE_FROM = 5_000_000 * 0.9  # "from 5M on" (gpt-5M has 4.84M)
GOAL_EVERY_STEP = 1.45
GOAL_MEMORY_BUFFERS = 1.0




def resolve_sizes(names) -> list[str]:
    out = []
    for n in names:
        if n not in SWEEP:
            raise KeyError(f"unknown sweep size {n!r}; known: {', '.join(SWEEP)}")
        out.append(n)
    return out


# --------------------------------------------------------------------------------------------------
# measuring


def add_memory(rows: list[dict], case_name: str, device: str, log=print) -> None:
    """Fill each row's peak memory: CUDA rows already hold it (measured by ``measure_case``); on
    the CPU one :func:`alsals_bench.memory.measure` process per contender. Then per parameter and
    the difference to Adam foreach's, in bytes and in fp32 parameter-sized buffers."""
    for r in rows:
        if r.get("error") and "ms_per_step" not in r:
            continue
        if device.startswith("cuda"):
            r["peak_method"] = "torch.cuda.max_memory_allocated, window through the next search"
        else:
            log(f"  memory: {case_name} {r['optimizer']}", file=sys.stderr, flush=True)
            m = memory.measure(case_name, r["optimizer"])
            if "error" in m:
                r["peak_error"] = m["error"]
                continue
            r["peak_step_extra_bytes"] = m["peak_extra_bytes"]
            r["peak_window_steps"] = m["window_steps"]
            r["peak_method"] = (f"VmHWM - VmRSS in a process of its own, MALLOC_MMAP_THRESHOLD_="
                                f"{memory.MMAP_THRESHOLD}, window of {m['window_steps']} step(s)")
        if r.get("peak_step_extra_bytes") is not None:
            r["peak_extra_bytes_per_param"] = r["peak_step_extra_bytes"] / max(r["params"], 1)
    ref = next((r for r in rows if r["optimizer"] == "adam-foreach" and "peak_extra_bytes_per_param" in r), None)
    for r in rows:
        if ref is not None and "peak_extra_bytes_per_param" in r:
            d = r["peak_extra_bytes_per_param"] - ref["peak_extra_bytes_per_param"]
            r["peak_vs_adam_foreach_bytes_per_param"] = d
            r["peak_vs_adam_foreach_buffers"] = d / BUFFER_BYTES


def run_sweep(out_dir: str | None, *, sizes=DEFAULT_SIZES, optimizers=CONTENDERS, device: str = "cpu",
              warmup: int | None = None, repeats: int | None = None, block_steps: int | None = None,
              with_memory: bool = True, command: str | None = None, log=print) -> dict:
    """Time and measure every size (settings from :data:`SWEEP` unless overridden); write
    ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``out_dir`` (when given)."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available in this build of torch")
    sizes = resolve_sizes(sizes)
    settings = {}
    for label in sizes:
        s = SWEEP[label]
        settings[label] = {"batch_size": s.batch_size, "warmup": warmup or s.warmup, "repeats": repeats or s.repeats,
                           "block_steps": block_steps or s.block_steps}
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "provenance": provenance(),
            "loadavg_start": load_average(), "threads": torch.get_num_threads(), "device": str(dev),
            "command": command, "optimizers": list(optimizers), "references": list(SWEEP_REFERENCES),
            "sizes": settings}
    if dev.type == "cuda":
        meta["cuda_device"] = torch.cuda.get_device_name(dev)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for label in sizes:
        st = settings[label]
        log(f"sweep: {label} (batch {st['batch_size']}, {st['warmup']} warm-up, {st['repeats']} x "
            f"{st['block_steps']} steps)", file=sys.stderr, flush=True)
        case = gpt_case(label, st["batch_size"])
        size_rows = measure_case(case, optimizers, device=device, warmup=st["warmup"], repeats=st["repeats"],
                                 block_steps=st["block_steps"], references=SWEEP_REFERENCES)
        for r in size_rows:
            r.update(batch_size=st["batch_size"], warmup=st["warmup"], repeats=st["repeats"],
                     block_steps=st["block_steps"])
        if with_memory:
            add_memory(size_rows, label, device, log=log)
        rows += size_rows
    meta["wall_seconds"] = time.perf_counter() - t0
    meta["loadavg_end"] = load_average()
    result = {"meta": meta, "rows": rows}
    if out_dir:
        write_outputs(out_dir, "sweep", result, render_markdown(result))
        plot_sweep(rows, os.path.join(out_dir, "sweep.png"))
    log(render_table(rows))
    return result


# --------------------------------------------------------------------------------------------------
# the table


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else math.nan


def _ratio(row: dict, ref: str) -> float:
    return _num(((row.get("ratios") or {}).get(ref) or {}).get("median", math.nan))


def _ratio_cell(row: dict, ref: str) -> str:
    r = (row.get("ratios") or {}).get(ref)
    if not r:
        return "—"
    return f"{r['median']:.3f}× [{r['min']:.2f}, {r['max']:.2f}]"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _bytes_cell(x) -> str:
    x = _num(x)
    return "—" if math.isnan(x) else f"{x:.1f}"


def _buffers_cell(row: dict) -> str:
    x = _num(row.get("peak_vs_adam_foreach_buffers"))
    if math.isnan(x):
        return "—" if "peak_error" not in row else f"error: {row['peak_error'][:60]}"
    return f"{x:+.2f}"


def render_table(rows: list[dict]) -> str:
    head = ["size", "params", "optimizer", "vs Adam foreach", "vs Adam fused", "ms/step", "fwd/step", "bwd/step",
            "state B/param", "peak extra B/param", "peak − Adam foreach's (fp32 buffers)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.get("error") and "ms_per_step" not in r:
            lines.append(f"| {r['size']} | {_params(r['params'])} | {r['optimizer']} | error: "
                         f"{str(r['error'])[:100]} " + "| " * (len(head) - 4) + "|")
            continue
        lines.append(
            f"| {r['size']} | {_params(r['params'])} | {r['optimizer']} | {_ratio_cell(r, 'adam-foreach')} | "
            f"{_ratio_cell(r, 'adam-fused')} | {r['ms_per_step']:.3g} | {r['fwd_per_step']:.2f} | "
            f"{r['bwd_per_step']:.2f} | {r['state_bytes_per_param']:.2f} | "
            f"{_bytes_cell(r.get('peak_extra_bytes_per_param'))} | {_buffers_cell(r)} |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """One line per size: the numbers next to the goals of issue 13 (met / not met)."""

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**not met**")

    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["optimizer"]: r for r in rows if r["size"] == size}
        parts = []
        am, ev = by.get("alsals"), by.get("alsals-no-amortisation")
        if am and "ratios" in am:
            goal = GOAL_AMORTISED_LARGE if am["params"] >= GOAL_LARGE_FROM else GOAL_AMORTISED
            worst = max(_ratio(am, "adam-foreach"), _ratio(am, "adam-fused"))
            parts.append(f"amortised {worst:.3f}× the slower comparison (goal ≤ {goal:g}×: "
                         f"{verdict(worst <= goal if math.isfinite(worst) else None)})")
        if ev and "ratios" in ev:
            worst = max(_ratio(ev, "adam-foreach"), _ratio(ev, "adam-fused"))
            parts.append(f"every step {worst:.3f}× (goal ≤ {GOAL_EVERY_STEP:g}×: "
                         f"{verdict(worst <= GOAL_EVERY_STEP if math.isfinite(worst) else None)})")
        mems = [_num(r.get("peak_vs_adam_foreach_buffers")) for r in (am, ev) if r]
        mems = [m for m in mems if math.isfinite(m)]
        if mems:
            worst = max(mems)
            parts.append(f"peak memory Adam's {worst:+.2f} buffers (goal ≤ +{GOAL_MEMORY_BUFFERS:g}: "
                         f"{verdict(worst <= GOAL_MEMORY_BUFFERS)})")
        if parts:
            out.append(f"- **{size}**: " + "; ".join(parts))
    return out


def render_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    m = meta["provenance"]["machine"]
    sizes = meta["sizes"]
    header = [
        "# alsals-bench: the cost of ALSALS as the model grows", "",
        f"- **command**: `{meta['command']}`" if meta.get("command") else "",
        f"- **machine**: {m.get('platform')}; CPU {m.get('cpu_model')} ({m.get('cpu_count')} cores)"
        + (f"; GPU {meta['cuda_device']}" if meta.get("cuda_device") else ""),
        f"- **torch** {m.get('torch')}, {meta['threads']} thread(s), device {meta['device']}",
        f"- **git**: {meta['provenance']['git'].get('commit')}"
        + (" (dirty tree)" if meta["provenance"]["git"].get("dirty") else ""),
        "- **timing** per size: " + "; ".join(
            f"{k}: batch {v['batch_size']}×128 bytes, {v['warmup']} warm-up, {v['repeats']} blocks of "
            f"{v['block_steps']} steps" for k, v in sizes.items()),
        f"- **load average** at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}; "
        f"{meta.get('wall_seconds', float('nan')):.0f} s wall",
        "", "",
    ]
    notes = [
        "", "",
        "Goals (issue 13): ALSALS amortised ≤ 1.05× Adam at every size and ≤ 1.03× from 5M parameters on; "
        "searching every step ≤ 1.45×; peak memory of a step ≤ Adam's + one parameter-sized buffer. "
        "Against the slower of the two like-for-like comparisons (Adam foreach, Adam fused):", "",
        *goal_lines(rows), "",
        "- *vs Adam …*: median [min, max] over the repetitions of the paired ratio of times per step.",
        "- *peak extra B/param*: the peak resident (CPU) or allocated (CUDA) memory of a window of steps "
        "(one step; for amortised ALSALS through its next searched step) above what was held before it "
        "(weights, optimizer state, batches; gradients dropped), per parameter; gradients, activations and "
        "temporaries included. *peak − Adam foreach's*: the difference in fp32 parameter-sized buffers "
        "(4 bytes per parameter). Method: see `alsals_bench.memory`.",
        "- *state B/param*: every tensor the optimizer holds, parameters and gradients excluded "
        "(Adam: 8 = two fp32 moments).",
    ]
    return "\n".join(line for line in header if line is not None) + render_table(rows) + "\n".join(notes) + "\n"


# --------------------------------------------------------------------------------------------------
# the plot


def _log_log_panel(ax, ylabel: str, title: str) -> bool:
    """Log-log axes against the parameter count, labelled and gridded; a legend when something was
    plotted (the return value)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    plotted = bool(ax.get_legend_handles_labels()[0])
    if plotted:
        ax.legend(fontsize=7)
    return plotted


def plot_sweep(rows: list[dict], path: str) -> str:
    """Two log-log panels against the parameter count: the time ratios of both ALSALS variants to
    Adam foreach and to Adam fused (the goals dotted), and the peak extra bytes per parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"alsals": {"color": "tab:blue", "label": "amortised (alsals)"},
              "alsals-no-amortisation": {"color": "tab:red", "label": "every step (alsals-no-amortisation)"}}
    for name, st in styles.items():
        for ref, ls in (("adam-foreach", "-"), ("adam-fused", "--")):
            pts = sorted((r["params"], _ratio(r, ref)) for r in rows if r["optimizer"] == name)
            pts = [(n, v) for n, v in pts if math.isfinite(v) and v > 0]
            if pts:
                ax_t.plot(*zip(*pts), ls, marker="o", color=st["color"], label=f"{st['label']} / Adam {ref[5:]}")
    for y, text in ((GOAL_AMORTISED, "1.05"), (GOAL_AMORTISED_LARGE, "1.03 (≥5M)"), (GOAL_EVERY_STEP, "1.45")):
        ax_t.axhline(y, color="gray", linestyle=":", linewidth=1)
        ax_t.annotate(f"goal {text}", (0.01, y), xycoords=("axes fraction", "data"), fontsize=7, color="gray")
    ax_t.axhline(1.0, color="black", linewidth=0.8)
    _log_log_panel(ax_t, "time per step ÷ Adam's (paired median)", "time per step relative to Adam")
    for name, color in (("adam-foreach", "black"), ("adam-fused", "dimgray"), ("alsals", "tab:blue"),
                        ("alsals-no-amortisation", "tab:red")):
        pts = sorted((r["params"], _num(r.get("peak_extra_bytes_per_param"))) for r in rows if r["optimizer"] == name)
        pts = [(n, v) for n, v in pts if math.isfinite(v) and v > 0]
        if pts:
            ax_m.plot(*zip(*pts), marker="o", color=color, label=name,
                      linestyle="--" if name.startswith("adam") else "-")
    ref = sorted((r["params"], _num(r.get("peak_extra_bytes_per_param"))) for r in rows
                 if r["optimizer"] == "adam-foreach")
    ref = [(n, v + BUFFER_BYTES) for n, v in ref if math.isfinite(v) and v > 0]
    if ref:
        ax_m.plot(*zip(*ref), ":", color="gray", label="goal: Adam foreach + one fp32 buffer")
    if not _log_log_panel(ax_m, "peak extra bytes per parameter",
                          "peak memory of a step (gradients, activations, temporaries)"):
        ax_m.text(0.5, 0.5, "peak memory not measured", ha="center", va="center", transform=ax_m.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the command


def wants_sweep(args) -> bool:
    """``overhead --sweep`` or ``overhead --cases gpt-sizes``."""
    names = [x.strip() for v in (args.cases or []) for x in v.split(",") if x.strip()]
    return bool(getattr(args, "sweep", False)) or "gpt-sizes" in names


def run_sweep_cli(args, parser) -> int:
    try:
        sizes = resolve_sizes([x.strip() for v in (args.sizes or []) for x in v.split(",") if x.strip()]
                              or DEFAULT_SIZES)
        wanted = [x.strip() for v in (args.optimizers or []) for x in v.split(",") if x.strip()]
        optimizers = [o for o in (resolve_optimizers(wanted) if wanted else CONTENDERS) if o not in REFERENCES]
    except KeyError as exc:
        parser.error(exc.args[0])
    out = args.out or os.path.join("bench-out", "sweep")
    try:
        run_sweep(out, sizes=sizes, optimizers=optimizers, device=args.device, warmup=args.warmup,
                  repeats=args.repeats, block_steps=args.block_steps, with_memory=not args.no_memory,
                  command=" ".join(["alsals-bench", *args.argv]),
                  log=lambda *a, **k: print(*a, **{"file": sys.stderr, **k}))
    except RuntimeError as exc:
        parser.error(str(exc))
    print(f"\nwrote {os.path.join(out, 'sweep.md')}, sweep.json and sweep.png", file=sys.stderr)
    return 0
