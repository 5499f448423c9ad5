"""Reports of a benchmark: ``results.json`` (every run and the machine), ``results.md`` (tables) and plots.

Everything here is a function of the list of run records, so a report can be rebuilt from a
``results.json`` (``alsals bench --report-only DIR``).

Definitions used by the tables (also written at the end of ``results.md``):

* a table *entry* is an optimizer, except the tuned-Adam grid, which contributes two entries per task:
  ``adam-tuned (best)``, the grid point with the lowest mean **validation loss** over seeds, and
  ``adam-tuned (median)``, the grid point ranked ``(n-1)//2`` by that validation loss (the 3rd of 6);
  failed runs rank last. The same learning rate is used for every seed of a task.
* numbers are means over seeds, ``± sample std`` when there are several seeds.
* *mean rank*: per task, entries ranked by mean final train loss (1 = lowest; non-finite last; ties
  share the average rank), averaged over the tasks where the entry ran. The same by the held-out test
  metric.
* *normalised score*: per task ``clip((L0 − L) / (L0 − L*), 0, 1)`` where ``L0`` is the initial train
  loss, ``L`` the entry's final train loss and ``L*`` the lowest final train loss of any run on that
  task (every grid point included); averaged over tasks. 1 = the best any run reached, 0 = no progress.
* *ratio to tuned Adam*: per task ``L / L(adam-tuned best)``, and its geometric mean over tasks
  (below 1: lower final train loss than the best tuned Adam).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import OrderedDict
from typing import Any, Iterable, Sequence

ADAM_BEST = "adam-tuned (best)"
ADAM_MEDIAN = "adam-tuned (median)"


# --------------------------------------------------------------------------------------------------
# results.json


def _clean(x: Any) -> Any:
    """JSON without NaN/Infinity (they are not JSON): non-finite floats become ``None``; numpy and
    0-dim torch scalars become Python numbers."""
    if not isinstance(x, (str, int, float, dict, list, tuple, type(None))) and hasattr(x, "item"):
        try:
            x = x.item()
        except (TypeError, ValueError, RuntimeError):
            return str(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_results_json(path: str, meta: dict, runs: Sequence[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean({"meta": meta, "runs": list(runs)}), f, indent=1, allow_nan=False, default=str)
    os.replace(tmp, path)


def load_results(path: str) -> tuple[dict, list[dict]]:
    """``path``: a ``results.json`` or the folder holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):
        return {}, data
    return data.get("meta", {}), data.get("runs", [])


# --------------------------------------------------------------------------------------------------
# numbers


