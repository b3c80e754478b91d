"""The SQLite checkpoint store: checkpoints, leases and parked events in two tables of the
events' file, each operation one hop and at most one write transaction."""

# ruff: noqa: S608 - the interpolated names are validated identifiers, never values

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cqrs.checkpoints import (
    Lease,
    ParkedEvent,
    ViewWrite,
    check_lease_name,
    lease_lost,
    view_conflict,
)
from cqrs.ddl import migrations
from cqrs.repository import SerializedEvent, ViewRepository, validate_identifier
from cqrs_sqlite.repository import write_transaction
from cqrs_sqlite.views import SqliteViewRepository

if TYPE_CHECKING:
    from cqrs_sqlite.repository import SqliteEventRepository

_FETCH_CHUNK = 500
"""View ids per ``IN (...)`` list (well below SQLite's bound on bound parameters)."""


class _Refused(Exception):  # noqa: N818 - a private signal, never seen outside
    def __init__(self, write: ViewWrite) -> None:
        self.write = write


__all__ = ["SqliteCheckpointStatements", "SqliteCheckpointStore"]


@dataclass(frozen=True, slots=True)
class SqliteCheckpointStatements:
    """The statements of one :class:`SqliteCheckpointStore` (its ``statements`` attribute).

    - ``row``: a projection's owner, token, lease_until and position (name);
    - ``take``: store a new lease (name, owner, lease_until), creating the row if needed;
    - ``renew``: set lease_until under a held token (lease_until, name, token);
    - ``release``: end the lease under a token (name, token);
    - ``save``: raise the position under a token (position, name, token);
    - ``reset``: set the position, end the lease, bump the token (name, position);
    - ``park``: record a parked event, replacing one of its position (name, position,
      event_id, error);
    - ``parked``: a projection's parked events by position (name).
    """

    row: str
    take: str
    renew: str
    release: str
    save: str
    reset: str
    park: str
    parked: str

    @classmethod
    def for_table(cls, table: str) -> SqliteCheckpointStatements:
        """The statements for this table and ``<table>_parked`` (validated identifiers)."""
        name = validate_identifier(table)
        parked = validate_identifier(f"{table}_parked")
        return cls(
            row=f"SELECT owner, token, lease_until, position FROM {name} WHERE name = ?",
            take=(
                f"INSERT INTO {name} (name, owner, token, lease_until) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                f"token = {name}.token + 1, lease_until = excluded.lease_until"
            ),
            renew=(
                f"UPDATE {name} SET lease_until = ? WHERE name = ? AND token = ? AND owner <> ''"
            ),
            release=f"UPDATE {name} SET owner = '', lease_until = 0 WHERE name = ? AND token = ?",
            save=f"UPDATE {name} SET position = max(position, ?) WHERE name = ? AND token = ?",
            reset=(
                f"INSERT INTO {name} (name, position, token) VALUES (?, ?, 1) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, owner = '', "
                f"lease_until = 0, token = {name}.token + 1"
            ),
            park=(
                f"INSERT INTO {parked} (name, position, event_id, error) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, position) DO UPDATE SET event_id = excluded.event_id, "
                "error = excluded.error, parked_at = CURRENT_TIMESTAMP"
            ),
            parked=(
                f"SELECT name, position, event_id, error FROM {parked} "
                "WHERE name = ? ORDER BY position"
            ),
        )


