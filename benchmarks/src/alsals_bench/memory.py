"""Peak memory of an optimizer step on the CPU, each contender measured in a process of its own.

``python -m alsals_bench.memory --case gpt-1M --optimizer alsals`` prints one JSON line; the size
sweep runs it through :func:`measure` for every size and contender.

**Method** (Linux). The probe process is started with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then
serves every allocation of 128 KiB or more -- every parameter-sized tensor, gradient, moment or
temporary, and the activations -- with its own ``mmap`` and returns it with ``munmap`` when torch frees
it, so the resident set size follows the live tensors instead of a heap that only grows. The probe
builds the case (the model from seed 0, the batch stream), runs ``warmup`` steps (the optimizer's
state exists), drops the gradients (every contender starts from the same point: weights, optimizer
state and batches resident, no gradient), collects garbage, resets the kernel's high-water mark by
writing ``5`` to ``/proc/self/clear_refs``, reads ``VmRSS`` from ``/proc/self/status``, runs the
*window* and reads ``VmHWM``:

    peak extra bytes = VmHWM (after the window) - VmRSS (before it)

The window is one step, or for an amortised line search the steps up to and including its next
searched step (:func:`alsals_bench.overhead.steps_through_next_search`), so that the peak covers the step that costs the
most. What it counts: the gradients, the activations kept for backward, and every temporary of the
forward, the backward and the optimizer; not the weights or the optimizer state (resident before).
Allocations under 128 KiB stay on the heap and are counted only where they grow it (a few biases
and LayerNorm gains; noise at page granularity, 4 KiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

import torch

#: glibc's mmap threshold in the probe process (bytes)
MMAP_THRESHOLD = 131072
#: steps run before the window (the optimizer's state exists after the first)
DEFAULT_WARMUP = 3


def available() -> bool:
    """Whether this machine can run the probe (Linux's ``/proc/self/clear_refs``)."""
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def rss_and_peak() -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of this process in bytes."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> None:
    """Reset the kernel's resident high-water mark (``VmHWM``) to the current resident size."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def probe(case_name: str, optimizer: str, *, warmup: int = DEFAULT_WARMUP) -> dict:
    """Measure in this process (see the module docstring; run it in a fresh one, with
    ``MALLOC_MMAP_THRESHOLD_`` set, for a meaningful number: :func:`measure`)."""
    from .overhead import _make_contender, drop_gradients, get_case, steps_through_next_search

    torch.set_num_threads(1)
    case = get_case(case_name)
    n_steps = warmup + 64  # more batches than the longest window (ALSALS: 20 steps)
    inst = case.build(n_steps, torch.device("cpu"))
    n_params = sum(p.numel() for p in inst.model.parameters())
    contender = _make_contender(optimizer, inst, torch.device("cpu"), total_steps=n_steps)
    del inst.model  # the contender trains its own copy
    torch.manual_seed(2)
    for _ in range(warmup):
        contender.step()
    window = steps_through_next_search(contender.optimizer)
    drop_gradients(contender.optimizer)
    gc.collect()
    reset_peak()
    before, _ = rss_and_peak()
    for _ in range(window):
        contender.step()
    _, peak = rss_and_peak()
    state = getattr(contender.optimizer, "search_state", None)
    extra = max(peak - before, 0)
    return {
        "case": case_name, "optimizer": optimizer, "params": n_params, "warmup": warmup, "window_steps": window,
        "peak_extra_bytes": extra, "peak_extra_bytes_per_param": extra / max(n_params, 1),
        "last_status": state.get("last_status") if isinstance(state, dict) else None,
        "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def _child_env() -> dict:
    """This process's environment with the probe's settings, importing the same packages."""
    import alsals

    import alsals_bench

    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    env["OMP_NUM_THREADS"] = "1"
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (alsals_bench, alsals)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                               if p]))
    return env


def measure(case_name: str, optimizer: str, *, warmup: int = DEFAULT_WARMUP, timeout: float = 900) -> dict:
    """:func:`probe` in a fresh Python process with ``MALLOC_MMAP_THRESHOLD_=131072``; its JSON row,
    or ``{"error": ...}`` when the probe failed or this machine has no ``/proc/self/clear_refs``."""
    if not available():
        return {"case": case_name, "optimizer": optimizer, "error": "needs Linux /proc/self/clear_refs"}
    cmd = [sys.executable, "-m", "alsals_bench.memory", "--case", case_name, "--optimizer", optimizer,
           "--warmup", str(warmup)]
    try:
        done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case_name, "optimizer": optimizer, "error": f"memory probe timed out after {timeout:g} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"case": case_name, "optimizer": optimizer,
                "error": f"memory probe exited {done.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alsals_bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", required=True, help="an overhead case or a sweep size (gpt-1M)")
    parser.add_argument("--optimizer", required=True, help="adam-foreach, adam-fused, alsals, ...")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.case, args.optimizer, warmup=args.warmup)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
