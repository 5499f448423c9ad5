"""The alsals benchmark (``alsals-bench``): tasks on offline data, the competitors, runs and reports.

Its own package, outside the library: ``pip install alsals`` needs torch alone. Importing
:mod:`alsals_bench` loads nothing heavy (no matplotlib, no transformers). The modules, from the
bottom of the import graph up (no module imports one above it):

- :mod:`~alsals_bench.api` (``Task``, ``TaskInstance``), :mod:`~alsals_bench.data` (offline datasets),
  :mod:`~alsals_bench.models`, :mod:`~alsals_bench.tasks` (the dev and test tasks);
- :mod:`~alsals_bench.optimizers` (registry, recipe, grids, adapters), :mod:`~alsals_bench.provenance`;
- :mod:`~alsals_bench.runner` (one run, many runs side by side), :mod:`~alsals_bench.results`
  (records on disk, merging);
- :mod:`~alsals_bench.stats`, :mod:`~alsals_bench.compare` (the two comparisons),
  :mod:`~alsals_bench.driver` (suites, grid extension, extra seeds);
- :mod:`~alsals_bench.report`, :mod:`~alsals_bench.plots`, :mod:`~alsals_bench.tables` (docs tables),
  :mod:`~alsals_bench.overhead` (time per step);
- :mod:`~alsals_bench.cli` (the command).
"""

__version__ = "0.2.0"
