"""``cqrs copy``: stores end equal (by checksum and field by field), resumably, with nothing
stored twice."""

# ruff: noqa: F811 - the fixtures imported from test_cli are redefined as parameters

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from test_cli import ROOT, cli, dump, invoke, mongo_db, postgres_db, seed  # noqa: F401 - fixtures

import cqrs
from cqrs import SerializedEvent
from cqrs.cli.copying import Checksum, CopyError, checksum_of, copy_events


def _count(url: str) -> int:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
        if not (found and found[0]):
            return 0
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        assert row is not None
        assert row[0] == row[1], "an event id is stored twice"
        return int(row[0])


def _wait_for_no_other_sessions(url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    pytest.fail("the killed copy's sessions did not end within 30 s")


def test_copy_sqlite_to_postgres_keeps_everything_in_order(tmp_path, postgres_db):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    seed(source, 3000)
    result = invoke("copy", "--from", source, "--to", postgres_db, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["equal"] is True
    assert report["read"] == report["written"] == report["source_count"] == 3000
    assert report["target_count"] == 3000
    assert report["source_checksum"] == report["target_checksum"]
    assert report["snapshots"] > 0
    events, snapshots = dump(source)
    assert dump(postgres_db) == (events, snapshots)  # ids, sequences, event ids, times, order
    assert "3000/3000" in result.stderr  # the progress bar


def test_copy_postgres_to_mongodb_keeps_everything_in_order(tmp_path, postgres_db, mongo_db):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    seed(source, 150, aggregates=10)
    assert invoke("copy", "--from", source, "--to", postgres_db).exit_code == 0
    result = invoke("copy", "--from", postgres_db, "--to", mongo_db)
    assert result.exit_code == 0, result.stderr
    assert "verified: equal" in result.stdout
    assert dump(mongo_db) == dump(postgres_db) == dump(source)
    checked = invoke("verify", "--database-url", mongo_db)
    assert checked.exit_code == 0
    assert "150/150" in checked.stderr  # the store counted its events for the progress bar


def test_a_second_run_copies_only_what_is_new(tmp_path):
    source, target = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 't.db'}"
    seed(source, 200)
    first = json.loads(invoke("copy", "--from", source, "--to", target, "--json").stdout)
    assert first["written"] == 200
    seed(source, 50, prefix="new")
    second = invoke("copy", "--from", source, "--to", target, "--json")
    assert second.exit_code == 0
    report = json.loads(second.stdout)
    assert report["resumed_after"] == 200
    assert report["read"] == report["written"] == 50
    assert report["equal"] is True
    assert report["target_count"] == 250
    assert dump(target) == dump(source)


def test_copy_of_one_type(tmp_path):
    source, target = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 't.db'}"
    seed(source, 300)
    result = invoke("copy", "--from", source, "--to", target, "--type", "Order", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    events, snapshots = dump(source)
    orders = [row for row in events if row[0] == "Order"]
    assert 0 < report["written"] == len(orders) < 300
    assert dump(target) == (orders, {k: v for k, v in snapshots.items() if k[0] == "Order"})


def test_copy_refuses_a_target_holding_other_events_at_the_same_place(tmp_path):
    source, target = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 't.db'}"
    seed(source, 100)
    seed(target, 100, seed_value=8)  # the same aggregates, other event ids
    before = dump(target)
    result = invoke("copy", "--from", source, "--to", target)
    assert result.exit_code == 1
    assert "another event id" in result.stderr
    assert dump(target) == before  # nothing of the source was stored


class _PortOnly:
    """A real repository seen through the storage port alone (no import_events)."""

    def __init__(self, repository: cqrs.PersistedEventRepository) -> None:
        self._repository = repository

    def __getattr__(self, name: str) -> object:
        if name == "import_events":
            raise AttributeError(name)
        return getattr(self._repository, name)


