"""Issue 12's targets, measured on one split from the results (``docs/benchmarks.md``).

A *pair* is an optimizer told the run's length and the same optimizer not told it (``ALSALS``'s
defaults: ``alsals`` / ``alsals-anytime``; the per-layer default: the two library rows). For a pair
on a split, :func:`measure` gives what each target asks, computed from the summary of
:func:`alsals_bench.compare.summarize` and nothing else:

- **geo-mean**: the told row's geometric mean over the split's tasks of its train-loss ratio to
  AdamW tuned on train loss, and its seed interval (target: at most :data:`GEOMEAN_TARGET`);
- **worst task**: the largest per-task ratio (target: none above :data:`TASK_TARGET`);
- **divergence**: the told and not-told runs that diverged or failed (target: none);
- **rivals**: per task, the learning-rate-free rivals (:data:`alsals_bench.driver.RIVALS`) whose
  ratio is below the told row's, both taken over the seeds they share (the rivals run seeds 0-2),
  so that a row with more seeds is not compared on other seeds (target: none, in every family);
- **held out**: per family and metric, the mean over its tasks of the told row's test-metric
  difference to AdamW tuned on validation, in the direction where positive is better, and the
  tasks where every seed is worse (target: every family's mean at least 0);
- **anytime**: per task, the geometric mean over shared seeds of the not-told row's final train
  loss over the told row's (target: none above :data:`ANYTIME_TARGET`).

The cost target (time per step) is not in the results: it is the overhead benchmark's.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from . import stats
from .compare import REFERENCE_FAMILY, optimisation, reference_label
from .driver import RIVALS
from .report import fmt, table

GEOMEAN_TARGET = 0.85
TASK_TARGET = 1.25
ANYTIME_TARGET = 1.5

#: the per-layer optimizer's default rows, told the run's length and not
LAYERWISE_TOLD, LAYERWISE_ANYTIME = "alsals-layerwise-lib-plateau-unwrap", "alsals-layerwise-lib-anytime-unwrap"
#: the pairs the targets are measured for: (label, told row, not-told row)
PAIRS = (
    ("`ALSALS` defaults", "alsals", "alsals-anytime"),
    ("per-layer `LayerwiseALSALS`", LAYERWISE_TOLD, LAYERWISE_ANYTIME),
)


def _entry(summary: dict, task: str, name: str) -> dict | None:
    return summary["tasks"][task]["entries"].get(name)


def _ratio_on(entry: dict, reference: dict[int, dict], seeds: set[int]) -> float:
    """The entry's train-loss ratio to the reference runs (:func:`compare.optimisation`'s geo-mean of
    the per-seed ratios), over ``seeds``."""
    return optimisation({s: r for s, r in entry["runs"].items() if s in seeds}, reference)["geomean"]


def measure(summary: dict, split: str, told: str, anytime: str) -> dict | None:
    """The targets of one pair on ``split`` (module docstring); None without the told row's runs."""
    sp = summary["splits"].get(split)
    if sp is None or told not in sp["entries"] or not (sp["entries"][told] or {}).get("optimisation"):
        return None
    o = sp["entries"][told]["optimisation"]
    tasks = list(sp["tasks"])
    out: dict = {"geomean": o["geomean"], "seed_interval": o["seed_interval"], "n_tasks": o["n_tasks"],
                 "per_task": dict(o["per_task"])}
    out["worst"] = max(o["per_task"].items(), key=lambda kv: kv[1] if stats.finite(kv[1]) else math.inf)
    out["above"] = [t for t, v in o["per_task"].items() if not (stats.finite(v) and v <= TASK_TARGET)]
    diverged = runs = 0
    for t in tasks:
        for name in (told, anytime):
            e = _entry(summary, t, name)
            if e:
                diverged += e["diverged"]
                runs += len(e["runs"])
    out["diverged"], out["runs"] = diverged, runs
    beaten: OrderedDict[str, list] = OrderedDict()
    held: OrderedDict[tuple, list] = OrderedDict()
    losses: list[str] = []
    anytime_ratio: OrderedDict[str, float] = OrderedDict()
    for t in tasks:
        ts = summary["tasks"][t]
        family = ts["family"]
        e = _entry(summary, t, told)
        ref = ts["references"].get(reference_label(REFERENCE_FAMILY, "train"))
        better = []
        for rival in RIVALS:
            r = _entry(summary, t, rival)
            if not r or not r["runs"] or ref is None or ref.point is None:
                continue
            seeds = set(r["runs"]) & set(e["runs"])
            mine, theirs = _ratio_on(e, ref.point.runs, seeds), _ratio_on(r, ref.point.runs, seeds)
            if stats.finite(theirs) and not (stats.finite(mine) and mine <= theirs):
                better.append((rival, theirs, mine))
        beaten.setdefault(family, [])
        if better:
            beaten[family].append((t, min(better, key=lambda x: x[1])))
        g = e.get("generalisation")
        if g:
            sign = 1.0 if ts["higher"] else -1.0
            held.setdefault((family, ts["metric"]), []).append((t, sign * g["mean"]))
            if g["verdict"] == "loss":
                losses.append(t)
        a = _entry(summary, t, anytime)
        if a:
            anytime_ratio[t] = optimisation(a["runs"], e["runs"])["geomean"]
    out["rivals_better"] = beaten
    out["held_out"] = OrderedDict((key, (stats.mean([v for _, v in vals]), vals)) for key, vals in held.items())
    out["held_out_losses"] = losses
    out["anytime"] = anytime_ratio
    return out


