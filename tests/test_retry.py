"""Retry retries AggregateConflict only, up to its bound; every other error is raised at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest

from cqrs import (
    Aggregate,
    AggregateConflict,
    AggregateError,
    CqrsFramework,
    DatabaseConnectionError,
    DeserializationError,
    DomainError,
    DomainEvent,
    PersistedEventStore,
    Retry,
    UnexpectedError,
    UserError,
)
from cqrs_memory import MemoryEventRepository

ATTEMPTS = 5


@dataclass(frozen=True)
class Ticked(DomainEvent):
    n: int


class Calls:
    """The services: counts the handler's runs."""

    def __init__(self) -> None:
        self.handled = 0


@dataclass
class Clock(Aggregate[str, Ticked, Calls]):
    aggregate_type: ClassVar[str] = "Clock"
    event_classes: ClassVar[Sequence[type[object]]] = (Ticked,)
    ticks: int = 0

    async def handle(self, command: str, services: Calls) -> list[Ticked]:
        services.handled += 1
        if command == "refuse":
            raise DomainError("stopped")
        if command == "bug":
            raise TypeError("a bug")
        return [Ticked(self.ticks + 1)]

    def apply(self, event: Ticked) -> None:
        self.ticks = event.n


class CountingStore:
    """An EventStore over the memory backend that counts loads and commits and raises the
    scripted errors first: ``load_errors`` before loads, ``commit_errors`` before commits."""

    def __init__(self, repository: MemoryEventRepository) -> None:
        self.inner = PersistedEventStore(repository, Clock)
        self.loads = 0
        self.commits = 0
        self.load_errors: list[Exception] = []
        self.commit_errors: list[Exception] = []

    def new_aggregate(self, aggregate_id):
        return self.inner.new_aggregate(aggregate_id)

    async def load_events(self, aggregate_id, after_sequence=0):
        return await self.inner.load_events(aggregate_id, after_sequence)

    async def load_aggregate(self, aggregate_id):
        self.loads += 1
        if self.load_errors:
            raise self.load_errors.pop(0)
        return await self.inner.load_aggregate(aggregate_id)

    async def commit(self, events, context, metadata):
        self.commits += 1
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        return await self.inner.commit(events, context, metadata)


async def counting() -> CountingStore:
    repository = MemoryEventRepository()
    await repository.open()  # every repository must be open to be used
    return CountingStore(repository)


def framework(store: CountingStore, calls: Calls) -> CqrsFramework[str, Ticked, Calls]:
    return CqrsFramework(store, (), calls, retry=Retry(attempts=ATTEMPTS, base_delay=0))


async def stored(store: CountingStore) -> list[int]:
    return [e.payload.n for e in await store.inner.load_events("c")]


@pytest.mark.parametrize(("command", "error"), [("refuse", UserError), ("bug", UnexpectedError)])
async def test_a_refusal_or_a_handler_bug_runs_the_handler_once(command, error):
    store, calls = await counting(), Calls()
    with pytest.raises(error):
        await framework(store, calls).execute("c", command)
    assert (store.loads, calls.handled, store.commits) == (1, 1, 0)
    assert await stored(store) == []


@pytest.mark.parametrize(
    "error",
    [
        DeserializationError("event 'c' at sequence 1 does not decode"),
        DatabaseConnectionError("connection refused"),
        UnexpectedError("driver said no"),
    ],
    ids=type,
)
async def test_an_error_from_load_is_raised_after_one_load(error):
    store, calls = await counting(), Calls()
    store.load_errors = [error] * ATTEMPTS
    with pytest.raises(type(error)) as caught:
        await framework(store, calls).execute("c", "tick")
    assert caught.value is error
    assert (store.loads, calls.handled, store.commits) == (1, 0, 0)


@pytest.mark.parametrize(
    "error",
    [DatabaseConnectionError("connection reset"), UnexpectedError("driver said no")],
    ids=type,
)
async def test_an_error_from_commit_is_raised_after_one_try(error):
    store, calls = await counting(), Calls()
    store.commit_errors = [error] * ATTEMPTS
    with pytest.raises(type(error)) as caught:
        await framework(store, calls).execute("c", "tick")
    assert caught.value is error
    assert (store.loads, calls.handled, store.commits) == (1, 1, 1)
    assert await stored(store) == []


@pytest.mark.parametrize("conflicts", range(ATTEMPTS))
async def test_conflicts_are_retried_with_a_fresh_load_and_decision(conflicts):
    store, calls = await counting(), Calls()
    store.commit_errors = [AggregateConflict("simulated") for _ in range(conflicts)]
    envelopes = await framework(store, calls).execute("c", "tick")
    tries = conflicts + 1
    assert (store.loads, calls.handled, store.commits) == (tries, tries, tries)
    assert [e.sequence for e in envelopes] == [1]
    assert await stored(store) == [1]


async def test_conflicts_stop_at_the_bound():
    store, calls = await counting(), Calls()
    store.commit_errors = [AggregateConflict("simulated") for _ in range(ATTEMPTS + 3)]
    with pytest.raises(AggregateConflict):
        await framework(store, calls).execute("c", "tick")
    assert (store.loads, calls.handled, store.commits) == (ATTEMPTS, ATTEMPTS, ATTEMPTS)
    assert await stored(store) == []


async def test_a_real_conflict_is_retried_on_the_new_state():
    # Another writer commits between our load and our commit, twice: our commit collides in
    # the backend, and the retry decides again on the state that includes the winner's event.
    store, calls = await counting(), Calls()
    other = CqrsFramework(store.inner, (), Calls())
    real_commit = store.commit
    winners = 2

    async def commit_after_a_rival(events, context, metadata):
        nonlocal winners
        if winners:
            winners -= 1
            await other.execute("c", "tick")
        return await real_commit(events, context, metadata)

    store.commit = commit_after_a_rival  # type: ignore[method-assign]
    envelopes = await framework(store, calls).execute("c", "tick")
    assert (store.loads, calls.handled) == (3, 3)
    assert [(e.sequence, e.payload.n) for e in envelopes] == [(3, 3)]
    assert await stored(store) == [1, 2, 3]


async def test_a_version_mismatch_under_expected_version_is_not_retried():
    store, calls = await counting(), Calls()
    cqrs = framework(store, calls)
    await cqrs.execute("c", "tick")
    with pytest.raises(AggregateConflict, match="expected 5"):
        await cqrs.execute("c", "tick", expected_version=5)
    assert (store.loads, calls.handled) == (2, 1)
    store.commit_errors = [AggregateConflict("simulated")]
    with pytest.raises(AggregateConflict, match="simulated"):
        await cqrs.execute("c", "tick", expected_version=1)
    assert (store.loads, calls.handled, store.commits) == (3, 2, 2)
    assert await stored(store) == [1]


def test_every_error_tried_here_is_an_aggregate_error():
    # The retry loop must single out AggregateConflict among its siblings.
    for error in (UserError, DeserializationError, DatabaseConnectionError, UnexpectedError):
        assert issubclass(error, AggregateError)
        assert not issubclass(error, AggregateConflict)
