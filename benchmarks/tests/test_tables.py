"""The generated regions of the docs: computed from a results file, rewritten in place, and the
committed docs up to date with the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alsals_bench import tables
from alsals_bench.results import load_results

from .test_report import _runs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "benchmarks" / "results.json.gz"
OVERHEAD = ROOT / "docs" / "benchmarks" / "overhead.json"
DOCS = [ROOT / "docs" / "benchmarks.md", ROOT / "README.md"]


def test_every_region_is_generated_for_every_split():
    regions = tables.regions({"commands": ["cmd A"]}, _runs("dev", "d1") + _runs("test", "t1") + _runs("holdout", "h1"))
    for name in ("provenance", "setup", "grids", "readme-table", "headline", "summary-dev", "summary-test",
                 "optimisation-dev", "optimisation-test", "generalisation-test", "seeds-test", "overhead",
                 "summary-holdout", "optimisation-holdout", "generalisation-holdout", "seeds-holdout",
                 "rivals-holdout", "targets-test", "targets-holdout"):
        assert name in regions, name
    assert "no runs" not in regions["summary-holdout"]
    assert "`cmd A`" in regions["provenance"]
    assert "seeds split" in regions["summary-test"] and "1 wins, 0 ties, 0 losses" in regions["summary-test"]


def test_rewrite_replaces_only_the_marked_regions():
    text = "intro 0.45\n<!-- bench:a -->\nold\n<!-- /bench:a -->\nmiddle\n<!-- bench:b -->\n<!-- /bench:b -->\n"
    new, unknown = tables.rewrite(text, {"a": "new table", "b": "x"})
    assert new == ("intro 0.45\n<!-- bench:a -->\nnew table\n<!-- /bench:a -->\nmiddle\n"
                   "<!-- bench:b -->\nx\n<!-- /bench:b -->\n")
    assert unknown == []
    assert tables.rewrite(text, {"a": "y"})[1] == ["b"]
    assert tables.region_names(text) == ["a", "b"]


def test_rewrite_file_and_check(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- bench:a -->\nold\n<!-- /bench:a -->\n")
    assert tables.rewrite_file(str(doc), {"a": "new"}, check=True) == (True, [])
    assert "old" in doc.read_text()
    assert tables.rewrite_file(str(doc), {"a": "new"}) == (True, [])
    assert tables.rewrite_file(str(doc), {"a": "new"}, check=True) == (False, [])


@pytest.mark.skipif(not RESULTS.exists(), reason="no committed results file")
def test_the_committed_docs_are_generated_from_the_committed_results():
    meta, runs = load_results(str(RESULTS))
    overhead = json.loads(OVERHEAD.read_text()) if OVERHEAD.exists() else None
    regions = tables.regions(meta, runs, overhead, source="docs/benchmarks/results.json.gz")
    used = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        names = tables.region_names(text)
        used |= set(names)
        new, unknown = tables.rewrite(text, regions)
        assert not unknown, (doc.name, unknown)
        assert new == text, f"{doc.name} is out of date: run `make bench-tables`"
    assert {"summary-test", "summary-dev", "readme-table", "optimisation-test", "generalisation-test",
            "summary-holdout", "targets-test", "targets-holdout"} <= used
