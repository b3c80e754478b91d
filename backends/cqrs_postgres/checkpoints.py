"""The PostgreSQL checkpoint store: checkpoints, leases and parked events in two tables next
to the events, every operation one statement, leases on the server's clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, tuple_row

from cqrs.checkpoints import (
    Lease,
    ParkedEvent,
    ViewWrite,
    check_lease_name,
    lease_lost,
    view_conflict,
)
from cqrs.ddl import migrations
from cqrs.errors import LeaseLost
from cqrs.repository import SerializedEvent, ViewRepository, validate_identifier
from cqrs_postgres.connection import Connections, raw_json_cursor
from cqrs_postgres.schema import _lock
from cqrs_postgres.views import PostgresViewRepository

__all__ = [
    "PostgresBatchViewStatements",
    "PostgresCheckpointStatements",
    "PostgresCheckpointStore",
]

# Concurrent acquires of one row queue on its lock; each then re-checks the WHERE against the
# row as the previous winner left it (READ COMMITTED re-evaluation), so exactly one of them
# takes a lease nobody holds.
_ACQUIRE = """INSERT INTO {table} AS stored (name, owner, token, lease_until)
VALUES (%(name)s, %(owner)s, 1, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = stored.token + 1,
  lease_until = excluded.lease_until
WHERE stored.owner = '' OR stored.owner = excluded.owner OR stored.lease_until <= now()
RETURNING token, position"""

_RENEW = """UPDATE {table} SET lease_until = now() + make_interval(secs => %s)
WHERE name = %s AND token = %s AND owner <> ''"""

_RELEASE = """UPDATE {table} SET owner = '', lease_until = '-infinity'
WHERE name = %s AND token = %s"""

_SAVE = """UPDATE {table} SET position = GREATEST(position, %s)
WHERE name = %s AND token = %s"""

_POSITION = "SELECT position, token FROM {table} WHERE name = %s"

_RESET = """INSERT INTO {table} AS stored (name, position, token) VALUES (%s, %s, 1)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, owner = '',
  lease_until = '-infinity', token = stored.token + 1"""

# FOR SHARE holds the projection's row until the record is stored: a takeover waits for the
# park, or the park sees the new token and stores nothing.
_PARK = """WITH holder AS (
  SELECT FROM {table} WHERE name = %(name)s AND token = %(token)s FOR SHARE
), parked AS (
  INSERT INTO {parked} (name, position, event_id, error)
  SELECT %(name)s::text, %(position)s::bigint, %(event_id)s::uuid, %(error)s::text FROM holder
  ON CONFLICT (name, position) DO UPDATE SET event_id = excluded.event_id,
    error = excluded.error, parked_at = CURRENT_TIMESTAMP
  RETURNING 1
)
SELECT FROM parked"""

_PARKED = """SELECT name, position, event_id::text, error FROM {parked}
WHERE name = %s ORDER BY position"""


# A batch's view writes: one statement for the new views and one for the changed ones, each
# over arrays, so a batch of any size is a few round trips.
_FETCH_VIEWS = "SELECT view_id, payload, version FROM {views} WHERE view_id = ANY(%s)"

_INSERT_VIEWS = """INSERT INTO {views} (view_id, version, payload)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::json[])
ON CONFLICT (view_id) DO NOTHING RETURNING view_id"""

_UPDATE_VIEWS = """UPDATE {views} AS stored SET version = batch.version, payload = batch.payload
FROM unnest(%s::text[], %s::bigint[], %s::json[], %s::bigint[])
  AS batch (view_id, version, payload, expected)
