"""The PostgreSQL view repository."""

from __future__ import annotations

from typing import TypeVar

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from cqrs.codec import Codec, default_codec
from cqrs.repository import BaseViewRepository
from cqrs_postgres.connection import Connections, Pool, raw_json_cursor
from cqrs_postgres.schema import apply_view_schema
from cqrs_postgres.statements import PostgresViewStatements

__all__ = ["PostgresViewRepository"]

V = TypeVar("V")


class PostgresViewRepository(BaseViewRepository[V]):
    """Views in one PostgreSQL table (``view_id``, ``version``, ``payload json``).

    ``pool`` is the caller's pool, or the connections of the event repository that made
    this view repository (then it is usable exactly while that repository is open). Used on
    a closed pool or repository, every method raises NotOpenError. ``statements`` holds the
    SQL it runs (:class:`~cqrs_postgres.statements.PostgresViewStatements`).

    A write whose outcome is unknown (the connection broke) is sent once more on a fresh
    connection; there a refusal counts as success if the stored view is exactly this one at
    this version (the first attempt's work).
    """

    def __init__(
        self,
        view_type: type[V],
        table: str,
        pool: Pool | Connections,
        *,
        codec: Codec = default_codec,
    ) -> None:
        super().__init__(view_type, table, codec=codec)
        self._connections = (
            pool if isinstance(pool, Connections) else Connections(pool, f"views {self.table}")
        )
        self.statements = PostgresViewStatements.for_table(self.table)

    async def _create_schema(self) -> None:
        async def apply(conn: AsyncConnection[TupleRow]) -> None:
            await apply_view_schema(conn, self.table)

        await self._connections.run(f"create view table {self.table}", apply)

    async def _fetch(self, view_id: str) -> tuple[str, int] | None:
        async def read(conn: AsyncConnection[TupleRow]) -> tuple[str, int] | None:
            return await self._stored(conn, view_id)

        return await self._connections.run(f"load view {view_id!r} from {self.table}", read)

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        text = payload.decode()
        statement, params = (
            (self.statements.insert, (view_id, version, text))
            if expected == 0
            else (self.statements.update, (version, text, view_id, expected))
        )

        async def write(conn: AsyncConnection[TupleRow]) -> bool:
            cursor = await conn.execute(statement, params)
            return cursor.rowcount == 1

        async def write_again(conn: AsyncConnection[TupleRow]) -> bool:
            return await write(conn) or await self._stored(conn, view_id) == (text, version)

        what = f"store view {view_id!r} in {self.table}"
        return await self._connections.run(what, write, write_again)

    async def _stored(
        self, conn: AsyncConnection[TupleRow], view_id: str
    ) -> tuple[str, int] | None:
        cursor = raw_json_cursor(conn)
        await cursor.execute(self.statements.load, (view_id,))
        row = await cursor.fetchone()
        return None if row is None else (row[0], row[1])
