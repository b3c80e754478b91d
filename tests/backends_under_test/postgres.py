from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
from psycopg import sql

from cqrs_postgres import PostgresEventRepository, from_url

URL = os.environ.get("CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgresFactory:
    id = "postgres"
    capabilities = frozenset({"persistent", "multiprocess", "push", "push_across_clients"})
    url = URL

    async def unavailable(self) -> str | None:
        try:
            async with asyncio.timeout(3):
                conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=3)
            await conn.close()
        except (psycopg.Error, TimeoutError) as error:
            reason = " ".join(str(error).split()) or "timed out after 3 s"
            return f"cannot connect to {self.url}: {reason}"
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> PostgresEventRepository:
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
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND starts_with(tablename, %s)",
                (prefix,),
            )
            tables = [sql.Identifier(row[0]) for row in await cursor.fetchall()]
            if tables:
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.SQL(", ").join(tables))
                )


FACTORY = PostgresFactory()
