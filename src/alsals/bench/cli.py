"""The ``alsals`` command: ``alsals bench ...`` (also ``python -m alsals.bench ...``).

Examples::

    alsals bench                                    # the quick suite, one job, into bench-out/quick
    alsals bench --suite quick --jobs 2 --out bench-out/quick
    alsals bench --suite full --jobs 2
    alsals bench --tasks digits_mlp,mnist1d_cnn --optimizers alsals,adam-tuned --seeds 0,1 --steps 100
    alsals bench --suite overhead [--device cuda]
    alsals bench --report-only bench-out/quick      # rebuild results.md and plots from results.json
    alsals bench --list                             # tasks, optimizers, suites
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import sys
import time
from typing import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alsals", description="alsals: learning-rate-free training for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bench = sub.add_parser(
        "bench",
        help="run the benchmark (ALSALS against its relatives, tuned Adam and other LR-free methods)",
        description="Run the benchmark: every (task, seed, optimizer) is one training run on one thread; "
                    "results.json, results.md and plots are written to --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Suites: quick = every task, seed 0, the tasks' quick step counts, all optimizers but "
               "adamsls-ref (a few minutes with --jobs 2 on 2 cores); full = seeds 0,1,2, the full step "
               "counts, every optimizer; overhead = time per step and optimizer memory of ALSALS vs "
               "Adam on an MLP, a CNN and a GPT with synthetic data.\n"
               "Names: --optimizers accepts optimizer names and the group adam-tuned "
               "(the six-point Adam grid); see --list.",
    )
    bench.add_argument("--suite", choices=["quick", "full", "overhead"], default="quick")
    bench.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks (comma or space separated); default: the suite's")
    bench.add_argument("--optimizers", nargs="+", metavar="OPT",
                       help="optimizers or groups (adam-tuned); default: the suite's")
    bench.add_argument("--seeds", nargs="+", metavar="SEED", help="seeds, e.g. 0,1,2 or 0-2; default: the suite's")
    bench.add_argument("--steps", type=_positive, help="training steps for every task (overrides the suite's)")
    bench.add_argument("--jobs", type=_positive, default=1, help="runs at once, each in its own process (default 1)")
    bench.add_argument("--out", metavar="DIR", help="output folder (default bench-out/<suite>)")
    bench.add_argument("--progress", choices=["auto", "bar", "line", "none"], default="auto",
                       help="tqdm bars per run (bar), one line per finished run (line); auto: bar on a terminal")
    bench.add_argument("--train-eval-examples", type=_positive, metavar="N",
                       help="size of the fixed training subset of the final train loss (default: the suite's)")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument("--report-only", metavar="DIR", help="rebuild results.md and the plots from DIR/results.json")
    bench.add_argument("--merge", metavar="DIR", nargs="+", default=[],
                       help="with --report-only: first merge the runs of these results.json files into DIR "
                            "(a run of the same task, optimizer and seed in a later file replaces the earlier one)")
    bench.add_argument("--list", action="store_true", help="list tasks, optimizers and suites, then exit")
    ov = bench.add_argument_group("overhead suite")
    ov.add_argument("--device", default="cpu", help="device of the overhead suite: cpu (default) or cuda")
    ov.add_argument("--models", nargs="+", metavar="MODEL", help="overhead models among mlp, cnn, gpt (default all)")
    ov.add_argument("--size", choices=["tiny", "small", "large"], default="small", help="overhead model size")
    ov.add_argument("--repeats", type=_positive, default=9, help="timed blocks per optimizer (median)")
    ov.add_argument("--warmup", type=_positive, default=100,
                    help="warm-up steps per optimizer (default 100: past ALSALS's 10 initial searches)")
    ov.add_argument("--block-steps", type=_positive, default=40,
                    help="steps per timed block (default 40: two of ALSALS's longest amortisation "
                         "intervals, so that every block holds its searches in proportion)")
    return parser


def _list(out) -> None:
    from .optimizers import GROUPS, describe
    from .runner import SUITES, available_tasks

    print("Tasks:", file=out)
    tasks = available_tasks()
    if not tasks:
        print("  (none: alsals.bench.tasks is missing)", file=out)
    for name, t in tasks.items():
        print(f"  {name:22s} {t.steps_quick:>5d} quick / {t.steps_full:>5d} full steps  {t.description}", file=out)
    print("\nOptimizers:", file=out)
    for d in describe():
        print(f"  {d['name']:20s} [{d['protocol']}] {d['description']}", file=out)
    print("\nGroups:", file=out)
    for g, names in GROUPS.items():
        print(f"  {g:20s} {', '.join(names)}", file=out)
    print("\nSuites:", file=out)
    for s in SUITES.values():
        print(f"  {s.name:8s} {s.description}", file=out)
    print("  overhead time per step and optimizer state memory, ALSALS vs Adam (synthetic data)", file=out)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_bench(args, parser) -> int:
    from . import report
    from .runner import (SUITES, load_average, machine_info, plan_runs, resolve_optimizers, resolve_tasks,
                         run_many)

    suite = SUITES[args.suite]
    try:
        tasks = resolve_tasks(_split(args.tasks) if args.tasks else suite.tasks)
        optimizers = resolve_optimizers(_split(args.optimizers) if args.optimizers else suite.optimizers)
        seeds = _seeds(args.seeds) if args.seeds else list(suite.seeds)
    except KeyError as exc:
        parser.error(exc.args[0])
    except ValueError as exc:
        parser.error(f"bad --seeds: {exc}")
    if not tasks:
        parser.error("no tasks to run (alsals.bench.tasks is missing or --tasks is empty)")
    if not optimizers:
        parser.error("no optimizers to run")
    if not seeds:
        parser.error("no seeds to run")

    out_dir = args.out or os.path.join("bench-out", args.suite)
    os.makedirs(out_dir, exist_ok=True)
    progress = args.progress
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "line"
    train_eval = args.train_eval_examples or suite.train_eval_examples
    specs = plan_runs(tasks, optimizers, seeds, steps=args.steps, steps_key=suite.steps_key,
                      train_eval_examples=train_eval)
    meta = {
        "suite": args.suite if not (args.tasks or args.optimizers or args.seeds or args.steps) else f"{args.suite} (customised)",
        "suite_description": suite.description,
        "command": " ".join(shlex.quote(a) for a in ["alsals", *args.argv]),
        "started": _now(),
        "machine": machine_info(),
        "threads_per_run": 1,
        "jobs": args.jobs,
        "loadavg_start": load_average(),
        "tasks": tasks, "optimizers": optimizers, "seeds": seeds, "steps_override": args.steps,
        "train_eval_examples": train_eval,
    }
    print(f"alsals bench: {len(specs)} runs ({len(tasks)} tasks x {len(optimizers)} optimizers x "
          f"{len(seeds)} seeds), {args.jobs} job(s), output in {out_dir}", file=sys.stderr, flush=True)
    results: list[dict] = []
    t0 = time.perf_counter()
    json_path = os.path.join(out_dir, "results.json")

    def on_result(rec: dict) -> None:
        results.append(rec)
        report.write_results_json(json_path, {**meta, "partial": True}, results)

    interrupted = False
    try:
        run_many(specs, jobs=args.jobs, progress=progress, on_result=on_result)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the report of the finished runs", file=sys.stderr)
    meta["finished"] = _now()
    meta["wall_seconds"] = time.perf_counter() - t0
    meta["loadavg_end"] = load_average()
    meta["runs_cpu_seconds"] = sum(r.get("cpu_seconds") or 0.0 for r in results)
    if interrupted:
        meta["interrupted"] = True
    order = {(s.task, s.optimizer, s.seed): i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order.get((r["task"], r["optimizer"], r["seed"]), len(order)))
    paths = report.write_report(out_dir, meta, results, plots=not args.no_plots)
    if results:
        print(report.summary_markdown(report.summarize(results)))
    n_err = sum(1 for r in results if r.get("status") == "error")
    print(f"\n{len(results)} runs in {meta['wall_seconds']:.0f} s wall ({meta['runs_cpu_seconds']:.0f} s of CPU "
          f"in the runs)"
          + (f", {n_err} failed (see results.md)" if n_err else "")
          + f"; wrote {paths['md']}, {paths['json']}"
          + (f" and {len(paths['plots'])} plots" if paths.get("plots") else ""), file=sys.stderr)
    return 130 if interrupted else 0


def run_report_only(args, parser) -> int:
    from . import report

    src = args.report_only
    path = src if src.endswith(".json") else os.path.join(src, "results.json")
    if not os.path.exists(path):
        parser.error(f"--report-only: no results.json at {path}")
    meta, runs = report.load_results(path)
    if args.merge:
        def key(run: dict) -> tuple:
            name = lambda v: v.get("name") if isinstance(v, dict) else v  # noqa: E731
            return name(run.get("task")), name(run.get("optimizer")), run.get("seed")

        merged = {key(r): r for r in runs}
        sources = [path]
        for extra in args.merge:
            _, extra_runs = report.load_results(extra)
            merged.update({key(r): r for r in extra_runs})
            sources.append(extra)
        runs = list(merged.values())
        meta = {**meta, "merged_from": sources}
        report.write_results_json(path, meta, runs)
    out_dir = os.path.dirname(path) or "."
    paths = report.write_report(out_dir, meta, runs, plots=not args.no_plots)
    print(f"wrote {paths['md']}" + (f" and {len(paths['plots'])} plots" if paths.get("plots") else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    bench_parser = parser._subparsers._group_actions[0].choices["bench"]  # for error messages
    if args.list:
        _list(sys.stdout)
        return 0
    if args.report_only:
        return run_report_only(args, bench_parser)
    if args.suite == "overhead":
        from .overhead import run_overhead_cli

        return run_overhead_cli(args, bench_parser)
    return run_bench(args, bench_parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
