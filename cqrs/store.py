"""The event store: loads aggregates and commits their events through a repository."""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import msgspec

from cqrs import telemetry
from cqrs.aggregate import Aggregate, AggregateClass
from cqrs.codec import Codec, default_codec, schema_fingerprint
from cqrs.errors import (
    ConfigurationError,
    DeserializationError,
    UnexpectedError,
)
from cqrs.events import EventEnvelope, event_type_of, event_version_of
from cqrs.repository import (
    MAX_AGGREGATE_ID_BYTES,
    EventRow,
    PersistedEventRepository,
    SerializedEvent,
    SerializedSnapshot,
    check_ids,
    parse_timestamp,
    row_event,
    snapshot_and_events,
)
from cqrs.subscription import Subscription
from cqrs.upcasting import EventUpcaster, RawEvent, check_upcaster_order

__all__ = ["AggregateContext", "EventStore", "PersistedEventStore", "validate_input"]

A_co = TypeVar("A_co", bound="Aggregate[Any, Any, Any]", covariant=True)  # Any: any class
C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")

logger = logging.getLogger("cqrs.store")

_EMPTY_METADATA = (b"{}", "{}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SHORT_ID = MAX_AGGREGATE_ID_BYTES // 4
"""An id of at most this many characters is within the byte limit (4 UTF-8 bytes at most
per character)."""

_STAND_IN = "_"
"""A valid aggregate type or id, for checking the other half of a pair with check_ids."""


class _StoredSnapshot(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A snapshot payload as the store writes it: ``{"schema": ..., "state": ...}``.

    ``schema`` is the fingerprint of the state's schema when it was written; ``state`` stays
    raw JSON, so it is parsed once, by the aggregate's own decoder, and only if it fits.
    """

    schema: str
    state: msgspec.Raw


_decode_stored_snapshot = msgspec.json.Decoder(_StoredSnapshot).decode


@dataclass(slots=True)
class AggregateContext(Generic[A_co]):
    """A loaded aggregate and the concurrency token needed to commit to it.

    ``AggregateContext[A]``: ``aggregate`` is an ``A``, the user's own aggregate class when
    it comes from ``PersistedEventStore.load_aggregate`` (``A`` is covariant, so it is also
    an ``AggregateContext[Aggregate[C, E, S]]``, what ``EventStore.commit`` takes).

    ``version`` is the sequence of the last event the state includes (0 for a new
    aggregate). A successful commit advances both the state and the version, so the context
    can take the next commit; after a failed commit, load again. ``replace_snapshot`` is
    True when the stored snapshot could not be used (written for another state schema, or
    undecodable): the next commit then writes a fresh one even between two multiples of
    ``snapshot_every``.
    """

    aggregate_id: str
    aggregate: A_co
    version: int
    snapshot_version: int = 0
    replace_snapshot: bool = False


class EventStore(Protocol[C, E, S]):
    """Loads aggregates and commits events; what :class:`~cqrs.CqrsFramework` needs.

    ``EventStore[C, E, S]`` holds ``Aggregate[C, E, S]`` aggregates: commands ``C``, events
    ``E``, services ``S``. A ``PersistedEventStore[BankAccount, C, E, S]`` is one, since
    ``BankAccount`` is an ``Aggregate[C, E, S]``; so ``CqrsFramework(store)`` infers its
    ``C``, ``E`` and ``S`` from the store.
    """

    def new_aggregate(self, aggregate_id: str) -> Aggregate[C, E, S]:
        """The empty state of aggregate ``aggregate_id`` (no I/O)."""
        ...

    async def load_events(
        self, aggregate_id: str, after_sequence: int = 0
    ) -> list[EventEnvelope[E]]:
        """The events of one aggregate after ``after_sequence`` (all by default), decoded
        and upcast, by sequence."""
        ...

    async def load_aggregate(self, aggregate_id: str) -> AggregateContext[Aggregate[C, E, S]]:
        """The aggregate's current state with its concurrency token."""
        ...

    async def commit(
        self,
        events: Sequence[E],
        context: AggregateContext[Aggregate[C, E, S]],
        metadata: Mapping[str, str],
    ) -> list[EventEnvelope[E]]:
        """Store the events after ``context.version`` atomically and return their envelopes;
        raise ``AggregateConflict`` if another writer committed first."""
        ...


def validate_input(aggregate_id: object, metadata: object) -> Mapping[str, str]:
    """Check an aggregate id and metadata at the API boundary, before any I/O; raise
    ValueError/TypeError naming the culprit. Returns the metadata.

    The id must pass :func:`~cqrs.repository.check_ids`: a non-empty string without NUL
    characters of at most ``MAX_AGGREGATE_ID_BYTES`` (1024) UTF-8 bytes. Metadata must be a
    mapping of str to str.
    """
    check_ids(_STAND_IN, aggregate_id)
    if not isinstance(metadata, Mapping):
        msg = f"metadata must be a mapping of str to str, not {type(metadata).__name__}"
        raise TypeError(msg)
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            msg = f"metadata must map str to str; bad entry {key!r}: {value!r}"
            raise TypeError(msg)
    return metadata


class PersistedEventStore(Generic[A_co, C, E, S]):
    """The one event store over any :class:`~cqrs.repository.PersistedEventRepository`.

    ``PersistedEventStore[A, C, E, S]``: ``A`` is the aggregate class's instance type
    (``load_aggregate`` gives back an ``AggregateContext[A]``), and ``C``, ``E``, ``S`` are
    its commands, events and services. All four are inferred from the class passed in (see
    :class:`~cqrs.aggregate.AggregateClass`): ``PersistedEventStore(repository, BankAccount)``
    is a ``PersistedEventStore[BankAccount, BankAccountCommand, BankAccountEvent,
    BankAccountServices]``. ``A`` is covariant, so code that takes a store of any aggregate
    class with those commands, events and services can ask for a
    ``PersistedEventStore[Aggregate[C, E, S], C, E, S]``.

    Sources of truth (choose with the constructor or the ``new_*`` factories):

    - **event store** (``snapshot_every=None``): the state is replayed from all events;
    - **snapshots** (``snapshot_every=N``): a commit that crosses a multiple of N events
      stores the state after the whole commit, recording the exact sequence it includes;
      loading reads the snapshot, then the events after it;
    - **aggregate store** (:meth:`new_aggregate_store`): a snapshot after every commit.

    Snapshots are a cache: a missing, stale or undecodable snapshot falls back to the events,
    so no event is ever lost. Events are always stored, so queries and replays see them.
    Upcasters apply on load, on streams and on replay.

    A snapshot is stored as ``{"schema": fingerprint, "state": aggregate}``. The fingerprint
    is the aggregate class's ``snapshot_schema`` if it sets one, else the SHA-256 of its
    state's JSON Schema (:func:`cqrs.codec.schema_fingerprint`), computed once per store. A
    snapshot is used only if its fingerprint equals the class's and its state decodes;
    otherwise (a field renamed, removed, added or retyped since it was written, or a
    snapshot from a version without fingerprints) a warning is logged on ``cqrs.store``,
    the state is replayed from the events, and the next commit writes a fresh snapshot.

    ``aggregate_type`` must be a non-empty string of at most ``MAX_AGGREGATE_TYPE_BYTES``
    (255) UTF-8 bytes; a bad type, event list or snapshot setup is a ConfigurationError.
    """

    def __init__(
        self,
        repository: PersistedEventRepository,
        aggregate_class: AggregateClass[A_co, C, E, S],
        *,
        snapshot_every: int | None = None,
        upcasters: Sequence[EventUpcaster] = (),
        codec: Codec = default_codec,
    ) -> None:
        if snapshot_every is not None and (
            not isinstance(snapshot_every, int) or snapshot_every < 1
        ):
            msg = f"snapshot_every must be a positive int or None, not {snapshot_every!r}"
            raise ConfigurationError(msg)
        self.repository = repository
        # The backend's one-round-trip snapshot load, if it has one (see snapshot_and_events);
        # looked up once: a load pays no extra call for it.
        self._snapshot_and_events: (
            Callable[[str, str], Awaitable[tuple[SerializedSnapshot | None, list[SerializedEvent]]]]
            | None
        ) = getattr(repository, "get_snapshot_and_events", None)
        # The protocol binds the type parameters; the object itself is the class.
        self._aggregate_class = aggregate_class
        self.aggregate_class = cast("type[A_co]", aggregate_class)
        self.aggregate_type = _aggregate_type(self.aggregate_class)
        self.snapshot_every = snapshot_every
        self.codec = codec
        self._upcasters = tuple(upcasters)
        check_upcaster_order(self._upcasters)
        self._classes = _event_classes(self.aggregate_class)
        self._names: dict[type[object], str] = {cls: name for name, cls in self._classes.items()}
        self._versions = {name: event_version_of(cls) for name, cls in self._classes.items()}
        self._snapshot_schema = (
            "" if snapshot_every is None else _snapshot_schema(self.aggregate_class)
        )
        self._snapshot_prefix = b'{"schema":' + msgspec.json.encode(self._snapshot_schema)
        self._snapshot_prefix += b',"state":'

    @classmethod
    def new_event_store(
        cls, repository: PersistedEventRepository, aggregate_class: AggregateClass[A_co, C, E, S]
    ) -> PersistedEventStore[A_co, C, E, S]:
        """A store whose source of truth is the events alone."""
        return cls(repository, aggregate_class)

    @classmethod
    def new_snapshot_store(
        cls,
        repository: PersistedEventRepository,
        aggregate_class: AggregateClass[A_co, C, E, S],
        snapshot_every: int,
    ) -> PersistedEventStore[A_co, C, E, S]:
        """A store that snapshots whenever a commit crosses a multiple of ``snapshot_every``."""
        return cls(repository, aggregate_class, snapshot_every=snapshot_every)

    @classmethod
    def new_aggregate_store(
        cls, repository: PersistedEventRepository, aggregate_class: AggregateClass[A_co, C, E, S]
    ) -> PersistedEventStore[A_co, C, E, S]:
        """A store that keeps the state after every commit (events are still stored)."""
        return cls(repository, aggregate_class, snapshot_every=1)

    def with_upcasters(
        self, upcasters: Sequence[EventUpcaster]
    ) -> PersistedEventStore[A_co, C, E, S]:
        """A copy of this store that applies ``upcasters`` (in list order) on every read."""
        return type(self)(
            self.repository,
            self._aggregate_class,
            snapshot_every=self.snapshot_every,
            upcasters=upcasters,
            codec=self.codec,
        )

    def new_aggregate(self, aggregate_id: str) -> A_co:
        """The empty state of aggregate ``aggregate_id``."""
        aggregate = self.aggregate_class()
        aggregate.aggregate_id = aggregate_id
        return aggregate

    # -- reading ------------------------------------------------------------------------

    async def load_events(
        self, aggregate_id: str, after_sequence: int = 0
    ) -> list[EventEnvelope[E]]:
        """The events of one aggregate after ``after_sequence`` (all by default), decoded
        and upcast, by sequence."""
        validate_input(aggregate_id, {})
        if after_sequence > 0:
            rows = await self.repository.get_last_events(
                self.aggregate_type, aggregate_id, after_sequence
            )
        else:
            rows = await self.repository.get_events(self.aggregate_type, aggregate_id)
        return [self.decode(row) for row in rows]

    async def load_aggregate(self, aggregate_id: str) -> AggregateContext[A_co]:
        """Rebuild the aggregate from its snapshot (if any) and the events after it (a
        ``load <type>`` span when tracing, see :mod:`cqrs.telemetry`)."""
        # validate_input(aggregate_id, {}), the common case in one test first.
        if (
            type(aggregate_id) is not str
            or not 0 < len(aggregate_id) <= _SHORT_ID
            or "\x00" in aggregate_id
        ):
            validate_input(aggregate_id, {})
        traced = telemetry.span("load", self.aggregate_type)
        if traced is None:
            return await self._load_aggregate(aggregate_id)
        with traced as current:
            context = await self._load_aggregate(aggregate_id)
            current.set_attribute("cqrs.aggregate.version", context.version)
            return context

    async def _load_aggregate(self, aggregate_id: str) -> AggregateContext[A_co]:
        aggregate_type = self.aggregate_type
        aggregate: A_co | None = None
        after = 0
        snapshot_version = 0
        replace_snapshot = False
        if self.snapshot_every is None:
            rows = await self.repository.get_events(aggregate_type, aggregate_id)
        else:
            # One round trip for the snapshot and the events after it.
            combined = self._snapshot_and_events
            if combined is None:
                snapshot, rows = await snapshot_and_events(
                    self.repository, aggregate_type, aggregate_id
                )
            else:
                snapshot, rows = await combined(aggregate_type, aggregate_id)
            if snapshot is not None:
                snapshot_version = snapshot.snapshot_version
                aggregate = self._decode_snapshot(snapshot)
                if aggregate is None:
                    replace_snapshot = True
                    rows = await self.repository.get_events(aggregate_type, aggregate_id)
                else:
                    after = snapshot.last_sequence
        if aggregate is None:
            aggregate = self.new_aggregate(aggregate_id)
        if rows:
            self._replay(aggregate, rows)
            after = rows[-1].sequence
        return AggregateContext(aggregate_id, aggregate, after, snapshot_version, replace_snapshot)

    def _replay(self, aggregate: Aggregate[C, E, S], rows: Sequence[SerializedEvent]) -> None:
        """Apply the payloads of ``rows`` to ``aggregate``, as ``decode_payload`` decodes
        them; without upcasters in one tight loop (the codec called directly, by class)."""
        apply = aggregate.apply
        if self._upcasters:
            decode_payload = self.decode_payload
            for row in rows:
                apply(decode_payload(row))
            return
        decode, classes = self.codec.decode, cast("dict[str, type[E]]", self._classes)
        for row in rows:
            try:
                event = decode(row.payload, classes[row.event_type])
            except (ValueError, TypeError, KeyError):
                event = self.decode_payload(row)  # raises the error naming the event
            apply(event)

    async def stream_events(self, aggregate_id: str) -> AsyncIterator[EventEnvelope[E]]:
        """The events of one aggregate, decoded and upcast, read in pages."""
        validate_input(aggregate_id, {})
        async for row in self.repository.stream_events(self.aggregate_type, aggregate_id):
            yield self.decode(row)

    async def stream_all_events(
        self, after_position: int | None = None
    ) -> AsyncIterator[EventEnvelope[E]]:
        """Every event of this aggregate type in global order, after ``after_position``."""
        async for row in self.repository.stream_all_events(self.aggregate_type, after_position):
            yield self.decode(row)

    async def subscribe(
        self, after_position: int | None = None, *, poll_interval: float = 1.0
    ) -> AsyncGenerator[EventEnvelope[E], None]:
        """Every event of this aggregate type after ``after_position``, decoded and upcast
        like a load: first the stored ones in pages, then new commits as they happen, in
        global order, never skipping or repeating one; it never ends by itself (see
        :class:`~cqrs.subscription.Subscription`, which it runs over this store's
        repository; ``poll_interval`` bounds how late a commit is seen without a push)."""
        subscription = Subscription(
            self.repository,
            after_position=after_position,
            types=(self.aggregate_type,),
            poll_interval=poll_interval,
        )
        try:
            async for row in subscription:
                yield self.decode(row)
        finally:
            await subscription.close()

    def decode(self, row: SerializedEvent) -> EventEnvelope[E]:
        """Upcast and decode one stored event; raise DeserializationError naming it."""
        payload = self.decode_payload(row)
        try:
            metadata = (
                {} if row.metadata in _EMPTY_METADATA else self.codec.decode_metadata(row.metadata)
            )
        except ValueError as error:
            raise _deserialization_error(row, "metadata", error) from error
        return EventEnvelope(
            row.aggregate_type,
            row.aggregate_id,
            row.sequence,
            payload,
            metadata,
            row.timestamp,
            event_id if isinstance(event_id := row.event_id, uuid.UUID) else _uuid(event_id),
            row.position,
        )

    def decode_all(self, rows: Sequence[SerializedEvent]) -> list[EventEnvelope[E]]:
        """Upcast and decode stored events, in order: the same envelopes as
        ``[decode(row) for row in rows]``, and the same error (DeserializationError naming
        the first event that does not decode), at about half the cost per event (one loop
        over local names, text event ids parsed in one call, upcasters asked once per event
        type and version). What a projection runner uses for a page."""
        try:
            return self._decode_page(rows)
        except Exception:  # noqa: BLE001 - the row by row pass below raises the row's own error
            return [self.decode(row) for row in rows]

    def _decode_page(self, rows: Sequence[SerializedEvent]) -> list[EventEnvelope[E]]:
        ids = cast("list[uuid.UUID]", [row.event_id for row in rows])
        if any(type(event_id) is not uuid.UUID for event_id in ids):
            ids = msgspec.convert(ids, list[uuid.UUID])  # as _uuid() does each, in one call
        classes = cast("dict[str, type[E]]", self._classes)
        decode = self.codec.decode
        decode_metadata, empty = self.codec.decode_metadata, _EMPTY_METADATA
        upcasters = bool(self._upcasters)
        upcast: dict[tuple[str, str], bool] = {}
        envelopes: list[EventEnvelope[E]] = []
        append = envelopes.append
        for row, event_id in zip(rows, ids, strict=True):
            event_type = row.event_type
            if upcasters:
                key = (event_type, row.event_version)
                needed = upcast.get(key)
                if needed is None:
                    needed = upcast[key] = self._needs_upcast(*key)
                if needed:
                    payload = self.decode_payload(row)
                else:
                    payload = decode(row.payload, classes[event_type])
            else:
                payload = decode(row.payload, classes[event_type])
            metadata = row.metadata
            append(
                EventEnvelope(
                    row.aggregate_type,
                    row.aggregate_id,
                    row.sequence,
                    payload,
                    {} if metadata in empty else decode_metadata(metadata),
                    row.timestamp,
                    event_id,
                    row.position,
                )
            )
        return envelopes

    def decode_rows(self, rows: Sequence[EventRow]) -> list[EventEnvelope[E]]:
        """Upcast and decode stored events read as :data:`~cqrs.repository.EventRow` tuples
        (a backend's ``read_event_rows``), in order: the same envelopes as
        ``decode_all([row_event(row) for row in rows])`` and the same error
        (DeserializationError naming the first event that does not decode), without building
        a SerializedEvent per row. The cyclic garbage collector is paused while the page is
        decoded (it only postpones a collection: the page's new objects are all alive until
        it is handed over anyway) and resumed before this returns."""
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            return self._decode_rows(rows)
        except Exception:  # noqa: BLE001 - the SerializedEvent path raises the row's own error
            return self.decode_all([row_event(row) for row in rows])
        finally:
            if collecting:
                gc.enable()

    def _decode_rows(self, rows: Sequence[EventRow]) -> list[EventEnvelope[E]]:
        ids = msgspec.convert([row[8] for row in rows], list[uuid.UUID])
        classes = cast("dict[str, type[E]]", self._classes)
        decode = self.codec.decode
        decode_metadata, empty = self.codec.decode_metadata, _EMPTY_METADATA
        upcasters = bool(self._upcasters)
        upcast: dict[tuple[str, str], bool] = {}
        envelopes: list[EventEnvelope[E]] = []
        append = envelopes.append
        # Rows of one commit share a timestamp, runs of one event type are common: both are
        # looked up again only when they change (a driver builds new strings for every row).
        last_text: object = None
        timestamp = _EPOCH
        last_type: str | None = None
        cls = cast("type[E]", object)  # set with last_type before any use
        for row, event_id in zip(rows, ids, strict=True):
            (
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                version,
                data,
                metadata,
                text,
                _,
                position,
            ) = row
            if event_type != last_type:
                last_type, cls = event_type, classes[event_type]
            payload: E
            if upcasters:
                key = (event_type, version)
                needed = upcast.get(key)
                if needed is None:
                    needed = upcast[key] = self._needs_upcast(event_type, version)
                payload = self.decode_payload(row_event(row)) if needed else decode(data, cls)
            else:
                payload = decode(data, cls)
            if text != last_text:
                last_text = text
                timestamp = parse_timestamp(text) if isinstance(text, str) else text
            append(
                EventEnvelope(
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    payload,
                    {} if metadata is None or metadata in empty else decode_metadata(metadata),
                    timestamp,
                    event_id,
                    position,
                )
            )
        return envelopes

    def decode_payload(self, row: SerializedEvent) -> E:
        """Upcast and decode only the payload of a stored event (what loading needs)."""
        event_type = row.event_type
        try:
            if self._upcasters and self._needs_upcast(event_type, row.event_version):
                raw = self._upcast(row)
                return self.codec.convert(raw.payload, self._class_for(raw.event_type))
            return self.codec.decode(row.payload, self._class_for(event_type))
        except (ValueError, TypeError, KeyError) as error:
            raise _deserialization_error(row, "payload", error) from error

    def _class_for(self, event_type: str) -> type[E]:
        try:
            return self._classes[event_type]  # type: ignore[return-value]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            msg = f"unknown event type {event_type!r} for {self.aggregate_type} (known: {known})"
            raise KeyError(msg) from None

    def _needs_upcast(self, event_type: str, event_version: str) -> bool:
        return any(u.can_upcast(event_type, event_version) for u in self._upcasters)

    def _upcast(self, row: SerializedEvent) -> RawEvent:
        payload = self.codec.decode_untyped(row.payload)
        if not isinstance(payload, dict):
            msg = "payload is not a JSON object"
            raise TypeError(msg)
        raw = RawEvent(row.event_type, row.event_version, payload)
        for upcaster in self._upcasters:
            if upcaster.can_upcast(raw.event_type, raw.event_version):
                try:
                    raw = upcaster.upcast(raw)
                except Exception as error:
                    msg = f"upcaster {upcaster!r} failed: {error!r}"
                    raise ValueError(msg) from error
        return raw

    def _decode_snapshot(self, snapshot: SerializedSnapshot) -> A_co | None:
        """The state in ``snapshot`` if it was written for this class's state schema and
        decodes; else None, with a warning saying why."""
        try:
            stored = _decode_stored_snapshot(snapshot.payload)
        except ValueError as error:
            reason = f"it carries no schema fingerprint (written by an older version?): {error}"
        else:
            if stored.schema != self._snapshot_schema:
                reason = (
                    f"it was written for another state schema ({stored.schema[:16]!r}, "
                    f"now {self._snapshot_schema[:16]!r})"
                )
            else:
                try:
                    aggregate = self.codec.decode(bytes(stored.state), self.aggregate_class)
                except (ValueError, TypeError) as error:
                    reason = f"it does not decode: {error}"
                else:
                    aggregate.aggregate_id = snapshot.aggregate_id
                    return aggregate
        logger.warning(
            "snapshot of %s %r at sequence %d is not used, replaying events: %s",
            snapshot.aggregate_type,
            snapshot.aggregate_id,
            snapshot.last_sequence,
            reason,
        )
        return None

    # -- writing ------------------------------------------------------------------------

    async def commit(
        self,
        events: Sequence[E],
        context: AggregateContext[Aggregate[C, E, S]],
        metadata: Mapping[str, str],
    ) -> list[EventEnvelope[E]]:
        """Store ``events`` after ``context.version`` (with a snapshot when one is due) in
        one atomic write; return the committed envelopes. Raises AggregateConflict if another
        writer committed first; nothing is stored then.

        A write slower than ``cqrs.telemetry.configure(slow_commit=...)`` (1 s by default)
        is logged as a WARNING on ``cqrs.store``. When tracing, the commit is a ``commit
        <type>`` span whose W3C trace context goes into each event's metadata (see
        :data:`cqrs.telemetry.TRACEPARENT`)."""
        if not events:
            return []
        traced = telemetry.span("commit", self.aggregate_type)
        if traced is None:
            return await self._commit(events, context, metadata)
        with traced as current:
            current.set_attribute("cqrs.events.count", len(events))
            metadata = telemetry.with_trace_context(metadata, current)
            return await self._commit(events, context, metadata)

    async def _commit(
        self,
        events: Sequence[E],
        context: AggregateContext[Aggregate[C, E, S]],
        metadata: Mapping[str, str],
    ) -> list[EventEnvelope[E]]:
        aggregate_id = context.aggregate_id
        validate_input(aggregate_id, metadata)
        aggregate_type = self.aggregate_type
        encode = self.codec.encode
        metadata_json = encode(metadata) if metadata else b"{}"
        timestamp = datetime.now(UTC)
        first = context.version + 1
        rows = []
        names = self._names
        event_ids = _new_event_ids(len(events))
        for offset, event in enumerate(events):
            event_type = names.get(type(event))
            if event_type is None:
                msg = (
                    f"{type(event).__qualname__} is not listed in "
                    f"{self.aggregate_class.__qualname__}.event_classes"
                )
                raise ConfigurationError(msg)
            try:
                payload = encode(event)
            except TypeError as error:
                msg = f"cannot encode event {event_type!r}: {error}"
                raise UnexpectedError(msg) from error
            rows.append(
                SerializedEvent(
                    aggregate_type,
                    aggregate_id,
                    first + offset,
                    event_type,
                    self._versions[event_type],
                    payload,
                    metadata_json,
                    timestamp,
                    event_ids[offset],
                )
            )
        last = first + len(rows) - 1
        # The context's aggregate moves with its version, whether or not a snapshot is due, so
        # a context stays usable for the next command. Applying before the write also keeps
        # out events the aggregate cannot apply (they would make it unloadable).
        apply = context.aggregate.apply
        for event in events:
            apply(event)
        snapshot = self._snapshot_after(context, last)
        started = time.perf_counter()
        positions = await self.repository.persist(rows, snapshot)
        elapsed = time.perf_counter() - started
        slow = telemetry.settings.slow_commit
        if slow is not None and elapsed > slow:
            logger.warning(
                "slow commit: %d event(s) of %s %r took %.3f s (more than %s s)",
                len(rows),
                aggregate_type,
                aggregate_id,
                elapsed,
                slow,
            )
        telemetry.events_committed(aggregate_type, len(rows))
        context.version = last
        if snapshot is not None:
            context.snapshot_version = snapshot.snapshot_version
            context.replace_snapshot = False
        frozen_metadata = dict(metadata)
        return [
            EventEnvelope(
                aggregate_type,
                aggregate_id,
                row.sequence,
                event,
                frozen_metadata,
                timestamp,
                event_id,
                position,
            )
            for row, event, event_id, position in zip(
                rows, events, event_ids, positions, strict=True
            )
        ]

    def _snapshot_after(
        self, context: AggregateContext[Aggregate[C, E, S]], last: int
    ) -> SerializedSnapshot | None:
        every = self.snapshot_every
        if every is None or (
            context.version // every == last // every and not context.replace_snapshot
        ):
            return None
        try:
            state = self.codec.encode(context.aggregate)
        except TypeError as error:
            msg = (
                f"cannot snapshot {self.aggregate_class.__qualname__}: {error}; snapshots need "
                "an encodable aggregate (a dataclass or msgspec.Struct)"
            )
            raise UnexpectedError(msg) from error
        return SerializedSnapshot(
            self.aggregate_type,
            context.aggregate_id,
            self._snapshot_prefix + state + b"}",
            last,
            context.snapshot_version + 1,
        )


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _new_event_ids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs from one ``os.urandom`` call instead of one each."""
    entropy = os.urandom(16 * count)
    return [
        uuid.UUID(int=(int.from_bytes(entropy[i : i + 16]) & _UUID4_CLEAR) | _UUID4_SET)
        for i in range(0, 16 * count, 16)
    ]


def _uuid(text: str) -> uuid.UUID:
    """An event id read as text (SQLite, MongoDB), parsed about 3x faster than uuid.UUID();
    a malformed one raises ValueError as uuid.UUID() does."""
    return msgspec.convert(text, uuid.UUID)


def _deserialization_error(
    row: SerializedEvent, part: str, error: Exception
) -> DeserializationError:
    reason = error.args[0] if isinstance(error, KeyError) and error.args else error
    return DeserializationError(
        f"cannot decode the {part} of event {row.event_type!r} version {row.event_version!r} "
        f"of {row.aggregate_type} {row.aggregate_id!r} at sequence {row.sequence}: {reason}"
    )


def _aggregate_type(aggregate_class: type[object]) -> str:
    name = getattr(aggregate_class, "aggregate_type", None)
    if not isinstance(name, str) or not name:
        msg = f"{aggregate_class.__qualname__}.aggregate_type must be a non-empty string"
        raise ConfigurationError(msg)
    try:
        check_ids(name, _STAND_IN)
    except ValueError as error:
        msg = f"{aggregate_class.__qualname__}.{error}"
        raise ConfigurationError(msg) from error
    return name


def _snapshot_schema(aggregate_class: type[object]) -> str:
    """The fingerprint stored with (and required of) the snapshots of ``aggregate_class``."""
    name = aggregate_class.__qualname__
    declared = getattr(aggregate_class, "snapshot_schema", None)
    if declared is not None:
        if not isinstance(declared, str) or not declared:
            msg = f"{name}.snapshot_schema must be a non-empty string or None, not {declared!r}"
            raise ConfigurationError(msg)
        return declared
    try:
        return schema_fingerprint(aggregate_class)
    except (TypeError, ValueError, NameError) as error:  # NameError: an unresolved annotation
        msg = (
            f"cannot snapshot {name}: its state has no JSON Schema to fingerprint ({error}); "
            "snapshots need a dataclass, msgspec.Struct or pydantic model of encodable "
            f"fields, or a {name}.snapshot_schema naming the format"
        )
        raise ConfigurationError(msg) from error


def _event_classes(aggregate_class: type[object]) -> dict[str, type[object]]:
    classes = getattr(aggregate_class, "event_classes", None)
    if not classes:
        msg = f"{aggregate_class.__qualname__}.event_classes must list its event classes"
        raise ConfigurationError(msg)
    by_name: dict[str, type[object]] = {}
    for cls in classes:
        name = event_type_of(cls)
        if name in by_name and by_name[name] is not cls:
            msg = f"{aggregate_class.__qualname__}: two event classes are named {name!r}"
            raise ConfigurationError(msg)
        by_name[name] = cls
    return by_name
