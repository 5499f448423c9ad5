"""The generated regions of the docs, computed from a committed results file.

Every number in ``docs/benchmarks.md`` and in the README's benchmark section lives between markers
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and is rewritten by::

    alsals-bench tables docs/benchmarks/results.json.gz --overhead docs/benchmarks/overhead.json \\
        --docs docs/benchmarks.md README.md

(``--check`` exits 1 when a region is out of date; the test suite runs it on the committed files). A
region is a pure function of the results (and of the overhead file), so the docs cannot drift from
the data.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from . import compare, report, stats, targets
from .report import fmt, fmt_diff, fmt_interval, table

#: the rows of the README's compact table
README_ROWS = ("alsals", "alsals-anytime", "alsals-layerwise-lib-plateau-unwrap", "alsals-layerwise-lib-anytime-unwrap",
               "alsals-layerwise-scaled",
               "sfadamw (best by train)", "salsa-ref-default", "salsa-ref",
               "salsa-ref-anneal", "sls-anneal", "prodigy", "dadapt-adam", "dog")
_REGION = re.compile(r"(<!-- bench:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def _split_summary(summary: dict, split: str, name: str) -> dict | None:
    sp = summary["splits"].get(split)
    return None if sp is None else sp["entries"].get(name)


def _ratio_phrase(o: dict) -> str:
    seed_cross = ", crosses 1" if o["seed_interval_crosses_1"] else ""
    task_cross = ", crosses 1" if o["task_interval_crosses_1"] else ""
    task = (f"; task 95% CI {fmt_interval(o['task_interval'])}{task_cross}"
            if stats.finite(o["task_interval"][0]) else "")
    return f"{fmt(o['geomean'])}× (seed 95% CI {fmt_interval(o['seed_interval'])}{seed_cross}{task})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _split_phrase(won: list, lost: list, mixed: list, per: dict) -> str:
    """"lower on every seed of …; higher on every seed of …; the seeds split on …" (parts present)."""
    parts = []
    if won:
        parts.append(f"lower on every seed of {_listed(won, per)}")
    if lost:
        parts.append(f"higher on every seed of {_listed(lost, per)}")
    if mixed:
        parts.append(f"the seeds split on {_listed(mixed, per)}")
    return "; ".join(parts)


def _task_list(values: dict, digits: int = 3, diff: bool = False) -> str:
    f = fmt_diff if diff else fmt
    return ", ".join(f"{t} {f(v, digits if not diff else 2)}" for t, v in values.items())


def _listed(names: Sequence[str], values: dict) -> str:
    return ", ".join(f"`{t}` ({fmt(values[t])})" for t in names) or "none"


def summary_region(summary: dict, split: str) -> str:
    """Bullet points: where ALSALS wins and loses on ``split``, with the numbers."""
    s = _split_summary(summary, split, compare.HEADLINE)
    if s is None:
        return f"(no `{compare.HEADLINE}` runs on the {split} split)"
    lines = []
    o, g = s.get("optimisation"), s.get("generalisation")
    tasks = s["tasks"]
    if o:
        per = o["per_task"]
        won = [t for t in tasks if summary["tasks"][t]["entries"][compare.HEADLINE]["optimisation"]["max"] < 1]
        lost = [t for t in tasks if not (summary["tasks"][t]["entries"][compare.HEADLINE]["optimisation"]["min"] <= 1)]
        mixed = [t for t in tasks if t not in won and t not in lost]
        lines.append(
            f"- **Optimisation** ({split}, {_plural(o['n_tasks'], 'task')}): final train loss "
            f"{_ratio_phrase(o)} that of AdamW tuned on train loss (geometric mean; "
            f"{fmt(o['geomean_without_most_favourable'])}× without the most favourable task, "
            f"`{o['most_favourable']}`). Lower on every seed: {_listed(won, per)}; "
            f"higher on every seed: {_listed(lost, per)}; seeds split: {_listed(mixed, per)}.")
    if g:
        parts = []
        for t in tasks:
            e = summary["tasks"][t]["entries"][compare.HEADLINE]["generalisation"]
            unit = report.METRIC_LABEL.get(summary["tasks"][t]["metric"], summary["tasks"][t]["metric"])
            parts.append(f"`{t}` {fmt_diff(e['mean'])} {unit} ({e['verdict']})")
        units = []
        for metric, u in g["by_metric"].items():
            units.append(f"mean Δ {report.METRIC_LABEL.get(metric, metric)} {fmt_diff(u['mean'])} "
                         f"(seed CI {fmt_interval(u['seed_interval'], diff=True)}, "
                         f"task CI {fmt_interval(u['task_interval'], diff=True)}, "
                         f"{'higher' if u['higher_is_better'] else 'lower'} is better)")
        lines.append(
            f"- **Generalisation** ({split}): test metric against AdamW tuned on validation: "
            f"{g['wins']} wins, {g['ties']} ties, {g['losses']} losses (a win or loss: every seed agrees). "
            + "; ".join(parts) + ". " + "; ".join(units) + ".")
    return "\n".join(lines)


def _verdicts(summary: dict, split: str, name: str) -> dict:
    """Tasks of ``split`` by generalisation verdict, each with its mean difference and unit."""
    out: dict = {"win": [], "tie": [], "loss": []}
    for t in summary["splits"][split]["tasks"]:
        e = summary["tasks"][t]["entries"].get(name)
        g = (e or {}).get("generalisation")
        if g and g["verdict"]:
            unit = report.METRIC_LABEL.get(summary["tasks"][t]["metric"], summary["tasks"][t]["metric"])
            unit = unit.replace("accuracy (points)", "accuracy points")
            out[g["verdict"]].append(f"`{t}` ({fmt_diff(g['mean'])} {unit})")
    return out


def headline_region(summary: dict) -> str:
    """One paragraph per split: both comparisons of the headline optimizer on the test split, the
    holdout split, then the dev split."""
    parts = []
    for split, intro in (("test", "**On the test split** (tasks the defaults never saw)"),
                         ("holdout", "**On the holdout split** (tasks added after the test split had been seen)"),
                         ("dev", "**On the dev split** (the tasks the defaults were chosen on: in-sample)")):
        s = _split_summary(summary, split, compare.HEADLINE)
        if not s or not s.get("optimisation"):
            continue
        o, g = s["optimisation"], s.get("generalisation")
        tasks = s["tasks"]
        per = o["per_task"]
        entry = {t: summary["tasks"][t]["entries"][compare.HEADLINE]["optimisation"] for t in tasks}
        won = [t for t in tasks if entry[t]["max"] < 1]
        lost = [t for t in tasks if not entry[t]["min"] <= 1]
        without = (f"; {fmt(o['geomean_without_most_favourable'])}× without its most favourable task"
                   if stats.finite(o["geomean_without_most_favourable"]) else "")
        mixed = [t for t in tasks if t not in won and t not in lost]
        text = (f"{intro}, `ALSALS(total_steps=T)` ends at {_ratio_phrase(o)} the final train loss of AdamW "
                f"tuned on train loss (geometric mean over {_plural(o['n_tasks'], 'task')}{without}): "
                f"{_split_phrase(won, lost, mixed, per)}.")
        if g:
            v = _verdicts(summary, split, compare.HEADLINE)
            text += (f" On the held-out test metric against AdamW tuned on validation it wins on "
                     f"{', '.join(v['win']) or 'no task'}, loses on {', '.join(v['loss']) or 'no task'}"
                     + (f" and ties on {', '.join(v['tie'])}" if v["tie"] else "") + ".")
        parts.append(text)
    return "\n\n".join(parts) or f"(no `{compare.HEADLINE}` runs)"


def rivals_region(summary: dict, split: str = "test") -> str:
    """One sentence: the optimizers with no learning rate to tune, by geo-mean ratio on ``split``,
    and the tuned schedule-free AdamW for reference."""
    sp = summary["splits"].get(split)
    if sp is None:
        return f"(no runs of the {split} split)"
    free, tuned = [], []
    for name, s in sp["entries"].items():
        o = (s or {}).get("optimisation")
        if not o or s["missing"]:
            continue
        g = s.get("generalisation") or {}
        cell = (f"`{name}` {fmt(o['geomean'])}× [{fmt_interval(o['seed_interval'])}], "
                f"{g.get('wins', '—')} / {g.get('ties', '—')} / {g.get('losses', '—')}")
        if name.startswith(("adamw", "sfadamw")):
            if name.startswith("sfadamw"):
                tuned.append(cell)
        else:
            free.append((o["geomean"] if stats.finite(o["geomean"]) else float("inf"), cell))
    free.sort(key=lambda x: x[0])
    return (f"Optimizers with no learning rate to tune, on the {split} split, by the geometric mean of their "
            "train-loss ratio to AdamW tuned on train loss [seed 95% CI], then held-out wins / ties / losses "
            "against AdamW tuned on validation: " + "; ".join(c for _, c in free) + ". For reference, the tuned "
            "schedule-free AdamW: " + "; ".join(tuned) + ".")


def readme_table(summary: dict) -> str:
    """The README's compact table: both comparisons on each split for a few rows."""
    rows = []
    for name in README_ROWS:
        cells = [report.row_label(name)]
        any_found = False
        for split in ("test", "holdout", "dev"):
            s = _split_summary(summary, split, name)
            o = (s or {}).get("optimisation")
            g = (s or {}).get("generalisation")
            any_found |= bool(o)
            cells.append("—" if not o else f"{fmt(o['geomean'])} [{fmt_interval(o['seed_interval'])}]")
            cells.append("—" if not g else f"{g['wins']} / {g['ties']} / {g['losses']}")
        test = _split_summary(summary, "test", name)
        cells.append(report.fwd_bwd(summary, test["tasks"], name) if test else "—")
        if any_found:
            rows.append(cells)
    return table(["optimizer", "test: train loss ÷ AdamW (by train), geo-mean [seed CI]",
                  "test: held-out vs AdamW (by val), W / T / L",
                  "holdout: train loss ÷ AdamW", "holdout: held-out W / T / L",
                  "dev: train loss ÷ AdamW", "dev: held-out W / T / L", "fwd / bwd per step (test)"], rows)


