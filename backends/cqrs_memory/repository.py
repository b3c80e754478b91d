"""The in-memory repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from cqrs.checkpoints import MemoryCheckpoints
from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict
from cqrs.repository import (
    AsyncResource,
    BaseViewRepository,
    SerializedEvent,
    SerializedSnapshot,
    check_batch,
    check_page_size,
    not_open,
    read_pages,
    stored_positions,
    validate_identifier,
)
from cqrs.subscription import LocalSignal, WakeUps
from cqrs_memory.checkpoints import MemoryCheckpointStore

__all__ = ["MemoryDatabase", "MemoryEventRepository", "MemoryViewRepository", "from_url"]

V = TypeVar("V")
_Key = tuple[str, str]


class _EventTable:
    def __init__(self) -> None:
        self.all: list[SerializedEvent] = []
        self.streams: dict[_Key, list[SerializedEvent]] = {}
        self.commits = LocalSignal()


class MemoryDatabase:
    """Named in-memory tables. Repositories given the same database and table names share
    their data, like connections to one server; by default each repository has its own."""

    def __init__(self) -> None:
        self._events: dict[str, _EventTable] = {}
        self._snapshots: dict[str, dict[_Key, SerializedSnapshot]] = {}
        self._views: dict[str, dict[str, tuple[bytes, int]]] = {}
        self._checkpoints: dict[str, MemoryCheckpoints] = {}

    def _event_table(self, name: str) -> _EventTable:
        return self._events.setdefault(name, _EventTable())

    def _snapshot_table(self, name: str) -> dict[_Key, SerializedSnapshot]:
        return self._snapshots.setdefault(name, {})

    def _view_table(self, name: str) -> dict[str, tuple[bytes, int]]:
        return self._views.setdefault(name, {})

    def _checkpoint_table(self, name: str) -> MemoryCheckpoints:
        return self._checkpoints.setdefault(name, MemoryCheckpoints(name))


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
        self.page_size = check_page_size(page_size)
        self.database = MemoryDatabase() if database is None else database
        table = self.database._event_table(events_table)  # noqa: SLF001 - same module
        self._all = table.all
        self._streams = table.streams
        self._commits = table.commits
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

    async def get_snapshot_and_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> tuple[SerializedSnapshot | None, list[SerializedEvent]]:
        """The stored snapshot (or None) and the events after it (all without one)."""
        self._check_open()
        key = (aggregate_type, aggregate_id)
        snapshot = self._snapshots.get(key)
        after = 0 if snapshot is None else snapshot.last_sequence
        return snapshot, self._streams.get(key, [])[after:]

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
        self._commits.notify()
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

    def wake_ups(self) -> WakeUps:
        """A listener woken by every commit to this events table of the database, by any
        repository sharing it (see :class:`cqrs.subscription.WakeUpSource`)."""
        return self._commits.listen()

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> MemoryViewRepository[V]:
        """A view repository kept with this repository's data, usable while this repository
        is open."""
        return MemoryViewRepository(view_type, table, self, codec=codec)

    def checkpoint_store(self, table: str = "projections") -> MemoryCheckpointStore:
        """The checkpoints, leases and parked events of projections in ``table`` of this
        repository's database (shared by the repositories on it), usable while this
        repository is open."""
        return MemoryCheckpointStore(table, self)


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


class MemoryViewRepository(BaseViewRepository[V]):
    """Views in process memory, stored encoded (so loads return fresh copies), with
    optimistic locking by version.

    Given a ``repository``, the views are kept in its database and raise NotOpenError while
    it is not open; without one they have their own storage and no lifecycle.
    """

    def __init__(
        self,
        view_type: type[V],
        table: str,
        repository: MemoryEventRepository | None = None,
        *,
        codec: Codec = default_codec,
    ) -> None:
        super().__init__(view_type, table, codec=codec)
        self.repository = repository
        database = MemoryDatabase() if repository is None else repository.database
        self._rows = database._view_table(self.table)  # noqa: SLF001 - same module

    def _check_open(self) -> None:
        if self.repository is not None:
            self.repository._check_open()  # noqa: SLF001 - same module

    async def _create_schema(self) -> None:
        pass

    async def _fetch(self, view_id: str) -> tuple[bytes, int] | None:
        return self._rows.get(view_id)

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        row = self._rows.get(view_id)
        if (0 if row is None else row[1]) != expected:
            return False
        self._rows[view_id] = (payload, version)
        return True


def from_url(url: str) -> MemoryEventRepository:  # noqa: ARG001 - every memory:// is new
    """The repository for ``memory://`` (a new, empty one)."""
    return MemoryEventRepository()
