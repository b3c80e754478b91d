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
from typing import TypeVar, cast

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, tuple_row

from cqrs.codec import Codec, default_codec
from cqrs.errors import DatabaseConnectionError
from cqrs.repository import (
    AsyncResource,
    SerializedEvent,
    SerializedSnapshot,
    read_pages,
    validate_identifier,
)
from cqrs_postgres.connection import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_TIMEOUT,
    Pool,
    borrow,
    new_pool,
    open_pool,
    raw_json_cursor,
)
from cqrs_postgres.schema import apply_event_schema, schema_version_table
from cqrs_postgres.views import PostgresViewRepository

__all__ = ["PostgresEventRepository", "from_url"]

V = TypeVar("V")

MAX_BATCH = (1 << 20) - 1
"""The most events one ``persist`` can store (the index bits of a position)."""

_EVENTS = """WITH written AS (
  INSERT INTO {events} (aggregate_type, aggregate_id, sequence, event_type, event_version,
    payload, metadata, timestamp, event_id, position)
  SELECT %b, %b, sequence, event_type, event_version, payload, metadata, timestamp, event_id,
    (pg_current_xact_id()::text::numeric * 1048576 + ordinal)::bigint
  FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::json[], %b::json[],
    %b::timestamptz[], %b::uuid[])
    WITH ORDINALITY AS batch (sequence, event_type, event_version, payload, metadata,
      timestamp, event_id, ordinal)
  RETURNING position
)"""

_SNAPSHOT = """, snapshot AS (
  INSERT INTO {snapshots} AS stored (aggregate_type, aggregate_id, last_sequence,
    current_snapshot, payload, timestamp)
  VALUES (%b, %b, %b, %b, %b::json, CURRENT_TIMESTAMP)
  ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
  SET last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot,
    payload = excluded.payload, timestamp = excluded.timestamp
  WHERE stored.last_sequence < excluded.last_sequence
)"""

_RETURN = " SELECT position FROM written ORDER BY position"

_ONE_AGGREGATE = """SELECT sequence, event_type, event_version, payload, metadata,
  COALESCE(timestamp, 'epoch'), event_id, position
FROM {events} WHERE aggregate_type = %b AND aggregate_id = %b AND sequence > %b
ORDER BY sequence LIMIT %b"""

# Only rows of transactions below the snapshot's xmin: see the module docstring. Positions
# are computed in numeric, not with a bigint shift, which wraps silently: an id of 2**43 or
# more fails the commit ("bigint out of range") and the read bound is clamped to bigint.
_HORIZON = (
    "LEAST(pg_snapshot_xmin(pg_current_snapshot())::text::numeric * 1048576 - 1, "
    "9223372036854775807)::bigint"
)
_ALL = (
    """SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
  metadata, COALESCE(timestamp, 'epoch'), event_id, position
FROM {events} WHERE position > %b
  AND position <= """
    + _HORIZON
    + """
ORDER BY position LIMIT %b"""
)

_ALL_OF_TYPE = (
    """SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
  metadata, COALESCE(timestamp, 'epoch'), event_id, position
FROM {events} WHERE aggregate_type = %b AND position > %b
  AND position <= """
    + _HORIZON
    + """
ORDER BY position LIMIT %b"""
)

_NEWEST_ALL = "SELECT max(position) FROM {events}"
_NEWEST_OF_TYPE = "SELECT max(position) FROM {events} WHERE aggregate_type = %b"

_GET_SNAPSHOT = """SELECT payload, last_sequence, current_snapshot FROM {snapshots}
WHERE aggregate_type = %b AND aggregate_id = %b"""


def _text(payload: bytes | str) -> str:
    return payload.decode() if isinstance(payload, bytes) else payload


