"""The PostgreSQL event repository.

Global order: ``position = (transaction id << 20) + index of the row in its commit`` (the
64-bit transaction id, epoch included, must stay below 2**43, else the commit fails), and
:meth:`PostgresEventRepository.stream_all_events` reads only rows whose transaction id is
below the xmin of its own snapshot, i.e. rows of transactions that had all finished when the
page was read. A transaction that is still running has an id at or above that xmin, so all
its rows get positions above everything a reader can have seen: positions only grow along
the stream even though writers commit in parallel and out of id order.

The cost: a writing transaction anywhere on the server (any table, even an idle session
that wrote something and did not commit) holds ``stream_all_events`` back until it ends.
Short ones are waited for: a stream waits up to ``hold_back_wait`` seconds for the events
already committed when it reached its end, so a stream started after a commit includes it.
A long-running transaction makes each stream end after that wait without the events
committed since it began; they follow in a later read, in order. Per-aggregate reads
(``get_events``, loads) are never held back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial
from itertools import starmap
from typing import Literal, TypeVar, cast

import psycopg
from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg.abc import Loader
from psycopg.adapt import AdaptersMap
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.string import TextBinaryLoader

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict, ConfigurationError, DatabaseConnectionError
from cqrs.repository import (
    AsyncResource,
    SerializedEvent,
    SerializedSnapshot,
    check_batch,
    check_page_size,
    read_pages,
    stored_positions,
    validate_identifier,
)
from cqrs_postgres import _operations as operations
from cqrs_postgres.checkpoints import PostgresCheckpointStore
from cqrs_postgres.connection import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_TIMEOUT,
    Connections,
    Pool,
    _JsonbBinaryLoader,
    new_pool,
    open_pool,
    raw_json_cursor,
)
from cqrs_postgres.schema import apply_event_schema, schema_version_table
from cqrs_postgres.statements import PostgresStatements
from cqrs_postgres.views import PostgresViewRepository
from cqrs_postgres.wake_ups import CommitNotifier, PostgresWakeUps

__all__ = ["PostgresEventRepository", "from_url"]

V = TypeVar("V")

DEFAULT_PAGE_SIZE = 1000
DEFAULT_HOLD_BACK_WAIT = 1.0

Notify = Literal["after_commit", "in_transaction"] | None
"""How commits notify listeners (see :mod:`cqrs_postgres.wake_ups`)."""
_NOTIFY_MODES = ("after_commit", "in_transaction", None)

_JSON_OID = psycopg.postgres.types["json"].oid
_BINARY = pq.Format.BINARY


def _installed_loader() -> type[Loader] | None:
    # With psycopg's C extension, registering TextBinaryLoader installs the extension's own
    # class of that name: the one a configured connection returns (see _cursor).
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_loader("json", TextBinaryLoader)
    return adapters.get_loader(_JSON_OID, _BINARY)


_RAW_JSON_LOADER = _installed_loader()

MAX_BATCH = (1 << 20) - 1
"""The most events one ``persist`` can store (the index bits of a position)."""


def _text(payload: bytes | str) -> str:
    return payload.decode() if isinstance(payload, bytes) else payload


class PostgresEventRepository(AsyncResource):
    """Events and snapshots in PostgreSQL tables (a PersistedEventRepository).

    ``pool`` is a psycopg_pool pool (see :func:`~cqrs_postgres.default_postgres_pool`);
    the repository borrows one connection per operation, in autocommit mode. A commit is
    one statement (one round trip): every event and the snapshot upsert in one CTE, so it is
    atomic. Statements are prepared on the server as the connections' ``prepare_threshold``
    says (pools from this package: at first use; set it to None behind a transaction-mode
    pgbouncer). Payloads come back as undecoded JSON text for the core codec. ``statements``
    holds the SQL it runs (:class:`~cqrs_postgres.statements.PostgresStatements`).

    A pool passed in belongs to the caller: :meth:`open` opens it if needed, :meth:`close`
    leaves it open (and the repository refuses work with NotOpenError until reopened; over
    a caller's open pool, no :meth:`open` is needed first). A repository from
    :func:`from_url` owns its pool and closes it. Call :meth:`create_schema` once (it is
    idempotent) before the first use.

    A connection the server dropped (a restart, a killed backend) is found broken only when
    used: reads and commits are then sent once more on a fresh connection, so only
    operations in flight during the fault can fail. A commit is safe to repeat: a batch
    already stored with the same event ids returns its stored positions.

    Commits notify the channel ``<events table>_commits`` for :meth:`wake_ups` listeners in
    this and other processes: ``notify="after_commit"`` (the default) right after the
    commit, off its path; ``"in_transaction"`` in the commit statement itself, which can
    cost concurrent writers half their throughput; None not at all (listeners then
    rely on polling, or on other writers' notifications). See :mod:`cqrs_postgres.wake_ups`.
    """

    def __init__(
        self,
        pool: Pool,
        events_table: str = "events",
        snapshots_table: str = "snapshots",
        *,
        owns_pool: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        hold_back_wait: float = DEFAULT_HOLD_BACK_WAIT,
        open_timeout: float = DEFAULT_TIMEOUT,
        notify: Notify = "after_commit",
    ) -> None:
        if notify not in _NOTIFY_MODES:
            msg = f"notify must be 'after_commit', 'in_transaction' or None, not {notify!r}"
            raise ConfigurationError(msg)
        self.notify: Notify = notify
        self.statements = PostgresStatements.for_tables(
            events_table, snapshots_table, notify_in_transaction=notify == "in_transaction"
        )
        self.events_table, self.snapshots_table = events_table, snapshots_table
        schema_version_table(events_table)
        self.page_size = check_page_size(page_size)
        self.hold_back_wait = hold_back_wait
        owner = f"PostgresEventRepository({events_table!r})"
        self._connections = Connections(pool, owner)
        # An owned pool's notifications go through a pool of their own (at most one
        # connection, made at the first commit): borrowed from the main pool while the next
        # operation runs, they would grow it to two connections, which it then lends in
        # turn, so back-to-back loads would each find a server process idle for twice as
        # long (measured: 15-50 us more per round trip on a loaded machine).
        self._notify_connections = (
            Connections(pool, owner) if owns_pool and notify == "after_commit" else None
        )
        self._notifier = (
            CommitNotifier(
                self._notify_connections or self._connections,
                self.statements.notify,
                self.statements.channel,
            )
            if notify == "after_commit"
            else None
        )
        self._owns_pool = owns_pool
        self._pool_spent = False
        self._open_timeout = open_timeout

    def with_tables(self, events_table: str, snapshots_table: str) -> PostgresEventRepository:
        """A repository on the same pool (which it does not own) using these tables, with the
        same ``page_size``, ``hold_back_wait``, ``open_timeout`` and ``notify``."""
        return PostgresEventRepository(
            self.pool,
            events_table,
            snapshots_table,
            page_size=self.page_size,
            hold_back_wait=self.hold_back_wait,
            open_timeout=self._open_timeout,
            notify=self.notify,
        )

    @property
    def pool(self) -> Pool:
        """The pool this repository borrows from (a new one after an owned pool reopens)."""
        return self._connections.pool

    async def open(self) -> None:
        """Open the pool if it is not open yet (idempotent); raise DatabaseConnectionError if
        the server cannot be reached. An owned pool, once closed, is replaced by a new one
        (psycopg pools cannot reopen)."""
        if self._owns_pool and self._pool_spent:
            old = self.pool
            self._connections.pool = new_pool(
                cast("str", old.conninfo),
                min_size=old.min_size,
                max_size=old.max_size,
                timeout=old.timeout,
            )
            self._pool_spent = False
        try:
            await open_pool(self.pool, self._open_timeout, probe=self._owns_pool)
        except DatabaseConnectionError:
            self._pool_spent = True
            raise
        notifying = self._notify_connections
        if notifying is not None and (notifying.pool is self.pool or notifying.pool.closed):
            main = self.pool
            notifying.pool = new_pool(
                cast("str", main.conninfo), min_size=0, max_size=1, timeout=main.timeout
            )
            await notifying.pool.open()  # no connection until the first notification
            notifying.closed = False
        self._connections.closed = False

    async def close(self) -> None:
        """Close the pool if this repository owns it (idempotent). Either way the repository
        (and its view repositories) lend no connection until :meth:`open` is called again."""
        if self._notifier is not None:
            await self._notifier.drain()
        self._connections.closed = True
        notifying = self._notify_connections
        if notifying is not None and notifying.pool is not self.pool:
            notifying.closed = True
            await notifying.pool.close()
        if self._owns_pool and not self.pool.closed:
            await self.pool.close()
            self._pool_spent = True

    def _cursor(self, conn: AsyncConnection[TupleRow]) -> AsyncCursor[TupleRow]:
        # raw_json_cursor, for the reads. On a pool this repository owns, its JSON loaders
        # are registered once per connection instead of once per cursor: a cursor-local
        # loader map costs about 30 us per read (measured on 100-event loads). They load
        # binary results only, which nothing but these reads asks for on this pool.
        if not self._owns_pool:
            return raw_json_cursor(conn)
        adapters = conn.adapters
        if adapters.get_loader(_JSON_OID, _BINARY) is not _RAW_JSON_LOADER:
            adapters.register_loader("json", TextBinaryLoader)
            adapters.register_loader("jsonb", _JsonbBinaryLoader)
        return conn.cursor(row_factory=tuple_row, binary=True)

    async def create_schema(self) -> None:
        """Apply the DDL files not yet applied to these tables (see
        :mod:`cqrs_postgres.schema`); safe when several processes run it at once."""

        async def apply(conn: AsyncConnection[TupleRow]) -> list[str]:
            return await apply_event_schema(conn, self.events_table, self.snapshots_table)

        await self._connections.run(f"create schema for {self.events_table}", apply)

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate, by sequence."""
        return await self._read(aggregate_type, aggregate_id, -1, None)

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """The events of one aggregate after ``after_sequence``, by sequence."""
        return await self._read(aggregate_type, aggregate_id, after_sequence, None)

    async def _read(
        self, aggregate_type: str, aggregate_id: str, after: int, limit: int | None
    ) -> list[SerializedEvent]:
        async def read(conn: AsyncConnection[TupleRow]) -> list[SerializedEvent]:
            return await self._rows(conn, aggregate_type, aggregate_id, after, limit)

        return await self._connections.run(f"read {aggregate_type} {aggregate_id!r}", read)

    async def _rows(
        self,
        conn: AsyncConnection[TupleRow],
        aggregate_type: str,
        aggregate_id: str,
        after: int,
        limit: int | None,
    ) -> list[SerializedEvent]:
        cursor = self._cursor(conn)
        statement = self.statements.one_aggregate
        await cursor.execute(statement, (aggregate_type, aggregate_id, after, limit))
        rows = await cursor.fetchall()
        # starmap over a partial: half the cost of a comprehension unpacking each row.
        return list(starmap(partial(SerializedEvent, aggregate_type, aggregate_id), rows))

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None."""

        async def read(conn: AsyncConnection[TupleRow]) -> TupleRow | None:
            cursor = self._cursor(conn)
            await cursor.execute(self.statements.get_snapshot, (aggregate_type, aggregate_id))
            return await cursor.fetchone()

        what = f"read snapshot of {aggregate_type} {aggregate_id!r}"
        row = await self._connections.run(what, read)
        if row is None:
            return None
        payload, last_sequence, version = row
        return SerializedSnapshot(aggregate_type, aggregate_id, payload, last_sequence, version)

    async def get_snapshot_and_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> tuple[SerializedSnapshot | None, list[SerializedEvent]]:
        """The aggregate's snapshot (or None) and the events after it (all without one), in
        one statement (see :func:`cqrs.repository.snapshot_and_events`)."""
        params = {"type": aggregate_type, "id": aggregate_id}

        async def read(conn: AsyncConnection[TupleRow]) -> list[TupleRow]:
            cursor = self._cursor(conn)
            await cursor.execute(self.statements.snapshot_and_events, params)
            return await cursor.fetchall()

        rows = await self._connections.run(f"read {aggregate_type} {aggregate_id!r}", read)
        snapshot = None
        if rows and rows[0][1] is None:
            last_sequence, _, _, payload, _, _, _, version = rows[0]
            snapshot = SerializedSnapshot(
                aggregate_type, aggregate_id, payload, last_sequence, version
            )
            rows = rows[1:]
        return snapshot, list(starmap(partial(SerializedEvent, aggregate_type, aggregate_id), rows))

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Store the events and the snapshot in one statement; return their positions.

        Raises AggregateConflict (nothing is stored then) unless the batch starts right after
        the stored last sequence, or is already stored (same sequences and event ids), in
        which case its stored positions are returned. A write whose outcome is unknown (the
        connection broke) is sent once more on a fresh connection, where it is either stored
        or recognized as stored.
        """
        check_batch(events)
        if len(events) > MAX_BATCH:
            msg = f"persist takes at most {MAX_BATCH} events at once, not {len(events)}"
            raise ValueError(msg)
        first = events[0]
        params: list[object] = [
            first.aggregate_type,
            first.aggregate_id,
            [e.sequence for e in events],
            [e.event_type for e in events],
            [e.event_version for e in events],
            [_text(e.payload) for e in events],
            [_text(e.metadata) for e in events],
            [e.timestamp for e in events],
            [e.event_id for e in events],
            first.aggregate_type,
            first.aggregate_id,
        ]
        statement = self.statements.persist
        if snapshot is not None:
            statement = self.statements.persist_with_snapshot
            params += [
                snapshot.aggregate_type,
                snapshot.aggregate_id,
                snapshot.last_sequence,
                snapshot.snapshot_version,
                _text(snapshot.payload),
            ]
        what = f"persist {first.aggregate_type} {first.aggregate_id!r}"
        notifier = self._notifier

        async def write(conn: AsyncConnection[TupleRow]) -> list[int]:
            cursor = conn.cursor(row_factory=tuple_row)
            try:
                await cursor.execute(statement, params)
                positions = [cast("int", row[0]) for row in await cursor.fetchall()]
            except psycopg.errors.UniqueViolation:
                # A writer took a sequence between this statement's check and its insert.
                if (stored := await self._stored_positions(conn, events)) is None:
                    raise
                return stored
            if positions:
                return positions
            if (stored := await self._stored_positions(conn, events)) is None:
                msg = f"{what}: sequence {first.sequence} does not follow the stored last sequence"
                raise AggregateConflict(msg)
            return stored

        positions = await self._connections.run(what, write)
        if notifier is not None:
            notifier.committed()
        return positions

    async def _stored_positions(
        self, conn: AsyncConnection[TupleRow], events: Sequence[SerializedEvent]
    ) -> list[int] | None:
        """The positions of ``events`` if they are stored already (by their event ids)."""
        first = events[0]
        after = first.sequence - 1
        stored = await self._rows(
            conn, first.aggregate_type, first.aggregate_id, after, len(events)
        )
        return stored_positions(events, stored)

    async def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The aggregate's events by sequence, one page (``page_size``) per query."""

        async def fetch(after: int) -> list[SerializedEvent]:
            return await self._read(aggregate_type, aggregate_id, after, self.page_size)

        async for event in read_pages(fetch, -1, self.page_size, by_sequence=True):
            yield event

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events by position after ``after_position``, one page per query, each page
        limited to finished transactions (see the module docstring).

        At the end it waits (up to ``hold_back_wait`` seconds) until the events that were
        already committed then but held back by an older, still running transaction can be
        read safely, so a stream started after a commit includes that commit.
        """
        after = 0 if after_position is None else after_position
        what = f"stream {self.events_table}"
        newest: int | None = None
        deadline = 0.0
        pause = 0.0005
        while True:
            page = partial(self._page, aggregate_type, after, find_newest=newest is None)
            rows, found = await self._connections.run(what, page)
            if found is not None:
                newest, deadline = found, time.monotonic() + self.hold_back_wait
            for row in rows:
                yield SerializedEvent(*row)
            if rows:
                after = rows[-1][-1]
            if len(rows) == self.page_size:
                continue
            if newest is None or after >= newest or time.monotonic() >= deadline:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def _page(
        self,
        aggregate_type: str | None,
        after: int,
        conn: AsyncConnection[TupleRow],
        *,
        find_newest: bool,
    ) -> tuple[list[TupleRow], int | None]:
        """One page after ``after``; on a short page with ``find_newest``, also the newest
        stored position (0 if none), on the same connection."""
        cursor, statements = self._cursor(conn), self.statements
        if aggregate_type is None:
            await cursor.execute(statements.all, (after, self.page_size))
        else:
            params = {"type": aggregate_type, "after": after, "limit": self.page_size}
            await cursor.execute(statements.all_of_type, params, prepare=False)
        rows = await cursor.fetchall()
        if len(rows) == self.page_size or not find_newest:
            return rows, None
        cursor = conn.cursor(row_factory=tuple_row, binary=True)
        if aggregate_type is None:
            await cursor.execute(statements.newest_all)
        else:
            await cursor.execute(statements.newest_of_type, (aggregate_type,))
        row = await cursor.fetchone()
        newest = None if row is None else cast("int | None", row[0])
        return rows, 0 if newest is None else newest

    def wake_ups(self) -> PostgresWakeUps:
        """A listener for commits to these events, by any process (see
        :class:`cqrs.subscription.WakeUpSource`): it holds its own connection to the pool's
        server (not one of the pool's) from its first wait until it is closed."""
        statements = self.statements
        return PostgresWakeUps(self._connections, statements.listen, statements.channel)

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> PostgresViewRepository[V]:
        """A view repository on this repository's connections: usable while this repository
        is open, and again after it is reopened."""
        return PostgresViewRepository(view_type, table, self._connections, codec=codec)

    def checkpoint_store(self, table: str = "projections") -> PostgresCheckpointStore:
        """The checkpoints, leases and parked events of projections in ``table`` and
        ``<table>_parked``, on this repository's connections: usable while this repository
        is open (call the store's ``create_schema()`` once)."""
        return PostgresCheckpointStore(table, self._connections)

    # Optional methods for operator tools (cqrs.cli.capabilities); not part of the port.

    async def schema_status(self) -> tuple[list[str], list[str]]:
        """The DDL files of ``sql/postgres`` recorded as applied to these tables, and the
        pending ones (which :meth:`create_schema` would apply), by name."""
        return await operations.schema_status(self)

    async def count_events(self, aggregate_type: str | None, after_position: int | None) -> int:
        """How many events of ``aggregate_type`` (every type for None) are stored after
        ``after_position``, counting transactions still running (an estimate for progress)."""
        return await operations.count_events(self, aggregate_type, after_position)

    async def storage_size(self) -> int:
        """Bytes the events and snapshots tables take on disk, with their indexes."""
        return await operations.storage_size(self)

    async def import_events(
        self, events: Sequence[SerializedEvent], snapshots: Sequence[SerializedSnapshot]
    ) -> int:
        """Store events of many aggregates and their snapshots in one transaction; return
        how many events were new.

        Positions follow the given order. Each aggregate's events come in sequence order
        (ValueError otherwise, before any I/O); an event stored already with the same event
        id is skipped (so a retried import stores nothing twice); one stored with another
        event id, or an aggregate whose first event would leave a gap, raises
        AggregateConflict and nothing is stored. A snapshot (at most one per aggregate)
        replaces the stored one only if its ``last_sequence`` is greater.
        """
        return await operations.import_events(self, events, snapshots)


def from_url(
    url: str,
    *,
    events_table: str = "events",
    snapshots_table: str = "snapshots",
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    page_size: int = DEFAULT_PAGE_SIZE,
    hold_back_wait: float = DEFAULT_HOLD_BACK_WAIT,
    notify: Notify = "after_commit",
) -> PostgresEventRepository:
    """An unopened repository that owns a new pool to ``url`` (what ``cqrs.connect`` uses).
    ``open()`` connects, raising DatabaseConnectionError within about ``timeout`` seconds if
    the server cannot be reached; ``close()`` closes the pool. ``page_size`` and
    ``hold_back_wait`` and ``notify`` are passed to :class:`PostgresEventRepository`."""
    repository_tables = (validate_identifier(events_table), validate_identifier(snapshots_table))
    pool = new_pool(url, min_size=min_size, max_size=max_size, timeout=timeout)
    return PostgresEventRepository(
        pool,
        *repository_tables,
        owns_pool=True,
        page_size=page_size,
        hold_back_wait=hold_back_wait,
        open_timeout=timeout,
        notify=notify,
    )
