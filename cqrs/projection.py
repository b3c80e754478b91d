"""Projections: read models that run on their own, from a checkpoint, in any process.

A :class:`Projection` names the aggregate types it reads (through the stores that decode
them) and handles batches of envelopes. A :class:`ProjectionRunner` runs many projections
concurrently: each one holds a lease in a :class:`~cqrs.checkpoints.CheckpointStore` (so
exactly one runner, in whatever process, moves it at a time), reads the global stream after
its checkpoint in batches, hands each batch to the projection, then saves the checkpoint
under its fencing token. When it has read everything it waits for a wake-up (pushed where
the backend can, polled otherwise), so it follows new commits live.

Delivery is at least once: a runner that dies after a batch took effect and before its
checkpoint was saved hands that batch to the next runner again, so handlers use the
envelope's ``event_id`` (or its ``position``) to be idempotent. :class:`ViewProjection`
does that for you: each view records the position of the last event applied to it, and
events at or below it are skipped, so every event takes effect on a view exactly once even
across crashes, restarts and a stale runner. When its views are in the events' database
(the checkpoint store is a :class:`~cqrs.checkpoints.ViewCheckpointStore`), a batch's view
changes and its checkpoint are also one transaction, checked against the fencing token:
one read of the views and one commit per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, runtime_checkable

from cqrs import telemetry
from cqrs.checkpoints import (
    CheckpointStore,
    Lease,
    ViewCheckpointStore,
    ViewWrite,
    check_lease_name,
)
from cqrs.errors import (
    AggregateConflict,
    ConfigurationError,
    DatabaseConnectionError,
    DeserializationError,
    LeaseLost,
)
from cqrs.events import EventEnvelope
from cqrs.repository import (
    BaseViewRepository,
    EventRow,
    PersistedEventRepository,
    SerializedEvent,
    ViewContext,
    ViewRepository,
    decode_view,
    row_event,
    row_events,
)
from cqrs.subscription import PollingWakeUps, SharedWakeUps, WakeUps, WakeUpSource

__all__ = [
    "AggregatePartition",
    "EventDecoder",
    "Projection",
    "ProjectionFailedError",
    "ProjectionRunner",
    "ProjectionStatus",
    "TransactionalProjection",
    "ViewProjection",
    "partition_of",
    "partitions",
]

V = TypeVar("V")

logger = logging.getLogger("cqrs.projections")

State = Literal["starting", "running", "standby", "stopped", "failed"]

_Rows = list[SerializedEvent] | list[EventRow]
"""A batch as read: SerializedEvents (``stream_all_events``), or EventRow tuples when the
repository has ``read_event_rows`` (see :class:`_Feed`)."""


class EventDecoder(Protocol):
    """Decodes the stored events of one aggregate type (a PersistedEventStore is one)."""

    @property
    def aggregate_type(self) -> str:
        """The aggregate type whose events this decodes."""
        ...

    def decode(self, row: SerializedEvent) -> EventEnvelope[Any]:
        """Upcast and decode one stored event; raise DeserializationError naming it."""
        ...


class Projection(Protocol):
    """A read model fed by a :class:`ProjectionRunner`.

    ``name`` identifies its checkpoint and lease (keep it stable; a new name starts from the
    beginning, which is how a projection is rebuilt into new tables). ``sources`` decode the
    aggregate types it reads; ``event_types`` (None: all) limits which events are handed to
    :meth:`handle`, while the checkpoint moves past the others too.
    """

    @property
    def name(self) -> str:
        """The projection's stable name."""
        ...

    @property
    def sources(self) -> Sequence[EventDecoder]:
        """The stores of the aggregate types it reads."""
        ...

    @property
    def event_types(self) -> Collection[str] | None:
        """The event types it handles (None: every event of its sources)."""
        ...

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        """Apply a batch of events, in global order. Raising retries the batch (see the
        runner's failure policy); the checkpoint moves only after this returns."""
        ...


@runtime_checkable
class TransactionalProjection(Projection, Protocol):
    """A projection whose effects can commit in one transaction with its checkpoint (exactly
    once): a runner whose checkpoint store :meth:`commits_with` says yes calls
    :meth:`handle_and_save` instead of ``handle`` and a separate checkpoint save.
    :class:`ViewProjection` is one, for views in the checkpoint store's database."""

    def commits_with(self, checkpoints: CheckpointStore) -> bool:
        """True if :meth:`handle_and_save` can use ``checkpoints`` (no I/O)."""
        ...

    async def handle_and_save(
        self,
        events: Sequence[EventEnvelope[Any]],
        checkpoints: CheckpointStore,
        lease: Lease,
        position: int,
    ) -> None:
        """Apply ``events`` and save ``position`` as the checkpoint under ``lease``, in one
        transaction: all or nothing; LeaseLost if the lease was taken over."""
        ...