def num(x: Any) -> float:
    """A float, NaN for ``None`` and anything else that is not a number."""
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def finite(x: Any) -> bool:
    return math.isfinite(num(x))


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and sample std; a non-finite value anywhere makes the mean ``inf`` (a failed seed)."""
    vals = [num(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    if not all(math.isfinite(v) for v in vals):
        return float("inf"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))


def geometric_mean(values: Iterable[float]) -> float:
    vals = [num(v) for v in values]
    if not vals:
        return float("nan")
    if any(math.isnan(v) for v in vals):
        return float("nan")
    if any(v <= 0 for v in vals):
        return float("nan")
    if any(math.isinf(v) for v in vals):
        return float("inf")
    return math.exp(statistics.fmean(math.log(v) for v in vals))


def _mean_defined(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.fmean(vals) if vals else float("nan")


def ranks(values: Sequence[float], higher_is_better: bool = False) -> list[float]:
    """1-based ranks, ties share the average rank, non-finite values rank last (tied among themselves)."""
    key = []
    for v in values:
        v = num(v)
        if not math.isfinite(v):
            key.append((1, 0.0))
        else:
            key.append((0, -v if higher_is_better else v))
    order = sorted(range(len(values)), key=lambda i: key[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and key[order[j + 1]] == key[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = avg
        i = j + 1
    return out


def _metric_name(runs: Sequence[dict]) -> tuple[str, bool]:
    for r in runs:
        t = (r.get("config") or {}).get("task") or {}
        if "metric" in t:
            return t["metric"], bool(t.get("metric_higher_is_better", True))
    return "accuracy", True


def _task_info(runs: Sequence[dict]) -> dict:
    for r in runs:
        t = (r.get("config") or {}).get("task")
        if t:
            return t
    return {}


def _grid_lr(r: dict) -> float | None:
    cfg = (r.get("config") or {}).get("optimizer") or {}
    lr = cfg.get("grid_lr")
    if lr is None and (cfg.get("family") == "adam" or str(r.get("optimizer", "")).startswith("adam-lr")):
        lr = (cfg.get("hparams") or {}).get("lr")
    return None if lr is None else float(lr)


def is_grid(r: dict) -> bool:
    return _grid_lr(r) is not None


def tasks_in(runs: Sequence[dict]) -> list[str]:
    return list(OrderedDict.fromkeys(r["task"] for r in runs))


def adam_selection(task_runs: Sequence[dict]) -> dict | None:
    """The tuned-Adam grid of one task: each learning rate's mean val loss over seeds, and the
    optimizer names of the best and median grid points by that val loss (``None`` without a grid)."""
    by_name: dict[str, list[dict]] = OrderedDict()
    for r in task_runs:
        if is_grid(r):
            by_name.setdefault(r["optimizer"], []).append(r)
    if not by_name:
        return None
    grid = []
    for name, rs in by_name.items():
        vals = [num((r.get("val") or {}).get("loss")) if r.get("status") != "error" else float("nan")
                for r in rs]
        val_loss = mean_std(vals)[0]
        grid.append({"optimizer": name, "lr": _grid_lr(rs[0]), "val_loss": val_loss, "runs": len(rs)})
    order = sorted(range(len(grid)),
                   key=lambda i: (not math.isfinite(grid[i]["val_loss"]), grid[i]["val_loss"]
                                  if math.isfinite(grid[i]["val_loss"]) else 0.0, grid[i]["lr"]))
    best = grid[order[0]]["optimizer"]
    median = grid[order[(len(order) - 1) // 2]]["optimizer"]
    for rank, i in enumerate(order, 1):
        grid[i]["rank"] = rank
    grid.sort(key=lambda g: g["lr"])
    return {"grid": grid, "best": best, "median": median}


def entries_for_task(task_runs: Sequence[dict]) -> "OrderedDict[str, dict]":
    """Table entries of one task: label -> {"optimizer": name, "runs": [...], "label": display}."""
    out: OrderedDict[str, dict] = OrderedDict()
    sel = adam_selection(task_runs)
    for r in task_runs:
        if is_grid(r):
            continue
        out.setdefault(r["optimizer"], {"optimizer": r["optimizer"], "runs": [], "label": r["optimizer"]})
        out[r["optimizer"]]["runs"].append(r)
    if sel is not None:
        lr_of = {g["optimizer"]: g["lr"] for g in sel["grid"]}
        for key, name in ((ADAM_BEST, sel["best"]), (ADAM_MEDIAN, sel["median"])):
            out[key] = {"optimizer": name, "label": f"{key} lr={lr_of[name]:g}",
                        "runs": [r for r in task_runs if r["optimizer"] == name]}
    return out


def entry_stats(runs: Sequence[dict], metric: str) -> dict:
    n = len(runs)
    train = mean_std(r.get("final_train_loss") for r in runs)
    reached = [r for r in runs if r.get("steps_to_target") is not None]
    return {
        "n": n,
        "train_loss": train,
        "batch_loss": mean_std(r.get("final_batch_loss_avg") for r in runs),
        "initial_train_loss": mean_std(r.get("initial_train_loss") for r in runs),
        "test_metric": mean_std((r.get("test") or {}).get(metric) for r in runs),
        "val_loss": mean_std((r.get("val") or {}).get("loss") for r in runs),
        "fwd_equiv": mean_std(r.get("forward_equivalents") for r in runs),
        "fwd_per_step": mean_std(num(r.get("forward_calls")) / max(num(r.get("steps_done")), 1) for r in runs),
        "bwd_per_step": mean_std(num(r.get("backward_calls")) / max(num(r.get("steps_done")), 1) for r in runs),
        "seconds": mean_std(r.get("wall_seconds") for r in runs),
        "steps_to_target": mean_std(r["steps_to_target"] for r in reached) if reached else (float("nan"),) * 2,
        "seconds_to_target": (mean_std(r.get("seconds_to_target") for r in reached) if reached
                              else (float("nan"),) * 2),
        "reached": len(reached),
        "diverged": sum(1 for r in runs if r.get("diverged")),
        "errors": sum(1 for r in runs if r.get("status") == "error"),
        "step_size_final": mean_std(r.get("step_size_final") for r in runs),
        "step_size_min": min((num(r.get("step_size_min")) for r in runs if finite(r.get("step_size_min"))),
                             default=float("nan")),
        "step_size_max": max((num(r.get("step_size_max")) for r in runs if finite(r.get("step_size_max"))),
                             default=float("nan")),
    }


def summarize(runs: Sequence[dict]) -> dict:
    """Per-task entry statistics and the summary across tasks (see the module docstring)."""
    per_task: OrderedDict[str, dict] = OrderedDict()
    for task in tasks_in(runs):
        task_runs = [r for r in runs if r["task"] == task]
        metric, higher = _metric_name(task_runs)
        entries = entries_for_task(task_runs)
        stats = OrderedDict((k, entry_stats(e["runs"], metric)) for k, e in entries.items())
        seed_means = [mean_std(r.get("final_train_loss") for r in task_runs if r["optimizer"] == o)[0]
                      for o in OrderedDict.fromkeys(r["optimizer"] for r in task_runs)]
        best_any = min((m for m in seed_means if math.isfinite(m)), default=float("nan"))
        init = mean_std(r.get("initial_train_loss") for r in task_runs if finite(r.get("initial_train_loss")))[0]
        keys = list(stats)
        train_ranks = ranks([stats[k]["train_loss"][0] for k in keys])
        metric_ranks = ranks([stats[k]["test_metric"][0] for k in keys], higher_is_better=higher)
        adam_ref = stats[ADAM_BEST]["train_loss"][0] if ADAM_BEST in stats else float("nan")
        for k, rt, rm in zip(keys, train_ranks, metric_ranks):
            s = stats[k]
            s["rank_train"] = rt
            s["rank_metric"] = rm
            L = s["train_loss"][0]
            if math.isfinite(L) and math.isfinite(init) and math.isfinite(best_any) and init > best_any:
                s["score"] = min(max((init - L) / (init - best_any), 0.0), 1.0)
            elif math.isfinite(init) and math.isfinite(best_any) and init > best_any:
                s["score"] = 0.0
            else:
                s["score"] = float("nan")
            if math.isfinite(adam_ref) and adam_ref > 0:
                s["ratio_to_adam"] = L / adam_ref if not math.isnan(L) else float("inf")
            else:
                s["ratio_to_adam"] = float("nan")
        per_task[task] = {
            "metric": metric, "higher_is_better": higher, "entries": entries, "stats": stats,
            "adam": adam_selection(task_runs), "initial_train_loss": init, "best_train_loss": best_any,
            "info": _task_info(task_runs),
        }

    labels: list[str] = []
    for t in per_task.values():
        for k in t["stats"]:
            if k not in labels:
                labels.append(k)
    across: OrderedDict[str, dict] = OrderedDict()
    for k in labels:
        present = [t["stats"][k] for t in per_task.values() if k in t["stats"]]
        across[k] = {
            "tasks": len(present),
            "mean_rank_train": statistics.fmean(s["rank_train"] for s in present),
            "mean_rank_metric": statistics.fmean(s["rank_metric"] for s in present),
            # tasks where a number is undefined for everyone (no finite run, no tuned Adam) are skipped
            "score": _mean_defined(s["score"] for s in present),
            "ratio_geomean": geometric_mean(s["ratio_to_adam"] for s in present
                                            if not math.isnan(s["ratio_to_adam"])),
            "ratios": {t: per_task[t]["stats"][k]["ratio_to_adam"] for t in per_task if k in per_task[t]["stats"]},
            "diverged": sum(s["diverged"] for s in present),
            "runs": sum(s["n"] for s in present),
        }
    return {"tasks": per_task, "across": across}


# --------------------------------------------------------------------------------------------------
# markdown


def _fmt(x: float, digits: int = 4) -> str:
    x = num(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def _pm(ms: tuple[float, float], digits: int = 4) -> str:
    m, s = ms
    if not math.isfinite(num(m)):
        return "failed" if math.isinf(num(m)) else "—"
    if math.isfinite(num(s)):
        return f"{_fmt(m, digits)} ± {_fmt(s, 2)}"
    return _fmt(m, digits)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def header_markdown(meta: dict) -> str:
    m = meta.get("machine") or {}
    lines = [f"# alsals bench: {meta.get('suite', 'custom')} suite", ""]
    items = [
        ("command", f"`{meta['command']}`" if meta.get("command") else None),
        ("started", meta.get("started")),
        ("finished", meta.get("finished")),
        ("machine", m.get("platform")),
        ("CPU", f"{m.get('cpu_model')} ({m.get('cpu_count')} cores"
                + (f", {m['affinity_cpus']} usable" if m.get("affinity_cpus") else "") + ")" if m else None),
        ("python / torch", f"{m.get('python')} / {m.get('torch')}" if m else None),
        ("threads per run / jobs", f"{meta.get('threads_per_run', 1)} / {meta.get('jobs', 1)}"),
        ("load average at start / end", f"{meta.get('loadavg_start')} / {meta.get('loadavg_end')}"),
        ("total wall time", f"{meta['wall_seconds']:.0f} s" if finite(meta.get("wall_seconds")) else None),
        ("CPU time of the runs", f"{meta['runs_cpu_seconds']:.0f} s" if finite(meta.get("runs_cpu_seconds")) else None),
        ("seeds", meta.get("seeds")),
        ("merged from", ", ".join(f"`{p}`" for p in meta["merged_from"]) if meta.get("merged_from") else None),
        ("packages", ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items() if v)),
    ]
    for k, v in items:
        if v not in (None, "", "None"):
            lines.append(f"- **{k}**: {v}")
    if meta.get("suite_description"):
        lines.append(f"- **suite**: {meta['suite_description']}")
    return "\n".join(lines)


def task_markdown(task: str, t: dict, plot_path: str | None = None) -> str:
    metric = t["metric"]
    info = t["info"]
    out = [f"## {task}", ""]
    if info.get("description"):
        out.append(f"{info['description']}. Target loss for steps-to-target: {info.get('target_loss')}; "
                   f"initial train loss {_fmt(t['initial_train_loss'])}.")
        out.append("")
    arrow = "↑" if t["higher_is_better"] else "↓"
    rows = []
    for key, s in t["stats"].items():
        e = t["entries"][key]
        stt = "—" if not s["reached"] else (
            f"{_fmt(s['steps_to_target'][0], 4)} ({_fmt(s['seconds_to_target'][0], 3)} s)"
            + ("" if s["reached"] == s["n"] else f" [{s['reached']}/{s['n']}]"))
        step = (f"{_fmt(s['step_size_final'][0], 3)} [{_fmt(s['step_size_min'], 2)}, "
                f"{_fmt(s['step_size_max'], 2)}]")
        div = f"{s['diverged']}/{s['n']}" + (f" ({s['errors']} err)" if s["errors"] else "")
        rows.append([
            e["label"], _pm(s["train_loss"]), _pm(s["batch_loss"]), _pm(s["test_metric"]), _pm(s["val_loss"]),
            f"{_fmt(s['fwd_equiv'][0], 5)} ({_fmt(s['fwd_per_step'][0], 3)}f+{_fmt(s['bwd_per_step'][0], 3)}b/step)",
            _pm(s["seconds"], 3), stt, div, step,
        ])
    out.append(_table(
        ["optimizer", "final train loss ↓", "last-5% batch loss", f"test {metric} {arrow}", "val loss",
         "fwd-equiv (per step)", "seconds", "steps to target (s)", "diverged", "step size final [min, max]"],
        rows))
    adam = t["adam"]
    if adam is not None:
        out += ["", "Tuned-Adam grid (selection by mean val loss):", ""]
        grows = []
        for g in adam["grid"]:
            tag = " **best**" if g["optimizer"] == adam["best"] else ""
            tag += " *median*" if g["optimizer"] == adam["median"] else ""
            grows.append([f"{g['lr']:g}{tag}", _fmt(g["val_loss"]), g["rank"]])
        out.append(_table(["lr", "val loss", "rank"], grows))
    if plot_path:
        out += ["", f"![{task}]({plot_path})"]
    return "\n".join(out)


def summary_markdown(summary: dict) -> str:
    across = summary["across"]
    tasks = list(summary["tasks"])
    order = sorted(across, key=lambda k: (across[k]["mean_rank_train"], k))
    rows = []
    for k in order:
        a = across[k]
        rows.append([k, f"{a['mean_rank_train']:.2f}", f"{a['mean_rank_metric']:.2f}", _fmt(a["score"], 3),
                     _fmt(a["ratio_geomean"], 3), f"{a['diverged']}/{a['runs']}", a["tasks"]])
    ratio_rows = [[k, *(_fmt(across[k]["ratios"].get(t), 3) for t in tasks), _fmt(across[k]["ratio_geomean"], 3)]
                  for k in order]
    return "\n".join([
        "## Summary across tasks", "",
        _table(["optimizer", "mean rank (train loss)", "mean rank (test metric)", "normalised score ↑",
                "train loss / tuned Adam (geo-mean) ↓", "diverged runs", "tasks"], rows),
        "", "Final train loss relative to the best tuned Adam, per task (below 1: lower loss than tuned Adam):",
        "", _table(["optimizer", *tasks, "geo-mean"], ratio_rows),
    ])


NOTES = """## Definitions

