"""PNG plots of a benchmark (matplotlib, Agg backend): imported only when plotting.

One figure per task, ``plots/<task>.png``, four panels: batch loss vs steps, vs training seconds, vs
forward equivalents, and the step size vs steps (log y). Curves are means over seeds of the binned
batch loss. Of the tuned grids only the two selected points of each (best by train loss, best by
validation metric) are drawn; of the other optimizers those in :data:`PLOTTED`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import compare  # noqa: E402
from .stats import num  # noqa: E402

#: the optimizers drawn besides the tuned selections
PLOTTED = ("alsals", "alsals-anytime", "alsals-paper", "salsa-ref", "salsa-ref-anneal", "sls-anneal",
           "prodigy", "dog")


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


def _style(key: str) -> dict:
    if key.startswith("alsals"):
        return {"linewidth": 2.2, "zorder": 5}
    if key.startswith("adamw"):
        return {"linewidth": 1.8, "linestyle": "--", "color": "black" if "train" in key else "dimgray", "zorder": 4}
    if key.startswith("sfadamw"):
        return {"linewidth": 1.4, "linestyle": ":", "zorder": 3}
    return {"linewidth": 1.1, "alpha": 0.9}


def plot_task(task: str, ts: dict, path: str) -> str:
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_steps, ax_secs), (ax_fwd, ax_ss) = axes
    any_loss = False
    for key, e in ts["entries"].items():
        if e["reference"] is None and key not in PLOTTED:
            continue
        c = _mean_curves(list(e["runs"].values()))
        if not c or "loss" not in c:
            continue
        label = key if e["reference"] is None else f"{key}, lr {e['reference'].point.lr:g}"
        st = _style(key)
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
    ax_ss.set_title("step size vs steps (not all on one scale; ALSALS: searched, before its anneal)", fontsize=9)
    if any_loss:
        handles, labels = ax_steps.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(5, max(1, len(labels))), fontsize=8)
    fig.suptitle(f"{task} ({ts['split']} split)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_all(runs: Sequence[dict], out_dir: str) -> dict[str, str]:
    """One PNG per task under ``out_dir/plots``; returns ``{task: path}``."""
    folder = os.path.join(out_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    summary = compare.summarize(runs)
    for task, ts in summary["tasks"].items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)
        paths[task] = plot_task(task, ts, os.path.join(folder, f"{safe}.png"))
    return paths
