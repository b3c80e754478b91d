"""The SQLite view repository: views as JSON rows with an optimistic version."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, TypeVar

from cqrs.codec import Codec, default_codec
from cqrs.ddl import migrations
from cqrs.repository import BaseViewRepository
from cqrs_sqlite.repository import write_transaction
from cqrs_sqlite.statements import SqliteViewStatements

if TYPE_CHECKING:
    from cqrs_sqlite.repository import SqliteEventRepository

__all__ = ["SqliteViewRepository"]

V = TypeVar("V")


class SqliteViewRepository(BaseViewRepository[V]):
    """Views of type ``view_type`` in ``table``, on the connection of ``repository``: every
    method raises NotOpenError while that repository is not open.

    Each load is one hop; each update is one hop in a ``BEGIN IMMEDIATE`` transaction.
    ``statements`` holds the SQL it runs (:class:`~cqrs_sqlite.statements.SqliteViewStatements`).
    """

    def __init__(
        self,
        view_type: type[V],
        table: str,
        repository: SqliteEventRepository,
        *,
        codec: Codec = default_codec,
    ) -> None:
        super().__init__(view_type, table, codec=codec)
        self.repository = repository
        self.statements = SqliteViewStatements.for_table(self.table)

    async def _create_schema(self) -> None:
        files = migrations("sqlite/views", {"views": self.table})
        statements = [statement for file in files for statement in file.statements]

        def create(connection: sqlite3.Connection) -> None:
            for statement in statements:
                connection.execute(statement)

        await self.repository.run(create, f"creating the view table {self.table}")

    async def _fetch(self, view_id: str) -> tuple[str, int] | None:
        sql = self.statements.load

        def read(connection: sqlite3.Connection) -> tuple[str, int] | None:
            row: tuple[str, int] | None = connection.execute(sql, (view_id,)).fetchone()
            return row

        return await self.repository.run(read, f"loading view {view_id!r} from {self.table}")

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        params: tuple[object, ...]
        if expected == 0:
            sql, params = self.statements.insert, (view_id, version, payload)
        else:
            sql, params = self.statements.update, (version, payload, view_id, expected)

        def write(connection: sqlite3.Connection) -> bool:
            return write_transaction(
                connection, lambda: connection.execute(sql, params).rowcount == 1
            )

        return await self.repository.run(write, f"storing view {view_id!r} in {self.table}")