def _held_cell(m: dict) -> str:
    parts, missed = [], []
    for (family, metric), (mean, _) in m["held_out"].items():
        unit = "points" if metric == "accuracy" else metric.replace("nats_per_byte", "nats/byte").replace("mse", "MSE")
        parts.append(f"{family} {mean:+.3g} {unit}")
        if not mean >= 0:
            missed.append(f"{family} ({unit})")
    worse = ", ".join(f"`{t}`" for t in m["held_out_losses"])
    losses = f"; every seed worse on {worse}" if worse else ""
    verdict = "met" if not missed else f"**missed** for {', '.join(missed)}"
    return f"{'; '.join(parts)} (positive = better){losses}: {verdict}"


def render(summary: dict, split: str) -> str:
    """The targets table of every pair with runs on ``split``."""
    columns, cells = [], []
    for label, told, anytime in PAIRS:
        m = measure(summary, split, told, anytime)
        if m is None:
            continue
        columns.append(f"{label} (`{told}`, `{anytime}`)")
        gm = m["geomean"]
        rows = [
            f"{fmt(gm)}× (seed CI {fmt(m['seed_interval'][0])}–{fmt(m['seed_interval'][1])}) "
            f"over {m['n_tasks']} tasks: "
            + ("met" if gm <= GEOMEAN_TARGET else f"**missed** by {gm - GEOMEAN_TARGET:.2f}"),
            f"largest `{m['worst'][0]}` {fmt(m['worst'][1])}×: "
            + ("met" if not m["above"] else f"**missed** on {len(m['above'])} of {m['n_tasks']} "
               f"({', '.join(f'`{t}`' for t in m['above'])})"),
            f"{m['diverged']} of {m['runs']} runs: " + ("met" if m["diverged"] == 0 else "**missed**"),
        ]
        families = m["rivals_better"]
        lost = [f for f, v in families.items() if v]
        detail = "; ".join(f"`{t}`: `{rival}` {fmt(theirs)}× against {fmt(mine)}×"
                           for f in lost for t, (rival, theirs, mine) in families[f])
        rows.append("best on every task of every family: met" if not lost else
                    f"{detail}: **missed** in {len(lost)} of {len(families)} families ({', '.join(lost)})")
        rows.append(_held_cell(m))
        if m["anytime"]:
            worst = max(m["anytime"].items(), key=lambda kv: kv[1] if stats.finite(kv[1]) else math.inf)
            above = [t for t, v in m["anytime"].items() if not (stats.finite(v) and v <= ANYTIME_TARGET)]
            listed = ", ".join(f"`{t}` {fmt(m['anytime'][t])}×" for t in above)
            rows.append(f"{fmt(min(m['anytime'].values()))}–{fmt(worst[1])}× (largest `{worst[0]}`): "
                        + ("met" if not above else f"**missed** on {len(above)} ({listed})"))
        else:
            rows.append("—")
        cells.append(rows)
    if not cells:
        return f"(no runs of the targets' rows on the {split} split)"
    names = [f"train-loss geo-mean ≤ {GEOMEAN_TARGET}× AdamW best on train loss",
             f"no task above {TASK_TARGET}×", "no divergence (told and not-told runs)",
             "better than every learning-rate-free rival on every task (shared seeds)",
             "held-out ≥ AdamW best on validation, per family (mean difference)",
             f"anytime: not told within {ANYTIME_TARGET}× the told run, every task"]
    return table(["target", *columns], [[n, *(c[i] for c in cells)] for i, n in enumerate(names)])
