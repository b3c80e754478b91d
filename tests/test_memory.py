"""In-memory-only behaviour: the lifecycle over a shared MemoryDatabase, paging, idempotence
and the batch rule as this backend keeps them. Everything the port promises is in
tests/conformance."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

import cqrs
from cqrs import (
    AggregateConflict,
    ConfigurationError,
    NotOpenError,
    SerializedEvent,
    SerializedSnapshot,
    ViewContext,
    check_batch,
)
from cqrs_memory import MemoryDatabase, MemoryEventRepository, MemoryViewRepository, from_url
from examples.bank_account.domain import BankAccountView


def rows(
    aggregate_id: str, first: int, count: int, aggregate_type: str = "T"
) -> list[SerializedEvent]:
    now = datetime.now(UTC)
    return [
        SerializedEvent(
            aggregate_type, aggregate_id, first + i, "E", "1.0", b"{}", b"{}", now, uuid.uuid4()
        )
        for i in range(count)
    ]


async def collect(events: AsyncIterator[SerializedEvent]) -> list[SerializedEvent]:
    return [event async for event in events]


@pytest.fixture
async def repo():
    async with MemoryEventRepository() as repository:
        yield repository


# -- lifecycle -------------------------------------------------------------------------------


def every_call(repository: MemoryEventRepository) -> dict[str, Callable[[], Awaitable[object]]]:
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
        "view create_schema": views.create_schema,
        "view load": lambda: views.load("v"),
        "view load_with_context": lambda: views.load_with_context("v"),
        "view update_view": lambda: views.update_view(BankAccountView(), ViewContext("v", 1)),
    }


async def test_every_call_before_open_and_after_close_raises_not_open():
    repository = MemoryEventRepository("orders", "order_snapshots")

    async def refused() -> None:
        for name, call in every_call(repository).items():
            with pytest.raises(NotOpenError, match="is not open") as caught:
                await call()
            assert "orders" in str(caught.value), name

    await refused()
    async with repository:
        await repository.persist(rows("a1", 1, 1), None)
        views = repository.view_repository(BankAccountView, "accounts")
        await views.update_view(BankAccountView("a1"), ViewContext("v", 0))
    await refused()
    await repository.close()  # idempotent
    await refused()
    assert "closed" in repr(repository)


async def test_data_stays_in_the_database_across_close_and_open():
    database = MemoryDatabase()
    first = MemoryEventRepository(database=database)
    async with first:
        positions = await first.persist(
            rows("a1", 1, 2), SerializedSnapshot("T", "a1", b"{}", 2, 1)
        )
        views = first.view_repository(BankAccountView, "accounts")
        await views.update_view(BankAccountView("a1"), ViewContext("v", 0))
    async with first:
        await first.open()  # idempotent
        assert [e.position for e in await first.get_events("T", "a1")] == positions
        loaded = await views.load_with_context("v")
        assert loaded is not None
        assert (loaded[0].account_id, loaded[1].version) == ("a1", 1)
    second = MemoryEventRepository(database=database)  # a second client of the same tables
    async with second:
        assert len(await collect(second.stream_all_events(None))) == 2
        assert await second.get_snapshot("T", "a1") is not None


async def test_connect_opens_and_from_url_does_not():
    async with cqrs.connect("memory://") as repository:
        assert await repository.get_events("T", "a1") == []
    with pytest.raises(NotOpenError):
        await from_url("memory://").get_events("T", "a1")


async def test_a_view_repository_built_alone_has_no_lifecycle():
    views = MemoryViewRepository(BankAccountView, "accounts")
    await views.create_schema()
    await views.update_view(BankAccountView("a1"), ViewContext("v", 0))
    assert await views.load("v") == BankAccountView("a1")
    other = MemoryViewRepository(BankAccountView, "accounts")
    assert await other.load("v") is None  # its own storage, not a shared one


# -- paging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [0, -1, 1.5, "5", None, True])
def test_page_size_must_be_a_positive_int(page_size):
    with pytest.raises(ConfigurationError, match="page_size"):
        MemoryEventRepository(page_size=page_size)


def test_with_tables_keeps_the_database_and_the_page_size():
    repository = MemoryEventRepository(page_size=7)
    other = repository.with_tables("orders", "order_snapshots")
    assert (other.database, other.page_size) == (repository.database, 7)
    assert (other.events_table, other.snapshots_table) == ("orders", "order_snapshots")
    assert "closed" in repr(other)


async def test_streams_read_page_by_page():
    # A stream reads a page only when the previous one is consumed: closing the repository
    # after one page of two events stops it at the next page.
    repository = MemoryEventRepository(page_size=2)
    await repository.open()
    await repository.persist(rows("a1", 1, 5), None)
    for stream in (
        repository.stream_events("T", "a1"),
        repository.stream_all_events(None),
        repository.stream_all_events("T"),
    ):
        await repository.open()
        events = aiter(stream)
        assert [(await anext(events)).sequence for _ in range(2)] == [1, 2]
        await repository.close()
        with pytest.raises(NotOpenError):
            await anext(events)


@pytest.mark.parametrize("page_size", [1, 2, 3, 500])
async def test_pages_of_any_size_give_every_event_once_in_order(page_size):
    repository = MemoryEventRepository(page_size=page_size)
    await repository.open()
    for i in range(7):
        await repository.persist(rows(f"a{i}", 1, 1, "T" if i % 2 else "U"), None)
    await repository.persist(rows("a9", 1, 4, "T"), None)
    every = await collect(repository.stream_all_events(None))
    assert [e.position for e in every] == list(range(1, 12))
    for after in (None, 0, 1, 4, 11, 50):
        for aggregate_type in (None, "T", "U"):
            streamed = await collect(repository.stream_all_events(aggregate_type, after))
            assert streamed == [
                e
                for e in every
                if e.position > (after or 0) and aggregate_type in (None, e.aggregate_type)
            ]
    assert [e.sequence for e in await collect(repository.stream_events("T", "a9"))] == [1, 2, 3, 4]


# -- persist: idempotence and the batch rule ---------------------------------------------------


async def test_a_retried_batch_returns_its_stored_positions(repo):
    batch = rows("a1", 1, 3)
    snapshot = SerializedSnapshot("T", "a1", b'{"s": 3}', 3, 1)
    positions = await repo.persist(batch, snapshot)
    await repo.persist(rows("b1", 1, 2), None)
    await repo.persist(rows("a1", 4, 2), None)
    assert await repo.persist(batch, snapshot) == positions
    assert await repo.persist(batch[1:], None) == positions[1:]
    stored = await repo.get_events("T", "a1")
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in stored[:3]] == [e.event_id for e in batch]
    assert len(await collect(repo.stream_all_events(None))) == 7
    assert await repo.get_snapshot("T", "a1") == snapshot


async def test_other_events_at_stored_sequences_and_gaps_are_conflicts(repo):
    batch = rows("a1", 1, 3)
    await repo.persist(batch, None)
    with pytest.raises(AggregateConflict, match="sequence 2"):
        await repo.persist(rows("a1", 2, 1), None)  # another writer's event 2
    with pytest.raises(AggregateConflict, match="sequence 2"):
        await repo.persist([*batch[1:], *rows("a1", 4, 1)], None)  # runs past the stored
    with pytest.raises(AggregateConflict, match="sequence 5"):
        await repo.persist(rows("a1", 5, 1), None)  # a gap
    with pytest.raises(AggregateConflict, match="sequence 3"):
        await repo.persist(rows("new", 3, 1), None)  # a gap on an empty stream
    assert [e.sequence for e in await repo.get_events("T", "a1")] == [1, 2, 3]
    assert await repo.get_events("T", "new") == []


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
        rows("a\x00b", 1, 1),
    ],
    ids=["empty", "gap", "two aggregates", "sequence 0", "long id", "NUL in id"],
)
async def test_bad_batches_get_the_cores_error_and_store_nothing(repo, batch):
    expected = core_error(batch)
    with pytest.raises(ValueError, match=re.escape(expected)) as caught:
        await repo.persist(batch, None)
    assert str(caught.value) == expected
    assert await collect(repo.stream_all_events(None)) == []


# -- wake-ups ----------------------------------------------------------------------------------


async def waited(listener, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(listener.wait(seconds), seconds + 5)
    return time.monotonic() - started


async def test_a_commit_wakes_the_listeners_of_its_table_in_every_repository():
    database = MemoryDatabase()
    reader, writer, elsewhere = (
        MemoryEventRepository(events, "snapshots", database=database)
        for events in ("events", "events", "others")
    )
    for repository in (reader, writer, elsewhere):
        await repository.open()
    listener = reader.wake_ups()
    waiting = asyncio.create_task(waited(listener, 30))
    await asyncio.sleep(0.05)
    await writer.persist(rows("a", 1, 2), None)
    assert await waiting < 1.0
    await elsewhere.persist(rows("a", 1, 1), None)  # another table: no wake-up
    assert await waited(listener, 0.2) >= 0.15
    await listener.close()


async def test_a_refused_commit_wakes_nobody(repo):
    await repo.persist(rows("a", 1, 2), None)
    listener = repo.wake_ups()
    with pytest.raises(AggregateConflict):
        await repo.persist(rows("a", 2, 1), None)
    assert await waited(listener, 0.2) >= 0.15
    await repo.persist(rows("a", 3, 1), None)
    assert await waited(listener, 30) < 1.0
    await listener.close()
