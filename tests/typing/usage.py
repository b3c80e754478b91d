"""A user's typed program over the public API: checked by ``mypy --strict``, never run.

It is in ``[tool.mypy] files`` (strict, like the package), so ``nox -s typecheck`` fails if a
public signature loses its types. ``assert_type`` pins what a user's editor must see (their
own aggregate class back from a load, the framework's parameters, envelope payloads), and
each ``# type: ignore[...]`` marks a call that must stay an error: with
``warn_unused_ignores`` (strict), a call that starts to type-check fails the check too.
Servers are named freely: nothing here runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, TypeVar, assert_type

import pydantic

import cqrs
import cqrs_memory
import cqrs_mongodb
import cqrs_postgres
import cqrs_sqlite
from cqrs import (
    Aggregate,
    AggregateClass,
    AggregateConflict,
    AggregateContext,
    CqrsFramework,
    DatabaseConnectionError,
    DeserializationError,
    DomainError,
    DomainEvent,
    EventEnvelope,
    EventStore,
    EventUpcaster,
    GenericQuery,
    PersistedEventRepository,
    PersistedEventStore,
    QueryFailure,
    QueryReplay,
    RawEvent,
    Retry,
    SemanticVersionEventUpcaster,
    TestFramework,
    UnexpectedError,
    UserError,
    ViewRepository,
)
from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs
from cqrs_memory import MemoryDatabase, MemoryEventRepository, MemoryViewRepository
from cqrs_mongodb import MongoEventRepository, MongoViewRepository
from cqrs_postgres import PostgresEventRepository, PostgresViewRepository, default_postgres_pool
from cqrs_sqlite import SqliteEventRepository, SqliteViewRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountCommand,
    BankAccountEvent,
    BankAccountServices,
    BankAccountView,
    DepositMoney,
    OpenAccount,
)

# -- the README's domain: one command type, one event type, no services ----------------------


@dataclass(frozen=True)
class Deposited(DomainEvent):
    amount: int


@dataclass
class Account(Aggregate[int, Deposited, None]):
    aggregate_type: ClassVar[str] = "Account"
    event_classes: ClassVar[tuple[type, ...]] = (Deposited,)
    balance: int = 0

    async def handle(self, command: int, services: None) -> list[Deposited]:
        if command <= 0:
            raise DomainError("deposit a positive amount")
        return [Deposited(command)]

    def apply(self, event: Deposited) -> None:
        self.balance += event.amount


# -- a union of events, a handler that returns one member, services, a pydantic event -------


class Renamed(pydantic.BaseModel):
    name: str


@dataclass(frozen=True)
class Tagged:
    tag: str


@dataclass(frozen=True)
class Rename:
    name: str


class Clock:
    def now(self) -> str:
        return "now"


Event = Renamed | Tagged


@dataclass
class Profile(Aggregate[Rename, Event, Clock]):
    aggregate_type: ClassVar[str] = "Profile"
    event_classes: ClassVar[tuple[type, ...]] = (Renamed, Tagged)
    name: str = ""
    tags: tuple[str, ...] = ()

    async def handle(self, command: Rename, services: Clock) -> list[Renamed]:
        return [Renamed(name=f"{command.name} at {services.now()}")]

    def apply(self, event: Event) -> None:
        if isinstance(event, Renamed):
            self.name = event.name
        else:
            self.tags = (*self.tags, event.tag)


# -- the read side ---------------------------------------------------------------------------


@dataclass
class Total:
    amount: int = 0

    def update(self, event: EventEnvelope[Deposited]) -> None:
        self.amount += event.payload.amount


class Audit:
    """A query over Account's events."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def dispatch(self, aggregate_id: str, events: Sequence[EventEnvelope[Deposited]]) -> None:
        self.seen.extend(envelope.payload.amount for envelope in events)


def report(failure: QueryFailure[Deposited]) -> None:
    assert_type(failure.events[0].payload, Deposited)
    assert_type(failure.error, Exception)


def rename_v1(payload: dict[str, object]) -> dict[str, object]:
    return {"name": payload.get("old_name", "")}


UPCASTERS: list[EventUpcaster] = [SemanticVersionEventUpcaster("Renamed", "2.0", rename_v1)]


class DropTags:
    """A hand-written upcaster (the protocol, not the helper class)."""

    def can_upcast(self, event_type: str, event_version: str) -> bool:
        return event_type == "Tagged" and event_version == "0.1"

    def upcast(self, event: RawEvent) -> RawEvent:
        return RawEvent(event.event_type, "1.0", {"tag": str(event.payload.get("tag"))})


