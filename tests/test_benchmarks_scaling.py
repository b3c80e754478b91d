"""The scaling and memory benchmark modes run end to end on SQLite at tiny sizes (their
numbers are not checked here: speed goes into benchmarks, never into tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory, scaling
from benchmarks.harness import bars


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


def _row(backend: str, workload: str, framework: float, raw: float | None, peer: float | None):
    return {
        "backend": backend,
        "workload": workload,
        "framework": framework,
        "raw": raw,
        "peer": peer,
        "ratio_raw": None if raw is None else round(framework / raw, 3),
        "ratio_peer": None if peer is None else round(framework / peer, 3),
    }


def test_the_bars_of_round_two():
    rows = [
        _row("sqlite", "commit_1", 500.0, 520.0, 400.0),
        _row("sqlite", "concurrent_8", 1400.0, 500.0, 300.0),
        _row("sqlite", "load_snapshot", 9000.0, 10_500.0, 8000.0),
        _row("postgres", "load_100", 900.0, 1000.0, 200.0),
        _row("postgres", "load_snapshot", 800.0, 1000.0, 500.0),
    ]
    results = {(r["backend"], r["workload"], r["bar"]): r["ok"] for r in bars(rows)}
    assert results["sqlite", "load_snapshot", "ratio_raw >= 0.9 (one hop)"] is False
    assert results["sqlite", "load_snapshot", "ratio_peer > 1.0"] is True
    assert results["sqlite", "concurrent_8", "concurrent_8 / commit_1 >= 3 (group commit)"] is False
    assert results["postgres", "load_100", "ratio_raw >= 0.85 (loads)"] is True
    assert results["postgres", "load_snapshot", "ratio_raw >= 0.85 (loads)"] is False
