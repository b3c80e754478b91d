"""The MySQL checkpoint store: checkpoints, leases and parked events in two tables next to
the events, every operation one query, leases on the server's clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import asyncmy
import asyncmy.errors
from asyncmy.cursors import Cursor

from cqrs.checkpoints import (
    Lease,
    ParkedEvent,
    ViewWrite,
    check_lease_name,
    lease_lost,
    view_conflict,
)
from cqrs.errors import LeaseLost
from cqrs.repository import SerializedEvent, ViewRepository
from cqrs_mysql.connection import Connections
from cqrs_mysql.schema import apply_schema
from cqrs_mysql.statements import quote
from cqrs_mysql.views import MysqlViewRepository

__all__ = ["MysqlCheckpointStatements", "MysqlCheckpointStore"]

T = TypeVar("T")

_DEADLOCK = 1213
_DUPLICATE_KEY = 1062
_ATTEMPTS = 5

# One query: make sure the row exists (the insert, or a no-op update, locks it), take the
# lease if it is free, expired or the owner's, and read the row back, all before COMMIT.
# Concurrent acquires queue on the row lock, so exactly one takes a lease nobody holds. Two
# first acquires of a new name can deadlock on the insert; InnoDB then refuses one of them,
# which is sent again.
_ACQUIRE = """START TRANSACTION;
INSERT INTO {table} (name) VALUES (%s) ON DUPLICATE KEY UPDATE name = name;
UPDATE {table} SET owner = %s, token = token + 1,
  lease_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE name = %s AND (owner = '' OR owner = %s OR lease_until <= UTC_TIMESTAMP(6));