# -- the core --------------------------------------------------------------------------------


async def core(repository: PersistedEventRepository) -> None:
    store = PersistedEventStore(repository, Account)
    assert_type(store, PersistedEventStore[Account, int, Deposited, None])
    context = await store.load_aggregate("acc-1")
    assert_type(context, AggregateContext[Account])
    assert_type(context.aggregate, Account)
    assert_type(context.aggregate.balance, int)
    assert_type((await store.load_aggregate("acc-1")).aggregate.balance, int)
    assert_type(store.new_aggregate("acc-2"), Account)
    assert_type(store.aggregate_class, type[Account])
    envelopes = await store.commit([Deposited(1)], context, {"user": "u1"})
    assert_type(envelopes, list[EventEnvelope[Deposited]])
    await store.commit([Tagged("x")], context, {})  # type: ignore[list-item]
    assert_type((await store.load_events("acc-1"))[0].payload, Deposited)
    async for envelope in store.stream_events("acc-1"):
        assert_type(envelope.payload, Deposited)
    async for envelope in store.stream_all_events(after_position=10):
        assert_type(envelope.position, int)

    snapshots = PersistedEventStore.new_snapshot_store(repository, Account, 100)
    assert_type(snapshots, PersistedEventStore[Account, int, Deposited, None])
    state = PersistedEventStore.new_aggregate_store(repository, Account)
    assert_type(state, PersistedEventStore[Account, int, Deposited, None])
    events_only = PersistedEventStore.new_event_store(repository, Account).with_upcasters([])
    assert_type(events_only, PersistedEventStore[Account, int, Deposited, None])

    audit = Audit()
    app = CqrsFramework(store, [audit], retry=Retry(attempts=3), on_query_error=report)
    assert_type(app, CqrsFramework[int, Deposited, None])
    committed = await app.execute("acc-1", 100, expected_version=1)
    assert_type(committed[0].payload, Deposited)
    await app.execute_with_metadata("acc-1", 50, {"user": "u1"})
    await app.execute("acc-1", "fifty")  # type: ignore[arg-type]
    as_protocol: EventStore[int, Deposited, None] = store
    assert_type(CqrsFramework(as_protocol), CqrsFramework[int, Deposited, None])

    built = cqrs.new_framework(repository, Account, [audit], snapshot_every=10, upcasters=[])
    assert_type(built, CqrsFramework[int, Deposited, None])
    assert_type(event_store_cqrs(repository, Account), CqrsFramework[int, Deposited, None])
    assert_type(snapshot_cqrs(repository, Account, [], 5), CqrsFramework[int, Deposited, None])
    assert_type(aggregate_cqrs(repository, Account), CqrsFramework[int, Deposited, None])
    await built.execute("acc-1", Deposited(1))  # type: ignore[arg-type]

    account_class: AggregateClass[Account, int, Deposited, None] = Account
    assert_type(account_class(), Account)

    try:
        await app.execute("acc-1", -1)
    except UserError as refused:
        assert_type(refused.error, Exception)
    except (AggregateConflict, DatabaseConnectionError, DeserializationError, UnexpectedError):
        raise


async def union_and_pydantic(repository: PersistedEventRepository) -> None:
    store = PersistedEventStore(repository, Profile, upcasters=[*UPCASTERS, DropTags()])
    assert_type(store, PersistedEventStore[Profile, Rename, Renamed | Tagged, Clock])
    app = CqrsFramework(store, services=Clock())
    assert_type(app, CqrsFramework[Rename, Renamed | Tagged, Clock])
    envelopes = await app.execute("p-1", Rename("Ada"))
    assert_type(envelopes[0].payload, Renamed | Tagged)
    assert_type((await store.load_aggregate("p-1")).aggregate.tags, tuple[str, ...])
    CqrsFramework(store, services="not a clock")  # type: ignore[misc]


async def read_side(repository: PersistedEventRepository) -> None:
    store = PersistedEventStore(repository, Account)
    views = repository.view_repository(Total, "totals")
    assert_type(views, ViewRepository[Total])
    query = GenericQuery(views, Total, store=store)
    assert_type(query, GenericQuery[Total])
    assert_type(await query.load("acc-1"), Total | None)
    loaded = await views.load_with_context("acc-1")
    if loaded is not None:
        view, view_context = loaded
        await views.update_view(view, view_context)
    app = CqrsFramework(store, [query, Audit()])
    assert_type(app, CqrsFramework[int, Deposited, None])
    replay = QueryReplay(store, query, batch_size=100)
    assert_type(replay, QueryReplay[int, Deposited, None])
    assert_type(await replay.replay_all(), int)


