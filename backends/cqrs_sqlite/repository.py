"""The SQLite event repository: one connection owned by one worker thread.

Why not aiosqlite: its public API is one statement per hop to its thread (``execute``,
``executemany``, ``commit``...), so BEGIN + INSERT + COMMIT costs three hops; running a whole
transaction as one function needs its private ``Connection._execute``. A one-thread
``ThreadPoolExecutor`` owning a plain ``sqlite3`` connection is the same mechanism through
public APIs (measured here: about 17k hops/s for both), so this backend needs only the
standard library.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cqrs.codec import Codec, default_codec
from cqrs.ddl import migrations, pending
from cqrs.errors import (
    AggregateConflict,
    ConfigurationError,
    CqrsError,
    DatabaseConnectionError,
    UnexpectedError,
)
from cqrs.repository import (
    AsyncResource,
    EventRow,
    SerializedEvent,
    SerializedSnapshot,
    check_batch,
    check_page_size,
    not_open,
    read_pages,
    stored_positions,
)
from cqrs.subscription import LocalSignal, WakeUps
from cqrs_sqlite import _operations as operations
from cqrs_sqlite._group_commit import Worker
from cqrs_sqlite.rows import all_rows, event_rows, stream_rows
from cqrs_sqlite.statements import SqliteStatements
from cqrs_sqlite.wake_ups import SqliteWakeUps

if TYPE_CHECKING:
    from cqrs_sqlite.checkpoints import SqliteCheckpointStore
    from cqrs_sqlite.views import SqliteViewRepository

__all__ = ["SqliteEventRepository", "write_transaction"]

T = TypeVar("T")
V = TypeVar("V")

MEMORY = ":memory:"
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_CONFLICT_CODES = frozenset(
    {sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE}
)
_log = logging.getLogger("cqrs.backends.sqlite")

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNUSABLE_CODES = {
    sqlite3.SQLITE_CANTOPEN: "cannot be opened",
    sqlite3.SQLITE_PERM: "cannot be opened",
    sqlite3.SQLITE_AUTH: "cannot be opened",
    sqlite3.SQLITE_READONLY: "is read-only",
    sqlite3.SQLITE_NOTADB: "is not a database (corrupt or another kind of file)",
    sqlite3.SQLITE_CORRUPT: "is corrupt",
    sqlite3.SQLITE_IOERR: "cannot be read or written (I/O error)",
    sqlite3.SQLITE_FULL: "cannot grow: the disk is full",
}


def _translate(error: sqlite3.Error, path: str, context: str, busy_timeout: float) -> CqrsError:
    """The one place where sqlite3 errors become the framework's errors."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = -1 if code is None else code & 0xFF
    if isinstance(error, sqlite3.IntegrityError) and code in _CONFLICT_CODES:
        return AggregateConflict(f"{context}: another writer committed first ({error})")
    if primary in _BUSY_CODES:
        return DatabaseConnectionError(
            f"SQLite database {path} stayed locked by another connection for longer than the "
            f"busy timeout ({busy_timeout:g} s) while {context}: {error}"
        )
    if primary in _UNUSABLE_CODES:
        return DatabaseConnectionError(
            f"SQLite database {path} {_UNUSABLE_CODES[primary]} ({context}): {error}"
        )
    return UnexpectedError(f"SQLite database {path}: {context} failed: {error}")


