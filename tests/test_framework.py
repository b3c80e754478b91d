"""CqrsFramework behaviour that needs no database: dispatch, errors, retry, ids."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

import pydantic
import pytest

from cqrs import (
    Aggregate,
    AggregateConflict,
    ConfigurationError,
    CqrsFramework,
    DeserializationError,
    DomainError,
    DomainEvent,
    PersistedEventStore,
    QueryFailure,
    Retry,
    SemanticVersionEventUpcaster,
    TestFramework,
    UnexpectedError,
    UserError,
)
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
)


@dataclass(frozen=True)
class Noted(DomainEvent):
    who: str


@dataclass
class Notebook(Aggregate[str, Noted, None]):
    aggregate_type: ClassVar[str] = "Notebook"
    event_classes: ClassVar[Sequence[type[object]]] = (Noted,)
    user_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError,)
    notes: int = 0

    async def handle(self, command: str, services: None) -> list[Noted]:
        if command == "refuse":
            raise ValueError("refused")
        if command == "bug":
            raise KeyError("oops")
        if command == "misconfigured":
            raise ConfigurationError("bad setup")  # a ValueError, but the framework's own
        if command == "nothing":
            return []
        return [Noted(self.aggregate_id)]  # the handler learns its aggregate id

    def apply(self, event: Noted) -> None:
        self.notes += 1


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.fail = fail

    async def dispatch(self, aggregate_id, events):
        self.calls.append((aggregate_id, [e.sequence for e in events]))
        if self.fail:
            raise RuntimeError("query broke")


async def memory() -> MemoryEventRepository:
    """An open in-memory repository (every repository must be open to be used)."""
    repository = MemoryEventRepository()
    await repository.open()
    return repository


async def notebook(*queries, **kwargs) -> CqrsFramework[str, Noted, None]:
    return CqrsFramework(PersistedEventStore(await memory(), Notebook), queries, None, **kwargs)


async def test_handler_learns_its_aggregate_id():
    envelopes = await (await notebook()).execute("nb-7", "write")
    assert envelopes[0].payload == Noted("nb-7")


async def test_queries_run_in_order_after_commit():
    order: list[str] = []

    class Named(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def dispatch(self, aggregate_id, events):
            order.append(self.name)

    cqrs = await notebook(Named("first"), Named("second"), Named("third"))
    await cqrs.execute("nb", "write")
    assert order == ["first", "second", "third"]


async def test_no_dispatch_when_no_events():
    recorder = Recorder()
    assert await (await notebook(recorder)).execute("nb", "nothing") == []
    assert recorder.calls == []


async def test_expected_version_0_yielding_nothing_on_an_existing_aggregate_conflicts():
    cqrs = await notebook()
    await cqrs.execute("nb", "write")
    with pytest.raises(AggregateConflict, match="at version 1, expected 0"):
        await cqrs.execute("nb", "nothing", expected_version=0)
    assert await cqrs.execute("new", "nothing", expected_version=0) == []


async def test_failing_query_is_reported_and_never_undoes_the_commit(caplog):
    failures: list[QueryFailure[Noted]] = []
    broken, after = Recorder(fail=True), Recorder()
    cqrs = await notebook(broken, after, on_query_error=failures.append)
    with caplog.at_level(logging.ERROR, logger="cqrs.framework"):
        envelopes = await cqrs.execute("nb", "write")
    assert [e.sequence for e in envelopes] == [1]
    assert after.calls == [("nb", [1])]  # later queries still run
    assert len(failures) == 1
    assert failures[0].query is broken
    assert str(failures[0].error) == "query broke"
    assert "query" in caplog.text
    assert "query broke" in caplog.text
    assert len(await cqrs.store.load_events("nb")) == 1


async def test_error_handler_that_raises_is_logged_not_raised(caplog):
    def explode(failure: QueryFailure[Noted]) -> None:
        raise RuntimeError("handler broke")

    cqrs = await notebook(Recorder(fail=True), on_query_error=explode)
    with caplog.at_level(logging.ERROR, logger="cqrs.framework"):
        await cqrs.execute("nb", "write")
    assert "on_query_error raised" in caplog.text


async def test_declared_errors_become_user_errors_others_unexpected():
    cqrs = await notebook()
    with pytest.raises(UserError) as refused:
        await cqrs.execute("nb", "refuse")
    assert isinstance(refused.value.error, ValueError)
    assert refused.value.__cause__ is refused.value.error
    with pytest.raises(UnexpectedError, match="KeyError") as bug:
        await cqrs.execute("nb", "bug")
    assert isinstance(bug.value.__cause__, KeyError)


class OverdrawnError(DomainError):
    pass


def _bug(kind: str) -> None:
    if kind == "type":
        len(42)  # type: ignore[arg-type]
    elif kind == "key":
        _ = dict[str, int]()["missing"]
    elif kind == "attribute":
        _ = None.balance  # type: ignore[attr-defined]


@dataclass
class Purse(Aggregate[str, Noted, None]):
    """Declares nothing: user_errors keeps its default, DomainError."""

    aggregate_type: ClassVar[str] = "Purse"
    event_classes: ClassVar[Sequence[type[object]]] = (Noted,)

    async def handle(self, command: str, services: None) -> list[Noted]:
        if command == "overdraw":
            raise OverdrawnError("not enough money")
        if command == "refuse":
            raise DomainError("refused")
        _bug(command)
        return [Noted(command)]

    def apply(self, event: Noted) -> None:
        pass


@pytest.mark.parametrize(
    ("kind", "error"), [("type", TypeError), ("key", KeyError), ("attribute", AttributeError)]
)
async def test_a_bug_in_the_handler_is_an_unexpected_error_not_a_refusal(kind, error):
    store = PersistedEventStore(await memory(), Purse)
    with pytest.raises(UnexpectedError, match=f"Purse.handle raised {error.__name__}") as caught:
        await CqrsFramework(store).execute("p", kind)
    assert not isinstance(caught.value, UserError)
    assert isinstance(caught.value.__cause__, error)
    assert await store.load_events("p") == []


@pytest.mark.parametrize(
    ("command", "error"), [("overdraw", OverdrawnError), ("refuse", DomainError)]
)
async def test_domain_errors_and_subclasses_are_user_errors_by_default(command, error):
    store = PersistedEventStore(await memory(), Purse)
    with pytest.raises(UserError) as refused:
        await CqrsFramework(store).execute("p", command)
    assert type(refused.value.error) is error
    assert refused.value.__cause__ is refused.value.error
    assert await store.load_events("p") == []


async def test_declaring_user_errors_replaces_the_default():
    class Strict(Purse):
        user_errors = (OverdrawnError,)

    cqrs = CqrsFramework(PersistedEventStore(await memory(), Strict))
    with pytest.raises(UserError, match="not enough money"):
        await cqrs.execute("p", "overdraw")
    with pytest.raises(UnexpectedError) as bug:
        await cqrs.execute("p", "refuse")  # a DomainError, but not declared here
    assert type(bug.value.__cause__) is DomainError


async def test_test_framework_classifies_errors_like_the_framework():
    purse = TestFramework(Purse)
    result = await purse.given_no_previous_events().when("overdraw")
    result.then_expect_error(OverdrawnError("not enough money"))
    (await purse.given_no_previous_events().when("refuse")).then_expect_error(DomainError)
    for kind, error in (("type", TypeError), ("key", KeyError), ("attribute", AttributeError)):
        with pytest.raises(error):
            await purse.given_no_previous_events().when(kind)  # a bug propagates, unwrapped
    (await TestFramework(Notebook).given([]).when("refuse")).then_expect_error(ValueError)
    with pytest.raises(KeyError):
        await TestFramework(Notebook).given([]).when("bug")


async def test_the_frameworks_own_errors_are_never_the_users_refusal():
    # Notebook declares ValueError, and ConfigurationError is one: it still propagates as is.
    with pytest.raises(ConfigurationError, match="bad setup"):
        await (await notebook()).execute("nb", "misconfigured")
    with pytest.raises(ConfigurationError, match="bad setup"):
        await TestFramework(Notebook).given([]).when("misconfigured")


@pytest.mark.parametrize(
    ("aggregate_id", "metadata", "error"),
    [
        ("", {}, ValueError),
        ("a\x00b", {}, ValueError),
        (42, {}, ValueError),
        ("ok", {"k": 1}, TypeError),
        ("ok", [("k", "v")], TypeError),
    ],
)
async def test_bad_input_is_refused_naming_the_culprit(aggregate_id, metadata, error):
    with pytest.raises(error, match=r"aggregate_id|metadata"):
        await (await notebook()).execute_with_metadata(aggregate_id, "write", metadata)


async def test_retry_resolves_conflicts_and_is_bounded():
    repository = await memory()
    store = PersistedEventStore(repository, Notebook)
    real_commit = store.commit
    conflicts = 3

    async def flaky_commit(events, context, metadata):
        nonlocal conflicts
        if conflicts:
            conflicts -= 1
            raise AggregateConflict("simulated")
        return await real_commit(events, context, metadata)

    store.commit = flaky_commit  # type: ignore[method-assign]
    cqrs = CqrsFramework(store, retry=Retry(attempts=4, base_delay=0))
    assert len(await cqrs.execute("nb", "write")) == 1
    conflicts = 10
    with pytest.raises(AggregateConflict):
        await cqrs.execute("nb", "write")
    assert conflicts == 6  # four attempts, no more
    without_retry = CqrsFramework(store)
    with pytest.raises(AggregateConflict):
        await without_retry.execute("nb", "write")
    assert conflicts == 5


def test_retry_rejects_nonsense():
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)
    assert 0 <= Retry(base_delay=0.01, max_delay=0.02).delay(10) <= 0.02


def test_store_configuration_errors_are_clear():
    repository = MemoryEventRepository()

    class Nameless(Notebook):
        aggregate_type = ""

    with pytest.raises(ConfigurationError, match="aggregate_type"):
        PersistedEventStore(repository, Nameless)

    class NoEvents(Notebook):
        event_classes = ()

    with pytest.raises(ConfigurationError, match="event_classes"):
        PersistedEventStore(repository, NoEvents)
    with pytest.raises(ConfigurationError, match="snapshot_every"):
        PersistedEventStore(repository, Notebook, snapshot_every=0)
    with pytest.raises(ConfigurationError, match="oldest first"):
        PersistedEventStore(repository, Notebook).with_upcasters(
            [
                SemanticVersionEventUpcaster("Noted", "2.0", dict),
                SemanticVersionEventUpcaster("Noted", "1.1", dict),
            ]
        )
    with pytest.raises(ConfigurationError, match="invalid event version"):
        SemanticVersionEventUpcaster("Noted", "v2", dict)


async def test_committing_an_undeclared_event_class_is_refused():
    @dataclass(frozen=True)
    class Stray(DomainEvent):
        pass

    store = PersistedEventStore(await memory(), Notebook)
    context = await store.load_aggregate("nb")
    with pytest.raises(ConfigurationError, match="Stray is not listed"):
        await store.commit([Stray()], context, {})  # type: ignore[list-item]


async def test_typed_bank_account_round_trip():
    store = PersistedEventStore(await memory(), BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    await cqrs.execute("A1", OpenAccount("A1"))
    await cqrs.execute("A1", DepositMoney(Decimal("0.10")))
    await cqrs.execute("A1", DepositMoney(Decimal("0.20")))
    assert (await store.load_aggregate("A1")).aggregate.balance == Decimal("0.30")


async def test_event_ids_are_unique_random_uuids():
    cqrs = await notebook()
    envelopes = [e for n in range(50) for e in await cqrs.execute(f"nb-{n}", "write")]
    ids = [e.event_id for e in envelopes]
    assert len(set(ids)) == 50
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    loaded = await cqrs.store.load_events("nb-3")
    assert loaded[0].event_id == envelopes[3].event_id


class Tagged(pydantic.BaseModel, DomainEvent):
    model_config = pydantic.ConfigDict(frozen=True)
    tag: str
    amount: Decimal


@dataclass
class Tags(Aggregate[str, Tagged, None]):
    aggregate_type: ClassVar[str] = "Tags"
    event_classes: ClassVar[Sequence[type[object]]] = (Tagged,)
    total: Decimal = Decimal(0)

    async def handle(self, command: str, services: None) -> list[Tagged]:
        return [Tagged(tag=command, amount=Decimal("0.10"))]

    def apply(self, event: Tagged) -> None:
        self.total += event.amount


async def test_pydantic_events_commit_load_and_snapshot():
    store = PersistedEventStore(await memory(), Tags, snapshot_every=2)
    cqrs = CqrsFramework(store)
    for tag in ("a", "b", "c"):
        await cqrs.execute("t", tag)
    events = await store.load_events("t")
    assert [e.payload for e in events] == [
        Tagged(tag=tag, amount=Decimal("0.10")) for tag in ("a", "b", "c")
    ]
    assert (await store.load_aggregate("t")).aggregate.total == Decimal("0.30")


async def test_a_failing_upcaster_is_a_deserialization_error_naming_the_event():
    def broken(payload: dict[str, object]) -> dict[str, object]:
        raise AttributeError("no such field")

    repository = await memory()
    await CqrsFramework(PersistedEventStore(repository, Notebook)).execute("nb", "write")
    store = PersistedEventStore(repository, Notebook).with_upcasters(
        [SemanticVersionEventUpcaster("Noted", "2.0", broken)]
    )
    with pytest.raises(DeserializationError, match=r"'Noted'.*sequence 1.*no such field"):
        await store.load_aggregate("nb")
