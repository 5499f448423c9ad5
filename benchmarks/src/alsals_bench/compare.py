"""The two comparisons of the benchmark, each against its own fairly tuned baseline.

**Optimisation.** Per seed, the final train loss of an optimizer (fixed training subset, eval mode)
divided by that of the AdamW grid point with the lowest mean final *train* loss on that task (the
same seed: same initial weights, same batches). Per task: the geometric mean over seeds of these
ratios and their min-max. Over a split: the geometric mean of the per-task values, with a seed
interval and a task interval (:mod:`alsals_bench.stats`), and the same without the task most
favourable to the optimizer.

**Generalisation.** Per seed, the held-out metric on the *test* split minus that of the AdamW grid
point with the best mean *validation* metric (accuracy for classifiers, MSE for the regression, nats
per byte for language models; ties broken by validation loss). Accuracy differences are in
percentage points. Per task: the mean difference and its min-max over seeds; a task is a *win* when
every seed's difference favours the optimizer, a *loss* when every seed's disfavours it, else a
*tie*. Over a split: wins / ties / losses, and the mean difference over the tasks that share a unit
(accuracy points over the classifiers, nats per byte over the language models) with its intervals.

The schedule-free AdamW grid gets the same two selections, and is compared against AdamW like any
other optimizer.

A grid's selected point is **at an edge** when no grid point lies beyond it on one side; the runner
extends grids until no selected point is at an edge (or the point beyond diverged, or a cap was
reached), and the report says so for any selection that stays at an edge.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import stats
from .api import REPORTED_SPLITS
from .optimizers import GRID_FAMILIES, lattice_lr, parse_grid_name

#: the baseline both comparisons are against
REFERENCE_FAMILY = "adamw"
#: the headline optimizer (whose seeds decide whether a task gets more seeds)
HEADLINE = "alsals"


# --------------------------------------------------------------------------------------------------
# grids and selection


@dataclass
class GridPoint:
    """One learning rate of a grid on one task, over its seeds."""

    name: str
    family: str
    k: int
    lr: float
    runs: dict  # seed -> record
    train: float  # mean final train loss (inf when a seed failed)
    val_metric: float  # mean validation metric
    val_loss: float  # mean validation loss
    diverged: int

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)


def _failed(run: dict) -> bool:
    return run.get("status") == "error" or bool(run.get("diverged"))


def train_loss(run: dict) -> float:
    """The final train loss of a record; ``inf`` for a failed or non-finite run."""
    value = stats.num(run.get("final_train_loss"))
    if run.get("status") == "error" or not math.isfinite(value):
        return float("inf")
    return value


def metric_value(run: dict, split: str, metric: str) -> float:
    """``run[split][metric]``; NaN when absent (a failed run)."""
    return stats.num((run.get(split) or {}).get(metric))


def _mean_or_inf(values: Sequence[float]) -> float:
    vals = [stats.num(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        return float("inf")
    return sum(vals) / len(vals)


def grid_points(task_runs: Sequence[dict], family: str, metric: str, higher: bool) -> list[GridPoint]:
    """The points of grid ``family`` among ``task_runs``, by learning rate."""
    by_name: dict[str, dict] = {}
    for r in task_runs:
        parsed = parse_grid_name(str(r["optimizer"]))
        if parsed is not None and parsed[0] == family:
            by_name.setdefault(r["optimizer"], {})[int(r["seed"])] = r
    points = []
    for name, runs in by_name.items():
        _, k = parse_grid_name(name)
        vals = [metric_value(r, "val", metric) for r in runs.values()]
        val = _mean_or_inf([-v if higher else v for v in vals])
        points.append(GridPoint(
            name=name, family=family, k=k, lr=lattice_lr(k), runs=runs,
            train=_mean_or_inf([train_loss(r) for r in runs.values()]),
            val_metric=(-val if higher and math.isfinite(val) else val),
            val_loss=_mean_or_inf([metric_value(r, "val", "loss") for r in runs.values()]),
            diverged=sum(1 for r in runs.values() if _failed(r)),
        ))
    return sorted(points, key=lambda p: p.k)


def select(points: Sequence[GridPoint], by: str, higher: bool) -> GridPoint | None:
    """The best point by mean final train loss (``by="train"``) or by mean validation metric
    (``by="val"``, ties broken by validation loss); failed points rank last, then the smaller lr."""
    if not points:
        return None
    if by == "train":
        def key(p):
            return (not math.isfinite(p.train), p.train if math.isfinite(p.train) else 0.0, p.k)
    elif by == "val":
        def key(p):
            v = p.val_metric
            ok = math.isfinite(v)
            return (not ok, (-v if higher else v) if ok else 0.0,
                    p.val_loss if math.isfinite(p.val_loss) else math.inf, p.k)
    else:
        raise ValueError(f"by must be 'train' or 'val', got {by!r}")
    return min(points, key=key)


def edge_of(points: Sequence[GridPoint], chosen: GridPoint | None) -> str | None:
    """``"low"`` / ``"high"`` when ``chosen`` is the smallest / largest learning rate of the grid."""
    if chosen is None or len(points) < 1:
        return None
    ks = [p.k for p in points]
    if chosen.k == max(ks):
        return "high"
    if chosen.k == min(ks):
        return "low"
    return None


@dataclass
class Reference:
    """A tuned baseline on one task: a grid family, a selection rule and the chosen point."""

    family: str
    by: str
    point: GridPoint | None
    edge: str | None
    points: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return reference_label(self.family, self.by)


def reference_label(family: str, by: str) -> str:
    """``("adamw", "train") -> "adamw (best by train)"``."""
    return f"{family} (best by {by})"


def references(task_runs: Sequence[dict], metric: str, higher: bool) -> OrderedDict[str, Reference]:
    """Both selections of every grid family present on a task, by label."""
    out: OrderedDict[str, Reference] = OrderedDict()
    for family in GRID_FAMILIES:
        points = grid_points(task_runs, family, metric, higher)
        if not points:
            continue
        for by in ("train", "val"):
            chosen = select(points, by, higher)
            out[reference_label(family, by)] = Reference(family, by, chosen, edge_of(points, chosen), points)
    return out


# --------------------------------------------------------------------------------------------------
# the two comparisons


def _by_seed(runs: Sequence[dict]) -> dict[int, dict]:
    return {int(r["seed"]): r for r in runs}


def metric_scale(metric: str) -> float:
    """Display scale of a metric's differences: accuracy in percentage points."""
    return 100.0 if metric == "accuracy" else 1.0


