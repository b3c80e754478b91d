"""CqrsFramework's outcomes on the in-memory backend and what it says about them on
``cqrs.framework``: a commit, an empty outcome, a refusal, a bug in a handler, a version
mismatch (never retried), conflicts retried until they pass or run out, and a new aggregate
(``expected_version=0``) that exists after all."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import pytest

import cqrs.framework
from cqrs import (
    Aggregate,
    AggregateConflict,
    CqrsFramework,
    DomainError,
    DomainEvent,
    PersistedEventStore,
    Retry,
    UnexpectedError,
    UserError,
)
from cqrs_memory import MemoryEventRepository


@dataclass(frozen=True)
class Noted(DomainEvent):
    text: str


@dataclass(frozen=True)
class Note:
    text: str
    times: int = 1


class Refuse:
    pass


class Crash:
    pass


class NotebookFullError(DomainError):
    pass


@dataclass
class Notebook(Aggregate[object, Noted, None]):
    aggregate_type: ClassVar[str] = "Notebook"
    event_classes: ClassVar[Sequence[type[object]]] = (Noted,)
    notes: int = 0

    async def handle(self, command: object, services: None) -> list[Noted]:
        if isinstance(command, Refuse):
            raise NotebookFullError("the notebook is full")
        if isinstance(command, Crash):
            raise KeyError("page")
        assert isinstance(command, Note)
        return [Noted(command.text)] * command.times

    def apply(self, event: Noted) -> None:
        self.notes += 1


class Handled:
    """A query that records the sequences of each dispatch."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[int]]] = []

    async def dispatch(self, aggregate_id, events) -> None:
        self.seen.append((aggregate_id, [e.sequence for e in events]))


async def notebooks(*queries, retry: Retry | None = None) -> CqrsFramework[object, Noted, None]:
    repository = MemoryEventRepository()
    await repository.open()
    return CqrsFramework(PersistedEventStore(repository, Notebook), queries, retry=retry)


def said(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "cqrs.framework"]


def conflicting(app, conflicts: int) -> list[int]:
    """Make the next ``conflicts`` commits of ``app`` lose to another writer; return the
    list the number of each commit try is appended to."""
    commit = app.store.commit
    tries: list[int] = []

    async def commit_or_lose(*args):
        nonlocal conflicts
        tries.append(len(tries) + 1)
        if conflicts:
            conflicts -= 1
            raise AggregateConflict("someone else was first")
        return await commit(*args)

    app.store.commit = commit_or_lose
    return tries


