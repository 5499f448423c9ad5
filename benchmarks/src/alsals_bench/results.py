"""Run records on disk: the resumable store of a command, ``results.json`` files, and merging.

A run's record is identified by its key ``(task, optimizer, seed)``. Everything here follows one rule:
**a later record of the same key replaces an earlier one** -- in a store (a rerun of a run appends a
new line), and when merging folders (a rerun of one optimizer in a later folder replaces its old
records, the records of every other optimizer are kept).

Files:

- ``runs.jsonl`` in an output folder: one record per line, appended as each run finishes (the
  store of a running command; a command restarted on the same folder skips the runs already there).
- ``results.json`` (or ``results.json.gz``): ``{"meta": {...}, "runs": [...]}``, written when a
  command ends and by ``alsals-bench report``. ``meta["commands"]`` lists every command whose runs
  are in the file, ``meta["sources"]`` the files merged into it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

RUNS_FILE = "runs.jsonl"
#: meta keys that describe one command (dropped from a merged file, which lists its commands instead)
PER_COMMAND_META = ("command", "started", "finished", "wall_seconds", "loadavg_start", "loadavg_end",
                    "interrupted", "steps_override", "context", "optimizers", "seeds", "tasks", "grids")
RESULTS_FILE = "results.json"


def run_key(run: dict) -> tuple[str, str, int]:
    """``(task, optimizer, seed)`` of a record."""
    return str(run["task"]), str(run["optimizer"]), int(run["seed"])


def clean(x: Any) -> Any:
    """JSON without NaN/Infinity (they are not JSON): non-finite floats become ``None``; numpy and
    0-dim torch scalars become Python numbers; tuples become lists."""
    if not isinstance(x, (str, int, float, dict, list, tuple, type(None))) and hasattr(x, "item"):
        try:
            x = x.item()
        except (TypeError, ValueError, RuntimeError):
            return str(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def _open(path: str, mode: str):
    if path.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8") if "b" not in mode else gzip.open(path, mode)
    return open(path, mode, encoding="utf-8")


def replace_by_key(runs: Iterable[dict]) -> list[dict]:
    """``runs`` with, for every key, only its last record (in the position of the first one)."""
    out: OrderedDict[tuple, dict] = OrderedDict()
    for run in runs:
        out[run_key(run)] = run
    return list(out.values())


class RunStore:
    """The append-only ``runs.jsonl`` of an output folder."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, RUNS_FILE)

    def load(self) -> list[dict]:
        """Every stored record, a later line of the same key replacing an earlier one. A truncated
        last line (a crash while writing) is skipped."""
        if not os.path.exists(self.path):
            return []
        runs = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return replace_by_key(runs)

    def append(self, run: dict) -> None:
        """Add one record (flushed and synced: a crash loses at most the run in progress)."""
        os.makedirs(self.out_dir, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean(run), allow_nan=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_results(path: str, meta: dict, runs: Sequence[dict]) -> str:
    """Write ``{"meta", "runs"}`` to ``path`` (gzip-compressed when it ends in ``.gz``), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    payload = clean({"meta": meta, "runs": list(runs)})
    if path.endswith(".gz"):
        with gzip.GzipFile(tmp, "wb", mtime=0) as raw:  # mtime 0: the same content, the same bytes
            raw.write(json.dumps(payload, indent=None, separators=(",", ":"), allow_nan=False,
                                 default=str).encode("utf-8"))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, allow_nan=False, default=str)
    os.replace(tmp, path)
    return path


def find_results(path: str) -> str:
    """The results file of ``path``: the file itself, or in a folder ``results.json``,
    ``results.json.gz`` or ``runs.jsonl`` (first found)."""
    if os.path.isdir(path):
        for name in (RESULTS_FILE, RESULTS_FILE + ".gz", RUNS_FILE):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                return candidate
        raise FileNotFoundError(f"no {RESULTS_FILE}, {RESULTS_FILE}.gz or {RUNS_FILE} in {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no results file at {path}")
    return path


def load_results(path: str) -> tuple[dict, list[dict]]:
    """``(meta, runs)`` of a results file or folder (see :func:`find_results`)."""
    path = find_results(path)
    if path.endswith(".jsonl"):
        store = RunStore(os.path.dirname(path) or ".")
        store.path = path
        runs = store.load()
        meta_path = os.path.join(os.path.dirname(path) or ".", "meta.json")
        meta = {}
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        return meta, runs
    with _open(path, "r") as f:
        data = json.load(f)
    if isinstance(data, list):
        return {}, replace_by_key(data)
    return data.get("meta", {}), replace_by_key(data.get("runs", []))


def commands_of(meta: dict, runs: Sequence[dict]) -> list[str]:
    """Every command whose runs are present: ``meta["commands"]`` and the records' own ``command``."""
    out: list[str] = []
    for c in list(meta.get("commands") or []) + [r.get("command") for r in runs]:
        if c and c not in out:
            out.append(c)
    return out


def merge(sources: Sequence[tuple[str, dict, list[dict]]]) -> tuple[dict, list[dict]]:
    """Merge ``(name, meta, runs)`` sources in order: a later record of the same key replaces an
    earlier one. The merged meta keeps the first source's meta (less what describes one command:
    :data:`PER_COMMAND_META`), lists every source and every command whose runs survive, and counts
    the records each source contributed."""
    runs: list[dict] = []
    for _, _, source_runs in sources:
        runs += list(source_runs)
    merged = replace_by_key(runs)
    kept = {id(r) for r in merged}
    meta = {k: v for k, v in (sources[0][1] if sources else {}).items() if k not in PER_COMMAND_META}
    contributions = []
    commands: list[str] = []
    for name, source_meta, source_runs in sources:
        contributions.append({"source": name, "records": len(source_runs),
                              "kept": sum(1 for r in source_runs if id(r) in kept)})
        surviving = [r for r in source_runs if id(r) in kept]
        found = [r["command"] for r in surviving if r.get("command")]
        if any(not r.get("command") for r in surviving):  # older records: the file's own list
            found += list(source_meta.get("commands") or [])
        for c in found:
            if c not in commands:
                commands.append(c)
    meta["sources"] = contributions
    meta["commands"] = commands
    return meta, merged
