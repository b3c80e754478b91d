"""``cqrs copy``: copy a store's events and snapshots to another store, resumably.

Events are read from the source in global order and written to the target in the same order,
keeping aggregate types and ids, sequences, event types and versions, payloads, metadata,
timestamps and event ids exactly (positions are the target's own, in the same order). Chunks
are written whole: with the target's ``import_events`` (see :mod:`cqrs.cli.capabilities`) one
transaction per chunk, else one ``persist`` per run of one aggregate's events.

Resuming: after each chunk the source position it ended at is saved in the target, as the
checkpoint of a lease named after the source (table ``cqrs_copy``, see
:meth:`~cqrs.repository.PersistedEventRepository.checkpoint_store`). A copy that is killed
starts again from that checkpoint; the events of the chunk in flight may be stored already,
and are recognized by their event ids and skipped (``persist`` and ``import_events`` are
idempotent by event id), so nothing is stored twice. A second copy into the same target
from the same source takes the lease over and the first one stops.

Snapshots: when an aggregate is first seen in a run, its snapshot in the source is read; it
is written with the chunk whose events reach its ``last_sequence`` (read once more then), so
a snapshot is never ahead of its events and is read at most twice per aggregate. A snapshot
the source takes after that (it is being written to) is not copied: snapshots are a cache.

The end: counts and a checksum (:class:`Checksum`) of the source's and the target's streams
(of ``aggregate_type``, if given) are compared; they differ when the target held other
events before, or something went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cqrs.checkpoints import CheckpointStore, Lease
from cqrs.cli.capabilities import ImportsEvents, count_events
from cqrs.connection import redact_url
from cqrs.errors import AggregateConflict, CqrsError, LeaseLost
from cqrs.repository import PersistedEventRepository, SerializedEvent, SerializedSnapshot

__all__ = [
    "COPY_TABLE",
    "Checksum",
    "CopyError",
    "CopyReport",
    "checksum_of",
    "copy_events",
    "copy_name",
]

COPY_TABLE = "cqrs_copy"
"""The checkpoint table in the target where a copy records how far it got."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LEASE_TTL = 60.0

Progress = Callable[[int], None]
"""Called with the number of source events handled since the last call."""


class CopyError(CqrsError):
    """The copy cannot go on: the target holds different events, or another copy took over."""


class Checksum:
    """An order-sensitive BLAKE2b digest of events as stored: aggregate type and id,
    sequence, event type and version, timestamp (UTC, in microseconds), event id (its text
    form), and the payload and metadata JSON text exactly. Positions are not included (each
    store has its own), so two stores holding the same events in the same order agree."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.count = 0

    def add(self, event: SerializedEvent) -> None:
        """Add the next event of the stream."""
        timestamp = event.timestamp
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        micros = (timestamp - _EPOCH) // _MICROSECOND
        head = (
            f"{event.aggregate_type}\x1f{event.aggregate_id}\x1f{event.sequence}\x1f"
            f"{event.event_type}\x1f{event.event_version}\x1f{micros}\x1f{event.event_id}\x1f"
        )
        update = self._hash.update
        update(head.encode("utf-8", "surrogatepass"))
        update(_bytes(event.payload))
        update(b"\x1f")
        update(_bytes(event.metadata))
        update(b"\x1e")
        self.count += 1

    def hexdigest(self) -> str:
        """The digest so far, as hex."""
        return self._hash.hexdigest()


def _bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")


async def checksum_of(
    repository: PersistedEventRepository,
    aggregate_type: str | None,
    progress: Progress | None = None,
) -> Checksum:
    """The :class:`Checksum` of the repository's stream (of ``aggregate_type``, or all)."""
    checksum = Checksum()
    async for event in repository.stream_all_events(aggregate_type):
        checksum.add(event)
        if progress is not None and checksum.count % 1000 == 0:
            progress(1000)
    if progress is not None and checksum.count % 1000:
        progress(checksum.count % 1000)
    return checksum


def copy_name(source_url: str, aggregate_type: str | None) -> str:
    """The checkpoint name of a copy from ``source_url`` (redacted) of ``aggregate_type``
    (every type for None); long names are shortened with a digest."""
    name = f"copy from {redact_url(source_url)}" + (
        "" if aggregate_type is None else f" type {aggregate_type}"
    )
    if len(name) > 200:  # noqa: PLR2004 - the checkpoint store's limit
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        name = name[:180] + " " + digest
    return name


