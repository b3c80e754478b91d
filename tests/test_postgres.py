"""PostgreSQL-only behaviour: the seed upgrade, the global-order proof, faults and pools."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from backends_under_test.postgres import FACTORY
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

import cqrs
from cqrs import (
    AggregateConflict,
    ConfigurationError,
    DatabaseConnectionError,
    NotOpenError,
    PersistedEventStore,
    SerializedEvent,
    SerializedSnapshot,
    default_codec,
)
from cqrs.ddl import ddl_files, render
from cqrs.subscription import Subscription
from cqrs_postgres import (
    PostgresEventRepository,
    PostgresViewRepository,
    default_postgres_pool,
    from_url,
    postgres_aggregate_cqrs,
    postgres_cqrs,
    postgres_snapshot_cqrs,
)
from cqrs_postgres.schema import schema_version_table
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
)

URL = FACTORY.url
TYPE = "Thing"

# The seed's DDL, exactly as the design gives it.
SEED_DDL = """\
CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
  sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
  event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
  timestamp timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),
  PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
  last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
  current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
  timestamp timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),
  PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));
"""


def event(aggregate_id: str, sequence: int) -> SerializedEvent:
    payload = default_codec.encode({"n": sequence})
    now = datetime.now(UTC)
    return SerializedEvent(
        TYPE, aggregate_id, sequence, "Ev", "1.0", payload, b"{}", now, uuid.uuid4()
    )


def batch(aggregate_id: str, first: int, count: int) -> list[SerializedEvent]:
    return [event(aggregate_id, first + i) for i in range(count)]


async def collect(iterator):
    return [item async for item in iterator]


@pytest.fixture
async def tables() -> AsyncIterator[dict[str, str]]:
    reason = await FACTORY.unavailable()
    if reason is not None:
        required = os.environ.get("CQRS_TEST_REQUIRE", "").split(",")
        if "postgres" in [name.strip() for name in required]:
            pytest.fail(f"postgres is required (CQRS_TEST_REQUIRE) but {reason}")
        pytest.skip(f"postgres: {reason}")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield {"events": f"{prefix}_events", "snapshots": f"{prefix}_snaps", "prefix": prefix}
    finally:
        await FACTORY.cleanup(Path(), prefix)


@pytest.fixture
async def repository(tables) -> AsyncIterator[PostgresEventRepository]:
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        yield repository


async def raw() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(URL, autocommit=True)


# -- schema ------------------------------------------------------------------------------------


def test_the_first_ddl_file_is_the_seed_exactly():
    (name, text), *_ = ddl_files("postgres")
    assert name == "001_seed.sql"
    assert text == SEED_DDL


def test_render_renames_tables_and_derived_names_only():
    text = "CREATE INDEX events_position_key ON events (x); -- current_snapshot snapshots"
    renamed = render(text, {"events": "Orders", "snapshots": "s"})
    assert (
        renamed
        == 'CREATE INDEX "Orders_position_key" ON "Orders" (x); -- current_snapshot snapshots'
    )
    for _, ddl in ddl_files("postgres"):
        assert render(ddl, {"events": "events", "snapshots": "snapshots"}).replace('"', "") == (
            ddl.replace('"', "")
        )
    with pytest.raises(ConfigurationError, match="invalid"):
        render(text, {"events": "x" * 60})  # events_position_key would be 73 characters


async def test_seed_database_upgrades_in_place_and_old_rows_still_load(tables):
    events, snapshots = tables["events"], tables["snapshots"]
    opened = default_codec.encode(AccountOpened("old")).decode()
    deposits = [
        default_codec.encode(CustomerDepositedMoney(Decimal(n), Decimal(n * (n + 1) // 2))).decode()
        for n in range(1, 4)
    ]
    async with await raw() as conn:
        await conn.execute(render(SEED_DDL, {"events": events, "snapshots": snapshots}).encode())
        insert = sql.SQL(
            "INSERT INTO {} (aggregate_type, aggregate_id, sequence, event_type, event_version,"
            " payload, metadata) VALUES (%s, %s, %s, %s, '1.0', %s, '{{}}')"
        ).format(sql.Identifier(events))
        await conn.execute(insert, ("BankAccount", "old", 1, "AccountOpened", opened))
        for n, payload in enumerate(deposits, start=2):
            await conn.execute(insert, ("BankAccount", "old", n, "CustomerDepositedMoney", payload))
        await conn.execute(insert, ("Other", "x", 1, "Whatever", '{"a": 1}'))
        # Two snapshot rows of one aggregate, the old way: only the newest survives.
        snap = sql.SQL("INSERT INTO {} VALUES ('BankAccount', 'old', %s, %s, %s)").format(
            sql.Identifier(snapshots)
        )
        await conn.execute(snap, (1, 1, '{"garbage": true}'))
        await conn.execute(snap, (2, 2, '{"opened": true, "balance": "1"}'))

    repository = from_url(URL, events_table=events, snapshots_table=snapshots)
    async with repository:
        await repository.create_schema()
        await repository.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=2)
        loaded = await store.load_aggregate("old")
        assert (loaded.aggregate.balance, loaded.version) == (Decimal(6), 4)
        envelopes = await store.load_events("old")
        assert [e.sequence for e in envelopes] == [1, 2, 3, 4]
        assert len({e.event_id for e in envelopes}) == 4
        framework = cqrs.CqrsFramework(store, (), BankAccountServices())
        await framework.execute("old", DepositMoney(Decimal(4)))
        await framework.execute("new", OpenAccount("new"))
        await framework.execute("old", DepositMoney(Decimal(5)))
        assert (await store.load_aggregate("old")).aggregate.balance == Decimal(15)
        streamed = await collect(repository.stream_all_events(None))
        positions = [e.position for e in streamed]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions) == 8
        assert [(e.aggregate_id, e.sequence) for e in streamed[:5]] == [
            ("old", 1),
            ("old", 2),
            ("old", 3),
            ("old", 4),
            ("x", 1),
        ]
        snapshot = await repository.get_snapshot("BankAccount", "old")
        assert snapshot is not None
        assert snapshot.last_sequence == 6
    async with await raw() as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT file FROM {} ORDER BY file").format(
                sql.Identifier(schema_version_table(events))
            )
        )
        assert [row[0] for row in await cursor.fetchall()] == [
            name for name, _ in ddl_files("postgres")
        ]


async def test_concurrent_create_schema_from_separate_pools_upgrades_a_seed_once(tables):
    events, snapshots = tables["events"], tables["snapshots"]
    async with await raw() as conn:
        await conn.execute(render(SEED_DDL, {"events": events, "snapshots": snapshots}).encode())
    repositories = [
        from_url(URL, events_table=events, snapshots_table=snapshots, max_size=1) for _ in range(4)
    ]
    for repository in repositories:
        await repository.open()
    try:
        await asyncio.gather(*(r.create_schema() for r in repositories))
        await repositories[0].persist(batch("a", 1, 2), None)
        assert len(await repositories[3].get_events(TYPE, "a")) == 2
    finally:
        for repository in repositories:
            await repository.close()


async def test_dropped_tables_are_created_again_despite_their_record(repository):
    await repository.persist(batch("a", 1, 1), None)
    async with await raw() as conn:
        await conn.execute(
            sql.SQL("DROP TABLE {}, {}").format(
                sql.Identifier(repository.events_table), sql.Identifier(repository.snapshots_table)
            )
        )
    await repository.create_schema()
    assert await repository.get_events(TYPE, "a") == []
    await repository.persist(batch("a", 1, 1), None)


async def test_half_a_seed_schema_is_a_clear_error(tables):
    async with await raw() as conn:
        await conn.execute(
            render(SEED_DDL.split(";", maxsplit=1)[0], {"events": tables["events"]}).encode()
        )
    async with from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"]
    ) as r:
        with pytest.raises(ConfigurationError, match="exists but"):
            await r.create_schema()


# -- global order ------------------------------------------------------------------------------


async def _persist_in(conn: psycopg.AsyncConnection, repository, rows) -> list[int]:
    """Run the repository's own commit statement inside ``conn``'s open transaction."""
    params = [
        rows[0].aggregate_type,
        rows[0].aggregate_id,
        [e.sequence for e in rows],
        [e.event_type for e in rows],
        [e.event_version for e in rows],
        [e.payload.decode() for e in rows],
        [e.metadata.decode() for e in rows],
        [e.timestamp for e in rows],
        [e.event_id for e in rows],
        rows[0].aggregate_type,
        rows[0].aggregate_id,
    ]
    cursor = await conn.execute(repository.statements.persist, params)
    return [row[0] for row in await cursor.fetchall()]


async def _take(conn: psycopg.AsyncConnection, repository, row: SerializedEvent) -> None:
    """Insert ``row`` in ``conn``'s open transaction with a plain INSERT (none of the commit
    statement's checks), so its sequence is taken but not yet visible to others."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (aggregate_type, aggregate_id, sequence, event_type, event_version,"
            " payload, metadata, event_id, position) VALUES (%s, %s, %s, 'Ev', '1.0', '{{}}',"
            " '{{}}', %s, pg_current_xact_id()::text::bigint * 1048576 + 1)"
        ).format(sql.Identifier(repository.events_table)),
        (row.aggregate_type, row.aggregate_id, row.sequence, row.event_id),
    )


