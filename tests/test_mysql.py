"""MySQL / MariaDB-only behaviour: mysql-es's database upgrading in place, byte-exact ids,
the counter row behind the global order, URLs, and a killed connection."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncmy
import pytest
from backends_under_test.mysql import FACTORY

import cqrs
from cqrs import (
    ConfigurationError,
    CqrsFramework,
    DatabaseConnectionError,
    PersistedEventStore,
    SerializedEvent,
    default_codec,
)
from cqrs.ddl import ddl_files, render
from cqrs_mysql import MysqlEventRepository, from_url, parse_url
from cqrs_mysql.schema import schema_version_table
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
)

URL = FACTORY.url


def event(aggregate_id: str, sequence: int, aggregate_type: str = "Thing") -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        "Ev",
        "1.0",
        default_codec.encode({"n": sequence}),
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


@pytest.fixture
async def tables() -> AsyncIterator[dict[str, str]]:
    reason = await FACTORY.unavailable()
    if reason is not None:
        required = os.environ.get("CQRS_TEST_REQUIRE", "").split(",")
        if "mysql" in [name.strip() for name in required]:
            pytest.fail(f"mysql is required (CQRS_TEST_REQUIRE) but {reason}")
        pytest.skip(f"mysql: {reason}")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield {"events": f"{prefix}_events", "snapshots": f"{prefix}_snaps"}
    finally:
        await FACTORY.cleanup(Path(), prefix)


@pytest.fixture
async def repository(tables) -> AsyncIterator[MysqlEventRepository]:
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        await repository.create_schema()
        yield repository


async def sql(statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = await asyncmy.connect(**parse_url(URL).connect_kwargs(10))
    try:
        cursor = conn.cursor()
        await cursor.execute(statement, params)
        return list(await cursor.fetchall())
    finally:
        await conn.ensure_closed()


async def run_ddl(text: str) -> None:
    conn = await asyncmy.connect(**parse_url(URL).connect_kwargs(10))
    try:
        cursor = conn.cursor()
        await cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',ANSI_QUOTES')")
        await cursor.execute(text)
        while await cursor.nextset():
            pass
    finally:
        await conn.ensure_closed()


def test_the_first_ddl_file_is_mysql_es_layout():
    (name, text), *_ = ddl_files("mysql")
    assert name == "001_seed.sql"
    for column in ("aggregate_type varchar(255)", "payload json", "metadata json"):
        assert column in text
    assert "timestamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP" in text
    assert "PRIMARY KEY (aggregate_type, aggregate_id)" in text  # snapshots: one per aggregate


async def test_a_mysql_es_database_upgrades_in_place_and_its_rows_still_load(tables):
    events, snapshots = tables["events"], tables["snapshots"]
    (_, seed), *_ = ddl_files("mysql")
    await run_ddl(render(seed, {"events": events, "snapshots": snapshots}))
    insert = (
        f"INSERT INTO `{events}` (aggregate_type, aggregate_id, sequence, event_type,"  # noqa: S608
        " event_version, payload, metadata) VALUES (%s, %s, %s, %s, '1.0', %s, '{}')"
    )
    opened = default_codec.encode(AccountOpened("old")).decode()
    await sql(insert, ("BankAccount", "old", 1, "AccountOpened", opened))
    for n in (2, 3):
        deposit = CustomerDepositedMoney(Decimal(n), Decimal(n * (n + 1) // 2 - 1))
        payload = default_codec.encode(deposit).decode()
        await sql(insert, ("BankAccount", "old", n, "CustomerDepositedMoney", payload))
    await sql(insert, ("Other", "x", 1, "Whatever", '{"a": "ünï"}'))

    repository = from_url(URL, events_table=events, snapshots_table=snapshots)
    async with repository:
        await repository.create_schema()
        await repository.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=2)
        loaded = await store.load_aggregate("old")
        assert (loaded.aggregate.balance, loaded.version) == (Decimal(5), 3)
        framework = CqrsFramework(store, (), BankAccountServices())
        await framework.execute("old", DepositMoney(Decimal(4)))
        await framework.execute("new", OpenAccount("new"))
        streamed = [e async for e in repository.stream_all_events(None)]
        assert [e.position for e in streamed] == [1, 2, 3, 4, 5, 6]  # old rows numbered first
        assert [(e.aggregate_id, e.sequence) for e in streamed[:4]] == [
            ("old", 1),
            ("old", 2),
            ("old", 3),
            ("x", 1),
        ]
        assert len({str(e.event_id) for e in streamed}) == 6
        other = await repository.get_events("Other", "x")
        assert default_codec.decode_untyped(other[0].payload) == {"a": "ünï"}
    applied = await sql(f"SELECT file FROM `{schema_version_table(events)}` ORDER BY file")  # noqa: S608
    assert [row[0] for row in applied] == [name for name, _ in ddl_files("mysql")]


async def test_half_a_schema_is_a_clear_error(tables):
    await sql(f"CREATE TABLE `{tables['events']}` (x int)")
    repository = from_url(URL, events_table=tables["events"], snapshots_table=tables["snapshots"])
    async with repository:
        with pytest.raises(ConfigurationError, match="exists but"):
            await repository.create_schema()


async def test_ids_are_compared_byte_for_byte(repository):
    ids = ["a", "A", "a ", "ä", "a\u0308"]  # case, trailing space, composed and decomposed
    for aggregate_id in ids:
        await repository.persist([event(aggregate_id, 1)], None)
    for aggregate_id in ids:
        stored = await repository.get_events("Thing", aggregate_id)
        assert [(e.aggregate_id, e.sequence) for e in stored] == [(aggregate_id, 1)]
    await repository.persist([event("x", 1, aggregate_type="thing")], None)
    assert await repository.get_events("Thing", "x") == []


async def test_positions_come_from_the_counter_row_in_commit_order(repository, tables):
    first = await repository.persist([event("a", 1), event("a", 2)], None)
    second = await repository.persist([event("b", 1)], None)
    assert first == [1, 2]
    assert second == [3]
    (counter,) = await sql(f"SELECT position FROM `{tables['events']}_counter`")  # noqa: S608
    assert counter == (3,)
    # A refused batch takes no position: the next commit follows on.
    with pytest.raises(cqrs.AggregateConflict):
        await repository.persist([event("a", 2)], None)
    with pytest.raises(cqrs.AggregateConflict):
        await repository.persist([event("a", 4)], None)
    assert await repository.persist([event("a", 3)], None) == [4]


async def test_a_killed_connection_is_replaced_and_the_next_request_succeeds(repository):
    await repository.persist([event("a", 1)], None)
    pool = repository._connections.pool
    assert pool is not None
    async with pool.acquire() as conn:  # the pool's idle connection
        cursor = conn.cursor()
        await cursor.execute("SELECT CONNECTION_ID()")
        (thread,) = await cursor.fetchone()
    await sql("KILL %s", (thread,))
    assert [e.sequence for e in await repository.get_events("Thing", "a")] == [1]
    assert await repository.persist([event("a", 2)], None) == [2]


async def test_an_unreachable_server_names_itself_without_the_password():
    repository = from_url("mysql://ann:secret@127.0.0.1:1/db", timeout=2)
    with pytest.raises(DatabaseConnectionError, match=r"mysql://ann@127\.0\.0\.1:1/db") as raised:
        await repository.open()
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    ["mysql://host", "postgresql://host/db", "mysql://host:99999/db", "mysql://u:pw@h/db?ssl=1"],
)
def test_bad_urls_are_refused_naming_them_without_the_password(url):
    with pytest.raises(ConfigurationError, match="MySQL URL") as raised:
        parse_url(url)
    assert "pw" not in str(raised.value)


def test_urls_are_read_with_defaults():
    config = parse_url("mariadb://bob:p%40ss@db.example:3307/events")
    assert (config.user, config.password, config.host, config.port, config.database) == (
        "bob",
        "p@ss",
        "db.example",
        3307,
        "events",
    )
    assert "p@ss" not in repr(config)
    default = parse_url("mysql://localhost/test")
    assert (default.user, default.port) == ("root", 3306)


async def test_connect_opens_a_mysql_repository(tables):
    async with cqrs.connect(URL, create_schema=False) as repository:
        assert isinstance(repository, MysqlEventRepository)
        assert repository.events_table == "events"
        assert repository.with_tables(tables["events"], tables["snapshots"]).page_size == 1000
