"""SQLite-only behaviour: processes sharing a file, file errors, lock timeouts, one hop per
call, URLs and factories. Everything the port promises is in tests/conformance."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

import cqrs
import cqrs_sqlite.repository
from cqrs import (
    AggregateConflict,
    ConfigurationError,
    DatabaseConnectionError,
    GenericQuery,
    NotOpenError,
    PersistedEventStore,
    SerializedEvent,
    SerializedSnapshot,
    ViewContext,
    check_batch,
    default_codec,
)
from cqrs.ddl import ddl_files
from cqrs_sqlite import (
    SqliteEventRepository,
    SqliteViewRepository,
    from_url,
    sqlite_aggregate_cqrs,
    sqlite_cqrs,
    sqlite_snapshot_cqrs,
)
from cqrs_sqlite._group_commit import Worker
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    BankAccountView,
    DepositMoney,
    OpenAccount,
)


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


# -- several OS processes on one file --------------------------------------------------------

WRITER = """
import asyncio, json, pathlib, sys, time, uuid
from datetime import UTC, datetime
from cqrs import AggregateConflict, SerializedEvent
from cqrs_sqlite import SqliteEventRepository

async def main(path, name, commits, writers):
    committed, conflicts = [], 0
    async with SqliteEventRepository(path, busy_timeout=60) as repository:
        await repository.create_schema()
        # A barrier: every writer starts once all of them are ready.
        ready = pathlib.Path(path).parent
        (ready / f"ready-{name}").touch()
        deadline = time.monotonic() + 60
        while len(list(ready.glob("ready-*"))) < writers and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for i in range(commits):
            aggregate_id = f"hot{i % 3}" if i % 2 else f"own-{name}"
            while True:
                stored = len(await repository.get_events("T", aggregate_id))
                now = datetime.now(UTC)
                batch = [
                    SerializedEvent("T", aggregate_id, stored + k + 1, "E", "1.0",
                                    json.dumps({"by": name, "i": i}).encode(), b"{}", now,
                                    uuid.uuid4())
                    for k in range(1 + i % 4)
                ]
                try:
                    await repository.persist(batch, None)
                except AggregateConflict:
                    conflicts += 1
                    continue
                committed.extend(str(e.event_id) for e in batch)
                break
            await asyncio.sleep(0.001)  # let the other process take the write lock too
    print(json.dumps({"committed": committed, "conflicts": conflicts}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def test_two_processes_append_to_one_file_and_lose_or_duplicate_nothing(tmp_path):
    path = tmp_path / "store.db"
    commits = 200
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            str(path),
            name,
            str(commits),
            "2",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("p1", "p2")
    ]
    # Tail the global stream from this process while the two writers run.
    seen: list[tuple[int, str]] = []
    async with SqliteEventRepository(path, busy_timeout=60) as reader:
        await reader.create_schema()

        async def tail() -> None:
            checkpoint = None
            while any(p.returncode is None for p in processes):
                async for event in reader.stream_all_events(None, checkpoint):
                    seen.append((event.position, str(event.event_id)))
                    checkpoint = event.position
                await asyncio.sleep(0.002)
            seen.extend(
                [
                    (e.position, str(e.event_id))
                    async for e in reader.stream_all_events(None, checkpoint)
                ]
            )

        tailing = asyncio.create_task(tail())
        outputs = [await p.communicate() for p in processes]
        await tailing
        for process, (_, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err.decode()
        reports = [json.loads(out) for out, _ in outputs]
        committed = [event_id for report in reports for event_id in report["committed"]]
        stored = [e async for e in reader.stream_all_events(None)]

    assert len(committed) == len(set(committed))
    assert sorted(str(e.event_id) for e in stored) == sorted(committed), "lost or extra events"
    positions = [e.position for e in stored]
    assert positions == sorted(set(positions))
    by_aggregate: dict[str, list[int]] = {}
    for event in stored:
        by_aggregate.setdefault(event.aggregate_id, []).append(event.sequence)
    for sequences in by_aggregate.values():
        assert sequences == list(range(1, len(sequences) + 1)), "a gap or a duplicate sequence"
    assert {"hot0", "hot1", "hot2", "own-p1", "own-p2"} == set(by_aggregate)
    # The tailing reader in a third process saw every event once, in position order.
    assert [event_id for _, event_id in seen] == [str(e.event_id) for e in stored]
    # The writers really ran at the same time: their commits interleave in the stream.
    writers = [default_codec.decode_untyped(e.payload)["by"] for e in stored]  # type: ignore[index]
    assert sum(a != b for a, b in itertools.pairwise(writers)) > 10


async def test_writers_on_two_connections_keep_positions_in_commit_order(tmp_path):
    path = tmp_path / "store.db"
    async with (
        SqliteEventRepository(path) as first,
        SqliteEventRepository(path) as second,
        SqliteEventRepository(path) as reader,
    ):
        await first.create_schema()
        seen: list[int] = []
        done = asyncio.Event()

        async def write(repository: SqliteEventRepository, name: str) -> None:
            for i in range(40):
                await repository.persist(rows(name, 1 + 3 * i, 3), None)

        async def tail() -> None:
            checkpoint = 0
            while True:
                finished = done.is_set()
                async for event in reader.stream_all_events(None, checkpoint):
                    seen.append(event.position)
                    checkpoint = event.position
                if finished:
                    return
                await asyncio.sleep(0)

        tailing = asyncio.create_task(tail())
        await asyncio.gather(write(first, "a"), write(second, "b"))
        done.set()
        await tailing
    assert seen == sorted(set(seen))
    assert len(seen) == 240


# -- files that cannot be used -----------------------------------------------------------------


async def test_missing_directory_is_a_clear_error_naming_the_path(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "store.db"
    repository = SqliteEventRepository(path)
    with pytest.raises(DatabaseConnectionError, match="cannot be opened") as caught:
        await repository.open()
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    await repository.close()  # a failed open leaves nothing to close


async def test_a_directory_is_not_a_database_file(tmp_path):
    with pytest.raises(DatabaseConnectionError, match=str(tmp_path)):
        await SqliteEventRepository(tmp_path).open()


async def test_corrupt_file_is_a_clear_error_naming_the_path(tmp_path):
    path = tmp_path / "store.db"
    path.write_bytes(b"this is certainly not an SQLite database\n" * 200)
    with pytest.raises(DatabaseConnectionError, match="not a database") as caught:
        await SqliteEventRepository(path).open()
    assert str(path) in str(caught.value)
    assert path.read_bytes().startswith(b"this is certainly not")  # left untouched


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable for this process: chmod, or chattr +i when we are root."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    if (
        chattr is None
        or subprocess.run([chattr, "+i", str(path)], check=False, capture_output=True).returncode
    ):
        pytest.skip("running as root without chattr +i: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_read_only_file_is_a_clear_error_naming_the_path(tmp_path):
    path = tmp_path / "store.db"
    sqlite3.connect(path).close()  # an empty file, not yet in WAL mode
    with read_only(path):
        repository = SqliteEventRepository(path)
        with pytest.raises(DatabaseConnectionError, match="read-only") as caught:
            await repository.open()
        assert str(path) in str(caught.value)


async def test_busy_lock_waits_for_the_timeout_then_names_the_file(tmp_path):
    path = tmp_path / "store.db"
    async with SqliteEventRepository(path, busy_timeout=0.3) as repository:
        await repository.create_schema()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer keeps the write lock
        try:
            started = time.monotonic()
            with pytest.raises(DatabaseConnectionError, match="busy timeout") as caught:
                await repository.persist(rows("a1", 1, 2), None)
            waited = time.monotonic() - started
            assert str(path) in str(caught.value)
            assert 0.25 <= waited < 3
            assert await repository.get_events("T", "a1") == []  # reads are not blocked
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await repository.persist(rows("a1", 1, 2), None) == [1, 2]
        assert not await repository.run(lambda connection: connection.in_transaction)


def every_call(repository: SqliteEventRepository) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each method of the repository and of a view repository on it, ready to call."""
    views = repository.view_repository(BankAccountView, "accounts")
    return {
        "create_schema": repository.create_schema,
        "get_events": lambda: repository.get_events("T", "a1"),
        "get_last_events": lambda: repository.get_last_events("T", "a1", 1),
        "get_snapshot": lambda: repository.get_snapshot("T", "a1"),
        "persist": lambda: repository.persist(rows("a1", 2, 1), None),
        "stream_events": lambda: collect(repository.stream_events("T", "a1")),
        "stream_all_events": lambda: collect(repository.stream_all_events(None)),
        "stream_all_events of a type": lambda: collect(repository.stream_all_events("T")),
        "run": lambda: repository.run(lambda connection: None),
        "view create_schema": views.create_schema,
        "view load": lambda: views.load("v"),
        "view load_with_context": lambda: views.load_with_context("v"),
        "view update_view": lambda: views.update_view(BankAccountView(), ViewContext("v", 0)),
    }


async def collect(events: AsyncIterator[SerializedEvent]) -> list[SerializedEvent]:
    return [event async for event in events]


@pytest.mark.parametrize("path", ["file", ":memory:"])
async def test_every_call_before_open_and_after_close_raises_not_open(tmp_path, path):
    repository = SqliteEventRepository(tmp_path / "store.db" if path == "file" else path)

    async def refused() -> None:
        for name, call in every_call(repository).items():
            with pytest.raises(NotOpenError, match="is not open") as caught:
                await call()
            assert repository.path in str(caught.value), name

    await refused()
    async with repository:
        await repository.create_schema()
        await repository.persist(rows("a1", 1, 1), None)
    await refused()
    await repository.close()  # idempotent
    await refused()


# -- lifecycle -------------------------------------------------------------------------------


def _worker(connection: sqlite3.Connection) -> tuple[int, int]:
    return id(connection), threading.get_ident()


@pytest.mark.parametrize("path", ["file", ":memory:"])
async def test_open_again_keeps_the_data_the_connection_and_the_thread(tmp_path, path):
    repository = SqliteEventRepository(tmp_path / "store.db" if path == "file" else path)
    async with repository:
        await repository.create_schema()
        await repository.persist(rows("a1", 1, 2), None)
        worker = await repository.run(_worker)
        await repository.open()
        await asyncio.gather(repository.open(), repository.open())
        assert await repository.run(_worker) == worker
        assert [e.sequence for e in await repository.get_events("T", "a1")] == [1, 2]
        assert await repository.persist(rows("a1", 3, 1), None) == [3]


@pytest.mark.parametrize("path", ["file", ":memory:"])
async def test_concurrent_opens_start_one_writer_and_one_reader(tmp_path, monkeypatch, path):
    """A file gets a writer and a reader, each a connection on its own thread; a private
    ":memory:" database one connection (a second one would open another database)."""
    started: list[Worker] = []

    class Counting(Worker):
        def start(self) -> None:
            super().start()
            started.append(self)

    connections: list[sqlite3.Connection | None] = []
    connect, connect_reader = SqliteEventRepository._connect, SqliteEventRepository._connect_reader

    def counting_connect(self: SqliteEventRepository) -> sqlite3.Connection:
        connection = connect(self)
        connections.append(connection)
        return connection

    def counting_connect_reader(self: SqliteEventRepository) -> sqlite3.Connection | None:
        connections.append(connect_reader(self))
        return connections[-1]

    monkeypatch.setattr(cqrs_sqlite.repository, "Worker", Counting)
    monkeypatch.setattr(SqliteEventRepository, "_connect", counting_connect)
    monkeypatch.setattr(SqliteEventRepository, "_connect_reader", counting_connect_reader)
    repository = SqliteEventRepository(tmp_path / "store.db" if path == "file" else path)
    await asyncio.gather(*(repository.open() for _ in range(5)))
    try:
        expected = 2 if path == "file" else 1
        assert (len(started), len(connections)) == (expected, expected)
        assert all(connection is not None for connection in connections)
        mode = "wal" if path == "file" else "memory"
        assert await repository.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()) == (
            mode,
        )
    finally:
        await repository.close()
    for worker in started:  # close() stops every thread it started
        worker._thread.join(5)
        assert not worker._thread.is_alive()


# -- one hop per call ------------------------------------------------------------------------


async def test_commit_and_load_each_take_one_hop_to_the_database_thread(repo, monkeypatch):
    hops: list[str] = []
    statements: list[str] = []
    await repo.run(lambda connection: connection.set_trace_callback(statements.append))
    # Every way to a worker's thread (the writer's or the reader's) is counted.
    originals = {name: getattr(Worker, name) for name in ("call", "read", "commit")}

    def counting(name: str) -> Callable[[Worker, Any], Any]:
        def hop(self: Worker, fn: Any) -> Any:
            hops.append(name)
            return originals[name](self, fn)

        return hop

    for name in originals:
        monkeypatch.setattr(Worker, name, counting(name))

    snapshot = SerializedSnapshot("T", "a1", b'{"s": 1}', 10, 1)
    await repo.persist(rows("a1", 1, 10), snapshot)
    assert hops == ["commit"]
    verbs = [s.split()[0].upper() for s in statements]
    assert (verbs[0], verbs[-1]) == ("BEGIN", "COMMIT")
    assert verbs.count("INSERT") == 11  # ten events (one prepared statement) and the snapshot
    assert verbs.count("SELECT") == 2  # max(sequence), last_insert_rowid(): nothing more

    hops.clear()
    assert len(await repo.get_events("T", "a1")) == 10
    assert hops == ["read"]

    store = PersistedEventStore(repo, BankAccount)
    hops.clear()
    await store.commit(await _bank_events(), await store.load_aggregate("acc"), {})
    assert hops == ["read", "commit"]
    hops.clear()
    await store.load_aggregate("acc")
    assert hops == ["read"]


async def test_a_failing_load_is_translated_naming_the_file_and_the_aggregate(repo):
    await repo.run(lambda connection: connection.execute("DROP TABLE events"))
    loads = {
        "get_events": lambda: repo.get_events("T", "a1"),
        "get_last_events": lambda: repo.get_last_events("T", "a1", 3),
        "get_snapshot_and_events": lambda: repo.get_snapshot_and_events("T", "a1"),
    }
    for name, load in loads.items():
        with pytest.raises(cqrs.UnexpectedError, match="loading T 'a1'") as caught:
            await load()
        assert repo.path in str(caught.value), name
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError), name


async def _bank_events():
    account = BankAccount()
    account.aggregate_id = "acc"
    opened = await account.handle(OpenAccount("acc"), BankAccountServices())
    for event in opened:
        account.apply(event)
    deposited = await account.handle(DepositMoney(Decimal("5.00")), BankAccountServices())
    return [*opened, *deposited]


async def test_a_cancelled_commit_leaves_no_transaction_open(repo):
    for _ in range(20):
        task = asyncio.create_task(repo.persist(rows("c", 1, 5), None))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not await repo.run(lambda connection: connection.in_transaction)
        stored = len(await repo.get_events("T", "c"))
        assert stored in (0, 5)  # all or nothing
        if stored:
            break
    assert await repo.persist(rows("other", 1, 1), None)


# -- schema ----------------------------------------------------------------------------------


async def test_create_schema_applies_and_records_exactly_the_ddl_files(tmp_path):
    path = tmp_path / "store.db"
    first = SqliteEventRepository(path, "orders", "order_snapshots", page_size=7)
    second = first.with_tables("invoices", "invoice_snapshots")
    assert (second.path, second.busy_timeout, second.synchronous, second.page_size) == (
        first.path,
        first.busy_timeout,
        first.synchronous,
        7,
    )
    async with first, second:
        await first.create_schema()
        await second.create_schema()
        await second.create_schema()
        names = [name for name, _ in ddl_files("sqlite")]
        for repository in (first, second):
            applied = await repository.run(
                lambda c, r=repository: [
                    row[0]
                    for row in c.execute(f"SELECT name FROM {r.schema_table} ORDER BY name")  # noqa: S608
                ]
            )
            assert applied == names
        tables = await first.run(
            lambda c: {row[0] for row in c.execute("SELECT name FROM sqlite_master")}
        )
    assert {
        "orders",
        "order_snapshots",
        "orders_schema",
        "invoices",
        "invoice_snapshots",
        "invoices_schema",
    } <= tables


def query_plan(connection: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    return " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_stream_pages_are_index_ranges_that_never_sort(repo):
    # Without an index on (aggregate_type, position), a page of one type is found through the
    # unique key and sorted ("USE TEMP B-TREE FOR ORDER BY"): quadratic over a long stream.
    queries = {
        "type page": (
            repo.statements.type_page,
            (0, "T", 500),
            "(aggregate_type=? AND position>?)",
        ),
        "all page": (repo.statements.all_page, (0, 500), "INTEGER PRIMARY KEY (rowid>?)"),
        "aggregate page": (
            repo.statements.events_page,
            ("T", "a1", 0, 500),
            "(aggregate_type=? AND aggregate_id=? AND sequence>?)",
        ),
    }
    for aggregate in range(40):
        await repo.persist(rows(f"a{aggregate}", 1, 5), None)
        await repo.persist(
            [replace(e, aggregate_type="U") for e in rows(f"a{aggregate}", 1, 5)], None
        )
    for analyzed in (False, True):
        if analyzed:  # the planner must keep the plan once it has statistics
            await repo.run(lambda c: c.execute("ANALYZE"))
        for name, (sql, params, search) in queries.items():
            plan = await repo.run(lambda c, sql=sql, params=params: query_plan(c, sql, params))
            assert "TEMP B-TREE" not in plan, (name, plan)
            assert plan.startswith("SEARCH events USING"), (name, plan)
            assert search in plan, (name, plan)
            assert " INDEX " in plan or "PRIMARY KEY" in plan, (name, plan)


async def test_create_schema_adds_the_type_index_to_a_database_made_by_001(tmp_path):
    path = tmp_path / "store.db"
    first = ddl_files("sqlite")[0]
    async with SqliteEventRepository(path) as repository:
        await repository.create_schema()
        await repository.persist(rows("a1", 1, 3), None)

        def downgrade(connection: sqlite3.Connection) -> None:
            connection.execute("DROP INDEX events_type_position")
            connection.execute("DELETE FROM events_schema WHERE name != ?", (first[0],))

        await repository.run(downgrade)
        plan = await repository.run(
            lambda c: query_plan(c, repository.statements.type_page, (0, "T", 500))
        )
        assert "TEMP B-TREE" in plan  # the bug this migration fixes
        await repository.create_schema()
        plan = await repository.run(
            lambda c: query_plan(c, repository.statements.type_page, (0, "T", 500))
        )
        assert "TEMP B-TREE" not in plan
        applied = await repository.run(
            lambda c: [row[0] for row in c.execute("SELECT name FROM events_schema ORDER BY name")]
        )
        assert applied == [name for name, _ in ddl_files("sqlite")]
        indexes = await repository.run(
            lambda c: [row[0] for row in c.execute("SELECT name FROM sqlite_master")]
        )
        assert "events_type_position" in indexes
        assert len([e async for e in repository.stream_all_events("T")]) == 3


@pytest.mark.parametrize("page_size", [0, -1, 1.5, "5", None, True])
def test_page_size_must_be_a_positive_int(page_size):
    with pytest.raises(ConfigurationError, match="page_size"):
        SqliteEventRepository(page_size=page_size)


# -- URLs and connect ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///bank.db", str(Path("bank.db").absolute())),
        ("sqlite:///data/bank.db", str(Path("data/bank.db").absolute())),
        ("sqlite:////var/lib/bank.db", "/var/lib/bank.db"),
        ("sqlite:///my%20bank.db", str(Path("my bank.db").absolute())),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("SQLITE:///bank.db", str(Path("bank.db").absolute())),
    ],
)
def test_from_url_maps_paths(url, expected):
    assert from_url(url).path == expected


def test_from_url_options():
    repository = from_url(
        "sqlite:///x.db?busy_timeout=0.5&synchronous=normal&events_table=ev&snapshots_table=sn"
    )
    assert (repository.busy_timeout, repository.synchronous) == (0.5, "NORMAL")
    assert (repository.events_table, repository.snapshots_table) == ("ev", "sn")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://somehost/x.db",
        "sqlite://:memory:/x.db",
        "sqlite:///x.db?colour=blue",
        "sqlite:///x.db?busy_timeout=soon",
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///x.db?events_table=bad-name",
    ],
)
def test_bad_sqlite_urls_are_configuration_errors(url):
    with pytest.raises(ConfigurationError):
        from_url(url)


async def test_connect_opens_a_file_and_memory(tmp_path):
    async with cqrs.connect(f"sqlite:///{tmp_path}/bank.db") as repository:
        assert isinstance(repository, SqliteEventRepository)
        await repository.persist(rows("a1", 1, 2), None)
    async with cqrs.connect(f"sqlite:///{tmp_path}/bank.db") as repository:
        assert len(await repository.get_events("T", "a1")) == 2
    async with cqrs.connect("sqlite://:memory:") as repository:
        assert await repository.get_events("T", "a1") == []
        await repository.persist(rows("a1", 1, 1), None)
        assert len(await repository.get_events("T", "a1")) == 1


# -- factories and views -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["events", "snapshots", "aggregate"])
async def test_factories_run_the_bank_account(repo, kind):
    views = repo.view_repository(BankAccountView, "accounts")
    assert isinstance(views, SqliteViewRepository)
    await views.create_schema()
    queries = [GenericQuery(views, BankAccountView)]
    services = BankAccountServices()
    if kind == "events":
        framework = sqlite_cqrs(repo, BankAccount, queries, services)
    elif kind == "snapshots":
        framework = sqlite_snapshot_cqrs(repo, BankAccount, queries, 2, services)
    else:
        framework = sqlite_aggregate_cqrs(repo, BankAccount, queries, services)
    await framework.execute("acc-1", OpenAccount("acc-1"))
    for amount in ("10.00", "2.50", "0.25"):
        await framework.execute("acc-1", DepositMoney(Decimal(amount)))
    context = await framework.store.load_aggregate("acc-1")
    assert (context.version, context.aggregate.balance) == (4, Decimal("12.75"))
    view = await views.load("acc-1")
    assert view is not None
    assert view.balance == Decimal("12.75")
    snapshot = await repo.get_snapshot(BankAccount.aggregate_type, "acc-1")
    expected = {"events": None, "snapshots": 4, "aggregate": 4}[kind]
    assert (snapshot and snapshot.last_sequence) == expected


# -- surface ---------------------------------------------------------------------------------


def test_all_is_sorted_complete_and_documented():
    import cqrs_sqlite  # noqa: PLC0415 - the module under test

    assert list(cqrs_sqlite.__all__) == sorted(cqrs_sqlite.__all__)
    modules = {
        "checkpoints",
        "factories",
        "operations",
        "repository",
        "rows",
        "statements",
        "url",
        "views",
        "wake_ups",
    }
    public = {name for name in dir(cqrs_sqlite) if not name.startswith("_")} - modules
    assert public == set(cqrs_sqlite.__all__)
    for name in cqrs_sqlite.__all__:
        assert getattr(cqrs_sqlite, name).__doc__, f"{name} has no docstring"


async def test_a_gap_in_sequences_is_a_conflict_and_a_mixed_batch_is_refused(repo):
    await repo.persist(rows("a1", 1, 2), None)
    with pytest.raises(AggregateConflict, match="sequence 5"):
        await repo.persist(rows("a1", 5, 1), None)
    with pytest.raises(ValueError, match="consecutive"):
        await repo.persist([*rows("a1", 3, 1), *rows("a1", 5, 1)], None)
    with pytest.raises(ValueError, match="consecutive"):
        await repo.persist([*rows("a1", 3, 1), *rows("b1", 4, 1)], None)
    assert [e.sequence for e in await repo.get_events("T", "a1")] == [1, 2]


# -- persist: idempotence and the batch rule ---------------------------------------------------


async def test_a_retried_batch_returns_its_stored_positions_in_one_hop(repo, monkeypatch):
    batch = rows("a1", 1, 3)
    snapshot = SerializedSnapshot("T", "a1", b'{"s": 3}', 3, 1)
    positions = await repo.persist(batch, snapshot)
    await repo.persist(rows("b1", 1, 2), None)
    await repo.persist(rows("a1", 4, 2), None)

    statements: list[str] = []
    hops: list[str] = []
    call = repo._call

    async def counting(hop, context):
        hops.append(context)
        return await call(hop, context)

    await repo.run(lambda connection: connection.set_trace_callback(statements.append))
    monkeypatch.setattr(repo, "_call", counting)
    # A commit whose outcome was unknown, sent again: a success, and nothing stored twice.
    assert await repo.persist(batch, snapshot) == positions
    assert await repo.persist(batch[:2], None) == positions[:2]
    assert len(hops) == 2
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs == ["BEGIN", "SELECT", "SELECT", "COMMIT"] * 2  # under the write lock
    monkeypatch.undo()
    stored = await repo.get_events("T", "a1")
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in stored[:3]] == [str(e.event_id) for e in batch]
    stored_snapshot = await repo.get_snapshot("T", "a1")
    assert stored_snapshot is not None
    assert (stored_snapshot.last_sequence, stored_snapshot.snapshot_version) == (3, 1)


async def test_other_events_at_stored_sequences_and_gaps_are_conflicts(repo):
    batch = rows("a1", 1, 3)
    await repo.persist(batch, None)
    with pytest.raises(AggregateConflict, match="sequence 2"):
        await repo.persist(rows("a1", 2, 1), None)  # another writer's event 2
    with pytest.raises(AggregateConflict, match="sequence 2"):
        await repo.persist([*batch[1:], *rows("a1", 4, 1)], None)  # runs past the stored
    with pytest.raises(AggregateConflict, match="sequence 3"):
        await repo.persist([batch[2], replace(batch[1], sequence=4)], None)
    with pytest.raises(AggregateConflict, match="sequence 5"):
        await repo.persist(rows("a1", 5, 1), None)  # a gap
    assert [e.sequence for e in await repo.get_events("T", "a1")] == [1, 2, 3]


def core_error(batch: list[SerializedEvent]) -> str:
    """The message of the ValueError the core's check_batch raises for ``batch``."""
    try:
        check_batch(batch)
    except ValueError as error:
        return str(error)
    pytest.fail("check_batch accepted the batch")


@pytest.mark.parametrize(
    "batch",
    [
        [],
        [*rows("a1", 1, 1), *rows("a1", 3, 1)],
        [*rows("a1", 1, 1), *rows("b1", 2, 1)],
        rows("a1", 0, 2),
        rows("x" * 1025, 1, 1),
        rows("", 1, 1),
    ],
    ids=["empty", "gap", "two aggregates", "sequence 0", "long id", "empty id"],
)
async def test_bad_batches_get_the_cores_error_and_store_nothing(repo, batch):
    expected = core_error(batch)
    with pytest.raises(ValueError, match=re.escape(expected)) as caught:
        await repo.persist(batch, None)
    assert str(caught.value) == expected
    assert await repo.run(lambda c: c.execute("SELECT count(*) FROM events").fetchone()) == (0,)


# -- wake-ups ----------------------------------------------------------------------------------


async def waited(listener, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(listener.wait(seconds), seconds + 5)
    return time.monotonic() - started


def wake_threads() -> int:
    return sum(t.name.startswith("cqrs-sqlite-wake") for t in threading.enumerate())


async def test_a_commit_in_a_private_memory_database_wakes_its_listener_at_once():
    async with SqliteEventRepository(":memory:") as repository:
        await repository.create_schema()
        listener = repository.wake_ups()
        waiting = asyncio.create_task(waited(listener, 30))
        await asyncio.sleep(0.05)
        await repository.persist(rows("a", 1, 1), None)
        assert await waiting < 1.0
        with pytest.raises(AggregateConflict):
            await repository.persist(rows("a", 1, 1), None)
        assert await waited(listener, 0.2) >= 0.15  # a refused commit wakes nobody
        await listener.close()


COMMIT_ELSEWHERE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("CREATE TABLE IF NOT EXISTS elsewhere (x)")
connection.execute("INSERT INTO elsewhere VALUES (1)")
"""


async def test_a_commit_by_another_process_wakes_a_listener_within_its_check_interval(repo):
    listener = repo.wake_ups()
    assert wake_threads() == 0  # no thread, no connection before the first wait
    try:
        assert await waited(listener, 30) < 1.0  # connects and returns at once
        assert await waited(listener, 0.2) >= 0.15  # nothing committed since
        waiting = asyncio.create_task(waited(listener, 30))
        await asyncio.sleep(0.1)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", COMMIT_ELSEWHERE, repo.path
        )
        assert await process.wait() == 0
        started = time.monotonic()
        await waiting
        assert time.monotonic() - started < 0.5
        assert wake_threads() == 1
    finally:
        await listener.close()
        await listener.close()
    for _ in range(100):
        if wake_threads() == 0:
            break
        await asyncio.sleep(0.01)
    assert wake_threads() == 0


async def test_a_listener_on_a_missing_file_waits_its_timeout_then_finds_it(tmp_path, caplog):
    path = tmp_path / "later.db"
    repository = SqliteEventRepository(path)
    listener = repository.wake_ups()
    with caplog.at_level(logging.INFO, logger="cqrs.backends.sqlite"):
        try:
            for _ in range(2):
                assert 0.15 <= await waited(listener, 0.2) < 2
            assert not path.exists()  # a listener never creates the file
            async with repository:
                await repository.create_schema()
                assert await waited(listener, 30) < 1.0  # connects, returns at once
                waiting = asyncio.create_task(waited(listener, 30))
                await asyncio.sleep(0.05)
                await repository.persist(rows("a", 1, 1), None)
                assert await waiting < 1.0
        finally:
            await listener.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.backends.sqlite"]
    assert len(messages) == 2
    assert "cannot open a read connection" in messages[0]
    assert "reconnected" in messages[1]


def test_a_refused_sqlite_url_is_named_without_its_password():
    with pytest.raises(ConfigurationError) as caught:
        from_url("sqlite:///bank.db?password=secret")
    assert "secret" not in str(caught.value)
    assert "password=***" in str(caught.value)


async def test_a_connection_that_met_a_read_only_database_is_replaced(tmp_path, caplog):
    """SQLite decides at open whether a connection may write: once it met a read-only
    database it stays read-only after the file is writable again. The repository reconnects
    and tries once more, so writes work again without a restart (query_only stands in for
    a file that was read-only: root ignores file permissions)."""
    repository = SqliteEventRepository(tmp_path / "store.db")
    await repository.open()
    try:
        await repository.create_schema()
        await repository.run(lambda c: c.execute("PRAGMA query_only = ON").fetchall())
        with caplog.at_level(logging.WARNING, "cqrs.backends.sqlite"):
            positions = await repository.persist(rows("acc-1", 1, 1), None)
        assert len(positions) == 1
        assert "was read-only; reconnected" in caplog.text
        assert [e.sequence for e in await repository.get_events("T", "acc-1")] == [1]
        assert await repository.run(lambda c: c.execute("PRAGMA query_only").fetchone()[0]) == 0
    finally:
        await repository.close()
