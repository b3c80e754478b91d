"""The PostgreSQL view repository."""

from __future__ import annotations

from typing import Generic, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict
from cqrs.repository import ViewContext, decode_view, next_view_version, validate_identifier
from cqrs_postgres.connection import Connections, Pool, raw_json_cursor
from cqrs_postgres.schema import apply_view_schema

__all__ = ["PostgresViewRepository"]

V = TypeVar("V")

_LOAD = "SELECT version, payload FROM {table} WHERE view_id = %b"
_INSERT = "INSERT INTO {table} (view_id, version, payload) VALUES (%b, %b, %b::json)"
_UPDATE = """UPDATE {table} SET version = %b, payload = %b::json
WHERE view_id = %b AND version = %b"""


class PostgresViewRepository(Generic[V]):
    """Views in one PostgreSQL table (``view_id``, ``version``, ``payload json``), encoded
    with the codec, with optimistic locking by version.

    ``pool`` is the caller's pool, or the connections of the event repository that made
    this view repository (then it is usable exactly while that repository is open). Used on
    a closed pool or repository, every method raises NotOpenError. Call
    :meth:`create_schema` once before use.
    """

    def __init__(
        self,
        view_type: type[V],
        view_table: str,
        pool: Pool | Connections,
        *,
        codec: Codec = default_codec,
    ) -> None:
        self.view_type = view_type
        self.table = validate_identifier(view_table)
        self._connections = (
            pool if isinstance(pool, Connections) else Connections(pool, f"views {self.table}")
        )
        self.codec = codec
        name = sql.Identifier(self.table)
        self._load = sql.SQL(_LOAD).format(table=name).as_bytes(None)
        self._insert = sql.SQL(_INSERT).format(table=name).as_bytes(None)
        self._update = sql.SQL(_UPDATE).format(table=name).as_bytes(None)

    async def create_schema(self) -> None:
        """Create the view table if missing; safe when several processes run it at once."""

        async def apply(conn: AsyncConnection[TupleRow]) -> None:
            await apply_view_schema(conn, self.table)

        await self._connections.run(f"create view table {self.table}", apply)

    async def load(self, view_id: str) -> V | None:
        """The view, or None."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its version, or None; DeserializationError names an undecodable one."""

        async def read(conn: AsyncConnection[TupleRow]) -> TupleRow | None:
            return await self._stored(conn, view_id)

        row = await self._connections.run(f"load view {view_id!r} from {self.table}", read)
        if row is None:
            return None
        version, payload = row
        view = decode_view(self.codec, payload, self.view_type, f"view {view_id!r} in {self.table}")
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store the view at ``version`` (default ``context.version + 1``) if its version is
        still ``context.version`` (0: not stored yet); raise AggregateConflict otherwise.

        A write whose outcome is unknown (the connection broke) is sent once more on a fresh
        connection; there a refusal counts as success if the stored view is exactly this one
        at this version (the first attempt's work)."""
        new_version = next_view_version(context, version)
        payload = self.codec.encode(view).decode()
        view_id = context.view_id

        async def write(conn: AsyncConnection[TupleRow]) -> bool:
            if context.version == 0:
                await conn.execute(self._insert, (view_id, new_version, payload))
                return True
            cursor = await conn.execute(
                self._update, (new_version, payload, view_id, context.version)
            )
            return cursor.rowcount == 1

        async def write_again(conn: AsyncConnection[TupleRow]) -> bool:
            try:
                if await write(conn):
                    return True
            except psycopg.errors.UniqueViolation:
                pass
            return await self._stored(conn, view_id) == (new_version, payload)

        what = f"store view {view_id!r} in {self.table}"
        if not await self._connections.run(what, write, write_again):
            msg = f"view {view_id!r} in {self.table} is no longer at version {context.version}"
            raise AggregateConflict(msg)

    async def _stored(self, conn: AsyncConnection[TupleRow], view_id: str) -> TupleRow | None:
        cursor = raw_json_cursor(conn)
        await cursor.execute(self._load, (view_id,))
        return await cursor.fetchone()
