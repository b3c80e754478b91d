"""The scaling and memory benchmark modes run end to end on SQLite at tiny sizes (their
numbers are not checked here: speed goes into benchmarks, never into tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory, scaling


def test_scaling_reports_writers_loads_and_charts(tmp_path: Path, capsys):
    report_path = tmp_path / "scaling.json"
    charts = tmp_path / "charts"
    argv = ["--backends", "sqlite", "--writers", "1,3", "--seconds", "0.2"]
    argv += ["--streams", "10,260", "--loads", "2", "--json", str(report_path)]
    assert scaling.main([*argv, "--charts", str(charts)]) == 0
    report = json.loads(report_path.read_text())
    assert [(row["mode"], row["writers"]) for row in report["writers"]] == [
        ("distinct", 1),
        ("distinct", 3),
        ("hot", 1),
        ("hot", 3),
    ]
    assert all(row["commands"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in report["writers"])
    assert [row["events"] for row in report["loads"]] == [10, 260]
    assert all(row["events_ms"] > 0 and row["snapshot_ms"] > 0 for row in report["loads"])
    for name in ("scaling_writers.png", "scaling_loads.png"):
        assert (charts / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sqlite | 3 | 4 hot |" in capsys.readouterr().out


def test_scaling_refuses_bad_arguments():
    with pytest.raises(SystemExit):
        scaling.parse_args(["--backends", "oracle"])
    with pytest.raises(SystemExit):
        scaling.parse_args(["--writers", "0,2"])


def test_memory_streams_every_stored_event_in_a_fresh_process(tmp_path: Path, capsys):
    out = tmp_path / "memory.json"
    assert memory.main(["--backends", "sqlite", "--events", "12000", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["backend"], row["events"], row["page_size"]) == ("sqlite", 12000, 500)
    assert row["rss_peak_mb"] >= row["rss_before_mb"] > 0
    assert row["rss_at_100k_mb"] is None  # fewer events than the checkpoint
    assert "| sqlite | 12,000 |" in capsys.readouterr().out
