"""QueryReplay on the in-memory backend: the batches each replay dispatches (by size, and by
aggregate in the global stream), what it returns, the INFO line it logs, and its settings."""

from __future__ import annotations

import logging

import pytest

from cqrs import ConfigurationError, PersistedEventStore, QueryReplay
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import AccountOpened, BankAccount


class Batches:
    """A query that records each dispatch: the aggregate id and the sequences."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []

    def __repr__(self) -> str:
        return "<Batches>"

    async def dispatch(self, aggregate_id, events) -> None:
        self.batches.append((aggregate_id, [e.sequence for e in events]))


@pytest.fixture
async def store():
    """'a' with 2 events, 'b' with 1, then 'a' with 5 more (positions 1 to 8)."""
    async with MemoryEventRepository() as repository:
        store = PersistedEventStore(repository, BankAccount)
        for aggregate_id, count in [("a", 2), ("b", 1), ("a", 5)]:
            context = await store.load_aggregate(aggregate_id)
            await store.commit([AccountOpened(aggregate_id)] * count, context, {})
        yield store


@pytest.mark.parametrize("batch_size", [0, -3])
def test_a_replay_needs_a_positive_batch_size(batch_size):
    with pytest.raises(ConfigurationError) as raised:
        QueryReplay(None, Batches(), batch_size=batch_size)  # type: ignore[arg-type]
    assert str(raised.value) == f"QueryReplay batch_size must be at least 1, not {batch_size}"
    assert QueryReplay(None, Batches(), batch_size=1).batch_size == 1  # type: ignore[arg-type]


async def test_replay_dispatches_full_batches_then_the_rest_and_logs_the_count(store, caplog):
    query = Batches()
    with caplog.at_level(logging.INFO, logger="cqrs.query"):
        assert await QueryReplay(store, query, batch_size=3).replay("a") == 7
    assert query.batches == [("a", [1, 2, 3]), ("a", [4, 5, 6]), ("a", [7])]
    records = [r for r in caplog.records if r.name == "cqrs.query"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "replayed 7 event(s) of 'a' into <Batches>")
    ]


async def test_replay_of_an_exact_number_of_batches_and_of_nothing(store):
    query = Batches()
    assert await QueryReplay(store, query, batch_size=7).replay("a") == 7
    assert query.batches == [("a", [1, 2, 3, 4, 5, 6, 7])]
    assert await QueryReplay(store, query, batch_size=1).replay("b") == 1
    assert query.batches[1:] == [("b", [1])]
    assert await QueryReplay(store, query).replay("nobody") == 0
    assert len(query.batches) == 2


async def test_replay_all_cuts_batches_at_the_size_and_at_each_other_aggregate(store, caplog):
    query = Batches()
    with caplog.at_level(logging.INFO, logger="cqrs.query"):
        assert await QueryReplay(store, query, batch_size=3).replay_all() == 8
    assert query.batches == [
        ("a", [1, 2]),
        ("b", [1]),
        ("a", [3, 4, 5]),
        ("a", [6, 7]),
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "cqrs.query"] == [
        "replayed 8 event(s) of BankAccount after position None into <Batches>"
    ]


async def test_replay_all_starts_after_the_position_given(store, caplog):
    query = Batches()
    with caplog.at_level(logging.INFO, logger="cqrs.query"):
        assert await QueryReplay(store, query, batch_size=2).replay_all(after_position=3) == 5
    assert query.batches == [("a", [3, 4]), ("a", [5, 6]), ("a", [7])]
    assert [r.getMessage() for r in caplog.records if r.name == "cqrs.query"] == [
        "replayed 5 event(s) of BankAccount after position 3 into <Batches>"
    ]
    empty = Batches()
    assert await QueryReplay(store, empty).replay_all(after_position=8) == 0
    assert empty.batches == []
