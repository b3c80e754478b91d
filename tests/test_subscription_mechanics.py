"""Subscription mechanics: pushed wake-ups, bounded polling, recovery from a lost database."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import pytest

from cqrs import ConfigurationError, DatabaseConnectionError, SerializedEvent
from cqrs.subscription import (
    LocalSignal,
    PollingWakeUps,
    SharedWakeUps,
    Subscription,
    WakeUpSource,
)
from cqrs_memory import MemoryEventRepository


def event(aggregate_id: str, sequence: int) -> SerializedEvent:
    return SerializedEvent(
        "Thing",
        aggregate_id,
        sequence,
        "Happened",
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


class Pushing(MemoryEventRepository):
    """A memory repository that pushes a wake-up after each commit."""

    def __init__(self) -> None:
        super().__init__()
        self.signal = LocalSignal()

    async def persist(self, events, snapshot):
        positions = await super().persist(events, snapshot)
        self.signal.notify()
        return positions

    def wake_ups(self):
        return self.signal.listen()


class Flaky(MemoryEventRepository):
    """Fails the first ``failures`` reads of the global stream like a lost server."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def stream_all_events(self, aggregate_type, after_position=None):
        if self.failures:
            self.failures -= 1
            raise DatabaseConnectionError("server gone")
        async for item in super().stream_all_events(aggregate_type, after_position):
            yield item


async def next_event(subscription: Subscription, seconds: float) -> SerializedEvent:
    iterator = aiter(subscription)
    return await asyncio.wait_for(anext(iterator), seconds)


async def test_a_pushed_wake_up_delivers_long_before_the_poll_interval():
    repository = Pushing()
    await repository.open()
    assert isinstance(repository, WakeUpSource)
    subscription = Subscription(repository, poll_interval=30)
    try:
        reading = asyncio.create_task(next_event(subscription, 5))
        await asyncio.sleep(0.05)  # the subscription has read nothing and waits
        started = time.monotonic()
        await repository.persist([event("a", 1)], None)
        delivered = await reading
        assert delivered.sequence == 1
        assert time.monotonic() - started < 1.0
    finally:
        await subscription.close()


class Silent:
    """A repository that cannot push: only the stream, read from a memory repository."""

    def __init__(self, inner: MemoryEventRepository) -> None:
        self.inner = inner

    def stream_all_events(self, aggregate_type, after_position=None):
        return self.inner.stream_all_events(aggregate_type, after_position)


async def test_without_pushes_polling_bounds_the_delay():
    inner = MemoryEventRepository()
    await inner.open()
    repository = Silent(inner)
    assert not isinstance(repository, WakeUpSource)
    subscription = Subscription(repository, poll_interval=0.05)  # type: ignore[arg-type]
    try:
        reading = asyncio.create_task(next_event(subscription, 5))
        await asyncio.sleep(0.1)
        await inner.persist([event("a", 1)], None)
        assert (await reading).sequence == 1
    finally:
        await subscription.close()


async def test_a_notify_before_the_wait_is_not_lost():
    signal = LocalSignal()
    listener = signal.listen()
    signal.notify()  # arrives while the subscriber is still reading
    started = time.monotonic()
    await listener.wait(10)
    assert time.monotonic() - started < 1.0
    await listener.wait(0.01)  # nothing new: the timeout stands in
    await listener.close()


async def test_a_lost_database_is_retried_and_logged(caplog):
    repository = Flaky(failures=2)
    await repository.open()
    await repository.persist([event("a", 1)], None)
    subscription = Subscription(repository, poll_interval=0.05, max_retry_delay=0.2)
    with caplog.at_level(logging.INFO, logger="cqrs.subscription"):
        try:
            assert (await next_event(subscription, 5)).sequence == 1
        finally:
            await subscription.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.subscription"]
    assert sum("lost its database" in m for m in messages) == 2
    assert any("reconnected" in m for m in messages)


async def test_other_errors_end_the_subscription():
    class Broken(MemoryEventRepository):
        async def stream_all_events(self, aggregate_type, after_position=None):
            raise RuntimeError("bug")
            yield  # pragma: no cover

    repository = Broken()
    await repository.open()
    subscription = Subscription(repository, poll_interval=0.05)
    with pytest.raises(RuntimeError, match="bug"):
        await next_event(subscription, 5)
    await subscription.close()


def test_bad_settings_are_configuration_errors():
    repository = MemoryEventRepository()
    with pytest.raises(ConfigurationError, match="collection"):
        Subscription(repository, types="Thing")
    with pytest.raises(ConfigurationError, match="positive"):
        Subscription(repository, poll_interval=0)


async def test_polling_wake_ups_wait_their_timeout():
    started = time.monotonic()
    await PollingWakeUps().wait(0.05)
    assert time.monotonic() - started >= 0.04


def test_a_signal_outlives_its_event_loop():
    signal = LocalSignal()
    listener = signal.listen()
    asyncio.run(listener.wait(0.01))  # times out under a first loop

    async def second() -> float:
        started = time.monotonic()
        waiting = asyncio.create_task(listener.wait(10))  # then waits under another loop
        await asyncio.sleep(0.01)
        signal.notify()
        await waiting
        return time.monotonic() - started

    assert asyncio.run(second()) < 5


class ClosingSource:
    """A pushing source (a LocalSignal's listener) that records being closed."""

    def __init__(self, signal: LocalSignal) -> None:
        self._listener = signal.listen()
        self.waits = 0
        self.closed = False

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        self.waits += 1
        await self._listener.wait(timeout)

    async def close(self) -> None:
        self.closed = True


async def test_shared_wake_ups_bring_one_push_to_every_listener():
    signal = LocalSignal()
    source = ClosingSource(signal)
    shared = SharedWakeUps(source, poll_interval=30)
    listeners = [shared.listen() for _ in range(3)]
    await asyncio.sleep(0.01)  # the shared task waits on the source
    signal.notify()
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(w.wait(30) for w in listeners)), 5)
    assert time.monotonic() - started < 1
    await shared.close()
    assert source.closed
    assert source.waits >= 1


async def test_shared_wake_ups_without_a_push_wait_each_listeners_timeout():
    shared = SharedWakeUps(ClosingSource(LocalSignal()), poll_interval=30)
    listener = shared.listen()
    started = time.monotonic()
    await listener.wait(0.1)
    assert 0.09 < time.monotonic() - started < 2
    await shared.close()
    await shared.close()  # idempotent


async def test_a_source_that_times_out_wakes_no_listener():
    class Silent:
        async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
            await asyncio.sleep(timeout)

        async def close(self) -> None:
            return None

    shared = SharedWakeUps(Silent(), poll_interval=0.02)
    listener = shared.listen()
    started = time.monotonic()
    await listener.wait(0.3)  # the source's timeouts are not pushes
    assert time.monotonic() - started > 0.25
    await shared.close()


def test_shared_wake_ups_need_a_positive_poll_interval():
    with pytest.raises(ConfigurationError, match="poll_interval"):
        SharedWakeUps(PollingWakeUps(), poll_interval=0)
