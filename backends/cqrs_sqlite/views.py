"""The SQLite view repository: views as JSON rows with an optimistic version."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Generic, TypeVar

from cqrs.codec import Codec, default_codec
from cqrs.ddl import ddl_files
from cqrs.errors import AggregateConflict
from cqrs.repository import ViewContext, decode_view, next_view_version, validate_identifier
from cqrs_sqlite.repository import write_transaction

if TYPE_CHECKING:
    from cqrs_sqlite.repository import SqliteEventRepository

__all__ = ["SqliteViewRepository"]

V = TypeVar("V")


class SqliteViewRepository(Generic[V]):
    """Views of type ``view_type`` in ``table``, on the connection of ``repository``: every
    method raises NotOpenError while that repository is not open.

    ``update_view`` stores the view only if its version is still the one loaded (0: none
    stored yet) and raises AggregateConflict otherwise; each update is one hop in a
    ``BEGIN IMMEDIATE`` transaction. Views are (de)serialized with ``codec``.
    """

    def __init__(
        self,
        view_type: type[V],
        table: str,
        repository: SqliteEventRepository,
        *,
        codec: Codec = default_codec,
    ) -> None:
        self.view_type = view_type
        self.table = validate_identifier(table)
        self.repository = repository
        self.codec = codec
        self._sql_load = f"SELECT payload, version FROM {table} WHERE view_id = ?"  # noqa: S608
        self._sql_insert = (
            f"INSERT INTO {table} (view_id, version, payload) "  # noqa: S608 - validated
            "VALUES (?, ?, CAST(? AS TEXT)) ON CONFLICT (view_id) DO NOTHING"
        )
        self._sql_update = (
            f"UPDATE {table} SET version = ?, payload = CAST(? AS TEXT) "  # noqa: S608
            "WHERE view_id = ? AND version = ?"
        )

    async def create_schema(self) -> None:
        """Create the view table from ``sql/sqlite/views`` if it is missing (idempotent)."""
        scripts = [sql.replace("{table}", self.table) for _, sql in ddl_files("sqlite/views")]

        def create(connection: sqlite3.Connection) -> None:
            for script in scripts:
                connection.execute(script)

        await self.repository.run(create, f"creating the view table {self.table}")

    async def load(self, view_id: str) -> V | None:
        """The view, or None (one hop)."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and the version it was stored at, or None (one hop)."""
        sql = self._sql_load

        def read(connection: sqlite3.Connection) -> tuple[str, int] | None:
            row: tuple[str, int] | None = connection.execute(sql, (view_id,)).fetchone()
            return row

        row = await self.repository.run(read, f"loading view {view_id!r} from {self.table}")
        if row is None:
            return None
        payload, version = row
        where = f"view {view_id!r} in {self.table} (version {version})"
        view = decode_view(self.codec, payload, self.view_type, where)
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store ``view`` at ``version`` (default ``context.version + 1``) if the stored
        version is still ``context.version``; raise AggregateConflict otherwise."""
        new_version = next_view_version(context, version)
        payload = self.codec.encode(view)
        view_id, loaded = context.view_id, context.version
        params: tuple[object, ...]
        if loaded == 0:
            sql, params = self._sql_insert, (view_id, new_version, payload)
        else:
            sql, params = self._sql_update, (new_version, payload, view_id, loaded)

        def write(connection: sqlite3.Connection) -> int:
            return write_transaction(connection, lambda: connection.execute(sql, params).rowcount)

        context_text = f"updating view {view_id!r} in {self.table}"
        if await self.repository.run(write, context_text) != 1:
            msg = f"view {view_id!r} in {self.table} is no longer at version {loaded}"
            raise AggregateConflict(msg)