@pytest.fixture
def slept(monkeypatch):
    """No real waits between tries; the jitter returns its upper bound."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(cqrs.framework, "asyncio", SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(cqrs.framework, "random", SimpleNamespace(uniform=lambda low, high: high))
    return waits


async def test_each_outcome_is_said_at_debug_and_dispatched_only_with_events(caplog):
    handled = Handled()
    app = await notebooks(handled)
    with caplog.at_level(logging.DEBUG, logger="cqrs.framework"):
        assert len(await app.execute("n1", Note("a", times=2))) == 2
        assert await app.execute("n1", Note("b", times=0)) == []
        with pytest.raises(UserError) as refused:
            await app.execute("n1", Refuse())
    assert isinstance(refused.value.__cause__, NotebookFullError)
    assert handled.seen == [("n1", [1, 2])]
    assert said(caplog) == [
        (logging.DEBUG, "Note on Notebook 'n1': 2 event(s) committed, at version 2"),
        (logging.DEBUG, "Note on Notebook 'n1': 0 event(s) committed, at version unchanged"),
        (logging.DEBUG, "Refuse on Notebook 'n1' refused: the notebook is full"),
    ]


async def test_a_handler_that_raises_anything_else_is_an_unexpected_error_naming_it():
    app = await notebooks()
    with pytest.raises(UnexpectedError) as raised:
        await app.execute("n1", Crash())
    assert str(raised.value) == "Notebook.handle raised KeyError('page')"
    assert isinstance(raised.value.__cause__, KeyError)


async def test_a_version_mismatch_names_both_versions_and_is_never_retried(slept, caplog):
    app = await notebooks(retry=Retry(attempts=5))
    await app.execute("n1", Note("a"))
    with (
        caplog.at_level(logging.DEBUG, logger="cqrs.framework"),
        pytest.raises(AggregateConflict) as raised,
    ):
        await app.execute("n1", Note("b"), expected_version=3)
    assert str(raised.value) == "'n1' is at version 1, expected 3"
    tries = conflicting(app, 1)
    with pytest.raises(AggregateConflict, match="someone else"):
        await app.execute("n1", Note("b"), expected_version=1)
    assert tries == [1]  # a conflict at the expected version is not retried either
    assert slept == []
    assert said(caplog) == []


async def test_conflicts_are_retried_with_the_retry_delays_and_said_at_debug(slept, caplog):
    handled = Handled()
    app = await notebooks(handled, retry=Retry(attempts=4, base_delay=0.01, max_delay=1))
    tries = conflicting(app, 3)
    with caplog.at_level(logging.DEBUG, logger="cqrs.framework"):
        assert len(await app.execute("n1", Note("a"))) == 1
    assert tries == [1, 2, 3, 4]
    assert slept == [0.01, 0.02, 0.04]
    assert handled.seen == [("n1", [1])]
    assert said(caplog) == [
        (logging.DEBUG, "Note on Notebook 'n1': conflict on try 1, retrying in 0.0100 s"),
        (logging.DEBUG, "Note on Notebook 'n1': conflict on try 2, retrying in 0.0200 s"),
        (logging.DEBUG, "Note on Notebook 'n1': conflict on try 3, retrying in 0.0400 s"),
        (logging.DEBUG, "Note on Notebook 'n1': 1 event(s) committed, at version 1"),
    ]


@pytest.mark.parametrize("attempts", [2, 3])
async def test_a_conflict_that_outlasts_the_retries_is_a_warning(slept, caplog, attempts):
    app = await notebooks(retry=Retry(attempts=attempts, base_delay=0.01, max_delay=1))
    tries = conflicting(app, 99)
    with (
        caplog.at_level(logging.WARNING, logger="cqrs.framework"),
        pytest.raises(AggregateConflict, match="someone else"),
    ):
        await app.execute("n1", Note("a"))
    assert tries == list(range(1, attempts + 1))
    assert slept == [0.01, 0.02][: attempts - 1]  # no wait after the last try
    assert said(caplog) == [
        (
            logging.WARNING,
            (
                f"Note on Notebook 'n1': conflict after {attempts} tries, giving up: "
                "someone else was first"
            ),
        )
    ]


async def test_without_retry_a_conflict_is_raised_at_once_and_not_a_warning(slept, caplog):
    app = await notebooks()
    tries = conflicting(app, 1)
    with (
        caplog.at_level(logging.DEBUG, logger="cqrs.framework"),
        pytest.raises(AggregateConflict),
    ):
        await app.execute("n1", Note("a"))
    assert tries == [1]
    assert slept == []
    assert said(caplog) == []
    one = await notebooks(retry=Retry(attempts=1))
    tries = conflicting(one, 1)
    with pytest.raises(AggregateConflict):
        await one.execute("n1", Note("a"))
    assert tries == [1]
    assert said(caplog) == []


async def test_a_new_aggregate_that_exists_is_a_conflict_even_when_refused_or_empty():
    app = await notebooks()
    await app.execute("n1", Note("a"))
    for command in (Refuse(), Note("b", times=0), Note("c")):
        with pytest.raises(AggregateConflict) as raised:
            await app.execute("n1", command, expected_version=0)
        if not isinstance(command, Note) or command.times == 0:
            assert str(raised.value) == "'n1' is at version 1, expected 0"
    # a new one: refused and empty outcomes stay what they are
    with pytest.raises(UserError):
        await app.execute("n2", Refuse(), expected_version=0)
    assert await app.execute("n2", Note("b", times=0), expected_version=0) == []
    (envelope,) = await app.execute("n2", Note("c"), expected_version=0)
    assert envelope.sequence == 1
