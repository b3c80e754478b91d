"""Hostile input on every backend: a clear error naming the culprit, or it works; nothing
already stored is harmed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from msgspec.structs import replace

from cqrs import (
    AggregateError,
    CqrsFramework,
    DeserializationError,
    PersistedEventStore,
    UserError,
)
from cqrs_conformance.bank_account import (
    BankAccount,
    BankAccountCommand,
    BankAccountEvent,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
    WriteCheck,
)
from cqrs_conformance.support import TYPE, batch, collect, event

HOSTILE = [
    "quote ' and \" and `",
    "ünïcödé ✓ 𝄞 日本 \u202e",
    "x" * 1024,  # the longest id every backend stores (MAX_AGGREGATE_ID_BYTES)
    "'; DROP TABLE events; --",
    '{"$gt": ""}',
    "new\nline\ttab\r",
]


def bank_app(
    repository,
) -> CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices]:
    store = PersistedEventStore(repository, BankAccount)
    return CqrsFramework(store, (), BankAccountServices())


@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_ids_metadata_and_payloads_round_trip(repository, text):
    cqrs = bank_app(repository)
    await cqrs.execute_with_metadata(text, OpenAccount(text), {text: text, "k": text})
    await cqrs.execute(text, DepositMoney(Decimal(10)))
    await cqrs.execute(text, WriteCheck("1", Decimal("0.5")))
    events = await cqrs.store.load_events(text)
    assert events[0].payload.account_id == text  # type: ignore[union-attr]
    assert dict(events[0].metadata) == {text: text, "k": text}
    loaded = (await cqrs.store.load_aggregate(text)).aggregate
    assert loaded == BankAccount(opened=True, balance=Decimal("9.5"))


async def test_nul_bytes_in_ids_are_refused_and_in_values_work(repository):
    cqrs = bank_app(repository)
    with pytest.raises(ValueError, match="NUL"):
        await cqrs.execute("a\x00b", OpenAccount("x"))
    await cqrs.execute_with_metadata("nul", OpenAccount("a\x00b"), {"k": "v\x00w"})
    events = await cqrs.store.load_events("nul")
    assert events[0].payload.account_id == "a\x00b"  # type: ignore[union-attr]
    assert events[0].metadata == {"k": "v\x00w"}


async def test_payload_of_several_megabytes(repository):
    cqrs = bank_app(repository)
    big = "€" * 1_500_000  # 4.5 MB of UTF-8
    await cqrs.execute(big[:10], OpenAccount(big))
    events = await cqrs.store.load_events(big[:10])
    assert events[0].payload.account_id == big  # type: ignore[union-attr]


async def test_malformed_stored_payload_harms_nothing_else(repository):
    await repository.persist(batch("a1", 1, 2), None)
    refused: AggregateError | None = None
    try:
        await repository.persist([replace(event("a1", 3), payload=b'{"n": 3,,}')], None)
    except AggregateError as error:
        refused = error
    stored = await repository.get_events(TYPE, "a1")
    if refused is None:
        assert len(stored) == 3  # kept as text; the store's decode names it on load
    else:
        assert "json" in str(refused).lower()  # refused with a clear error, nothing stored
        assert len(stored) == 2
    assert [e.sequence for e in await collect(repository.stream_events(TYPE, "a1"))][:2] == [1, 2]


async def test_undecodable_event_is_named_and_the_rest_still_load(repository):
    cqrs = bank_app(repository)
    await cqrs.execute("good", OpenAccount("good"))
    await repository.persist(
        [event("bad", 1, aggregate_type="BankAccount", event_type="AccountOpened", payload=[1])],
        None,
    )
    with pytest.raises(DeserializationError, match=r"'bad' at sequence 1"):
        await cqrs.store.load_aggregate("bad")
    assert (await cqrs.store.load_aggregate("good")).aggregate == BankAccount(opened=True)
    with pytest.raises(UserError):
        await cqrs.execute("good", OpenAccount("good"))
