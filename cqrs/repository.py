"""The storage port: what every backend implements, and nothing more.

Backends move rows or documents; everything generic (sequence numbering, snapshots,
upcasting, (de)serialization) lives once in :class:`~cqrs.store.PersistedEventStore`.
The conformance suite in ``tests/conformance`` checks every rule written here.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, Self, TypeAlias, TypeVar
from uuid import UUID

import msgspec

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict, ConfigurationError, DeserializationError, NotOpenError

if TYPE_CHECKING:
    from cqrs.checkpoints import CheckpointStore

__all__ = [
    "MAX_AGGREGATE_ID_BYTES",
    "MAX_AGGREGATE_TYPE_BYTES",
    "AsyncResource",
    "BaseViewRepository",
    "EventRow",
    "PersistedEventRepository",
    "SerializedEvent",
    "SerializedSnapshot",
    "ViewContext",
    "ViewRepository",
    "check_batch",
    "check_ids",
    "check_page_size",
    "decode_view",
    "next_view_version",
    "not_open",
    "parse_timestamp",
    "read_pages",
    "row_event",
    "row_events",
    "snapshot_and_events",
    "stored_positions",
    "validate_identifier",
]

V = TypeVar("V")

MAX_AGGREGATE_TYPE_BYTES = 255
"""The longest ``aggregate_type`` every backend stores, in UTF-8 bytes."""

MAX_AGGREGATE_ID_BYTES = 1024
"""The longest ``aggregate_id`` every backend stores, in UTF-8 bytes (PostgreSQL's btree
index bounds what fits; the limit is the same on every backend so data can move)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_identifier(name: str, what: str = "table name") -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, underscore, not
    starting with a digit, at most 63 characters), else raise ConfigurationError naming it."""
    if not isinstance(name, str) or _IDENTIFIER.fullmatch(name) is None:
        msg = (
            f"invalid {what} {name!r}: use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters"
        )
        raise ConfigurationError(msg)
    return name


def check_ids(aggregate_type: object, aggregate_id: object) -> None:
    """Raise ValueError naming the culprit unless ``aggregate_type`` and ``aggregate_id`` are
    non-empty strings without NUL characters, of at most :data:`MAX_AGGREGATE_TYPE_BYTES` and
    :data:`MAX_AGGREGATE_ID_BYTES` UTF-8 bytes."""
    _check_id("aggregate_type", aggregate_type, MAX_AGGREGATE_TYPE_BYTES)
    _check_id("aggregate_id", aggregate_id, MAX_AGGREGATE_ID_BYTES)


def _check_id(what: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value:
        msg = f"{what} must be a non-empty string, not {value!r}"
        raise ValueError(msg)
    if "\x00" in value:
        msg = f"{what} must not contain NUL characters: {value[:80]!r}"
        raise ValueError(msg)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        msg = f"{what} is {size} UTF-8 bytes long; the limit is {limit}: {value[:40]!r}..."
        raise ValueError(msg)


def check_page_size(page_size: object) -> int:
    """Return ``page_size`` if it is a positive int (not a bool), else raise
    ConfigurationError naming it. Backends check their ``page_size`` with this."""
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
        msg = f"page_size must be a positive int, not {page_size!r}"
        raise ConfigurationError(msg)
    return page_size


def not_open(what: str) -> NotOpenError:
    """The error every backend raises when ``what`` (a repository's description) is used
    before ``open()`` or after ``close()``."""
    return NotOpenError(
        f"{what} is not open: call 'await repository.open()' or use 'async with repository'"
    )


class SerializedEvent(msgspec.Struct, frozen=True, gc=False):
    """One event as stored: the payload and metadata are JSON text (bytes or str).

    ``position`` is 0 for an event not yet persisted; backends fill it in on read.
    ``event_id`` is a UUID, or its text form as a backend read it: the store parses it only
    when it builds an envelope, so loading an aggregate never pays for it. A frozen
    ``msgspec.Struct``: building one costs a few dozen nanoseconds, which loads feel.
    """

    aggregate_type: str
    aggregate_id: str
    sequence: int
    event_type: str
    event_version: str
    payload: bytes | str
    metadata: bytes | str
    timestamp: datetime
    event_id: UUID | str
    position: int = 0


EventRow: TypeAlias = tuple[
    str,
    str,
    int,
    str,
    str,
    "bytes | str",
    "bytes | str | None",
    "datetime | str",
    "UUID | str",
    int,
]
"""One stored event as a backend's optional page reader returns it (see
:class:`PersistedEventRepository`, ``read_event_rows``): a plain tuple of the fields of
:class:`SerializedEvent`, in their order (``aggregate_type, aggregate_id, sequence,
event_type, event_version, payload, metadata, timestamp, event_id, position``), where the
metadata may be None for an empty object, the timestamp ISO 8601 text (UTC when it has no
offset) and the event id its text form: what a database driver hands out, without building a
:class:`SerializedEvent` per row. :func:`row_event` makes the SerializedEvent."""


def parse_timestamp(text: str) -> datetime:
    """A stored ISO 8601 timestamp as an aware datetime (UTC when it has no offset)."""
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def row_event(row: EventRow) -> SerializedEvent:
    """The :class:`SerializedEvent` of an :data:`EventRow` (what ``stream_all_events``
    yields for the same stored event)."""
    aggregate_type, aggregate_id, sequence, event_type, version, payload, metadata = row[:7]
    timestamp, event_id, position = row[7:]
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        version,
        payload,
        "{}" if metadata is None else metadata,
        parse_timestamp(timestamp) if isinstance(timestamp, str) else timestamp,
        event_id,
        position,
    )


def row_events(rows: Sequence[EventRow]) -> list[SerializedEvent]:
    """``[row_event(row) for row in rows]``, each timestamp text parsed once per run of
    equal ones (the rows of one commit share it)."""
    events = []
    last: object = None
    timestamp = datetime.min.replace(tzinfo=UTC)
    for row in rows:
        aggregate_type, aggregate_id, sequence, event_type, version, payload, metadata = row[:7]
        text = row[7]
        if text != last:
            last = text
            timestamp = parse_timestamp(text) if isinstance(text, str) else text
        events.append(
            SerializedEvent(
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                version,
                payload,
                "{}" if metadata is None else metadata,
                timestamp,
                row[8],
                row[9],
            )
        )
    return events


class SerializedSnapshot(msgspec.Struct, frozen=True, gc=False):
    """The state of one aggregate as stored.

    ``last_sequence`` is the exact sequence of the last event the state includes;
    ``snapshot_version`` counts the snapshots written for this aggregate (1 for the first).
    """

    aggregate_type: str
    aggregate_id: str
    payload: bytes | str
    last_sequence: int
    snapshot_version: int


def check_batch(events: Sequence[SerializedEvent]) -> None:
    """Raise ValueError unless ``events`` is a non-empty batch of one aggregate with
    consecutive sequences starting at 1 or more, and ids within the limits of
    :func:`check_ids`. Backends call this first in ``persist``."""
    if not events:
        msg = "persist needs at least one event"
        raise ValueError(msg)
    first = events[0]
    check_ids(first.aggregate_type, first.aggregate_id)
    if not isinstance(first.sequence, int) or first.sequence < 1:
        msg = f"sequences start at 1, not {first.sequence!r}"
        raise ValueError(msg)
    key = (first.aggregate_type, first.aggregate_id)
    sequence = first.sequence
    for event in events:
        if (event.aggregate_type, event.aggregate_id) != key or event.sequence != sequence:
            msg = (
                "persist takes consecutive events of one aggregate; "
                f"{event.aggregate_type} {event.aggregate_id[:40]!r} sequence {event.sequence} "
                f"does not follow {first.aggregate_type} {first.aggregate_id[:40]!r} "
                f"sequence {sequence - 1}"
            )
            raise ValueError(msg)
        sequence += 1


def stored_positions(
    events: Sequence[SerializedEvent], stored: Sequence[SerializedEvent]
) -> list[int] | None:
    """The positions of ``events`` if ``stored`` (what the store holds at and after the
    batch's first sequence, by sequence) begins with exactly these events, recognized by
    their event ids; else None.

    This is how ``persist`` stays idempotent: a batch retried after an unknown outcome (a
    connection lost during COMMIT) that finds its own event ids stored is a success, not a
    conflict. Event ids may be UUIDs or their text form on either side."""
    if len(stored) < len(events):
        return None
    positions = []
    for event, row in zip(events, stored, strict=False):
        if row.sequence != event.sequence or str(row.event_id) != str(event.event_id):
            return None
        positions.append(row.position)
    return positions


class PersistedEventRepository(Protocol):
    """The storage port for events and snapshots.

    Every method takes the aggregate type. Rules every backend must keep:

    - **Optimistic concurrency.** ``(aggregate_type, aggregate_id, sequence)`` is unique.
      :meth:`persist` is atomic: all its events and its snapshot are stored, or nothing is.
      A batch must start right after the stored last sequence: one that collides with a
      stored sequence, or leaves a gap after it, raises ``AggregateConflict``.
    - **Idempotent by event id.** A batch whose events are already stored (same sequences,
      same event ids: a retry after an unknown outcome) returns their stored positions and
      stores nothing again. A backend that can lose a connection retries a write whose
      outcome is unknown once on a fresh connection, and retries reads, so only operations
      in flight during a fault can fail.
    - **Input.** :func:`check_batch` is applied before any I/O: one aggregate, consecutive
      sequences from 1 up, ids within :data:`MAX_AGGREGATE_TYPE_BYTES` /
      :data:`MAX_AGGREGATE_ID_BYTES` (ValueError otherwise, the same on every backend).
    - **Global order.** Every stored event has a ``position``, an integer that only grows
      along :meth:`stream_all_events`; once any reader has seen position ``p``, no event at
      or below ``p`` can appear later. A reader tailing with ``after_position`` therefore
      never skips or repeats an event, even while writers commit concurrently.
    - **Bounded memory.** The ``stream_*`` methods read in pages, never the whole store.
    - **Errors.** Driver errors are translated in one place into
      ``AggregateConflict`` / ``DatabaseConnectionError`` / ``UnexpectedError``, raised
      ``from`` the driver error.
    - **Lifecycle.** The constructor does no I/O; ``open()`` and ``close()`` are idempotent
      and the repository is an async context manager. Any other method called before
      ``open()`` or after ``close()`` raises :class:`~cqrs.errors.NotOpenError`.

    Optional, for speed (callers look them up with ``getattr`` and fall back to the methods
    below, so a backend without them works the same):

    - ``get_snapshot_and_events`` (see :func:`snapshot_and_events`);
    - ``async read_event_rows(aggregate_type, after_position, limit) -> list[EventRow]``:
      at most ``limit`` (>= 1) events of the type (every type for None) after
      ``after_position``, in global order, as :data:`EventRow` tuples, in one read (one
      statement: what ``stream_all_events`` reads as one page, with its guarantees; fewer
      than ``limit`` means none more were visible). A projection runner reads its batches
      with it and the store decodes them straight from the tuples
      (:meth:`~cqrs.store.PersistedEventStore.decode_rows`), without a SerializedEvent or an
      async iteration per event. The conformance suite checks it against
      ``stream_all_events`` when a backend has it.
    """

    async def open(self) -> None:
        """Acquire connections (idempotent)."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...

    async def create_schema(self) -> None:
        """Create the tables/collections and indexes; idempotent and safe when several
        processes run it at once."""
        ...

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate, by sequence."""
        ...

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """The events of one aggregate with sequence greater than ``after_sequence``."""
        ...

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None."""
        ...

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Store the events (all of one aggregate, consecutive sequences) and the snapshot
        atomically; return the positions given to the events, in order.

        The snapshot replaces the stored one only if its ``last_sequence`` is greater.
        """
        ...

    def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The events of one aggregate by sequence, read in pages."""
        ...

    def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events of one type (or of every type for ``None``) in global order, starting after
        ``after_position``; ends at the newest event visible when each page is read."""
        ...

    def view_repository(self, view_type: type[V], table: str) -> ViewRepository[V]:
        """A view repository for ``view_type`` stored in ``table``, sharing these
        connections. Call its ``create_schema()`` once before use."""
        ...

    def checkpoint_store(self, table: str = "projections") -> CheckpointStore:
        """The checkpoints, leases and parked events of projections, kept in ``table`` (a
        validated name; the backend may add tables named after it) in the events' database
        and sharing these connections, with the rules of
        :class:`~cqrs.checkpoints.CheckpointStore`. No I/O here: call its
        ``create_schema()`` once before use; it raises NotOpenError while this repository
        is not open."""
        ...


async def snapshot_and_events(
    repository: PersistedEventRepository, aggregate_type: str, aggregate_id: str
) -> tuple[SerializedSnapshot | None, list[SerializedEvent]]:
    """The aggregate's snapshot (or None) and its events after the snapshot's
    ``last_sequence`` (all of them without a snapshot), by sequence: what loading from a
    snapshot needs.

    A backend that can read both in one round trip (one statement, one thread hop) defines
    ``get_snapshot_and_events(aggregate_type, aggregate_id)`` with this contract, and this
    calls it; for any other repository it is :meth:`~PersistedEventRepository.get_snapshot`
    then :meth:`~PersistedEventRepository.get_last_events` after the snapshot, so backends
    without the method (third-party ones too) keep working.

    The events always follow the snapshot returned, with no gap, even while a commit races
    the read: the snapshot is read first, so a commit between the two reads only adds
    events after it (a backend reading both in one go keeps that order, or reads both in
    one consistent snapshot of the database).
    """
    combined = getattr(repository, "get_snapshot_and_events", None)
    if combined is not None:
        loaded: tuple[SerializedSnapshot | None, list[SerializedEvent]]
        loaded = await combined(aggregate_type, aggregate_id)
        return loaded
    snapshot = await repository.get_snapshot(aggregate_type, aggregate_id)
    if snapshot is None:
        return None, await repository.get_events(aggregate_type, aggregate_id)
    after = snapshot.last_sequence
    return snapshot, await repository.get_last_events(aggregate_type, aggregate_id, after)


class AsyncResource:
    """Mixin for backends: ``async with`` calls ``open()`` on entry and ``close()`` on exit.

    The class defines ``open`` and ``close`` (both idempotent)."""

    async def open(self) -> None:
        """Acquire connections (idempotent)."""

    async def close(self) -> None:
        """Release connections (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def read_pages(
    fetch: Callable[[int], Awaitable[Sequence[SerializedEvent]]],
    after: int,
    size: int,
    *,
    by_sequence: bool = False,
) -> AsyncIterator[SerializedEvent]:
    """Yield events page by page, for backends' ``stream_*`` methods: ``fetch(after)``
    returns at most ``size`` events after ``after`` (a position, or a sequence with
    ``by_sequence``) in order; a page shorter than ``size`` ends the stream."""
    while True:
        page = await fetch(after)
        for event in page:
            yield event
        if len(page) < size:
            return
        after = page[-1].sequence if by_sequence else page[-1].position


def decode_view(codec: Codec, payload: bytes | str, view_type: type[V], where: str) -> V:
    """Decode a stored view; raise DeserializationError naming ``where`` (the view id and
    its table) when it does not decode."""
    try:
        return codec.decode(payload, view_type)
    except (ValueError, TypeError) as error:
        msg = f"{where} does not decode: {error}"
        raise DeserializationError(msg) from error


def next_view_version(context: ViewContext, version: int | None) -> int:
    """The version ``update_view`` stores: ``version``, or one more than the loaded one;
    raise ValueError unless it is greater than ``context.version``."""
    if version is None:
        return context.version + 1
    if not isinstance(version, int) or version <= context.version:
        msg = f"a view's new version must be greater than {context.version}, not {version!r}"
        raise ValueError(msg)
    return version


@dataclass(frozen=True, slots=True)
class ViewContext:
    """Where a loaded view came from: its id and the version it had (0 if new)."""

    view_id: str
    version: int


class ViewRepository(Protocol[V]):
    """Stores views with optimistic locking by version."""

    async def create_schema(self) -> None:
        """Create the view table/collection (idempotent)."""
        ...

    async def load(self, view_id: str) -> V | None:
        """The view, or None if there is none."""
        ...

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its context, or None if there is none."""
        ...

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store ``view`` at ``version`` (default ``context.version + 1``; it must be greater
        than ``context.version``) if the stored version still equals ``context.version`` (0: no
        view stored yet), raising ``AggregateConflict`` otherwise."""
        ...


class BaseViewRepository(ABC, Generic[V]):
    """A :class:`ViewRepository` for backends to subclass: the rules every backend keeps the
    same way live here, and a backend implements three primitives over its own storage.

    Here: view ids are checked before any I/O (non-empty strings without NUL, at most
    :data:`MAX_AGGREGATE_ID_BYTES` UTF-8 bytes; ValueError otherwise), views are encoded and
    decoded with ``codec``, a stored view that does not decode raises DeserializationError
    naming its id, table and version, the new version comes from :func:`next_view_version`,
    and a write refused because the stored version changed raises AggregateConflict naming
    the view and the table. :meth:`_check_open` runs first in every method.

    The primitives (each translates its driver's errors, as its repository does):

    - ``_create_schema()``: create the table (idempotent, safe when run concurrently);
    - ``_fetch(view_id)``: the stored ``(payload, version)``, or None;
    - ``_store(view_id, payload, version, expected)``: store ``payload`` at ``version`` if
      the stored version is ``expected`` (0: none is stored yet, so insert); return False
      when it is not (another writer changed the view), True once stored.
    """

    table_kind: ClassVar[str] = "table"
    """What the backend calls a table, for messages ("collection" on MongoDB)."""

    def __init__(self, view_type: type[V], table: str, *, codec: Codec = default_codec) -> None:
        self.view_type = view_type
        self.table = validate_identifier(table, f"{self.table_kind} name")
        self.codec = codec

    def _check_open(self) -> None:
        """Raise NotOpenError when the views cannot be used now; the default lets the
        primitives raise it (a backend whose connections refuse work when closed)."""

    @abstractmethod
    async def _create_schema(self) -> None: ...

    @abstractmethod
    async def _fetch(self, view_id: str) -> tuple[bytes | str, int] | None: ...

    @abstractmethod
    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool: ...

    async def create_schema(self) -> None:
        """Create the view table if it is missing (idempotent, safe when several processes
        run it at once)."""
        self._check_open()
        await self._create_schema()

    async def load(self, view_id: str) -> V | None:
        """The view, or None if there is none."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and the version it is stored at, or None if there is none."""
        _check_id("view_id", view_id, MAX_AGGREGATE_ID_BYTES)
        self._check_open()
        # Checked as objects: a document store may hold anything under these fields.
        row: tuple[object, object] | None = await self._fetch(view_id)
        if row is None:
            return None
        payload, version = row
        where = f"view {view_id!r} in {self.table} (version {version!r})"
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            msg = f"{where} does not decode: its version is not a positive int"
            raise DeserializationError(msg)
        if not isinstance(payload, bytes | str):
            msg = f"{where} does not decode: its payload is {type(payload).__name__}, not JSON"
            raise DeserializationError(msg)
        view = decode_view(self.codec, payload, self.view_type, where)
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store ``view`` at ``version`` (default ``context.version + 1``; it must be greater
        than ``context.version``) if the stored version still equals ``context.version`` (0:
        no view stored yet); raise AggregateConflict otherwise."""
        _check_id("view_id", context.view_id, MAX_AGGREGATE_ID_BYTES)
        new_version = next_view_version(context, version)
        self._check_open()
        payload = self.codec.encode(view)
        if not await self._store(context.view_id, payload, new_version, context.version):
            where = f"view {context.view_id!r} in {self.table}"
            if context.version == 0:
                msg = f"{where} was stored by another writer first (none was loaded)"
            else:
                msg = f"{where} is no longer at version {context.version}"
            raise AggregateConflict(msg)