async def test_a_later_commit_of_an_older_transaction_is_never_skipped(repository):
    """Transaction ids are taken in one order and committed in another: the reader must hold
    the younger commit back until the older transaction ends, then see both in order."""
    async with await psycopg.AsyncConnection.connect(URL) as older:
        await older.execute("SELECT pg_current_xact_id()")  # takes its id now, commits last
        younger = await repository.persist(batch("young", 1, 2), None)

        repository.hold_back_wait = 0.2
        first_read = await collect(repository.stream_all_events(None))
        assert first_read == []  # held back: an older transaction is still running
        # Without the horizon, a reader would already see the younger commit.
        async with await raw() as conn:
            cursor = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(repository.events_table))
            )
            assert (await cursor.fetchone())[0] == 2

        old = await _persist_in(older, repository, batch("old", 1, 1))
        await older.commit()
    assert old[0] < younger[0]  # the older transaction's row sorts first though committed last
    streamed = await collect(repository.stream_all_events(None))
    assert [e.aggregate_id for e in streamed] == ["old", "young", "young"]
    assert [e.position for e in streamed] == old + younger


async def test_transaction_ids_past_2_to_the_43_fail_loudly_and_reads_keep_working(
    repository, tables
):
    """position = xid8 << 20 leaves 43 bits for the 64-bit transaction id (epoch included):
    2**43 transactions, under three years at 100k per second. Past that a bigint shift wraps
    silently to negative positions, which tailing readers would never see (and a wrapped
    horizon would hide every event). Writes must fail instead, and reads must still work.
    The server's transaction-id functions are shadowed by same-named ones on the
    connection's search_path, so the repository's own statements see huge ids."""
    await repository.persist(batch("before", 1, 2), None)
    fake = f"{tables['prefix']}_fake_xid"
    top = 1 << 43

    async def huge_ids(conn: psycopg.AsyncConnection, xid: int, xmin: int) -> None:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(fake)))
        for name, argument, value in (
            ("pg_current_xact_id", "", xid),
            ("pg_snapshot_xmin", "pg_snapshot", xmin),
        ):
            await conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}.{}({}) RETURNS xid8 LANGUAGE sql "
                    "AS $$ SELECT {}::text::xid8 $$"
                ).format(
                    sql.Identifier(fake),
                    sql.Identifier(name),
                    sql.SQL(argument),
                    sql.Literal(str(value)),
                )
            )
        await conn.execute(
            sql.SQL("SET search_path = {}, pg_catalog, public").format(sql.Identifier(fake))
        )

    try:
        async with await raw() as conn:
            await huge_ids(conn, top - 1, top)
            last_fit = await _persist_in(conn, repository, batch("last", 1, 2))
            await huge_ids(conn, top, top + 5)
            with pytest.raises(psycopg.errors.NumericValueOutOfRange):
                await _persist_in(conn, repository, batch("wrapped", 1, 1))
            cursor = await conn.execute(repository.statements.all, (0, 100))
            read = [(row[1], row[2], row[-1]) for row in await cursor.fetchall()]
    finally:
        async with await raw() as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(fake))
            )
    assert last_fit == [((top - 1) << 20) + 1, ((top - 1) << 20) + 2]
    assert [(aggregate_id, sequence) for aggregate_id, sequence, _ in read] == [
        ("before", 1),
        ("before", 2),
        ("last", 1),
        ("last", 2),
    ]
    assert [position for *_, position in read][2:] == last_fit


