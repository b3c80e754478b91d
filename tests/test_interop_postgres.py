"""One PostgreSQL database shared with postgres-es: a Rust service keeps inserting rows the
seed's way (only the seed's columns, one transaction per commit) into tables our backend
upgraded, while the framework commits too; every row gets an event id and a global position
by column defaults, and a tailing reader sees every event once, in order, never skipping."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from backends_under_test.postgres import FACTORY
from psycopg import sql

from cqrs import CqrsFramework, PersistedEventStore, SerializedEvent, default_codec
from cqrs.ddl import render
from cqrs_postgres import from_url
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
)

URL = FACTORY.url

# postgres-es's current init script: the seed's tables without their timestamp columns.
POSTGRES_ES_DDL = """\
CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
  sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
  event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
  PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
  last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
  current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
  PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));
"""
# The seed as DESIGN.md gives it (with timestamps): our own 001_seed.sql.
SEED_DDL = POSTGRES_ES_DDL.replace(
    "metadata json NOT NULL,\n",
    "metadata json NOT NULL,\n  timestamp timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),\n",
).replace(
    "payload json NOT NULL,\n  PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)",
    "payload json NOT NULL,\n  timestamp timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),\n"
    "  PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)",
)
VARIANTS = {"postgres-es": POSTGRES_ES_DDL, "seed": SEED_DDL}

# What postgres-es sends for a commit: the seed's columns, one row per event.
RUST_INSERT = (
    "INSERT INTO {} (aggregate_type, aggregate_id, sequence, event_type, event_version,"
    " payload, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def test_the_seed_variants_differ_only_by_their_timestamps():
    assert SEED_DDL.count("timestamp timestamp with time zone") == 2
    assert SEED_DDL.replace(
        "  timestamp timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),\n", ""
    ) == (POSTGRES_ES_DDL)


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
        yield {"events": f"{prefix}_events", "snapshots": f"{prefix}_snaps"}
    finally:
        await FACTORY.cleanup(Path(), prefix)


async def raw() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(URL, autocommit=True)


async def create_rust_tables(tables: dict[str, str], ddl: str) -> None:
    async with await raw() as conn:
        await conn.execute(render(ddl, tables).encode())


def rust_rows(
    aggregate_id: str, first: int, amounts: list[int], balance: int = 0
) -> list[tuple[object, ...]]:
    """A Rust service's deposits into a bank account holding ``balance``, as the rows it
    inserts."""
    rows: list[tuple[object, ...]] = []
    for offset, amount in enumerate(amounts):
        balance += amount
        payload = CustomerDepositedMoney(Decimal(amount), Decimal(balance))
        rows.append(
            (
                "BankAccount",
                aggregate_id,
                first + offset,
                "CustomerDepositedMoney",
                "1.0",
                default_codec.encode(payload).decode(),
                "{}",
            )
        )
    return rows


async def rust_commit(conn: psycopg.AsyncConnection, events: str, rows, hold: float = 0) -> None:
    """One postgres-es commit: its rows in one transaction (held open ``hold`` seconds)."""
    insert = sql.SQL(RUST_INSERT).format(sql.Identifier(events))
    async with conn.transaction():
        for row in rows:
            await conn.execute(insert, row)
        if hold:
            await asyncio.sleep(hold)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_a_rust_database_upgrades_and_its_plain_inserts_get_ids_and_positions(
    tables, variant
):
    await create_rust_tables(tables, VARIANTS[variant])
    async with await raw() as conn:
        opened = default_codec.encode(AccountOpened("acc")).decode()
        await rust_commit(
            conn,
            tables["events"],
            [("BankAccount", "acc", 1, "AccountOpened", "1.0", opened, "{}")],
        )
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        await repository.create_schema()  # idempotent
        async with await raw() as conn:
            await rust_commit(conn, tables["events"], rust_rows("acc", 2, [5, 7]))
        store = PersistedEventStore(repository, BankAccount)
        framework = CqrsFramework(store, (), BankAccountServices())
        await framework.execute("acc", DepositMoney(Decimal(3)))
        async with await raw() as conn:
            await rust_commit(conn, tables["events"], rust_rows("acc", 5, [1], balance=15))
        loaded = await store.load_aggregate("acc")
        assert loaded.version == 5
        assert loaded.aggregate.balance == Decimal(16)
        events = await repository.get_events("BankAccount", "acc")
        assert len({str(e.event_id) for e in events}) == 5  # every row has its own event id
        positions = [e.position for e in events]
        assert positions == sorted(positions)
        assert len(set(positions)) == 5
        streamed = [e.sequence for e in await collect(repository.stream_all_events(None))]
        assert streamed == [1, 2, 3, 4, 5]
        # Two rows inserted in one transaction: consecutive positions, in insertion order.
        assert positions[2] == positions[1] + 1


async def one_row_too_many(conn: psycopg.AsyncConnection, events: sql.Identifier) -> None:
    """A row inserted after the transaction's counter reached 2**20 - 1."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('cqrs.position_index', '1048575', true)")
        await conn.execute(
            sql.SQL(RUST_INSERT).format(events), ("T", "y", 1, "E", "1.0", "{}", "{}")
        )