def grids_region(summary: dict) -> str:
    rows = []
    for task, ts in summary["tasks"].items():
        cells = [f"`{task}`", ts["split"]]
        for family in ("adamw", "sfadamw"):
            refs = [ts["references"].get(compare.reference_label(family, by)) for by in ("train", "val")]
            if refs[0] is None:
                cells += ["—", "—"]
                continue
            lrs = [p.lr for p in refs[0].points]
            cells.append(f"{min(lrs):g} … {max(lrs):g} ({len(lrs)} points)")
            cells.append(" / ".join(f"{r.point.lr:g}" + (f" (**{r.edge} edge**)" if r.edge else "")
                                    for r in refs if r and r.point))
        rows.append(cells)
    return table(["task", "split", "AdamW grid run", "AdamW lr by train / by val", "schedule-free grid run",
                  "schedule-free lr by train / by val"], rows)


def setup_region(summary: dict) -> str:
    rows = []
    for task, ts in summary["tasks"].items():
        info = ts["info"]
        seeds = sorted({s for e in ts["entries"].values() for s in e["seeds"]})
        head = ts["entries"].get(compare.HEADLINE)
        rows.append([f"`{task}`", info.get("split"), info.get("family"), info.get("description", ""),
                     info.get("batch_size"), ", ".join(map(str, ts["steps"])),
                     f"{info.get('weight_decay')}" + (f", clip {info['grad_clip']}" if info.get("grad_clip") else ""),
                     ", ".join(map(str, head["seeds"])) if head else ", ".join(map(str, seeds))])
    return table(["task", "split", "family", "model and data", "batch", "steps", "weight decay, clipping",
                  f"seeds ({compare.HEADLINE})"], rows)