async def test_a_stream_waits_for_a_short_older_transaction_to_include_a_commit(repository):
    async with await psycopg.AsyncConnection.connect(URL) as older:
        await older.execute("SELECT pg_current_xact_id()")
        await repository.persist(batch("mine", 1, 2), None)
        streaming = asyncio.create_task(collect(repository.stream_all_events(TYPE)))
        await asyncio.sleep(0.1)
        assert not streaming.done()  # waiting for the older transaction
        await older.commit()
        assert [e.sequence for e in await streaming] == [1, 2]


async def test_writers_on_different_aggregates_do_not_wait_for_each_other(repository):
    async with await psycopg.AsyncConnection.connect(URL) as open_transaction:
        await _persist_in(open_transaction, repository, batch("a", 1, 3))
        # The uncommitted commit on "a" must not block a commit on "b".
        async with asyncio.timeout(5):
            await repository.persist(batch("b", 1, 3), None)
        await open_transaction.rollback()
    assert [e.aggregate_id for e in await collect(repository.stream_all_events(None))] == ["b"] * 3


async def test_tailing_reader_sees_every_event_once_under_8_parallel_writers(tables):
    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], max_size=10
    )
    writers, commits = 8, 40
    committed: set[uuid.UUID] = set()
    seen: list[uuid.UUID] = []
    positions: list[int] = []

    async def writer(number: int) -> None:
        sequence = 0
        for _ in range(commits):
            rows = batch(f"w{number}", sequence + 1, random.randint(1, 5))
            await repository.persist(rows, None)
            committed.update(e.event_id for e in rows)
            sequence += len(rows)

    async def read(checkpoint: int | None) -> int | None:
        async for e in repository.stream_all_events(None, after_position=checkpoint):
            seen.append(e.event_id)
            positions.append(e.position)
            checkpoint = e.position
        return checkpoint

    async with repository:
        await repository.create_schema()
        writing = asyncio.gather(*(writer(n) for n in range(writers)))
        checkpoint = None
        while not writing.done():
            checkpoint = await read(checkpoint)
        await writing
        deadline = time.monotonic() + 10
        while len(seen) < len(committed) and time.monotonic() < deadline:
            checkpoint = await read(checkpoint)
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == committed, f"{len(committed - set(seen))} event(s) skipped"
    assert all(a < b for a, b in itertools.pairwise(positions))


# -- faults ------------------------------------------------------------------------------------


async def _kill_commit_waiting_on(admin: psycopg.AsyncConnection, repository, spared=()) -> int:
    """Terminate the backend whose commit into ``repository`` waits on a lock (and whose pid
    is not in ``spared``); return its pid."""
    for _ in range(200):
        cursor = await admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND NOT pid = ANY(%s)",
            (f'%INSERT INTO "{repository.events_table}"%', list(spared)),
        )
        pids = [row[0] for row in await cursor.fetchall()]
        if pids:
            assert len(pids) == 1
            await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            return pids[0]
        await asyncio.sleep(0.05)
    pytest.fail("no commit waiting on the lock")


async def test_connection_killed_mid_commit_twice_leaves_nothing_and_the_app_recovers(
    repository,
):
    """A commit whose connection dies mid-way is sent once more on a fresh connection; when
    that one dies too, the commit fails, and neither attempt left anything behind."""
    await repository.persist(batch("k", 1, 1), None)
    snapshot = SerializedSnapshot(TYPE, "k", b'{"v": 5}', 5, 1)
    async with await psycopg.AsyncConnection.connect(URL) as blocker:
        # Hold sequence 4 in an open transaction: the commit of 2..5 stops there, mid-way.
        await _take(blocker, repository, event("k", 4))
        commit = asyncio.create_task(repository.persist(batch("k", 2, 4), snapshot))
        async with await raw() as admin:
            first = await _kill_commit_waiting_on(admin, repository)
            await _kill_commit_waiting_on(admin, repository, spared=[first])  # the retry
        with pytest.raises(DatabaseConnectionError):
            await commit
        await blocker.rollback()
    assert [e.sequence for e in await repository.get_events(TYPE, "k")] == [1]
    assert await repository.get_snapshot(TYPE, "k") is None
    await repository.persist(batch("k", 2, 4), snapshot)
    assert [e.sequence for e in await repository.get_events(TYPE, "k")] == [1, 2, 3, 4, 5]


async def test_a_commit_whose_connection_dies_mid_way_is_sent_again_and_stored_once(repository):
    await repository.persist(batch("k", 1, 1), None)
    snapshot = SerializedSnapshot(TYPE, "k", b'{"v": 5}', 5, 1)
    rows = batch("k", 2, 4)
    async with await psycopg.AsyncConnection.connect(URL) as blocker:
        await _take(blocker, repository, event("k", 4))
        commit = asyncio.create_task(repository.persist(rows, snapshot))
        async with await raw() as admin:
            first = await _kill_commit_waiting_on(admin, repository)
            for _ in range(200):  # the retry is sent, and waits for the blocker too
                cursor = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE %s AND pid <> %s",
                    (f'%INSERT INTO "{repository.events_table}"%', first),
                )
                if (await cursor.fetchone())[0] == 1:
                    break
                await asyncio.sleep(0.05)
        await blocker.rollback()
        positions = await commit
    stored = await repository.get_events(TYPE, "k")
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5]
    assert [e.position for e in stored[1:]] == positions
    assert [str(e.event_id) for e in stored[1:]] == [str(e.event_id) for e in rows]
    assert (await repository.get_snapshot(TYPE, "k")).last_sequence == 5


