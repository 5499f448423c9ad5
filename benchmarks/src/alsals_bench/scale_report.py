"""The report of the scale suite: ``scale.md`` and one step-size plot per size.

Written next to ``results.md`` by ``alsals-bench run --suite scale`` and by ``alsals-bench report``
whenever the records hold tasks of the ``scale`` split. A function of the records only.

Per size: every optimizer's final train loss (fixed subset of training windows, eval mode), validation
loss (nats per byte) and step-size trace summary, with a verdict (:func:`verdict`):

* ``diverged``: the runner's verdict (a non-finite loss, a crash, or a final train loss above 3 × the
  initial one);
* ``no progress``: the final train loss is not below the initial one;
* ``collapsed``: the step size at the end is below :data:`COLLAPSE_FRACTION` of the largest the run
  accepted (a line search that backtracked its step size to nothing);
* ``ok`` otherwise.

Then, by size, the ratio of ALSALS's final train loss to the AdamW point best by train loss and the
difference of validation loss to the AdamW point best by validation loss (one seed: no interval).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from . import compare
from .optimizers import parse_grid_name
from .report import fmt, fmt_diff, table

#: a final step size below this fraction of the run's largest counts as a collapse
COLLAPSE_FRACTION = 1e-3
#: the optimizers of the scale suite in the order the tables list them (others follow)
ORDER = ("alsals", "sls", "salsa", "salsa-ref")
HEADLINE = "alsals"


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def scale_runs(runs: Sequence[dict]) -> list[dict]:
    """The records of the scale split."""
    return [r for r in runs if (r.get("split") or ((r.get("config") or {}).get("task") or {}).get("split")) == "scale"]


def verdict(run: dict) -> str:
    """``diverged``, ``no progress``, ``collapsed`` or ``ok`` (see the module docstring)."""
    if run.get("diverged") or run.get("status") in ("error", "diverged"):
        return "diverged"
    final, initial = _num(run.get("final_train_loss")), _num(run.get("initial_train_loss"))
    if math.isfinite(final) and math.isfinite(initial) and final >= initial:
        return "no progress"
    ss_final, ss_max = _num(run.get("step_size_final")), _num(run.get("step_size_max"))
    if math.isfinite(ss_final) and math.isfinite(ss_max) and ss_max > 0 and ss_final < COLLAPSE_FRACTION * ss_max:
        return "collapsed"
    return "ok"


def _val_loss(run: dict) -> float:
    return _num((run.get("val") or {}).get("loss"))


def _size_of(task_runs: Sequence[dict]) -> str:
    info = compare.task_info(task_runs)
    return (info.get("notes") or {}).get("size") or task_runs[0]["task"]


def _params_of(task_runs: Sequence[dict]) -> int | None:
    for r in task_runs:
        if isinstance(r.get("n_parameters"), int):
            return r["n_parameters"]
    return None


def _ordered(task_runs: Sequence[dict]) -> list[dict]:
    fixed = [r for r in task_runs if parse_grid_name(str(r["optimizer"])) is None]
    fixed.sort(key=lambda r: (ORDER.index(r["optimizer"]) if r["optimizer"] in ORDER else len(ORDER), r["optimizer"]))
    grid = sorted((r for r in task_runs if parse_grid_name(str(r["optimizer"])) is not None),
                  key=lambda r: parse_grid_name(str(r["optimizer"]))[1])
    return fixed + grid


def size_table(task_runs: Sequence[dict]) -> str:
    """Every run of one size: losses, step sizes, verdict."""
    ts = compare.summarize_task(task_runs)
    chosen = {}
    for ref in ts["references"].values():
        if ref.point is not None:
            chosen.setdefault(ref.point.name, []).append(f"best by {ref.by}")
    rows = []
    for r in _ordered(task_runs):
        name = r["optimizer"]
        mark = f" ({', '.join(chosen[name])})" if name in chosen else ""
        rows.append([f"`{name}`{mark}", fmt(r.get("final_train_loss"), 4), fmt(_val_loss(r), 4),
                     fmt(r.get("initial_train_loss"), 4), fmt(r.get("step_size_final")), fmt(r.get("step_size_min")),
                     fmt(r.get("step_size_max")), fmt(r.get("forward_per_step")), fmt(r.get("wall_seconds")),
                     verdict(r)])
    return table(["optimizer", "final train loss", "val loss (nats/byte)", "initial train loss", "final step size",
                  "min step size", "max step size", "fwd/step", "train s", "verdict"], rows)


def ratio_rows(runs: Sequence[dict]) -> list[dict]:
    """By size: ALSALS against the two AdamW selections, and the SLS verdict."""
    out = []
    runs = scale_runs(runs)
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        ts = compare.summarize_task(task_runs)
        by_name = {r["optimizer"]: r for r in task_runs}
        head = by_name.get(HEADLINE)
        ref_t = ts["references"].get(compare.reference_label("adamw", "train"))
        ref_v = ts["references"].get(compare.reference_label("adamw", "val"))
        row = {"task": task, "size": _size_of(task_runs), "params": _params_of(task_runs),
               "steps": sorted({int(r.get("steps", 0)) for r in task_runs})}
        if head is not None and ref_t is not None and ref_t.point is not None:
            best = next(iter(ref_t.point.runs.values()))
            row.update(alsals_train=_num(head.get("final_train_loss")), adamw_train=_num(best.get("final_train_loss")),
                       adamw_train_lr=ref_t.point.lr)
            row["train_ratio"] = (row["alsals_train"] / row["adamw_train"]
                                  if math.isfinite(row["adamw_train"]) and row["adamw_train"] > 0 else math.nan)
            row["adamw_train_at_edge"] = ref_t.edge
        if head is not None and ref_v is not None and ref_v.point is not None:
            best = next(iter(ref_v.point.runs.values()))
            row.update(alsals_val=_val_loss(head), adamw_val=_val_loss(best), adamw_val_lr=ref_v.point.lr)
            row["val_diff"] = row["alsals_val"] - row["adamw_val"]
        for name in ORDER[1:]:
            if name in by_name:
                row[f"{name}_verdict"] = verdict(by_name[name])
        out.append(row)
    return out


def ratio_table(runs: Sequence[dict]) -> str:
    rows = []
    for r in ratio_rows(runs):
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "—"
        edge = f", at the {r['adamw_train_at_edge']} edge" if r.get("adamw_train_at_edge") else ""
        rows.append([
            r["size"], params, fmt(r.get("alsals_train"), 4),
            f"{fmt(r.get('adamw_train'), 4)} (lr {fmt(r.get('adamw_train_lr'))}{edge})" if "adamw_train" in r else "—",
            fmt(r.get("train_ratio"), 4), fmt(r.get("alsals_val"), 4),
            f"{fmt(r.get('adamw_val'), 4)} (lr {fmt(r.get('adamw_val_lr'))})" if "adamw_val" in r else "—",
            fmt_diff(r.get("val_diff"), 3), r.get("sls_verdict", "—"), r.get("salsa_verdict", "—"),
            r.get("salsa-ref_verdict", "—")])
    return table(["size", "params", "ALSALS train loss", "AdamW best by train", "ALSALS ÷ AdamW (train)",
                  "ALSALS val loss", "AdamW best by val", "ALSALS − AdamW (val)", "SLS", "SaLSa", "authors' SaLSA"],
                 rows)


def render_markdown(meta: dict, runs: Sequence[dict], plot_paths: dict | None = None) -> str:
    runs = scale_runs(runs)
    parts = ["# alsals-bench: the scale suite", ""]
    if meta.get("command"):
        parts.append(f"- **command**: `{meta['command']}`")
    if meta.get("suite_description"):
        parts.append(f"- **suite**: {meta['suite_description']}")
    if meta.get("steps_override"):
        parts.append(f"- **steps overridden**: {meta['steps_override']} per run (SMOKE-SIZED: nothing to conclude)")
    git = ((meta.get("provenance") or {}).get("git") or {})
    if git:
        parts.append(f"- **git**: {git.get('commit')}" + (" (dirty tree)" if git.get("dirty") else ""))
    if isinstance(meta.get("wall_seconds"), (int, float)):
        parts.append(f"- **wall time**: {meta['wall_seconds']:.0f} s")
    parts += ["", "## By size: ALSALS against tuned AdamW", "", ratio_table(runs), "",
              "*ALSALS ÷ AdamW (train)*: final train loss of `alsals` over that of the AdamW point best by train "
              "loss (< 1: ALSALS lower); *ALSALS − AdamW (val)*: validation loss difference to the point best by "
              "validation loss (negative: ALSALS better). One seed: no interval. SLS / SaLSa columns: the "
              f"verdicts below (collapsed: final step size < {COLLAPSE_FRACTION:g} × its largest).", ""]
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        info = compare.task_info(task_runs)
        parts += [f"## {_size_of(task_runs)} (`{task}`)", "", info.get("description", ""), "",
                  size_table(task_runs), ""]
        if plot_paths and task in plot_paths:
            parts += [f"![step sizes of {task}]({plot_paths[task]})", ""]
    parts += ["## Verdicts", "", "- *diverged*: non-finite loss, a crash, or final train loss > 3 × initial.",
              "- *no progress*: final train loss ≥ initial train loss.",
              f"- *collapsed*: final step size < {COLLAPSE_FRACTION:g} × the largest of the run.",
              "- *step size*: the scalar multiplying the update direction at the step (ALSALS: lr·η, SLS: the step "
              "along the raw gradient, AdamW: lr × schedule); not all on one scale."]
    return "\n".join(parts) + "\n"


def plot_step_sizes(runs: Sequence[dict], out_dir: str) -> dict[str, str]:
    """One PNG per size under ``out_dir/plots``: batch loss and step size against steps (log y), every
    fixed optimizer and the AdamW selections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = os.path.join(out_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    runs = scale_runs(runs)
    paths = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        ts = compare.summarize_task(task_runs)
        drawn: dict[str, dict] = {r["optimizer"]: r for r in task_runs if parse_grid_name(str(r["optimizer"])) is None}
        for ref in ts["references"].values():
            if ref.point is not None:
                drawn.setdefault(f"{ref.point.name} (best by {ref.by})", next(iter(ref.point.runs.values())))
        fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(13, 5))
        for label, r in drawn.items():
            c = r.get("curves") or {}
            if not c.get("step"):
                continue
            style = {"linewidth": 2.2} if label == HEADLINE else (
                {"linestyle": "--", "color": "black"} if label.startswith("adamw") else {"linewidth": 1.2})
            loss = [_num(v) for v in c.get("loss", [])]
            ax_l.plot(c["step"][:len(loss)], loss, label=label, **style)
            ss = [v if math.isfinite(v) and v > 0 else math.nan for v in (_num(x) for x in c.get("step_size", []))]
            if any(math.isfinite(v) for v in ss):
                ax_s.plot(c["step"][:len(ss)], ss, label=label, **style)
        ax_l.set(xlabel="steps", ylabel="training batch loss (binned mean, nats/byte)", title="loss")
        ax_s.set(xlabel="steps", ylabel="step size / effective lr", yscale="log",
                 title="step size (not all on one scale)")
        for ax in (ax_l, ax_s):
            ax.grid(True, alpha=0.3, which="both")
        ax_s.legend(fontsize=7)
        fig.suptitle(f"{_size_of(task_runs)}: {task}")
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)
        paths[task] = os.path.join(folder, f"scale-{safe}.png")
        fig.savefig(paths[task], dpi=80)
        plt.close(fig)
    return paths


def write_scale_report(out_dir: str, meta: dict, runs: Sequence[dict], plots: bool = True) -> dict:
    """Write ``scale.md`` (and the plots) of the scale-split records in ``runs``; returns the paths."""
    plot_paths = plot_step_sizes(runs, out_dir) if plots and scale_runs(runs) else {}
    rel = {t: os.path.relpath(p, out_dir) for t, p in plot_paths.items()}
    path = os.path.join(out_dir, "scale.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_markdown(meta, runs, rel))
    return {"md": path, "plots": plot_paths}
