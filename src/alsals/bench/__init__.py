"""The benchmark behind ``alsals bench``: tasks on offline data, the competitors, runs and reports.

Light on purpose: importing :mod:`alsals.bench` loads nothing heavy (no matplotlib, no transformers).
The pieces:

- :mod:`alsals.bench.api`: the ``Task`` / ``TaskInstance`` interfaces;
- :mod:`alsals.bench.tasks`: the registry ``TASKS`` (real data, :mod:`alsals.bench.data`);
- :mod:`alsals.bench.optimizers`: the registry ``OPTIMIZERS`` and the calling protocols;
- :mod:`alsals.bench.runner`: ``run_one`` (one run, a JSON-able record) and ``run_many`` (side by side);
- :mod:`alsals.bench.report` / :mod:`alsals.bench.plots`: ``results.md``, ``results.json``, PNG plots;
- :mod:`alsals.bench.overhead`: time per step and optimizer memory of ALSALS vs Adam;
- :mod:`alsals.bench.cli`: the command line.
"""

__all__ = ["run_one", "run_many", "main"]


def __getattr__(name):  # lazy: keep ``import alsals.bench`` cheap
    if name in ("run_one", "run_many"):
        from . import runner

        return getattr(runner, name)
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