class LosingProxy:
    """A TCP proxy to the server under test that can lose one answer: once ``armed``, it
    swallows the next server message that ends a statement (ReadyForQuery, sent after an
    autocommit statement committed) and cuts the client off, as a network fault would."""

    def __init__(self) -> None:
        self.armed = False
        self.lost = 0
        self.server: asyncio.Server | None = None
        target = psycopg.conninfo.conninfo_to_dict(URL)
        self.host = str(target.get("host") or "127.0.0.1")
        self.port = int(target.get("port") or 5432)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return psycopg.conninfo.make_conninfo(URL, host="127.0.0.1", port=port)

    async def _serve(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)

        async def to_server() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    upstream_writer.write(data)
                    await upstream_writer.drain()
            upstream_writer.close()

        async def to_client() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await upstream_reader.read(65536):
                    if self.armed and b"Z\x00\x00\x00\x05" in data:
                        self.armed = False
                        self.lost += 1
                        break
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()
            upstream_writer.close()

        await asyncio.gather(to_server(), to_client())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_commit_whose_answer_is_lost_is_recognized_by_its_event_ids(tables):
    """The server stores the batch, the answer never arrives: the commit is sent once more on
    a fresh connection, finds its own event ids stored and returns their positions."""
    proxy = LosingProxy()
    url = await proxy.start()
    repository = from_url(
        url, events_table=tables["events"], snapshots_table=tables["snapshots"], max_size=1
    )
    try:
        async with repository:
            await repository.create_schema()
            await repository.persist(batch("u", 1, 2), None)  # prepares the statement
            rows = batch("u", 3, 3)
            proxy.armed = True
            positions = await repository.persist(rows, None)
            assert proxy.lost == 1
            stored = await repository.get_events(TYPE, "u")
            assert [e.sequence for e in stored] == [1, 2, 3, 4, 5]
            assert [e.position for e in stored[2:]] == positions
            assert [str(e.event_id) for e in stored[2:]] == [str(e.event_id) for e in rows]
            assert await repository.persist(rows, None) == positions
            with pytest.raises(AggregateConflict):
                await repository.persist(batch("u", 3, 3), None)
            assert len(await collect(repository.stream_all_events(TYPE))) == 5
    finally:
        await proxy.stop()


async def test_a_view_update_whose_answer_is_lost_is_recognized_as_stored(tables):
    proxy = LosingProxy()
    url = await proxy.start()
    repository = from_url(
        url, events_table=tables["events"], snapshots_table=tables["snapshots"], max_size=1
    )
    try:
        async with repository:
            views = repository.view_repository(dict[str, int], f"{tables['prefix']}_views")
            await views.create_schema()
            await views.update_view({"n": 1}, cqrs.ViewContext("v", 0))
            await views.update_view({"n": 2}, cqrs.ViewContext("v", 1))  # prepares the update
            proxy.armed = True
            await views.update_view({"n": 3}, cqrs.ViewContext("v", 2))
            assert proxy.lost == 1
            proxy.armed = True
            await views.update_view({"n": 1}, cqrs.ViewContext("w", 0))  # an insert
            assert proxy.lost == 2
            assert await views.load_with_context("v") == ({"n": 3}, cqrs.ViewContext("v", 3))
            assert await views.load_with_context("w") == ({"n": 1}, cqrs.ViewContext("w", 1))
            with pytest.raises(AggregateConflict):  # a real conflict is still one
                await views.update_view({"n": 4}, cqrs.ViewContext("v", 2))
    finally:
        await proxy.stop()


async def test_requests_sent_after_the_idle_connections_were_killed_succeed_at_once(tables):
    """Every pooled connection dropped by the server while idle (pg_terminate_backend, as in
    a restart): each kind of request sent afterwards succeeds on its first try."""
    name = f"cqrs-{tables['prefix']}"  # only this test's connections are terminated
    url = psycopg.conninfo.make_conninfo(URL, application_name=name)
    repository = from_url(
        url, events_table=tables["events"], snapshots_table=tables["snapshots"], min_size=3
    )
    pool_size = 3

    async def kill_idle_connections() -> None:
        async with await raw() as admin:
            for _ in range(200):  # until every connection of the pool is idle in it
                stats = repository.pool.get_stats()
                if stats["pool_available"] == stats["pool_size"] >= pool_size:
                    break
                await asyncio.sleep(0.02)
            cursor = await admin.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            killed = [row[0] for row in await cursor.fetchall()]
            # The pool's connections, and the one notifications have their own pool for.
            assert len(killed) >= repository.pool.get_stats()["pool_size"], killed
            for _ in range(200):
                cursor = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (killed,)
                )
                if (await cursor.fetchone())[0] == 0:
                    return
                await asyncio.sleep(0.02)
        pytest.fail("the killed connections did not go away")

    async with repository:
        await repository.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=2)
        framework = cqrs.CqrsFramework(store, (), BankAccountServices())
        await framework.execute("acct", OpenAccount("acct"))
        views = repository.view_repository(dict[str, int], f"{tables['prefix']}_views")
        await views.create_schema()
        await views.update_view({"n": 1}, cqrs.ViewContext("v", 0))
        await repository.persist(batch("a", 1, 2), SerializedSnapshot(TYPE, "a", b"{}", 2, 1))
        requests = {
            "persist": lambda: repository.persist(batch("a", 3, 1), None),
            "get_events": lambda: repository.get_events(TYPE, "a"),
            "get_last_events": lambda: repository.get_last_events(TYPE, "a", 1),
            "get_snapshot": lambda: repository.get_snapshot(TYPE, "a"),
            "stream_events": lambda: collect(repository.stream_events(TYPE, "a")),
            "stream_all_events": lambda: collect(repository.stream_all_events(TYPE)),
            "stream_all_events(None)": lambda: collect(repository.stream_all_events(None)),
            "load_aggregate": lambda: store.load_aggregate("acct"),
            "execute": lambda: framework.execute("acct", DepositMoney(Decimal(1))),
            "create_schema": repository.create_schema,
            "view load": lambda: views.load("v"),
            "view update": lambda: views.update_view({"n": 2}, cqrs.ViewContext("v", 1)),
        }
        for request, send in requests.items():
            await kill_idle_connections()
            try:
                await send()
            except DatabaseConnectionError as error:
                pytest.fail(f"{request} sent after the fault failed: {error}")
        assert [e.sequence for e in await repository.get_events(TYPE, "a")] == [1, 2, 3]
        assert (await store.load_aggregate("acct")).aggregate.balance == Decimal(1)
        assert await views.load("v") == {"n": 2}


# -- gaps and races at one sequence --------------------------------------------------------------


