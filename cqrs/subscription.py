"""Subscriptions: follow the global stream from a checkpoint, catching up and then live.

A subscription reads ``stream_all_events`` page by page from its position, and when it has
read everything it waits for a wake-up before reading again. Wake-ups are pushed where the
backend can push (a repository with a ``wake_ups()`` method, see :class:`WakeUps`) and are
always backed by polling every ``poll_interval`` seconds, so a lost notification, a killed
listening connection or a restarted server delays delivery by at most that long and never
hangs the subscription. Because positions only grow along the stream and once seen nothing
can appear at or below them (the port's global-order rule), a subscription never skips and
never repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Protocol, runtime_checkable

from cqrs import telemetry
from cqrs.errors import ConfigurationError, DatabaseConnectionError
from cqrs.repository import PersistedEventRepository, SerializedEvent

__all__ = [
    "LocalSignal",
    "PollingWakeUps",
    "SharedWakeUps",
    "Subscription",
    "WakeUpSource",
    "WakeUps",
]

logger = logging.getLogger("cqrs.subscription")


class WakeUps(Protocol):
    """Tells a subscription that new events may have been committed.

    :meth:`wait` returns when a wake-up arrived since the previous call returned (at once if
    one already did), or after ``timeout`` seconds, whichever is first; it never raises for
    a lost connection (it logs, reconnects later, and lets the timeout stand in).
    """

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        """Wait for a wake-up or the timeout."""
        ...

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        ...


@runtime_checkable
class WakeUpSource(Protocol):
    """A repository that can push wake-ups: ``wake_ups()`` returns a new, unconnected
    :class:`WakeUps` (no I/O; it connects on its first wait)."""

    def wake_ups(self) -> WakeUps:
        """A new listener for commits to this repository's events."""
        ...


class PollingWakeUps:
    """The wake-ups of a repository that cannot push: every wait lasts its timeout."""

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        """Sleep ``timeout`` seconds."""
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        """Nothing to close."""


class LocalSignal:
    """In-process wake-ups for backends whose commits this process makes (memory, SQLite):
    the repository calls :meth:`notify` after each commit, and each :meth:`listen` gives a
    :class:`WakeUps` that sees every notify made after it was created."""

    def __init__(self) -> None:
        self._generation = 0
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        """Wake every listener (call it after a commit; cheap when nobody listens)."""
        self._generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def listen(self) -> WakeUps:
        """A listener that sees the notifications from now on."""
        return _LocalWakeUps(self)

    def _event(self) -> asyncio.Event:
        # An asyncio.Event belongs to the loop that first waits on it: a signal that outlives
        # one event loop (say, one asyncio.run per test) makes a new one for the next loop.
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            self._changed, self._loop = asyncio.Event(), loop
        return self._changed


class _LocalWakeUps:
    def __init__(self, signal: LocalSignal) -> None:
        self._signal = signal
        self._seen = signal._generation  # noqa: SLF001 - same module

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        signal = self._signal
        if signal._generation == self._seen:  # noqa: SLF001 - same module
            event = signal._event()  # noqa: SLF001 - same module
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        self._seen = signal._generation  # noqa: SLF001 - same module

    async def close(self) -> None:
        return None


class SharedWakeUps:
    """One listener of a repository shared by many waiters in this process (a runner's
    projections): one LISTEN connection, one change stream, one ``data_version`` poller.

    ``source`` is the one listener (e.g. ``repository.wake_ups()``). A task started at the
    first wait of a listener waits on it in a loop, at most ``poll_interval`` seconds a time,
    and every wake-up it gets before that bound reaches every listener. Listeners made by
    :meth:`listen` keep the :class:`WakeUps` contract: their own timeout bounds each wait,
    so a lost push only delays them by the poll interval. :meth:`close` stops the task and
    closes ``source``.
    """

    def __init__(self, source: WakeUps, poll_interval: float = 1.0) -> None:
        if not poll_interval > 0:
            msg = f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            raise ConfigurationError(msg)
        self._source = source
        self._poll = float(poll_interval)
        self._signal = LocalSignal()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def listen(self) -> WakeUps:
        """A listener that sees the wake-ups from now on; its first wait starts the shared
        task (so a catch-up that never waits opens no connection)."""
        return _SharedListener(self, self._signal.listen())

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._source.wait(self._poll)
            except Exception:
                # The contract says a wait never raises; if one does, polling stands in.
                logger.exception("shared wake-ups failed; retrying in %.2f s", self._poll)
                await asyncio.sleep(self._poll)
                continue
            if time.monotonic() - started < self._poll * 0.95:  # a push, not the bound
                self._signal.notify()

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._source.close()