WHERE stored.view_id = batch.view_id AND stored.version = batch.expected
RETURNING stored.view_id"""

_CLEAR_VIEWS = "DELETE FROM {views}"


@dataclass(frozen=True, slots=True)
class PostgresBatchViewStatements:
    """The statements a :class:`PostgresCheckpointStore` runs on one view table (from
    :meth:`PostgresCheckpointStore.view_statements`).

    - ``fetch``: view_id, payload (JSON text) and version of the views of an array of ids;
    - ``insert``: store new views from arrays of ids, versions and payloads, skipping ids
      already stored; returns the ids stored;
    - ``update``: change views still at their expected versions, from arrays of ids,
      versions, payloads and expected versions; returns the ids changed;
    - ``clear``: delete every view.
    """

    fetch: bytes
    insert: bytes
    update: bytes
    clear: bytes

    @classmethod
    def for_table(cls, table: str) -> PostgresBatchViewStatements:
        """The statements for view table ``table`` (a validated identifier)."""
        views = sql.Identifier(validate_identifier(table))

        def compose(text: str) -> bytes:
            return sql.SQL(text).format(views=views).as_bytes(None)

        return cls(
            fetch=compose(_FETCH_VIEWS),
            insert=compose(_INSERT_VIEWS),
            update=compose(_UPDATE_VIEWS),
            clear=compose(_CLEAR_VIEWS),
        )


class _Lost(Exception):  # noqa: N818 - a private signal that rolls a transaction back
    pass


class _Refused(Exception):  # noqa: N818 - likewise
    def __init__(self, write: ViewWrite) -> None:
        self.write = write


def _compose(text: str, table: str) -> bytes:
    names = {
        "table": sql.Identifier(validate_identifier(table)),
        "parked": sql.Identifier(validate_identifier(f"{table}_parked")),
    }
    return sql.SQL(text).format(**names).as_bytes(None)


@dataclass(frozen=True, slots=True)
class PostgresCheckpointStatements:
    """The statements of one :class:`PostgresCheckpointStore` (its ``statements``
    attribute), each run alone in autocommit mode.

    - ``acquire``: take or create the lease if free, expired or the owner's (named: name,
      owner, ttl); returns token and position, or no row;
    - ``renew``: extend a held lease under its token (ttl, name, token);
    - ``release``: end the lease under its token (name, token);
    - ``save``: raise the position under a token (position, name, token);
    - ``position``: a projection's checkpoint and token (name);
    - ``reset``: set the position, end the lease, bump the token (name, position);
    - ``park``: record a parked event under a token, replacing one of its position (named:
      name, token, position, event_id, error); returns a row if it did;
    - ``parked``: a projection's parked events by position (name).
    """

    acquire: bytes
    renew: bytes
    release: bytes
    save: bytes
    position: bytes
    reset: bytes
    park: bytes
    parked: bytes

    @classmethod
    def for_table(cls, table: str) -> PostgresCheckpointStatements:
        """The statements for ``table`` and ``<table>_parked`` (validated identifiers)."""
        return cls(
            acquire=_compose(_ACQUIRE, table),
            renew=_compose(_RENEW, table),
            release=_compose(_RELEASE, table),
            save=_compose(_SAVE, table),
            position=_compose(_POSITION, table),
            reset=_compose(_RESET, table),
            park=_compose(_PARK, table),
            parked=_compose(_PARKED, table),
        )


class PostgresCheckpointStore:
    """A :class:`~cqrs.checkpoints.CheckpointStore` in ``table`` and ``<table>_parked``, on
    the connections of the repository that made it: every method raises NotOpenError while
    that repository is not open.

    Every operation is one statement, so concurrent runners in any processes get exactly
    one winner per lease, and a save under a token that moved on changes nothing. Leases are
    timed by the server's clock (``now()``), so the runners' clocks do not matter. An
    operation whose connection broke is sent once more on a fresh one: each is safe to
    repeat (an acquire repeated by its owner only takes its own lease again).

    It is a :class:`~cqrs.checkpoints.ViewCheckpointStore` for the view repositories of the
    same event repository: a batch is one transaction (the fenced checkpoint update first,
    holding the projection's row until the commit, then one statement for the new views
    and one for the changed ones).
    """

    def __init__(self, table: str, connections: Connections) -> None:
        self.statements = PostgresCheckpointStatements.for_table(table)
        self.table = table
        self._connections = connections
        self._view_statements: dict[str, PostgresBatchViewStatements] = {}

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True for a view repository made by the same event repository (same pool)."""
        return (
            isinstance(views, PostgresViewRepository) and views._connections is self._connections  # noqa: SLF001 - same backend
        )

    def view_statements(self, views: ViewRepository[Any]) -> PostgresBatchViewStatements:
        """The batch statements for ``views`` (ValueError unless :meth:`shares_database`)."""
        if not self.shares_database(views):
            msg = f"{views!r} is not a view repository of this store's connections"
            raise ValueError(msg)
        table: str = views.table  # type: ignore[attr-defined] # checked above
        statements = self._view_statements.get(table)
        if statements is None:
            statements = self._view_statements[table] = PostgresBatchViewStatements.for_table(table)
        return statements

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored views of ``view_ids`` that exist, in one statement."""
        statement, ids = self.view_statements(views).fetch, list(view_ids)

        async def read(conn: AsyncConnection[TupleRow]) -> dict[str, tuple[object, object]]:
            cursor = raw_json_cursor(conn)
            await cursor.execute(statement, (ids,))
            return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}

        return await self._connections.run(f"load {len(ids)} views", read)

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Save the checkpoint under the token and store the writes, in one transaction."""
        statements = self.view_statements(views)
        new = [w for w in writes if w.expected == 0]
        changed = [w for w in writes if w.expected != 0]

        async def write(conn: AsyncConnection[TupleRow]) -> None:
            async with conn.transaction():
                saved = await conn.execute(
                    self.statements.save, (position, lease.name, lease.token)
                )
                if saved.rowcount != 1:
                    raise _Lost
                if new:
                    params: tuple[object, ...] = (
                        [w.view_id for w in new],
                        [w.version for w in new],
                        [w.payload.decode() for w in new],
                    )
                    await _all_stored(conn, statements.insert, params, new)
                if changed:
                    params = (
                        [w.view_id for w in changed],
                        [w.version for w in changed],
                        [w.payload.decode() for w in changed],
                        [w.expected for w in changed],
                    )
                    await _all_stored(conn, statements.update, params, changed)

        try:
            await self._connections.run(f"save views and checkpoint of {lease.name!r}", write)
        except _Lost:
            raise await self._lost(lease) from None
        except _Refused as refused:
            raise view_conflict(views, refused.write) from None

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Delete the views and reset the checkpoint, in one transaction."""
        check_lease_name(name)
        clears = [self.view_statements(each).clear for each in views]

        async def write(conn: AsyncConnection[TupleRow]) -> None:
            async with conn.transaction():
                for clear in clears:
                    await conn.execute(clear)
                await conn.execute(self.statements.reset, (name, position))

        await self._connections.run(f"reset {name!r} and its views", write)

    async def create_schema(self) -> None:
        """Create both tables if missing, under the table's advisory lock (idempotent, safe
        when several processes run it at once)."""
        files = migrations("postgres/projections", {"projections": self.table})

        async def apply(conn: AsyncConnection[TupleRow]) -> None:
            async with conn.transaction():
                await _lock(conn, self.table)
                for migration in files:
                    for statement in migration.statements:
                        await conn.execute(statement.encode(), prepare=False)

        await self._connections.run(f"create checkpoint table {self.table}", apply)

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        params = {"name": name, "owner": owner, "ttl": float(ttl)}
        row = await self._one(self.statements.acquire, params, f"acquire lease of {name!r}")
        return None if row is None else Lease(name, owner, row[0], row[1])

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current and it was not released."""
        params = (float(ttl), lease.name, lease.token)
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
        row = await self._one(self.statements.position, (name,), f"read checkpoint {name!r}")
        return 0 if row is None else cast("int", row[0])

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease; the token moves on, fencing its holder."""
        check_lease_name(name)
        await self._update(self.statements.reset, (name, position), f"reset {name!r}")

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token (replacing one of its position)."""
        params = {
            "name": lease.name,
            "token": lease.token,
            "position": event.position,
            "event_id": str(event.event_id),
            "error": error,
        }
        doing = f"park position {event.position} of {lease.name!r}"
        if await self._one(self.statements.park, params, doing) is None:
            raise await self._lost(lease)

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        check_lease_name(name)

        async def read(conn: AsyncConnection[TupleRow]) -> list[TupleRow]:
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute(self.statements.parked, (name,))
            return await cursor.fetchall()

        rows = await self._connections.run(f"read parked events of {name!r}", read)
        return [ParkedEvent(*row) for row in rows]

    async def _lost(self, lease: Lease) -> LeaseLost:
        what = f"read lease of {lease.name!r}"
        row = await self._one(self.statements.position, (lease.name,), what)
        return lease_lost(lease, None if row is None else row[1])

    async def _one(
        self, statement: bytes, params: dict[str, object] | tuple[object, ...], what: str
    ) -> TupleRow | None:
        async def run(conn: AsyncConnection[TupleRow]) -> TupleRow | None:
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute(statement, params)
            return await cursor.fetchone()

        return await self._connections.run(what, run)

    async def _update(self, statement: bytes, params: tuple[object, ...], what: str) -> int:
        async def run(conn: AsyncConnection[TupleRow]) -> int:
            cursor = await conn.execute(statement, params)
            return cursor.rowcount

        return await self._connections.run(what, run)


async def _all_stored(
    conn: AsyncConnection[TupleRow],
    statement: bytes,
    params: tuple[object, ...],
    writes: list[ViewWrite],
) -> None:
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(statement, params)
    stored = {row[0] for row in await cursor.fetchall()}
    if len(stored) != len(writes):
        raise _Refused(next(w for w in writes if w.view_id not in stored))
