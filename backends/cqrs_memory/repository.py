"""The in-memory repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Generic, TypeVar

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict, ConfigurationError
from cqrs.repository import (
    AsyncResource,
    SerializedEvent,
    SerializedSnapshot,
    ViewContext,
    check_batch,
    decode_view,
    next_view_version,
    not_open,
    read_pages,
    stored_positions,
    validate_identifier,
)

__all__ = ["MemoryDatabase", "MemoryEventRepository", "MemoryViewRepository", "from_url"]

V = TypeVar("V")
_Key = tuple[str, str]


class _EventTable:
    def __init__(self) -> None:
        self.all: list[SerializedEvent] = []
        self.streams: dict[_Key, list[SerializedEvent]] = {}


class MemoryDatabase:
    """Named in-memory tables. Repositories given the same database and table names share
    their data, like connections to one server; by default each repository has its own."""

    def __init__(self) -> None:
        self._events: dict[str, _EventTable] = {}
        self._snapshots: dict[str, dict[_Key, SerializedSnapshot]] = {}
        self._views: dict[str, dict[str, tuple[bytes, int]]] = {}

    def _event_table(self, name: str) -> _EventTable:
        return self._events.setdefault(name, _EventTable())

    def _snapshot_table(self, name: str) -> dict[_Key, SerializedSnapshot]:
        return self._snapshots.setdefault(name, {})

    def _view_table(self, name: str) -> dict[str, tuple[bytes, int]]:
        return self._views.setdefault(name, {})


class MemoryEventRepository(AsyncResource):
    """Events and snapshots in process memory (a PersistedEventRepository).

    All work happens between two awaits on the event loop, so every method is atomic.
    Table names are validated like other backends' and select tables in ``database``; the
    data lives there, so it outlasts ``close()`` and is seen again after ``open()``, as a
    server's would. Like every backend it must be open to be used (NotOpenError otherwise).
    ``stream_*`` read ``page_size`` events per page.
    """

    def __init__(
        self,
        events_table: str = "events",
        snapshots_table: str = "snapshots",
        *,
        database: MemoryDatabase | None = None,
        page_size: int = 500,
    ) -> None:
        self.events_table = validate_identifier(events_table)
        self.snapshots_table = validate_identifier(snapshots_table)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            msg = f"page_size must be a positive int, not {page_size!r}"
            raise ConfigurationError(msg)
        self.page_size = page_size
        self.database = MemoryDatabase() if database is None else database
        table = self.database._event_table(events_table)  # noqa: SLF001 - same module
        self._all = table.all
        self._streams = table.streams
        self._snapshots = self.database._snapshot_table(snapshots_table)  # noqa: SLF001
        self._open = False

    def with_tables(self, events_table: str, snapshots_table: str) -> MemoryEventRepository:
        """A new, unopened repository over other tables of the same database."""
        return MemoryEventRepository(
            events_table, snapshots_table, database=self.database, page_size=self.page_size
        )

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"MemoryEventRepository({self.events_table!r}, {self.snapshots_table!r}, {state})"

    async def open(self) -> None:
        """Mark the repository open (idempotent)."""
        self._open = True

    async def close(self) -> None:
        """Mark the repository closed (idempotent); the data stays in the database."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise not_open(f"memory repository {self.events_table}/{self.snapshots_table}")

    async def create_schema(self) -> None:
        """Nothing to create."""
        self._check_open()

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate."""
        self._check_open()
        return list(self._streams.get((aggregate_type, aggregate_id), ()))

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """Events after ``after_sequence`` (sequences are 1-based list indexes + 1)."""
        self._check_open()
        return self._streams.get((aggregate_type, aggregate_id), [])[max(after_sequence, 0) :]

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The stored snapshot, or None."""
        self._check_open()
        return self._snapshots.get((aggregate_type, aggregate_id))

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Append the events if their first sequence follows the stored ones; return the
        stored positions if these very events (by event id) are stored already."""
        check_batch(events)
        self._check_open()
        first = events[0]
        key = (first.aggregate_type, first.aggregate_id)
        stream = self._streams.get(key)
        stored = len(stream) if stream is not None else 0
        if first.sequence != stored + 1:
            if stream is not None and first.sequence <= stored:
                index = first.sequence - 1
                positions = stored_positions(events, stream[index : index + len(events)])
                if positions is not None:
                    return positions
            msg = (
                f"{first.aggregate_type} {first.aggregate_id!r}: sequence {first.sequence} "
                f"conflicts with {stored} stored event(s)"
            )
            raise AggregateConflict(msg)
        start = len(self._all) + 1
        stamped = [_with_position(event, start + offset) for offset, event in enumerate(events)]
        if stream is None:
            self._streams[key] = stamped
        else:
            stream.extend(stamped)
        self._all.extend(stamped)
        if snapshot is not None:
            current = self._snapshots.get(key)
            if current is None or current.last_sequence < snapshot.last_sequence:
                self._snapshots[key] = snapshot
        return list(range(start, start + len(stamped)))

    async def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The aggregate's events by sequence, ``page_size`` per page."""
        size = self.page_size

        async def fetch(after: int) -> list[SerializedEvent]:
            self._check_open()
            return self._streams.get((aggregate_type, aggregate_id), [])[after : after + size]

        async for event in read_pages(fetch, 0, size, by_sequence=True):
            yield event

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events in position order, ``page_size`` per page; positions are list indexes + 1."""
        size, events = self.page_size, self._all

        async def fetch(after: int) -> list[SerializedEvent]:
            self._check_open()
            if aggregate_type is None:
                return events[after : after + size]
            page: list[SerializedEvent] = []
            for index in range(after, len(events)):
                event = events[index]
                if event.aggregate_type == aggregate_type:
                    page.append(event)
                    if len(page) == size:
                        break
            return page

        async for event in read_pages(fetch, max(after_position or 0, 0), size):
            yield event

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> MemoryViewRepository[V]:
        """A view repository kept with this repository's data, usable while this repository
        is open."""
        rows = self.database._view_table(validate_identifier(table))  # noqa: SLF001
        return MemoryViewRepository(
            view_type, table, codec=codec, rows=rows, check_open=self._check_open
        )


def _with_position(event: SerializedEvent, position: int) -> SerializedEvent:
    return SerializedEvent(
        event.aggregate_type,
        event.aggregate_id,
        event.sequence,
        event.event_type,
        event.event_version,
        event.payload,
        event.metadata,
        event.timestamp,
        event.event_id,
        position,
    )


class MemoryViewRepository(Generic[V]):
    """Views in process memory, stored encoded (so loads return fresh copies), with
    optimistic locking by version.

    One made by :meth:`MemoryEventRepository.view_repository` raises NotOpenError while that
    repository is not open (``check_open``); one built alone has no lifecycle.
    """

    def __init__(
        self,
        view_type: type[V],
        table: str = "views",
        *,
        codec: Codec = default_codec,
        rows: dict[str, tuple[bytes, int]] | None = None,
        check_open: Callable[[], None] | None = None,
    ) -> None:
        self.view_type = view_type
        self.table = validate_identifier(table)
        self.codec = codec
        self._rows: dict[str, tuple[bytes, int]] = {} if rows is None else rows
        self._check_open = _always_open if check_open is None else check_open

    async def create_schema(self) -> None:
        """Nothing to create."""
        self._check_open()

    async def load(self, view_id: str) -> V | None:
        """The view, or None."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its version, or None."""
        self._check_open()
        row = self._rows.get(view_id)
        if row is None:
            return None
        payload, version = row
        view = decode_view(self.codec, payload, self.view_type, f"view {view_id!r} in {self.table}")
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store the view at ``version`` (default: one more) if unchanged since load."""
        new_version = next_view_version(context, version)
        self._check_open()
        row = self._rows.get(context.view_id)
        current = 0 if row is None else row[1]
        if current != context.version:
            msg = (
                f"view {context.view_id!r} in {self.table} is at version {current}, "
                f"expected {context.version}"
            )
            raise AggregateConflict(msg)
        self._rows[context.view_id] = (self.codec.encode(view), new_version)


def _always_open() -> None:
    return None


def from_url(url: str) -> MemoryEventRepository:  # noqa: ARG001 - every memory:// is new
    """The repository for ``memory://`` (a new, empty one)."""
    return MemoryEventRepository()
