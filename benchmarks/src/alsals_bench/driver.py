"""Suites, and the driver that runs one in rounds until its plan is complete.

A suite names its tasks, base seeds, fixed optimizers and tuned grids (the documented full suite runs
ALSALS and the AdamW grid on every task, and the rivals on the test tasks only: on the dev tasks
ALSALS's defaults were chosen to do well, so a comparison with rivals there favours it by
construction, and the compute is better spent on the tasks that decide). :func:`plan` is a pure
function of the suite and the records so far; it returns the runs still to do, in this order of
concerns, task by task:

1. **Base runs**: every fixed optimizer and every base point of every grid, on the base seeds.
2. **Grid refinement and extension**: in a suite with ``refine_grids`` (a coarse base grid, e.g. a
   decade apart), once a grid's points are complete on a task the two half-decade lattice neighbours
   of each selection are added (the three learning rates around the best), round after round until
   every selection has both neighbours in the grid or the suite's cap on extensions is reached (so
   a selection that moves to a new edge is extended too). Otherwise, once a grid's points are
   complete on a task, each of its two selections (best
   mean final train loss, best mean validation metric) is looked at; a selection at the edge of the
   grid adds the next half-decade point beyond that edge (all of the grid's seeds on that task).
   This repeats round after round until both selections are interior -- a point beyond may
   diverge, which makes the selection interior -- or the suite's cap on extensions is reached.
3. **Extra seeds**: once the grids are settled, the headline optimizer's per-seed results on the
   base seeds are compared against the AdamW selections (chosen on the base seeds); where the seeds
   disagree by more than the effect (:func:`alsals_bench.compare.seeds_disagree`, on either
   comparison) the task gets the suite's extra seeds for its extra-seed optimizers and for every
   point of its extra-seed grids (the grids then settle again on all their seeds).

:func:`run_suite` loops: plan, run what is missing (``--jobs`` at a time), append every finished
record to the output folder's ``runs.jsonl``, plan again -- until nothing is missing. Restarted on
the same folder it skips what is there (a crash loses at most the runs in flight). Records of other
folders given as *context* (e.g. a committed results file) take part in the decisions but are
never copied, and those of the optimizers the command runs itself are ignored: rerunning the ALSALS
variants against a committed grid is ``--optimizers alsals,alsals-anytime --context
docs/benchmarks/results.json.gz``, and ``alsals-bench report --merge`` then combines the two.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import compare
from .optimizers import GRID_FAMILIES, grid_name, parse_grid_name
from .results import RunStore, replace_by_key, run_key
from .runner import RunSpec, get_task, resolve_tasks, run_many
from .scale import SCALE_BATCH, SCALE_STEPS, SCALE_TASKS

#: the headline optimizers of the documented full suite: ALSALS told the run length and not told it
HEADLINE_OPTIMIZERS = ("alsals", "alsals-anytime")
#: the rivals of the documented full suite (run on the test split only, see :class:`Suite`)
RIVALS = (
    "sls", "sls-anneal", "salsa", "salsa-anneal", "salsa-ref", "salsa-ref-anneal", "salsa-ref-default",
    "prodigy", "dadapt-adam", "dog",
)
FULL_OPTIMIZERS = HEADLINE_OPTIMIZERS + RIVALS
#: the scale suite's fixed optimizers (and the AdamW grid)
SCALE_OPTIMIZERS = ("alsals", "sls", "salsa", "salsa-ref")
SCALE_TASK_NAMES = tuple(SCALE_TASKS)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    #: task names or splits ("dev", "test", "holdout"); None: every task
    tasks: tuple[str, ...] | None
    seeds: tuple[int, ...]
    #: "quick" -> ``task.steps_quick``; "full" -> ``task.steps_full``
    steps_key: str
    #: fixed optimizers (no grid)
    optimizers: tuple[str, ...]
    #: grid family -> lattice indices of its base points
    grids: dict = field(default_factory=dict)
    #: most points added beyond the base grid on each side
    max_extension: int = 3
    #: seeds added to a task where the base seeds disagree by more than the effect
    extra_seeds: tuple[int, ...] = ()
    extra_seed_optimizers: tuple[str, ...] = ()
    extra_seed_grids: tuple[str, ...] = ()
    train_eval_examples: int = 1024
    curve_points: int = 100
    #: a smoke-sized run (labelled so in its report)
    smoke: bool = False
    #: when set, only these optimizers and grids run on every task; the others (the rivals) run on
    #: the tasks of the ``rival_splits`` only
    core_optimizers: tuple[str, ...] | None = None
    core_grids: tuple[str, ...] = ("adamw",)
    rival_splits: tuple[str, ...] = ()
    #: a coarse grid refined: once its points are complete, the two lattice neighbours of each
    #: selection (half a decade either side) are added, until every selection has both (or the cap)
    refine_grids: bool = False

    def runs_on(self, name: str, split: str, grid: bool = False) -> bool:
        """Whether optimizer (or grid family) ``name`` runs on a task of ``split``."""
        if self.core_optimizers is None or not self.rival_splits:
            return True
        core = name in self.core_grids if grid else name in self.core_optimizers
        return core or split in self.rival_splits


SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        "SMOKE-SIZED: every dev, test and holdout task, seed 0, a fifth of the full steps; ALSALS told the run "
        "length against a 3-point AdamW grid (1e-3, 3e-3, 1e-2, extended by at most one point per side). "
        "Shows both comparisons; too small to conclude anything.",
        tasks=None, seeds=(0,), steps_key="quick", optimizers=("alsals",),
        grids={"adamw": (-6, -5, -4)}, max_extension=1, train_eval_examples=512, curve_points=50,
        smoke=True,
    ),
    "full": Suite(
        "full",
        "every dev, test and holdout task at full length, seeds 0-2 (plus 3-4 where the seeds disagree by more "
        "than the effect: ALSALS variants and the whole AdamW grid). On every task: ALSALS told the run "
        "length and not told it, and the AdamW grid; on the test and holdout tasks also the rivals: the SLS and SaLSa "
        "presets with and without ALSALS's anneal, the authors' SaLSA (use_mv=True, with the anneal, "
        "and its default), Prodigy, D-Adaptation, DoG and the schedule-free AdamW grid. Grids are "
        "extended until their selections are interior.",
        tasks=None, seeds=(0, 1, 2), steps_key="full", optimizers=FULL_OPTIMIZERS,
        grids={"adamw": GRID_FAMILIES["adamw"].base, "sfadamw": GRID_FAMILIES["sfadamw"].base},
        max_extension=3, extra_seeds=(3, 4), extra_seed_optimizers=HEADLINE_OPTIMIZERS,
        extra_seed_grids=("adamw",), train_eval_examples=1024, curve_points=100,
        core_optimizers=HEADLINE_OPTIMIZERS, core_grids=("adamw",), rival_splits=("test", "holdout"),
    ),
    "scale": Suite(
        "scale",
        "the scale suite: one byte-level GPT at 0.2M, 1M and 5M parameters (context 128) on the "
        f"Shakespeare bytes, the same token budget at every size ({SCALE_STEPS} steps of {SCALE_BATCH} "
        "windows of 128 bytes), seed 0. ALSALS told the run length against AdamW tuned coarse to fine "
        "(1e-4, 1e-3, 1e-2, then the half-decade neighbours of each selection until both are in the grid), "
        "and the SLS and SaLSa presets and the authors' SaLSA (use_mv=True). Sized for about an hour "
        "on 2 cores with --jobs 2 (see alsals_bench.scale).",
        tasks=SCALE_TASK_NAMES, seeds=(0,), steps_key="full", optimizers=SCALE_OPTIMIZERS,
        grids={"adamw": (-8, -6, -4)}, max_extension=2, train_eval_examples=256, curve_points=100,
        refine_grids=True,
    ),
}


# --------------------------------------------------------------------------------------------------
# planning


@dataclass
class PlanNote:
    """Why the planner asked for runs (or stopped), for the log and the report."""

    task: str
    what: str


def _index(runs: Sequence[dict]) -> dict[tuple, dict]:
    return {run_key(r): r for r in runs}


def _grid_ks(task_runs: Sequence[dict], family: str) -> set[int]:
    out = set()
    for r in task_runs:
        parsed = parse_grid_name(str(r["optimizer"]))
        if parsed is not None and parsed[0] == family:
            out.add(parsed[1])
    return out


def plan(suite: Suite, runs: Sequence[dict], tasks: Sequence[str], *, optimizers: Sequence[str] | None = None,
         grids: dict | None = None, seeds: Sequence[int] | None = None,
         notes: list | None = None) -> list[tuple[str, str, int]]:
    """The ``(task, optimizer, seed)`` runs still to do (see the module docstring).

    ``optimizers``, ``grids`` and ``seeds`` override the suite's. ``runs`` are every record known
    (the output folder's and the context's). ``notes`` collects :class:`PlanNote` entries.
    """
    optimizers = list(suite.optimizers if optimizers is None else optimizers)
    grids = dict(suite.grids if grids is None else grids)
    base_seeds = [int(s) for s in (suite.seeds if seeds is None else seeds)]
    have = _index(runs)
    todo: list[tuple[str, str, int]] = []
    notes = notes if notes is not None else []

    def need(task, name, seed_list):
        missing = [(task, name, int(s)) for s in seed_list if (task, name, int(s)) not in have]
        for m in missing:
            if m not in todo:
                todo.append(m)
        return missing

    all_optimizers, all_grids = optimizers, grids
    for task in tasks:
        task_runs = [r for r in runs if r["task"] == task]
        split = get_task(task).split
        optimizers = [o for o in all_optimizers if suite.runs_on(o, split)]
        grids = {f: ks for f, ks in all_grids.items() if suite.runs_on(f, split, grid=True)}
        # 1. base runs
        base_missing = []
        for name in optimizers:
            base_missing += need(task, name, base_seeds)
        for family, ks in grids.items():
            for k in ks:
                base_missing += need(task, grid_name(family, k), base_seeds)
        if base_missing:
            continue
        # seeds of this task: the base seeds, plus the extra seeds once decided
        extra = [s for s in suite.extra_seeds if s not in base_seeds]
        extra_decided = bool(extra) and any(int(r["seed"]) in extra for r in task_runs)
        # 2. grid extension, on every seed the grid runs on for this task
        pending = False
        for family, ks in grids.items():
            family_seeds = base_seeds + (extra if extra_decided and family in suite.extra_seed_grids else [])
            present = sorted(_grid_ks(task_runs, family) | set(ks))
            missing = []
            for k in present:
                missing += need(task, grid_name(family, k), family_seeds)
            if missing:
                pending = True
                continue
            fam_runs = [r for r in task_runs if int(r["seed"]) in family_seeds]
            info = get_task(task)
            points = compare.grid_points(fam_runs, family, info.metric, info.metric_higher_is_better)
            lo_cap, hi_cap = min(ks) - suite.max_extension, max(ks) + suite.max_extension
            if suite.refine_grids:
                refined = False
                for by in ("train", "val"):
                    chosen = compare.select(points, by, info.metric_higher_is_better)
                    if chosen is None:
                        continue
                    for k_new in (chosen.k - 1, chosen.k + 1):
                        if lo_cap <= k_new <= hi_cap and need(task, grid_name(family, k_new), family_seeds):
                            refined = True
                            notes.append(PlanNote(task, f"{family} best by {by} at {chosen.lr:g}: refining with "
                                                        f"{grid_name(family, k_new)}"))
                if refined:
                    pending = True
                    continue
            for by in ("train", "val"):
                chosen = compare.select(points, by, info.metric_higher_is_better)
                edge = compare.edge_of(points, chosen)
                if edge is None:
                    continue
                k_new = chosen.k + (1 if edge == "high" else -1)
                if not lo_cap <= k_new <= hi_cap:
                    notes.append(PlanNote(task, f"{family} best by {by} at the {edge} edge "
                                                f"({chosen.lr:g}); extension cap reached"))
                    continue
                if need(task, grid_name(family, k_new), family_seeds):
                    pending = True
                    notes.append(PlanNote(task, f"{family} best by {by} at the {edge} edge ({chosen.lr:g}): "
                                                f"extending to {grid_name(family, k_new)}"))
        if pending or not extra:
            continue
        # 3. extra seeds
        if not extra_decided:
            base_runs = [r for r in task_runs if int(r["seed"]) in base_seeds]
            summary = compare.summarize_task(base_runs)
            entry = summary["entries"].get(compare.HEADLINE)
            if entry is None:
                continue
            verdict = compare.seeds_disagree(entry, base_seeds)
            if not (verdict["optimisation"] or verdict["generalisation"]):
                continue
            which = " and ".join(k for k, v in verdict.items() if v)
            notes.append(PlanNote(task, f"seeds disagree by more than the effect ({which}): "
                                        f"adding seeds {', '.join(map(str, extra))}"))
        for name in suite.extra_seed_optimizers:
            if name in optimizers:
                need(task, name, extra)
        for family in suite.extra_seed_grids:
            if family in grids:
                for k in sorted(_grid_ks(task_runs, family) | set(grids[family])):
                    need(task, grid_name(family, k), extra)
    return todo


# --------------------------------------------------------------------------------------------------
# running


def run_suite(
    suite: Suite,
    out_dir: str,
    *,
    tasks: Sequence[str] | None = None,
    optimizers: Sequence[str] | None = None,
    grids: dict | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    jobs: int = 1,
    progress: str = "line",
    context: Sequence[dict] = (),
    command: str | None = None,
    provenance: dict | None = None,
    max_rounds: int = 50,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run ``suite`` into ``out_dir`` until :func:`plan` has nothing left; returns the folder's records."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    task_names = resolve_tasks(list(tasks) if tasks is not None else (list(suite.tasks) if suite.tasks else None))
    store = RunStore(out_dir)
    context = context_records(context, suite.optimizers if optimizers is None else optimizers,
                              suite.grids if grids is None else grids)
    for round_no in range(1, max_rounds + 1):
        own = store.load()
        known = replace_by_key(context + own)
        notes: list[PlanNote] = []
        todo = plan(suite, known, task_names, optimizers=optimizers, grids=grids, seeds=seeds, notes=notes)
        for n in notes:
            log(f"  plan: {n.task}: {n.what}")
        if not todo:
            log(f"{suite.name}: complete after {round_no - 1} round(s); {len(own)} runs in {out_dir}")
            return own
        log(f"{suite.name}: round {round_no}: {len(todo)} runs to do ({len(own)} done)")
        specs = [RunSpec(t, o, s, steps, suite.steps_key, suite.train_eval_examples, suite.curve_points,
                         provenance=provenance, command=command) for t, o, s in todo]
        run_many(specs, jobs=jobs, progress=progress, on_result=store.append)
    raise RuntimeError(f"{suite.name}: the plan did not settle after {max_rounds} rounds")


def in_suite(suite: Suite, run: dict) -> bool:
    """Whether ``run`` is one that ``suite`` plans (its optimizer or grid family, on a task of a split
    where it runs, at one of the suite's seeds)."""
    parsed = parse_grid_name(str(run["optimizer"]))
    split = run.get("split") or ((run.get("config") or {}).get("task") or {}).get("split")
    seeds = set(suite.seeds) | set(suite.extra_seeds)
    if int(run["seed"]) not in seeds:
        return False
    if parsed is not None:
        return parsed[0] in suite.grids and suite.runs_on(parsed[0], split, grid=True)
    return run["optimizer"] in suite.optimizers and suite.runs_on(run["optimizer"], split)


def context_records(context: Sequence[dict], optimizers: Sequence[str], grids: dict) -> list[dict]:
    """The context records that inform a run: those of optimizers it does not run itself (a rerun of
    an optimizer ignores its old records, which a later ``report --merge`` replaces)."""
    ours = set(optimizers)
    out = []
    for r in context:
        parsed = parse_grid_name(str(r["optimizer"]))
        if r["optimizer"] in ours or (parsed is not None and parsed[0] in grids):
            continue
        out.append(r)
    return out


def command_line(argv: Sequence[str], prog: str = "alsals-bench") -> str:
    return " ".join(shlex.quote(a) for a in [prog, *argv])


def wall_clock() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def grid_summary(grids: dict) -> dict:
    """``{family: [lr, ...]}`` of a grid setting, for the meta."""
    from .optimizers import lattice_lr

    return {family: [lattice_lr(k) for k in ks] for family, ks in grids.items()}


def default_out(suite: str) -> str:
    return os.path.join("bench-out", suite)


def finite_seconds(x) -> str:
    return f"{x:.0f} s" if isinstance(x, (int, float)) and math.isfinite(x) else "—"
