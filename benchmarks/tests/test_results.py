"""Records on disk: the resumable store, results files (plain and gzip) and merging by key."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from alsals_bench import results

from ._records import record


def test_store_appends_and_a_later_record_of_the_same_key_wins(tmp_path):
    store = results.RunStore(str(tmp_path))
    assert store.load() == []
    store.append(record("t", "alsals", 0, 0.5))
    store.append(record("t", "alsals", 1, 0.6))
    store.append(record("t", "alsals", 0, 0.4))  # a rerun
    runs = store.load()
    assert [(r["seed"], r["final_train_loss"]) for r in runs] == [(0, 0.4), (1, 0.6)]


def test_store_skips_a_truncated_last_line(tmp_path):
    store = results.RunStore(str(tmp_path))
    store.append(record("t", "alsals", 0, 0.5))
    with open(store.path, "a") as f:
        f.write('{"task": "t", "optimi')  # the run in flight when the machine died
    assert len(store.load()) == 1


def test_results_round_trip_plain_and_gzip_without_nan(tmp_path):
    runs = [record("t", "alsals", 0, math.inf, status="diverged")]
    for name in ("results.json", "results.json.gz"):
        path = results.write_results(str(tmp_path / name), {"suite": "x"}, runs)
        meta, loaded = results.load_results(path)
        assert meta == {"suite": "x"} and loaded[0]["final_train_loss"] is None
    raw = gzip.open(tmp_path / "results.json.gz", "rt").read()
    assert "NaN" not in raw and "Infinity" not in raw
    # the same content gives the same bytes (no timestamp in the gzip header)
    first = (tmp_path / "results.json.gz").read_bytes()
    results.write_results(str(tmp_path / "results.json.gz"), {"suite": "x"}, runs)
    assert (tmp_path / "results.json.gz").read_bytes() == first


def test_find_results_in_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        results.find_results(str(tmp_path))
    store = results.RunStore(str(tmp_path))
    store.append(record("t", "alsals", 0, 0.5))
    (tmp_path / "meta.json").write_text(json.dumps({"suite": "running"}))
    meta, runs = results.load_results(str(tmp_path))  # a folder whose command is still running
    assert meta["suite"] == "running" and len(runs) == 1
    results.write_results(str(tmp_path / "results.json"), {"suite": "done"}, runs)
    assert results.load_results(str(tmp_path))[0]["suite"] == "done"


def test_merge_replaces_one_optimizers_records_and_keeps_the_others():
    old = [record("t", "alsals", s, 0.5, command="run A") for s in range(3)]
    old += [record("t", "adamw-lr1e-3", s, 0.3, command="run A") for s in range(3)]
    new = [record("t", "alsals", s, 0.2, command="run B") for s in range(3)]
    meta, merged = results.merge([("a", {"commands": ["run A"]}, old), ("b", {}, new)])
    by_key = {results.run_key(r): r for r in merged}
    assert len(merged) == 6
    assert {by_key[("t", "alsals", s)]["final_train_loss"] for s in range(3)} == {0.2}
    assert {by_key[("t", "adamw-lr1e-3", s)]["final_train_loss"] for s in range(3)} == {0.3}
    assert meta["commands"] == ["run A", "run B"]
    assert [(s["source"], s["records"], s["kept"]) for s in meta["sources"]] == [("a", 6, 3), ("b", 3, 3)]


def test_a_command_whose_runs_were_all_replaced_is_not_listed():
    old = [record("t", "alsals", 0, 0.5, command="run A")]
    new = [record("t", "alsals", 0, 0.2, command="run B")]
    meta, _ = results.merge([("a", {}, old), ("b", {}, new)])
    assert meta["commands"] == ["run B"]


def test_commands_of_a_file():
    runs = [record("t", "alsals", 0, 0.5, command="run B")]
    assert results.commands_of({"commands": ["run A"]}, runs) == ["run A", "run B"]