def optimisation(runs: dict[int, dict], ref: dict[int, dict]) -> dict:
    """Per-seed ratios of final train loss, over the seeds both have; geo-mean and min-max."""
    seeds = sorted(set(runs) & set(ref))
    values = [train_loss(runs[s]) for s in seeds]
    refs = [train_loss(ref[s]) for s in seeds]
    ratios = [v / r if math.isfinite(r) and r > 0 else float("nan") for v, r in zip(values, refs)]
    return {"seeds": seeds, "values": values, "reference": refs, "ratios": ratios,
            "geomean": stats.geomean(ratios), "min": stats.min_max(ratios)[0], "max": stats.min_max(ratios)[1],
            "logs": [math.log(x) if stats.finite(x) and x > 0 else (math.inf if x == math.inf else math.nan)
                     for x in ratios]}


def generalisation(runs: dict[int, dict], ref: dict[int, dict], metric: str, higher: bool) -> dict:
    """Per-seed differences of the test metric (display units), over the seeds both have."""
    seeds = sorted(set(runs) & set(ref))
    scale = metric_scale(metric)
    values = [metric_value(runs[s], "test", metric) * scale for s in seeds]
    refs = [metric_value(ref[s], "test", metric) * scale for s in seeds]
    diffs = [v - r for v, r in zip(values, refs)]
    sign = 1.0 if higher else -1.0
    advantage = [sign * d if math.isfinite(d) else -math.inf for d in diffs]
    if not seeds:
        verdict = None
    elif all(a > 0 for a in advantage):
        verdict = "win"
    elif all(a < 0 for a in advantage):
        verdict = "loss"
    else:
        verdict = "tie"
    lo, hi = stats.min_max(diffs)
    return {"seeds": seeds, "values": values, "reference": refs, "diffs": diffs,
            "mean": stats.mean(diffs) if diffs else float("nan"), "min": lo, "max": hi,
            "advantage": advantage, "verdict": verdict}


# --------------------------------------------------------------------------------------------------
# a whole results file


