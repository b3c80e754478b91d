"""Raw SQLite: the SQLite backend's statements and hops, written directly on ``sqlite3``.

Like the backend, one connection is owned by one worker thread (the backend's own
``Worker``: WAL, ``synchronous=FULL``, autocommit mode) and every round trip below is one
hop to it: a load is one hop (one SELECT; from a snapshot, the snapshot's SELECT then the
events'), a commit is one hop (``BEGIN IMMEDIATE``, the max-sequence check, ``executemany``
of the rows, ``last_insert_rowid()``, the snapshot upsert when due, ``COMMIT``). The tables
are created by the backend's ``create_schema`` (the DDL is not what is measured). Each
commit is its own transaction: the backend's group commit (concurrent commits sharing one
transaction and one fsync) is not reproduced, so ``concurrent_8``'s ratio shows its gain;
nor is the backend's second connection for reads (its own thread: a load does not wait for
a commit's fsync), which changes nothing for a load alone: one hop either way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from benchmarks.raw import AGGREGATE_TYPE, METADATA, RawSide, Row, Snapshot, new_event_ids
from cqrs_sqlite import SqliteEventRepository, SqliteViewStatements
from cqrs_sqlite._group_commit import Worker

__all__ = ["RawSqliteSide"]

T = TypeVar("T")


class RawSqliteSide(RawSide):
    """The raw side on one SQLite file, tables ``events_table``/``snapshots_table``."""

    def __init__(
        self,
        path: str,
        events_table: str,
        snapshots_table: str,
        *,
        view_prefix: str,
        snapshot_every: int | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(snapshot_every=snapshot_every)
        self.path = path
        self.events_table = events_table
        self.snapshots_table = snapshots_table
        self.view_prefix = view_prefix
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._worker: Worker | None = None
        self._connection: sqlite3.Connection | None = None
        # The backend's own statements (its constructor does no I/O), so the raw side cannot
        # drift from what it measures against.
        self.statements = self._backend().statements
        self.view_statements: dict[str, SqliteViewStatements] = {}

    def _backend(self) -> SqliteEventRepository:
        return SqliteEventRepository(self.path, self.events_table, self.snapshots_table)

    async def open(self) -> None:
        async with self._backend() as schema:
            await schema.create_schema()
        self._worker = Worker(lambda fn: fn(self._connection), "raw-sqlite")  # type: ignore[arg-type]
        self._worker.start()
        self._connection = await self._worker.call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        return connection

    async def close(self) -> None:
        if self._connection is not None and self._worker is not None:
            await self._hop(lambda connection: connection.close())
            self._worker.stop()
        self._connection, self._worker = None, None

    async def _hop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        connection, worker = self._connection, self._worker
        assert connection is not None  # noqa: S101 - opened by the harness
        assert worker is not None  # noqa: S101 - opened by the harness
        return await worker.call(lambda: fn(connection))

    async def read_events(self, aggregate_id: str, after: int) -> list[Row]:
        sql, params = self.statements.events, (AGGREGATE_TYPE, aggregate_id, after)
        return await self._hop(lambda connection: connection.execute(sql, params).fetchall())

    async def read_snapshot(self, aggregate_id: str) -> tuple[bytes | str, int, int] | None:
        sql, params = self.statements.snapshot, (AGGREGATE_TYPE, aggregate_id)
        return await self._hop(lambda connection: connection.execute(sql, params).fetchone())

    async def read_snapshot_and_events(
        self, aggregate_id: str
    ) -> tuple[tuple[bytes | str, int, int] | None, list[Row]]:
        snapshot_sql, events_sql = self.statements.snapshot, self.statements.events

        def read(connection: sqlite3.Connection) -> tuple[tuple[str, int, int] | None, list[Row]]:
            snapshot = connection.execute(snapshot_sql, (AGGREGATE_TYPE, aggregate_id)).fetchone()
            after = 0 if snapshot is None else snapshot[1]
            rows = connection.execute(events_sql, (AGGREGATE_TYPE, aggregate_id, after)).fetchall()
            return snapshot, rows

        return await self._hop(read)

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
        text = timestamp.isoformat(sep=" ", timespec="microseconds")
        event_ids = new_event_ids(len(events))
        rows = [
            (
                AGGREGATE_TYPE,
                aggregate_id,
                version + index,
                type(event).event_type,  # type: ignore[attr-defined]
                type(event).event_version,  # type: ignore[attr-defined]
                payload,
                METADATA,
                text,
                str(event_id),
            )
            for index, (event, payload, event_id) in enumerate(
                zip(events, payloads, event_ids, strict=True), 1
            )
        ]
        statements = self.statements
        insert, last_sequence, upsert = (
            statements.insert,
            statements.last_sequence,
            statements.upsert,
        )
        key = (AGGREGATE_TYPE, aggregate_id)
        snapshot_row = (
            None
            if snapshot is None
            else (
                AGGREGATE_TYPE,
                aggregate_id,
                snapshot.last_sequence,
                snapshot.version,
                snapshot.payload,
            )
        )

        def body(connection: sqlite3.Connection) -> int:
            stored = connection.execute(last_sequence, key).fetchone()[0] or 0
            if stored != version:
                msg = f"conflict on {aggregate_id!r}"
                raise RuntimeError(msg)
            connection.executemany(insert, rows)
            last: int = connection.execute("SELECT last_insert_rowid()").fetchone()[0]
            if snapshot_row is not None:
                connection.execute(upsert, snapshot_row)
            return last

        def write(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN IMMEDIATE")
            try:
                last = body(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return last

        await self._hop(write)

    async def read_page(self, after: int, limit: int) -> list[Row]:
        sql, params = self.statements.type_page, (after, AGGREGATE_TYPE, limit)
        return await self._hop(lambda connection: connection.execute(sql, params).fetchall())

    async def create_view_table(self, table: str) -> str:
        full = f"{self.view_prefix}{table}"
        async with self._backend() as backend:
            views = backend.view_repository(object, full)
            await views.create_schema()
        self.view_statements[full] = views.statements
        return full

    async def read_view(self, table: str, view_id: str) -> tuple[bytes | str, int] | None:
        sql = self.view_statements[table].load
        return await self._hop(lambda connection: connection.execute(sql, (view_id,)).fetchone())

    async def write_view(
        self, table: str, view_id: str, payload: bytes, loaded: int, version: int
    ) -> None:
        statements = self.view_statements[table]
        params: tuple[object, ...]
        if loaded == 0:
            sql, params = statements.insert, (view_id, version, payload)
        else:
            sql, params = statements.update, (version, payload, view_id, loaded)

        def write(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN IMMEDIATE")
            try:
                changed = connection.execute(sql, params).rowcount
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return changed

        if await self._hop(write) != 1:
            msg = f"view {view_id!r} changed"
            raise RuntimeError(msg)
