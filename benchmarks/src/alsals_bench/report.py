"""The report of a benchmark: ``results.md`` (and the plots), a function of the run records only.

A report can be rebuilt from any results file or folder, or from several merged
(``alsals-bench report OUT --merge A B``; a later record of the same task, optimizer and seed
replaces an earlier one). Its header lists every command whose runs it holds, the git commits
(and whether the tree was dirty), the machines and the package versions. The two comparisons and
their statistics are defined in :mod:`alsals_bench.compare` and :mod:`alsals_bench.stats`; the
definitions are repeated at the end of ``results.md``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence

from . import compare, stats
from .results import commands_of, write_results

#: the rows of the headline tables, in this order (others present follow)
ROW_ORDER = (
    "alsals", "alsals-anytime", "alsals-v0.1", "alsals-v0.1-anytime", "alsals-interpolate-only",
    "alsals-increase-only", "alsals-two-way", "alsals-two-way-anytime", "alsals-two-way-anytime-no-average",
    "alsals-batch-increase", "alsals-batch-increase-anytime", "alsals-recover", "alsals-recover-anytime",
    "alsals-match-warmup", "alsals-match-always", "alsals-match-warmup-anytime",
    "alsals-smooth-per-step", "alsals-smooth-per-step-anytime",
    "alsals-doubling", "alsals-doubling-anytime", "alsals-interval10", "alsals-interval10-anytime",
    "alsals-cut-per-step", "alsals-cut-per-step-anytime", "alsals-growth-per-search",
    "alsals-growth-per-search-anytime", "alsals-doubling-interval10", "alsals-doubling-interval10-anytime",
    "alsals-doubling-interpolate", "alsals-doubling-interpolate-anytime", "alsals-no-amortisation", "alsals-paper",
    "adamw (best by train)", "adamw (best by val)", "sfadamw (best by train)", "sfadamw (best by val)",
    "sls", "sls-anneal", "salsa", "salsa-anneal", "salsa-ref", "salsa-ref-anneal", "salsa-ref-default",
    "adamsls-ref", "adamsls-ref-anneal", "prodigy", "dadapt-adam", "dog",
)
#: what a row is, shown in the tables
ROW_NOTES = {
    "alsals": "ALSALS(total_steps=T), defaults chosen on the dev split",
    "alsals-anytime": "ALSALS(), no anneal; evaluated at its average of the iterates",
    "alsals-layerwise-scaled": "LayerwiseALSALS(model, total_steps=T): one ALSALS per top-level module, the "
    "summed step tested; records of the prototype, whose steps the library class reproduces bitwise; the "
    "prototype's K parts take K backward passes, the library's one: its forwards are fwd − bwd + 1",
    "alsals-layerwise-scaled-anytime": "LayerwiseALSALS(model): the same, no anneal; evaluated at its averages",
    "alsals-v0.1": "ALSALS(preset='v0.1', total_steps=T): the 0.1 defaults",
    "alsals-v0.1-anytime": "ALSALS(preset='v0.1'): the 0.1 defaults, no anneal, no average",
    "alsals-interpolate-only": "ablation: 0.1 + interpolated cuts (no increase), total_steps=T",
    "alsals-increase-only": "ablation: 0.1 + the two-way search (fixed cuts), total_steps=T",
    "alsals-two-way": "ablation: 0.1 + interpolated cuts + the two-way search, total_steps=T",
    "alsals-two-way-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-two-way-anytime-no-average": "ablation: the same, no anneal, evaluated at the iterate",
    "alsals-batch-increase": "ablation: 0.1 + the two-way search whose increase the batch confirms, total_steps=T",
    "alsals-batch-increase-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-recover": "ablation: 0.1 + cuts that are not permanent (recover=True), total_steps=T",
    "alsals-recover-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-match-warmup": "ablation: 0.1 + warm-up searches matched to the first step's displacement, total_steps=T",
    "alsals-match-always": "ablation: 0.1 + every search matched to the first step's displacement, total_steps=T",
    "alsals-match-warmup-anytime": "ablation: warm-up searches matched, no anneal, evaluated at its average",
    "alsals-cosine": "ablation: ALSALS(anneal='cosine', total_steps=T)",
    "alsals-linear": "ablation: ALSALS(anneal='linear', total_steps=T)",
    "alsals-anneal-linear": "ablation: ALSALS(anneal='linear', total_steps=T) on today's defaults",
    "alsals-layerwise-lib-linear": "LayerwiseALSALS(model, anneal='linear', total_steps=T): the per-layer "
    "optimizer with the linear decay to zero over the run",
    "alsals-layerwise-lib-plateau": "LayerwiseALSALS(model, total_steps=T), the ninth round's default: its decay "
    "starts when the batch loss stops falling (decay_on_plateau=True)",
    "alsals-plateau": "ablation: ALSALS(total_steps=T, decay_on_plateau=True): the defaults, the decay started "
    "when the batch loss stops falling",
    "alsals-layerwise-lib-plateau-unwrap": "LayerwiseALSALS(model, total_steps=T), the tenth round's default: the "
    "ninth round's, its parts found below the model's levels that only wrap",
    "alsals-layerwise-lib-anytime-unwrap": "LayerwiseALSALS(model), the tenth round's default not told the run's "
    "length: no anneal, evaluated at its averages",
    "alsals-trial-previous": "ablation: ALSALS(total_steps=T, trial_direction='previous'): the defaults, the "
    "searches' trials along the step before's direction (formed without this batch's gradient); a search that "
    "passed no trial keeps its last trial's step size and the memory (unaccepted_search='keep', the rule it ran with)",
    "alsals-layerwise-lib-trial-previous": "ablation: the tenth round's LayerwiseALSALS(model, total_steps=T), each "
    "part's trials along the step before's direction (trial_direction='previous'; unaccepted_search='keep')",
    "alsals-rate-smoothing": "ablation: ALSALS(total_steps=T, rate_smoothing=True): the defaults, the smoothed "
    "decrease per unit step (Δ/η) tested against the smoothed slope (unaccepted_search='keep')",
    "alsals-trial-previous-rate": "ablation: ALSALS(total_steps=T, trial_direction='previous', rate_smoothing=True): "
    "the thirteenth round's trials along the step before's direction, the decrease smoothed per unit step "
    "(unaccepted_search='keep')",
    "alsals-trial-previous-restart": "ablation: alsals-trial-previous with the fourteenth round's default "
    "for a search that passed no trial (unaccepted_search='restart': the step size it started from, an empty memory)",
    "alsals-rate-smoothing-restart": "ablation: alsals-rate-smoothing with unaccepted_search='restart'",
    "alsals-trial-previous-rate-restart": "ablation: alsals-trial-previous-rate with "
    "unaccepted_search='restart'",
    "alsals-layerwise-lib-trial-previous-restart": "ablation: alsals-layerwise-lib-trial-previous with "
    "unaccepted_search='restart'",
    "alsals-layerwise-lib-anytime-avg0.5": "probe: the same not told the run's length, evaluated at a longer "
    "average (anneal_fraction=0.5: γ = 2)",
    "alsals-layerwise-lib-anytime-avg1": "probe: the same, every iterate weighted alike (anneal_fraction=1: γ = 0)",
    "alsals-layerwise-lib-plateau-spread": "ablation: the same with the plateau test's first version "
    "(plateau_noise='spread': the windows' raw spread as the noise)",
    "alsals-layerwise-lib-wsd": "ablation: LayerwiseALSALS(model, decay_on_plateau=False, total_steps=T), the "
    "decay over the last 20% (the eighth round's), on the ninth round's machine",
    "alsals-smooth-per-step": "ablation: 0.1 + the smoothing's memory counted in steps, total_steps=T",
    "alsals-smooth-per-step-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-doubling": "ablation: 0.1 + the doubling interval rule (any cut: search again next step), total_steps=T",
    "alsals-doubling-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-interval10": "ablation: 0.1 with max_search_interval=10, total_steps=T",
    "alsals-interval10-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-cut-per-step": "ablation: ALSALS(cut_per='step', total_steps=T): cuts counted per step",
    "alsals-cut-per-step-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-growth-per-search": "ablation: ALSALS(growth_per='search', total_steps=T): growth only at a search",
    "alsals-growth-per-search-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-doubling-interval10": "ablation: ALSALS(max_search_interval=10, total_steps=T)",
    "alsals-doubling-interval10-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-doubling-interpolate": "ablation: ALSALS(interpolate=True, total_steps=T)",
    "alsals-doubling-interpolate-anytime": "ablation: the same, no anneal, evaluated at its average",
    "alsals-no-amortisation": "ablation: ALSALS(amortized=False, total_steps=T), a search every step",
    "alsals-paper": "ALSALS(preset='paper')",
    "adamw (best by train)": "tuned: AdamW grid point best by train loss",
    "adamw (best by val)": "tuned: AdamW grid point best by validation metric",
    "sfadamw (best by train)": "tuned: schedule-free AdamW grid point best by train loss",
    "sfadamw (best by val)": "tuned: schedule-free AdamW grid point best by validation metric",
    "salsa-ref": "authors' SaLSA, use_mv=True (its docstring's recommendation)",
    "salsa-ref-anneal": "authors' SaLSA, use_mv=True, ALSALS's anneal",
    "salsa-ref-default": "authors' SaLSA at its default use_mv=False",
    "adamsls-ref": "authors' AdamSLS",
    "adamsls-ref-anneal": "authors' AdamSLS, ALSALS's anneal",
    "sls": "SLS preset", "sls-anneal": "SLS preset, ALSALS's anneal",
    "salsa": "SaLSa preset", "salsa-anneal": "SaLSa preset, ALSALS's anneal",
    "prodigy": "Prodigy (LR-free)", "dadapt-adam": "D-Adaptation Adam (LR-free)", "dog": "DoG (LR-free)",
}
METRIC_LABEL = {"accuracy": "accuracy (points)", "nats_per_byte": "nats/byte", "mse": "MSE"}


# --------------------------------------------------------------------------------------------------
# formatting


def fmt(x, digits: int = 3) -> str:
    x = stats.num(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def fmt_diff(x, digits: int = 2) -> str:
    x = stats.num(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "failed"
    if abs(x) >= 0.0995 or x == 0:  # (0.0995 and above would print as "0.1" with two digits)
        return f"{x:+.{digits}f}"
    return f"{x:+.{digits}g}"


def fmt_interval(iv, digits: int = 3, diff: bool = False) -> str:
    lo, hi = iv
    if not (stats.finite(lo) and stats.finite(hi)):
        return "—"
    if diff:
        return f"{fmt_diff(lo)} – {fmt_diff(hi)}"
    return f"{fmt(lo, digits)} – {fmt(hi, digits)}"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ordered_rows(names) -> list[str]:
    names = list(names)
    return [n for n in ROW_ORDER if n in names] + [n for n in names if n not in ROW_ORDER]


def row_label(name: str) -> str:
    note = ROW_NOTES.get(name)
    return f"`{name}`" + (f" ({note})" if note else "")


def ratio_cell(opt: dict | None) -> str:
    if not opt or not opt["seeds"]:
        return "—"
    if len(opt["seeds"]) == 1:
        return fmt(opt["geomean"])
    return f"{fmt(opt['geomean'])} [{fmt(opt['min'])}, {fmt(opt['max'])}]"


def diff_cell(gen: dict | None) -> str:
    if not gen or not gen["seeds"]:
        return "—"
    mark = {"win": " ✓", "loss": " ✗", "tie": ""}.get(gen["verdict"] or "", "")
    if len(gen["seeds"]) == 1:
        return fmt_diff(gen["mean"]) + mark
    return f"{fmt_diff(gen['mean'])} [{fmt_diff(gen['min'])}, {fmt_diff(gen['max'])}]{mark}"


# --------------------------------------------------------------------------------------------------
# sections


def header_markdown(meta: dict, runs: Sequence[dict], title: str | None = None) -> str:
    suite = meta.get("suite", "custom")
    lines = [f"# {title or f'alsals-bench: {suite} suite'}", ""]
    if meta.get("smoke"):
        lines += ["> **Smoke-sized run.** One seed and a fifth of the full steps: it shows that both "
                  "comparisons work on dev and test tasks, and is far too small to conclude anything. "
                  "The documented results are in `docs/benchmarks.md`.", ""]
    commands = commands_of(meta, runs)
    if commands:
        lines.append("- **commands whose runs this report holds**:")
        lines += [f"  - `{c}`" for c in commands]
    git = Counter()
    machines = Counter()
    versions: dict[str, Counter] = {}
    for r in runs:
        p = r.get("provenance") or {}
        g = p.get("git") or {}
        if g:
            git[(g.get("commit"), g.get("dirty"))] += 1
        m = p.get("machine") or {}
        if m:
            machines[f"{m.get('cpu_model')} ({m.get('cpu_count')} cores, {m.get('usable_cores')} usable), "
                     f"{m.get('platform')}, Python {m.get('python')}"] += 1
        for name, version in (p.get("packages") or {}).items():
            if version:
                versions.setdefault(name, Counter())[version] += 1
    if git:
        lines.append("- **git**: " + "; ".join(
            f"{(c or 'no checkout')[:12]}{' (dirty tree)' if d else ''}: {n} runs" for (c, d), n in git.items()))
    if machines:
        lines.append("- **machine**: " + "; ".join(f"{m}: {n} runs" for m, n in machines.items()))
    threads = sorted({(r.get("config") or {}).get("threads") for r in runs} - {None})
    if threads:
        lines.append(f"- **threads per run**: {', '.join(map(str, threads))}")
    if versions:  # every version seen, with its run count where the records differ
        lines.append("- **packages**: " + ", ".join(
            f"{k} {next(iter(c))}" if len(c) == 1 else f"{k} " + " / ".join(f"{v} ({n} runs)" for v, n in c.items())
            for k, c in versions.items()))
    for key, label in (("started", "started"), ("finished", "finished"), ("jobs", "jobs")):
        if meta.get(key) not in (None, ""):
            lines.append(f"- **{label}**: {meta[key]}")
    if stats.finite(meta.get("wall_seconds")):
        lines.append(f"- **wall time** of the last command: {meta['wall_seconds']:.0f} s")
    cpu = sum(stats.num(r.get("cpu_seconds")) for r in runs if stats.finite(r.get("cpu_seconds")))
    lines.append(f"- **runs**: {len(runs)} ({cpu:.0f} s of CPU)")
    if meta.get("suite_description"):
        lines.append(f"- **suite**: {meta['suite_description']}")
    dropped = meta.get("dropped_outside_suite")
    if dropped and dropped.get("records"):
        lines.append(f"- **kept**: the records the `{dropped['suite']}` suite plans ({dropped['records']} other "
                     "records of the merged files left out)")
    if meta.get("sources"):
        lines.append("- **merged from**: " + ", ".join(
            f"`{s['source']}` ({s['kept']} of {s['records']} records kept)" for s in meta["sources"]))
    return "\n".join(lines)


def fwd_bwd(summary: dict, tasks: Sequence[str], name: str) -> str:
    """Forward and backward passes per step of ``name``, averaged over ``tasks``."""
    fwd = [summary["tasks"][t]["entries"][name]["fwd_per_step"] for t in tasks]
    bwd = [summary["tasks"][t]["entries"][name]["bwd_per_step"] for t in tasks]
    return f"{stats.mean(fwd):.2f} / {stats.mean(bwd):.2f}" if fwd else "—"


def optimisation_table(summary: dict, split: str, names: Sequence[str] | None = None) -> str:
    sp = summary["splits"][split]
    tasks = sp["tasks"]
    rows = []
    for name in names or ordered_rows(sp["entries"]):
        s = sp["entries"].get(name)
        if s is None:
            continue
        o = s.get("optimisation")
        cells = [ratio_cell(summary["tasks"][t]["entries"].get(name, {}).get("optimisation")) for t in tasks]
        if o:
            gm = fmt(o["geomean"]) + ("" if not s["missing"] else f" ({len(s['tasks'])} tasks)")
            rows.append([row_label(name), *cells, gm, fmt_interval(o["seed_interval"]),
                         fmt_interval(o["task_interval"]), fmt(o["geomean_without_most_favourable"]),
                         f"{o['wins']} / {o['losses']}", fwd_bwd(summary, s["tasks"], name)])
        else:
            rows.append([row_label(name), *cells, "—", "—", "—", "—", "—", "—"])
    return table(["optimizer", *tasks, "geo-mean", "seed 95% CI", "task 95% CI", "geo-mean w/o best task",
                  "tasks won / lost (all seeds)", "fwd / bwd per step"], rows)


def generalisation_table(summary: dict, split: str, names: Sequence[str] | None = None) -> str:
    sp = summary["splits"][split]
    tasks = sp["tasks"]
    metrics = []
    for t in tasks:
        m = summary["tasks"][t]["metric"]
        if m not in metrics:
            metrics.append(m)
    rows = []
    for name in names or ordered_rows(sp["entries"]):
        s = sp["entries"].get(name)
        if s is None:
            continue
        g = s.get("generalisation")
        cells = [diff_cell(summary["tasks"][t]["entries"].get(name, {}).get("generalisation")) for t in tasks]
        extra = []
        for m in metrics:
            u = (g or {}).get("by_metric", {}).get(m)
            extra.append("—" if u is None else
                         f"{fmt_diff(u['mean'])} (seeds {fmt_interval(u['seed_interval'], diff=True)}; "
                         f"tasks {fmt_interval(u['task_interval'], diff=True)})")
        wtl = f"{g['wins']} / {g['ties']} / {g['losses']}" if g else "—"
        rows.append([row_label(name), *cells, wtl, *extra, fwd_bwd(summary, s["tasks"], name)])
    heads = [f"{t} (Δ {METRIC_LABEL.get(summary['tasks'][t]['metric'], summary['tasks'][t]['metric'])} "
             f"{'↑' if summary['tasks'][t]['higher'] else '↓'})" for t in tasks]
    return table(["optimizer", *heads, "wins / ties / losses",
                  *(f"mean Δ {METRIC_LABEL.get(m, m)}" for m in metrics), "fwd / bwd per step"], rows)


def per_seed_table(summary: dict, split: str, name: str = compare.HEADLINE) -> str:
    rows = []
    for t in summary["splits"][split]["tasks"]:
        ts = summary["tasks"][t]
        e = ts["entries"].get(name)
        if e is None:
            continue
        o, g = e["optimisation"], e["generalisation"]
        tr = ts["references"].get(compare.reference_label(compare.REFERENCE_FAMILY, "train"))
        va = ts["references"].get(compare.reference_label(compare.REFERENCE_FAMILY, "val"))
        scale_name = METRIC_LABEL.get(ts["metric"], ts["metric"])
        rows.append([
            t, ", ".join(map(str, o["seeds"] if o else e["seeds"])),  # the seeds the ratios are over
            f"{tr.point.lr:g}" if tr and tr.point else "—",
            ", ".join(fmt(v) for v in o["ratios"]) if o else "—",
            ", ".join(fmt(v, 4) for v in o["values"]) if o else "—",
            ", ".join(fmt(v, 4) for v in o["reference"]) if o else "—",
            f"{va.point.lr:g}" if va and va.point else "—",
            (", ".join(fmt_diff(v) for v in g["diffs"]) + f" ({scale_name})") if g else "—",
            ", ".join(fmt(v, 4) for v in g["values"]) if g else "—",
            ", ".join(fmt(v, 4) for v in g["reference"]) if g else "—",
        ])
    return table(["task", "seeds", "AdamW lr (by train)", "train-loss ratio per seed", f"{name} train loss",
                  "AdamW train loss", "AdamW lr (by val)", "Δ test metric per seed", f"{name} test metric",
                  "AdamW test metric"], rows)


def grid_markdown(task: str, ts: dict) -> str:
    out = []
    for family in sorted({ref.family for ref in ts["references"].values()}):
        refs = {ref.by: ref for ref in ts["references"].values() if ref.family == family}
        points = next(iter(refs.values())).points
        rows = []
        for p in points:
            tags = [f"**best by {by}**" for by, ref in refs.items()
                    if ref.point is not None and ref.point.name == p.name]
            val = p.val_metric * compare.metric_scale(ts["metric"]) if stats.finite(p.val_metric) else p.val_metric
            rows.append([f"{p.lr:g} {' '.join(tags)}".strip(), fmt(p.train, 4), fmt(val, 4), fmt(p.val_loss, 4),
                         ", ".join(map(str, p.seeds)), p.diverged])
        edges = [f"best by {by} is at the {ref.edge} edge of the grid" for by, ref in refs.items() if ref.edge]
        out.append(f"{family} grid on `{task}`" + (f" (**{'; '.join(edges)}**: the extension cap was reached)"
                                                  if edges else "") + ":")
        out.append("")
        out.append(table(["lr", "train loss (mean)", f"val {METRIC_LABEL.get(ts['metric'], ts['metric'])} (mean)",
                          "val loss (mean)", "seeds", "failed runs"], rows))
        out.append("")
    return "\n".join(out)


def task_markdown(task: str, ts: dict, plot_path: str | None = None) -> str:
    info = ts["info"]
    out = [f"### {task} ({ts['split']}, {info.get('family')})", ""]
    if info.get("description"):
        recipe = f"weight decay {info.get('weight_decay')}" + (
            f", gradient clipping {info['grad_clip']}" if info.get("grad_clip") else "")
        out += [f"{info['description']}. Steps: {', '.join(map(str, ts['steps']))}. Recipe: {recipe}.", ""]
    rows = []
    scale = compare.metric_scale(ts["metric"])
    for name in ordered_rows(ts["entries"]):
        e = ts["entries"][name]
        secs = [stats.num(r.get("wall_seconds")) for r in e["runs"].values()]
        rows.append([f"`{name}`", len(e["seeds"]), fmt(e["train_mean"], 4),
                     fmt(e["test_mean"] * scale, 4), ratio_cell(e["optimisation"]), diff_cell(e["generalisation"]),
                     f"{e['fwd_per_step']:.2f} / {e['bwd_per_step']:.2f}", fmt(stats.mean(secs)), e["diverged"]])
    out.append(table(["optimizer", "seeds", "train loss (geo-mean)",
                      f"test {METRIC_LABEL.get(ts['metric'], ts['metric'])} (mean)", "÷ AdamW by train [min, max]",
                      "Δ vs AdamW by val [min, max]", "fwd / bwd per step", "seconds", "failed"], rows))
    out += ["", grid_markdown(task, ts)]
    if plot_path:
        out += [f"![{task}]({plot_path})", ""]
    return "\n".join(out)


def consistency_markdown(runs: Sequence[dict]) -> str:
    """Check that every optimizer of a (task, seed) started from the same weights and saw the same
    batches (the records' hashes)."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        if r.get("status") == "error" and not r.get("init_weights_sha256"):
            continue
        g = groups.setdefault((r["task"], int(r["seed"])), {"init": set(), "batches": set(), "steps": set()})
        g["init"].add(r.get("init_weights_sha256"))
        if r.get("steps_done") == r.get("steps"):
            g["batches"].add(r.get("batch_order_sha256"))
        g["steps"].add(r.get("steps"))
    bad = [(t, s, k) for (t, s), g in groups.items() for k in ("init", "batches", "steps") if len(g[k] - {None}) > 1]
    if not bad:
        return (f"Every optimizer of each of the {len(groups)} (task, seed) pairs started from the same "
                "weights, saw the same batches (for runs that finished) and ran the same number of steps "
                "(checked from the records' hashes).")
    return "**Inconsistent records** (different " + ", ".join(f"{k} on {t} seed {s}" for t, s, k in bad) + ")."


NOTES = """## Definitions

- **Optimisation** (ratio, below 1 = lower train loss than tuned AdamW): per seed, the final train
  loss (a fixed subset of the training set, model in eval mode, after the last step) divided by that of
  the AdamW grid point with the lowest mean final train loss on the task, same seed. Cells: geometric
  mean over seeds [min, max over seeds].
- **Generalisation** (difference): per seed, the held-out test metric minus that of the AdamW grid point
  with the best mean validation metric (validation loss breaks ties), same seed; accuracy in
  percentage points. ✓: every seed favours the optimizer (a win), ✗: every seed favours AdamW (a loss),
  neither: a tie.
- **geo-mean**: over the tasks of the split, of the per-task geometric means. **seed 95% CI**: percentile
  bootstrap resampling the seeds within each task (tasks fixed, 10,000 resamples, fixed generator).
  **task 95% CI**: Student-t interval over the per-task log ratios (what a new task might give).
  **geo-mean w/o best task**: the same without the task most favourable to the optimizer.
  **tasks won / lost**: tasks where every seed's ratio is below / above 1.
- **fwd / bwd per step**: forward and backward passes per optimizer step, counted by the harness around
  the closure (backward passes an optimizer runs itself included).
- **Tuned grids**: AdamW (`torch.optim.AdamW`, 5% linear warm-up, cosine to zero) and schedule-free
  AdamW (5% warm-up, evaluated in `eval()` mode with BatchNorm statistics recomputed at its evaluation
  point) at half-decade learning rates, each grid extended at whichever edge holds a selected point
  until both selections are interior (a point beyond that diverges counts), or the cap is reached.
- **Recipe**: weight decay on weight matrices and embeddings only, 0.1 on transformers and 0.01
  elsewhere, for every optimizer with decoupled weight decay (AdamW, schedule-free AdamW, ALSALS and
  its presets, Prodigy, D-Adaptation); gradient clipping at 1.0 on transformers for every optimizer
  driven by the standard loop (not the line searches, which take the gradient inside their step).
- **Same start**: every optimizer of a (task, seed) starts from the same weights and sees the same
  batches in the same order; only the optimizer differs.
- **failed**: a non-finite loss, a crash, or a final train loss above 3 × the initial one (its ratio is
  ∞ and it ranks last in a grid).
- Wall seconds vary about ±30% on a shared machine; the forward and backward counts do not.
"""


def render_markdown(meta: dict, runs: Sequence[dict], plot_paths: dict | None = None,
                    title: str | None = None) -> str:
    summary = compare.summarize(runs)
    parts = [header_markdown(meta, runs, title)]
    for split, sp in summary["splits"].items():
        n = len(sp["tasks"])
        parts.append(f"## {split.capitalize()} split ({n} task{'s' if n != 1 else ''})" + (
            " — the tasks the defaults were chosen on" if split == "dev" else
            " — tasks the defaults never saw; nothing was chosen on them" if split == "test" else
            " — a second test split, added after the first had been seen; nothing was chosen on it"))
        parts.append("### Optimisation: final train loss ÷ AdamW best by train loss\n\n"
                     + optimisation_table(summary, split))
        parts.append("### Generalisation: test metric − AdamW best by validation\n\n"
                     + generalisation_table(summary, split))
        parts.append(f"### `{compare.HEADLINE}` seed by seed\n\n" + per_seed_table(summary, split))
    parts.append("## Tasks")
    for task, ts in summary["tasks"].items():
        parts.append(task_markdown(task, ts, (plot_paths or {}).get(task)))
    parts.append("## Consistency\n\n" + consistency_markdown(runs))
    errors = [r for r in runs if r.get("status") == "error"]
    if errors:
        rows = [[r["task"], r["optimizer"], r["seed"], str(r.get("error", ""))[:200].replace("|", "/")] for r in errors]
        parts.append("## Errors\n\n" + table(["task", "optimizer", "seed", "error"], rows))
    parts.append(NOTES)
    return "\n\n".join(parts) + "\n"


def write_report(out_dir: str, meta: dict, runs: Sequence[dict], plots: bool = True,
                 results_name: str = "results.json") -> dict:
    """Write ``results.json`` (or the name given, ``.gz`` compressed), ``results.md`` and (unless
    ``plots`` is False) the PNG plots; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": write_results(os.path.join(out_dir, results_name), meta, runs),
             "md": os.path.join(out_dir, "results.md")}
    plot_paths: dict[str, str] = {}
    if plots and runs:
        from .plots import plot_all  # matplotlib only when plotting

        plot_paths = plot_all(runs, out_dir)
    rel = {t: os.path.relpath(p, out_dir) for t, p in plot_paths.items()}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(render_markdown(meta, runs, rel))
    paths["plots"] = plot_paths
    return paths


def summary_lines(runs: Sequence[dict]) -> list[str]:
    """A few lines for the terminal: the headline's two comparisons on each split."""
    summary = compare.summarize(runs)
    out = []
    for split, sp in summary["splits"].items():
        s = sp["entries"].get(compare.HEADLINE)
        if not s:
            continue
        o, g = s.get("optimisation"), s.get("generalisation")
        if o:
            out.append(f"{split}: {compare.HEADLINE} train loss / AdamW (best by train): geo-mean {fmt(o['geomean'])} "
                       f"over {o['n_tasks']} task(s) (seed CI {fmt_interval(o['seed_interval'])}); "
                       + ", ".join(f"{t} {fmt(v)}" for t, v in o["per_task"].items()))
        if g:
            out.append(f"{split}: {compare.HEADLINE} test metric vs AdamW (best by val): "
                       f"{g['wins']} wins / {g['ties']} ties / {g['losses']} losses; "
                       + ", ".join(f"{t} {fmt_diff(v)}" for t, v in g["per_task"].items()))
    return out


__all__ = ["render_markdown", "write_report", "summary_lines"]
