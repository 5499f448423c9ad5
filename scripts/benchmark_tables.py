"""Markdown tables for docs/benchmarks.md from a results.json of `alsals bench`.

    python scripts/benchmark_tables.py bench-out/combined/results.json > /tmp/tables.md

Every number is computed from the runs in the file with the report's own statistics
(`alsals.bench.report.summarize`): means over seeds, the tuned-Adam point picked by validation loss.
"""

from __future__ import annotations

import math
import sys

from alsals.bench import report

HEADLINE = [
    "alsals", "alsals-anytime", "alsals-paper", "salsa", "sls", "salsa-ref", "adamsls-ref", "prodigy",
    "dadapt-adam", "schedulefree-adamw", "dog", report.ADAM_BEST, report.ADAM_MEDIAN,
]
ABLATION = [
    ("alsals-paper", "paper settings (c 0.3, β_s 0.99, every step searched, no anneal)"),
    ("alsals-paper-b9c5", "paper + c 0.5, β_s 0.9"),
    ("alsals-no-amortisation", "… + WSD anneal (every step searched)"),
    ("alsals-salsa-interval", "… + amortised search, SaLSa's interval rule"),
    ("alsals-doubling", "… + amortised search, doubling rule (any cut resets the interval)"),
    ("alsals", "… + amortised search, halving rule (**final defaults**)"),
    ("alsals-paper-anneal", "paper settings + the WSD anneal only"),
    ("alsals-anytime", "final defaults without total_steps (no anneal)"),
    ("alsals-interval10", "final, longest interval 10 instead of 20"),
    ("alsals-interval40", "final, longest interval 40 instead of 20"),
    ("alsals-cosine", "final, cosine anneal instead of WSD"),
    ("alsals-linear", "final, linear anneal instead of WSD"),
    ("alsals-growth1.01", "final, growth 1.01 per step instead of 1/0.999"),
    ("alsals-finite-difference", "final, the paper's finite-difference slope"),
]


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def ratio_table(summary: dict, names: list, labels: dict | None = None) -> str:
    tasks = list(summary["tasks"])
    head = ["optimizer"] + tasks + ["geo-mean", "worst task", "fwd/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = summary["across"].get(name)
        if row is None:
            continue
        ratios = [row["ratios"].get(t, float("nan")) for t in tasks]
        fwd = [summary["tasks"][t]["stats"][name]["fwd_per_step"][0] for t in tasks if name in summary["tasks"][t]["stats"]]
        label = (labels or {}).get(name, name)
        lines.append("| " + " | ".join(
            [label] + [fmt(r) for r in ratios]
            + [fmt(row["ratio_geomean"]), fmt(max(r for r in ratios if not math.isnan(r))),
               fmt(sum(fwd) / len(fwd), 3)]) + " |")
    return "\n".join(lines)


def heldout_table(summary: dict, names: list) -> str:
    tasks = list(summary["tasks"])
    head = ["optimizer"] + [f"{t} ({summary['tasks'][t]['metric']})" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [name]
        for t in tasks:
            s = summary["tasks"][t]["stats"].get(name)
            cells.append(report._pm(s["test_metric"]) if s else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def oracle_table(summary: dict, names: list) -> str:
    """Ratio of final train loss to the best tuned-Adam grid point chosen by *train* loss (an oracle)."""
    tasks = list(summary["tasks"])
    head = ["optimizer"] + tasks + ["geo-mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    oracle = {}
    for t in tasks:
        grid = summary["tasks"][t]["adam"]["grid"]
        stats_by_opt = {}
        for g in grid:
            runs = [r for r in RUNS if r["task"] == t and r["optimizer"] == g["optimizer"]]
            stats_by_opt[g["optimizer"]] = report.mean_std(r.get("final_train_loss") for r in runs)[0]
        oracle[t] = min(stats_by_opt.values())
    for name in names:
        ratios = []
        for t in tasks:
            s = summary["tasks"][t]["stats"].get(name)
            ratios.append(s["train_loss"][0] / oracle[t] if s else float("nan"))
        lines.append("| " + " | ".join([name] + [fmt(r) for r in ratios]
                                       + [fmt(report.geometric_mean(r for r in ratios if not math.isnan(r)))]) + " |")
    return "\n".join(lines)


def seconds_table(summary: dict, names: list) -> str:
    """Wall seconds of a run relative to the best tuned Adam's run on the same task (noisy: --jobs 2)."""
    tasks = list(summary["tasks"])
    head = ["optimizer"] + tasks + ["geo-mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        ratios = []
        for t in tasks:
            stats = summary["tasks"][t]["stats"]
            s, a = stats.get(name), stats.get(report.ADAM_BEST)
            ratios.append(s["seconds"][0] / a["seconds"][0] if s and a else float("nan"))
        lines.append("| " + " | ".join([name] + [fmt(r) for r in ratios]
                                       + [fmt(report.geometric_mean(r for r in ratios if not math.isnan(r)))]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    meta, RUNS = report.load_results(sys.argv[1])
    summary = report.summarize(RUNS)
    print("## headline: final train loss / best tuned Adam (picked by val loss)\n")
    print(ratio_table(summary, HEADLINE))
    print("\n## ablation\n")
    print(ratio_table(summary, [n for n, _ in ABLATION], {n: f"`{n}`: {d}" for n, d in ABLATION}))
    print("\n## held-out metric\n")
    print(heldout_table(summary, ["alsals", "alsals-anytime", report.ADAM_BEST, "schedulefree-adamw", "salsa-ref"]))
    print("\n## oracle: final train loss / best grid point by train loss\n")
    print(oracle_table(summary, ["alsals", "alsals-anytime", "salsa-ref", "schedulefree-adamw", "prodigy"]))
    print("\n## wall seconds / best tuned Adam\n")
    print(seconds_table(summary, ["alsals", "alsals-anytime", "alsals-doubling", "alsals-no-amortisation",
                                 "alsals-salsa-interval", "alsals-paper"]))