async def test_a_writer_racing_an_uncommitted_one_at_its_sequence_waits_and_conflicts(repository):
    """Both pass the statement's check (the other's row is not visible yet); the unique key
    makes the second wait for the first, then refuse: one wins, the other conflicts."""
    await repository.persist(batch("r", 1, 1), None)
    async with await psycopg.AsyncConnection.connect(URL) as first:
        winner = await _persist_in(first, repository, batch("r", 2, 2))
        assert len(winner) == 2
        racing = asyncio.create_task(repository.persist(batch("r", 2, 1), None))
        gap = asyncio.create_task(repository.persist(batch("r", 4, 1), None))
        with pytest.raises(AggregateConflict):  # 4 does not follow the visible 1: at once
            await asyncio.wait_for(gap, 5)
        await asyncio.sleep(0.2)
        assert not racing.done()  # waiting for the first writer
        await first.commit()
    with pytest.raises(AggregateConflict):
        await racing
    assert [e.sequence for e in await repository.get_events(TYPE, "r")] == [1, 2, 3]
    await repository.persist(batch("r", 4, 1), None)


async def test_a_retry_racing_its_own_uncommitted_first_attempt_returns_its_positions(
    repository,
):
    """The first attempt still runs on the server when the retry arrives (its connection was
    lost, not its transaction): the retry waits for it and recognizes its event ids."""
    rows = batch("r", 1, 3)
    async with await psycopg.AsyncConnection.connect(URL) as first_attempt:
        positions = await _persist_in(first_attempt, repository, rows)
        retry = asyncio.create_task(repository.persist(rows, None))
        await asyncio.sleep(0.2)
        assert not retry.done()
        await first_attempt.commit()
    assert await retry == positions
    assert len(await repository.get_events(TYPE, "r")) == 3


# -- query plans -------------------------------------------------------------------------------


def _numbered(text: str, count: int) -> str:
    """A psycopg statement with ``count`` parameters as PREPARE wants it: ``$1``, ``$2``..."""
    for number in range(1, count + 1):
        text = text.replace("%b", f"${number}", 1)
    return text


async def test_stream_pages_are_read_from_an_index_in_order_without_a_sort(tables):
    """Each page of stream_all_events, of one type or of all, is a range of an index in
    position order: time linear in what it returns, whatever else the table holds. The
    plans are the ones the repository runs: the unfiltered page is prepared (so its generic
    plan counts too), the page of one type is planned with its values each time."""
    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], max_size=1
    )
    events = sql.Identifier(repository.events_table)
    async with repository, await raw() as conn:
        await repository.create_schema()
        # 20 types interleaved along the positions, then a type that appears only lately: an
        # index on the position alone would walk every other type's rows to find it.
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (aggregate_type, aggregate_id, sequence, event_type,"
                " event_version, payload, metadata, position)"
                " SELECT CASE WHEN n > 60000 THEN 'Late' ELSE 'T' || (n % 20) END,"
                " 'a' || (n / 20 % 50), n, 'Ev', '1.0', '{{}}', '{{}}', n"
                " FROM generate_series(1, 70000) AS n"
            ).format(events)
        )
        await conn.execute(sql.SQL("ANALYZE {}").format(events))
        by_type = f"{repository.events_table}_type_position_idx"
        by_position = f"{repository.events_table}_position_key"
        plans: dict[str, str] = {}
        for aggregate_type, after in [("T7", 0), ("T7", 40000), ("Late", 0), ("Late", 65000)]:
            params = {"type": aggregate_type, "after": after, "limit": 1000}
            cursor = await conn.execute(b"EXPLAIN " + repository.statements.all_of_type, params)
            plan = "\n".join(row[0] for row in await cursor.fetchall())
            plans[f"{aggregate_type} after {after}"] = plan
            assert f"Index Scan using {by_type}" in plan, plan
        for after in (0, 40000):
            cursor = await conn.execute(b"EXPLAIN " + repository.statements.all, (after, 1000))
            plans[f"all after {after}"] = "\n".join(row[0] for row in await cursor.fetchall())
            text = _numbered(repository.statements.all.decode(), 2)
            await conn.execute(f"PREPARE page AS {text}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            cursor = await conn.execute(f"EXPLAIN EXECUTE page({after}, 1000)")
            plans[f"all after {after}, generic"] = "\n".join(
                row[0] for row in await cursor.fetchall()
            )
            await conn.execute("DEALLOCATE page")
            await conn.execute("RESET plan_cache_mode")
            assert f"Index Scan using {by_position}" in plans[f"all after {after}"]
        for name, plan in plans.items():
            assert "Sort" not in plan, f"{name}:\n{plan}"
            assert "Seq Scan" not in plan, f"{name}:\n{plan}"
            assert "Filter" not in plan, f"{name}:\n{plan}"  # every bound is an index bound

        for _ in range(8):  # more than the server's 5 custom plans before a generic one
            streamed = await collect(repository.stream_all_events("T7"))
            assert [e.position for e in streamed] == list(range(7, 60001, 20))
        async with repository.pool.connection() as pooled:  # the repository's one connection
            cursor = await pooled.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in await cursor.fetchall()]
        assert any("max(position)" in statement for statement in prepared), prepared
        assert not any("(aggregate_type, position) >" in statement for statement in prepared)