class ProjectionFailedError(Exception):
    """A projection stopped on an event that kept failing (the runner's ``on_failure`` is
    ``"stop"``): ``position`` and ``event_id`` name the event, ``__cause__`` is the error."""

    def __init__(self, name: str, event: SerializedEvent, error: BaseException) -> None:
        super().__init__(
            f"projection {name!r} stopped at position {event.position} "
            f"({event.aggregate_type} {event.aggregate_id!r} sequence {event.sequence}, "
            f"event id {event.event_id}): {error!r}"
        )
        self.name = name
        self.position = event.position
        self.event_id = str(event.event_id)


@dataclass(slots=True)
class ProjectionStatus:
    """What a runner knows of one projection.

    ``state``: ``starting``, ``running`` (this runner holds the lease), ``standby`` (another
    runner holds it), ``stopped`` or ``failed`` (``error`` says why). ``checkpoint`` is the
    position of the last batch applied by this runner (or the stored one when it took the
    lease); ``saved`` the last checkpoint it stored (behind ``checkpoint`` by at most
    ``save_interval`` seconds of catch-up, see :class:`ProjectionRunner`); ``head`` the
    highest position this runner has read; ``lag_events`` the difference of ``head`` and
    ``checkpoint``; ``lag_seconds`` how old the oldest event not yet applied is (0 when
    caught up). ``caught_up`` is true after a read reached the end of the stream.
    """

    name: str
    state: State = "starting"
    checkpoint: int = 0
    saved: int = 0
    head: int = 0
    caught_up: bool = False
    error: str | None = None
    owner: str = ""
    token: int = 0
    batches: int = 0
    parked: int = 0
    behind_since: datetime | None = None
    _streams: int = field(default=0, repr=False)
    _saved_at: float = field(default=0.0, repr=False)
    _idle_reads: int = field(default=0, repr=False)

    @property
    def lag_events(self) -> int:
        """Positions read but not yet applied (a lower bound of the events behind)."""
        return max(0, self.head - self.checkpoint)

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest event read and not yet applied (0 when caught up)."""
        if self.behind_since is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.behind_since).total_seconds())


class ProjectionRunner:
    """Runs projections concurrently over one repository, each under a lease.

    ``checkpoints`` keeps their checkpoints, leases and parked events (normally in the
    events' database, from the backend). ``owner`` names this runner (default: host, pid
    and a random suffix). Each projection reads ``batch_size`` events per batch; its lease
    lasts ``lease_ttl`` seconds and is renewed at a third of that, so when a runner dies
    another takes over within about ``lease_ttl`` seconds. ``poll_interval`` bounds how
    late a commit is noticed when nothing pushes a wake-up; all projections share one
    listener of the repository (:class:`~cqrs.subscription.SharedWakeUps`).

    Reading: while a batch is decoded (a page at once, with the source's ``decode_all``
    when it has one) and handed over, the next batch is read. A repository with the
    optional ``read_event_rows`` (SQLite's) is read one batch per call as EventRow tuples,
    which a projection of every event of one type has decoded straight from the tuples
    (the source's ``decode_rows``); other projections get them as SerializedEvents. A
    repository whose reads are Python work of this process rather than a server's
    (SQLite's worker thread) sets ``reads_in_background = False``; the next read then
    starts once the batch is decoded.

    Checkpoints: a projection that commits with its checkpoint
    (:class:`TransactionalProjection`, e.g. a :class:`ViewProjection` whose views are in the
    checkpoint store's database) saves it with every batch, in the same transaction. Any
    other projection's checkpoint is saved after a batch that reached the end of the stream
    (so a projection following live saves every batch), and while it catches up at most
    every ``save_interval`` seconds (0: after every batch), and when it stops: a crash
    hands at most that much again to the next runner, which at-least-once delivery allows.

    Failures: a ``DatabaseConnectionError`` is retried until the database is back (logged on
    ``cqrs.projections``); any other error from decoding or ``handle`` retries the batch up to
    ``attempts`` times with a growing delay; after that, ``on_failure="stop"`` (the default)
    marks the projection failed (:class:`ProjectionFailedError` in its status) while the
    others go on, and ``"park"`` hands the batch over event by event, parks each event that
    still fails in the checkpoint store with its error, and goes on.

    :meth:`run` runs until :meth:`stop` (which lets the current batches finish) or until it
    is cancelled (the current batches are abandoned: their events come again).
    """

    def __init__(
        self,
        repository: PersistedEventRepository,
        checkpoints: CheckpointStore,
        projections: Sequence[Projection],
        *,
        owner: str | None = None,
        batch_size: int = 100,
        lease_ttl: float = 10.0,
        poll_interval: float = 1.0,
        attempts: int = 5,
        retry_delay: float = 0.05,
        on_failure: Literal["stop", "park"] = "stop",
        save_interval: float = 1.0,
    ) -> None:
        names = [check_lease_name(p.name) for p in projections]
        if len(set(names)) != len(names):
            msg = f"projection names must be unique: {sorted(names)}"
            raise ConfigurationError(msg)
        for projection in projections:
            if not projection.sources:
                msg = f"projection {projection.name!r} reads no aggregate type (no sources)"
                raise ConfigurationError(msg)
        if not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be a positive int, not {batch_size!r}"
            raise ConfigurationError(msg)
        if not lease_ttl > 0 or not poll_interval > 0 or not retry_delay >= 0 or attempts < 1:
            msg = "lease_ttl and poll_interval must be > 0, retry_delay >= 0, attempts >= 1"
            raise ConfigurationError(msg)
        if not isinstance(save_interval, int | float) or not save_interval >= 0:
            msg = f"save_interval must be a number of seconds >= 0, not {save_interval!r}"
            raise ConfigurationError(msg)
        if on_failure not in ("stop", "park"):
            msg = f"on_failure must be 'stop' or 'park', not {on_failure!r}"
            raise ConfigurationError(msg)
        self.repository = repository
        self.checkpoints = checkpoints
        self.projections = tuple(projections)
        self.owner = check_lease_name(owner or _default_owner(), "owner")
        self.batch_size = batch_size
        self.lease_ttl = float(lease_ttl)
        self.poll_interval = float(poll_interval)
        self.attempts = attempts
        self.retry_delay = float(retry_delay)
        self.on_failure = on_failure
        self.save_interval = float(save_interval)
        self._statuses = {p.name: ProjectionStatus(p.name, owner=self.owner) for p in projections}
        self._atomic = {
            p.name: isinstance(p, TransactionalProjection) and p.commits_with(checkpoints)
            for p in projections
        }
        self._read_early = getattr(repository, "reads_in_background", True) is not False
        self._stopping = asyncio.Event()
        self._progress = asyncio.Condition()
        telemetry.watch(self)  # the projection lag gauges, when metrics are configured

    # -- public API --------------------------------------------------------------------------

    def status(self) -> dict[str, ProjectionStatus]:
        """The status of every projection, by name (live objects: read, don't change)."""
        return dict(self._statuses)

    def stop(self) -> None:
        """Ask :meth:`run` to return once the current batches are done (e.g. on SIGTERM:
        ``loop.add_signal_handler(signal.SIGTERM, runner.stop)``)."""
        self._stopping.set()

    async def run(self) -> None:
        """Run every projection until :meth:`stop` or cancellation; leases are released on
        the way out so another runner takes over at once."""
        self._stopping.clear()
        repository = self.repository
        # One listener for all the projections (one LISTEN connection, one change stream).
        shared = (
            SharedWakeUps(repository.wake_ups(), self.poll_interval)
            if isinstance(repository, WakeUpSource)
            else None
        )
        tasks = [
            asyncio.create_task(self._run_one(p, shared), name=p.name) for p in self.projections
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if shared is not None:
                await shared.close()

    async def wait_for(self, position: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - documented bound
        """Wait until every projection run here has applied everything up to ``position``
        (e.g. the position of an event just committed: read-your-writes), or has read all
        there is; raise TimeoutError after ``timeout`` seconds. Projections that another
        runner runs count when their stored checkpoint reaches ``position``."""
        # Done once a read that started after this call found the end of the stream.
        marks = {name: status._streams for name, status in self._statuses.items()}  # noqa: SLF001 - same module

        def done(name: str, status: ProjectionStatus) -> bool:
            if status.state == "failed":
                raise RuntimeError(f"projection {name!r} failed: {status.error}")
            return status.checkpoint >= position or status._idle_reads > marks[name]  # noqa: SLF001

        async with asyncio.timeout(timeout):
            while True:
                pending = [n for n, s in self._statuses.items() if not done(n, s)]
                standby = [n for n in pending if self._statuses[n].state == "standby"]
                for name in standby:
                    if await self.checkpoints.position(name) >= position:
                        pending.remove(name)
                if not pending:
                    return
                async with self._progress:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._progress.wait(), self.poll_interval)

    # -- one projection ------------------------------------------------------------------------

    async def _run_one(self, projection: Projection, shared: SharedWakeUps | None) -> None:
        status = self._statuses[projection.name]
        while not self._stopping.is_set():
            try:
                lease = await self.checkpoints.acquire(projection.name, self.owner, self.lease_ttl)
            except DatabaseConnectionError as error:
                logger.warning("projection %r cannot reach its checkpoints: %s", status.name, error)
                await self._pause(self.lease_ttl / 3)
                continue
            if lease is None:
                status.state = "standby"
                await self._notify()
                await self._pause(min(self.lease_ttl / 3, self.poll_interval * 5))
                continue
            status.state, status.token, status.error = "running", lease.token, None
            status.checkpoint = status.saved = lease.position
            status._saved_at = time.monotonic()  # noqa: SLF001 - same module
            logger.info(
                "projection %r runs here (%s, token %d) from position %d",
                status.name,
                self.owner,
                lease.token,
                lease.position,
            )
            wake_ups = PollingWakeUps() if shared is None else shared.listen()
            try:
                await self._follow(projection, lease, status, wake_ups)
            except LeaseLost as error:
                logger.warning("%s", error)
                status.state = "standby"
                continue
            except ProjectionFailedError as error:
                logger.error("%s", error)  # noqa: TRY400 - the cause is logged with the retries
                status.state, status.error = "failed", str(error)
                await self._notify()
                with contextlib.suppress(Exception):
                    await self.checkpoints.release(lease)
                return
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.checkpoints.release(lease))
                raise
            with contextlib.suppress(Exception):
                await self.checkpoints.release(lease)
        status.state = "stopped"
        await self._notify()

    async def _follow(
        self, projection: Projection, lease: Lease, status: ProjectionStatus, wake_ups: WakeUps
    ) -> None:
        position = lease.position
        renewed = time.monotonic()
        failures = 0
        feed = self._feed(projection, status, position)
        try:
            while not self._stopping.is_set():
                if time.monotonic() - renewed > self.lease_ttl / 3:
                    if not await self.checkpoints.renew(lease, self.lease_ttl):
                        msg = (
                            f"projection {lease.name!r}: the lease of {lease.owner!r} "
                            f"(token {lease.token}) was taken over"
                        )
                        raise LeaseLost(msg)
                    renewed = time.monotonic()
                try:
                    moved, ended = await self._batch(projection, lease, status, feed)
                except DatabaseConnectionError as error:
                    failures += 1
                    logger.warning("projection %r lost its database: %s", status.name, error)
                    await feed.close()
                    feed = self._feed(projection, status, position)
                    await self._pause(min(5.0, self.retry_delay * 2**failures))
                    continue
                if failures:
                    logger.info("projection %r reached its database again", status.name)
                    telemetry.reconnected(status.name)
                failures = 0
                if moved is not None:
                    position = moved  # a checkpoint write does not extend the lease: renew above
                if ended:
                    await wake_ups.wait(self.poll_interval)
                    telemetry.woke(status.name)
            if status.saved < status.checkpoint:  # a graceful stop in the middle of a catch-up
                await self._save(lease, status)
        finally:
            await feed.close()
            await wake_ups.close()

    def _feed(self, projection: Projection, status: ProjectionStatus, position: int) -> _Feed:
        types = {source.aggregate_type for source in projection.sources}
        only = next(iter(types)) if len(types) == 1 else None
        return _Feed(self.repository, only, position, self.batch_size, status)

    async def run_once(self) -> int:
        """Apply at most one batch of each projection whose lease this runner can take now,
        and release the leases; return how many positions the checkpoints moved in all.
        For scripts, cron jobs and tests; :meth:`run` is the long-running way."""
        moved = 0
        for projection in self.projections:
            status = self._statuses[projection.name]
            lease = await self.checkpoints.acquire(projection.name, self.owner, self.lease_ttl)
            if lease is None:
                status.state = "standby"
                continue
            status.checkpoint = status.saved = lease.position
            status.token = lease.token
            feed = self._feed(projection, status, lease.position)
            try:
                position, _ = await self._batch(projection, lease, status, feed, ahead=False)
            except ProjectionFailedError as error:
                status.state, status.error = "failed", str(error)
                raise
            finally:
                await feed.close()
                await self.checkpoints.release(lease)
            if position is not None:
                moved += position - lease.position
        return moved

    async def _batch(
        self,
        projection: Projection,
        lease: Lease,
        status: ProjectionStatus,
        feed: _Feed,
        *,
        ahead: bool = True,
    ) -> tuple[int | None, bool]:
        """Read, apply and checkpoint the next batch of ``feed``; return the new checkpoint
        (None when there was nothing to read) and whether the read reached the end of the
        stream. With ``ahead`` (in :meth:`run`), the batch after it is read while this one
        is decoded and handed over (only handed over when the repository's reads are not in
        the background: see :class:`_Feed`), and a checkpoint that is not saved with the
        batch may wait for ``save_interval``; without, it is saved now."""
        batch, ended = await feed.batch()
        if ahead and self._read_early:
            await feed.read_ahead()
        if not batch:
            if status.saved < status.checkpoint:  # the last full batch was the end
                await self._save(lease, status)
            self._caught_up(status, feed)
            await self._notify()
            return None, ended
        status.caught_up = False
        decoders = {source.aggregate_type: source for source in projection.sources}
        wanted: _Rows
        if feed.raw:
            raw = cast("list[EventRow]", batch)
            first = row_event(raw[0])
            position = raw[-1][9]
            if _whole_page(projection, decoders, one_type=feed.only is not None):
                wanted = raw  # decoded straight from the tuples (decode_rows)
            else:
                rows = row_events(raw)
                wanted = _wanted(projection, decoders, rows, one_type=feed.only is not None)
        else:
            rows = cast("list[SerializedEvent]", batch)
            first, position = rows[0], rows[-1].position
            wanted = _wanted(projection, decoders, rows, one_type=feed.only is not None)
        status.head = max(status.head, position)
        status.behind_since = first.timestamp
        decoded = feed.read_ahead if ahead else None
        if not wanted and decoded is not None:
            await decoded()
        saved = bool(wanted) and await telemetry.within(  # a span per batch when tracing
            # EventRow tuples only when tracing is off: then it only counts them.
            telemetry.batch(projection.name, cast("list[SerializedEvent]", wanted)),
            self._apply(
                projection,
                lease,
                decoders,
                wanted,
                status=status,
                position=position,
                decoded=decoded,
            ),
        )
        status.checkpoint, status.batches = position, status.batches + 1
        if saved:
            status.saved, status._saved_at = position, time.monotonic()  # noqa: SLF001
        elif ended or not ahead or time.monotonic() - status._saved_at >= self.save_interval:  # noqa: SLF001
            await self._save(lease, status)
        if ended:
            self._caught_up(status, feed)
        await self._notify()
        return position, ended

    async def _save(self, lease: Lease, status: ProjectionStatus) -> None:
        """Store the applied position as the checkpoint (LeaseLost if fenced off)."""
        position = status.checkpoint
        await self.checkpoints.save(lease, position)
        status.saved, status._saved_at = position, time.monotonic()  # noqa: SLF001 - same module

    @staticmethod
    def _caught_up(status: ProjectionStatus, feed: _Feed) -> None:
        """A read that started at stream number ``feed.stream`` found everything there was."""
        status.caught_up, status.behind_since = True, None
        status._idle_reads = max(status._idle_reads, feed.stream)  # noqa: SLF001 - same module

    async def _apply(
        self,
        projection: Projection,
        lease: Lease,
        decoders: dict[str, EventDecoder],
        batch: _Rows,
        *,
        status: ProjectionStatus,
        position: int,
        decoded: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Hand ``batch`` over; return True if the checkpoint is saved at ``position`` too
        (a transactional projection, in the same transaction), False if the caller saves
        it."""
        atomic = self._atomic[projection.name]
        error = await self._try(
            projection,
            lease,
            decoders,
            batch,
            status=status,
            save_at=position if atomic else None,
            decoded=decoded,
        )
        if error is None:
            return atomic
        rows = _events(batch)
        # One by one, so the events before the failing one take effect and only the events
        # that fail are parked, or the projection stops right before the first of them.
        for index, row in enumerate(rows):
            single = (
                error
                if len(rows) == 1
                else await self._try(
                    projection,
                    lease,
                    decoders,
                    [row],
                    status=status,
                    save_at=row.position if atomic else None,
                    decoded=decoded,
                )
            )
            if single is None:
                continue
            if self.on_failure == "stop":
                if index:
                    status.checkpoint = rows[index - 1].position
                if status.saved < status.checkpoint:
                    await self._save(lease, status)
                raise ProjectionFailedError(projection.name, row, single) from single
            await self.checkpoints.park(lease, row, repr(single))
            status.parked += 1
            logger.error(
                "projection %r parked the event at position %d: %r",
                projection.name,
                row.position,
                single,
            )
        return False

    async def _try(
        self,
        projection: Projection,
        lease: Lease,
        decoders: dict[str, EventDecoder],
        rows: _Rows,
        *,
        status: ProjectionStatus,
        save_at: int | None,
        decoded: Callable[[], Awaitable[None]] | None = None,
    ) -> Exception | None:
        """Decode and hand over ``rows`` (and with ``save_at``, save that checkpoint in the
        same transaction), retrying; return the error that remained after ``attempts``.
        ``decoded`` is awaited once the rows are decoded, before they are handed over."""
        attempt = 0
        while True:
            try:
                envelopes = _decode(decoders, rows)
                if decoded is not None:
                    await decoded()
                if save_at is None:
                    await projection.handle(envelopes)
                else:
                    transactional: TransactionalProjection = projection  # type: ignore[assignment]
                    await transactional.handle_and_save(envelopes, self.checkpoints, lease, save_at)
            except LeaseLost:
                raise
            except DatabaseConnectionError as error:
                logger.warning("projection %r lost its database: %s", status.name, error)
                await self._pause(min(5.0, self.retry_delay * 2 ** min(attempt, 10)))
                attempt += 1
                continue
            except Exception as error:  # noqa: BLE001 - the failure policy decides
                attempt += 1
                logger.warning(
                    "projection %r failed on %d event(s) from position %d (try %d of %d): %r",
                    status.name,
                    len(rows),
                    _events(rows[:1])[0].position,
                    attempt,
                    self.attempts,
                    error,
                )
                if attempt >= self.attempts:
                    return error
                await self._pause(random.uniform(0, self.retry_delay * 2**attempt))  # noqa: S311 - jitter
                continue
            return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()


class _Feed:
    """A projection's events after a position, in batches of at most ``size``: one
    ``stream_all_events`` read until it ends (so a page is never read twice for small
    batches), and, when asked (:meth:`read_ahead`), the next batch read while the caller
    hands this one over.

    The runner asks as soon as a batch arrives when a database server answers the read
    while this process works (the default), so the query overlaps decoding and handling.
    A repository whose reads are Python work of this process says so with
    ``reads_in_background = False`` (SQLite: its worker thread builds each row under the
    GIL): reading while decoding would only make the two take turns on the GIL (measured:
    slower than not reading ahead at all), so the runner asks once the batch is decoded,
    and the read overlaps only what the projection awaits (its own writes, the checkpoint).

    A repository with the optional ``read_event_rows`` (see
    :class:`~cqrs.repository.PersistedEventRepository`) is read with it instead, one batch
    per call: the batches are then :data:`~cqrs.repository.EventRow` tuples (``raw``),
    which a projection of all of one type's events has decoded straight from the tuples."""

    def __init__(
        self,
        repository: PersistedEventRepository,
        only: str | None,
        position: int,
        size: int,
        status: ProjectionStatus,
    ) -> None:
        self._repository, self.only, self._size = repository, only, size
        self._position = position
        self._status = status
        self._stream: AsyncIterator[SerializedEvent] | None = None
        self._ahead: asyncio.Task[tuple[_Rows, bool]] | None = None
        self._reader: Callable[[str | None, int, int], Awaitable[list[EventRow]]] | None = getattr(
            repository, "read_event_rows", None
        )
        self.raw = self._reader is not None
        """True if batches are EventRow tuples, False if SerializedEvents."""
        self._ended = False
        self.stream = 0
        """The number (in ``status``) of the stream the last batch came from."""

    async def batch(self) -> tuple[_Rows, bool]:
        """The next batch, and whether its stream ended with it (everything visible when it
        was read is in it or before it)."""
        task, self._ahead = self._ahead, None
        rows, self._ended = await (task if task is not None else self._take())
        if rows:
            last = rows[-1]
            self._position = last[9] if isinstance(last, tuple) else last.position
        return rows, self._ended

    async def read_ahead(self) -> None:
        """Start reading the batch after the last one, unless its stream ended or that read
        is already started."""
        if self._ahead is None and not self._ended:
            self._ahead = asyncio.create_task(self._take())
            await asyncio.sleep(0)  # let it send its read before the caller goes on

    async def _take(self) -> tuple[_Rows, bool]:
        reader = self._reader
        if reader is not None:  # one read per batch: each is a stream of its own
            self._status._streams += 1  # noqa: SLF001 - same module
            self.stream = self._status._streams  # noqa: SLF001 - same module
            page = await reader(self.only, self._position, self._size)
            return page, len(page) < self._size
        if self._stream is None:
            self._status._streams += 1  # noqa: SLF001 - same module
            self.stream = self._status._streams  # noqa: SLF001 - same module
            self._stream = aiter(self._repository.stream_all_events(self.only, self._position))
        stream, left = self._stream, self._size
        rows: list[SerializedEvent] = []
        append = rows.append
        try:
            async for row in stream:
                append(row)
                left -= 1
                if not left:
                    return rows, False
        except BaseException:
            await self._close_stream()
            raise
        self._stream = None
        return rows, True

    async def close(self) -> None:
        """Stop reading ahead and close the stream (idempotent)."""
        task, self._ahead = self._ahead, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._close_stream()

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


def _wanted(
    projection: Projection,
    decoders: dict[str, EventDecoder],
    rows: list[SerializedEvent],
    *,
    one_type: bool,
) -> list[SerializedEvent]:
    """The rows ``projection`` is handed: of its sources' types (all of them when the
    stream was read for its ``one_type``), of its event types, and of its partition."""
    event_types = projection.event_types
    if event_types is None:
        wanted = rows if one_type else [row for row in rows if row.aggregate_type in decoders]
    else:
        wanted = [
            row for row in rows if row.event_type in event_types and row.aggregate_type in decoders
        ]
    if isinstance(projection, AggregatePartition):
        return [row for row in wanted if projection.accepts(row.aggregate_id)]
    return wanted


def _whole_page(
    projection: Projection, decoders: dict[str, EventDecoder], *, one_type: bool
) -> bool:
    """True if ``projection`` is handed every event of a batch read for its one type, and
    its decoder decodes EventRow tuples (``decode_rows``): the batch then stays tuples,
    unless tracing wants the rows (a span links the commits of its events)."""
    return (
        one_type
        and projection.event_types is None
        and not isinstance(projection, AggregatePartition)
        and len(decoders) == 1
        and all(hasattr(decoder, "decode_rows") for decoder in decoders.values())
        and telemetry.tracer() is None
    )


def _events(rows: _Rows) -> list[SerializedEvent]:
    """``rows`` as SerializedEvents (EventRow tuples converted)."""
    if rows and isinstance(rows[0], tuple):
        return row_events(rows)
    return cast("list[SerializedEvent]", rows)


def _decode(decoders: dict[str, EventDecoder], rows: _Rows) -> list[Any]:
    """The envelopes of ``rows`` (each of a type in ``decoders``), in order: EventRow
    tuples with the one decoder's ``decode_rows`` (see :func:`_whole_page`); else a page at
    once when one decoder has ``decode_all`` (a PersistedEventStore), else row by row."""
    if rows and isinstance(rows[0], tuple):
        (decoder,) = decoders.values()
        decoded: list[Any] = getattr(decoder, "decode_rows")(rows)  # noqa: B009 - optional
        return decoded
    rows = cast("list[SerializedEvent]", rows)
    if len(decoders) == 1:
        (decoder,) = decoders.values()
        decode_all = getattr(decoder, "decode_all", None)
        if decode_all is not None:
            envelopes: list[Any] = decode_all(rows)
            return envelopes
        decode = decoder.decode
        return [decode(row) for row in rows]
    return [decoders[row.aggregate_type].decode(row) for row in rows]


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ViewProjection(Generic[V]):
    """A projection that keeps views keyed by ids it chooses, each event applied exactly once.

    ``key(envelope)`` gives the ids of the views an event changes (a string, several, or
    None for none): one per account, per ATM, per day, or one overall. ``update(view,
    envelope)`` changes a view; ``view_type()`` is the empty view. Each stored view's version
    is the position of the last event applied to it, so an event at or below it is skipped:
    a batch handed over again after a crash, or written by a stale runner, changes nothing
    twice. Views go to any :class:`~cqrs.repository.ViewRepository`, in the events' database
    or elsewhere. In the events' database (a view repository made by the repository whose
    checkpoint store the runner uses), a runner hands each batch to :meth:`handle_and_save`:
    the views the batch changes are read at once, changed in memory and written with the
    checkpoint in one transaction; elsewhere, :meth:`handle` writes each view on its own and
    the runner saves the checkpoint after.
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[EventDecoder],
        view_repository: ViewRepository[V],
        view_type: Callable[[], V],
        *,
        key: Callable[[EventEnvelope[Any]], str | Iterable[str] | None],
        update: Callable[[V, EventEnvelope[Any]], None],
        event_types: Collection[str] | None = None,
        attempts: int = 20,
    ) -> None:
        self._name = check_lease_name(name)
        if not isinstance(attempts, int) or attempts < 1:
            msg = f"ViewProjection attempts must be at least 1, not {attempts!r}"
            raise ConfigurationError(msg)
        self._sources = tuple(sources)
        self._event_types = None if event_types is None else frozenset(event_types)
        self.view_repository = view_repository
        self.view_type = view_type
        self.key = key
        self.update = update
        self.attempts = attempts
        self.partition: tuple[int, int] | None = None
        """``(index, count)`` for one of :meth:`partitions`, else None."""

    @property
    def name(self) -> str:
        """The projection's name."""
        return self._name

    @property
    def sources(self) -> Sequence[EventDecoder]:
        """The stores it reads."""
        return self._sources

    @property
    def event_types(self) -> Collection[str] | None:
        """The event types it handles (None: all)."""
        return self._event_types

    def renamed(self, name: str, view_repository: ViewRepository[V]) -> ViewProjection[V]:
        """The same projection under another name, into other views: what a rebuild without
        downtime runs next to this one (see :func:`cqrs.rebuild.rebuild`)."""
        return ViewProjection(
            name,
            self._sources,
            view_repository,
            self.view_type,
            key=self.key,
            update=self.update,
            event_types=self._event_types,
            attempts=self.attempts,
        )

    def partitions(self, count: int) -> list[ViewProjection[V]]:
        """The projection split in ``count`` partitions named ``<name>.<i>of<count>``, each
        with its own checkpoint and lease: run them in one runner, or spread them over
        processes to share the view writes. Partition ``i`` keeps the views whose id
        :func:`partition_of` gives ``i``, so each view is written by one partition only, in
        global order, and the views equal those of the whole projection. Every partition
        reads and decodes every event (keys are computed from envelopes)."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            msg = f"a projection splits into a positive number of partitions, not {count!r}"
            raise ConfigurationError(msg)
        parts = []
        for index in range(count):
            part = self.renamed(f"{self._name}.{index}of{count}", self.view_repository)
            part.partition = (index, count)
            parts.append(part)
        return parts

    def commits_with(self, checkpoints: CheckpointStore) -> bool:
        """True if ``checkpoints`` keeps this projection's views in its own database (a
        :class:`~cqrs.checkpoints.ViewCheckpointStore`): a runner then commits each batch's
        view changes and checkpoint in one transaction (:meth:`handle_and_save`)."""
        return (
            isinstance(checkpoints, ViewCheckpointStore)
            and isinstance(self.view_repository, BaseViewRepository)
            and checkpoints.shares_database(self.view_repository)
        )

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        """Apply the events to the views their keys name, one write per view per batch."""
        for view_id, envelopes in self._by_view(events).items():
            await self._apply(view_id, envelopes)

    async def handle_and_save(
        self,
        events: Sequence[EventEnvelope[Any]],
        checkpoints: CheckpointStore,
        lease: Lease,
        position: int,
    ) -> None:
        """Apply the events to their views and save ``position`` as the checkpoint under
        ``lease``, in one transaction of ``checkpoints`` (for which :meth:`commits_with` is
        true): one read of the views the batch changes, one commit. A view changed by
        another writer meanwhile makes the batch start over (up to ``attempts`` times);
        LeaseLost means nothing was stored."""
        views = self.view_repository
        if not isinstance(checkpoints, ViewCheckpointStore) or not isinstance(
            views, BaseViewRepository
        ):
            msg = f"projection {self._name!r}: {checkpoints!r} cannot store its views"
            raise ConfigurationError(msg)
        by_view = self._by_view(events)
        for attempt in range(self.attempts):
            stored = await checkpoints.fetch_views(views, list(by_view)) if by_view else {}
            writes = []
            for view_id, envelopes in by_view.items():
                row = stored.get(view_id)
                if row is None:
                    view, version = self.view_type(), 0
                else:
                    view, version = _decode_row(views, view_id, row)
                if envelopes[-1].position <= version:
                    continue
                if envelopes[0].position <= version:
                    envelopes = [e for e in envelopes if e.position > version]  # noqa: PLW2901
                for envelope in envelopes:
                    self.update(view, envelope)
                payload = views.codec.encode(view)
                writes.append(ViewWrite(view_id, payload, envelopes[-1].position, version))
            try:
                await checkpoints.save_with_views(lease, position, views, writes)
            except AggregateConflict:
                # Another writer (a rebuild, a projection outside this runner) changed a view.
                await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))  # noqa: S311
                continue
            return
        msg = f"the views of projection {self._name!r} kept changing under it"
        raise AggregateConflict(msg)

    def _by_view(self, events: Sequence[EventEnvelope[Any]]) -> dict[str, list[EventEnvelope[Any]]]:
        by_view: dict[str, list[EventEnvelope[Any]]] = {}
        key = self.key
        for envelope in events:
            keys = key(envelope)
            if keys is None:
                continue
            if isinstance(keys, str):
                by_view.setdefault(keys, []).append(envelope)
                continue
            for view_id in keys:
                by_view.setdefault(view_id, []).append(envelope)
        if self.partition is not None:
            index, count = self.partition
            return {k: v for k, v in by_view.items() if partition_of(k, count) == index}
        return by_view

    async def _apply(self, view_id: str, envelopes: list[EventEnvelope[Any]]) -> None:
        for attempt in range(self.attempts):
            loaded = await self.view_repository.load_with_context(view_id)
            context: ViewContext | None = None
            if loaded is None:
                view, version = self.view_type(), 0
            else:
                view, context = loaded
                version = context.version
            fresh = [e for e in envelopes if e.position > version]
            if not fresh:
                return
            for envelope in fresh:
                self.update(view, envelope)
            try:
                await self.view_repository.update_view(
                    view, context or ViewContext(view_id, 0), fresh[-1].position
                )
            except AggregateConflict:
                # Another runner (a stale one, or a rebuild) wrote this view in between.
                await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))  # noqa: S311
                continue
            return
        msg = f"view {view_id!r} kept changing under projection {self._name!r}"
        raise AggregateConflict(msg)


def _decode_row(
    views: BaseViewRepository[V], view_id: str, row: tuple[object, object]
) -> tuple[V, int]:
    """A fetched view row decoded as ``views.load_with_context`` would, with its version."""
    payload, version = row
    where = f"view {view_id!r} in {views.table} (version {version!r})"
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        msg = f"{where} does not decode: its version is not a positive int"
        raise DeserializationError(msg)
    if not isinstance(payload, bytes | str):
        msg = f"{where} does not decode: its payload is {type(payload).__name__}, not JSON"
        raise DeserializationError(msg)
    return decode_view(views.codec, payload, views.view_type, where), version


def partition_of(key: str, count: int) -> int:
    """The partition (0 to ``count - 1``) of a view id or aggregate id: a stable hash (CRC-32
    of its UTF-8 bytes), the same in every process and Python version."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count


def partitions(projection: Projection, count: int) -> list[Projection]:
    """``projection`` split in ``count`` partitions, each with its own name
    (``<name>.<i>of<count>``), checkpoint and lease, so up to ``count`` runners (in any
    processes) share its work. A :class:`ViewProjection` splits by view id
    (:meth:`ViewProjection.partitions`); any other projection by aggregate id: partition
    ``i`` is handed, in global order, the events of the aggregates whose id
    :func:`partition_of` gives ``i`` (so each aggregate's events in their order), and the
    others are neither decoded nor handed over. The partitions share ``projection``'s
    ``handle``: when several run in one process, it must allow concurrent calls."""
    if isinstance(projection, ViewProjection):
        return list(projection.partitions(count))
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        msg = f"a projection splits into a positive number of partitions, not {count!r}"
        raise ConfigurationError(msg)
    return [AggregatePartition(projection, index, count) for index in range(count)]


class AggregatePartition:
    """Partition ``index`` of ``count`` of ``projection`` by aggregate id (see
    :func:`partitions`): a projection named ``<name>.<index>of<count>``."""

    def __init__(self, projection: Projection, index: int, count: int) -> None:
        if not 0 <= index < count:
            msg = f"partition {index!r} is not one of 0 to {count - 1}"
            raise ConfigurationError(msg)
        self.projection = projection
        self.index, self.count = index, count
        self._name = check_lease_name(f"{projection.name}.{index}of{count}")

    @property
    def name(self) -> str:
        """``<name>.<index>of<count>``."""
        return self._name

    @property
    def sources(self) -> Sequence[EventDecoder]:
        """The whole projection's sources."""
        return self.projection.sources

    @property
    def event_types(self) -> Collection[str] | None:
        """The whole projection's event types."""
        return self.projection.event_types

    def accepts(self, aggregate_id: str) -> bool:
        """True for the aggregates of this partition."""
        return partition_of(aggregate_id, self.count) == self.index

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        """Hand this partition's events to the projection."""
        await self.projection.handle(events)
