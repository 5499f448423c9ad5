"""Running benchmark jobs: one training run (:func:`run_one`) and many, side by side (:func:`run_many`).

One run = one task, one optimizer, one seed. What makes runs comparable:

* **Same initial weights per seed.** Python's, numpy's and torch's global RNGs are seeded with ``seed``
  right before ``task.build(seed)``; a SHA-256 of the initial ``state_dict`` is recorded
  (``init_weights_sha256``) so the report (and the tests) can check it.
* **Same batch order per seed.** Batch indices come from the harness's own ``torch.Generator`` seeded
  with ``seed`` (a fresh permutation of ``range(n_train)`` per epoch, incomplete last batch dropped),
  never from a global RNG: the authors' ``salsa`` package re-seeds numpy's and torch's global RNGs
  inside its steps, which therefore cannot change what any optimizer is fed. A SHA-256 of every index
  drawn is recorded (``batch_order_sha256``).
* **Same dropout stream at the start.** After the build and the initial evaluation, the global RNGs are
  seeded again with ``dropout_seed(seed)``.
* **Counting is done by the harness.** The closure handed to the optimizer counts each call as one
  forward, and registers a hook on the returned loss that counts each backward pass through it, so the
  backward passes an optimizer runs itself are counted too. ``forward_equivalents = fwd + 2·bwd``.

Metrics (see :func:`run_one` for the record's keys):

* ``final_train_loss``: the loss on a fixed subset of the training set (``train_eval_examples``
  examples drawn once per seed, identical for every optimizer), model in eval mode, after the last step.
  ``initial_train_loss`` is the same at the initial weights.
* ``final_batch_loss_avg``: mean of the training-batch losses over the last 5% of the steps.
* ``val`` / ``test``: ``task.evaluate(model, split)``; ``val`` selects the tuned-Adam learning rate.
* ``steps_to_target``: the first step at which the bias-corrected EMA (``β = 0.95``) of the per-step
  batch loss is ≤ ``task.target_loss``; ``seconds_to_target`` and ``fwd_equiv_to_target`` at that step.
* ``diverged``: a non-finite batch loss (the run stops there), a crash of the optimizer, a non-finite
  final loss, or ``final_train_loss > 3 × initial_train_loss``.
* ``forward_per_step`` / ``backward_per_step``: the harness's counts divided by the steps done.

Provenance: ``provenance`` (git commit and dirty flag, package versions, machine; computed once by the
command that launched the run) and ``optimizer_config`` (the constructed optimizer's full
configuration, see :func:`alsals_bench.optimizers.optimizer_config`, and the recipe around it).
* curves subsampled to at most ``curve_points`` bins: the mean batch loss per bin, and at the bin's
  last step the step size, the training seconds and the forward equivalents.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import math
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .api import REPORTED_SPLITS, SPLITS, Task
from .optimizers import RunContext, get_spec, make_adapter
from .provenance import provenance as current_provenance

#: EMA factor of the per-step batch loss used for steps-to-target
TARGET_EMA_BETA = 0.95
#: a run whose final train loss exceeds this multiple of its initial train loss has diverged
DIVERGENCE_FACTOR = 3.0
#: fraction of the last steps averaged into ``final_batch_loss_avg``
FINAL_BATCH_FRACTION = 0.05

# --------------------------------------------------------------------------------------------------
# tasks


_EXTRA_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make a task known to this process (tests, experiments). Such a task is sent to worker
    processes by pickling, so its ``build`` must be a module-level function."""
    _EXTRA_TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _EXTRA_TASKS.pop(name, None)


def _registry_tasks() -> dict[str, Task]:
    try:
        from . import tasks as task_module
    except ImportError as exc:  # pragma: no cover - a partial checkout
        if getattr(exc, "name", None) not in (f"{__package__}.tasks", "tasks"):
            raise
        return {}
    out = dict(getattr(task_module, "TASKS", {}))
    from .scale import SCALE_TASKS

    out.update(SCALE_TASKS)
    return out


def available_tasks() -> dict[str, Task]:
    """Every task by name: ``alsals_bench.tasks.TASKS`` plus tasks registered with :func:`register_task`."""
    out = _registry_tasks()
    out.update(_EXTRA_TASKS)
    return out


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task in _EXTRA_TASKS:
        return _EXTRA_TASKS[task]
    tasks = _registry_tasks()
    if task not in tasks:
        known = ", ".join(sorted(available_tasks())) or "(none: alsals_bench.tasks is missing)"
        raise KeyError(f"unknown task {task!r}; known tasks: {known}")
    return tasks[task]