def _per_step(runs: Sequence[dict], key: str) -> float:
    vals = [stats.num(r.get(key)) for r in runs]
    if not vals:
        return float("nan")
    if any(math.isnan(v) for v in vals):  # older records: from the raw counts
        vals = [stats.num(r.get("forward_calls" if key.startswith("forward") else "backward_calls"))
                / max(stats.num(r.get("steps_done")), 1.0) for r in runs]
    return sum(vals) / len(vals)


def task_info(task_runs: Sequence[dict]) -> dict:
    for r in task_runs:
        t = (r.get("config") or {}).get("task")
        if t:
            return t
    return {}


def summarize_task(task_runs: Sequence[dict]) -> dict:
    """Everything the report shows about one task."""
    info = task_info(task_runs)
    metric = info.get("metric", "accuracy")
    higher = bool(info.get("metric_higher_is_better", True))
    refs = references(task_runs, metric, higher)
    entries: OrderedDict[str, dict] = OrderedDict()
    names = list(OrderedDict.fromkeys(
        r["optimizer"] for r in task_runs if parse_grid_name(str(r["optimizer"])) is None))
    for name in names:
        entries[name] = {"runs": _by_seed([r for r in task_runs if r["optimizer"] == name]), "reference": None}
    for label, ref in refs.items():
        if ref.point is not None:
            entries[label] = {"runs": dict(ref.point.runs), "reference": ref}
    opt_ref = refs.get(reference_label(REFERENCE_FAMILY, "train"))
    gen_ref = refs.get(reference_label(REFERENCE_FAMILY, "val"))
    for e in entries.values():
        runs = list(e["runs"].values())
        e["seeds"] = sorted(e["runs"])
        e["train_mean"] = stats.geomean([train_loss(r) for r in runs])
        e["test_mean"] = stats.mean([metric_value(r, "test", metric) for r in runs])
        e["fwd_per_step"] = _per_step(runs, "forward_per_step")
        e["bwd_per_step"] = _per_step(runs, "backward_per_step")
        e["diverged"] = sum(1 for r in runs if _failed(r))
        e["optimisation"] = optimisation(e["runs"], opt_ref.point.runs) if opt_ref and opt_ref.point else None
        e["generalisation"] = (generalisation(e["runs"], gen_ref.point.runs, metric, higher)
                               if gen_ref and gen_ref.point else None)
    steps = sorted({int(r.get("steps", 0)) for r in task_runs})
    return {"info": info, "metric": metric, "higher": higher, "references": refs, "entries": entries,
            "steps": steps, "split": info.get("split") or (task_runs[0].get("split") if task_runs else None),
            "family": info.get("family"), "kind": info.get("kind")}


def summarize_split(tasks: OrderedDict[str, dict], name: str) -> dict | None:
    """The across-task summary of entry ``name`` over ``tasks`` (None where it is missing)."""
    present = [t for t in tasks if name in tasks[t]["entries"]]
    if not present:
        return None
    out: dict = {"tasks": present, "missing": [t for t in tasks if t not in present]}
    opt = {t: tasks[t]["entries"][name]["optimisation"] for t in present}
    if all(v is not None and v["seeds"] for v in opt.values()):
        per_task = {t: v["geomean"] for t, v in opt.items()}
        logs = [math.log(v) if stats.finite(v) and v > 0 else math.nan for v in per_task.values()]
        failed = any(not stats.finite(v) for v in per_task.values())
        gm = stats.geomean(list(per_task.values()))
        favourable = min(per_task, key=lambda t: per_task[t] if stats.finite(per_task[t]) else math.inf)
        without = stats.geomean([v for t, v in per_task.items() if t != favourable]) if len(per_task) > 1 else math.nan
        seed_iv = stats.exp_interval(stats.bootstrap_over_seeds([opt[t]["logs"] for t in present]))
        task_iv = stats.exp_interval(stats.t_interval(logs)) if not failed else (math.nan, math.nan)
        out["optimisation"] = {
            "per_task": per_task, "geomean": gm, "seed_interval": seed_iv, "task_interval": task_iv,
            "seed_interval_crosses_1": stats.crosses(seed_iv, 1.0),
            "task_interval_crosses_1": stats.crosses(task_iv, 1.0),
            "most_favourable": favourable, "geomean_without_most_favourable": without,
            "wins": sum(1 for v in opt.values() if stats.finite(v["max"]) and v["max"] < 1),
            "losses": sum(1 for v in opt.values() if not stats.finite(v["min"]) or v["min"] > 1),
            "n_tasks": len(present),
        }
    gen = {t: tasks[t]["entries"][name]["generalisation"] for t in present}
    if all(v is not None and v["seeds"] for v in gen.values()):
        verdicts = [v["verdict"] for v in gen.values()]
        by_unit: dict[str, dict] = {}
        for metric in sorted({tasks[t]["metric"] for t in present}):
            unit_tasks = [t for t in present if tasks[t]["metric"] == metric]
            means = [gen[t]["mean"] for t in unit_tasks]
            by_unit[metric] = {
                "tasks": unit_tasks, "mean": stats.mean(means),
                "seed_interval": stats.bootstrap_over_seeds([gen[t]["diffs"] for t in unit_tasks]),
                "task_interval": stats.t_interval(means),
                "higher_is_better": tasks[unit_tasks[0]]["higher"],
            }
        out["generalisation"] = {
            "per_task": {t: v["mean"] for t, v in gen.items()},
            "wins": verdicts.count("win"), "ties": verdicts.count("tie"), "losses": verdicts.count("loss"),
            "by_metric": by_unit,
        }
    return out


