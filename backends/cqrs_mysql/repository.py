"""The MySQL / MariaDB event repository.

Global order: MySQL has no transaction-id horizon to read below (PostgreSQL's way), so
commits take their positions from one counter row per events table (``<events>_counter``),
raised first thing in the committing transaction. The row stays locked until that
transaction ends, so positions are handed out in commit order: the next commit gets its
numbers only after the previous one is visible, and a reader that saw position ``p`` can
never see a smaller one appear later. Readers take no lock and are never held back.

The cost: commits to one events table are serialized from raising the counter to the end
of COMMIT (the commit is a single round trip, see
:meth:`~cqrs_mysql.statements.MysqlStatements.persist`, so no network wait is inside), which
bounds the rate of concurrent commits: measured with ``python -m benchmarks.mysql_order``,
see docs/backends.md. Readers and per-aggregate loads are not affected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncmy
import asyncmy.errors

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict
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
from cqrs.subscription import LocalSignal, WakeUps
from cqrs_mysql.connection import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_TIMEOUT,
    Connections,
    MysqlConfig,
    parse_url,
    translate,
)
from cqrs_mysql.schema import apply_event_schema, schema_version_table
from cqrs_mysql.statements import MysqlStatements
from cqrs_mysql.wake_ups import MysqlWakeUps

if TYPE_CHECKING:
    from cqrs_mysql.checkpoints import MysqlCheckpointStore
    from cqrs_mysql.views import MysqlViewRepository

__all__ = ["MysqlEventRepository", "from_url"]

V = TypeVar("V")

DEFAULT_PAGE_SIZE = 1000
_DUPLICATE_KEY = 1062


def _text(payload: bytes | str) -> str:
    return payload.decode() if isinstance(payload, bytes) else payload


def _utc(moment: datetime) -> datetime:
    """A naive UTC datetime, what the session (time zone UTC) stores."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


class _Aware:
    """Makes the session's naive UTC timestamps aware, reusing the last result: the events of
    one commit share a timestamp, and ``replace`` is the costliest step of building a row."""

    __slots__ = ("_aware", "_naive")

    def __init__(self) -> None:
        self._naive: datetime | None = None
        self._aware = datetime.min.replace(tzinfo=UTC)

    def __call__(self, moment: datetime) -> datetime:
        if moment != self._naive:
            self._naive, self._aware = moment, moment.replace(tzinfo=UTC)
        return self._aware