async def given_when_then() -> None:
    account = TestFramework(Account)
    assert_type(account, TestFramework[Account])
    result = await account.given([Deposited(5)]).and_([Deposited(6)]).when(10)
    result.then_expect_events([Deposited(10)])
    result.then_expect_events_matching([Deposited, lambda event: event.amount == 10])
    result.then_expect_state(lambda state: state.balance == 21)
    assert_type(result.aggregate, Account)
    refused = await TestFramework(Account).given_no_previous_events().when(-1)
    refused.then_expect_error(DomainError)
    refused.then_expect_error_message("deposit a positive amount")
    assert_type(refused.inspect_result(), list[object] | Exception)


# -- the bank-account example ----------------------------------------------------------------


async def bank(repository: PersistedEventRepository) -> None:
    store = PersistedEventStore(repository, BankAccount, snapshot_every=20)
    assert_type(
        store,
        PersistedEventStore[BankAccount, BankAccountCommand, BankAccountEvent, BankAccountServices],
    )
    app = CqrsFramework(store, services=BankAccountServices())
    assert_type(app, CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices])
    await app.execute("A1", OpenAccount("A1"))
    await app.execute("A1", DepositMoney(Decimal(10)))
    assert_type((await store.load_aggregate("A1")).aggregate.balance, Decimal)
    await app.execute("A1", Decimal(10))  # type: ignore[arg-type]
    bank_test = TestFramework(BankAccount, BankAccountServices(), aggregate_id="A1")
    assert_type(bank_test, TestFramework[BankAccount])
    views = repository.view_repository(BankAccountView, "bank_views")
    assert_type(GenericQuery(views, BankAccountView), GenericQuery[BankAccountView])


# -- aggregate classes held in variables and generic helpers ---------------------------------

A = TypeVar("A", bound=Aggregate[Any, Any, Any])
C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


def store_for(
    repository: PersistedEventRepository, aggregate_class: AggregateClass[A, C, E, S]
) -> PersistedEventStore[A, C, E, S]:
    return PersistedEventStore(repository, aggregate_class, snapshot_every=10)


def any_store(
    repository: PersistedEventRepository, aggregate_class: type[Aggregate[C, E, S]]
) -> PersistedEventStore[Aggregate[C, E, S], C, E, S]:
    return PersistedEventStore(repository, aggregate_class)


async def held(repository: PersistedEventRepository, account_class: type[Account]) -> None:
    assert_type(
        PersistedEventStore(repository, account_class),
        PersistedEventStore[Account, int, Deposited, None],
    )
    assert_type(store_for(repository, Profile), PersistedEventStore[Profile, Rename, Event, Clock])
    assert_type(
        any_store(repository, Account),
        PersistedEventStore[Aggregate[int, Deposited, None], int, Deposited, None],
    )
    assert_type(CqrsFramework(any_store(repository, Account)), CqrsFramework[int, Deposited, None])
    registry: dict[str, type[Aggregate[Any, Any, Any]]] = {"Account": Account}
    assert_type(cqrs.new_framework(repository, registry["Account"]), CqrsFramework[Any, Any, Any])
    PersistedEventStore(repository, int)  # type: ignore[arg-type, type-var]
    PersistedEventStore(repository, Aggregate)  # type: ignore[arg-type]
    PersistedEventStore(repository, NeedsArguments)  # type: ignore[arg-type]


class Savings(Account):
    """A subclass: loading gives back the subclass."""

    rate: int = 2


class Lenient(Aggregate[int, Deposited, None]):
    """Wider handle and apply than the base: the base's parameters still count."""

    aggregate_type: ClassVar[str] = "Lenient"
    event_classes: ClassVar[tuple[type, ...]] = (Deposited,)

    async def handle(self, command: object, services: object) -> list[Deposited]:
        return []

    def apply(self, event: object) -> None:
        pass


class NeedsArguments(Account):
    def __init__(self, balance: int) -> None:
        self.balance = balance