async def test_positions_by_default_follow_the_transaction_rule(tables):
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        events = sql.Identifier(tables["events"])
        async with await raw() as conn:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL(RUST_INSERT).format(events),
                    ("T", "x", 1, "E", "1.0", "{}", "{}"),
                )
                await conn.execute(
                    sql.SQL(RUST_INSERT).format(events),
                    ("T", "x", 2, "E", "1.0", "{}", "{}"),
                )
                cursor = await conn.execute("SELECT pg_current_xact_id()::text::bigint")
                row = await cursor.fetchone()
                assert row is not None
                xid = row[0]
            # A transaction that has inserted 2**20 - 1 rows cannot insert one more.
            with pytest.raises(psycopg.errors.RaiseException, match="1048575 rows"):
                await one_row_too_many(conn, events)
        stored = await repository.get_events("T", "x")
        assert [e.position for e in stored] == [(xid << 20) + 1, (xid << 20) + 2]
        assert await repository.get_events("T", "y") == []


async def tail(reader, seen: list[SerializedEvent], committed: list[int], done) -> None:
    """Follow the stream until the writers are done and every committed event was read
    (at most 30 s more)."""
    position = None
    deadline = None
    while deadline is None or asyncio.get_running_loop().time() < deadline:
        async for event in reader.stream_all_events(None, after_position=position):
            seen.append(event)
            position = event.position
        if done.is_set():
            if len(seen) >= sum(committed):
                return
            deadline = deadline or asyncio.get_running_loop().time() + 30
        await asyncio.sleep(0.005)


async def rust_service(events: str, name: str, committed: list[int]) -> None:
    """Deposits into account ``name`` (opened already) the postgres-es way. Slow transactions
    among quick ones: a long one started before many framework commits ends after them, the
    case a plain sequence would skip."""
    async with await raw() as conn:
        sequence = 2
        for round_ in range(12):
            amounts = [random.randint(1, 9) for _ in range(random.randint(1, 4))]
            rows = rust_rows(name, sequence, amounts)
            await rust_commit(conn, events, rows, hold=0.15 if round_ % 4 == 0 else 0)
            committed.append(len(rows))
            sequence += len(amounts)


async def python_service(framework, name: str, committed: list[int]) -> None:
    """Opens account ``name`` and deposits into it through the framework."""
    await framework.execute(name, OpenAccount(name))
    committed.append(1)
    for _ in range(15):
        await framework.execute(name, DepositMoney(Decimal(random.randint(1, 9))))
        committed.append(1)
        await asyncio.sleep(0)


async def test_a_tailing_reader_never_skips_plain_inserts_interleaved_with_commits(tables):
    await create_rust_tables(tables, POSTGRES_ES_DDL)
    names = {"events_table": tables["events"], "snapshots_table": tables["snapshots"]}
    writer = from_url(URL, **names)
    reader = from_url(URL, **names, page_size=7)
    async with writer, reader:
        await writer.create_schema()
        store = PersistedEventStore(writer, BankAccount)
        framework = CqrsFramework(store, (), BankAccountServices())
        seen: list[SerializedEvent] = []
        committed: list[int] = []  # events committed, by both kinds of service
        done = asyncio.Event()
        opened = [
            (
                *("BankAccount", f"rust-{n}", 1, "AccountOpened", "1.0"),
                default_codec.encode(AccountOpened(f"rust-{n}")).decode(),
                "{}",
            )
            for n in range(2)
        ]
        async with await raw() as conn:  # the Rust accounts' first events
            await rust_commit(conn, tables["events"], opened)
        committed.append(len(opened))
        tailing = asyncio.create_task(tail(reader, seen, committed, done))
        await asyncio.gather(
            rust_service(tables["events"], "rust-0", committed),
            rust_service(tables["events"], "rust-1", committed),
            python_service(framework, "py-0", committed),
            python_service(framework, "py-1", committed),
        )
        done.set()
        await tailing

        stored = await collect(writer.stream_all_events(None))
        assert [str(e.event_id) for e in seen] == [str(e.event_id) for e in stored]
        assert len({str(e.event_id) for e in seen}) == len(seen) == sum(committed)
        positions = [e.position for e in seen]
        assert positions == sorted(positions)
        for account in ("rust-0", "rust-1", "py-0", "py-1"):
            sequences = [e.sequence for e in seen if e.aggregate_id == account]
            assert sequences == list(range(1, len(sequences) + 1)), account
        assert sum(1 for e in seen if e.aggregate_id.startswith("rust")) > 30
        assert sum(1 for e in seen if e.aggregate_id.startswith("py")) == 32
        for account in ("rust-0", "py-1"):  # both kinds still load as aggregates
            loaded = await store.load_aggregate(account)
            assert loaded.aggregate.opened


async def test_a_postgres_es_snapshot_write_works_on_an_upgraded_database(tables):
    await create_rust_tables(tables, POSTGRES_ES_DDL)
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        snapshots = sql.Identifier(tables["snapshots"])
        async with await raw() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (aggregate_type, aggregate_id, last_sequence, payload,"
                    " current_snapshot) VALUES (%s, %s, %s, %s, %s)"
                ).format(snapshots),
                ("BankAccount", "acc", 3, '{"opened": true, "balance": "3"}', 1),
            )
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET last_sequence = %s, payload = %s, current_snapshot = %s"
                    " WHERE aggregate_type = %s AND aggregate_id = %s AND current_snapshot = %s"
                ).format(snapshots),
                (5, '{"opened": true, "balance": "5"}', 2, "BankAccount", "acc", 1),
            )
        snapshot = await repository.get_snapshot("BankAccount", "acc")
        assert snapshot is not None
        assert (snapshot.last_sequence, snapshot.snapshot_version) == (5, 2)


async def collect(iterator):
    return [item async for item in iterator]