def summarize(runs: Sequence[dict]) -> dict:
    """Per-task summaries and per-split summaries of every entry."""
    tasks: OrderedDict[str, dict] = OrderedDict()
    for task in OrderedDict.fromkeys(r["task"] for r in runs):
        tasks[task] = summarize_task([r for r in runs if r["task"] == task])
    splits: OrderedDict[str, dict] = OrderedDict()
    for split in REPORTED_SPLITS:
        split_tasks = OrderedDict((t, s) for t, s in tasks.items() if s["split"] == split)
        if not split_tasks:
            continue
        names = list(OrderedDict.fromkeys(n for s in split_tasks.values() for n in s["entries"]))
        splits[split] = {"tasks": list(split_tasks),
                         "entries": OrderedDict((n, summarize_split(split_tasks, n)) for n in names)}
    return {"tasks": tasks, "splits": splits}


#: the configurations the defaults are chosen among (docs/benchmarks.md, "Ablations"): told the
#: run's length, and not told it; since the seventh round with the per-layer prototype's rows
#: (alsals_bench.layerwise: one ALSALS per top-level module), which ran on the dev split first, and
#: since the eighth round the library's LayerwiseALSALS with an amortized combined test and with
#: part_of="blocks"; since the thirteenth round the trials along the step before's direction; since the
#: fourteenth the smoothed decrease per unit step, alone and with those trials, and those rows with the
#: round's rule for a search that gave up
DEFAULT_CANDIDATES = ("alsals-v0.1", "alsals-interpolate-only", "alsals-increase-only", "alsals-two-way",
                      "alsals-batch-increase", "alsals-recover", "alsals-match-warmup", "alsals-match-always",
                      "alsals-smooth-per-step", "alsals-no-amortisation", "alsals-doubling", "alsals-interval10",
                      "alsals-cut-per-step", "alsals-growth-per-search", "alsals-doubling-interval10",
                      "alsals-doubling-interpolate", "alsals-layerwise", "alsals-layerwise-joint",
                      "alsals-layerwise-scaled", "alsals-layerwise-lib-amortized", "alsals-layerwise-lib-blocks",
                      "alsals-layerwise-lib-linear", "alsals-anneal-linear",
                      "alsals-layerwise-lib-plateau", "alsals-layerwise-lib-plateau-spread",
                      "alsals-layerwise-lib-wsd", "alsals-layerwise-lib-plateau-unwrap",
                      "alsals-plateau", "alsals-trial-previous", "alsals-layerwise-lib-trial-previous",
                      "alsals-rate-smoothing", "alsals-trial-previous-rate",
                      "alsals-trial-previous-restart", "alsals-rate-smoothing-restart",
                      "alsals-trial-previous-rate-restart",
                      "alsals-layerwise-lib-trial-previous-restart")
