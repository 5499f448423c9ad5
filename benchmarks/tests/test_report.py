"""The report: sections per split, the smoke label, provenance in the header, consistency, plots."""

from __future__ import annotations

from alsals_bench import report

from ._records import grid, record


def _runs(split="test", task="t1"):
    runs = grid(task, "adamw", {-8: (0.3, 0.8), -7: (0.1, 0.9), -6: (0.2, 0.85)}, split=split)
    runs += grid(task, "sfadamw", {-7: (0.2, 0.8), -6: (0.15, 0.9), -5: (0.3, 0.85)}, split=split)
    runs += [record(task, "alsals", s, 0.05 * (1 + s), test=0.91, split=split, fwd=1.1, command="cmd A")
             for s in range(3)]
    for r in runs:
        r["curves"] = {"step": [1, 2, 3], "loss": [1.0, 0.5, 0.2], "step_size": [0.1, 0.1, 0.05],
                       "seconds": [0.1, 0.2, 0.3], "fwd_equiv": [3, 6, 9]}
        r["provenance"] = {"git": {"commit": "a" * 40, "dirty": False},
                           "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "usable_cores": 2,
                                       "platform": "linux", "python": "3.11"},
                           "packages": {"torch": "2.13.0"}}
    return runs


def test_markdown_has_both_splits_both_comparisons_and_the_seeds():
    md = report.render_markdown({"suite": "full", "commands": ["cmd A"]}, _runs("dev", "d1") + _runs("test", "t1"))
    for text in ("## Dev split (1 task)", "## Test split (1 task)", "Optimisation: final train loss",
                 "Generalisation: test metric", "`alsals` seed by seed", "0.5, 1, 1.5",  # ratios per seed
                 "+1.00", "adamw grid on `t1`", "sfadamw grid on `t1`", "**best by train**",
                 "aaaaaaaaaaaa: 42 runs", "Test CPU (2 cores, 2 usable)", "`cmd A`", "same weights",
                 "1.10 / 1.00"):
        assert text in md, text
    assert "Smoke-sized" not in md
    assert "Smoke-sized" in report.render_markdown({"smoke": True}, _runs())


def test_the_holdout_split_gets_its_own_section_after_the_test_split():
    md = report.render_markdown({"suite": "full"}, _runs("holdout", "h1") + _runs("dev", "d1") + _runs("test", "t1"))
    sections = [md.index(h) for h in ("## Dev split (1 task)", "## Test split (1 task)", "## Holdout split (1 task)")]
    assert sections == sorted(sections)
    assert "a second test split, added after the first had been seen" in md


def test_a_selection_left_at_the_edge_is_flagged():
    runs = grid("t1", "adamw", {-8: (0.3, 0.8), -7: (0.2, 0.85), -6: (0.1, 0.9)})
    md = report.render_markdown({}, runs)
    assert "best by train is at the high edge" in md and "best by val is at the high edge" in md


def test_inconsistent_starts_are_reported():
    runs = _runs()
    assert "started from the same weights" in report.consistency_markdown(runs)
    runs[0]["init_weights_sha256"] = "other"
    assert "Inconsistent records" in report.consistency_markdown(runs)


def test_write_report_with_plots(tmp_path):
    paths = report.write_report(str(tmp_path), {"suite": "x"}, _runs("dev", "d1") + _runs())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["d1.png", "t1.png"]
    md = (tmp_path / "results.md").read_text()
    assert "![t1](plots/t1.png)" in md and paths["json"].endswith("results.json")


def test_summary_lines_for_the_terminal():
    lines = report.summary_lines(_runs())
    assert lines[0].startswith("test: alsals train loss / AdamW (best by train): geo-mean 0.909 over 1 task(s)")
    assert "1 wins / 0 ties / 0 losses" in lines[1]


def test_formatting():
    assert report.fmt(float("inf")) == "∞" and report.fmt(None) == "—" and report.fmt(1.23456) == "1.23"
    assert report.fmt(2.5e-5) == "2.50e-05"
    assert report.fmt_diff(0.5) == "+0.50" and report.fmt_diff(-0.036) == "-0.036"
    assert report.fmt_diff(-0.0012) == "-0.0012" and report.fmt_diff(-0.09999) == "-0.10"
    assert report.fmt_interval((0.5, 2.0)) == "0.5 – 2"
