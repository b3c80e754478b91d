"""Tagged payloads: a stream a cqrs-es (Rust) service wrote, with serde's externally tagged
enum payloads, is loaded and extended by a Python aggregate through TaggedCodec, and what
Python writes has the shape a Rust service reads back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

import msgspec
import pydantic
import pytest

from cqrs import (
    Aggregate,
    ConfigurationError,
    CqrsFramework,
    DeserializationError,
    DomainEvent,
    PersistedEventStore,
    SemanticVersionEventUpcaster,
    SerializedEvent,
    TaggedCodec,
    default_codec,
)
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    WithdrawMoney,
)

CODEC = TaggedCodec.for_aggregate(BankAccount)


def rust_row(aggregate_id: str, sequence: int, event_type: str, payload: str) -> SerializedEvent:
    """An event as a cqrs-es service stores it: serde's JSON of its enum variant."""
    return SerializedEvent(
        "BankAccount",
        aggregate_id,
        sequence,
        event_type,
        "1.0",
        payload,
        "{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


RUST_STREAM = [
    rust_row("acc", 1, "AccountOpened", '{"AccountOpened":{"account_id":"acc"}}'),
    rust_row(
        "acc",
        2,
        "CustomerDepositedMoney",
        '{"CustomerDepositedMoney": {"amount": "200", "balance": "200"}}',
    ),
    rust_row(
        "acc",
        3,
        "CustomerWithdrewCash",
        '{"CustomerWithdrewCash":{"amount":"50","balance":"150","atm_id":"atm-1"}}',
    ),
]


async def rust_repository() -> MemoryEventRepository:
    repository = MemoryEventRepository()
    await repository.open()
    await repository.persist(RUST_STREAM, None)
    return repository


def test_events_are_written_as_externally_tagged_variants():
    event = CustomerDepositedMoney(Decimal(10), Decimal(30))
    assert json.loads(CODEC.encode(event)) == {
        "CustomerDepositedMoney": {"amount": "10", "balance": "30"}
    }
    assert CODEC.decode(CODEC.encode(event), CustomerDepositedMoney) == event
    # Everything that is no event is written as the inner codec writes it.
    assert CODEC.encode(BankAccount(opened=True)) == default_codec.encode(BankAccount(opened=True))
    assert CODEC.encode({"k": "v"}) == b'{"k":"v"}'
    assert CODEC.decode_metadata(b'{"k":"v"}') == {"k": "v"}


async def test_a_python_aggregate_loads_and_extends_a_stream_a_rust_service_wrote():
    repository = await rust_repository()
    store = PersistedEventStore(repository, BankAccount, codec=CODEC)
    loaded = await store.load_aggregate("acc")
    assert loaded.aggregate == BankAccount(opened=True, balance=Decimal(150))
    assert loaded.version == 3
    framework = CqrsFramework(store, (), BankAccountServices())
    await framework.execute("acc", DepositMoney(Decimal(25)))
    await framework.execute("acc", WithdrawMoney(Decimal(5), "ATM-2"))
    rows = await repository.get_events("BankAccount", "acc")
    assert [json.loads(row.payload) for row in rows[3:]] == [
        {"CustomerDepositedMoney": {"amount": "25", "balance": "175"}},
        {"CustomerWithdrewCash": {"amount": "5", "balance": "170", "atm_id": "ATM-2"}},
    ]
    assert [row.event_type for row in rows[3:]] == [
        "CustomerDepositedMoney",
        "CustomerWithdrewCash",
    ]
    assert (await store.load_aggregate("acc")).aggregate.balance == Decimal(170)


async def test_what_python_writes_reads_as_serde_reads_an_externally_tagged_enum():
    repository = MemoryEventRepository()
    await repository.open()
    store = PersistedEventStore(repository, BankAccount, codec=CODEC)
    framework = CqrsFramework(store, (), BankAccountServices())
    await framework.execute("p", OpenAccountLike("p"))
    await framework.execute("p", DepositMoney(Decimal("12.5")))
    for row in await repository.get_events("BankAccount", "p"):
        variant = json.loads(row.payload)
        # serde: an object with exactly one key, the variant, around the variant's fields.
        assert isinstance(variant, dict)
        assert list(variant) == [row.event_type]
        assert isinstance(variant[row.event_type], dict)
    plain = PersistedEventStore(repository, BankAccount)  # the untagged default cannot
    with pytest.raises(DeserializationError, match="'p' at sequence 1"):
        await plain.load_aggregate("p")


def OpenAccountLike(account_id: str):  # noqa: N802 - reads like the command it builds
    from examples.bank_account.domain import OpenAccount  # noqa: PLC0415

    return OpenAccount(account_id)


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        ('{"amount": "1", "balance": "1"}', "'amount', 'balance'"),  # not tagged
        ('{"AccountOpened": {"account_id": "x"}}', "'AccountOpened'"),  # another variant
        ('"CustomerWithdrewCash"', "'CustomerWithdrewCash'"),
        ("[1, 2]", None),
    ],
)
async def test_a_payload_tagged_otherwise_names_the_event_and_the_tags(payload, found):
    repository = MemoryEventRepository()
    await repository.open()
    await repository.persist([rust_row("bad", 1, "CustomerDepositedMoney", payload)], None)
    store = PersistedEventStore(repository, BankAccount, codec=CODEC)
    with pytest.raises(DeserializationError) as raised:
        await store.load_aggregate("bad")
    message = str(raised.value)
    assert "'bad' at sequence 1" in message
    assert "CustomerDepositedMoney" in message
    if found is not None:
        assert f"found {found}" in message


# -- unit variants, pydantic, upcasting, tags ---------------------------------------------------


