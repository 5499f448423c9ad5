"""The ``alsals-bench`` command (also ``python -m alsals_bench``).

Examples::

    alsals-bench run --suite quick --jobs 2 --out bench-out/quick     # make bench
    alsals-bench run --suite full --jobs 2 --out bench-out/full       # the documented run (hours)
    alsals-bench run --tasks digits_mlp,test --optimizers alsals adamw-grid --seeds 0,1 --steps 100
    alsals-bench run --suite full --optimizers alsals alsals-anytime \\
        --context docs/benchmarks/results.json.gz --out bench-out/alsals-only   # rerun ALSALS only
    alsals-bench report bench-out/merged --merge docs/benchmarks/results.json.gz bench-out/alsals-only
    alsals-bench overhead --out bench-out/overhead
    alsals-bench overhead --sweep --out bench-out/sweep                   # make bench-sweep (~14 min)
    alsals-bench run --suite scale --jobs 2 --out bench-out/scale        # make bench-scale (45-60 min)
    alsals-bench tables docs/benchmarks/results.json.gz --docs docs/benchmarks.md README.md
    alsals-bench list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence


def _split(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"] -> ["a", "b", "c"]``; ``None`` stays ``None``."""
    if values is None:
        return None
    out = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def _seeds(values: Sequence[str] | None) -> list[int] | None:
    items = _split(values)
    if items is None:
        return None
    seeds: list[int] = []
    for item in items:
        span = re.fullmatch(r"(\d+)-(\d+)", item)
        if span:
            seeds += list(range(int(span[1]), int(span[2]) + 1))
        else:
            seeds.append(int(item))
    return seeds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _suite_names() -> list[str]:
    from .driver import SUITES

    return list(SUITES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alsals-bench",
        description="The alsals benchmark: ALSALS against tuned AdamW, its relatives and other "
                    "learning-rate-free optimizers, on dev and test tasks with offline data.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run a suite (resumable: rerun on the same --out to continue)")
    run.add_argument("--suite", choices=list(_suite_names()), default="quick")
    run.add_argument("--tasks", nargs="+", metavar="TASK",
                     help="tasks or splits (dev, test, holdout, scale), comma or space separated; default: the suite's")
    run.add_argument("--optimizers", nargs="+", metavar="OPT",
                     help="optimizers, grid points (adamw-lr1e-3) or grids to tune (adamw-grid, "
                          "sfadamw-grid); default: the suite's")
    run.add_argument("--seeds", nargs="+", metavar="SEED", help="base seeds, e.g. 0,1,2 or 0-2")
    run.add_argument("--steps", type=_positive, help="training steps for every task (overrides the suite's)")
    run.add_argument("--jobs", type=_positive, default=1, help="runs at once, each in its own process")
    run.add_argument("--out", metavar="DIR", help="output folder (default bench-out/<suite>)")
    run.add_argument("--context", nargs="+", metavar="RESULTS", default=[],
                     help="results files or folders whose records inform the plan (grid selections, "
                          "extra seeds) without being rerun or copied")
    run.add_argument("--progress", choices=["auto", "bar", "line", "none"], default="auto")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    rep = sub.add_parser("report", help="rebuild results.md (and plots) of a folder, optionally merging others")
    rep.add_argument("out", metavar="DIR", help="the folder to (re)write")
    rep.add_argument("--merge", nargs="+", metavar="SRC", default=[],
                     help="results files or folders merged after DIR's own (a later record of the same "
                          "task, optimizer and seed replaces an earlier one)")
    rep.add_argument("--gzip", action="store_true", help="write results.json.gz instead of results.json")
    rep.add_argument("--suite", choices=list(_suite_names()),
                     help="keep only the records this suite plans (e.g. drop runs of an aborted wider command)")
    rep.add_argument("--no-plots", action="store_true")

    ov = sub.add_parser("overhead", help="time per step vs torch.optim.Adam (foreach, fused, default loop)")
    ov.add_argument("--cases", nargs="+", metavar="CASE", help="overhead cases (default: all; see list)")
    ov.add_argument("--optimizers", nargs="+", metavar="OPT", help="optimizers to time besides the Adam references")
    ov.add_argument("--device", default="cpu")
    ov.add_argument("--repeats", type=_positive, help="timed blocks per optimizer (default 9; sweep: per size)")
    ov.add_argument("--warmup", type=_positive, help="warm-up steps per optimizer (default 100; sweep: per size)")
    ov.add_argument("--block-steps", type=_positive, help="steps per timed block (default 40; sweep: per size)")
    ov.add_argument("--sweep", action="store_true",
                    help="the model-size sweep (GPT 0.2M-20M parameters; also --cases gpt-sizes): time, "
                         "ratios and peak memory per size")
    ov.add_argument("--sizes", nargs="+", metavar="SIZE",
                    help="sizes of the sweep (default gpt-0.2M gpt-1M gpt-5M gpt-20M; also gpt-50M, gpt-tiny)")
    ov.add_argument("--no-memory", action="store_true", help="sweep: skip the peak-memory probes")
    ov.add_argument("--out", metavar="DIR", help="output folder (default bench-out/overhead, sweep: bench-out/sweep)")

    tab = sub.add_parser("tables", help="regenerate the generated regions of the docs from a results file")
    tab.add_argument("results", help="results file or folder")
    tab.add_argument("--docs", nargs="+", metavar="MD", default=[],
                     help="markdown files whose <!-- bench:NAME --> regions are rewritten")
    tab.add_argument("--overhead", metavar="JSON", help="the overhead.json of the overhead tables")
    tab.add_argument("--check", action="store_true", help="exit 1 if a region is out of date (no writing)")
    tab.add_argument("--print", dest="print_all", action="store_true", help="print every region")

    sub.add_parser("list", help="tasks, optimizers, grids and suites")
    return parser


