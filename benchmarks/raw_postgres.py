"""Raw PostgreSQL: the Postgres backend's statements and round trips, directly on psycopg 3.

Like the backend: a psycopg_pool pool of autocommit connections (1 to 10) preparing every
statement on the server at first use, one connection borrowed per operation, binary result
rows with ``json`` columns returned as undecoded text. A load is one SELECT (from a snapshot
too: the backend's ``snapshot_and_events`` statement); a commit is one statement (the events
inserted from ``unnest`` arrays if they follow the stored last sequence, with the snapshot
upsert in the same CTE when due), so it is atomic without BEGIN/COMMIT round trips; a page
of one type is planned with its values (never prepared), and a stream ends with the
backend's ``max(position)`` query (its hold-back check). The json-as-text loaders are
registered once per connection (the cheapest way to the same result). The tables are created
by the backend's ``create_schema`` (the DDL is not what is measured). The backend's default
``notify="after_commit"`` leaves the commit statement unchanged and sends its ``pg_notify``
afterwards, off the commit path; the raw side does not send it, so its cost shows in the
ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import AsyncConnection, pq
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.rows import TupleRow
from psycopg.types.string import TextBinaryLoader
from psycopg_pool import AsyncConnectionPool

from benchmarks.raw import AGGREGATE_TYPE, METADATA, RawSide, Row, Snapshot, new_event_ids
from cqrs_postgres import PostgresEventRepository, PostgresViewRepository, PostgresViewStatements

__all__ = ["RawPostgresSide"]


class _JsonbBinaryLoader(Loader):
    format = pq.Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data[1:])  # a version byte, then the JSON text


async def _configure(connection: AsyncConnection[TupleRow]) -> None:
    connection.adapters.register_loader("json", TextBinaryLoader)
    connection.adapters.register_loader("jsonb", _JsonbBinaryLoader)


class RawPostgresSide(RawSide):
    """The raw side on tables ``events_table``/``snapshots_table`` of the server at ``url``."""

    page_size = 1000

    def __init__(
        self,
        url: str,
        events_table: str,
        snapshots_table: str,
        *,
        view_prefix: str,
        snapshot_every: int | None = None,
        max_size: int = 10,
    ) -> None:
        super().__init__(snapshot_every=snapshot_every)
        self.url = url
        self.events_table = events_table
        self.snapshots_table = snapshots_table
        self.view_prefix = view_prefix
        self.pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            configure=_configure,
            open=False,
        )
        # The backend's own statements (its constructor does no I/O), so the raw side cannot
        # drift from what it measures against.
        self.backend = PostgresEventRepository(self.pool, events_table, snapshots_table)
        self.statements = self.backend.statements
        self.view_statements: dict[str, PostgresViewStatements] = {}

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=10)
        await self.backend.create_schema()

    async def close(self) -> None:
        await self.pool.close()

    async def read_events(self, aggregate_id: str, after: int) -> list[Row]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            params = (AGGREGATE_TYPE, aggregate_id, after, None)
            await cursor.execute(self.statements.one_aggregate, params)
            return await cursor.fetchall()

    async def read_snapshot(self, aggregate_id: str) -> tuple[bytes | str, int, int] | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            await cursor.execute(self.statements.get_snapshot, (AGGREGATE_TYPE, aggregate_id))
            row = await cursor.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    async def read_snapshot_and_events(
        self, aggregate_id: str
    ) -> tuple[tuple[bytes | str, int, int] | None, list[Row]]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            params = {"type": AGGREGATE_TYPE, "id": aggregate_id}
            await cursor.execute(self.statements.snapshot_and_events, params)
            rows = await cursor.fetchall()
        if rows and rows[0][1] is None:
            head = rows[0]
            return (head[3], head[0], head[7]), rows[1:]
        return None, rows

    async def write_events(
        self,
        aggregate_id: str,
        version: int,
        events: Sequence[object],
        payloads: list[bytes],
        *,
        timestamp: datetime,
        snapshot: Snapshot | None,
    ) -> None:
        count = len(events)
        metadata = METADATA.decode()
        params: list[object] = [
            AGGREGATE_TYPE,
            aggregate_id,
            list(range(version + 1, version + count + 1)),
            [type(event).event_type for event in events],  # type: ignore[attr-defined]
            [type(event).event_version for event in events],  # type: ignore[attr-defined]
            [payload.decode() for payload in payloads],
            [metadata] * count,
            [timestamp] * count,
            new_event_ids(count),
            AGGREGATE_TYPE,  # the statement's check that the batch follows the stored events
            aggregate_id,
        ]
        statement = self.statements.persist
        if snapshot is not None:
            statement = self.statements.persist_with_snapshot
            params += [
                AGGREGATE_TYPE,
                aggregate_id,
                snapshot.last_sequence,
                snapshot.version,
                snapshot.payload.decode(),
            ]
        async with self.pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            await cursor.fetchall()

    async def read_page(self, after: int, limit: int) -> list[Row]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            params = {"type": AGGREGATE_TYPE, "after": after, "limit": limit}
            await cursor.execute(self.statements.all_of_type, params, prepare=False)  # as backend
            rows = await cursor.fetchall()
            if len(rows) < limit:  # the end: the backend's hold-back check, same connection
                await cursor.execute(self.statements.newest_of_type, (AGGREGATE_TYPE,))
                newest = await cursor.fetchone()
                last = rows[-1][-1] if rows else after
                if newest is not None and newest[0] is not None and newest[0] > last:
                    msg = "events held back by a running transaction: the raw side stops here"
                    raise RuntimeError(msg)
            return rows

    async def create_view_table(self, table: str) -> str:
        full = f"{self.view_prefix}{table}"
        views = PostgresViewRepository(object, full, self.pool)
        await views.create_schema()
        self.view_statements[full] = views.statements
        return full

    async def read_view(self, table: str, view_id: str) -> tuple[bytes | str, int] | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(binary=True)
            await cursor.execute(self.view_statements[table].load, (view_id,))
            row = await cursor.fetchone()
        return None if row is None else (row[0], row[1])

    async def write_view(
        self, table: str, view_id: str, payload: bytes, loaded: int, version: int
    ) -> None:
        statements = self.view_statements[table]
        async with self.pool.connection() as conn:
            if loaded == 0:
                params: tuple[object, ...] = (view_id, version, payload.decode())
                cursor = await conn.execute(statements.insert, params)
            else:
                params = (version, payload.decode(), view_id, loaded)
                cursor = await conn.execute(statements.update, params)
            if cursor.rowcount != 1:
                msg = f"view {view_id!r} changed"
                raise RuntimeError(msg)
