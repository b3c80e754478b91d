"""PostgreSQL-only behaviour: the seed upgrade, the global-order proof, faults and pools."""

from __future__ import annotations

import asyncio
import itertools
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
    PersistedEventStore,
    SerializedEvent,
    SerializedSnapshot,
    default_codec,
)
from cqrs.ddl import ddl_files
from cqrs_postgres import (
    PostgresEventRepository,
    default_postgres_pool,
    from_url,
    postgres_aggregate_cqrs,
    postgres_cqrs,
    postgres_snapshot_cqrs,
)
from cqrs_postgres.schema import render, schema_version_table
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
    assert renamed == 'CREATE INDEX "Orders_position_key" ON "Orders" (x); -- current_snapshot "s"'
    for _, text in ddl_files("postgres"):
        assert render(text, {"events": "events", "snapshots": "snapshots"}).replace('"', "") == (
            text.replace('"', "")
        )
    with pytest.raises(ConfigurationError, match="invalid"):
        render(text, {"events": "x" * 60})


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
    ]
    cursor = await conn.execute(repository._persist, params)
    return [row[0] for row in await cursor.fetchall()]


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
            cursor = await conn.execute(repository._all, (0, 100))
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


async def test_connection_killed_mid_commit_leaves_nothing_and_the_app_recovers(repository):
    await repository.persist(batch("k", 1, 1), None)
    snapshot = SerializedSnapshot(TYPE, "k", b'{"v": 5}', 5, 1)
    async with await psycopg.AsyncConnection.connect(URL) as blocker:
        # Hold sequence 4 in an open transaction: the commit of 2..5 stops there, mid-way.
        await _persist_in(blocker, repository, [event("k", 4)])
        commit = asyncio.create_task(repository.persist(batch("k", 2, 4), snapshot))
        async with await raw() as admin:
            for _ in range(100):
                cursor = await admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE %s",
                    (f'%INSERT INTO "{repository.events_table}"%',),
                )
                pids = [row[0] for row in await cursor.fetchall()]
                if pids:
                    break
                await asyncio.sleep(0.05)
            assert len(pids) == 1
            await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        with pytest.raises(DatabaseConnectionError):
            await commit
        await blocker.rollback()
    assert [e.sequence for e in await repository.get_events(TYPE, "k")] == [1]
    assert await repository.get_snapshot(TYPE, "k") is None
    await repository.persist(batch("k", 2, 4), snapshot)
    assert [e.sequence for e in await repository.get_events(TYPE, "k")] == [1, 2, 3, 4, 5]


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
            assert failures <= 3
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
    with pytest.raises(ConfigurationError, match="not open"):
        await repository.get_events(TYPE, "a")


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
        await PostgresEventRepository(pool).create_schema()
        for number, build in enumerate(
            (
                lambda: postgres_cqrs(pool, BankAccount, (), BankAccountServices()),
                lambda: postgres_snapshot_cqrs(pool, BankAccount, (), 2, BankAccountServices()),
                lambda: postgres_aggregate_cqrs(pool, BankAccount, (), BankAccountServices()),
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
    modules = {"connection", "factories", "repository", "schema", "views"}
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