def _list(out) -> None:
    from .driver import SUITES
    from .optimizers import GRID_FAMILIES, GROUPS, describe
    from .runner import available_tasks

    print("Tasks:", file=out)
    for name, t in available_tasks().items():
        print(f"  {name:20s} [{t.split}, {t.family}] {t.steps_quick:>5d} quick / {t.steps_full:>5d} full  "
              f"{t.description}", file=out)
    print("\nOptimizers:", file=out)
    for d in describe():
        print(f"  {d['name']:26s} [{d['family']}, {d['protocol']}] {d['description']}", file=out)
    print("\nGrids (any point of the half-decade lattice is a valid name, e.g. adamw-lr1e-5):", file=out)
    for name, fam in GRID_FAMILIES.items():
        print(f"  {name + '-grid':26s} {fam.description}; base: {', '.join(GROUPS[name + '-grid'])}", file=out)
    print("\nSuites:", file=out)
    for s in SUITES.values():
        print(f"  {s.name:8s} {s.description}", file=out)
    from .overhead import CASES

    print("\nOverhead cases:", file=out)
    for c in CASES:
        print(f"  {c.name:26s} {c.description}", file=out)
    from .gpt_sizes import SIZES
    from .sweep import DEFAULT_SIZES, SWEEP

    print("\nSweep sizes (overhead --sweep; * = default):", file=out)
    for label, s in SWEEP.items():
        shape = SIZES[label]
        print(f"  {label + (' *' if label in DEFAULT_SIZES else ''):26s} {shape.parameters:>11,d} parameters "
              f"(d_model {shape.d_model}, {shape.n_layers} layers), batch {s.batch_size}, {s.warmup} warm-up, "
              f"{s.repeats} x {s.block_steps} steps", file=out)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _load_many(paths: Sequence[str], parser) -> list[tuple[str, dict, list[dict]]]:
    from .results import load_results

    out = []
    for path in paths:
        try:
            meta, runs = load_results(path)
        except FileNotFoundError as exc:
            parser.error(str(exc))
        out.append((path, meta, runs))
    return out


def run_command(args, parser) -> int:
    from . import report
    from .driver import SUITES, command_line, grid_summary, run_suite
    from .optimizers import GRID_FAMILIES, resolve_optimizers
    from .provenance import load_average, provenance
    from .results import RunStore, replace_by_key
    from .runner import resolve_tasks

    suite = SUITES[args.suite]
    try:
        tasks = resolve_tasks(_split(args.tasks) if args.tasks else (list(suite.tasks) if suite.tasks else None))
        seeds = _seeds(args.seeds) if args.seeds else list(suite.seeds)
        optimizers, grids = None, None
        if args.optimizers:
            names = _split(args.optimizers)
            grids = {}
            fixed = []
            for n in names:
                family = n[: -len("-grid")] if n.endswith("-grid") else None
                if family in GRID_FAMILIES:
                    grids[family] = suite.grids.get(family, GRID_FAMILIES[family].base)
                else:
                    fixed.append(n)
            optimizers = resolve_optimizers(fixed)
    except KeyError as exc:
        parser.error(exc.args[0])
    except ValueError as exc:
        parser.error(f"bad --seeds: {exc}")
    if not tasks:
        parser.error("no tasks to run")
    if not seeds:
        parser.error("no seeds to run")
    out_dir = args.out or os.path.join("bench-out", args.suite)
    os.makedirs(out_dir, exist_ok=True)
    progress = args.progress
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "line"
    command = command_line(args.argv)
    prov = provenance()
    context = []
    for _, _, runs in _load_many(args.context, parser):
        context += runs
    customised = bool(args.tasks or args.optimizers or args.seeds or args.steps)
    meta = {
        "suite": args.suite + (" (customised)" if customised else ""), "smoke": suite.smoke,
        "suite_description": suite.description, "command": command, "started": _now(),
        "jobs": args.jobs, "loadavg_start": load_average(), "provenance": prov,
        "tasks": tasks, "seeds": seeds, "optimizers": optimizers or list(suite.optimizers),
        "grids": grid_summary(grids if grids is not None else suite.grids), "steps_override": args.steps,
        "context": list(args.context),
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, default=str)
    if prov["git"].get("dirty"):
        print("alsals-bench: warning: the git tree is dirty; the records say so", file=sys.stderr)
    print(f"alsals-bench: {args.suite} suite, {len(tasks)} tasks, seeds {seeds}, {args.jobs} job(s), "
          f"output in {out_dir}", file=sys.stderr, flush=True)
    if optimizers and suite.core_optimizers is not None:
        # optimizers named on the command line run on every task given (the suite's rule that rivals run
        # on the test split only is for its default list)
        suite = dataclasses.replace(suite, core_optimizers=tuple(suite.core_optimizers) + tuple(optimizers))
    t0 = time.perf_counter()
    interrupted = False
    try:
        run_suite(suite, out_dir, tasks=tasks, optimizers=optimizers, grids=grids, seeds=seeds, steps=args.steps,
                  jobs=args.jobs, progress=progress, context=context, command=command, provenance=prov)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the report of the finished runs (rerun the command to continue)",
              file=sys.stderr)
    runs = replace_by_key(RunStore(out_dir).load())
    meta.update({"finished": _now(), "wall_seconds": time.perf_counter() - t0, "loadavg_end": load_average(),
                 "commands": [command], "interrupted": interrupted})
    paths = report.write_report(out_dir, meta, runs, plots=not args.no_plots)
    scale_paths = _scale_report(out_dir, meta, runs, plots=not args.no_plots)
    for line in report.summary_lines(runs):
        print(line)
    n_err = sum(1 for r in runs if r.get("status") == "error")
    print(f"\n{len(runs)} runs in {out_dir}; this command: {meta['wall_seconds']:.0f} s wall"
          + (f"; {n_err} failed (see results.md)" if n_err else "")
          + f"; wrote {paths['md']}, {paths['json']}"
          + (f" and {len(paths['plots'])} plots" if paths.get("plots") else "")
          + (f"; {scale_paths['md']}" if scale_paths else ""), file=sys.stderr)
    return 130 if interrupted else 0


