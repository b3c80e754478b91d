"""GenericQuery and QueryReplay: retries and their backoff, when a view fetches missed events,
and the default batch size."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import cqrs.query
from cqrs import (
    AggregateConflict,
    ConfigurationError,
    EventEnvelope,
    GenericQuery,
    PersistedEventStore,
    QueryReplay,
)
from cqrs_memory import MemoryEventRepository, MemoryViewRepository
from examples.bank_account.domain import AccountOpened, BankAccount


@dataclass
class Seen:
    sequences: list[int] = field(default_factory=list)

    def update(self, event: EventEnvelope[object]) -> None:
        self.sequences.append(event.sequence)


def envelope(sequence: int, aggregate_id: str = "v1") -> EventEnvelope[object]:
    return EventEnvelope(
        "T", aggregate_id, sequence, {"n": sequence}, {}, datetime.now(UTC), uuid.uuid4(), sequence
    )


class Conflicting(MemoryViewRepository[Seen]):
    """Refuses the first ``conflicts`` updates as if another writer had been first."""

    def __init__(self, conflicts: int) -> None:
        super().__init__(Seen, "views")
        self.conflicts = conflicts
        self.loads = 0

    async def load_with_context(self, view_id):
        self.loads += 1
        return await super().load_with_context(view_id)

    async def update_view(self, view, context, version=None):
        if self.conflicts:
            self.conflicts -= 1
            raise AggregateConflict("changed meanwhile")
        await super().update_view(view, context, version)


class CountingSource:
    """An event source holding ``count`` events of 'v1' that counts its reads."""

    def __init__(self, count: int) -> None:
        self.events = [envelope(i + 1) for i in range(count)]
        self.reads: list[int] = []

    async def load_events(self, aggregate_id, after_sequence=0):
        self.reads.append(after_sequence)
        return [
            e for e in self.events if e.aggregate_id == aggregate_id and e.sequence > after_sequence
        ]


@pytest.fixture
def waits(monkeypatch):
    """Record the backoff instead of sleeping: the bounds of each random wait."""
    bounds: list[tuple[float, float]] = []
    slept: list[float] = []

    def uniform(low, high):
        bounds.append((low, high))
        return high

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(cqrs.query, "random", SimpleNamespace(uniform=uniform))
    monkeypatch.setattr(cqrs.query, "asyncio", SimpleNamespace(sleep=sleep))
    return SimpleNamespace(bounds=bounds, slept=slept)


async def test_a_conflicting_update_is_retried_after_a_growing_random_wait(waits):
    views = Conflicting(conflicts=3)
    query = GenericQuery(views, Seen)
    await query.dispatch("v1", [envelope(1), envelope(2)])
    assert views.loads == 4
    assert await query.load("v1") == Seen([1, 2])
    assert waits.bounds == [(0, 0.002), (0, 0.004), (0, 0.008)]
    assert waits.slept == [0.002, 0.004, 0.008]


async def test_by_default_it_gives_up_after_20_tries_waiting_at_most_50_ms(waits):
    views = Conflicting(conflicts=1000)
    query = GenericQuery(views, Seen)
    with pytest.raises(AggregateConflict) as raised:
        await query.dispatch("v1", [envelope(1)])
    assert str(raised.value) == "view 'v1' kept changing; gave up after 20 attempts"
    assert views.loads == 20
    assert waits.slept == [0.002, 0.004, 0.008, 0.016, 0.032] + [0.05] * 14
    assert await query.load("v1") is None


async def test_the_limits_are_settable(waits):
    views = Conflicting(conflicts=1000)
    query = GenericQuery(views, Seen, attempts=3, max_delay=0.003)
    with pytest.raises(AggregateConflict, match="gave up after 3 attempts"):
        await query.dispatch("v1", [envelope(1)])
    assert waits.slept == [0.002, 0.003]


async def test_a_gap_without_a_store_is_reported_as_a_gap(waits):
    views = Conflicting(conflicts=0)
    query = GenericQuery(views, Seen, attempts=2)
    with pytest.raises(AggregateConflict) as raised:
        await query.dispatch("v1", [envelope(3)])
    assert str(raised.value) == (
        "view 'v1' is at sequence 0 but the next events start at 3; gave up after 2 attempts"
    )
    assert views.loads == 2  # it waited for the missing events to land, then looked again


async def test_a_gap_then_a_conflict_is_reported_as_a_conflict(waits):
    source = CountingSource(3)
    views = Conflicting(conflicts=1000)
    query = GenericQuery(views, Seen, store=source, attempts=2)
    with pytest.raises(AggregateConflict, match=r"^view 'v1' kept changing; gave up after 2"):
        await query.dispatch("v1", [envelope(3)])


async def test_the_store_is_read_only_when_events_are_missing(waits):
    source = CountingSource(5)
    views = Conflicting(conflicts=0)
    query = GenericQuery(views, Seen, store=source)
    await query.dispatch("v1", [envelope(1), envelope(2)])
    await query.dispatch("v1", [envelope(3)])
    assert source.reads == []
    await query.dispatch("v1", [envelope(5)])  # 4 was missed: fetched, applied in order
    assert source.reads == [3]
    assert await query.load("v1") == Seen([1, 2, 3, 4, 5])
    await query.dispatch("v1", [envelope(4), envelope(5)])  # nothing new: no read either
    assert source.reads == [3]
    assert waits.slept == []


async def test_replay_batches_default_to_500_events():
    repository = MemoryEventRepository()
    await repository.open()
    store = PersistedEventStore(repository, BankAccount)
    context = await store.load_aggregate("acc")
    await store.commit([AccountOpened("acc")] * 501, context, {})
    batches = []

    class Sizes:
        async def dispatch(self, aggregate_id, events):
            batches.append(len(events))

    assert await QueryReplay(store, Sizes()).replay("acc") == 501
    assert batches == [500, 1]
    batches.clear()
    assert await QueryReplay(store, Sizes()).replay_all() == 501
    assert batches == [500, 1]


@pytest.mark.parametrize("attempts", [0, "3", 2.5])
def test_a_generic_query_needs_a_whole_number_of_attempts(attempts):
    with pytest.raises(ConfigurationError) as raised:
        GenericQuery(Conflicting(conflicts=0), Seen, attempts=attempts)
    assert str(raised.value) == f"GenericQuery attempts must be at least 1, not {attempts!r}"
    assert GenericQuery(Conflicting(conflicts=0), Seen, attempts=1).attempts == 1