class PostgresEventRepository(AsyncResource):
    """Events and snapshots in PostgreSQL tables (a PersistedEventRepository).

    ``pool`` is a psycopg_pool pool (see :func:`~cqrs_postgres.default_postgres_pool`);
    the repository borrows one connection per operation, in autocommit mode. A commit is
    one statement (one round trip): every event and the snapshot upsert in one CTE, so it is
    atomic. Statements are prepared on the server as the connections' ``prepare_threshold``
    says (pools from this package: at first use; set it to None behind a transaction-mode
    pgbouncer). Payloads come back as undecoded JSON text for the core codec.

    A pool passed in belongs to the caller: :meth:`open` opens it if needed, :meth:`close`
    leaves it open. A repository from :func:`from_url` owns its pool and closes it.
    Call :meth:`create_schema` once (it is idempotent) before the first use.
    """

    def __init__(
        self,
        pool: Pool,
        events_table: str = "events",
        snapshots_table: str = "snapshots",
        *,
        owns_pool: bool = False,
        page_size: int = 1000,
        hold_back_wait: float = 1.0,
        open_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.pool = pool
        self.events_table = validate_identifier(events_table)
        self.snapshots_table = validate_identifier(snapshots_table)
        schema_version_table(events_table)
        if not isinstance(page_size, int) or page_size < 1:
            msg = f"page_size must be a positive int, not {page_size!r}"
            raise ValueError(msg)
        self.page_size = page_size
        self.hold_back_wait = hold_back_wait
        self._owns_pool = owns_pool
        self._pool_spent = False
        self._open_timeout = open_timeout
        names = {
            "events": sql.Identifier(self.events_table),
            "snapshots": sql.Identifier(self.snapshots_table),
        }

        def build(text: str) -> bytes:
            return sql.SQL(text).format(**names).as_bytes(None)

        self._persist = build(_EVENTS + _RETURN)
        self._persist_with_snapshot = build(_EVENTS + _SNAPSHOT + _RETURN)
        self._one_aggregate = build(_ONE_AGGREGATE)
        self._all = build(_ALL)
        self._all_of_type = build(_ALL_OF_TYPE)
        self._get_snapshot = build(_GET_SNAPSHOT)
        self._newest_all = build(_NEWEST_ALL)
        self._newest_of_type = build(_NEWEST_OF_TYPE)

    def with_tables(self, events_table: str, snapshots_table: str) -> PostgresEventRepository:
        """A repository on the same pool (which it does not own) using these tables."""
        return PostgresEventRepository(
            self.pool,
            events_table,
            snapshots_table,
            page_size=self.page_size,
            hold_back_wait=self.hold_back_wait,
        )

    async def open(self) -> None:
        """Open the pool if it is not open yet (idempotent); raise DatabaseConnectionError if
        the server cannot be reached. An owned pool, once closed, is replaced by a new one
        (psycopg pools cannot reopen)."""
        if self._owns_pool and self._pool_spent:
            old = self.pool
            self.pool = new_pool(
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

    async def close(self) -> None:
        """Close the pool if this repository owns it (idempotent)."""
        if self._owns_pool and not self.pool.closed:
            await self.pool.close()
            self._pool_spent = True

    async def create_schema(self) -> None:
        """Apply the DDL files not yet applied to these tables (see
        :mod:`cqrs_postgres.schema`); safe when several processes run it at once."""
        async with borrow(self.pool, f"create schema for {self.events_table}") as conn:
            await apply_event_schema(conn, self.events_table, self.snapshots_table)

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
        async with borrow(self.pool, f"read {aggregate_type} {aggregate_id!r}") as conn:
            cursor = raw_json_cursor(conn)
            await cursor.execute(self._one_aggregate, (aggregate_type, aggregate_id, after, limit))
            rows = await cursor.fetchall()
        return [SerializedEvent(aggregate_type, aggregate_id, *row) for row in rows]

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None."""
        what = f"read snapshot of {aggregate_type} {aggregate_id!r}"
        async with borrow(self.pool, what) as conn:
            cursor = raw_json_cursor(conn)
            await cursor.execute(self._get_snapshot, (aggregate_type, aggregate_id))
            row = await cursor.fetchone()
        if row is None:
            return None
        payload, last_sequence, version = row
        return SerializedSnapshot(aggregate_type, aggregate_id, payload, last_sequence, version)

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Store the events and the snapshot in one statement; return their positions.

        Raises AggregateConflict if a sequence is taken (nothing is stored then).
        """
        if not events:
            return []
        first = events[0]
        if len(events) > MAX_BATCH:
            msg = f"persist takes at most {MAX_BATCH} events at once, not {len(events)}"
            raise ValueError(msg)
        for offset, event in enumerate(events):
            if (
                event.aggregate_type != first.aggregate_type
                or event.aggregate_id != first.aggregate_id
                or event.sequence != first.sequence + offset
            ):
                msg = "persist takes consecutive events of one aggregate"
                raise ValueError(msg)
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
        ]
        statement = self._persist
        if snapshot is not None:
            statement = self._persist_with_snapshot
            params += [
                snapshot.aggregate_type,
                snapshot.aggregate_id,
                snapshot.last_sequence,
                snapshot.snapshot_version,
                _text(snapshot.payload),
            ]
        what = f"persist {first.aggregate_type} {first.aggregate_id!r}"
        async with borrow(self.pool, what) as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute(statement, params)
            rows = await cursor.fetchall()
        return [cast("int", row[0]) for row in rows]

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
            async with borrow(self.pool, what) as conn:
                cursor = raw_json_cursor(conn)
                if aggregate_type is None:
                    await cursor.execute(self._all, (after, self.page_size))
                else:
                    params = (aggregate_type, after, self.page_size)
                    await cursor.execute(self._all_of_type, params)
                rows = await cursor.fetchall()
                if len(rows) < self.page_size and newest is None:
                    newest = await self._newest(conn, aggregate_type)
                    deadline = time.monotonic() + self.hold_back_wait
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

    async def _newest(
        self, conn: AsyncConnection[TupleRow], aggregate_type: str | None
    ) -> int | None:
        cursor = conn.cursor(row_factory=tuple_row, binary=True)
        if aggregate_type is None:
            await cursor.execute(self._newest_all)
        else:
            await cursor.execute(self._newest_of_type, (aggregate_type,))
        row = await cursor.fetchone()
        return None if row is None else cast("int | None", row[0])

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> PostgresViewRepository[V]:
        """A view repository on this repository's pool."""
        return PostgresViewRepository(view_type, table, self.pool, codec=codec)


def from_url(
    url: str,
    *,
    events_table: str = "events",
    snapshots_table: str = "snapshots",
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
) -> PostgresEventRepository:
    """An unopened repository that owns a new pool to ``url`` (what ``cqrs.connect`` uses).
    ``open()`` connects, raising DatabaseConnectionError within about ``timeout`` seconds if
    the server cannot be reached; ``close()`` closes the pool."""
    repository_tables = (validate_identifier(events_table), validate_identifier(snapshots_table))
    pool = new_pool(url, min_size=min_size, max_size=max_size, timeout=timeout)
    return PostgresEventRepository(pool, *repository_tables, owns_pool=True, open_timeout=timeout)
