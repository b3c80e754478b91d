"""Ids through the store and the framework, on every backend: the byte limits of aggregate
ids and types are checked before any I/O, and the event ids a commit returns are exactly the
ones stored."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from cqrs import (
    AggregateContext,
    ConfigurationError,
    CqrsFramework,
    PersistedEventRepository,
    PersistedEventStore,
)
from cqrs.repository import MAX_AGGREGATE_ID_BYTES, MAX_AGGREGATE_TYPE_BYTES
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    BankAccountCommand,
    BankAccountEvent,
    BankAccountServices,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)
from cqrs_conformance.support import collect

D = Decimal

AT_THE_LIMIT = {
    "ascii": "x" * MAX_AGGREGATE_ID_BYTES,
    "3-byte": "€" * (MAX_AGGREGATE_ID_BYTES // 3) + "x" * (MAX_AGGREGATE_ID_BYTES % 3),
    "4-byte": "𝄞" * (MAX_AGGREGATE_ID_BYTES // 4),
}
OVER_THE_LIMIT = {
    "ascii": "x" * (MAX_AGGREGATE_ID_BYTES + 1),
    "3-byte": "€" * (MAX_AGGREGATE_ID_BYTES // 3) + "x" * (MAX_AGGREGATE_ID_BYTES % 3 + 1),
    "4-byte": "𝄞" * (MAX_AGGREGATE_ID_BYTES // 4) + "x",
}
ID_LIMIT = f"aggregate_id is {MAX_AGGREGATE_ID_BYTES + 1} .*the limit is {MAX_AGGREGATE_ID_BYTES}"


def bank_app(
    repository: PersistedEventRepository, aggregate_class: type[BankAccount] = BankAccount
) -> CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices]:
    store = PersistedEventStore(repository, aggregate_class, snapshot_every=2)
    return CqrsFramework(store, (), BankAccountServices())


def test_the_examples_sit_exactly_at_and_one_byte_over_the_limit():
    for text in AT_THE_LIMIT.values():
        assert len(text.encode()) == MAX_AGGREGATE_ID_BYTES
    for text in OVER_THE_LIMIT.values():
        assert len(text.encode()) == MAX_AGGREGATE_ID_BYTES + 1


@pytest.mark.parametrize("aggregate_id", list(AT_THE_LIMIT.values()), ids=list(AT_THE_LIMIT))
async def test_an_id_of_exactly_the_limit_commits_and_loads(repository, aggregate_id):
    cqrs = bank_app(repository)
    await cqrs.execute_with_metadata(aggregate_id, OpenAccount(aggregate_id), {"k": "v"})
    await cqrs.execute(aggregate_id, DepositMoney(D(5)))  # crosses 2: a snapshot
    await cqrs.execute(aggregate_id, WithdrawMoney(D(2), "ATM-1"))
    loaded = await cqrs.store.load_aggregate(aggregate_id)
    replayed = await PersistedEventStore(repository, BankAccount).load_aggregate(aggregate_id)
    assert loaded.aggregate == replayed.aggregate == BankAccount(opened=True, balance=D(3))
    assert loaded.aggregate.aggregate_id == aggregate_id
    assert loaded.version == 3
    assert await repository.get_snapshot(BankAccount.aggregate_type, aggregate_id) is not None
    events = await cqrs.store.load_events(aggregate_id)
    assert [(e.aggregate_id, e.sequence) for e in events] == [(aggregate_id, s) for s in (1, 2, 3)]
    assert events[0].payload == AccountOpened(aggregate_id)
    store = cqrs.store
    assert isinstance(store, PersistedEventStore)
    assert [e.sequence for e in await collect(store.stream_events(aggregate_id))] == [1, 2, 3]


OPERATIONS = [
    "execute",
    "execute new",
    "execute_with_metadata",
    "load_aggregate",
    "load_events",
    "load_events after",
    "stream_events",
    "commit",
]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("aggregate_id", list(OVER_THE_LIMIT.values()), ids=list(OVER_THE_LIMIT))
async def test_an_id_over_the_limit_is_refused_before_any_io(backend, aggregate_id, operation):
    repository = backend.new_repository()  # never opened: any I/O would raise NotOpenError
    cqrs = bank_app(repository)
    store = cqrs.store
    assert isinstance(store, PersistedEventStore)
    context = AggregateContext(aggregate_id, store.new_aggregate(aggregate_id), 0)
    attempts = {
        "execute": lambda: cqrs.execute(aggregate_id, OpenAccount("a")),
        "execute new": lambda: cqrs.execute(aggregate_id, OpenAccount("a"), expected_version=0),
        "execute_with_metadata": lambda: cqrs.execute_with_metadata(
            aggregate_id, OpenAccount("a"), {"k": "v"}
        ),
        "load_aggregate": lambda: store.load_aggregate(aggregate_id),
        "load_events": lambda: store.load_events(aggregate_id),
        "load_events after": lambda: store.load_events(aggregate_id, 1),
        "stream_events": lambda: collect(store.stream_events(aggregate_id)),
        "commit": lambda: store.commit([AccountOpened("a")], context, {}),
    }
    assert sorted(attempts) == sorted(OPERATIONS)
    with pytest.raises(ValueError, match=ID_LIMIT):
        await attempts[operation]()
    assert context.version == 0
    assert context.aggregate == BankAccount()  # a refused commit applies nothing


async def test_an_aggregate_type_of_exactly_the_limit_works_and_one_byte_more_is_refused(
    repository,
):
    at_limit = "T" * (MAX_AGGREGATE_TYPE_BYTES - 2) + "é"
    assert len(at_limit.encode()) == MAX_AGGREGATE_TYPE_BYTES
    long_typed: type[BankAccount] = type("LongTyped", (BankAccount,), {"aggregate_type": at_limit})
    cqrs = bank_app(repository, long_typed)
    await cqrs.execute("acc", OpenAccount("acc"))
    await cqrs.execute("acc", DepositMoney(D(4)))
    loaded = await cqrs.store.load_aggregate("acc")
    assert (loaded.version, loaded.aggregate) == (2, long_typed(opened=True, balance=D(4)))
    assert [e.aggregate_type for e in await cqrs.store.load_events("acc")] == [at_limit] * 2
    assert await repository.get_snapshot(at_limit, "acc") is not None
    for over in (at_limit + "x", "T" * (MAX_AGGREGATE_TYPE_BYTES - 1) + "é"):
        too_long: type[BankAccount] = type("TooLong", (BankAccount,), {"aggregate_type": over})
        with pytest.raises(
            ConfigurationError,
            match=f"TooLong.aggregate_type is 256 .*the limit is {MAX_AGGREGATE_TYPE_BYTES}",
        ):
            PersistedEventStore(repository, too_long)
    nul: type[BankAccount] = type("Nul", (BankAccount,), {"aggregate_type": "a\x00"})
    with pytest.raises(ConfigurationError, match="NUL"):
        PersistedEventStore(repository, nul)


async def test_stored_event_ids_are_the_committed_ones(repository):
    store = PersistedEventStore(repository, BankAccount, snapshot_every=3)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    committed = await cqrs.execute("acc", OpenAccount("acc"))
    context = await store.load_aggregate("acc")
    committed += await store.commit(
        [
            CustomerDepositedMoney(D(1), D(1)),
            CustomerDepositedMoney(D(2), D(3)),
            CustomerWithdrewCash(D(1), D(2)),
        ],
        context,
        {},
    )
    committed += await cqrs.execute("acc", DepositMoney(D(5)))
    committed += await cqrs.execute("other", OpenAccount("other"))
    event_ids = [e.event_id for e in committed]
    assert all(isinstance(event_id, uuid.UUID) for event_id in event_ids)
    assert len(set(event_ids)) == len(event_ids) == 6
    by_aggregate = {"acc": event_ids[:5], "other": event_ids[5:]}
    for aggregate_id, expected in by_aggregate.items():
        loaded = await store.load_events(aggregate_id)
        assert [e.event_id for e in loaded] == expected
        rows = await repository.get_events(BankAccount.aggregate_type, aggregate_id)
        assert [uuid.UUID(str(row.event_id)) for row in rows] == expected
        streamed = await collect(store.stream_events(aggregate_id))
        assert [e.event_id for e in streamed] == expected
    tail = await store.load_events("acc", 2)
    assert [e.event_id for e in tail] == event_ids[2:5]
    everything = await collect(store.stream_all_events())
    assert sorted(e.event_id.int for e in everything) == sorted(i.int for i in event_ids)