def resolve_tasks(names: Iterable[str] | None) -> list[str]:
    """Check task names; ``None`` means every dev, test and holdout task of ``alsals_bench.tasks.TASKS``
    (the scale suite's, and tasks registered with :func:`register_task`, run only when named). The
    names ``dev``, ``test``, ``holdout`` and ``scale`` stand for every task of that split."""
    known = available_tasks()
    if names is None:
        return [t for t, task in _registry_tasks().items() if task.split in REPORTED_SPLITS] or list(known)
    out: list[str] = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n in SPLITS:
            expanded = [t for t, task in _registry_tasks().items() if task.split == n]
        elif n in known:
            expanded = [n]
        else:
            listing = ", ".join(sorted(known)) or "(none: alsals_bench.tasks is missing)"
            raise KeyError(f"unknown task {n!r}; known tasks: {listing} (or a split: {', '.join(SPLITS)})")
        out += [t for t in expanded if t not in out]
    return out


# --------------------------------------------------------------------------------------------------
# helpers


def dropout_seed(seed: int) -> int:
    """The global torch seed set right before training starts (identical for every optimizer)."""
    return 1_000_003 * int(seed) + 12_345


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass


def state_dict_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class BatchSampler:
    """Batch indices from the harness's own generator: a fresh permutation per epoch."""

    def __init__(self, n_train: int, batch_size: int, seed: int):
        self.n = int(n_train)
        self.bs = max(1, min(int(batch_size), self.n))
        self.per_epoch = max(1, self.n // self.bs)
        self.gen = torch.Generator().manual_seed(int(seed))
        self._perm = None
        self._pos = self.per_epoch
        self.hash = hashlib.sha256()

    def next(self) -> torch.Tensor:
        if self._pos >= self.per_epoch:
            self._perm = torch.randperm(self.n, generator=self.gen)
            self._pos = 0
        idx = self._perm[self._pos * self.bs:(self._pos + 1) * self.bs]
        self._pos += 1
        self.hash.update(idx.numpy().astype("<i8").tobytes())
        return idx


def train_subset(n_train: int, k: int, seed: int) -> torch.Tensor:
    """The fixed training subset of the clean train loss (the same for every optimizer)."""
    k = min(int(k), int(n_train))
    g = torch.Generator().manual_seed(7_777_777 + int(seed))
    return torch.randperm(int(n_train), generator=g)[:k].sort().values


@torch.no_grad()
def subset_loss(inst, model: torch.nn.Module, indices: torch.Tensor, chunk: int) -> float:
    """Mean loss over ``indices``, the model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(indices), chunk):
            idx = indices[start:start + chunk]
            loss = inst.loss(model, inst.batch(idx))
            total += float(loss) * len(idx)
            count += len(idx)
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _batchnorms(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(inst, model: torch.nn.Module, indices: torch.Tensor, batch_size: int) -> None:
    """Recompute BatchNorm running statistics at the current weights (cumulative average over the
    training batches of ``indices``)."""
    bns = _batchnorms(model)
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for start in range(0, len(indices), batch_size):
            inst.loss(model, inst.batch(indices[start:start + batch_size]))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def bin_curve(values: Sequence[float], n_bins: int, how: str) -> list[float]:
    """Subsample a per-step series into ``n_bins`` contiguous bins (``mean`` of each bin or its ``last``)."""
    n = len(values)
    if n == 0:
        return []
    n_bins = max(1, min(n_bins, n))
    out = []
    for b in range(n_bins):
        lo, hi = (b * n) // n_bins, ((b + 1) * n) // n_bins
        chunk = values[lo:hi]
        if how == "mean":
            out.append(sum(chunk) / len(chunk))
        else:
            out.append(chunk[-1])
    return out


def _steps_for(task: Task, steps: int | None, steps_key: str) -> int:
    if steps is not None:
        return int(steps)
    return int(task.steps_full if steps_key == "full" else task.steps_quick)


def _skeleton(task_name, optimizer, seed, steps) -> dict:
    nan = float("nan")
    return {
        "task": task_name, "optimizer": optimizer, "seed": int(seed), "steps": int(steps),
        "status": "error", "error": None, "diverged": True, "divergence_reason": None,
        "initial_train_loss": nan, "final_train_loss": nan, "final_batch_loss_avg": nan,
        "val": {}, "test": {}, "wall_seconds": nan, "build_seconds": nan, "eval_seconds": nan,
        "cpu_seconds": nan,
        "steps_done": 0, "forward_calls": 0, "backward_calls": 0, "forward_equivalents": 0,
        "steps_to_target": None, "seconds_to_target": None, "fwd_equiv_to_target": None,
        "step_size_final": nan, "step_size_min": nan, "step_size_max": nan,
        "forward_per_step": nan, "backward_per_step": nan,
        "optimizer_counters": {}, "init_weights_sha256": None, "batch_order_sha256": None,
        "first_batch": None, "curves": {}, "config": {}, "optimizer_config": {}, "provenance": {},
    }


# --------------------------------------------------------------------------------------------------
# one run

_INITIAL_LOSS_CACHE: dict[tuple, float] = {}


def run_one(
    task: str | Task,
    optimizer: str,
    seed: int = 0,
    steps: int | None = None,
    *,
    steps_key: str = "quick",
    train_eval_examples: int = 1024,
    curve_points: int = 500,
    progress: bool = False,
    position: int = 0,
    threads: int = 1,
    provenance: dict | None = None,
    command: str | None = None,
) -> dict:
    """Train ``task`` with ``optimizer`` for ``steps`` steps (default: the task's quick or full count)
    and return the run's record (a JSON-able dict). Exceptions of the optimizer are recorded in the
    record (``status == "error"``), not raised; unknown names raise ``KeyError``.

    ``provenance`` (default: this process's, :func:`alsals_bench.provenance.provenance`) and
    ``command`` (the command line that launched the run) are copied into the record."""
    task_obj = get_task(task)
    spec = get_spec(optimizer)
    n_steps = _steps_for(task_obj, steps, steps_key)
    rec = _skeleton(task_obj.name, optimizer, seed, n_steps)
    rec["split"] = task_obj.split
    rec["family"] = spec.family
    rec["grid"] = spec.grid
    rec["grid_lr"] = spec.grid_lr
    rec["provenance"] = provenance if provenance is not None else current_provenance()
    rec["command"] = command
    rec["config"] = {
        "optimizer": {"name": optimizer, "family": spec.family, "protocol": spec.protocol,
                      "description": spec.description, "grid": spec.grid, "grid_lr": spec.grid_lr,
                      "knows_total_steps": spec.knows_total_steps},
        "task": task_obj.describe(),
        "steps": n_steps, "steps_key": steps_key, "seed": int(seed), "threads": int(threads),
        "dropout_seed": dropout_seed(seed), "train_eval_examples": int(train_eval_examples),
        "target_ema_beta": TARGET_EMA_BETA, "divergence_factor": DIVERGENCE_FACTOR,
    }
    if threads:
        torch.set_num_threads(int(threads))

    bar = None
    cpu0 = time.process_time()
    try:
        # ---- build: identical weights per seed --------------------------------------------
        t0 = time.perf_counter()
        _seed_everything(seed)
        inst = task_obj.build(int(seed))
        model = inst.model
        rec["build_seconds"] = time.perf_counter() - t0
        rec["init_weights_sha256"] = state_dict_sha256(model)
        rec["n_parameters"] = sum(p.numel() for p in model.parameters())

        chunk = max(int(task_obj.batch_size), 256)
        subset = train_subset(inst.n_train, train_eval_examples, seed)
        # identical weights and subset for every optimizer of a seed: computed once per process
        key = (task_obj.name, int(seed), rec["init_weights_sha256"], int(train_eval_examples))
        if key not in _INITIAL_LOSS_CACHE:
            _INITIAL_LOSS_CACHE[key] = subset_loss(inst, model, subset, chunk)
        rec["initial_train_loss"] = _INITIAL_LOSS_CACHE[key]
        model.train()

        sampler = BatchSampler(inst.n_train, task_obj.batch_size, seed)
        ctx = RunContext(total_steps=n_steps, n_batches_per_epoch=sampler.per_epoch,
                         weight_decay=task_obj.weight_decay, grad_clip=task_obj.grad_clip,
                         batchnorm=task_obj.batchnorm)
        adapter = make_adapter(optimizer, model, ctx)
        rec["optimizer_config"] = adapter.config()
        rec["config"]["threads"] = torch.get_num_threads()
        _seed_everything(dropout_seed(seed))

        # ---- the counted closure ----------------------------------------------------------
        counts = {"fwd": 0, "bwd": 0}

        def _count_backward(grad):
            counts["bwd"] += 1

        current = {}

        def closure():
            counts["fwd"] += 1
            loss = inst.loss(model, current["batch"])
            if loss.requires_grad:
                loss.register_hook(_count_backward)
            return loss

        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, desc=f"{task_obj.name} {optimizer} s{seed}", position=position,
                       leave=False, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

        losses: list[float] = []
        sizes: list[float] = []
        secs: list[float] = []
        fwds: list[int] = []
        bwds: list[int] = []
        ema, ema_w = 0.0, 0.0
        train_seconds = 0.0
        crashed = None
        for step in range(n_steps):
            t_step = time.perf_counter()
            idx = sampler.next()
            if step == 0:
                rec["first_batch"] = idx[:16].tolist()
            current["batch"] = inst.batch(idx)
            try:
                loss = adapter.step(closure)
            except Exception as exc:  # the optimizer crashed: record it, stop this run
                crashed = f"{type(exc).__name__}: {exc}"
                rec["traceback"] = traceback.format_exc(limit=8)
                train_seconds += time.perf_counter() - t_step
                break
            train_seconds += time.perf_counter() - t_step
            ss = adapter.current_step_size()
            losses.append(loss)
            sizes.append(ss)
            secs.append(train_seconds)
            fwds.append(counts["fwd"])
            bwds.append(counts["bwd"])
            if not math.isfinite(loss):
                rec["divergence_reason"] = f"non-finite batch loss at step {step + 1}"
                break
            ema = TARGET_EMA_BETA * ema + (1 - TARGET_EMA_BETA) * loss
            ema_w = TARGET_EMA_BETA * ema_w + (1 - TARGET_EMA_BETA)
            if rec["steps_to_target"] is None and ema / ema_w <= task_obj.target_loss:
                rec["steps_to_target"] = step + 1
                rec["seconds_to_target"] = train_seconds
                rec["fwd_equiv_to_target"] = counts["fwd"] + 2 * counts["bwd"]
            if bar is not None:
                bar.set_postfix_str(f"loss={ema / ema_w:.4g} step={ss:.3g}", refresh=False)
                bar.update(1)

        # ---- the record -------------------------------------------------------------------
        done = len(losses)
        rec["steps_done"] = done
        rec["wall_seconds"] = train_seconds
        rec["forward_calls"] = counts["fwd"]
        rec["backward_calls"] = counts["bwd"]
        rec["forward_equivalents"] = counts["fwd"] + 2 * counts["bwd"]
        rec["forward_per_step"] = counts["fwd"] / max(done, 1)
        rec["backward_per_step"] = counts["bwd"] / max(done, 1)
        rec["batch_order_sha256"] = sampler.hash.hexdigest()
        rec["optimizer_counters"] = adapter.counters()
        if done:
            tail = losses[-max(1, math.ceil(FINAL_BATCH_FRACTION * done)):]
            rec["final_batch_loss_avg"] = sum(tail) / len(tail)
            finite_sizes = [s for s in sizes if _finite(s)]
            rec["step_size_final"] = sizes[-1]
            if finite_sizes:
                rec["step_size_min"] = min(finite_sizes)
                rec["step_size_max"] = max(finite_sizes)
            n_bins = min(curve_points, done)
            fe = [f + 2 * b for f, b in zip(fwds, bwds)]
            rec["curves"] = {
                "step": [s + 1 for s in bin_curve(list(range(done)), n_bins, "last")],
                "loss": bin_curve(losses, n_bins, "mean"),
                "step_size": bin_curve(sizes, n_bins, "last"),
                "seconds": bin_curve(secs, n_bins, "last"),
                "fwd_equiv": bin_curve(fe, n_bins, "last"),
            }

        if crashed is not None:
            rec["status"] = "error"
            rec["error"] = crashed
            rec["diverged"] = True
            rec["divergence_reason"] = f"optimizer raised {crashed}"
            return rec

        # ---- final evaluation -------------------------------------------------------------
        t_eval = time.perf_counter()
        eval_model = adapter.eval_mode()
        if adapter.evaluates_average and _batchnorms(eval_model):
            # schedule-free (and ALSALS's anytime average) evaluate at another point than they trained
            # at: schedule-free's authors recompute the BatchNorm statistics there (a pass over training
            # batches in train mode, no gradients); ALSALS's average gets the same
            recalibrate_batchnorm(inst, eval_model, subset, task_obj.batch_size)
            rec["config"]["batchnorm_recalibrated"] = True
        rec["final_train_loss"] = subset_loss(inst, eval_model, subset, chunk)
        with torch.no_grad():
            rec["val"] = {k: float(v) for k, v in inst.evaluate(eval_model, "val").items()}
            rec["test"] = {k: float(v) for k, v in inst.evaluate(eval_model, "test").items()}
        rec["eval_seconds"] = time.perf_counter() - t_eval

        reason = rec["divergence_reason"]
        if reason is None and not math.isfinite(rec["final_train_loss"]):
            reason = "non-finite final train loss"
        if reason is None and rec["final_train_loss"] > DIVERGENCE_FACTOR * rec["initial_train_loss"]:
            reason = (f"final train loss {rec['final_train_loss']:.4g} > {DIVERGENCE_FACTOR:g} x initial "
                      f"{rec['initial_train_loss']:.4g}")
        rec["divergence_reason"] = reason
        rec["diverged"] = reason is not None
        rec["status"] = "diverged" if rec["diverged"] else "ok"
        return rec
    except KeyError:
        raise
    except Exception as exc:  # the task or the harness failed: record, never crash the bench
        rec["status"] = "error"
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=8)
        rec["diverged"] = True
        rec["divergence_reason"] = rec["divergence_reason"] or f"crash: {rec['error']}"
        return rec
    finally:
        # CPU time of the whole run (build and evaluations included; one thread): robust to contention
        rec["cpu_seconds"] = time.process_time() - cpu0
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------------------
# many runs


@dataclass
class RunSpec:
    """One run to do: task, optimizer, seed and how long."""

    task: str
    optimizer: str
    seed: int
    steps: int | None = None
    steps_key: str = "quick"
    train_eval_examples: int = 1024
    curve_points: int = 500
    #: copied into the record: the launching command's provenance and command line
    provenance: dict | None = None
    command: str | None = None

    def kwargs(self) -> dict:
        return {"steps": self.steps, "steps_key": self.steps_key,
                "train_eval_examples": self.train_eval_examples, "curve_points": self.curve_points,
                "provenance": self.provenance, "command": self.command}

    @property
    def key(self) -> tuple[str, str, int]:
        """``(task, optimizer, seed)``: what identifies a run's record."""
        return (self.task, self.optimizer, int(self.seed))

    def label(self) -> str:
        return f"{self.task} {self.optimizer} seed {self.seed}"


def plan_runs(
    tasks: Sequence[str], optimizers: Sequence[str], seeds: Sequence[int], *, steps: int | None = None,
    steps_key: str = "quick", train_eval_examples: int = 1024, curve_points: int = 500,
) -> list[RunSpec]:
    """Every (task, seed, optimizer) combination, task-major."""
    return [
        RunSpec(t, o, int(s), steps, steps_key, train_eval_examples, curve_points)
        for t in tasks for s in seeds for o in optimizers
    ]


def _error_record(spec: RunSpec, message: str) -> dict:
    try:
        n = _steps_for(get_task(spec.task), spec.steps, spec.steps_key)
    except Exception:
        n = spec.steps or 0
    rec = _skeleton(spec.task, spec.optimizer, spec.seed, n)
    rec["error"] = message
    rec["divergence_reason"] = f"crash: {message}"
    return rec


def _init_worker(lock=None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if lock is not None:
        from tqdm import tqdm

        tqdm.set_lock(lock)


def _worker(task_payload, optimizer, seed, kwargs, progress, position):
    return run_one(task_payload, optimizer, seed, progress=progress, position=position, **kwargs)


def _task_payload(name: str):
    """Tasks registered at run time travel to workers pickled; registry tasks by name."""
    return _EXTRA_TASKS.get(name, name)


def _summary_line(rec: dict, done: int, total: int) -> str:
    def f(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "—"

    status = rec.get("status")
    if status == "error":
        return (f"[{done}/{total}] {rec['task']} {rec['optimizer']} seed {rec['seed']}: error "
                f"({rec.get('error')})")
    test = rec.get("test") or {}
    metric = ", ".join(f"test {k} {f(v, '.4g')}" for k, v in test.items() if k != "loss")
    return (f"[{done}/{total}] {rec['task']} {rec['optimizer']} seed {rec['seed']}: {status}; "
            f"train loss {f(rec.get('final_train_loss'), '.4g')}{', ' + metric if metric else ''}; "
            f"step size {f(rec.get('step_size_final'), '.3g')}; {f(rec.get('wall_seconds'), '.1f')} s")


def run_many(
    specs: Sequence[RunSpec],
    jobs: int = 1,
    progress: str = "none",
    on_result: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run every spec, ``jobs`` at a time (separate processes when ``jobs > 1``); results stream to
    ``on_result`` as they finish and are returned in ``specs`` order. ``progress``: ``"bar"`` (a tqdm
    bar per run, plus an overall bar), ``"line"`` (one line per finished run) or ``"none"``."""
    specs = list(specs)
    results: list[dict | None] = [None] * len(specs)
    total = len(specs)
    done = 0
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))

    overall = None
    if progress == "bar":
        from tqdm.auto import tqdm

        overall = tqdm(total=total, desc="bench", position=0, dynamic_ncols=True, file=sys.stderr)

    def finish(i: int, rec: dict) -> None:
        nonlocal done
        results[i] = rec
        done += 1
        if overall is not None:
            overall.update(1)
        elif progress == "line":
            log(_summary_line(rec, done, total))
        if on_result is not None:
            on_result(rec)

    try:
        if jobs <= 1:
            _init_worker()
            for i, spec in enumerate(specs):
                try:
                    rec = run_one(_task_payload(spec.task), spec.optimizer, spec.seed,
                                  progress=progress == "bar", position=1, **spec.kwargs())
                except Exception as exc:
                    rec = _error_record(spec, f"{type(exc).__name__}: {exc}")
                finish(i, rec)
        else:
            _run_pool(specs, jobs, progress, finish)
    finally:
        if overall is not None:
            overall.close()
    return [r for r in results if r is not None]


def _run_pool(specs, jobs, progress, finish) -> None:
    """Worker processes (spawn), at most ``jobs`` runs in flight. A dying worker fails every run in
    flight: each such run is retried once, alone; if its worker dies again it is recorded as an error."""
    ctx = mp.get_context("spawn")
    lock = ctx.RLock() if progress == "bar" else None
    if lock is not None:
        from tqdm import tqdm

        tqdm.set_lock(lock)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pending = list(range(len(specs)))[::-1]  # a stack, first spec on top
    solo: set[int] = set()  # runs retried after a worker died: they run alone
    while pending:
        pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                      initargs=(lock,))
        in_flight: dict[cf.Future, tuple[int, int]] = {}
        lost: list[int] = []
        free = list(range(1, jobs + 1))[::-1]
        try:
            while (pending or in_flight) and not lost:
                while pending and free:
                    i = pending[-1]
                    if in_flight and (i in solo or any(j in solo for j, _ in in_flight.values())):
                        break
                    pending.pop()
                    s = specs[i]
                    pos = free.pop()
                    try:
                        fut = pool.submit(_worker, _task_payload(s.task), s.optimizer, s.seed,
                                          s.kwargs(), progress == "bar", pos)
                    except cf.process.BrokenProcessPool:
                        pending.append(i)
                        free.append(pos)
                        lost.append(-1)
                        break
                    in_flight[fut] = (i, pos)
                if not in_flight:
                    break
                finished, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    i, pos = in_flight.pop(fut)
                    free.append(pos)
                    try:
                        rec = fut.result()
                    except cf.process.BrokenProcessPool:
                        lost.append(i)
                        continue
                    except Exception as exc:
                        rec = _error_record(specs[i], f"{type(exc).__name__}: {exc}")
                    finish(i, rec)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for fut, (i, _) in in_flight.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                finish(i, fut.result())
            elif lost:
                lost.append(i)
            else:  # pragma: no cover - cannot happen: the loop only ends with nothing in flight
                pending.append(i)
        for i in lost:
            if i < 0:
                continue
            if i in solo:
                finish(i, _error_record(specs[i], "worker process died (killed or crashed)"))
            else:
                solo.add(i)
                pending.append(i)


__all__ = [
    "RunSpec", "run_one", "run_many", "plan_runs", "register_task", "unregister_task", "get_task",
    "available_tasks", "resolve_tasks", "dropout_seed", "train_subset", "BatchSampler",
]