- **final train loss**: loss on a fixed subset of the training set (the same examples for every
  optimizer of a seed), model in eval mode, after the last step. **last-5% batch loss**: mean of the
  training-batch losses over the last 5% of the steps.
- **test metric**: held-out test split (accuracy for classifiers, nats per byte for language models);
  **val loss** is the validation split, used only to pick the tuned-Adam learning rate.
- **fwd-equiv**: forward passes + 2 × backward passes, counted by the harness around the closure
  (backward passes run by an optimizer itself included).
- **steps to target**: first step at which the bias-corrected EMA (β = 0.95) of the batch loss reaches
  the task's target loss; seconds of training at that step. [k/n]: seeds that reached it.
- **diverged**: non-finite loss, a crash, or a final train loss above 3 × the initial one.
- **step size**: the scalar multiplying the update direction: the accepted step size for line
  searches (on the Adam direction for ALSALS/SaLSa, on the raw gradient for SLS), lr × schedule for
  Adam, d × lr × schedule for Prodigy / D-Adaptation, the warmed-up lr for schedule-free AdamW, η of DoG
  (an SGD step). Only same-direction methods are on the same scale.
- **tuned Adam**: `torch.optim.AdamW` with weight_decay=0 (i.e. Adam), 5% linear warm-up + cosine decay
  to 0, learning rates 1e-4 … 3e-2; *best* / *median* = lowest / median mean val loss on each task.