def provenance_region(meta: dict, runs: Sequence[dict], source: str) -> str:
    lines = [f"Generated from `{source}` ({len(runs)} runs) by `alsals-bench tables`."]
    header = report.header_markdown(meta, runs, title="x").split("\n", 2)[-1].strip()
    return "\n".join(lines) + "\n\n" + header


def overhead_region(overhead: dict | None) -> str:
    if not overhead:
        return "(no overhead results given)"
    from .overhead import render_table

    meta = overhead["meta"]
    m = meta["provenance"]["machine"]
    return (f"`{meta.get('command')}` on {m.get('cpu_model')}, {meta['threads']} thread, "
            f"{meta['warmup']} warm-up steps, {meta['repeats']} interleaved blocks of {meta['block_steps']} "
            f"steps; ratios are median [min, max] of the paired per-repetition ratios.\n\n"
            + render_table(overhead["rows"]))


def overhead_summary(overhead: dict | None, name: str = "alsals") -> str:
    """One line: ALSALS's median paired ratio against each reference, over the cases."""
    if not overhead:
        return "(no overhead results given)"
    rows = [r for r in overhead["rows"] if r["optimizer"] == name and r.get("ratios")]
    parts = []
    for ref in ("adam-foreach", "adam-fused", "adam-default"):
        vals = [r["ratios"][ref]["median"] for r in rows if ref in r["ratios"]]
        if vals:
            parts.append(f"{min(vals):.2f}–{max(vals):.2f}× `{ref.replace('adam-', 'Adam ')}`")
    fwd = [r["fwd_per_step"] for r in rows]
    return (f"Time per step of `{name}` over {len(rows)} models: " + ", ".join(parts)
            + (" (the default loop, labelled: CPU torch's single-tensor Adam)" if parts else "")
            + (f"; {min(fwd):.2f}–{max(fwd):.2f} forwards and 1 backward per step." if fwd else "."))


