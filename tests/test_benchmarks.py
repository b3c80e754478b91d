"""Smoke test of the benchmark harness: tiny sizes on memory:// and SQLite, JSON shape."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest

from benchmarks import latency
from benchmarks.framework import FrameworkSide
from benchmarks.harness import (
    QUICK,
    Report,
    _measure,
    _measure_with_retry,
    bars,
    main,
    markdown,
    parse_args,
)
from benchmarks.raw_sqlite import RawSqliteSide
from benchmarks.workloads import UNITS, WORKLOADS
from cqrs import ViewContext
from cqrs_memory import MemoryEventRepository
from cqrs_sqlite import SqliteEventRepository

TINY = replace(
    QUICK,
    commit_1=3,
    commit_10=2,
    load_100=2,
    load_1000=1,
    load_snapshot=2,
    concurrent_8=8,
    repetitions=2,
    warmups=0,
    replay_events=200,
    catchup_events=200,
    view_events=50,
)
NO_RAW = {"view_upsert"}
NO_PEER = {"replay_10k", "catchup_10k", "view_upsert"}
ROW_KEYS = {"backend", "workload", "unit", "framework", "raw", "peer", "ratio_raw", "ratio_peer"}


def test_quick_run_on_memory_and_sqlite_writes_the_table_and_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    options = parse_args(
        [
            "--quick",
            "--backends",
            "memory,sqlite",
            "--json",
            str(path),
            "--sqlite-dir",
            str(tmp_path),
        ]
    )
    options.sizes = TINY
    assert main(options=options) == 0

    report = json.loads(path.read_text())
    assert {"machine", "rows"} <= set(report)
    machine = report["machine"]
    for key in ("python", "platform", "cpu_count", "sqlite", "msgspec"):
        assert machine[key]
    rows = report["rows"]
    assert [(row["backend"], row["workload"]) for row in rows] == [
        (backend, workload) for backend in ("memory", "sqlite") for workload in WORKLOADS
    ]
    peer = importlib.util.find_spec("eventsourcing") is not None
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["unit"] == UNITS[row["workload"]]
        assert row["framework"] > 0
        if row["backend"] == "memory" or row["workload"] in NO_RAW:
            assert row["raw"] is None
            assert row["ratio_raw"] is None
        else:
            assert row["raw"] > 0
            assert row["ratio_raw"] == pytest.approx(row["framework"] / row["raw"], rel=0.01)
        if peer and row["workload"] not in NO_PEER:
            assert row["peer"] > 0
            assert row["ratio_peer"] == pytest.approx(row["framework"] / row["peer"], rel=0.01)
        else:
            assert row["peer"] is None
            assert row["ratio_peer"] is None
    assert list(tmp_path.glob("cqrs-bench-*")) == []  # the SQLite files are removed

    out = capsys.readouterr().out
    assert out.startswith(markdown([]).splitlines()[0])
    assert "| sqlite | load_1000 | loads/s |" in out


def test_bars_name_the_out_of_reach_ones():
    rows = [
        {
            "backend": "sqlite",
            "workload": "commit_10",
            "unit": "events/s",
            "framework": 90.0,
            "raw": 100.0,
            "peer": 80.0,
            "ratio_raw": 0.9,
            "ratio_peer": 1.125,
        },
        {
            "backend": "memory",
            "workload": "commit_10",
            "unit": "events/s",
            "framework": 150_000.0,
            "raw": None,
            "peer": None,
            "ratio_raw": None,
            "ratio_peer": None,
        },
    ]
    results = {(r["backend"], r["bar"]): r for r in bars(rows)}
    assert results["sqlite", "ratio_raw >= 0.8"]["ok"] is True
    peer_bar = results["sqlite", "ratio_peer >= 2.0"]
    assert peer_bar["ok"] is False
    assert peer_bar["ceiling"] == 1.25  # raw / peer: 2.0 is out of reach on this database
    assert results["memory", "events/s >= 100k"]["ok"] is True


def test_mongodb_needs_an_explicit_url():
    with pytest.raises(SystemExit):
        parse_args(["--backends", "mongodb"])
    assert "mongodb" not in parse_args([]).backends


class _FailingPeer:
    name = "peer"

    async def open(self):
        pass

    async def close(self):
        pass

    async def create(self, aggregate_id, events):
        raise RuntimeError("peer exploded")


class _TargetWithFailingPeer:
    name = "memory"

    def sides(self, workload, snapshot_every):
        return [FrameworkSide(MemoryEventRepository), _FailingPeer()]


async def test_a_failing_peer_is_reported_and_left_out():
    errors = []
    row, _ = await _measure(_TargetWithFailingPeer(), "commit_1", TINY, None, errors)
    assert row["framework"] > 0
    assert row["peer"] is None
    assert row["ratio_peer"] is None
    assert errors == [
        {
            "backend": "memory",
            "workload": "commit_1",
            "side": "peer",
            "error": "RuntimeError('peer exploded')",
        }
    ]


class _FlakyFramework(FrameworkSide):
    async def deposit(self, aggregate_id):
        raise ConnectionError("killed by another session")


class _TargetFlakyOnce:
    name = "memory"

    def __init__(self):
        self.calls = 0

    def sides(self, workload, snapshot_every):
        self.calls += 1
        side = FrameworkSide if self.calls > 1 else _FlakyFramework
        return [side(MemoryEventRepository)]


async def test_a_framework_failure_is_retried_once_on_new_tables():
    target, report = _TargetFlakyOnce(), Report({})
    measured = await _measure_with_retry(target, "commit_1", TINY, None, report)
    assert target.calls == 2
    assert measured is not None
    assert measured[0]["framework"] > 0
    assert report.errors == []


def test_raw_sqlite_runs_the_backends_statements(tmp_path):
    backend = SqliteEventRepository(tmp_path / "x.db", "events", "snapshots")
    raw = RawSqliteSide(str(tmp_path / "x.db"), "events", "snapshots", view_prefix="")
    assert raw.statements == backend.statements


async def test_raw_sqlite_views_run_the_backends_statements(tmp_path):
    raw = RawSqliteSide(str(tmp_path / "x.db"), "events", "snapshots", view_prefix="p_")
    await raw.open()
    try:
        table = await raw.create_view_table("accounts")
        async with SqliteEventRepository(tmp_path / "x.db") as backend:
            views = backend.view_repository(dict[str, int], table)
            assert raw.view_statements[table] == views.statements
            await raw.write_view(table, "v", b'{"n": 1}', 0, 1)  # the backend's table exists
            assert await views.load_with_context("v") == ({"n": 1}, ViewContext("v", 1))
    finally:
        await raw.close()


def test_raw_postgres_runs_the_backends_statements():
    pytest.importorskip("psycopg")
    from benchmarks.raw_postgres import RawPostgresSide  # noqa: PLC0415 - needs psycopg
    from cqrs_postgres import PostgresEventRepository  # noqa: PLC0415 - needs psycopg

    raw = RawPostgresSide("postgresql://nowhere/x", "e1", "s1", view_prefix="p_")
    assert raw.statements == PostgresEventRepository(raw.pool, "e1", "s1").statements


def test_projection_bars():
    rows = [
        {"backend": "postgres", "workload": "catchup_10k", "framework": 90.0, "ratio_raw": 0.9},
        {"backend": "postgres", "workload": "view_upsert", "framework": 9_000.0},
    ]
    results = {(r["workload"], r["bar"]): r["ok"] for r in bars(rows)}
    assert results == {
        ("catchup_10k", "ratio_raw >= 0.8 (catch-up)"): True,
        ("view_upsert", "events/s >= 10k"): False,
    }


@pytest.mark.parametrize("consumer", [[], ["--projection"]], ids=["subscription", "projection"])
def test_latency_pushed_and_polled_on_memory_and_sqlite(tmp_path, capsys, consumer):
    path = tmp_path / "latency.json"
    options = ["--backends", "memory,sqlite", "--commits", "3", "--gap", "0.01", *consumer]
    assert latency.main([*options, "--poll", "0.05", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [(row["backend"], row["mode"]) for row in rows] == [
        (backend, mode) for backend in ("memory", "sqlite") for mode in ("push", "poll")
    ]
    for row in rows:
        assert row["commits"] == 3
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["label"].endswith("ProjectionRunner") == bool(consumer)
    assert "| sqlite | polling every 0.05 s" in capsys.readouterr().out