@dataclass
class CopyReport:
    """What a copy did and what its verification found.

    ``read``: source events this run handled; ``written``: those it stored (through
    ``persist`` alone, a run of events found stored already counts as written, since
    ``persist`` does not tell); ``snapshots``: snapshots sent with them; ``seconds``: the
    copy without the verification; the counts and checksums: both sides' streams (of
    ``aggregate_type``) after the copy."""

    source: str
    target: str
    aggregate_type: str | None
    resumed_after: int
    read: int = 0
    written: int = 0
    snapshots: int = 0
    seconds: float = 0.0
    source_count: int = 0
    target_count: int = 0
    source_checksum: str = ""
    target_checksum: str = ""

    @property
    def equal(self) -> bool:
        """True when both sides have the same number of events and the same checksum."""
        return (
            self.source_count == self.target_count and self.source_checksum == self.target_checksum
        )

    @property
    def rate(self) -> float:
        """Source events handled per second (verification excluded)."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """The report as plain data (for ``--json``)."""
        return {
            "source": self.source,
            "target": self.target,
            "type": self.aggregate_type,
            "resumed_after": self.resumed_after,
            "read": self.read,
            "written": self.written,
            "skipped": self.read - self.written,
            "snapshots": self.snapshots,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "source_count": self.source_count,
            "target_count": self.target_count,
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
            "equal": self.equal,
        }


async def copy_events(
    source: PersistedEventRepository,
    target: PersistedEventRepository,
    *,
    source_url: str,
    target_url: str,
    aggregate_type: str | None = None,
    chunk_size: int = 5000,
    checkpoint_table: str = COPY_TABLE,
    on_total: Callable[[int | None], None] | None = None,
    on_progress: Progress | None = None,
    on_verify: Callable[[int | None], Progress | None] | None = None,
) -> CopyReport:
    """Copy from ``source`` to ``target`` (both open, the target's schema created) and
    verify; see the module docstring. ``on_total`` gets the number of events to copy (None
    if the source cannot count them) and ``on_progress`` the events handled; ``on_verify``
    is called when the verification starts, with the number of events it reads (None if
    unknown), and may return a progress callback for them. The
    checkpoint is kept in the target's ``checkpoint_table``.
    Raises CopyError when the target holds a different event at a copied event's place or
    another copy took over."""
    checkpoints = target.checkpoint_store(checkpoint_table)
    await checkpoints.create_schema()
    name = copy_name(source_url, aggregate_type)
    lease = await checkpoints.acquire(name, f"cqrs copy on {socket.gethostname()}", _LEASE_TTL)
    if lease is None:
        msg = (
            f"another copy from {redact_url(source_url)} into this target is running "
            f"(its lease lasts {_LEASE_TTL:.0f} s after its last chunk); try again later"
        )
        raise CopyError(msg)
    start = lease.position
    report = CopyReport(redact_url(source_url), redact_url(target_url), aggregate_type, start)
    if on_total is not None:
        on_total(await count_events(source, aggregate_type, start or None))
    checksum = Checksum() if start == 0 else None
    began = time.perf_counter()
    writer = _Writer(source, target)
    # Closed at once if a chunk fails, so the reader ahead of it stops with the copy.
    async with contextlib.aclosing(_chunks(source, aggregate_type, start, chunk_size)) as chunks:
        async for chunk in chunks:
            if checksum is not None:
                for event in chunk:
                    checksum.add(event)
            written, snapshots = await writer.write(chunk)
            report.read += len(chunk)
            report.written += written
            report.snapshots += snapshots
            await _save(checkpoints, lease, chunk[-1].position)
            if on_progress is not None:
                on_progress(len(chunk))
    report.seconds = time.perf_counter() - began
    await checkpoints.release(lease)
    await _verify(report, source, target, aggregate_type, checksum, on_verify)
    return report


async def _save(checkpoints: CheckpointStore, lease: Lease, position: int) -> None:
    try:
        await checkpoints.save(lease, position)
        await checkpoints.renew(lease, _LEASE_TTL)
    except LeaseLost as error:
        msg = "another copy from the same source into this target took over; this one stops"
        raise CopyError(msg) from error


async def _verify(  # noqa: PLR0917 - one private caller
    report: CopyReport,
    source: PersistedEventRepository,
    target: PersistedEventRepository,
    aggregate_type: str | None,
    copied: Checksum | None,
    on_verify: Callable[[int | None], Progress | None] | None,
) -> None:
    progress = None
    if on_verify is not None:
        progress = on_verify(report.read if copied is not None else None)
    if copied is None:
        source_sum, target_sum = await asyncio.gather(
            checksum_of(source, aggregate_type, progress),
            checksum_of(target, aggregate_type, progress),
        )
    else:
        # The source was read whole by this run: the checksum of what it read is the
        # source's (events committed to it since are not in the target either).
        target_sum = await checksum_of(target, aggregate_type, progress)
        source_sum = copied
    report.source_count, report.source_checksum = source_sum.count, source_sum.hexdigest()
    report.target_count, report.target_checksum = target_sum.count, target_sum.hexdigest()


async def _chunks(
    source: PersistedEventRepository, aggregate_type: str | None, start: int, size: int
) -> AsyncGenerator[list[SerializedEvent], None]:
    """Chunks of the source's stream, read one chunk ahead of the consumer."""
    queue: asyncio.Queue[list[SerializedEvent] | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        chunk: list[SerializedEvent] = []
        async for event in source.stream_all_events(aggregate_type, start or None):
            chunk.append(event)
            if len(chunk) >= size:
                await queue.put(chunk)
                chunk = []
        if chunk:
            await queue.put(chunk)
        await queue.put(None)

    producer = asyncio.create_task(produce())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                producer.result()  # raises the reader's error
                chunk = await queue.get()  # the producer ended: what it queued is there
            else:
                chunk = getter.result()
            if chunk is None:
                return
            yield chunk
    finally:
        if not producer.done():
            producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


class _Writer:
    """Writes chunks to the target, with the source's snapshots of their aggregates."""

    def __init__(self, source: PersistedEventRepository, target: PersistedEventRepository) -> None:
        self.source = source
        self.target = target
        self._limit = asyncio.Semaphore(16)
        # Per aggregate seen in this run: the last_sequence of the source's snapshot still to
        # be written with the events that reach it (0: none to write). A snapshot is read
        # when its aggregate is first seen and again when its events reach it, so at most
        # twice per aggregate, and only sequences are kept in memory.
        self._due: dict[tuple[str, str], int] = {}

    async def write(self, chunk: Sequence[SerializedEvent]) -> tuple[int, int]:
        """Store the chunk; (events newly stored, snapshots sent)."""
        last: dict[tuple[str, str], int] = {}
        for event in chunk:
            last[(event.aggregate_type, event.aggregate_id)] = event.sequence
        due = self._due
        wanted = [key for key, seq in last.items() if key not in due or 0 < due[key] <= seq]
        snapshots: dict[tuple[str, str], SerializedSnapshot] = {}
        for key, snapshot in zip(
            wanted, await asyncio.gather(*(self._snapshot(key) for key in wanted)), strict=True
        ):
            if snapshot is None:
                due[key] = 0
            elif snapshot.last_sequence <= last[key]:
                snapshots[key] = snapshot
                due[key] = 0
            else:  # ahead of what is copied so far: read again when the events reach it
                due[key] = snapshot.last_sequence
        target = self.target
        if isinstance(target, ImportsEvents):
            written = await target.import_events(chunk, list(snapshots.values()))
            return written, len(snapshots)
        written = 0
        runs = _runs(chunk)
        last_run = {(run[0].aggregate_type, run[0].aggregate_id): i for i, run in enumerate(runs)}
        for index, run in enumerate(runs):
            key = (run[0].aggregate_type, run[0].aggregate_id)
            snapshot = snapshots.get(key) if last_run[key] == index else None
            written += await self._persist(run, snapshot)
        return written, len(snapshots)

    async def _snapshot(self, key: tuple[str, str]) -> SerializedSnapshot | None:
        async with self._limit:
            return await self.source.get_snapshot(*key)

    async def _persist(
        self, run: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> int:
        target = self.target
        try:
            # A run stored already whole is recognized by persist itself (and counted here).
            await target.persist(run, snapshot)
        except AggregateConflict:
            pass
        else:
            return len(run)
        # Part of the run may be stored already (a copy killed after a commit, resumed with
        # different chunk edges): keep what matches by event id, store the rest.
        first = run[0]
        stored = await target.get_last_events(
            first.aggregate_type, first.aggregate_id, first.sequence - 1
        )
        matched = 0
        for event, row in zip(run, stored, strict=False):
            if row.sequence != event.sequence or str(row.event_id) != str(event.event_id):
                break
            matched += 1
        if matched < min(len(run), len(stored)) or (not stored and first.sequence > 1):
            at = run[matched]
            msg = (
                f"the target holds a different event at {at.aggregate_type} "
                f"{at.aggregate_id!r} sequence {at.sequence} (another event id), or misses "
                "the events before it; nothing more was copied"
            )
            raise CopyError(msg)
        rest = run[matched:]
        if rest:
            await target.persist(rest, snapshot)
        return len(rest)


def _runs(chunk: Sequence[SerializedEvent]) -> list[list[SerializedEvent]]:
    runs: list[list[SerializedEvent]] = []
    for event in chunk:
        if runs:
            previous = runs[-1][-1]
            if (previous.aggregate_type, previous.aggregate_id) == (
                event.aggregate_type,
                event.aggregate_id,
            ):
                runs[-1].append(event)
                continue
        runs.append([event])
    return runs