class SqliteCheckpointStore:
    """A :class:`~cqrs.checkpoints.CheckpointStore` in ``table`` and ``<table>_parked`` of
    the file of ``repository``, on its connection: every method raises NotOpenError while
    that repository is not open.

    Every method is one hop; the writes run in one ``BEGIN IMMEDIATE`` transaction, so
    runners in other processes on the same file serialize on SQLite's write lock. It is a
    :class:`~cqrs.checkpoints.ViewCheckpointStore` for the view repositories of the same
    repository (the same connection): a batch's views and checkpoint are one hop and one
    transaction. Leases
    expire on the wall clock (``clock``, default ``time.time``) of the processes sharing the
    file, which one machine's processes agree on.
    """

    def __init__(
        self,
        table: str,
        repository: SqliteEventRepository,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.statements = SqliteCheckpointStatements.for_table(table)
        self.table = table
        self.repository = repository
        self._clock = clock

    async def create_schema(self) -> None:
        """Create both tables if missing (idempotent; concurrent callers serialize on the
        write lock)."""
        files = migrations("sqlite/projections", {"projections": self.table})
        statements = [statement for file in files for statement in file.statements]

        def create(connection: sqlite3.Connection) -> None:
            def body() -> None:
                for statement in statements:
                    connection.execute(statement)

            write_transaction(connection, body)

        await self.repository.run(create, f"creating the checkpoint table {self.table}")

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        sql, clock = self.statements, self._clock

        def write(connection: sqlite3.Connection) -> Lease | None:
            def body() -> Lease | None:
                row = connection.execute(sql.row, (name,)).fetchone()
                now = clock()  # under the write lock
                if row is not None and row[0] and row[0] != owner and row[2] > now:
                    return None
                connection.execute(sql.take, (name, owner, now + ttl))
                _, token, _, position = connection.execute(sql.row, (name,)).fetchone()
                return Lease(name, owner, token, position)

            return write_transaction(connection, body)

        return await self.repository.run(write, f"acquiring the lease of projection {name!r}")

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current and it was not released."""
        sql, clock = self.statements.renew, self._clock

        def write(connection: sqlite3.Connection) -> bool:
            def body() -> bool:
                params = (clock() + ttl, lease.name, lease.token)
                return connection.execute(sql, params).rowcount == 1

            return write_transaction(connection, body)

        return await self.repository.run(write, f"renewing the lease of {lease.name!r}")

    async def release(self, lease: Lease) -> None:
        """End the lease if its token is current."""
        params = (lease.name, lease.token)
        await self._write(self.statements.release, params, f"releasing the lease of {lease.name!r}")

    async def save(self, lease: Lease, position: int) -> None:
        """Store the checkpoint under a current token; raise LeaseLost otherwise."""
        sql = self.statements

        def write(connection: sqlite3.Connection) -> tuple[bool, int | None]:
            def body() -> tuple[bool, int | None]:
                cursor = connection.execute(sql.save, (position, lease.name, lease.token))
                if cursor.rowcount == 1:
                    return True, lease.token
                row = connection.execute(sql.row, (lease.name,)).fetchone()
                return False, None if row is None else int(row[1])

            return write_transaction(connection, body)

        doing = f"saving the checkpoint of {lease.name!r}"
        saved, current = await self.repository.run(write, doing)
        if not saved:
            raise lease_lost(lease, current)

    async def position(self, name: str) -> int:
        """The checkpoint (0 if never saved)."""
        check_lease_name(name)
        sql = self.statements.row

        def read(connection: sqlite3.Connection) -> int:
            row = connection.execute(sql, (name,)).fetchone()
            return 0 if row is None else int(row[3])

        return await self.repository.run(read, f"reading the checkpoint of {name!r}")

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease; the token moves on, fencing its holder."""
        check_lease_name(name)
        await self._write(self.statements.reset, (name, position), f"resetting {name!r}")

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token (replacing one of its position)."""
        sql = self.statements
        params = (lease.name, event.position, str(event.event_id), error)

        def write(connection: sqlite3.Connection) -> tuple[bool, int | None]:
            def body() -> tuple[bool, int | None]:
                row = connection.execute(sql.row, (lease.name,)).fetchone()
                if row is None or row[1] != lease.token:
                    return False, None if row is None else int(row[1])
                connection.execute(sql.park, params)
                return True, lease.token

            return write_transaction(connection, body)

        doing = f"parking position {event.position} of {lease.name!r}"
        parked, current = await self.repository.run(write, doing)
        if not parked:
            raise lease_lost(lease, current)

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        check_lease_name(name)
        sql = self.statements.parked

        def read(connection: sqlite3.Connection) -> list[ParkedEvent]:
            return [ParkedEvent(*row) for row in connection.execute(sql, (name,))]

        return await self.repository.run(read, f"reading the parked events of {name!r}")

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True for a view repository made by the same repository (same connection)."""
        return isinstance(views, SqliteViewRepository) and views.repository is self.repository

    def _views(self, views: ViewRepository[Any]) -> SqliteViewRepository[Any]:
        if not isinstance(views, SqliteViewRepository) or views.repository is not self.repository:
            msg = f"{views!r} is not a view repository of this store's connection"
            raise ValueError(msg)
        return views

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored views of ``view_ids`` that exist, in one hop."""
        table = validate_identifier(self._views(views).table)
        ids = list(view_ids)

        def read(connection: sqlite3.Connection) -> dict[str, tuple[object, object]]:
            found: dict[str, tuple[object, object]] = {}
            for start in range(0, len(ids), _FETCH_CHUNK):
                chunk = ids[start : start + _FETCH_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT view_id, payload, version FROM {table} WHERE view_id IN ({marks})"
                for view_id, payload, version in connection.execute(sql, chunk):
                    found[view_id] = (payload, version)
            return found

        return await self.repository.run(read, f"loading {len(ids)} views from {table}")

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Save the checkpoint under the token and store the writes, in one transaction."""
        view_sql, sql = self._views(views).statements, self.statements

        def write(connection: sqlite3.Connection) -> tuple[bool, int | None, ViewWrite | None]:
            def body() -> tuple[bool, int | None, ViewWrite | None]:
                if connection.execute(sql.save, (position, lease.name, lease.token)).rowcount != 1:
                    row = connection.execute(sql.row, (lease.name,)).fetchone()
                    return False, None if row is None else int(row[1]), None
                execute = connection.execute
                for each in writes:
                    if each.expected == 0:
                        params: tuple[object, ...] = (each.view_id, each.version, each.payload)
                        done = execute(view_sql.insert, params).rowcount
                    else:
                        params = (each.version, each.payload, each.view_id, each.expected)
                        done = execute(view_sql.update, params).rowcount
                    if done != 1:
                        raise _Refused(each)  # rolls the whole transaction back
                return True, lease.token, None

            try:
                return write_transaction(connection, body)
            except _Refused as refused:
                return False, lease.token, refused.write

        doing = f"saving {len(writes)} views and the checkpoint of {lease.name!r}"
        saved, current, refused = await self.repository.run(write, doing)
        if refused is not None:
            raise view_conflict(views, refused)
        if not saved:
            raise lease_lost(lease, current)

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Delete the views and reset the checkpoint, in one transaction."""
        check_lease_name(name)
        tables = [validate_identifier(self._views(each).table) for each in views]
        reset = self.statements.reset

        def write(connection: sqlite3.Connection) -> None:
            def body() -> None:
                for table in tables:
                    connection.execute(f"DELETE FROM {table}")
                connection.execute(reset, (name, position))

            write_transaction(connection, body)

        await self.repository.run(write, f"resetting {name!r} and its views")

    async def _write(self, sql: str, params: tuple[object, ...], doing: str) -> None:
        def write(connection: sqlite3.Connection) -> None:
            write_transaction(connection, lambda: connection.execute(sql, params))

        return await self.repository.run(write, doing)
