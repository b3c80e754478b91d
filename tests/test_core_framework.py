"""CqrsFramework and Retry: the retry bounds and jitter, what a query failure reports, and
the aggregate id a new aggregate's handler sees."""

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
    ConfigurationError,
    CqrsFramework,
    DomainEvent,
    MsgspecCodec,
    PersistedEventStore,
    QueryFailure,
    Retry,
    SemanticVersionEventUpcaster,
    default_codec,
    new_framework,
)
from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs
from cqrs_memory import MemoryEventRepository


@dataclass(frozen=True)
class Signed(DomainEvent):
    by: str


@dataclass
class Ledger(Aggregate[str, Signed, None]):
    aggregate_type: ClassVar[str] = "Ledger"
    event_classes: ClassVar[Sequence[type[object]]] = (Signed,)
    lines: int = 0

    async def handle(self, command: str, services: None) -> list[Signed]:
        return [Signed(self.aggregate_id)]

    def apply(self, event: Signed) -> None:
        self.lines += 1


class UpperBound:
    """Stands in for ``random``: ``uniform`` records its bounds and returns the upper one."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return high


class Broken:
    def __repr__(self) -> str:
        return "<Broken query>"

    async def dispatch(self, aggregate_id, events):
        raise RuntimeError("query broke")


async def framework(*queries, **kwargs) -> CqrsFramework[str, Signed, None]:
    repository = MemoryEventRepository()
    await repository.open()
    return CqrsFramework(PersistedEventStore(repository, Ledger), queries, **kwargs)


# -- Retry -----------------------------------------------------------------------------------


def test_one_attempt_and_zero_delays_are_valid():
    assert Retry(attempts=1).attempts == 1
    assert Retry(base_delay=0, max_delay=0).delay(3) == 0


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base_delay": -0.1}, {"max_delay": -1}, {"attempts": -5}]
)
def test_negative_delays_and_no_attempts_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"^invalid Retry\(.*\): attempts must be >= 1"):
        Retry(**kwargs)


def test_the_delay_is_full_jitter_under_an_exponential_cap(monkeypatch):
    jitter = UpperBound()
    monkeypatch.setattr(cqrs.framework, "random", jitter)
    retry = Retry(attempts=9, base_delay=0.01, max_delay=0.1)
    assert [retry.delay(attempt) for attempt in range(6)] == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert {low for low, _ in jitter.bounds} == {0}


async def test_retries_sleep_the_jittered_delays(monkeypatch):
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(cqrs.framework, "random", UpperBound())
    monkeypatch.setattr(cqrs.framework, "asyncio", SimpleNamespace(sleep=sleep))
    cqrs_ = await framework(retry=Retry(attempts=4, base_delay=0.5, max_delay=10))
    conflicts = 3
    commit = cqrs_.store.commit

    async def conflicting(*args):
        nonlocal conflicts
        if conflicts:
            conflicts -= 1
            raise AggregateConflict("someone else")
        return await commit(*args)

    cqrs_.store.commit = conflicting  # type: ignore[method-assign]
    assert len(await cqrs_.execute("l1", "sign")) == 1
    assert slept == [0.5, 1.0, 2.0]


# -- a new aggregate -------------------------------------------------------------------------


async def test_a_new_aggregate_created_with_expected_version_0_knows_its_id():
    cqrs_ = await framework()
    (envelope,) = await cqrs_.execute("ledger-42", "sign", expected_version=0)
    assert envelope.payload == Signed("ledger-42")
    assert (await cqrs_.store.load_aggregate("ledger-42")).aggregate.lines == 1


# -- query failures --------------------------------------------------------------------------


async def test_a_query_failure_names_the_query_the_aggregate_and_the_events(caplog):
    failures: list[QueryFailure[Signed]] = []
    broken = Broken()
    cqrs_ = await framework(broken, on_query_error=failures.append)
    with caplog.at_level(logging.ERROR, logger="cqrs.framework"):
        envelopes = await cqrs_.execute("ledger-7", "sign")
    (failure,) = failures
    assert failure.query is broken
    assert failure.aggregate_id == "ledger-7"
    assert list(failure.events) == envelopes
    assert isinstance(failure.error, RuntimeError)
    (record,) = caplog.records
    assert record.name == "cqrs.framework"
    assert record.getMessage() == "query <Broken query> failed on 1 event(s) of 'ledger-7'"
    assert record.exc_info is not None
    assert record.exc_info[1] is failure.error


async def test_an_error_handler_that_raises_is_logged_with_its_error(caplog):
    def explode(failure):
        raise LookupError("handler broke")

    cqrs_ = await framework(Broken(), on_query_error=explode)
    with caplog.at_level(logging.ERROR, logger="cqrs.framework"):
        await cqrs_.execute("ledger-8", "sign")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "query <Broken query> failed on 1 event(s) of 'ledger-8'",
        "on_query_error raised while reporting a query failure",
    ]
    assert isinstance(caplog.records[1].exc_info[1], LookupError)


# -- factories -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "args", "snapshot_every"),
    [
        (event_store_cqrs, (), None),
        (snapshot_cqrs, (4,), 4),
        (aggregate_cqrs, (), 1),
    ],
)
async def test_each_factory_passes_on_services_retry_and_upcasters(factory, args, snapshot_every):
    repository = MemoryEventRepository()
    await repository.open()
    services = object()
    retry = Retry(attempts=3)
    upcaster = SemanticVersionEventUpcaster("Signed", "2.0", dict)
    recorder = Broken()
    if args:
        app = factory(
            repository, Ledger, [recorder], *args, services, upcasters=[upcaster], retry=retry
        )
    else:
        app = factory(repository, Ledger, [recorder], services, upcasters=[upcaster], retry=retry)
    assert app.services is services
    assert app.retry is retry
    assert app.queries == (recorder,)
    assert app.store._upcasters == (upcaster,)
    assert app.store.snapshot_every == snapshot_every


async def test_new_framework_passes_on_the_codec_and_services():
    codec = MsgspecCodec()
    services = object()
    app = new_framework(MemoryEventRepository(), Ledger, (), services, codec=codec)
    assert app.store.codec is codec
    assert app.services is services
    assert new_framework(MemoryEventRepository(), Ledger).store.codec is default_codec


def test_new_framework_refuses_two_snapshot_settings():
    with pytest.raises(ConfigurationError) as raised:
        new_framework(MemoryEventRepository(), Ledger, snapshot_every=2, aggregate_store=True)
    assert str(raised.value) == "give snapshot_every or aggregate_store=True, not both"