class _SharedListener:
    def __init__(self, shared: SharedWakeUps, listener: WakeUps) -> None:
        self._shared, self._listener = shared, listener

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        self._shared._start()  # noqa: SLF001 - same module
        await self._listener.wait(timeout)

    async def close(self) -> None:
        await self._listener.close()


class Subscription:
    """An async iterator over the stored events after ``after_position`` in global order,
    first catching up in pages, then following new commits live; it never ends by itself.

    ``types`` limits it to some aggregate types (None: every type). :attr:`position` is the
    position of the last event delivered: store it as the checkpoint and pass it as
    ``after_position`` to resume exactly after it. A ``DatabaseConnectionError`` while
    reading is logged on ``cqrs.subscription`` and retried with a growing delay (at most
    ``max_retry_delay`` seconds), so the subscription survives a server restart; any other
    error ends the iteration. Closing it (``await subscription.close()``, or leaving an
    ``async for`` with ``break``) stops its listener.
    """

    def __init__(
        self,
        repository: PersistedEventRepository,
        *,
        after_position: int | None = None,
        types: Collection[str] | None = None,
        poll_interval: float = 1.0,
        max_retry_delay: float = 5.0,
    ) -> None:
        if isinstance(types, str):
            msg = f"types must be a collection of aggregate types, not the string {types!r}"
            raise ConfigurationError(msg)
        if not poll_interval > 0 or not max_retry_delay > 0:
            msg = "poll_interval and max_retry_delay must be positive numbers of seconds"
            raise ConfigurationError(msg)
        self.repository = repository
        self.position = after_position or 0
        self.types = None if types is None else frozenset(types)
        self.poll_interval = float(poll_interval)
        self.max_retry_delay = float(max_retry_delay)
        self._wake_ups: WakeUps | None = None
        self._iterator: AsyncIterator[SerializedEvent] | None = None

    def __aiter__(self) -> AsyncIterator[SerializedEvent]:
        if self._iterator is None:
            self._iterator = self._follow()
        return self._iterator

    async def close(self) -> None:
        """Stop following (idempotent)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            await iterator.aclose()  # type: ignore[attr-defined]
        wake_ups, self._wake_ups = self._wake_ups, None
        if wake_ups is not None:
            await wake_ups.close()

    async def _follow(self) -> AsyncIterator[SerializedEvent]:
        repository = self.repository
        if isinstance(repository, WakeUpSource):
            self._wake_ups = repository.wake_ups()
        else:
            self._wake_ups = PollingWakeUps()
        wake_ups = self._wake_ups
        only = next(iter(self.types)) if self.types is not None and len(self.types) == 1 else None
        failures = 0
        try:
            while True:
                read = 0
                pages = telemetry.pages(repository)  # a span per page when tracing
                try:
                    async for event in repository.stream_all_events(only, self.position):
                        if failures:
                            logger.info("subscription reconnected at position %d", self.position)
                            telemetry.reconnected("subscription")
                            failures = 0
                        self.position = event.position
                        read += 1
                        pages.add(event)
                        if self.types is None or event.aggregate_type in self.types:
                            yield event
                except DatabaseConnectionError as error:
                    failures += 1
                    delay = min(self.max_retry_delay, 0.05 * 2**failures)
                    logger.warning(
                        "subscription after position %d lost its database (%s); retrying in %.2f s",
                        self.position,
                        error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                pages.flush()
                if failures:
                    logger.info("subscription reconnected at position %d", self.position)
                    telemetry.reconnected("subscription")
                    failures = 0
                if not read:
                    await wake_ups.wait(self.poll_interval)
                    telemetry.woke("subscription")
        finally:
            await wake_ups.close()
