from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncmy
import asyncmy.errors

from cqrs_mysql import MysqlEventRepository, from_url, parse_url

URL = os.environ.get("CQRS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


class MysqlFactory:
    id = "mysql"
    capabilities = frozenset({"persistent", "multiprocess", "push", "push_across_clients"})
    url = URL

    async def unavailable(self) -> str | None:
        try:
            async with asyncio.timeout(3):
                conn = await asyncmy.connect(**parse_url(self.url).connect_kwargs(3))
            await conn.ensure_closed()
        except (asyncmy.errors.MySQLError, OSError, TimeoutError) as error:
            reason = " ".join(str(error).split()) or "timed out after 3 s"
            return f"cannot connect to {self.url}: {reason}"
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> MysqlEventRepository:
        paging = {} if page_size is None else {"page_size": page_size}
        return from_url(
            self.url,
            events_table=events_table,
            snapshots_table=snapshots_table,
            min_size=1,
            max_size=4,
            timeout=10,
            **paging,
        )

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        conn = await asyncmy.connect(**parse_url(self.url).connect_kwargs(10))
        try:
            cursor = conn.cursor()
            await cursor.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name LIKE %s",
                (prefix + "%",),
            )
            tables = [str(row[0]) for row in await cursor.fetchall()]
            if tables:
                await cursor.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{t}`" for t in tables))
        finally:
            await conn.ensure_closed()


FACTORY = MysqlFactory()
