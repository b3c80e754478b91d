"""Raw MySQL / MariaDB: the MySQL backend's statements and round trips, directly on asyncmy.

Like the backend: an asyncmy pool of autocommit connections (1 to 10) with the backend's
connection settings, one connection borrowed per operation. A load is one SELECT; a commit
is the backend's one query of several statements (the follow check, START TRANSACTION, the
counter row raised, the rows inserted, the snapshot upsert when due, COMMIT) with its
results read the same way; a page is the backend's page statement. The tables are created
by the backend's ``create_schema`` (the DDL is not what is measured). The backend's
per-row work this side skips is what the ratio shows: building ``SerializedEvent`` objects
(with the ids decoded from bytes and the timestamps made aware) and the not-open and
batch checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncmy
from asyncmy.cursors import Cursor

from benchmarks.raw import AGGREGATE_TYPE, METADATA, RawSide, Row, Snapshot, new_event_ids
from cqrs_mysql import MysqlEventRepository, MysqlViewStatements, parse_url

__all__ = ["RawMysqlSide"]


class RawMysqlSide(RawSide):
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
        self.config = parse_url(url)
        self.max_size = max_size
        self.view_prefix = view_prefix
        # The backend's own statements (its constructor does no I/O), so the raw side cannot
        # drift from what it measures against.
        self.backend = MysqlEventRepository(self.config, events_table, snapshots_table)
        self.statements = self.backend.statements
        self.view_statements: dict[str, MysqlViewStatements] = {}
        self.pool: asyncmy.Pool | None = None

    async def open(self) -> None:
        await self.backend.open()
        await self.backend.create_schema()
        self.pool = await asyncmy.create_pool(
            minsize=1, maxsize=self.max_size, pool_recycle=-1, **self.config.connect_kwargs(10)
        )

    async def close(self) -> None:
        await self.backend.close()
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()

    def _pool(self) -> asyncmy.Pool:
        if self.pool is None:
            msg = "the raw side is not open"
            raise RuntimeError(msg)
        return self.pool

    async def read_events(self, aggregate_id: str, after: int) -> list[Row]:
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            params = (AGGREGATE_TYPE, aggregate_id, after, (1 << 63) - 1)
            await cursor.execute(self.statements.one_aggregate, params)
            return list(await cursor.fetchall())

    async def read_snapshot(self, aggregate_id: str) -> tuple[bytes | str, int, int] | None:
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            await cursor.execute(self.statements.get_snapshot, (AGGREGATE_TYPE, aggregate_id))
            row = await cursor.fetchone()
        return None if row is None else (row[0], row[1], row[2])

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
        metadata = METADATA.decode()
        moment = timestamp.astimezone(UTC).replace(tzinfo=None)
        params: list[object] = [AGGREGATE_TYPE, aggregate_id, version]
        for offset, (event, payload, event_id) in enumerate(
            zip(events, payloads, new_event_ids(len(events)), strict=True), start=1
        ):
            params += [
                AGGREGATE_TYPE,
                aggregate_id,
                version + offset,
                type(event).event_type,  # type: ignore[attr-defined]
                type(event).event_version,  # type: ignore[attr-defined]
                payload.decode(),
                metadata,
                moment,
                str(event_id),
            ]
        if snapshot is not None:
            params += [
                AGGREGATE_TYPE,
                aggregate_id,
                snapshot.last_sequence,
                snapshot.version,
                snapshot.payload.decode(),
            ]
        query = self.statements.persist(len(events), snapshot=snapshot is not None)
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            await cursor.execute(query, params)
            await _written(cursor, len(events))

    async def read_page(self, after: int, limit: int) -> list[Row]:
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            params = (AGGREGATE_TYPE, after, limit)
            await cursor.execute(self.statements.all_of_type, params)
            return list(await cursor.fetchall())

    async def create_view_table(self, table: str) -> str:
        full = f"{self.view_prefix}{table}"
        views = self.backend.view_repository(object, full)
        await views.create_schema()
        self.view_statements[full] = views.statements
        return full

    async def read_view(self, table: str, view_id: str) -> tuple[bytes | str, int] | None:
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            await cursor.execute(self.view_statements[table].load, (view_id,))
            row = await cursor.fetchone()
        return None if row is None else (row[0], row[1])

    async def write_view(
        self, table: str, view_id: str, payload: bytes, loaded: int, version: int
    ) -> None:
        statements = self.view_statements[table]
        async with self._pool().acquire() as conn:
            cursor = conn.cursor()
            if loaded == 0:
                count = await cursor.execute(
                    statements.insert, (view_id, version, payload.decode())
                )
            else:
                params = (version, payload.decode(), view_id, loaded)
                count = await cursor.execute(statements.update, params)
            if count != 1:
                msg = f"view {view_id!r} changed"
                raise RuntimeError(msg)


async def _written(cursor: Cursor, count: int) -> None:
    """Read the commit query's results as the backend does; raise unless it wrote ``count``
    rows."""
    await cursor.nextset()  # the check's SET
    await cursor.nextset()  # START TRANSACTION
    await cursor.nextset()  # the counter
    await cursor.nextset()  # the rows
    written = cursor.rowcount
    while await cursor.nextset():
        pass
    if written != count:
        msg = "the batch does not follow the stored events"
        raise RuntimeError(msg)