def _scale_report(out_dir: str, meta: dict, runs, plots: bool) -> dict | None:
    """``scale.md`` (and its plots) when the records hold scale-suite tasks."""
    from . import scale_report

    if not scale_report.scale_runs(runs):
        return None
    return scale_report.write_scale_report(out_dir, meta, runs, plots=plots)


def report_command(args, parser) -> int:
    from . import report
    from .results import RESULTS_FILE, find_results, merge

    own = []
    try:
        find_results(args.out)
        own = [args.out]
    except FileNotFoundError:
        if not args.merge:
            parser.error(f"report: no results in {args.out} (and nothing to --merge)")
    sources = _load_many(own + list(args.merge), parser)
    meta, runs = merge(sources)
    if args.suite:
        from .driver import SUITES, in_suite

        kept = [r for r in runs if in_suite(SUITES[args.suite], r)]
        meta["dropped_outside_suite"] = {"suite": args.suite, "records": len(runs) - len(kept)}
        meta.update(suite=args.suite, suite_description=SUITES[args.suite].description,
                    smoke=SUITES[args.suite].smoke)
        runs = kept
    name = RESULTS_FILE + (".gz" if args.gzip else "")
    paths = report.write_report(args.out, meta, runs, plots=not args.no_plots, results_name=name)
    scale_paths = _scale_report(args.out, meta, runs, plots=not args.no_plots)
    print(f"wrote {paths['md']} and {paths['json']} ({len(runs)} runs)"
          + (f" and {len(paths['plots'])} plots" if paths.get("plots") else "")
          + (f"; {scale_paths['md']}" if scale_paths else ""))
    return 0


def tables_command(args, parser) -> int:
    from . import tables
    from .results import load_results

    try:
        meta, runs = load_results(args.results)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    overhead = None
    if args.overhead:
        with open(args.overhead, encoding="utf-8") as f:
            overhead = json.load(f)
    regions = tables.regions(meta, runs, overhead, source=args.results)
    if args.print_all:
        for name, text in regions.items():
            print(f"<!-- bench:{name} -->\n{text}\n<!-- /bench:{name} -->\n")
    stale = []
    for path in args.docs:
        changed, unknown = tables.rewrite_file(path, regions, check=args.check)
        if unknown:
            parser.error(f"{path}: unknown generated regions {', '.join(unknown)}")
        if changed:
            stale.append(path)
    if args.check and stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    if not args.check:
        for path in stale:
            print(f"rewrote {path}")
    return 0


def overhead_command(args, parser) -> int:
    from .sweep import run_sweep_cli, wants_sweep

    if wants_sweep(args):
        return run_sweep_cli(args, parser)
    from .overhead import run_overhead_cli

    return run_overhead_cli(args, parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    sub = parser._subparsers._group_actions[0].choices[args.command]  # for error messages
    if args.command == "list":
        _list(sys.stdout)
        return 0
    handler = {"run": run_command, "report": report_command, "tables": tables_command,
               "overhead": overhead_command}[args.command]
    return handler(args, sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