async def test_without_import_events_a_partly_copied_target_is_completed(tmp_path):
    source_url, target_url = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 't.db'}"
    await asyncio.to_thread(seed, source_url, 400, aggregates=5)
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        # A copy that died after storing the first events in other chunks and without saving
        # its checkpoint: the run of one aggregate at the cut is half there.
        events = [event async for event in source.stream_all_events(None)]
        cut = next(
            index
            for index in range(150, 300)
            if index % 37
            and (events[index - 1].aggregate_type, events[index - 1].aggregate_id)
            == (events[index].aggregate_type, events[index].aggregate_id)
        )
        head = events[:cut]
        runs: list[list[SerializedEvent]] = []
        for event in head:
            if runs and (runs[-1][-1].aggregate_type, runs[-1][-1].aggregate_id) == (
                event.aggregate_type,
                event.aggregate_id,
            ):
                runs[-1].append(event)
            else:
                runs.append([event])
        for run in runs:
            await target.persist(run, None)
        report = await copy_events(
            source,
            _PortOnly(target),  # type: ignore[arg-type]
            source_url=source_url,
            target_url=target_url,
            chunk_size=37,
        )
    assert report.equal
    assert report.read == 400
    assert report.target_count == 400
    assert await asyncio.to_thread(dump, target_url) == await asyncio.to_thread(dump, source_url)


async def test_checksum_covers_every_kept_field_and_the_order(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    await asyncio.to_thread(seed, url, 20)
    async with cqrs.connect(url) as repository:
        events = [event async for event in repository.stream_all_events(None)]
        base = await checksum_of(repository, None)

    def digest(rows: list[SerializedEvent]) -> str:
        checksum = Checksum()
        for row in rows:
            checksum.add(row)
        return checksum.hexdigest()

    assert digest(events) == base.hexdigest()
    assert base.count == 20
    changes = {
        "aggregate_id": "other",
        "sequence": 99,
        "event_type": "Other",
        "event_version": "9.9",
        "payload": '{"amount": 0}',
        "metadata": "{}",
        "timestamp": datetime(2001, 1, 1, tzinfo=UTC),
        "event_id": uuid.uuid4(),
    }
    for name, value in changes.items():
        changed = [
            *events[:3],
            msgspec.structs.replace(events[3], **{name: value}),
            *events[4:],
        ]
        assert digest(changed) != base.hexdigest(), name
    assert digest([events[1], events[0], *events[2:]]) != base.hexdigest()
    # Positions are each store's own; bytes or text of the same JSON agree.
    moved = [msgspec.structs.replace(e, position=e.position + 1000) for e in events]
    as_bytes = [msgspec.structs.replace(e, payload=_bytes(e.payload)) for e in events]
    assert digest(moved) == digest(as_bytes) == base.hexdigest()


def _bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


async def test_a_second_copy_into_the_same_target_stops_the_first(tmp_path):
    source_url, target_url = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 't.db'}"
    await asyncio.to_thread(seed, source_url, 50)
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        checkpoints = target.checkpoint_store("cqrs_copy")
        await checkpoints.create_schema()
        from cqrs.cli.copying import copy_name  # noqa: PLC0415

        lease = await checkpoints.acquire(copy_name(source_url, None), "another host", 60)
        assert lease is not None
        with pytest.raises(CopyError, match="another copy from sqlite:///"):
            await copy_events(source, target, source_url=source_url, target_url=target_url)


def test_a_copy_killed_mid_way_and_run_again_ends_equal_with_nothing_twice(tmp_path, postgres_db):
    source = f"sqlite:///{tmp_path / 'source.db'}?synchronous=NORMAL"
    seed(source, 30_000, aggregates=500)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cqrs",
            "copy",
            "--from",
            source,
            "--to",
            postgres_db,
            "--chunk-size",
            "100",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while _count(postgres_db) < 3000 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    _wait_for_no_other_sessions(postgres_db)  # a statement in flight may still commit
    partial = _count(postgres_db)
    assert 0 < partial < 30_000, "the copy was not interrupted mid-way"
    again = invoke("copy", "--from", source, "--to", postgres_db, "--json")
    assert again.exit_code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["equal"] is True
    assert report["resumed_after"] > 0
    assert report["written"] == 30_000 - partial  # nothing stored twice
    assert report["read"] - report["written"] < 100 + 1  # at most the chunk in flight again
    assert _count(postgres_db) == 30_000
    assert dump(postgres_db) == dump(source)


