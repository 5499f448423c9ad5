"""Fake run records (no training) for the tests of the selections, comparisons and the planner."""

from __future__ import annotations

import math

from alsals_bench.optimizers import grid_name, parse_grid_name


def record(task: str, optimizer: str, seed: int, train: float, test: float = 0.9, val: float | None = None,
           *, split: str = "test", metric: str = "accuracy", higher: bool = True, val_loss: float | None = None,
           status: str = "ok", steps: int = 10, fwd: float = 1.0, command: str | None = None) -> dict:
    """A record with the fields the reports read."""
    val = test if val is None else val
    parsed = parse_grid_name(optimizer)
    diverged = status != "ok" or not math.isfinite(train)
    return {
        "task": task, "optimizer": optimizer, "seed": seed, "steps": steps, "steps_done": steps,
        "status": status, "diverged": diverged, "split": split,
        "final_train_loss": train if math.isfinite(train) else None,
        "initial_train_loss": 2.3,
        "val": {"loss": val_loss if val_loss is not None else 1.0 - (val if higher else -val), metric: val},
        "test": {"loss": 1.0, metric: test},
        "forward_per_step": fwd, "backward_per_step": 1.0, "forward_calls": int(fwd * steps),
        "backward_calls": steps, "wall_seconds": 1.0, "cpu_seconds": 1.0,
        "grid": parsed[0] if parsed else None,
        "init_weights_sha256": f"{task}-{seed}", "batch_order_sha256": f"b-{task}-{seed}",
        "command": command,
        "config": {"task": {"name": task, "split": split, "family": "tabular", "kind": "classification",
                            "metric": metric, "metric_higher_is_better": higher, "description": task,
                            "weight_decay": 0.01, "grad_clip": None, "batch_size": 8}},
    }


def grid(task: str, family: str, losses: dict, seeds=(0, 1, 2), **kw) -> list[dict]:
    """Records of grid ``family`` on ``task``: ``losses`` maps lattice index -> train loss (or a
    ``(train, val_metric)`` pair, the validation metric being 0.5 otherwise; the test metric equals
    it unless ``test`` is given); the same for every seed."""
    out = []
    for k, value in losses.items():
        train, val = value if isinstance(value, tuple) else (value, 0.5)
        for s in seeds:
            out.append(record(task, grid_name(family, k), s, train, val=val, **{"test": val, **kw}))
    return out