async def test_an_owned_pools_connection_gets_its_json_loaders_once(tables, monkeypatch):
    """The loaders that return JSON as text are registered on a connection of an owned pool
    at its first read only (registering costs about 30 us per read; with psycopg's C
    extension the class installed is not the one imported, which a check must allow for)."""
    from psycopg.adapt import AdaptersMap  # noqa: PLC0415

    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], max_size=1
    )
    async with repository:
        await repository.create_schema()
        snapshot = SerializedSnapshot(TYPE, "a", b'{"s": 1}', 2, 1)
        await repository.persist([event("a", 1), event("a", 2)], snapshot)
        assert len(await repository.get_events(TYPE, "a")) == 2  # the first read registers
        registered: list[object] = []
        register = AdaptersMap.register_loader

        def counting(self: AdaptersMap, *args: object) -> None:
            registered.append(args)
            register(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(AdaptersMap, "register_loader", counting)
        read = await repository.get_snapshot_and_events(TYPE, "a")
        assert read[0] is not None
        assert default_codec.decode(read[0].payload, dict) == {"s": 1}
        events = await repository.get_events(TYPE, "a")
        assert [default_codec.decode(e.payload, dict) for e in events] == [{"n": 1}, {"n": 2}]
        assert registered == []


async def test_an_owned_pools_notifications_leave_its_pool_at_one_connection(tables):
    """Back-to-back commits and loads keep an owned pool at one connection: the
    notifications after commits go through a pool of their own (one connection), which is
    closed with the repository and made again when it reopens."""
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        for sequence in range(1, 21):
            await repository.persist([event("a", sequence)], None)
            assert len(await repository.get_events(TYPE, "a")) == sequence
        assert repository._notifier is not None
        await repository._notifier.drain()
        notifying = repository._notify_connections
        assert notifying is not None
        assert notifying.pool is not repository.pool
        assert notifying.pool.get_stats()["requests_num"] >= 1  # the notifications went here
        assert notifying.pool.get_stats()["pool_size"] == 1
        assert repository.pool.get_stats()["pool_size"] == 1
        first = notifying.pool
    assert first.closed
    async with repository:
        await repository.persist([event("a", 21)], None)
        assert repository._notifier is not None
        await repository._notifier.drain()
        assert notifying.pool is not first
        assert notifying.pool.get_stats()["requests_num"] >= 1


# -- pools and connections ---------------------------------------------------------------------


def test_page_size_and_hold_back_wait_pass_through():
    repository = from_url(URL, page_size=7, hold_back_wait=0.25)
    assert (repository.page_size, repository.hold_back_wait) == (7, 0.25)
    other = repository.with_tables("other_events", "other_snapshots")
    assert (other.page_size, other.hold_back_wait) == (7, 0.25)
    with pytest.raises(ValueError, match="page_size"):
        from_url(URL, page_size=0)


async def test_a_repository_on_a_callers_pool_is_not_open_after_close(tables):
    async with AsyncConnectionPool(URL, min_size=1, max_size=2, open=False) as pool:
        repository = PostgresEventRepository(pool, tables["events"], tables["snapshots"])
        await repository.create_schema()  # the caller's pool is open: no open() needed
        await repository.persist(batch("a", 1, 1), None)
        views = repository.view_repository(dict[str, int], f"{tables['prefix']}_views")
        await views.create_schema()
        await repository.close()
        assert not pool.closed  # still the caller's
        with pytest.raises(NotOpenError, match="not open"):
            await repository.get_events(TYPE, "a")
        with pytest.raises(NotOpenError, match="not open"):
            await views.load("v")
        await repository.open()
        assert len(await repository.get_events(TYPE, "a")) == 1
        assert await views.load("v") is None


def _local_cluster() -> list[str]:
    """pg_ctlcluster arguments for the local server under test, or skip."""
    etc = Path("/etc/postgresql")
    versions = sorted(path.name for path in etc.iterdir()) if etc.is_dir() else []
    host = psycopg.conninfo.conninfo_to_dict(URL).get("host")
    if not shutil.which("pg_ctlcluster") or not versions or host not in {"127.0.0.1", "localhost"}:
        pytest.skip("needs the local Debian cluster (pg_ctlcluster) as the server under test")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


@pytest.mark.stress
async def test_server_restart_is_survived_without_restarting_the_app(tables):
    cluster = _local_cluster()
    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], min_size=3
    )
    async with repository:
        await repository.create_schema()
        await repository.persist(batch("r", 1, 2), None)
        try:
            restart = await asyncio.create_subprocess_exec(*cluster, "restart")
            assert await restart.wait() == 0
            failures = 0
            sequence = 3
            deadline = time.monotonic() + 30
            while True:
                try:
                    await repository.persist([event("r", sequence)], None)
                except DatabaseConnectionError:
                    failures += 1
                    assert time.monotonic() < deadline, "no recovery within 30 s"
                    await asyncio.sleep(0.2)
                    continue
                break
            # Once one command works, the stale connections are gone: no more failures.
            for _ in range(10):
                sequence += 1
                await repository.persist([event("r", sequence)], None)
            assert failures == 0  # sent after the restart: none may fail
            assert [e.sequence for e in await repository.get_events(TYPE, "r")] == list(
                range(1, sequence + 1)
            )
        finally:
            start = await asyncio.create_subprocess_exec(  # leave the server running
                *cluster, "start", stderr=asyncio.subprocess.DEVNULL
            )
            await start.wait()


async def test_default_pool_on_an_unreachable_server_fails_fast_and_clearly():
    started = time.monotonic()
    with pytest.raises(DatabaseConnectionError, match=r"cannot connect to postgresql://.*refused"):
        await default_postgres_pool("postgresql://nobody:secret@127.0.0.1:1/db", timeout=2)
    assert time.monotonic() - started < 1


async def test_default_pool_on_a_silent_server_gives_up_at_the_timeout():
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader, writer) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseConnectionError) as caught:
            await default_postgres_pool(
                f"postgresql://nobody:secret@127.0.0.1:{port}/db", timeout=1
            )
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert 0.9 < time.monotonic() - started < 3
    assert "secret" not in str(caught.value)


async def test_connect_url_opens_a_repository_that_owns_its_pool(tables):
    async with cqrs.connect(URL, create_schema=False) as repository:
        assert isinstance(repository, PostgresEventRepository)
        assert not repository.pool.closed
        pool = repository.pool
    assert pool.closed
    broken = from_url("postgresql://postgres@127.0.0.1:1/postgres", timeout=1)
    with pytest.raises(DatabaseConnectionError):
        await broken.open()
    await broken.close()


async def test_an_owned_pool_reopens_after_close(repository):
    await repository.persist(batch("a", 1, 1), None)
    await repository.close()
    await repository.open()
    await repository.open()
    assert len(await repository.get_events(TYPE, "a")) == 1


async def test_jsonb_columns_are_read_as_undecoded_text_too(tables):
    from cqrs_postgres.connection import raw_json_cursor  # noqa: PLC0415

    async with await raw() as conn:
        cursor = raw_json_cursor(conn)
        await cursor.execute(
            b"SELECT %b::jsonb, %b::json", ('{"a": [1, "x"]}', '{"b":  2}'), prepare=True
        )
        assert await cursor.fetchone() == (b'{"a": [1, "x"]}', '{"b":  2}')


# -- pools and connections ---------------------------------------------------------------------


async def test_a_repository_on_an_unopened_pool_says_so(tables):
    pool = AsyncConnectionPool(URL, open=False)
    repository = PostgresEventRepository(pool, tables["events"], tables["snapshots"])
    with pytest.raises(NotOpenError, match="not open"):
        await repository.get_events(TYPE, "a")
    views = PostgresViewRepository(dict, f"{tables['prefix']}_views", pool)
    with pytest.raises(NotOpenError, match="not open"):
        await views.load("v")