def _name(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MysqlEventRepository(AsyncResource):
    """Events and snapshots in MySQL or MariaDB tables (a PersistedEventRepository), on
    asyncmy.

    Why asyncmy: of the two maintained asyncio drivers, it is the one released most recently
    and most often (0.2.18 in November 2026, several releases a year, against aiomysql's
    0.3.2 of October 2025); its protocol is compiled (Cython), so rows decode faster than
    aiomysql's pure-Python PyMySQL core; and it ships type stubs (``py.typed``).

    The repository owns a pool of ``min_size`` to ``max_size`` connections to ``config``
    (made by :meth:`open`, closed by :meth:`close`; reopening makes a new one). Every
    operation borrows one connection; a commit is one query of several statements (one round
    trip), so it is atomic; payloads come back as undecoded JSON text for the core codec.
    ``statements`` holds the SQL it runs (:class:`~cqrs_mysql.statements.MysqlStatements`).
    Call :meth:`create_schema` once (it is idempotent) before the first use.

    A connection the server dropped is found broken only when used: reads and commits are
    then sent once more on a fresh connection, so only operations in flight during the
    fault can fail. A commit is safe to repeat: a batch already stored with the same event
    ids returns its stored positions. A batch's query must fit the server's
    ``max_allowed_packet`` (16 MB by default).
    """

    def __init__(
        self,
        config: MysqlConfig,
        events_table: str = "events",
        snapshots_table: str = "snapshots",
        *,
        min_size: int = DEFAULT_MIN_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.statements = MysqlStatements.for_tables(events_table, snapshots_table)
        self.events_table, self.snapshots_table = events_table, snapshots_table
        schema_version_table(events_table)
        validate_identifier(f"{events_table}_counter")
        self.page_size = check_page_size(page_size)
        self.config = config
        self._connections = Connections(
            config,
            f"MysqlEventRepository({events_table!r})",
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
        )
        self._commits = LocalSignal()

    def with_tables(self, events_table: str, snapshots_table: str) -> MysqlEventRepository:
        """A new, unopened repository on the same server using these tables, with the same
        pool sizes, timeout and ``page_size``."""
        connections = self._connections
        return MysqlEventRepository(
            self.config,
            events_table,
            snapshots_table,
            min_size=connections.min_size,
            max_size=connections.max_size,
            timeout=connections.timeout,
            page_size=self.page_size,
        )

    def __repr__(self) -> str:
        state = "closed" if self._connections.pool is None else "open"
        return f"MysqlEventRepository({self.config!r}, {self.events_table!r}, {state})"

    async def open(self) -> None:
        """Open the pool (idempotent); raise DatabaseConnectionError naming the server when
        it cannot be reached within ``timeout`` seconds."""
        await self._connections.open()

    async def close(self) -> None:
        """Close the pool (idempotent); the repository, its view repositories and checkpoint
        stores then refuse work with NotOpenError until it is opened again."""
        await self._connections.close()

    async def create_schema(self) -> None:
        """Apply the DDL files not yet applied to these tables (see
        :mod:`cqrs_mysql.schema`); safe when several processes run it at once."""

        async def apply(conn: asyncmy.Connection) -> list[str]:
            return await apply_event_schema(conn, self.events_table, self.snapshots_table)

        await self._connections.run(f"create schema for {self.events_table}", apply)

    # -- reading ------------------------------------------------------------------------

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate, by sequence."""
        return await self._read(aggregate_type, aggregate_id, 0, None)

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """The events of one aggregate after ``after_sequence``, by sequence."""
        return await self._read(aggregate_type, aggregate_id, after_sequence, None)

    async def _read(
        self, aggregate_type: str, aggregate_id: str, after: int, limit: int | None
    ) -> list[SerializedEvent]:
        async def read(conn: asyncmy.Connection) -> list[SerializedEvent]:
            return await self._rows(conn, aggregate_type, aggregate_id, after, limit)

        return await self._connections.run(f"read {aggregate_type} {aggregate_id!r}", read)

    async def _rows(
        self,
        conn: asyncmy.Connection,
        aggregate_type: str,
        aggregate_id: str,
        after: int,
        limit: int | None,
    ) -> list[SerializedEvent]:
        cursor = conn.cursor()
        # LIMIT takes no NULL: the largest bigint stands for none.
        params = (aggregate_type, aggregate_id, after, (1 << 63) - 1 if limit is None else limit)
        await cursor.execute(self.statements.one_aggregate, params)
        rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
        aware = _Aware()
        return [
            SerializedEvent(
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                event_version,
                payload,
                metadata,
                aware(timestamp),
                event_id,
                position,
            )
            for sequence, event_type, event_version, payload, metadata, timestamp, event_id, position in rows  # noqa: E501
        ]

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None."""

        async def read(conn: asyncmy.Connection) -> tuple[Any, ...] | None:
            cursor = conn.cursor()
            await cursor.execute(self.statements.get_snapshot, (aggregate_type, aggregate_id))
            row: tuple[Any, ...] | None = await cursor.fetchone()
            return row

        what = f"read snapshot of {aggregate_type} {aggregate_id!r}"
        row = await self._connections.run(what, read)
        if row is None:
            return None
        payload, last_sequence, version = row
        return SerializedSnapshot(aggregate_type, aggregate_id, payload, last_sequence, version)

    async def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The aggregate's events by sequence, ``page_size`` per query."""

        async def fetch(after: int) -> list[SerializedEvent]:
            return await self._read(aggregate_type, aggregate_id, after, self.page_size)

        async for event in read_pages(fetch, 0, self.page_size, by_sequence=True):
            yield event

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events in position order after ``after_position``, ``page_size`` per query;
        never held back (see the module docstring)."""
        size, statements = self.page_size, self.statements
        what = f"stream {self.events_table}"

        async def fetch(after: int) -> list[SerializedEvent]:
            async def read(conn: asyncmy.Connection) -> list[SerializedEvent]:
                cursor = conn.cursor()
                if aggregate_type is None:
                    await cursor.execute(statements.all, (after, size))
                else:
                    await cursor.execute(statements.all_of_type, (aggregate_type, after, size))
                rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
                aware = _Aware()
                return [
                    SerializedEvent(
                        _name(kind),
                        _name(key),
                        sequence,
                        event_type,
                        event_version,
                        payload,
                        metadata,
                        aware(timestamp),
                        event_id,
                        position,
                    )
                    for kind, key, sequence, event_type, event_version, payload, metadata, timestamp, event_id, position in rows  # noqa: E501
                ]

            return await self._connections.run(what, read)

        async for event in read_pages(fetch, after_position or 0, size):
            yield event

    def wake_ups(self) -> WakeUps:
        """A listener for commits to these events (see
        :class:`cqrs.subscription.WakeUpSource`): this repository's commits wake it at once;
        commits by other clients and processes are seen by polling the counter row on a
        connection of its own (see :mod:`cqrs_mysql.wake_ups`)."""
        return MysqlWakeUps(
            self._connections.config, self.statements.last_position, self._commits.listen()
        )

    # -- writing ------------------------------------------------------------------------

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Store the events and the snapshot in one transaction (one query); return their
        positions.

        Raises AggregateConflict (nothing is stored then) unless the batch starts right after
        the stored last sequence, or is already stored (same sequences and event ids), in
        which case its stored positions are returned. The snapshot replaces the stored one
        only if its ``last_sequence`` is greater.
        """
        check_batch(events)
        first = events[0]
        params: list[object] = [first.aggregate_type, first.aggregate_id, first.sequence - 1]
        for e in events:
            params += [
                e.aggregate_type,
                e.aggregate_id,
                e.sequence,
                e.event_type,
                e.event_version,
                _text(e.payload),
                _text(e.metadata),
                _utc(e.timestamp),
                str(e.event_id),
            ]
        if snapshot is not None:
            params += [
                snapshot.aggregate_type,
                snapshot.aggregate_id,
                snapshot.last_sequence,
                snapshot.snapshot_version,
                _text(snapshot.payload),
            ]
        query = self.statements.persist(len(events), snapshot=snapshot is not None)
        what = f"persist {first.aggregate_type} {first.aggregate_id!r}"

        async def write(conn: asyncmy.Connection) -> list[int]:
            try:
                last, written = await _commit(conn, query, params)
            except asyncmy.errors.MySQLError as error:
                if not error.args or error.args[0] != _DUPLICATE_KEY:
                    raise
                # A writer took a sequence between the check and the insert.
                if (stored := await self._stored_positions(conn, events)) is None:
                    raise translate(error, what) from error
                return stored
            if written == len(events):
                return list(range(last - written + 1, last + 1))
            if (stored := await self._stored_positions(conn, events)) is None:
                msg = f"{what}: sequence {first.sequence} does not follow the stored last sequence"
                raise AggregateConflict(msg)
            return stored

        positions = await self._connections.run(what, write)
        self._commits.notify()
        return positions

    async def _stored_positions(
        self, conn: asyncmy.Connection, events: Sequence[SerializedEvent]
    ) -> list[int] | None:
        """The positions of ``events`` if they are stored already (by their event ids)."""
        first = events[0]
        stored = await self._rows(
            conn, first.aggregate_type, first.aggregate_id, first.sequence - 1, len(events)
        )
        return stored_positions(events, stored)

    # -- views and checkpoints ----------------------------------------------------------

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> MysqlViewRepository[V]:
        """A view repository on this repository's connections: usable while this repository
        is open, and again after it is reopened (call its ``create_schema()`` once)."""
        from cqrs_mysql.views import MysqlViewRepository  # noqa: PLC0415 - import cycle

        return MysqlViewRepository(view_type, table, self._connections, codec=codec)

    def checkpoint_store(self, table: str = "projections") -> MysqlCheckpointStore:
        """The checkpoints, leases and parked events of projections in ``table`` and
        ``<table>_parked``, on this repository's connections: usable while this repository
        is open (call the store's ``create_schema()`` once)."""
        from cqrs_mysql.checkpoints import MysqlCheckpointStore  # noqa: PLC0415 - import cycle

        return MysqlCheckpointStore(table, self._connections)


async def _commit(
    conn: asyncmy.Connection, query: str, params: Sequence[object]
) -> tuple[int, int]:
    """Run the commit query (see MysqlStatements.persist); return the counter's new value and
    the number of rows written. On an error the transaction is rolled back."""
    cursor = conn.cursor()
    try:
        await cursor.execute(query, params)
        await cursor.nextset()  # the check's SET
        await cursor.nextset()  # START TRANSACTION
        await cursor.nextset()  # the counter
        last = cursor.lastrowid
        await cursor.nextset()  # the rows
        written = int(cast("int", cursor.rowcount))
        while await cursor.nextset():  # the snapshot, COMMIT
            pass
    except asyncmy.errors.MySQLError:
        if conn.connected:
            await conn.rollback()
        raise
    return last, written


def from_url(
    url: str,
    *,
    events_table: str = "events",
    snapshots_table: str = "snapshots",
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> MysqlEventRepository:
    """An unopened repository for ``mysql://user:password@host:port/database`` (what
    ``cqrs.connect`` uses). ``open()`` connects, raising DatabaseConnectionError within about
    ``timeout`` seconds if the server cannot be reached."""
    return MysqlEventRepository(
        parse_url(url),
        events_table,
        snapshots_table,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        page_size=page_size,
    )
