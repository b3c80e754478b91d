"""cqrs.new_framework: one way to build a framework over any repository."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pytest

import cqrs
from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
)


async def opened() -> MemoryEventRepository:
    repository = MemoryEventRepository()
    await repository.open()
    return repository


@pytest.mark.parametrize(
    ("options", "snapshot_every"),
    [({}, None), ({"snapshot_every": 3}, 3), ({"aggregate_store": True}, 1)],
)
async def test_each_source_of_truth_stores_events_and_snapshots_as_chosen(options, snapshot_every):
    repository = await opened()
    app = cqrs.new_framework(repository, BankAccount, (), BankAccountServices(), **options)
    assert isinstance(app.store, cqrs.PersistedEventStore)
    assert app.store.snapshot_every == snapshot_every
    await app.execute("a1", OpenAccount("a1"))
    for _ in range(3):
        await app.execute("a1", DepositMoney(Decimal(5)))
    assert len(await repository.get_events("BankAccount", "a1")) == 4
    snapshot = await repository.get_snapshot("BankAccount", "a1")
    expected = {None: None, 3: 3, 1: 4}[snapshot_every]
    assert (snapshot and snapshot.last_sequence) == expected
    assert (await app.store.load_aggregate("a1")).aggregate.balance == Decimal(15)


async def test_queries_retry_upcasters_and_error_handler_are_passed_on():
    repository = await opened()
    seen: list[int] = []

    class Count:
        async def dispatch(self, aggregate_id, envelopes):
            seen.append(len(envelopes))

    retry = cqrs.Retry(attempts=2)
    upcaster = cqrs.SemanticVersionEventUpcaster("AccountOpened", "2.0", dict)
    failures: list[object] = []
    app = cqrs.new_framework(
        repository,
        BankAccount,
        [Count()],
        BankAccountServices(),
        retry=retry,
        upcasters=[upcaster],
        on_query_error=failures.append,
    )
    await app.execute("a1", OpenAccount("a1"))
    assert seen == [1]
    assert app.retry is retry
    assert app.on_query_error == failures.append
    assert isinstance(app.store, cqrs.PersistedEventStore)
    assert app.store._upcasters == (upcaster,)


async def test_both_snapshot_options_at_once_are_refused():
    with pytest.raises(cqrs.ConfigurationError, match="not both"):
        cqrs.new_framework(await opened(), BankAccount, snapshot_every=5, aggregate_store=True)


def test_every_backends_factories_have_identical_signatures():
    import cqrs_memory  # noqa: PLC0415
    import cqrs_mongodb  # noqa: PLC0415
    import cqrs_mysql  # noqa: PLC0415
    import cqrs_postgres  # noqa: PLC0415
    import cqrs_sqlite  # noqa: PLC0415

    expected = {
        "cqrs": inspect.signature(event_store_cqrs),
        "snapshot_cqrs": inspect.signature(snapshot_cqrs),
        "aggregate_cqrs": inspect.signature(aggregate_cqrs),
    }
    for module, prefix in [
        (cqrs_memory, "memory"),
        (cqrs_sqlite, "sqlite"),
        (cqrs_postgres, "postgres"),
        (cqrs_mongodb, "mongodb"),
        (cqrs_mysql, "mysql"),
    ]:
        for suffix, signature in expected.items():
            name = f"{prefix}_{suffix}"
            assert name in module.__all__
            assert inspect.signature(getattr(module, name)) == signature, name
    assert list(expected["snapshot_cqrs"].parameters) == [
        "repository",
        "aggregate_class",
        "queries",
        "snapshot_every",
        "services",
        "upcasters",
        "retry",
    ]


@pytest.mark.parametrize("kind", ["cqrs", "snapshot_cqrs", "aggregate_cqrs"])
async def test_backend_factories_build_the_chosen_source_of_truth(kind):
    from cqrs_memory import memory_aggregate_cqrs, memory_cqrs, memory_snapshot_cqrs  # noqa: PLC0415

    repository = await opened()
    services = BankAccountServices()
    if kind == "cqrs":
        app = memory_cqrs(repository, BankAccount, (), services)
    elif kind == "snapshot_cqrs":
        app = memory_snapshot_cqrs(repository, BankAccount, (), 2, services)
    else:
        app = memory_aggregate_cqrs(repository, BankAccount, (), services)
    await app.execute("a1", OpenAccount("a1"))
    await app.execute("a1", DepositMoney(Decimal(1)))
    snapshot = await repository.get_snapshot("BankAccount", "a1")
    assert (snapshot and snapshot.last_sequence) == {"cqrs": None}.get(kind, 2)
