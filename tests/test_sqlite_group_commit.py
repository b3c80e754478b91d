"""Group commit on SQLite: commits queued while the worker is busy share one transaction
(one COMMIT, one fsync), each in its own savepoint, and every caller is answered after
that COMMIT."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cqrs import AggregateConflict, SerializedEvent, SerializedSnapshot
from cqrs_sqlite import SqliteEventRepository
from cqrs_sqlite._group_commit import MAX_GROUP, commit_group


def rows(aggregate_id: str, first: int, count: int) -> list[SerializedEvent]:
    now = datetime.now(UTC)
    return [
        SerializedEvent(
            "T", aggregate_id, first + i, "E", "1.0", b'{"n": 1}', b"{}", now, uuid.uuid4()
        )
        for i in range(count)
    ]


@pytest.fixture
async def repo(tmp_path: Path):
    async with SqliteEventRepository(tmp_path / "store.db") as repository:
        await repository.create_schema()
        yield repository


async def _traced(repo: SqliteEventRepository) -> list[str]:
    statements: list[str] = []
    await repo.run(lambda connection: connection.set_trace_callback(statements.append))
    return statements


def _verbs(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


async def test_concurrent_commits_share_one_transaction(repo):
    statements = await _traced(repo)
    writers = 20
    results = await asyncio.gather(
        *(repo.persist(rows(f"a{n}", 1, 2), None) for n in range(writers))
    )
    verbs = _verbs(statements)
    # The first commit may start alone; the ones queued while it runs go together.
    assert verbs.count("COMMIT") <= 3
    assert verbs.count("SAVEPOINT") >= writers - 2
    positions = [p for batch in results for p in batch]
    assert len(set(positions)) == 2 * writers
    # Positions follow the order the commits were queued (and written) in.
    assert positions == sorted(positions)
    for n in range(writers):
        assert [e.sequence for e in await repo.get_events("T", f"a{n}")] == [1, 2]


async def test_a_conflicting_commit_fails_alone_and_the_others_commit(repo):
    await repo.persist(rows("hot", 1, 1), None)
    statements = await _traced(repo)
    winner, loser = rows("hot", 2, 2), rows("hot", 2, 3)
    snapshot = SerializedSnapshot("T", "other", b'{"s": 1}', 1, 1)
    outcomes = await asyncio.gather(
        repo.persist(rows("first", 1, 1), None),
        repo.persist(winner, None),
        repo.persist(loser, None),
        repo.persist(rows("other", 1, 1), snapshot),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], AggregateConflict)
    assert all(isinstance(outcome, list) for i, outcome in enumerate(outcomes) if i != 2)
    assert "ROLLBACK" in _verbs(statements)  # ROLLBACK TO the loser's savepoint
    stored = await repo.get_events("T", "hot")
    assert [str(e.event_id) for e in stored[1:]] == [str(e.event_id) for e in winner]
    assert len(await repo.get_events("T", "first")) == 1
    assert len(await repo.get_events("T", "other")) == 1
    stored_snapshot = await repo.get_snapshot("T", "other")
    assert stored_snapshot is not None
    assert stored_snapshot.last_sequence == 1


async def test_a_retried_commit_in_a_group_returns_its_stored_positions(repo):
    batch = rows("a1", 1, 3)
    positions = await repo.persist(batch, None)
    again = await asyncio.gather(
        repo.persist(rows("b1", 1, 1), None),
        repo.persist(batch, None),
        repo.persist(rows("c1", 1, 1), None),
    )
    assert again[1] == positions
    assert len(await repo.get_events("T", "a1")) == 3


async def test_every_caller_returns_after_the_shared_commit(repo, tmp_path: Path):
    """As each commit of a group returns, another connection already sees its events:
    nobody is answered before the COMMIT."""
    other = sqlite3.connect(tmp_path / "store.db")
    try:
        tasks = [asyncio.create_task(repo.persist(rows(f"a{n}", 1, 3), None)) for n in range(12)]
        for done in asyncio.as_completed(tasks):
            positions = await done
            (count,) = other.execute(
                "SELECT count(*) FROM events WHERE position >= ? AND position <= ?",
                (positions[0], positions[-1]),
            ).fetchone()
            assert count == 3
    finally:
        other.close()


async def _blocked(repo: SqliteEventRepository) -> tuple[threading.Event, asyncio.Future[None]]:
    """Hold the worker in a call until the event is set, so what is queued meanwhile is
    taken in one pass."""
    release, started = threading.Event(), threading.Event()

    def hold(_: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(repo.run(hold))
    await asyncio.to_thread(started.wait, 10)
    return release, held


@pytest.fixture
async def memory_repo():
    async with SqliteEventRepository(":memory:") as repository:
        await repository.create_schema()
        yield repository


async def test_reads_run_before_the_commits_queued_ahead_of_them(memory_repo):
    """On one connection (":memory:": a second one would be another database) a pass runs
    its reads before the commits queued ahead of them."""
    repo = memory_repo
    await repo.persist(rows("a1", 1, 1), None)
    statements = await _traced(repo)
    release, held = await _blocked(repo)
    commits = [asyncio.ensure_future(repo.persist(rows(f"b{n}", 1, 1), None)) for n in range(3)]
    await asyncio.sleep(0)
    read = asyncio.ensure_future(repo.get_events("T", "b0"))
    loaded = asyncio.ensure_future(repo.get_snapshot_and_events("T", "a1"))
    await asyncio.sleep(0)
    release.set()
    await held
    await asyncio.gather(*commits)
    # The reads did not wait for the group: they ran first and saw none of its commits.
    assert await read == []
    assert [e.sequence for e in (await loaded)[1]] == [1]
    verbs = _verbs(statements)
    assert verbs.index("BEGIN") > 1  # after the reads' SELECTs
    assert verbs.count("COMMIT") == 1  # the three commits in one transaction
    assert [e.sequence for e in await repo.get_events("T", "b0")] == [1]


async def test_reads_of_a_file_do_not_wait_for_the_writer(repo):
    """A file's reads run on their own connection and thread: while the writer is busy
    (here held in a call, as in an fsync) loads are answered, from what is committed; a
    read started after a commit returned sees it."""
    await repo.persist(rows("a1", 1, 2), SerializedSnapshot("T", "a1", b'{"s": 1}', 1, 1))
    release, held = await _blocked(repo)
    try:
        queued = asyncio.ensure_future(repo.persist(rows("a1", 3, 1), None))
        await asyncio.sleep(0)
        events = await asyncio.wait_for(repo.get_events("T", "a1"), 5)
        snapshot, after = await asyncio.wait_for(repo.get_snapshot_and_events("T", "a1"), 5)
        page = await asyncio.wait_for(collect(repo.stream_all_events("T")), 5)
        assert [e.sequence for e in events] == [1, 2]  # the queued commit is not written
        assert snapshot is not None
        assert (snapshot.last_sequence, [e.sequence for e in after]) == (1, [2])
        assert [e.sequence for e in page] == [1, 2]
        assert not queued.done()
    finally:
        release.set()
    await held
    await queued
    assert [e.sequence for e in await repo.get_events("T", "a1")] == [1, 2, 3]


async def collect(events):
    return [event async for event in events]


async def test_a_call_that_is_not_a_read_keeps_its_place_among_commits(repo):
    statements = await _traced(repo)
    release, held = await _blocked(repo)
    first = asyncio.ensure_future(repo.persist(rows("c1", 1, 1), None))
    await asyncio.sleep(0)
    counted = asyncio.ensure_future(
        repo.run(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0])
    )
    await asyncio.sleep(0)
    second = asyncio.ensure_future(repo.persist(rows("c2", 1, 1), None))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(held, first, second)
    assert await counted == 1  # run() after the first commit sees it, not the second
    assert _verbs(statements).count("COMMIT") == 2


async def test_groups_are_bounded(repo):
    statements = await _traced(repo)
    writers = 2 * MAX_GROUP + 5
    await asyncio.gather(*(repo.persist(rows(f"a{n}", 1, 1), None) for n in range(writers)))
    assert _verbs(statements).count("COMMIT") >= 3
    assert len([e async for e in repo.stream_all_events("T")]) == writers


def test_commit_group_rolls_back_everything_on_an_error_that_is_not_a_conflict(tmp_path):
    connection = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")

    def insert(n: int):
        return lambda c: c.execute("INSERT INTO t VALUES (?)", (n,)).rowcount

    def broken(c: sqlite3.Connection) -> int:
        c.execute("INSERT INTO missing VALUES (1)")
        return 0

    with pytest.raises(sqlite3.OperationalError, match="missing"):
        commit_group(connection, [insert(1), broken, insert(2)])
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)
    # A conflict (here a unique key) fails alone.
    outcomes = commit_group(connection, [insert(1), insert(1), insert(2)])
    assert outcomes[0] == (1, None)
    assert isinstance(outcomes[1][1], sqlite3.IntegrityError)
    assert outcomes[2] == (1, None)
    assert connection.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
    connection.close()
