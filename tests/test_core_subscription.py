"""Subscription, LocalSignal and SharedWakeUps on the in-memory repository: what a
subscription reads and how it asks for it, when it waits and for how long, the log lines of a
lost database, its defaults, and the errors that name a bad setting."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import pytest

from cqrs import ConfigurationError, DatabaseConnectionError, SerializedEvent
from cqrs.subscription import LocalSignal, PollingWakeUps, SharedWakeUps, Subscription
from cqrs_memory import MemoryEventRepository


def row(aggregate_type: str, aggregate_id: str, sequence: int = 1) -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        "Happened",
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


class Waits:
    """Wake-ups that record each wait's timeout and return at once (or raise a failure)."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.closed = 0

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - recorded only
        self.timeouts.append(timeout)
        await asyncio.sleep(0)

    async def close(self) -> None:
        self.closed += 1


class Recording(MemoryEventRepository):
    """Records each read of the global stream, fails the first ``failures`` reads like a lost
    server, and hands out one recording listener."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.reads: list[tuple[str | None, int | None]] = []
        self.failures = failures
        self.listener = Waits()

    async def stream_all_events(self, aggregate_type, after_position=None):
        self.reads.append((aggregate_type, after_position))
        if self.failures:
            self.failures -= 1
            raise DatabaseConnectionError(f"server gone {self.failures}")
        async for item in super().stream_all_events(aggregate_type, after_position):
            yield item

    def wake_ups(self):
        return self.listener


@pytest.fixture
async def repository():
    async with Recording() as repository:
        for aggregate_type, aggregate_id in [("A", "a1"), ("B", "b1"), ("C", "c1")]:
            await repository.persist([row(aggregate_type, aggregate_id)], None)
        yield repository


async def waits(listener: Waits, count: int) -> None:
    """Return once ``listener`` was waited on ``count`` times (fail after 5 s)."""
    for _ in range(5000):
        if len(listener.timeouts) >= count:
            return
        await asyncio.sleep(0.001)
    pytest.fail(f"fewer than {count} waits")


async def take(subscription: Subscription, count: int) -> list[SerializedEvent]:
    taken = []
    async with asyncio.timeout(5):
        async for event in subscription:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


def test_the_defaults():
    subscription = Subscription(MemoryEventRepository())
    assert subscription.position == 0
    assert subscription.types is None
    assert subscription.poll_interval == 1.0
    assert subscription.max_retry_delay == 5.0
    resumed = Subscription(MemoryEventRepository(), after_position=7, types=["A", "B", "A"])
    assert resumed.position == 7
    assert resumed.types == frozenset({"A", "B"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"types": "Thing"},
            "types must be a collection of aggregate types, not the string 'Thing'",
        ),
        (
            {"poll_interval": 0},
            "poll_interval and max_retry_delay must be positive numbers of seconds",
        ),
        (
            {"max_retry_delay": 0},
            "poll_interval and max_retry_delay must be positive numbers of seconds",
        ),
        (
            {"poll_interval": float("nan")},
            "poll_interval and max_retry_delay must be positive numbers of seconds",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ConfigurationError) as raised:
        Subscription(MemoryEventRepository(), **settings)
    assert str(raised.value) == message


async def test_one_type_is_read_by_the_repository_and_several_are_filtered_here(repository):
    one = Subscription(repository, types={"B"})
    assert [e.aggregate_type for e in await take(one, 1)] == ["B"]
    assert repository.reads[0] == ("B", 0)
    await one.close()
    repository.reads.clear()
    several = Subscription(repository, types=["A", "C"], after_position=0)
    assert [e.aggregate_type for e in await take(several, 2)] == ["A", "C"]
    assert repository.reads[0] == (None, 0)
    assert several.position == 3  # it read past B
    await several.close()


async def test_it_resumes_after_its_position_and_waits_only_when_nothing_was_read(repository):
    subscription = Subscription(repository, after_position=1, poll_interval=0.25)
    assert [e.position for e in await take(subscription, 2)] == [2, 3]
    assert repository.reads == [(None, 1)]
    assert repository.listener.timeouts == []  # it read something: no wait yet
    reading = asyncio.create_task(take(subscription, 1))
    await waits(repository.listener, 2)
    await repository.persist([row("A", "a2")], None)
    assert [e.position for e in await reading] == [4]
    assert set(repository.listener.timeouts) == {0.25}
    assert repository.reads[1] == (None, 3)
    await subscription.close()
    assert repository.listener.closed >= 1


async def test_close_is_idempotent_and_a_subscription_never_read_closes_too(repository):
    never = Subscription(repository)
    await never.close()
    await never.close()
    subscription = Subscription(repository)
    await take(subscription, 1)
    await subscription.close()
    closed = repository.listener.closed
    await subscription.close()
    assert closed >= 1
    assert repository.listener.closed == closed


async def test_the_same_iterator_is_handed_out_until_closed(repository):
    subscription = Subscription(repository)
    assert aiter(subscription) is aiter(subscription)
    await subscription.close()


async def test_a_lost_database_is_retried_with_a_doubling_delay_up_to_the_maximum(caplog):
    async with Recording(failures=3) as repository:
        await repository.persist([row("A", "a1")], None)
        subscription = Subscription(repository, after_position=0, max_retry_delay=0.15)
        with caplog.at_level(logging.INFO, logger="cqrs.subscription"):
            assert [e.position for e in await take(subscription, 1)] == [1]
        await subscription.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.subscription"]
    assert messages == [
        "subscription after position 0 lost its database (server gone 2); retrying in 0.10 s",
        "subscription after position 0 lost its database (server gone 1); retrying in 0.15 s",
        "subscription after position 0 lost its database (server gone 0); retrying in 0.15 s",
        "subscription reconnected at position 0",
    ]
    levels = [r.levelno for r in caplog.records if r.name == "cqrs.subscription"]
    assert levels == [logging.WARNING] * 3 + [logging.INFO]


async def test_a_reconnect_to_an_empty_stream_is_said_once(caplog):
    async with Recording(failures=1) as repository:
        subscription = Subscription(repository, after_position=5, poll_interval=0.01)
        with caplog.at_level(logging.INFO, logger="cqrs.subscription"):
            reading = asyncio.create_task(take(subscription, 1))
            await waits(repository.listener, 3)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        await subscription.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.subscription"]
    assert messages == [
        "subscription after position 5 lost its database (server gone 0); retrying in 0.10 s",
        "subscription reconnected at position 5",
    ]


async def test_a_repository_that_cannot_push_is_polled():
    class Silent:
        def __init__(self, inner):
            self.inner = inner

        def stream_all_events(self, aggregate_type, after_position=None):
            return self.inner.stream_all_events(aggregate_type, after_position)

    async with MemoryEventRepository() as inner:
        subscription = Subscription(Silent(inner), poll_interval=0.02)  # type: ignore[arg-type]
        reading = asyncio.create_task(take(subscription, 1))
        await asyncio.sleep(0.05)
        await inner.persist([row("A", "a1")], None)
        assert [e.position for e in await reading] == [1]
        await subscription.close()


async def test_a_signal_wakes_only_listeners_that_have_not_seen_it():
    signal = LocalSignal()
    early = signal.listen()
    signal.notify()
    late = signal.listen()
    async with asyncio.timeout(5):
        await early.wait(30)  # the notify came after it listened
    started = asyncio.get_running_loop().time()
    await late.wait(0.05)  # it listened after: the timeout stands in
    assert asyncio.get_running_loop().time() - started >= 0.04
    waiting = asyncio.create_task(late.wait(30))
    await asyncio.sleep(0.01)
    signal.notify()
    async with asyncio.timeout(5):
        await waiting
    signal.notify()
    signal.notify()
    async with asyncio.timeout(5):
        await late.wait(30)  # two notifies since: one wait sees both
    started = asyncio.get_running_loop().time()
    await late.wait(0.05)
    assert asyncio.get_running_loop().time() - started >= 0.04
    await late.close()


async def test_polling_wake_ups_close_and_do_nothing_else():
    wake_ups = PollingWakeUps()
    await wake_ups.close()
    await wake_ups.wait(0)


@pytest.mark.parametrize("poll_interval", [0, -1, float("nan")])
def test_shared_wake_ups_name_a_bad_poll_interval(poll_interval):
    with pytest.raises(ConfigurationError) as raised:
        SharedWakeUps(PollingWakeUps(), poll_interval)
    assert str(raised.value) == (
        f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
    )


async def test_shared_wake_ups_poll_once_a_second_by_default_and_start_at_the_first_wait():
    source = Waits()
    shared = SharedWakeUps(source)
    listener = shared.listen()
    await asyncio.sleep(0.01)
    assert source.timeouts == []  # no wait, no task: no connection
    await listener.wait(0.01)
    await asyncio.sleep(0.01)
    assert source.timeouts[0] == 1.0
    await listener.close()
    await shared.close()
    assert source.closed == 1
    late = shared.listen()
    await late.wait(0.01)  # a closed shared listener starts nothing again
    assert source.closed == 1


async def test_a_shared_source_that_raises_is_logged_and_polled_again(caplog):
    class Failing:
        def __init__(self) -> None:
            self.calls = 0

        async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
            self.calls += 1
            raise RuntimeError("boom")

        async def close(self) -> None:
            return None

    source = Failing()
    shared = SharedWakeUps(source, poll_interval=0.02)
    with caplog.at_level(logging.ERROR, logger="cqrs.subscription"):
        await shared.listen().wait(0.1)
        await shared.close()
    assert source.calls >= 2
    failures = [r for r in caplog.records if r.name == "cqrs.subscription"]
    assert failures[0].getMessage() == "shared wake-ups failed; retrying in 0.02 s"
    assert failures[0].exc_info is not None
