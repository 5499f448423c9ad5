"""Peak memory of a step for several optimizers on the GPT sweep's models, against Adam's.

Each (model, optimizer) pair is measured in a fresh process by :func:`alsals_bench.memory.measure`
(its module docstring has the method: the resident set's high-water mark over one step, or through
the next searched step of an amortized search, above the resident weights, optimizer state and
batches). Prints a markdown table of the peak extra bytes per parameter and their ratio to
``torch.optim.Adam(foreach=True)``'s, measured in the same run, and writes the rows as JSON.
Example (``docs/benchmarks.md``, "Tenth round")::

    python scripts/peak_memory.py --optimizers adam-foreach alsals alsals-layerwise-lib-plateau \
        --out docs/benchmarks/memory-layerwise.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Sequence

import torch
from alsals_bench.memory import measure

REFERENCE = "adam-foreach"


def table(rows: Sequence[dict], optimizers: Sequence[str]) -> str:
    """The markdown table: one line per case and optimizer."""
    lines = ["| case | params | optimizer | peak extra bytes/param | vs Adam foreach | peak − Adam's "
             "(fp32 parameter-sized buffers) | window steps |", "|---|---|---|---|---|---|---|"]
    reference = {r["case"]: r.get("peak_extra_bytes_per_param") for r in rows if r["optimizer"] == REFERENCE}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | | {r['optimizer']} | {r['error']} | | | |")
            continue
        per_param = r["peak_extra_bytes_per_param"]
        ref = reference.get(r["case"])
        ratio = f"{per_param / ref:.2f}×" if ref else "—"
        buffers = f"{(per_param - ref) / 4.0:+.2f}" if ref is not None else "—"
        lines.append(f"| {r['case']} | {r['params']:,} | {r['optimizer']} | {per_param:.1f} | {ratio} | {buffers} | "
                     f"{r['window_steps']} |")
    return "\n".join(lines)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=[REFERENCE, "alsals", "alsals-layerwise-lib-plateau"])
    parser.add_argument("--cases", nargs="+", default=["gpt-1M", "gpt-5M"],
                        help="overhead cases or sweep sizes; the sizes' tensors are large enough for the method "
                        "(the small overhead models' tensors are under its 128 KiB mmap threshold)")
    parser.add_argument("--out", help="write the rows and the provenance as JSON here")
    args = parser.parse_args(argv)
    optimizers = list(dict.fromkeys([REFERENCE, *args.optimizers]))
    provenance = {"git": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
                  "command": " ".join(["python", "scripts/peak_memory.py", *(argv if argv is not None else sys.argv[1:])])}
    rows = [measure(case, name) for case in args.cases for name in optimizers]
    print(table(rows, optimizers))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, **provenance, "torch": torch.__version__, "machine": platform.platform(),
                       "optimizers": optimizers, "cases": list(args.cases)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