async def subclasses(repository: PersistedEventRepository, savings: type[Savings]) -> None:
    store = PersistedEventStore(repository, Savings)
    assert_type(store, PersistedEventStore[Savings, int, Deposited, None])
    assert_type((await store.load_aggregate("s-1")).aggregate.rate, int)
    assert_type(PersistedEventStore(repository, savings).new_aggregate("s-2"), Savings)
    lenient = PersistedEventStore(repository, Lenient)
    assert_type(lenient, PersistedEventStore[Lenient, int, Deposited, None])
    assert_type(CqrsFramework(lenient), CqrsFramework[int, Deposited, None])
    nested = CqrsFramework(PersistedEventStore(repository, Savings), [Audit()])
    assert_type(nested, CqrsFramework[int, Deposited, None])


# -- the four backends -----------------------------------------------------------------------


async def backends() -> None:
    async with cqrs.connect("memory://") as connected:
        assert_type(connected, PersistedEventRepository)
    repository = await cqrs.connect("sqlite:///bank.db", create_schema=False)
    await repository.close()

    memory = MemoryEventRepository("events", "snapshots", database=MemoryDatabase())
    assert_type(cqrs_memory.from_url("memory://"), MemoryEventRepository)
    assert_type(memory.view_repository(Total, "totals"), MemoryViewRepository[Total])
    assert_type(memory.with_tables("e2", "s2"), MemoryEventRepository)
    assert_type(cqrs_memory.memory_cqrs(memory, Account), CqrsFramework[int, Deposited, None])
    assert_type(
        cqrs_memory.memory_snapshot_cqrs(memory, Account, [], 10),
        CqrsFramework[int, Deposited, None],
    )
    assert_type(
        cqrs_memory.memory_aggregate_cqrs(memory, Profile, services=Clock()),
        CqrsFramework[Rename, Renamed | Tagged, Clock],
    )

    async with SqliteEventRepository("bank.db", page_size=100) as sqlite:
        assert_type(sqlite, SqliteEventRepository)
        assert_type(cqrs_sqlite.from_url("sqlite:///bank.db"), SqliteEventRepository)
        assert_type(sqlite.view_repository(Total, "totals"), SqliteViewRepository[Total])
        assert_type(SqliteViewRepository(Total, "totals", sqlite), SqliteViewRepository[Total])
        assert_type(cqrs_sqlite.sqlite_cqrs(sqlite, Account), CqrsFramework[int, Deposited, None])
        assert_type(
            cqrs_sqlite.sqlite_snapshot_cqrs(sqlite, Account, [Audit()], 10),
            CqrsFramework[int, Deposited, None],
        )
        assert_type(
            cqrs_sqlite.sqlite_aggregate_cqrs(sqlite, BankAccount),
            CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices],
        )

    pool = await default_postgres_pool("postgresql://postgres@127.0.0.1/postgres", max_size=4)
    postgres = PostgresEventRepository(pool, "events", "snapshots")
    assert_type(cqrs_postgres.from_url("postgresql://localhost/db"), PostgresEventRepository)
    assert_type(postgres.view_repository(Total, "totals"), PostgresViewRepository[Total])
    assert_type(PostgresViewRepository(Total, "totals", pool), PostgresViewRepository[Total])
    assert_type(
        cqrs_postgres.postgres_cqrs(postgres, Account, retry=Retry()),
        CqrsFramework[int, Deposited, None],
    )
    assert_type(
        cqrs_postgres.postgres_snapshot_cqrs(postgres, Account, [], 10),
        CqrsFramework[int, Deposited, None],
    )
    assert_type(
        cqrs_postgres.postgres_aggregate_cqrs(postgres, Account),
        CqrsFramework[int, Deposited, None],
    )
    await postgres.close()

    mongo = cqrs_mongodb.from_url("mongodb://127.0.0.1:27017/cqrs?replicaSet=rs0")
    assert_type(mongo, MongoEventRepository)
    assert_type(mongo.with_collections("events2"), MongoEventRepository)
    assert_type(mongo.view_repository(Total, "totals"), MongoViewRepository[Total])
    assert_type(MongoViewRepository(Total, "totals", mongo), MongoViewRepository[Total])
    assert_type(cqrs_mongodb.mongodb_cqrs(mongo, Account), CqrsFramework[int, Deposited, None])
    assert_type(
        cqrs_mongodb.mongodb_snapshot_cqrs(mongo, Account, [], 10, upcasters=UPCASTERS),
        CqrsFramework[int, Deposited, None],
    )
    assert_type(
        cqrs_mongodb.mongodb_aggregate_cqrs(mongo, Account), CqrsFramework[int, Deposited, None]
    )
    store = PersistedEventStore(mongo, Account)
    assert_type((await store.load_aggregate("acc-1")).aggregate, Account)
