"""The MySQL view repository."""

from __future__ import annotations

from typing import Any, TypeVar

import asyncmy
import asyncmy.errors

from cqrs.codec import Codec, default_codec
from cqrs.repository import BaseViewRepository
from cqrs_mysql.connection import Connections
from cqrs_mysql.schema import apply_schema
from cqrs_mysql.statements import MysqlViewStatements

__all__ = ["MysqlViewRepository"]

V = TypeVar("V")

_DUPLICATE_KEY = 1062


class MysqlViewRepository(BaseViewRepository[V]):
    """Views in one MySQL table (``view_id``, ``version``, ``payload json``), on the
    connections of the event repository that made it: usable exactly while that repository
    is open (NotOpenError otherwise). ``statements`` holds the SQL it runs
    (:class:`~cqrs_mysql.statements.MysqlViewStatements`).

    A write whose outcome is unknown (the connection broke) is sent once more on a fresh
    connection; there a refusal counts as success if the stored view is exactly this one at
    this version (the first attempt's work).
    """

    def __init__(
        self,
        view_type: type[V],
        table: str,
        connections: Connections,
        *,
        codec: Codec = default_codec,
    ) -> None:
        super().__init__(view_type, table, codec=codec)
        self._connections = connections
        self.statements = MysqlViewStatements.for_table(self.table)

    async def _create_schema(self) -> None:
        async def apply(conn: asyncmy.Connection) -> None:
            await apply_schema(conn, "mysql/views", "views", self.table)

        await self._connections.run(f"create view table {self.table}", apply)

    async def _fetch(self, view_id: str) -> tuple[str, int] | None:
        async def read(conn: asyncmy.Connection) -> tuple[str, int] | None:
            return await self._stored(conn, view_id)

        return await self._connections.run(f"load view {view_id!r} from {self.table}", read)

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        text = payload.decode()

        async def write(conn: asyncmy.Connection) -> bool:
            cursor = conn.cursor()
            if expected != 0:
                params = (version, text, view_id, expected)
                return await cursor.execute(self.statements.update, params) == 1
            try:
                await cursor.execute(self.statements.insert, (view_id, version, text))
            except asyncmy.errors.IntegrityError as error:
                if error.args and error.args[0] == _DUPLICATE_KEY:
                    return False
                raise
            return True

        async def write_again(conn: asyncmy.Connection) -> bool:
            return await write(conn) or await self._stored(conn, view_id) == (text, version)

        what = f"store view {view_id!r} in {self.table}"
        return await self._connections.run(what, write, write_again)

    async def _stored(self, conn: asyncmy.Connection, view_id: str) -> tuple[str, int] | None:
        cursor = conn.cursor()
        await cursor.execute(self.statements.load, (view_id,))
        row: tuple[Any, ...] | None = await cursor.fetchone()
        return None if row is None else (row[0], row[1])
