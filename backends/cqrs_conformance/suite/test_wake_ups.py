"""Pushed wake-ups: with polls 30 s apart, a commit reaches a waiting subscription within a
second on every backend that pushes; a listener never hangs and closes cleanly."""

from __future__ import annotations

import asyncio
import time

from cqrs.repository import PersistedEventRepository, SerializedEvent
from cqrs.subscription import Subscription, WakeUps, WakeUpSource
from cqrs_conformance.support import batch

SLOW_POLL = 30.0  # a delivery within a second cannot come from polling
PUSHED = 1.0


def listener(repository: PersistedEventRepository) -> WakeUps:
    assert isinstance(repository, WakeUpSource)
    return repository.wake_ups()


async def take(subscription: Subscription, count: int, seconds: float = 10.0) -> list[str]:
    events: list[SerializedEvent] = []

    async def run() -> None:
        async for row in subscription:
            events.append(row)
            if len(events) == count:
                return

    await asyncio.wait_for(run(), seconds)
    return [str(e.event_id) for e in events]


async def delivery_seconds(subscription: Subscription, writer, rows) -> float:
    """Seconds from the start of ``writer``'s commit of ``rows`` to their delivery, the
    subscription having waited (caught up and listening) before the commit."""
    reading = asyncio.create_task(take(subscription, len(rows)))
    await asyncio.sleep(0.3)  # the subscription reads nothing new and waits
    assert not reading.done()
    started = time.monotonic()
    await writer.persist(rows, None)
    assert await reading == [str(e.event_id) for e in rows]
    return time.monotonic() - started


async def test_a_commit_through_the_same_repository_is_pushed(backend):
    backend.requires("push")
    repository = await backend.open_repository()
    await listener(repository).close()  # it can push
    await repository.persist(batch("a", 1, 2), None)
    subscription = Subscription(repository, poll_interval=SLOW_POLL)
    try:
        assert len(await take(subscription, 2)) == 2
        assert await delivery_seconds(subscription, repository, batch("a", 3, 1)) < PUSHED
        assert await delivery_seconds(subscription, repository, batch("a", 4, 3)) < PUSHED
    finally:
        await subscription.close()


async def test_a_commit_from_another_client_is_pushed(backend):
    backend.requires("push_across_clients")
    reader = await backend.open_repository()
    writer = await backend.open_repository()
    subscription = Subscription(reader, poll_interval=SLOW_POLL)
    try:
        assert await delivery_seconds(subscription, writer, batch("a", 1, 1)) < PUSHED
        assert await delivery_seconds(subscription, writer, batch("b", 1, 2)) < PUSHED
    finally:
        await subscription.close()


async def test_commits_in_quick_succession_are_all_pushed(backend):
    # Commits landing while the subscription reads must not be lost between two waits.
    backend.requires("push_across_clients")
    reader = await backend.open_repository()
    writer = await backend.open_repository()
    subscription = Subscription(reader, poll_interval=SLOW_POLL)
    commits = 12
    reading = asyncio.create_task(take(subscription, commits, seconds=commits * PUSHED + 5))
    try:
        await asyncio.sleep(0.3)
        for sequence in range(1, commits + 1):
            await writer.persist(batch("a", sequence, 1), None)
            await asyncio.sleep(0.01 * (sequence % 3))
        last = time.monotonic()
        assert len(await reading) == commits
        assert time.monotonic() - last < PUSHED
    finally:
        reading.cancel()
        await subscription.close()


async def test_a_listener_without_commits_waits_its_timeout_and_closes(backend):
    backend.requires("push")
    repository = await backend.open_repository()
    unused = listener(repository)  # no I/O until the first wait
    await unused.close()
    await unused.close()
    waiting = listener(repository)
    try:
        for _ in range(3):
            started = time.monotonic()
            await asyncio.wait_for(waiting.wait(0.2), 5)
            assert time.monotonic() - started < 2.0
    finally:
        await waiting.close()
        await waiting.close()


async def test_a_pending_wake_up_is_kept_until_the_next_wait(backend):
    backend.requires("push")
    repository = await backend.open_repository()
    waiting = listener(repository)
    try:
        await asyncio.wait_for(waiting.wait(0.2), 5)  # connects
        await asyncio.wait_for(waiting.wait(0.2), 5)  # listening, nothing committed
        await repository.persist(batch("a", 1, 1), None)
        await asyncio.sleep(0.3)  # the wake-up arrives while nobody waits
        started = time.monotonic()
        await asyncio.wait_for(waiting.wait(SLOW_POLL), 5)
        assert time.monotonic() - started < PUSHED
    finally:
        await waiting.close()
