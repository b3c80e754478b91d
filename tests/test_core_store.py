"""PersistedEventStore on the in-memory repository: what a commit returns and stores, what a
load decodes, the errors that name the culprit, and how snapshot state moves with a context."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, ClassVar

import pydantic
import pytest

import cqrs.subscription
from cqrs import (
    Aggregate,
    ConfigurationError,
    DatabaseConnectionError,
    DeserializationError,
    DomainEvent,
    MsgspecCodec,
    PersistedEventStore,
    SemanticVersionEventUpcaster,
    SerializedEvent,
    SerializedSnapshot,
    UnexpectedError,
)
from cqrs.codec import schema_fingerprint
from cqrs.store import validate_input
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
)

D = Decimal
TYPE = BankAccount.aggregate_type
OPENED = AccountOpened("acc")


def deposit(balance: int) -> CustomerDepositedMoney:
    return CustomerDepositedMoney(D(1), D(balance))


@pytest.fixture
async def repository():
    async with MemoryEventRepository() as repository:
        yield repository


def stored_row(
    sequence: int,
    event_type: str,
    payload: bytes,
    *,
    aggregate_id: str = "acc",
    aggregate_type: str = TYPE,
    metadata: bytes = b"{}",
    timestamp: datetime | None = None,
) -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        "1.0",
        payload,
        metadata,
        timestamp or datetime.now(UTC),
        uuid.uuid4(),
    )


async def commit(store, aggregate_id, *events, metadata=None):
    context = await store.load_aggregate(aggregate_id)
    return await store.commit(list(events), context, metadata or {})


# -- input at the boundary -------------------------------------------------------------------


def test_metadata_must_be_a_mapping_of_strings():
    assert validate_input("acc", {"k": "v"}) == {"k": "v"}
    with pytest.raises(TypeError) as raised:
        validate_input("acc", [("k", "v")])
    assert str(raised.value) == "metadata must be a mapping of str to str, not list"
    with pytest.raises(TypeError, match=r"^metadata must map str to str; bad entry 'k': 1$"):
        validate_input("acc", {"k": 1})
    with pytest.raises(ValueError, match=r"^aggregate_id must be a non-empty string"):
        validate_input("", {})


# -- configuration ---------------------------------------------------------------------------


@dataclass
class Base(Aggregate[Any, Any, None]):
    async def handle(self, command: Any, services: None) -> Sequence[Any]:
        return []

    def apply(self, event: Any) -> None:
        pass


def test_an_aggregate_class_without_a_type_or_events_is_a_configuration_error(repository):
    class Untyped(Base):
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

    class Empty(Base):
        aggregate_type: ClassVar[str] = ""
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

    class Numbered(Base):
        aggregate_type: ClassVar[Any] = 7
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

    class Silent(Base):
        aggregate_type: ClassVar[str] = "Silent"

    for cls in (Untyped, Empty, Numbered):
        with pytest.raises(ConfigurationError) as raised:
            PersistedEventStore(repository, cls)
        qualname = cls.__qualname__
        assert str(raised.value) == f"{qualname}.aggregate_type must be a non-empty string"
    with pytest.raises(ConfigurationError, match=r"Silent\.event_classes must list its event"):
        PersistedEventStore(repository, Silent)


def test_an_aggregate_type_over_the_byte_limit_is_refused(repository):
    class Long(Base):
        aggregate_type: ClassVar[str] = "T" * 256
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

    with pytest.raises(ConfigurationError, match=r"Long\.aggregate_type is 256 UTF-8 bytes"):
        PersistedEventStore(repository, Long)


def test_two_event_classes_of_one_name_are_refused_one_class_twice_is_not(repository):
    @dataclass(frozen=True)
    class AccountOpened(DomainEvent):  # the bank's name, another class
        by: str

    class Clash(Base):
        aggregate_type: ClassVar[str] = "Clash"
        event_classes: ClassVar[Sequence[type[object]]] = (OPENED.__class__, AccountOpened)

    class Twice(Base):
        aggregate_type: ClassVar[str] = "Twice"
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened, AccountOpened)

    with pytest.raises(ConfigurationError) as raised:
        PersistedEventStore(repository, Clash)
    assert str(raised.value).endswith("Clash: two event classes are named 'AccountOpened'")
    assert PersistedEventStore(repository, Twice).aggregate_type == "Twice"


def test_snapshots_of_a_state_without_a_schema_are_refused_unless_it_names_its_format(
    repository,
):
    class Opaque(Aggregate[Any, Any, None]):  # not a dataclass: its state has no JSON Schema
        aggregate_type: ClassVar[str] = "Opaque"
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

        async def handle(self, command: Any, services: None) -> Sequence[Any]:
            return []

        def apply(self, event: Any) -> None:
            pass

    PersistedEventStore(repository, Opaque)  # no snapshots: no schema needed
    with pytest.raises(ConfigurationError) as raised:
        PersistedEventStore(repository, Opaque, snapshot_every=2)
    message = str(raised.value)
    assert message.startswith("cannot snapshot ")
    assert (
        "); snapshots need a dataclass, msgspec.Struct or pydantic model of encodable fields, or a "
        in message
    )
    assert message.endswith("Opaque.snapshot_schema naming the format")


# -- the three sources of truth --------------------------------------------------------------


async def test_the_named_constructors_choose_the_source_of_truth(repository):
    events_only = PersistedEventStore.new_event_store(repository, BankAccount)
    snapshots = PersistedEventStore.new_snapshot_store(repository, BankAccount, 3)
    state = PersistedEventStore.new_aggregate_store(repository, BankAccount)
    for store, every in ((events_only, None), (snapshots, 3), (state, 1)):
        assert store.repository is repository
        assert store.aggregate_class is BankAccount
        assert store.snapshot_every == every
    await commit(events_only, "e", OPENED, deposit(1), deposit(2))
    await commit(snapshots, "s", OPENED, deposit(1), deposit(2))
    assert await repository.get_snapshot(TYPE, "e") is None
    snapshot = await repository.get_snapshot(TYPE, "s")
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (3, 1)
    assert (await snapshots.load_aggregate("s")).aggregate == BankAccount(True, D(2))


# -- copies ----------------------------------------------------------------------------------


async def test_with_upcasters_keeps_the_snapshot_setting_and_the_codec(repository):
    codec = MsgspecCodec()
    store = PersistedEventStore(repository, BankAccount, snapshot_every=2, codec=codec)
    upcasting = store.with_upcasters([SemanticVersionEventUpcaster("AccountOpened", "1.0", dict)])
    assert upcasting.codec is codec
    assert upcasting.snapshot_every == 2
    await commit(upcasting, "acc", OPENED, deposit(1))
    snapshot = await repository.get_snapshot(TYPE, "acc")
    assert snapshot is not None
    assert snapshot.last_sequence == 2


# -- reading ---------------------------------------------------------------------------------


async def test_load_events_after_a_sequence_starts_right_after_it(repository):
    store = PersistedEventStore(repository, BankAccount)
    await commit(store, "acc", OPENED, deposit(1), deposit(2))
    assert [e.sequence for e in await store.load_events("acc")] == [1, 2, 3]
    assert [e.sequence for e in await store.load_events("acc", 1)] == [2, 3]
    assert [e.sequence for e in await store.load_events("acc", 3)] == []


async def test_the_global_stream_of_a_store_holds_its_own_aggregate_type_only(repository):
    @dataclass
    class Other(Base):
        aggregate_type: ClassVar[str] = "Other"
        event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)

    bank = PersistedEventStore(repository, BankAccount)
    other = PersistedEventStore(repository, Other)
    await commit(bank, "acc", OPENED)
    await commit(other, "acc", OPENED)
    await commit(bank, "acc2", OPENED)
    assert [(e.aggregate_type, e.aggregate_id) async for e in bank.stream_all_events()] == [
        (TYPE, "acc"),
        (TYPE, "acc2"),
    ]


async def test_a_loaded_envelope_carries_the_stored_timestamp_and_metadata(repository):
    store = PersistedEventStore(repository, BankAccount)
    at = datetime(2020, 5, 6, 7, 8, 9, tzinfo=UTC)
    await repository.persist(
        [
            stored_row(
                1, "AccountOpened", b'{"account_id": "acc"}', metadata=b'{"u": "x"}', timestamp=at
            )
        ],
        None,
    )
    (loaded,) = await store.load_events("acc")
    assert loaded.timestamp == at
    assert loaded.metadata == {"u": "x"}


async def test_metadata_that_does_not_decode_names_the_event(repository):
    store = PersistedEventStore(repository, BankAccount)
    await repository.persist(
        [stored_row(1, "AccountOpened", b'{"account_id": "acc"}', metadata=b'{"u": 1}')], None
    )
    with pytest.raises(DeserializationError) as raised:
        await store.load_events("acc")
    assert str(raised.value).startswith(
        "cannot decode the metadata of event 'AccountOpened' version '1.0' of BankAccount "
        "'acc' at sequence 1: Expected `str`, got `int`"
    )
    assert isinstance(raised.value.__cause__, ValueError)
    # Loading the state needs no metadata, so it still works.
    assert (await store.load_aggregate("acc")).aggregate.opened


async def test_a_payload_that_does_not_decode_names_the_event(repository):
    store = PersistedEventStore(repository, BankAccount)
    await repository.persist([stored_row(1, "AccountOpened", b'{"account_id": 5}')], None)
    with pytest.raises(DeserializationError) as raised:
        await store.load_aggregate("acc")
    assert str(raised.value) == (
        "cannot decode the payload of event 'AccountOpened' version '1.0' of BankAccount "
        "'acc' at sequence 1: Expected `str`, got `int` - at `$.account_id`"
    )


async def test_an_unknown_event_type_lists_the_known_ones(repository):
    store = PersistedEventStore(repository, BankAccount)
    await repository.persist([stored_row(1, "AccountFrozen", b"{}")], None)
    with pytest.raises(DeserializationError) as raised:
        await store.load_events("acc")
    assert str(raised.value) == (
        "cannot decode the payload of event 'AccountFrozen' version '1.0' of BankAccount "
        "'acc' at sequence 1: unknown event type 'AccountFrozen' for BankAccount (known: "
        "AccountOpened, CustomerDepositedMoney, CustomerWithdrewCash, CustomerWroteCheck)"
    )


@dataclass(frozen=True)
class Counted(DomainEvent):
    count: int


@dataclass
class Counter(Base):
    aggregate_type: ClassVar[str] = "Counter"
    event_classes: ClassVar[Sequence[type[object]]] = (Counted,)


async def test_upcasters_of_other_events_do_not_loosen_decoding(repository):
    # "3" is not an int: an error without upcasters, and still one when the store has
    # upcasters that do not apply to this event (only upcast payloads are converted).
    plain = PersistedEventStore(repository, Counter)
    upcasting = plain.with_upcasters([SemanticVersionEventUpcaster("Other", "2.0", dict)])
    await repository.persist(
        [stored_row(1, "Counted", b'{"count": "3"}', aggregate_type="Counter")], None
    )
    for store in (plain, upcasting):
        with pytest.raises(DeserializationError, match="Expected `int`, got `str`"):
            await store.load_events("acc")


async def test_an_upcast_payload_that_is_not_an_object_names_the_event(repository):
    upcaster = SemanticVersionEventUpcaster("AccountOpened", "2.0", dict)
    store = PersistedEventStore(repository, BankAccount).with_upcasters([upcaster])
    await repository.persist([stored_row(1, "AccountOpened", b'["acc"]')], None)
    with pytest.raises(DeserializationError) as raised:
        await store.load_events("acc")
    assert str(raised.value).endswith("at sequence 1: payload is not a JSON object")
    assert isinstance(raised.value.__cause__, TypeError)


class Noted(pydantic.BaseModel, DomainEvent):
    count: int


@dataclass
class Notes(Base):
    aggregate_type: ClassVar[str] = "Notes"
    event_classes: ClassVar[Sequence[type[object]]] = (Noted,)


async def test_a_pydantic_event_that_does_not_validate_names_the_event(repository):
    store = PersistedEventStore(repository, Notes)
    await repository.persist(
        [stored_row(1, "Noted", b'{"count": "many"}', aggregate_type="Notes")], None
    )
    with pytest.raises(DeserializationError) as raised:
        await store.load_events("acc")
    message = str(raised.value)
    assert message.startswith(
        "cannot decode the payload of event 'Noted' version '1.0' of Notes 'acc' at sequence 1: "
    )
    assert "validation error for Noted" in message


# -- snapshots that are not used -------------------------------------------------------------


async def plant_snapshot(repository, payload: bytes) -> PersistedEventStore[Any, Any, Any]:
    store = PersistedEventStore(repository, BankAccount, snapshot_every=10)
    await commit(store, "acc", OPENED, deposit(4))
    await repository.persist(
        [stored_row(3, "CustomerDepositedMoney", b'{"amount": "1", "balance": "5"}')],
        SerializedSnapshot(TYPE, "acc", payload, 2, 1),
    )
    return store


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"opened": true}', "it carries no schema fingerprint (written by an older version?): "),
        (
            b'{"schema": "0123456789abcdefXYZ", "state": {}}',
            "it was written for another state schema ('0123456789abcdef', now 'FP16')",
        ),
        (
            b'{"schema": "FINGERPRINT", "state": {"opened": 3}}',
            "it does not decode: Expected `bool`",
        ),
    ],
)
async def test_an_unused_snapshot_is_logged_with_the_reason(repository, caplog, payload, reason):
    fingerprint = schema_fingerprint(BankAccount)
    payload = payload.replace(b"FINGERPRINT", fingerprint.encode())
    reason = reason.replace("FP16", fingerprint[:16])
    store = await plant_snapshot(repository, payload)
    with caplog.at_level(logging.WARNING, logger="cqrs.store"):
        context = await store.load_aggregate("acc")
    assert context.aggregate == BankAccount(opened=True, balance=D(5))
    assert context.replace_snapshot
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"snapshot of BankAccount 'acc' at sequence 2 is not used, replaying events: {reason}"
    )


async def test_a_replaced_snapshot_is_written_once_then_again_only_when_due(repository):
    store = await plant_snapshot(repository, b"{}")
    context = await store.load_aggregate("acc")
    assert context.replace_snapshot
    await store.commit([deposit(6)], context, {})  # sequence 4: replaces the bad snapshot
    assert not context.replace_snapshot
    assert (context.snapshot_version, context.version) == (2, 4)
    await store.commit([deposit(7)], context, {})  # sequence 5: not due
    snapshot = await repository.get_snapshot(TYPE, "acc")
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (4, 2)


async def test_one_context_takes_several_snapshotted_commits(repository):
    store = PersistedEventStore.new_aggregate_store(repository, BankAccount)
    context = await store.load_aggregate("acc")
    for events in ([OPENED], [deposit(1)], [deposit(2), deposit(3)]):
        await store.commit(events, context, {})
    snapshot = await repository.get_snapshot(TYPE, "acc")
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (4, 3)
    assert context.snapshot_version == 3
    assert (await store.load_aggregate("acc")).aggregate == BankAccount(True, D(3))


@dataclass
class Bag(Base):
    aggregate_type: ClassVar[str] = "Bag"
    event_classes: ClassVar[Sequence[type[object]]] = (AccountOpened,)
    snapshot_schema: ClassVar[str | None] = "bag-1"
    content: object = None

    def apply(self, event: Any) -> None:
        self.content = object()  # no codec encodes this


async def test_a_state_the_codec_cannot_encode_is_an_unexpected_error_at_snapshot(repository):
    store = PersistedEventStore.new_aggregate_store(repository, Bag)
    with pytest.raises(UnexpectedError) as raised:
        await commit(store, "b", OPENED)
    message = str(raised.value)
    assert message.startswith("cannot snapshot ")
    assert "Bag: cannot encode an object of type object; snapshots need an encodable " in message
    assert message.endswith("(a dataclass or msgspec.Struct)")
    assert isinstance(raised.value.__cause__, TypeError)
    assert await repository.get_events("Bag", "b") == []


# -- writing ---------------------------------------------------------------------------------


async def test_committed_envelopes_carry_the_type_a_utc_commit_time_and_a_copy_of_metadata(
    repository,
):
    store = PersistedEventStore(repository, BankAccount)
    metadata = {"user": "alice"}
    before = datetime.now(UTC)
    envelopes = await commit(store, "acc", OPENED, deposit(3), metadata=metadata)
    after = datetime.now(UTC)
    metadata["user"] = "mallory"
    assert [e.aggregate_type for e in envelopes] == [TYPE, TYPE]
    assert [e.metadata for e in envelopes] == [{"user": "alice"}, {"user": "alice"}]
    assert envelopes[0].timestamp == envelopes[1].timestamp
    assert envelopes[0].timestamp.utcoffset() == timedelta(0)
    assert before <= envelopes[0].timestamp <= after
    loaded = await store.load_events("acc")
    assert [(e.timestamp, e.metadata) for e in loaded] == [
        (e.timestamp, e.metadata) for e in envelopes
    ]
    assert loaded == envelopes


@dataclass(frozen=True)
class Strange(DomainEvent):
    thing: object


@dataclass
class Odd(Base):
    aggregate_type: ClassVar[str] = "Odd"
    event_classes: ClassVar[Sequence[type[object]]] = (Strange,)


async def test_an_event_the_codec_cannot_encode_is_an_unexpected_error_naming_it(repository):
    store = PersistedEventStore(repository, Odd)
    with pytest.raises(UnexpectedError) as raised:
        await commit(store, "o", Strange(object()))
    assert str(raised.value) == (
        "cannot encode event 'Strange': cannot encode an object of type object"
    )
    assert isinstance(raised.value.__cause__, TypeError)


class MiscountingRepository(MemoryEventRepository):
    async def persist(self, events, snapshot):
        return (await super().persist(events, snapshot))[:-1]


async def test_a_repository_returning_too_few_positions_is_an_error_not_lost_envelopes():
    async with MiscountingRepository() as repository:
        store = PersistedEventStore(repository, BankAccount)
        with pytest.raises(ValueError, match="zip"):
            await commit(store, "acc", OPENED, deposit(1))


async def test_withdrawals_round_trip_through_the_store(repository):
    store = PersistedEventStore(repository, BankAccount)
    envelopes = await commit(store, "acc", OPENED, deposit(9), CustomerWithdrewCash(D(4), D(5)))
    assert [e.payload for e in await store.load_events("acc")] == [e.payload for e in envelopes]


# -- subscribing -----------------------------------------------------------------------------


class EventsOnly:
    """A repository that can only stream (no pushed wake-ups): subscriptions poll it. The
    reads numbered in ``down`` (1-based) fail as if the database were unreachable."""

    def __init__(self, repository: MemoryEventRepository, down: Sequence[int] = ()) -> None:
        self.inner = repository
        self.down = set(down)
        self.reads: list[str | None] = []

    def stream_all_events(self, aggregate_type, after_position=None):
        self.reads.append(aggregate_type)
        if len(self.reads) in self.down:
            return self._unreachable()
        return self.inner.stream_all_events(aggregate_type, after_position)

    async def _unreachable(self) -> AsyncIterator[SerializedEvent]:
        raise DatabaseConnectionError("db down")
        yield  # an async generator, like a real stream


async def test_subscribe_starts_after_the_position_and_polls_every_second(repository, monkeypatch):
    writer = PersistedEventStore(repository, BankAccount)
    first, *_ = await commit(writer, "acc", OPENED, deposit(1), deposit(2))
    reader = PersistedEventStore(EventsOnly(repository), BankAccount)  # type: ignore[arg-type]
    polls: list[float] = []

    async def sleep(seconds: float) -> None:  # the poll: a commit arrives meanwhile
        polls.append(seconds)
        await commit(writer, "acc", deposit(3))

    monkeypatch.setattr(cqrs.subscription, "asyncio", SimpleNamespace(sleep=sleep))
    seen = []
    async for envelope in reader.subscribe(after_position=first.position):
        seen.append(envelope.payload)
        if len(seen) == 3:
            break
    assert seen == [deposit(1), deposit(2), deposit(3)]
    assert polls == [1.0]
    polls.clear()
    async for envelope in reader.subscribe(poll_interval=0.25):
        if envelope.sequence == 5:
            break
    assert polls == [0.25]


async def test_a_subscription_survives_a_lost_database_and_says_so(repository, monkeypatch, caplog):
    writer = PersistedEventStore(repository, BankAccount)
    await commit(writer, "acc", OPENED)
    source = EventsOnly(repository, down=(1, 2, 5, 7))
    reader = PersistedEventStore(source, BankAccount)  # type: ignore[arg-type]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if waits.count(1.0) == 2:  # the second poll: a commit arrives meanwhile
            await commit(writer, "acc", deposit(1))

    monkeypatch.setattr(cqrs.subscription, "asyncio", SimpleNamespace(sleep=sleep))
    seen = []
    with caplog.at_level(logging.INFO, logger="cqrs.subscription"):
        async for envelope in reader.subscribe():
            seen.append(envelope.payload)
            if len(seen) == 2:
                break
    assert seen == [OPENED, deposit(1)]
    # Reads: down, down, the event, nothing (poll), down, nothing (poll), down, the deposit.
    assert waits == [0.1, 0.2, 1.0, 0.1, 1.0, 0.1]
    assert source.reads == [TYPE] * 8  # only this store's aggregate type is read
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "subscription after position 0 lost its database (db down); retrying in 0.10 s",
        ),
        (
            "WARNING",
            "subscription after position 0 lost its database (db down); retrying in 0.20 s",
        ),
        ("INFO", "subscription reconnected at position 0"),
        (
            "WARNING",
            "subscription after position 1 lost its database (db down); retrying in 0.10 s",
        ),
        ("INFO", "subscription reconnected at position 1"),
        (
            "WARNING",
            "subscription after position 1 lost its database (db down); retrying in 0.10 s",
        ),
        ("INFO", "subscription reconnected at position 1"),
    ]


async def test_a_subscription_retries_a_lost_database_at_most_every_five_seconds(
    repository, monkeypatch
):
    await commit(PersistedEventStore(repository, BankAccount), "acc", OPENED)
    reader = PersistedEventStore(EventsOnly(repository, down=range(1, 9)), BankAccount)  # type: ignore[arg-type]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(cqrs.subscription, "asyncio", SimpleNamespace(sleep=sleep))
    async for envelope in reader.subscribe():
        assert envelope.payload == OPENED
        break
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
