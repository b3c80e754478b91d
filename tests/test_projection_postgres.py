"""PostgreSQL specifics of projections: the projections of a runner share one LISTEN
connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends_under_test.postgres import FACTORY

from cqrs import (
    CqrsFramework,
    EventDecoder,
    EventEnvelope,
    PersistedEventStore,
    ProjectionRunner,
)
from cqrs_postgres import PostgresEventRepository
from cqrs_postgres.repository import from_url
from cqrs_postgres.statements import notify_channel
from examples.bank_account.domain import BankAccount, BankAccountServices, OpenAccount

URL = FACTORY.url


@pytest.fixture
async def repository() -> AsyncIterator[PostgresEventRepository]:
    reason = await FACTORY.unavailable()
    if reason is not None:
        required = os.environ.get("CQRS_TEST_REQUIRE", "").split(",")
        if "postgres" in [name.strip() for name in required]:
            pytest.fail(f"postgres is required (CQRS_TEST_REQUIRE) but {reason}")
        pytest.skip(f"postgres: {reason}")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        repository = from_url(
            URL, events_table=f"{prefix}_events", snapshots_table=f"{prefix}_snaps"
        )
        async with repository:
            await repository.create_schema()
            yield repository
    finally:
        await FACTORY.cleanup(Path(), prefix)


class Positions:
    event_types = None

    def __init__(self, name: str, store: EventDecoder) -> None:
        self.name, self.sources = name, (store,)
        self.seen: list[int] = []

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.seen.extend(e.position for e in events)


async def listening(channel: str) -> int:
    """How many sessions of the server listen on ``channel`` now."""
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "{channel}"',),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_projections_of_a_runner_share_one_listen_connection(repository):
    store = PersistedEventStore(repository, BankAccount)
    checkpoints = repository.checkpoint_store(f"{repository.events_table}_cp")
    await checkpoints.create_schema()
    projections = [Positions(f"p{n}", store) for n in range(4)]
    runner = ProjectionRunner(repository, checkpoints, projections, poll_interval=30)
    channel = notify_channel(repository.events_table)
    bank = CqrsFramework(store, (), BankAccountServices())
    first = await bank.execute("A1", OpenAccount("A1"))
    task = asyncio.create_task(runner.run())
    try:
        await runner.wait_for(first[-1].position, timeout=20)
        async with asyncio.timeout(20):
            while await listening(channel) < 1:  # noqa: ASYNC110 - polls the server
                await asyncio.sleep(0.05)
        assert await listening(channel) == 1
        second = await bank.execute("A2", OpenAccount("A2"))
        await runner.wait_for(second[-1].position, timeout=10)  # pushed: polling is 30 s
        assert all(p.seen == [first[-1].position, second[-1].position] for p in projections)
        assert await listening(channel) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with asyncio.timeout(20):
        while await listening(channel):  # noqa: ASYNC110 - the runner let its listener go
            await asyncio.sleep(0.05)