async def test_a_users_pool_is_used_as_is_and_left_as_it_was(tables):
    async with AsyncConnectionPool(
        URL, min_size=1, max_size=1, kwargs={"row_factory": dict_row}, open=False
    ) as pool:
        repository = PostgresEventRepository(pool).with_tables(
            tables["events"], tables["snapshots"]
        )
        async with repository:
            await repository.create_schema()
            await repository.persist(batch("a", 1, 2), SerializedSnapshot(TYPE, "a", b"{}", 2, 1))
            with pytest.raises(AggregateConflict):
                await repository.persist(batch("a", 2, 1), None)
            loaded = await repository.get_events(TYPE, "a")
            assert [e.sequence for e in loaded] == [1, 2]
            assert isinstance(loaded[0].payload, str)  # left for the core codec to decode
        assert not pool.closed  # the caller's pool stays open
        async with pool.connection() as conn:
            assert conn.autocommit is False
            cursor = await conn.execute("SELECT 1 AS one")
            assert await cursor.fetchone() == {"one": 1}


async def test_a_users_pool_survives_a_failed_open_and_works_once_the_server_is_up(tables):
    """An app that starts before its database: open() on the caller's pool fails while the
    server is away, and must not close that pool for good (a psycopg pool never reopens);
    once the server answers, open() again and the repository works."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def forward(reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 5432)

        async def pipe(source, sink) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    pool = AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", min_size=1, timeout=10, open=False
    )
    repository = PostgresEventRepository(
        pool, tables["events"], tables["snapshots"], open_timeout=0.5
    )
    proxy = None
    try:
        with pytest.raises(DatabaseConnectionError):
            await repository.open()
        proxy = await asyncio.start_server(forward, "127.0.0.1", port)
        await repository.open()
        await repository.create_schema()
        await repository.persist(batch("a", 1, 2), None)
        assert [e.sequence for e in await repository.get_events(TYPE, "a")] == [1, 2]
    finally:
        await pool.close()
        if proxy is not None:
            proxy.close()


async def test_factories_build_working_frameworks(tables):
    schema = tables["prefix"]  # the factories use the default table names: give them a schema
    async with await raw() as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    pool = await default_postgres_pool(f"{URL}?options=-csearch_path%3D{schema}", max_size=2)
    try:
        repository = PostgresEventRepository(pool)
        await repository.create_schema()
        for number, build in enumerate(
            (
                lambda: postgres_cqrs(repository, BankAccount, (), BankAccountServices()),
                lambda: postgres_snapshot_cqrs(
                    repository, BankAccount, (), 2, BankAccountServices()
                ),
                lambda: postgres_aggregate_cqrs(repository, BankAccount, (), BankAccountServices()),
            )
        ):
            framework = build()
            name = f"acct-{number}"
            await framework.execute(name, OpenAccount(name))
            await framework.execute(name, DepositMoney(Decimal("2.50")))
            await framework.execute(name, DepositMoney(Decimal("0.25")))
            state = await framework.store.load_aggregate(name)
            assert state.aggregate.balance == Decimal("2.75")
    finally:
        await pool.close()
        async with await raw() as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_all_is_sorted_complete_and_documented():
    import cqrs_postgres  # noqa: PLC0415 - the module under test

    assert list(cqrs_postgres.__all__) == sorted(cqrs_postgres.__all__)
    modules = {
        "checkpoints",
        "connection",
        "factories",
        "repository",
        "schema",
        "statements",
        "views",
        "wake_ups",
    }
    public = {name for name in dir(cqrs_postgres) if not name.startswith("_")} - modules
    assert public == set(cqrs_postgres.__all__)
    for name in cqrs_postgres.__all__:
        assert getattr(cqrs_postgres, name).__doc__, f"{name} has no docstring"


# -- timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "reason"),
    [("lock_timeout", "lock timeout"), ("statement_timeout", "statement timeout")],
)
async def test_a_timeout_is_a_clear_error_then_the_app_recovers(tables, setting, reason):
    pool = AsyncConnectionPool(
        URL,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True, "options": f"-c {setting}=200"},
        open=False,
    )
    await pool.open(wait=True)
    try:
        repository = PostgresEventRepository(pool).with_tables(
            tables["events"], tables["snapshots"]
        )
        await repository.create_schema()
        await repository.persist(batch("a1", 1, 1), None)
        blocker = await raw()
        try:
            await blocker.execute("BEGIN")
            await blocker.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(tables["events"])
                )
            )
            with pytest.raises(cqrs.DatabaseConnectionError, match=reason) as caught:
                await repository.persist(batch("a1", 2, 2), None)
            assert isinstance(caught.value.__cause__, psycopg.OperationalError)
            await blocker.execute("ROLLBACK")
        finally:
            await blocker.close()
        # Nothing of the timed-out commit was stored, and the same pool works again.
        assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1]
        await repository.persist(batch("a1", 2, 2), None)
        assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1, 2, 3]
    finally:
        await pool.close()


# -- wake-ups ----------------------------------------------------------------------------------

NOTIFY_MODES = pytest.mark.parametrize("notify", ["after_commit", "in_transaction"])


async def _listening(channel: str) -> psycopg.AsyncConnection:
    conn = await raw()
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn


async def _notified(conn: psycopg.AsyncConnection, seconds: float) -> int:
    return len([n async for n in conn.notifies(timeout=seconds)])


async def _listener_pid(channel: str) -> int:
    """The server process of the one listener of ``channel`` (its last query is LISTEN)."""
    async with await raw() as conn:
        for _ in range(100):
            cursor = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{channel}"',),
            )
            rows = await cursor.fetchall()
            if rows:
                assert len(rows) == 1
                return int(rows[0][0])
            await asyncio.sleep(0.05)
    raise AssertionError(f"nobody listens on {channel}")


@NOTIFY_MODES
async def test_a_commit_wakes_a_waiting_listener_at_once(tables, notify):
    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], notify=notify
    )
    async with repository:
        await repository.create_schema()
        listener = repository.wake_ups()
        try:
            await listener.wait(5)  # connects, LISTENs, returns at once
            assert listener.backend_pid is not None
            waiting = asyncio.create_task(listener.wait(30))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await repository.persist(batch("a", 1, 2), None)
            await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - started < 0.5
            # commits while nobody waits: the next wait returns at once, for all of them
            for sequence in (3, 4, 5):
                await repository.persist(batch("a", sequence, 1), None)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await listener.wait(30)
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            await listener.wait(0.3)
            assert time.monotonic() - started >= 0.25
        finally:
            await listener.close()


@NOTIFY_MODES
async def test_only_a_commit_that_stored_its_events_notifies(tables, notify):
    repository = from_url(
        URL, events_table=tables["events"], snapshots_table=tables["snapshots"], notify=notify
    )
    async with repository:
        await repository.create_schema()
        assert repository.statements.channel == f"{tables['events']}_commits"
        conn = await _listening(repository.statements.channel)
        try:
            await repository.persist(batch("a", 1, 2), None)
            assert await _notified(conn, 1.0) >= 1
            with pytest.raises(AggregateConflict):
                await repository.persist(batch("a", 2, 1), None)  # a taken sequence
            with pytest.raises(AggregateConflict):
                await repository.persist(batch("a", 4, 1), None)  # a gap
            assert await _notified(conn, 0.5) == 0
        finally:
            await conn.close()


async def test_an_in_transaction_notification_is_delivered_only_when_its_commit_is(tables):
    repository = from_url(
        URL,
        events_table=tables["events"],
        snapshots_table=tables["snapshots"],
        notify="in_transaction",
    )
    async with repository:
        await repository.create_schema()
        conn = await _listening(repository.statements.channel)
        writer = await raw()
        try:
            for outcome, expected in (("ROLLBACK", 0), ("COMMIT", 1)):
                await writer.execute("BEGIN")
                assert await _persist_in(writer, repository, batch("a", 1, 1))
                assert await _notified(conn, 0.3) == 0  # not before the transaction ends
                await writer.execute(outcome)
                assert await _notified(conn, 0.5 if expected == 0 else 2.0) == expected
        finally:
            await writer.close()
            await conn.close()


def test_the_notify_modes_and_their_statements():
    default = from_url(URL, events_table="Mixed_Case")
    assert default.notify == "after_commit"
    assert b"pg_notify" not in default.statements.persist
    assert default.statements.listen == b'LISTEN "Mixed_Case_commits"'
    assert default.statements.notify == b"SELECT pg_notify('Mixed_Case_commits', '')"
    inside = from_url(URL, notify="in_transaction")
    for statement in (inside.statements.persist, inside.statements.persist_with_snapshot):
        assert b"pg_notify('events_commits', '') WHERE EXISTS (SELECT FROM written)" in statement
        assert statement.endswith(b"SELECT position FROM written, notified ORDER BY position")
    assert inside.with_tables("e2", "s2").notify == "in_transaction"
    assert (
        from_url(URL, notify=None).statements.persist
        == default.with_tables("events", "snapshots").statements.persist
    )
    with pytest.raises(ConfigurationError, match="notify"):
        from_url(URL, notify="always")  # type: ignore[arg-type]


async def test_an_after_commit_notification_is_sent_before_close_returns(tables):
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        conn = await _listening(repository.statements.channel)
        try:
            await repository.persist(batch("a", 1, 1), None)
            await repository.close()
            assert await _notified(conn, 1.0) == 1
        finally:
            await conn.close()


async def test_a_killed_listening_connection_is_replaced_and_logged(repository, caplog):
    channel = repository.statements.channel
    listener = repository.wake_ups()
    with caplog.at_level(logging.INFO, logger="cqrs.backends.postgres"):
        try:
            await listener.wait(5)
            killed = listener.backend_pid
            async with await raw() as conn:
                await conn.execute("SELECT pg_terminate_backend(%s)", (killed,))
            started = time.monotonic()
            await listener.wait(0.3)  # finds the connection gone: the timeout stands in
            assert 0.2 <= time.monotonic() - started < 2
            assert listener.backend_pid != killed  # None: not connected
            await listener.wait(5)  # reconnects, returns at once
            assert listener.backend_pid not in (None, killed)
            waiting = asyncio.create_task(listener.wait(30))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await repository.persist(batch("a", 1, 1), None)
            await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - started < 0.5  # pushed again, not polled
        finally:
            await listener.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.backends.postgres"]
    assert sum(f"listener on {channel} lost its connection" in m for m in messages) == 1
    assert sum(f"listener on {channel} reconnected" in m for m in messages) == 1


async def test_a_subscription_whose_listener_is_killed_still_delivers(repository, caplog):
    channel = repository.statements.channel
    subscription = Subscription(repository, poll_interval=0.5)
    delivered: list[SerializedEvent] = []

    async def follow() -> None:
        async for row in subscription:
            delivered.append(row)  # noqa: PERF401 - it never ends

    with caplog.at_level(logging.INFO, logger="cqrs.backends.postgres"):
        following = asyncio.create_task(follow())
        try:
            async with await raw() as conn:
                await conn.execute(
                    "SELECT pg_terminate_backend(%s)", (await _listener_pid(channel),)
                )
            await repository.persist(batch("a", 1, 1), None)
            started = time.monotonic()
            while not delivered:
                assert time.monotonic() - started < 3, "not delivered within the poll bound"
                await asyncio.sleep(0.01)
            await _listener_pid(channel)  # listening again
            await repository.persist(batch("a", 2, 1), None)
            started = time.monotonic()
            while len(delivered) < 2:
                assert time.monotonic() - started < 3
                await asyncio.sleep(0.01)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await subscription.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.backends.postgres"]
    assert any(f"listener on {channel} lost its connection" in m for m in messages)
    assert any(f"listener on {channel} reconnected" in m for m in messages)


async def test_a_listener_whose_server_is_unreachable_waits_its_timeout(caplog):
    pool = AsyncConnectionPool("postgresql://nobody@127.0.0.1:1/db", open=False)
    repository = PostgresEventRepository(pool)
    listener = repository.wake_ups()
    with caplog.at_level(logging.DEBUG, logger="cqrs.backends.postgres"):
        try:
            for _ in range(3):
                started = time.monotonic()
                await listener.wait(0.2)
                assert 0.15 <= time.monotonic() - started < 2
        finally:
            await listener.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage
    assert "cannot connect to postgresql://nobody@127.0.0.1:1/db" in warnings[0].getMessage()