SELECT token, position FROM {table} WHERE name = %s;
COMMIT"""

_RENEW = """UPDATE {table} SET lease_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE name = %s AND token = %s AND owner <> ''"""

_RELEASE = """UPDATE {table} SET owner = '', lease_until = '1000-01-01 00:00:00'
WHERE name = %s AND token = %s"""

_SAVE = "UPDATE {table} SET position = GREATEST(position, %s) WHERE name = %s AND token = %s"

_POSITION = "SELECT position, token FROM {table} WHERE name = %s"

_RESET = """INSERT INTO {table} (name, position, token) VALUES (%s, %s, 1)
ON DUPLICATE KEY UPDATE position = VALUES(position), owner = '',
  lease_until = '1000-01-01 00:00:00', token = token + 1"""

# The insert reads the projection's row with a shared lock (INSERT ... SELECT does): a
# takeover waits for the park, or the park finds the new token and stores nothing.
_PARK = """INSERT INTO {parked} (name, position, event_id, error)
SELECT %s, %s, %s, %s FROM {table} WHERE name = %s AND token = %s
ON DUPLICATE KEY UPDATE event_id = VALUES(event_id), error = VALUES(error),
  parked_at = CURRENT_TIMESTAMP(6)"""

_PARKED = "SELECT name, position, event_id, error FROM {parked} WHERE name = %s ORDER BY position"


@dataclass(frozen=True, slots=True)
class MysqlCheckpointStatements:
    """The statements of one :class:`MysqlCheckpointStore` (its ``statements`` attribute).

    - ``acquire``: one query (a transaction) creating the row if needed, taking the lease if
      free, expired or the owner's (name, owner, ttl in microseconds, name, owner), and
      reading token and position (name); the update's row count says whether it was taken;
    - ``renew``: extend a held lease under its token (ttl in microseconds, name, token);
    - ``release``: end the lease under its token (name, token);
    - ``save``: raise the position under a token (position, name, token);
    - ``position``: a projection's checkpoint and token (name);
    - ``reset``: set the position, end the lease, bump the token (name, position);
    - ``park``: record a parked event under a token, replacing one of its position (name,
      position, event_id, error, name, token); a row count of 0 if the token moved on;
    - ``parked``: a projection's parked events by position (name).
    """

    acquire: str
    renew: str
    release: str
    save: str
    position: str
    reset: str
    park: str
    parked: str

    @classmethod
    def for_table(cls, table: str) -> MysqlCheckpointStatements:
        """The statements for ``table`` and ``<table>_parked`` (validated identifiers)."""
        names = {"table": quote(table), "parked": quote(f"{table}_parked")}
        return cls(
            acquire=_ACQUIRE.format(**names),
            renew=_RENEW.format(**names),
            release=_RELEASE.format(**names),
            save=_SAVE.format(**names),
            position=_POSITION.format(**names),
            reset=_RESET.format(**names),
            park=_PARK.format(**names),
            parked=_PARKED.format(**names),
        )


class _Lost(Exception):  # noqa: N818 - a private signal that rolls a transaction back
    pass


class _Refused(Exception):  # noqa: N818 - likewise
    def __init__(self, write: ViewWrite | None) -> None:
        self.write = write


def _transaction(
    body: Callable[[Cursor], Awaitable[None]],
) -> Callable[[asyncmy.Connection], Awaitable[None]]:
    """An operation running ``body`` in a transaction, rolled back if it raises."""

    async def run(conn: asyncmy.Connection) -> None:
        await conn.begin()
        try:
            await body(conn.cursor())
            await conn.commit()
        except BaseException:
            if conn.connected and conn.get_transaction_status():
                await conn.rollback()
            raise

    return run


async def _insert_views(cursor: Cursor, table: str, new: Sequence[ViewWrite]) -> None:
    """Insert views not stored yet; _Refused (None: the caller finds which) if one is."""
    rows = ", ".join(["(%s, %s, %s)"] * len(new))
    query = f"INSERT INTO {table} (view_id, version, payload) VALUES {rows}"  # noqa: S608 - a validated name
    params = [v for w in new for v in (w.view_id, w.version, w.payload.decode())]
    try:
        await cursor.execute(query, params)
    except asyncmy.errors.IntegrityError as error:
        if error.args[:1] != (_DUPLICATE_KEY,):
            raise
        raise _Refused(None) from error


async def _update_views(cursor: Cursor, table: str, changed: Sequence[ViewWrite]) -> None:
    """Update views still at their expected versions (one query); _Refused naming the
    first one that is not."""
    one = f"UPDATE {table} SET version = %s, payload = %s WHERE view_id = %s AND version = %s"  # noqa: S608 - a validated name
    params = [v for w in changed for v in (w.version, w.payload.decode(), w.view_id, w.expected)]
    counts = [await cursor.execute(";\n".join([one] * len(changed)), params)]
    while await cursor.nextset():
        counts.append(int(cast("int", cursor.rowcount)))
    for count, write in zip(counts, changed, strict=True):
        if count != 1:
            raise _Refused(write)


def _microseconds(ttl: float) -> int:
    return max(0, round(float(ttl) * 1_000_000))


class MysqlCheckpointStore:
    """A :class:`~cqrs.checkpoints.CheckpointStore` in ``table`` and ``<table>_parked``, on
    the connections of the repository that made it: every method raises NotOpenError while
    that repository is not open.

    Every operation is one query, so concurrent runners in any processes get exactly one
    winner per lease, and a save under a token that moved on changes nothing. Leases are
    timed by the server's clock (``UTC_TIMESTAMP(6)``), so the runners' clocks do not
    matter. An operation whose connection broke is sent once more on a fresh one: each is
    safe to repeat (an acquire repeated by its owner only takes its own lease again).

    It is a :class:`~cqrs.checkpoints.ViewCheckpointStore` for the view repositories of the
    same event repository: a batch is one transaction (the fenced checkpoint update first,
    holding the projection's row until the commit, then one insert for the new views and
    one query of updates for the changed ones).
    """

    def __init__(self, table: str, connections: Connections) -> None:
        self.statements = MysqlCheckpointStatements.for_table(table)
        self.table = table
        self._connections = connections

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True for a view repository made by the same event repository (same pool)."""
        return (
            isinstance(views, MysqlViewRepository) and views._connections is self._connections  # noqa: SLF001 - same backend
        )

    def _table(self, views: ViewRepository[Any]) -> str:
        if not self.shares_database(views):
            msg = f"{views!r} is not a view repository of this store's connections"
            raise ValueError(msg)
        return quote(views.table)  # type: ignore[attr-defined] # checked above

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored views of ``view_ids`` that exist, in one query."""
        table, ids = self._table(views), list(view_ids)
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))
        query = f"SELECT view_id, payload, version FROM {table} WHERE view_id IN ({marks})"  # noqa: S608 - a validated name

        async def read(conn: asyncmy.Connection) -> dict[str, tuple[object, object]]:
            cursor = conn.cursor()
            await cursor.execute(query, ids)
            rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
            return {row[0].decode(): (row[1], row[2]) for row in rows}

        return await self._run(f"load {len(ids)} views", read)

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Save the checkpoint under the token and store the writes, in one transaction."""
        table = self._table(views)
        new = [w for w in writes if w.expected == 0]
        changed = [w for w in writes if w.expected != 0]

        async def body(cursor: Cursor) -> None:
            if await cursor.execute(self.statements.save, (position, lease.name, lease.token)) != 1:
                raise _Lost
            if new:
                await _insert_views(cursor, table, new)
            if changed:
                await _update_views(cursor, table, changed)

        try:
            await self._run(f"save views and checkpoint of {lease.name!r}", _transaction(body))
        except _Lost:
            raise await self._lost(lease) from None
        except _Refused as refused:
            write = refused.write
            if write is None:  # a new view was stored meanwhile: name one of them
                stored = await self.fetch_views(views, [w.view_id for w in new])
                write = next((w for w in new if w.view_id in stored), new[0])
            raise view_conflict(views, write) from None

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Delete the views and reset the checkpoint, in one transaction."""
        check_lease_name(name)
        clears = [f"DELETE FROM {self._table(each)}" for each in views]  # noqa: S608 - validated names

        async def body(cursor: Cursor) -> None:
            for clear in clears:
                await cursor.execute(clear)
            await cursor.execute(self.statements.reset, (name, position))

        await self._run(f"reset {name!r} and its views", _transaction(body))

    async def create_schema(self) -> None:
        """Create both tables if missing, under the table's named lock (idempotent, safe
        when several processes run it at once)."""

        async def apply(conn: asyncmy.Connection) -> None:
            await apply_schema(conn, "mysql/projections", "projections", self.table)

        await self._connections.run(f"create checkpoint table {self.table}", apply)

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        params = (name, owner, _microseconds(ttl), name, owner, name)

        async def take(conn: asyncmy.Connection) -> Lease | None:
            cursor = conn.cursor()
            try:
                await cursor.execute(self.statements.acquire, params)
                await cursor.nextset()  # the row
                await cursor.nextset()  # the lease
                taken = cursor.rowcount == 1
                await cursor.nextset()  # read back
                row: tuple[Any, ...] | None = await cursor.fetchone()
                while await cursor.nextset():  # COMMIT
                    pass
            except asyncmy.errors.MySQLError:
                if conn.connected:
                    await conn.rollback()
                raise
            if not taken or row is None:
                return None
            return Lease(name, owner, int(row[0]), int(row[1]))

        return await self._run(f"acquire lease of {name!r}", take)

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current and it was not released."""
        params = (_microseconds(ttl), lease.name, lease.token)
        return await self._update(self.statements.renew, params, f"renew {lease.name!r}") == 1

    async def release(self, lease: Lease) -> None:
        """End the lease if its token is current."""
        params = (lease.name, lease.token)
        await self._update(self.statements.release, params, f"release {lease.name!r}")

    async def save(self, lease: Lease, position: int) -> None:
        """Store the checkpoint under a current token; raise LeaseLost otherwise."""
        params = (position, lease.name, lease.token)
        if await self._update(self.statements.save, params, f"save {lease.name!r}") != 1:
            raise await self._lost(lease)

    async def position(self, name: str) -> int:
        """The checkpoint (0 if never saved)."""
        check_lease_name(name)
        row = await self._row(name, f"read checkpoint {name!r}")
        return 0 if row is None else int(row[0])

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease; the token moves on, fencing its holder."""
        check_lease_name(name)
        await self._update(self.statements.reset, (name, position), f"reset {name!r}")

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token (replacing one of its position)."""
        params = (
            lease.name,
            event.position,
            str(event.event_id),
            error,
            lease.name,
            lease.token,
        )
        doing = f"park position {event.position} of {lease.name!r}"
        if await self._update(self.statements.park, params, doing) == 0:
            raise await self._lost(lease)

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        check_lease_name(name)

        async def read(conn: asyncmy.Connection) -> list[ParkedEvent]:
            cursor = conn.cursor()
            await cursor.execute(self.statements.parked, (name,))
            rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
            return [
                ParkedEvent(stored.decode(), position, event_id, text)
                for stored, position, event_id, text in rows
            ]

        return await self._run(f"read parked events of {name!r}", read)

    async def _lost(self, lease: Lease) -> LeaseLost:
        row = await self._row(lease.name, f"read lease of {lease.name!r}")
        return lease_lost(lease, None if row is None else int(row[1]))

    async def _row(self, name: str, what: str) -> tuple[Any, ...] | None:
        async def read(conn: asyncmy.Connection) -> tuple[Any, ...] | None:
            cursor = conn.cursor()
            await cursor.execute(self.statements.position, (name,))
            row: tuple[Any, ...] | None = await cursor.fetchone()
            return row

        return await self._run(what, read)

    async def _update(self, statement: str, params: tuple[object, ...], what: str) -> int:
        async def run(conn: asyncmy.Connection) -> int:
            return await conn.cursor().execute(statement, params)

        return await self._run(what, run)

    async def _run(self, what: str, operation: Callable[[asyncmy.Connection], Awaitable[T]]) -> T:
        """``operation`` (see Connections.run), sent again when InnoDB chose it as the
        victim of a deadlock (two first acquires of one name)."""
        for attempt in range(_ATTEMPTS):
            try:
                return await self._connections.run(what, operation)
            except Exception as error:
                cause = error.__cause__
                deadlock = isinstance(cause, asyncmy.errors.MySQLError) and (
                    cause.args[:1] == (_DEADLOCK,)
                )
                if not deadlock or attempt == _ATTEMPTS - 1:
                    raise
            await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError  # unreachable: the last attempt returns or raises