class SqliteEventRepository(AsyncResource):
    """Events and snapshots in one SQLite file (a PersistedEventRepository).

    ``path`` is a file path or ``":memory:"`` (a private database that lives as long as the
    repository is open). The constructor does no I/O; ``open()`` connects, switches the file
    to WAL mode and sets ``synchronous`` (``"FULL"`` by default, SQLite's own default: a
    committed event survives a power cut; ``"NORMAL"`` is much faster in WAL mode and loses
    at most the last commits on power loss, never consistency).

    Every call is one hop to the worker thread that owns a connection; a commit is
    ``BEGIN IMMEDIATE``, the inserts and the snapshot upsert, and ``COMMIT`` in that one
    hop, so the global ``position`` (an AUTOINCREMENT rowid assigned under the write lock)
    follows commit order and a tailing reader never skips an event. The repository's own
    reads (loads, snapshot loads, stream pages) of a file in WAL mode go to a second,
    ``query_only`` connection on its own thread: they never wait for a commit (nor its
    fsync), and a read started after a commit returned sees it. ``":memory:"`` (a second
    connection would be another database) and a file not in WAL mode use one connection.
    :meth:`run` always runs on the writing connection. Group commit: commits
    queued while the worker is busy are written in one transaction, each in its own
    savepoint (a conflicting one fails alone), and answered after its one COMMIT, so
    concurrent writers share an fsync (see :mod:`cqrs_sqlite._group_commit`). Writers in other
    processes wait up to ``busy_timeout`` seconds for the lock, then
    ``DatabaseConnectionError`` names the file. ``stream_*`` read ``page_size`` rows per hop.
    ``statements`` holds the SQL it runs (:class:`~cqrs_sqlite.statements.SqliteStatements`).
    """

    reads_in_background = False
    """A read builds its rows on the worker thread under this process's GIL, so a projection
    runner reads the next batch once it has decoded one, not while (see ``ProjectionRunner``)."""

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        events_table: str = "events",
        snapshots_table: str = "snapshots",
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
        page_size: int = 500,
    ) -> None:
        self.statements = SqliteStatements.for_tables(events_table, snapshots_table)
        self.events_table, self.snapshots_table = events_table, snapshots_table
        self.schema_table = f"{events_table}_schema"
        raw = os.fspath(path)
        self.path = raw if raw == MEMORY else str(Path(raw).absolute())
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            msg = f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}"
            raise ConfigurationError(msg)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            msg = f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}"
            raise ConfigurationError(msg)
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self.page_size = check_page_size(page_size)
        self._worker: Worker | None = None
        self._connection: sqlite3.Connection | None = None
        # Reads of a file in WAL mode go to a second connection on its own thread.
        self._reader: Worker | None = None
        self._reader_connection: sqlite3.Connection | None = None
        self._reads: Worker | None = None  # the reader, else the writer's worker
        self._lock = asyncio.Lock()
        self._commits = LocalSignal()

    def with_tables(self, events_table: str, snapshots_table: str) -> SqliteEventRepository:
        """A new, unopened repository on the same file using these (validated) table names.

        For ``":memory:"`` that is a new, separate database.
        """
        return SqliteEventRepository(
            self.path,
            events_table,
            snapshots_table,
            busy_timeout=self.busy_timeout,
            synchronous=self.synchronous,
            page_size=self.page_size,
        )

    def __repr__(self) -> str:
        state = "open" if self._connection is not None else "closed"
        return f"SqliteEventRepository({self.path!r}, {self.events_table!r}, {state})"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the worker thread and connect (idempotent). Raises DatabaseConnectionError
        naming the file when it cannot be opened, is read-only, or is not a database."""
        async with self._lock:
            if self._connection is not None:
                return
            worker = Worker(self._run_on_thread, "cqrs-sqlite")
            worker.start()
            try:
                self._connection = await self._call(worker.call(self._connect), "opening it")
                if self.path != MEMORY:
                    await self._open_reader()
            except BaseException:
                if self._connection is not None:
                    worker.call(self._connection.close)
                    self._connection = None
                worker.stop()
                raise
            self._worker = worker
            self._reads = self._reader or worker

    async def _open_reader(self) -> None:
        # A second connection for the repository's own reads, on its own thread: in WAL
        # mode a read never waits for the writer, so loads overlap the fsync of a commit
        # group. A read started after a commit returned sees it (the COMMIT is done).
        # Not for ":memory:" (another connection would open another database) nor a file
        # that is not in WAL mode (a reader would wait for the writer's locks).
        reader = Worker(self._read_on_thread, "cqrs-sqlite-reads")
        reader.start()
        try:
            connection = await self._call(reader.call(self._connect_reader), "opening it")
        except BaseException:
            reader.stop()
            raise
        if connection is None:
            reader.stop()
        else:
            self._reader, self._reader_connection = reader, connection

    async def close(self) -> None:
        """Close the connection after the calls already queued, and stop the worker
        (idempotent)."""
        async with self._lock:
            connection, worker = self._connection, self._worker
            if connection is None or worker is None:
                return
            reader, reading = self._reader, self._reader_connection
            self._connection, self._worker, self._reads = None, None, None
            self._reader, self._reader_connection = None, None
            try:
                if reader is not None and reading is not None:
                    try:
                        await self._call(reader.call(reading.close), "closing it")
                    finally:
                        reader.stop()
                await self._call(worker.call(connection.close), "closing it")
            finally:
                worker.stop()

    def _connect(self) -> sqlite3.Connection:
        # Runs on the worker thread, which then makes every call on this connection.
        # isolation_level=None: the sqlite3 module never opens transactions behind our back.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL").fetchone()
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _connect_reader(self) -> sqlite3.Connection | None:
        # On the reader thread; None (and no connection) if the file is not in WAL mode.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.close()
                return None
            connection.execute("PRAGMA query_only = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    async def _call(self, hop: asyncio.Future[T], context: str) -> T:
        try:
            return await hop
        except sqlite3.Error as error:
            raise _translate(error, self.path, context, self.busy_timeout) from error

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], context: str = "running a query"
    ) -> T:
        """Run ``fn(connection)`` on the database thread in one hop and return its result.

        This is how every method here reaches the database; use it for your own queries on
        the same connection. ``fn`` must leave no transaction open (use ``BEGIN IMMEDIATE``
        for writes and ``COMMIT``/``ROLLBACK`` before returning). sqlite3 errors are
        translated (``context`` says what was being done), raised ``from`` the original.
        Raises NotOpenError if the repository is not open.
        """
        worker = self._worker
        if self._connection is None or worker is None:
            raise not_open(f"SQLite repository {self.path} ({self.events_table})")
        return await self._call(worker.call(lambda: self._run_on_thread(fn)), context)

    async def _read(self, fn: Callable[[sqlite3.Connection], T], context: str) -> T:
        # run() for this repository's own reads: on the reader's connection, else they may
        # run ahead of the commits queued on the writer's.
        reads = self._reads
        if reads is None:
            raise not_open(f"SQLite repository {self.path} ({self.events_table})")
        try:
            return await reads.read(fn)
        except sqlite3.Error as error:
            raise _translate(error, self.path, context, self.busy_timeout) from error

    def _read_on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # On the reader thread.
        connection = self._reader_connection
        if connection is None:  # closed while this call waited in the queue
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return fn(connection)

    def _run_on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # On the worker thread. A connection that met a read-only database stays read-only
        # after the file becomes writable again (SQLite decides at open), so on
        # SQLITE_READONLY it is replaced by a fresh one and ``fn`` runs once more: nothing
        # was written by the refused attempt, and if the file is still read-only the second
        # attempt raises the same error, which names the file.
        connection = self._connection
        if connection is None:  # closed while this call waited in the queue
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        try:
            return fn(connection)
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", None)
            if code is None or code & 0xFF != sqlite3.SQLITE_READONLY or self.path == MEMORY:
                raise
        fresh = self._connect()
        self._connection = fresh
        connection.close()
        _log.warning(
            "SQLite database %s was read-only; reconnected to it and tried once more", self.path
        )
        return fn(fresh)

    # -- schema -------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Apply the files of ``sql/sqlite`` not yet recorded in ``<events>_schema``, in one
        write transaction (idempotent; concurrent callers, in any process, serialize on the
        write lock and the later ones find everything applied)."""
        names = {"events": self.events_table, "snapshots": self.snapshots_table}
        files, sql = migrations("sqlite", names), self.statements

        def apply(connection: sqlite3.Connection) -> None:
            def write() -> None:
                connection.execute(sql.create_record)
                applied = {row[0] for row in connection.execute(sql.applied)}
                for migration in pending(files, applied):
                    for statement in migration.statements:
                        connection.execute(statement)
                    connection.execute(sql.record, (migration.name,))

            write_transaction(connection, write)

        await self.run(apply, f"creating the schema of {self.events_table}")

    # -- reading ------------------------------------------------------------------------

    # A load awaits the reading worker's future itself rather than going through _read: it
    # is one hop, and a coroutine frame and a context string built on every call (only an
    # error needs it) are a measurable part of it.

    def _reading(self) -> Worker:
        reads = self._reads
        if reads is None:
            raise not_open(f"SQLite repository {self.path} ({self.events_table})")
        return reads

    def _load_failed(
        self, error: sqlite3.Error, aggregate_type: str, aggregate_id: str
    ) -> CqrsError:
        context = f"loading {aggregate_type} {aggregate_id!r}"
        return _translate(error, self.path, context, self.busy_timeout)

    def _events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> asyncio.Future[list[SerializedEvent]]:
        sql = self.statements.events
        params = (aggregate_type, aggregate_id, after_sequence)

        def read(connection: sqlite3.Connection) -> list[SerializedEvent]:
            return stream_rows(aggregate_type, aggregate_id, connection.execute(sql, params))

        return self._reading().read(read)

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate, by sequence (one hop)."""
        try:
            return await self._events(aggregate_type, aggregate_id, 0)
        except sqlite3.Error as error:
            raise self._load_failed(error, aggregate_type, aggregate_id) from error

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """The events of one aggregate after ``after_sequence``, by sequence (one hop)."""
        try:
            return await self._events(aggregate_type, aggregate_id, after_sequence)
        except sqlite3.Error as error:
            raise self._load_failed(error, aggregate_type, aggregate_id) from error

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None (one hop)."""
        sql = self.statements.snapshot
        params = (aggregate_type, aggregate_id)

        def read(connection: sqlite3.Connection) -> tuple[str, int, int] | None:
            row: tuple[str, int, int] | None = connection.execute(sql, params).fetchone()
            return row

        row = await self._read(read, f"loading the snapshot of {aggregate_type} {aggregate_id!r}")
        if row is None:
            return None
        return SerializedSnapshot(aggregate_type, aggregate_id, row[0], row[1], row[2])

    async def get_snapshot_and_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> tuple[SerializedSnapshot | None, list[SerializedEvent]]:
        """The aggregate's snapshot (or None) and the events after it (all without one), in
        one hop (see :func:`cqrs.repository.snapshot_and_events`)."""
        snapshot_sql, events_sql = self.statements.snapshot, self.statements.events
        key = (aggregate_type, aggregate_id)

        def read(
            connection: sqlite3.Connection,
        ) -> tuple[tuple[str, int, int] | None, list[SerializedEvent]]:
            # The snapshot first: a commit landing in between only adds events after it.
            row: tuple[str, int, int] | None = connection.execute(snapshot_sql, key).fetchone()
            after = 0 if row is None else row[1]
            cursor = connection.execute(events_sql, (aggregate_type, aggregate_id, after))
            return row, stream_rows(aggregate_type, aggregate_id, cursor)

        try:
            row, events = await self._reading().read(read)
        except sqlite3.Error as error:
            raise self._load_failed(error, aggregate_type, aggregate_id) from error
        if row is None:
            return None, events
        return SerializedSnapshot(aggregate_type, aggregate_id, row[0], row[1], row[2]), events

    async def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The aggregate's events by sequence, ``page_size`` per hop."""
        sql, size = self.statements.events_page, self.page_size
        context = f"streaming {aggregate_type} {aggregate_id!r}"

        async def fetch(after: int) -> list[SerializedEvent]:
            params = (aggregate_type, aggregate_id, after, size)

            def read(connection: sqlite3.Connection) -> list[SerializedEvent]:
                return stream_rows(aggregate_type, aggregate_id, connection.execute(sql, params))

            return await self._read(read, context)

        async for event in read_pages(fetch, 0, size, by_sequence=True):
            yield event

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events in position order after ``after_position``, ``page_size`` per hop."""
        size, statements = self.page_size, self.statements
        context = f"streaming the events of {aggregate_type or 'every type'}"

        async def fetch(after: int) -> list[SerializedEvent]:
            params: tuple[object, ...]
            if aggregate_type is None:
                sql, params = statements.all_page, (after, size)
            else:
                sql, params = statements.type_page, (after, aggregate_type, size)

            def read(connection: sqlite3.Connection) -> list[SerializedEvent]:
                return all_rows(connection.execute(sql, params))

            return await self._read(read, context)

        async for event in read_pages(fetch, after_position or 0, size):
            yield event

    async def read_event_rows(
        self, aggregate_type: str | None, after_position: int, limit: int
    ) -> list[EventRow]:
        """At most ``limit`` events of ``aggregate_type`` (every type for None) after
        ``after_position``, in position order, as :data:`~cqrs.repository.EventRow` tuples
        (empty metadata as None, timestamps and event ids as stored text), in one hop: a
        page of :meth:`stream_all_events` as the driver hands it out (what a projection
        runner reads its batches with)."""
        statements = self.statements
        sql: str
        params: tuple[object, ...]
        if aggregate_type is None:
            sql, params = statements.all_rows, (after_position, limit)
        else:
            sql, params = statements.type_rows, (after_position, aggregate_type, limit)

        def read(connection: sqlite3.Connection) -> list[EventRow]:
            rows: list[EventRow] = connection.execute(sql, params).fetchall()
            return rows

        return await self._read(read, f"reading the events of {aggregate_type or 'every type'}")

    def wake_ups(self) -> WakeUps:
        """A listener for new commits (see :class:`cqrs.subscription.WakeUpSource`): this
        repository's commits wake it at once; for a file, commits by other connections and
        processes are seen within about 25 ms (see :mod:`cqrs_sqlite.wake_ups`)."""
        if self.path == MEMORY:
            return self._commits.listen()
        return SqliteWakeUps(self.path, self._commits.listen(), busy_timeout=self.busy_timeout)

    # -- writing ------------------------------------------------------------------------

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Store the events and the snapshot in one write transaction (one hop; shared
        with the commits queued meanwhile, each in its own savepoint).

        The first sequence must follow the stored ones: a stored sequence or a gap raises
        AggregateConflict and nothing is stored, unless these very events (by event id) are
        stored already: then their positions are returned. The snapshot replaces the stored
        one only if its ``last_sequence`` is greater.
        """
        check_batch(events)
        first = events[0]
        aggregate_type, aggregate_id, start = (
            first.aggregate_type,
            first.aggregate_id,
            first.sequence,
        )
        rows = event_rows(events)
        count = len(rows)
        sql = self.statements
        insert, last_sequence, upsert, select = (
            sql.insert,
            sql.last_sequence,
            sql.upsert,
            sql.events_page,
        )
        key = (aggregate_type, aggregate_id)
        snapshot_row = (
            None
            if snapshot is None
            else (
                snapshot.aggregate_type,
                snapshot.aggregate_id,
                snapshot.last_sequence,
                snapshot.snapshot_version,
                snapshot.payload,
            )
        )

        def write(connection: sqlite3.Connection) -> list[int]:
            execute = connection.execute
            stored = execute(last_sequence, key).fetchone()[0] or 0
            if stored != start - 1:
                # The conflict path only: a retry of a commit that did happen finds its
                # own events, read under the same write lock.
                if stored >= start:
                    found = stream_rows(
                        aggregate_type,
                        aggregate_id,
                        execute(select, (aggregate_type, aggregate_id, start - 1, count)),
                    )
                    positions = stored_positions(events, found)
                    if positions is not None:
                        return positions
                msg = (
                    f"{aggregate_type} {aggregate_id!r}: sequence {start} conflicts with "
                    f"{stored} stored event(s); another writer committed first"
                )
                raise AggregateConflict(msg)
            connection.executemany(insert, rows)
            last: int = execute("SELECT last_insert_rowid()").fetchone()[0]
            if snapshot_row is not None:
                execute(upsert, snapshot_row)
            return list(range(last - count + 1, last + 1))

        worker = self._worker
        if self._connection is None or worker is None:
            raise not_open(f"SQLite repository {self.path} ({self.events_table})")
        context = f"committing {aggregate_type} {aggregate_id!r} at {start}"
        positions = await self._call(worker.commit(write), context)
        self._commits.notify()
        return positions

    # -- views --------------------------------------------------------------------------

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> SqliteViewRepository[V]:
        """A view repository for ``view_type`` in ``table``, on this repository's connection
        (open this repository first; call the view repository's ``create_schema()``)."""
        from cqrs_sqlite.views import SqliteViewRepository  # noqa: PLC0415 - import cycle

        return SqliteViewRepository(view_type, table, self, codec=codec)

    def checkpoint_store(self, table: str = "projections") -> SqliteCheckpointStore:
        """The checkpoints, leases and parked events of projections in ``table`` and
        ``<table>_parked`` of this file, on this repository's connection (open this
        repository first; call the store's ``create_schema()``)."""
        from cqrs_sqlite.checkpoints import SqliteCheckpointStore  # noqa: PLC0415 - import cycle

        return SqliteCheckpointStore(table, self)

    # -- optional methods for operator tools (cqrs.cli.capabilities); not the port -------

    async def schema_status(self) -> tuple[list[str], list[str]]:
        """The DDL files of ``sql/sqlite`` recorded as applied to these tables, and the
        pending ones (which :meth:`create_schema` would apply), by name."""
        return await operations.schema_status(self)

    async def count_events(self, aggregate_type: str | None, after_position: int | None) -> int:
        """How many events of ``aggregate_type`` (every type for None) are stored after
        ``after_position``."""
        return await operations.count_events(self, aggregate_type, after_position)

    async def storage_size(self) -> int:
        """Bytes of the database file (every table in it)."""
        return await operations.storage_size(self)

    async def import_events(
        self, events: Sequence[SerializedEvent], snapshots: Sequence[SerializedSnapshot]
    ) -> int:
        """Store events of many aggregates and their snapshots in one write transaction;
        return how many events were new.

        Positions follow the given order. Each aggregate's events come in sequence order
        (ValueError otherwise, before any I/O); an event stored already with the same event
        id is skipped (so a retried import stores nothing twice); one stored with another
        event id, or an aggregate whose first event would leave a gap, raises
        AggregateConflict and nothing is stored. A snapshot (at most one per aggregate)
        replaces the stored one only if its ``last_sequence`` is greater.
        """
        return await operations.import_events(self, events, snapshots)


def write_transaction(connection: sqlite3.Connection, body: Callable[[], T]) -> T:
    """Run ``body`` in a write transaction: BEGIN IMMEDIATE takes the write lock up front
    (waiting up to the busy timeout), so the transaction never fails half-way on a lock."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = body()
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result