- **mean rank**: per task by mean final train loss (test metric), averaged over tasks.
  **normalised score**: per task clip((L0 − L)/(L0 − L*), 0, 1), L0 the initial train loss, L* the lowest
  final train loss of any run on the task; averaged over tasks. **train loss / tuned Adam**: per task
  ratio of the final train loss to that of the best tuned Adam; geometric mean over tasks.
- Wall time varies about ±30% between runs on this kind of machine; prefer the forward equivalents.
"""


def render_markdown(meta: dict, runs: Sequence[dict], plot_paths: dict | None = None) -> str:
    summary = summarize(runs)
    parts = [header_markdown(meta), summary_markdown(summary)]
    for task, t in summary["tasks"].items():
        parts.append(task_markdown(task, t, (plot_paths or {}).get(task)))
    errors = [r for r in runs if r.get("status") == "error"]
    if errors:
        rows = [[r["task"], r["optimizer"], r["seed"], str(r.get("error", ""))[:200].replace("|", "/")]
                for r in errors]
        parts.append("## Errors\n\n" + _table(["task", "optimizer", "seed", "error"], rows))
    parts.append(NOTES)
    return "\n\n".join(parts) + "\n"


def write_report(out_dir: str, meta: dict, runs: Sequence[dict], plots: bool = True) -> dict:
    """Write ``results.json``, ``results.md`` and (unless ``plots`` is False) the PNG plots; returns the
    written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md")}
    write_results_json(paths["json"], meta, runs)
    plot_paths: dict[str, str] = {}
    if plots and runs:
        from .plots import plot_all  # matplotlib only when plotting

        plot_paths = plot_all(runs, out_dir)
    rel = {t: os.path.relpath(p, out_dir) for t, p in plot_paths.items()}
    with open(paths["md"], "w") as f:
        f.write(render_markdown(meta, runs, rel))
    paths["plots"] = plot_paths
    return paths
