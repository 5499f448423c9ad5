"""PNG plots of a benchmark (matplotlib, Agg backend): imported only when plotting.

One figure per task, ``plots/<task>.png``, four panels: batch loss vs steps, vs training seconds, vs
forward equivalents, and the step size vs steps (log y). Curves are means over seeds of the binned
batch loss. Of the tuned-Adam grid only the best learning rate (by val loss) is drawn.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import ADAM_BEST, entries_for_task, num, tasks_in  # noqa: E402


def _mean_curves(runs: Sequence[dict]) -> dict | None:
    curves = [r.get("curves") or {} for r in runs]
    curves = [c for c in curves if c.get("step")]
    if not curves:
        return None
    n = min(len(c["step"]) for c in curves)
    out = {}
    for key in ("step", "loss", "seconds", "fwd_equiv", "step_size"):
        cols = [[num(v) for v in c.get(key, [])[:n]] for c in curves]
        if any(len(col) < n for col in cols):
            continue
        out[key] = [sum(col[i] for col in cols) / len(cols) for i in range(n)]
    return out


def _style(i: int, key: str) -> dict:
    if key.startswith("alsals"):
        return {"linewidth": 2.2, "zorder": 5}
    if key == ADAM_BEST:  # the tuned-Adam reference (not the authors' AdamSLS, also "adam…")
        return {"linewidth": 1.8, "linestyle": "--", "color": "black", "zorder": 4}
    return {"linewidth": 1.1, "alpha": 0.9}


def plot_task(task: str, task_runs: Sequence[dict], path: str) -> str:
    entries = entries_for_task(task_runs)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_steps, ax_secs), (ax_fwd, ax_ss) = axes
    any_loss = False
    for i, (key, e) in enumerate(entries.items()):
        if key.startswith("adam-tuned") and key != ADAM_BEST:
            continue
        c = _mean_curves(e["runs"])
        if not c or "loss" not in c:
            continue
        label = e["label"].replace(ADAM_BEST, "adam tuned, best") if key == ADAM_BEST else e["label"]
        st = _style(i, key)
        loss = [v if math.isfinite(v) else float("nan") for v in c["loss"]]
        ax_steps.plot(c["step"], loss, label=label, **st)
        if "seconds" in c:
            ax_secs.plot(c["seconds"], loss, label=label, **st)
        if "fwd_equiv" in c:
            ax_fwd.plot(c["fwd_equiv"], loss, label=label, **st)
        if "step_size" in c:
            ss = [v if math.isfinite(v) and v > 0 else float("nan") for v in c["step_size"]]
            if any(math.isfinite(v) for v in ss):
                ax_ss.plot(c["step"], ss, label=label, **st)
        any_loss = True
    for ax, xl in ((ax_steps, "steps"), (ax_secs, "training seconds"), (ax_fwd, "forward equivalents (fwd + 2·bwd)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("training batch loss (binned mean)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3, which="both")
    ax_ss.set_xlabel("steps")
    ax_ss.set_ylabel("step size / effective lr")
    ax_ss.set_yscale("log")
    ax_ss.grid(True, alpha=0.3, which="both")
    ax_steps.set_title("loss vs steps")
    ax_secs.set_title("loss vs wall seconds")
    ax_fwd.set_title("loss vs forward equivalents")
    ax_ss.set_title("accepted step size vs steps (not all on the same scale)")
    if any_loss:
        handles, labels = ax_steps.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    fig.suptitle(task)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_all(runs: Sequence[dict], out_dir: str) -> dict[str, str]:
    """One PNG per task under ``out_dir/plots``; returns ``{task: path}``."""
    folder = os.path.join(out_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for task in tasks_in(runs):
        task_runs = [r for r in runs if r["task"] == task]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)
        paths[task] = plot_task(task, task_runs, os.path.join(folder, f"{safe}.png"))
    return paths