@dataclass(frozen=True)
class Opened(DomainEvent):
    owner: str


@dataclass(frozen=True)
class Closed(DomainEvent):
    """A variant without fields: serde writes the bare name."""


class Renamed(pydantic.BaseModel, frozen=True):
    event_type: ClassVar[str] = "Renamed"
    name: str


@dataclass
class Door(Aggregate[str, Opened | Closed | Renamed, None]):
    aggregate_type: ClassVar[str] = "Door"
    event_classes: ClassVar[Sequence[type[object]]] = (Opened, Closed, Renamed)
    owner: str = ""
    closed: bool = False

    async def handle(self, command: str, services: None) -> Sequence[Opened | Closed | Renamed]:
        if command == "close":
            return [Closed()]
        if command.startswith("rename "):
            return [Renamed(name=command.removeprefix("rename "))]
        return [Opened(command)]

    def apply(self, event: Opened | Closed | Renamed) -> None:
        if isinstance(event, Opened):
            self.owner = event.owner
        elif isinstance(event, Renamed):
            self.owner = event.name
        else:
            self.closed = True


async def test_unit_variants_and_pydantic_events_round_trip_in_serde_shape():
    codec = TaggedCodec.for_aggregate(Door)
    assert codec.encode(Closed()) == b'"Closed"'
    assert codec.decode(b'"Closed"', Closed) == Closed()
    assert codec.decode(b'{"Closed": {}}', Closed) == Closed()  # written as a struct variant
    assert codec.decode(b'{"Closed": null}', Closed) == Closed()
    assert json.loads(codec.encode(Renamed(name="x"))) == {"Renamed": {"name": "x"}}
    repository = MemoryEventRepository()
    await repository.open()
    store = PersistedEventStore(repository, Door, codec=codec, snapshot_every=2)
    framework = CqrsFramework(store, ())
    for command in ("ann", "rename bob", "close"):
        await framework.execute("d", command)
    rows = await repository.get_events("Door", "d")
    assert [msgspec.json.decode(row.payload) for row in rows] == [
        {"Opened": {"owner": "ann"}},
        {"Renamed": {"name": "bob"}},
        "Closed",
    ]
    snapshot = await repository.get_snapshot("Door", "d")
    assert snapshot is not None
    assert msgspec.json.decode(snapshot.payload)["state"] == {"owner": "bob", "closed": False}
    assert (await store.load_aggregate("d")).aggregate == Door(owner="bob", closed=True)


async def test_upcasters_see_and_return_the_tagged_form():
    repository = MemoryEventRepository()
    await repository.open()
    await repository.persist(
        [
            SerializedEvent(
                "Door",
                "d",
                1,
                "Opened",
                "0.9",
                '{"Opened": {"who": "ann"}}',
                "{}",
                datetime.now(UTC),
                uuid.uuid4(),
            )
        ],
        None,
    )
    seen: list[object] = []

    def rename_field(payload):
        seen.append(payload)
        return {"Opened": {"owner": payload["Opened"]["who"]}}

    store = PersistedEventStore(
        repository,
        Door,
        codec=TaggedCodec.for_aggregate(Door),
        upcasters=[SemanticVersionEventUpcaster("Opened", "1.0", rename_field)],
    )
    assert (await store.load_aggregate("d")).aggregate.owner == "ann"
    assert seen == [{"Opened": {"who": "ann"}}]

    def untag(payload):
        return {"owner": "x"}

    broken = store.with_upcasters([SemanticVersionEventUpcaster("Opened", "1.0", untag)])
    with pytest.raises(DeserializationError, match="found 'owner'"):
        await broken.load_aggregate("d")


def test_tags_can_differ_from_event_types_and_must_be_one_per_class():
    codec = TaggedCodec([Opened, Closed], tags={Opened: "DoorOpened"})
    assert codec.encode(Opened("a")) == b'{"DoorOpened":{"owner":"a"}}'
    assert codec.decode(b'{"DoorOpened":{"owner":"a"}}', Opened) == Opened("a")
    with pytest.raises(ConfigurationError, match="both tagged 'Closed'"):
        TaggedCodec([Opened, Closed], tags={Opened: "Closed"})
    with pytest.raises(ConfigurationError, match="not among the event classes: Renamed"):
        TaggedCodec([Opened], tags={Renamed: "R"})
    with pytest.raises(ConfigurationError, match="non-empty string"):
        TaggedCodec([Opened], tags={Opened: ""})
    with pytest.raises(ConfigurationError, match="event_classes"):
        TaggedCodec.for_aggregate(dict)


def test_rust_stream_fixture_is_serde_shaped():
    for row in RUST_STREAM:
        assert list(json.loads(row.payload)) == [row.event_type]
    assert {AccountOpened, CustomerDepositedMoney, CustomerWithdrewCash} <= set(CODEC.tags)


async def test_streams_and_batch_decoding_read_the_tagged_events_too():
    repository = await rust_repository()
    store = PersistedEventStore(repository, BankAccount, codec=CODEC)
    framework = CqrsFramework(store, (), BankAccountServices())
    await framework.execute("acc", DepositMoney(Decimal(1)))
    streamed = [envelope.payload async for envelope in store.stream_all_events()]
    rows = await repository.get_events("BankAccount", "acc")
    batch = [envelope.payload for envelope in store.decode_all(rows)]
    expected = [
        AccountOpened("acc"),
        CustomerDepositedMoney(Decimal(200), Decimal(200)),
        CustomerWithdrewCash(Decimal(50), Decimal(150), "atm-1"),
        CustomerDepositedMoney(Decimal(1), Decimal(151)),
    ]
    assert streamed == expected
    assert batch == expected