def loo_region(summary: dict, split: str = "dev") -> str:
    """The leave-one-task-out table of the default choice (:func:`compare.leave_one_task_out`), for
    the run-length-aware candidates and the anytime ones."""
    parts = []
    for title, candidates in (("told the run's length", compare.DEFAULT_CANDIDATES),
                              ("not told the run's length", compare.ANYTIME_CANDIDATES)):
        rows = compare.leave_one_task_out(summary, split, candidates)
        if not rows:
            parts.append(f"({title}: no runs of every candidate on the {split} split)")
            continue
        body = [[f"`{r['task']}`", ", ".join(map(str, r["seeds"])), f"`{r['choice']}`", fmt(r["score_without"]),
                 fmt(r["ratio"]),
                 "yes" if r["passes"] else "**no**", r["verdict"] or "—",
                 f"`{r['best_on_task']}` ({fmt(r['best_ratio'])})"] for r in rows]
        passed = sum(r["passes"] for r in rows)
        parts.append(f"**{title.capitalize()}** (candidates: {', '.join(f'`{c}`' for c in candidates)}); "
                     f"the choice without the task beats tuned AdamW on it on {passed} of {len(rows)} tasks.\n\n"
                     + report.table(["left-out task", "seeds compared", "chosen on the other tasks", "their geo-mean",
                                     "ratio on the left-out task", "below 1", "held-out verdict",
                                     "best candidate on the task"], body))
    return "\n\n".join(parts)


def regions(meta: dict, runs: Sequence[dict], overhead: dict | None = None,
            source: str = "results") -> OrderedDict[str, str]:
    """Every generated region by name."""
    summary = compare.summarize(runs)
    out: OrderedDict[str, str] = OrderedDict()
    out["provenance"] = provenance_region(meta, runs, source)
    out["setup"] = setup_region(summary)
    out["grids"] = grids_region(summary)
    out["readme-table"] = readme_table(summary)
    out["headline"] = headline_region(summary)
    out["rivals-test"] = rivals_region(summary, "test")
    out["rivals-holdout"] = rivals_region(summary, "holdout")
    for split in ("test", "holdout"):
        out[f"targets-{split}"] = targets.render(summary, split)
        out[f"seeds-{split}-layerwise"] = (report.per_seed_table(summary, split, targets.LAYERWISE_TOLD)
                                           if split in summary["splits"] else f"(no runs of the {split} split)")
    out["loo-dev"] = loo_region(summary, "dev")
    out["loo-test"] = loo_region(summary, "test")
    for split in ("test", "holdout", "dev"):
        if split not in summary["splits"]:
            for kind in ("summary", "optimisation", "generalisation", "seeds"):
                out[f"{kind}-{split}"] = f"(no runs of the {split} split in `{source}`)"
            continue
        out[f"summary-{split}"] = summary_region(summary, split)
        out[f"optimisation-{split}"] = report.optimisation_table(summary, split)
        out[f"generalisation-{split}"] = report.generalisation_table(summary, split)
        out[f"seeds-{split}"] = report.per_seed_table(summary, split)
    out["overhead"] = overhead_region(overhead)
    out["overhead-summary"] = overhead_summary(overhead)
    return out


def rewrite(text: str, regions_: dict) -> tuple[str, list[str]]:
    """``text`` with every known region's body replaced; also the names of unknown regions."""
    unknown: list[str] = []

    def sub(match: re.Match) -> str:
        name = match["name"]
        if name not in regions_:
            unknown.append(name)
            return match.group(0)
        return f"{match.group(1)}{regions_[name].rstrip()}\n{match.group(4)}"

    return _REGION.sub(sub, text), unknown


def rewrite_file(path: str, regions_: dict, check: bool = False) -> tuple[bool, list[str]]:
    """Rewrite the regions of ``path`` (unless ``check``, or a region is unknown: then nothing is
    written); returns (changed, unknown region names)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new, unknown = rewrite(text, regions_)
    changed = new != text
    if changed and not check and not unknown:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return changed, unknown


def region_names(text: str) -> list[str]:
    return [m["name"] for m in _REGION.finditer(text)]


__all__ = ["regions", "rewrite", "rewrite_file", "region_names", "summary_region", "readme_table"]
