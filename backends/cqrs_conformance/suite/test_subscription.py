"""Subscriptions on every backend: catch up, then follow live; never skip, never repeat."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

from cqrs import CqrsFramework, PersistedEventStore, SemanticVersionEventUpcaster
from cqrs.repository import SerializedEvent
from cqrs.subscription import Subscription
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    DepositMoney,
)
from cqrs_conformance.support import TYPE, batch, event

FAST = 0.02  # poll interval: live delivery within a few of these on every backend


async def take(
    subscription: Subscription, count: int, seconds: float = 20.0
) -> list[SerializedEvent]:
    events: list[SerializedEvent] = []

    async def run() -> None:
        async for row in subscription:
            events.append(row)
            if len(events) == count:
                return

    await asyncio.wait_for(run(), seconds)
    return events


def ids(events) -> list[str]:
    return [str(e.event_id) for e in events]


async def test_catches_up_then_follows_live(repository):
    old = batch("a1", 1, 5)
    await repository.persist(old, None)
    subscription = Subscription(repository, poll_interval=FAST)
    try:
        assert ids(await take(subscription, 5)) == ids(old)
        new = batch("a1", 6, 3)

        async def later() -> None:
            await asyncio.sleep(0.1)
            await repository.persist(new, None)

        writer = asyncio.create_task(later())
        assert ids(await take(subscription, 3)) == ids(new)
        await writer
        assert subscription.position == (await repository.get_events(TYPE, "a1"))[-1].position
    finally:
        await subscription.close()


async def test_resumes_exactly_after_its_checkpoint(repository):
    rows = batch("a1", 1, 7)
    await repository.persist(rows, None)
    first = Subscription(repository, poll_interval=FAST)
    assert ids(await take(first, 4)) == ids(rows[:4])
    checkpoint = first.position
    await first.close()
    second = Subscription(repository, after_position=checkpoint, poll_interval=FAST)
    try:
        assert ids(await take(second, 3)) == ids(rows[4:])
    finally:
        await second.close()


async def test_types_select_the_aggregate_types_delivered(repository):
    await repository.persist(batch("a", 1, 2, aggregate_type="A"), None)
    await repository.persist(batch("b", 1, 2, aggregate_type="B"), None)
    await repository.persist(batch("c", 1, 2, aggregate_type="C"), None)
    await repository.persist(batch("a", 3, 1, aggregate_type="A"), None)
    only_a = Subscription(repository, types=["A"], poll_interval=FAST)
    a_and_c = Subscription(repository, types={"A", "C"}, poll_interval=FAST)
    try:
        assert [e.sequence for e in await take(only_a, 3)] == [1, 2, 3]
        assert [e.aggregate_type for e in await take(a_and_c, 5)] == ["A", "A", "C", "C", "A"]
    finally:
        await only_a.close()
        await a_and_c.close()


async def test_never_skips_or_repeats_while_writers_commit(backend):
    scale = getattr(backend.factory, "stress_scale", 1.0)
    writers = [await backend.open_repository() for _ in range(2)]
    reader = await backend.open_repository(page_size=5)
    commits = max(4, int(10 * scale))
    committed: list[str] = []

    async def writer(repository, name: str) -> None:
        sequence = 0
        for _ in range(commits):
            rows = batch(name, sequence + 1, random.randint(1, 4))
            await repository.persist(rows, None)
            committed.extend(ids(rows))
            sequence += len(rows)

    subscription = Subscription(reader, poll_interval=FAST)
    seen: list[SerializedEvent] = []
    done = asyncio.Event()

    async def consume() -> None:
        async for row in subscription:
            seen.append(row)
            if done.is_set() and len(seen) >= len(committed):
                return

    consuming = asyncio.create_task(consume())
    try:
        await asyncio.gather(
            *(
                writer(repository, f"w{i}-{t}")
                for i, repository in enumerate(writers)
                for t in range(4)
            )
        )
        done.set()
        await asyncio.wait_for(consuming, 30)
    finally:
        consuming.cancel()
        await subscription.close()
    assert len(ids(seen)) == len(set(ids(seen))), "an event was delivered twice"
    assert set(ids(seen)) == set(committed)
    positions = [e.position for e in seen]
    assert positions == sorted(positions)


async def test_a_store_subscription_decodes_and_upcasts_like_a_load(repository):
    store = PersistedEventStore(repository, BankAccount).with_upcasters(
        [SemanticVersionEventUpcaster("AccountOpened", "1.0", lambda p: {"account_id": p["id"]})]
    )
    bank = CqrsFramework(store, (), BankAccountServices())
    old = event(
        "acc",
        1,
        aggregate_type="BankAccount",
        event_type="AccountOpened",
        event_version="0.9",
        payload={"id": "acc"},
    )
    await repository.persist([old], None)
    await repository.persist(batch("other", 1, 2), None)  # another type: not delivered
    stream = store.subscribe(poll_interval=FAST)
    try:
        first = await asyncio.wait_for(anext(stream), 10)
        assert first.payload == AccountOpened("acc")
        assert first.event_id == old.event_id
        committed = await bank.execute("acc", DepositMoney(Decimal(5)))
        second = await asyncio.wait_for(anext(stream), 10)
        assert (second.event_id, second.position) == (
            committed[0].event_id,
            committed[0].position,
        )
        assert second.payload == committed[0].payload
    finally:
        await stream.aclose()
