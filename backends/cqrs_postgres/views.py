"""The PostgreSQL view repository."""

from __future__ import annotations

from typing import Generic, TypeVar

from psycopg import sql

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict
from cqrs.repository import ViewContext, decode_view, next_view_version, validate_identifier
from cqrs_postgres.connection import Pool, borrow, raw_json_cursor
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

    The pool belongs to the caller. Call :meth:`create_schema` once before use.
    """

    def __init__(
        self, view_type: type[V], view_table: str, pool: Pool, *, codec: Codec = default_codec
    ) -> None:
        self.view_type = view_type
        self.table = validate_identifier(view_table)
        self.pool = pool
        self.codec = codec
        name = sql.Identifier(self.table)
        self._load = sql.SQL(_LOAD).format(table=name).as_bytes(None)
        self._insert = sql.SQL(_INSERT).format(table=name).as_bytes(None)
        self._update = sql.SQL(_UPDATE).format(table=name).as_bytes(None)

    async def create_schema(self) -> None:
        """Create the view table if missing; safe when several processes run it at once."""
        async with borrow(self.pool, f"create view table {self.table}") as conn:
            await apply_view_schema(conn, self.table)

    async def load(self, view_id: str) -> V | None:
        """The view, or None."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its version, or None; DeserializationError names an undecodable one."""
        async with borrow(self.pool, f"load view {view_id!r} from {self.table}") as conn:
            cursor = raw_json_cursor(conn)
            await cursor.execute(self._load, (view_id,))
            row = await cursor.fetchone()
        if row is None:
            return None
        version, payload = row
        view = decode_view(self.codec, payload, self.view_type, f"view {view_id!r} in {self.table}")
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store the view at ``version`` (default ``context.version + 1``) if its version is
        still ``context.version`` (0: not stored yet); raise AggregateConflict otherwise."""
        new_version = next_view_version(context, version)
        payload = self.codec.encode(view).decode()
        async with borrow(self.pool, f"store view {context.view_id!r} in {self.table}") as conn:
            if context.version == 0:
                await conn.execute(self._insert, (context.view_id, new_version, payload))
                return
            cursor = await conn.execute(
                self._update, (new_version, payload, context.view_id, context.version)
            )
            updated = cursor.rowcount
        if updated != 1:
            msg = (
                f"view {context.view_id!r} in {self.table} is no longer at version "
                f"{context.version}"
            )
            raise AggregateConflict(msg)