@pytest.mark.stress
def test_copy_of_100k_events_sqlite_to_postgres(tmp_path, postgres_db):
    source = f"sqlite:///{tmp_path / 'source.db'}?synchronous=NORMAL"
    seed(source, 100_000, aggregates=2000)
    result = cli("copy", "--from", source, "--to", postgres_db, "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["equal"] is True
    assert report["source_count"] == report["target_count"] == 100_000
    assert _count(postgres_db) == 100_000
    assert dump(postgres_db) == dump(source)


def test_the_copy_benchmark_runs_its_three_sides(tmp_path, postgres_db):
    from benchmarks import copy_throughput  # noqa: PLC0415 - only this test

    path = tmp_path / "rows.json"
    options = ["--events", "600", "--port-only-events", "100", "--rounds", "1"]
    copy_throughput.main([*options, "--postgres-url", postgres_db, "--json", str(path)])
    rows = json.loads(path.read_text())
    assert {row["side"] for row in rows} == {"copy", "copy+verify", "copy_port_only", "raw"}
    assert all(row["events_per_second"] > 0 for row in rows)
    assert next(row for row in rows if row["side"] == "raw")["ratio_raw"] == 1.0


def _event(aggregate_id: str, sequence: int, event_id: uuid.UUID | None = None) -> SerializedEvent:
    return SerializedEvent(
        "Account",
        aggregate_id,
        sequence,
        "Deposited",
        "1.0",
        f'{{"n": {sequence}}}',
        "{}",
        datetime(2025, 1, 1, 0, 0, sequence, tzinfo=UTC),
        event_id or uuid.uuid4(),
    )


@pytest.fixture(params=["sqlite", "postgres"])
def import_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'import.db'}"
    return request.getfixturevalue("postgres_db")


async def test_import_events_is_atomic_ordered_and_idempotent_by_event_id(import_url):
    async with cqrs.connect(import_url) as repository:
        importer = repository.import_events  # type: ignore[attr-defined]
        a1, a2, b1 = _event("a", 1), _event("a", 2), _event("b", 1)
        snapshot = cqrs.SerializedSnapshot("Account", "a", '{"s": 2}', 2, 1)
        assert await importer([a1, b1, a2], [snapshot]) == 3
        stored = [e async for e in repository.stream_all_events(None)]
        assert [(e.aggregate_id, e.sequence) for e in stored] == [("a", 1), ("b", 1), ("a", 2)]
        assert (await repository.get_snapshot("Account", "a")).last_sequence == 2  # type: ignore[union-attr]
        # Again, and overlapping with new events: only the new ones are stored.
        a3 = _event("a", 3)
        assert await importer([a1, a2, a3], []) == 1
        older = cqrs.SerializedSnapshot("Account", "a", '{"s": 1}', 1, 1)
        assert await importer([], [older]) == 0
        assert (await repository.get_snapshot("Account", "a")).last_sequence == 2  # type: ignore[union-attr]
        before = [e async for e in repository.stream_all_events(None)]
        assert len(before) == 4
        # Another event at a stored place, or a gap: nothing of the batch is stored.
        with pytest.raises(cqrs.AggregateConflict, match=r"another event id|other ids"):
            await importer([_event("c", 1), _event("a", 3)], [])
        with pytest.raises(cqrs.AggregateConflict, match="gap"):
            await importer([_event("c", 1), _event("b", 3)], [])
        with pytest.raises(ValueError, match="sequence order"):
            await importer([_event("c", 1), _event("c", 3)], [])
        assert [e async for e in repository.stream_all_events(None)] == before