ANYTIME_CANDIDATES = ("alsals-v0.1-anytime", "alsals-two-way-anytime-no-average", "alsals-two-way-anytime",
                      "alsals-anytime", "alsals-batch-increase-anytime", "alsals-recover-anytime",
                      "alsals-match-warmup-anytime", "alsals-smooth-per-step-anytime", "alsals-doubling-anytime",
                      "alsals-interval10-anytime", "alsals-cut-per-step-anytime", "alsals-growth-per-search-anytime",
                      "alsals-doubling-interval10-anytime", "alsals-doubling-interpolate-anytime",
                      "alsals-layerwise-anytime", "alsals-layerwise-joint-anytime", "alsals-layerwise-scaled-anytime",
                      "alsals-layerwise-lib-amortized-anytime", "alsals-layerwise-lib-blocks-anytime",
                      "alsals-layerwise-lib-anytime-unwrap", "alsals-layerwise-lib-anytime-avg0.5",
                      "alsals-layerwise-lib-anytime-avg1")


def leave_one_task_out(summary: dict, split: str, candidates: Sequence[str]) -> list[dict]:
    """The leave-one-task-out check of a choice among ``candidates`` on ``split``.

    For every task ``t`` of the split: the candidate with the lowest geometric mean of the train-loss
    ratio (to AdamW tuned on train loss) over the *other* tasks is the choice made without ``t``; the
    row gives that choice, its ratio and held-out verdict on ``t``, and the best candidate on ``t``
    itself. A default passes on ``t`` when the choice made without ``t`` beats the tuned AdamW there
    (ratio below 1). Candidates with no runs on every task of the split are left out. On every task
    the candidates are compared on the seeds they all have (extra seeds, added where one candidate's
    seeds disagreed, would otherwise weigh on that candidate alone).
    """
    sp = summary["splits"].get(split)
    if sp is None:
        return []
    tasks = sp["tasks"]

    def optimisation_of(name: str, task: str) -> dict | None:
        o = summary["tasks"][task]["entries"].get(name, {}).get("optimisation")
        return o if o and o["seeds"] else None

    available = [c for c in candidates if all(optimisation_of(c, t) for t in tasks)]
    common = {t: sorted(set.intersection(*(set(optimisation_of(c, t)["seeds"]) for c in available)))
              for t in tasks} if available else {}

    def ratio(name: str, task: str) -> float:
        o = optimisation_of(name, task)
        if o is None or not common.get(task):
            return math.nan
        return stats.geomean([r for s, r in zip(o["seeds"], o["ratios"]) if s in common[task]])

    present = [c for c in available if all(stats.finite(ratio(c, t)) or ratio(c, t) == math.inf for t in tasks)]
    rows = []
    for left_out in tasks:
        others = [t for t in tasks if t != left_out]

        def score(name: str, others: list[str] = others) -> float:
            value = stats.geomean([ratio(name, t) for t in others])
            return value if stats.finite(value) else math.inf

        if not present:
            break
        choice = min(present, key=score)
        best_here = min(present, key=lambda c: ratio(c, left_out) if stats.finite(ratio(c, left_out)) else math.inf)
        gen = summary["tasks"][left_out]["entries"][choice].get("generalisation") or {}
        rows.append({
            "task": left_out, "choice": choice, "score_without": score(choice),
            "ratio": ratio(choice, left_out), "verdict": gen.get("verdict"), "best_on_task": best_here,
            "best_ratio": ratio(best_here, left_out), "passes": ratio(choice, left_out) < 1.0,
            "seeds": common[left_out],
        })
    return rows


def seeds_disagree(entry: dict, base_seeds: Sequence[int]) -> dict:
    """Whether the seeds ``base_seeds`` of one task's entry disagree by more than the effect.

    Optimisation: the range of the per-seed log ratios exceeds the magnitude of their mean.
    Generalisation: the range of the per-seed differences exceeds the magnitude of their mean.
    """
    out = {"optimisation": False, "generalisation": False}
    opt = entry.get("optimisation")
    if opt and opt["seeds"]:
        logs = [lg for s, lg in zip(opt["seeds"], opt["logs"]) if s in base_seeds]
        if logs and all(math.isfinite(v) for v in logs):
            out["optimisation"] = (max(logs) - min(logs)) > abs(sum(logs) / len(logs))
    gen = entry.get("generalisation")
    if gen and gen["seeds"]:
        diffs = [d for s, d in zip(gen["seeds"], gen["diffs"]) if s in base_seeds]
        if diffs and all(math.isfinite(v) for v in diffs):
            out["generalisation"] = (max(diffs) - min(diffs)) > abs(sum(diffs) / len(diffs))
    return out
