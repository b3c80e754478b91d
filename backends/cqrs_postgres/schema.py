"""Applying the DDL files of ``sql/postgres/`` (see :mod:`cqrs.ddl`) under the configured
table names: each file once, recorded in ``<events table>_schema_version``, inside one
transaction that holds an advisory lock per table, so processes that start together do not
race.
"""

from __future__ import annotations

import hashlib

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, tuple_row

from cqrs.ddl import migrations, pending
from cqrs.errors import ConfigurationError
from cqrs.repository import validate_identifier

__all__ = ["apply_event_schema", "apply_view_schema", "schema_version_table"]

SEED_FILE = "001_seed.sql"
"""The seed's DDL; a database made with it has both tables and no schema-version table."""

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {} (file text PRIMARY KEY,
  applied_at timestamp with time zone NOT NULL DEFAULT (CURRENT_TIMESTAMP))"""


def schema_version_table(events_table: str) -> str:
    """The table recording which DDL files were applied for ``events_table``."""
    return validate_identifier(f"{events_table}_schema_version", "schema-version table name")


def _lock_key(table: str) -> int:
    digest = hashlib.blake2b(f"cqrs-es:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _lock(conn: AsyncConnection[TupleRow], *tables: str) -> None:
    # Sorted, so two callers locking overlapping tables cannot deadlock.
    for key in sorted({_lock_key(table) for table in tables}):
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


async def _exists(conn: AsyncConnection[TupleRow], table: str) -> bool:
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def apply_event_schema(
    conn: AsyncConnection[TupleRow], events_table: str, snapshots_table: str
) -> list[str]:
    """Bring the events and snapshots tables up to date on ``conn`` (an autocommit
    connection); return the names of the files applied now.

    A database created with the seed's DDL (both tables, no schema-version table) gets
    ``001`` recorded without running it, then the later files upgrade it in place. A record
    whose tables were both dropped is cleared and the files applied again; one table without
    the other is a ConfigurationError.
    """
    files = migrations("postgres", {"events": events_table, "snapshots": snapshots_table})
    version_table = schema_version_table(events_table)
    applied_now: list[str] = []
    async with conn.transaction():
        await _lock(conn, events_table, snapshots_table)
        await conn.execute(sql.SQL(_VERSION_TABLE).format(sql.Identifier(version_table)))
        cursor = conn.cursor(row_factory=tuple_row)
        await cursor.execute(sql.SQL("SELECT file FROM {}").format(sql.Identifier(version_table)))
        done = {row[0] for row in await cursor.fetchall()}
        existing = await _both_or_neither(conn, events_table, snapshots_table)
        if done and not existing:
            # The tables were dropped but not their record: start again from nothing.
            await conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(version_table)))
            done = set()
        for migration in pending(files, done):
            if migration.name != SEED_FILE or not existing:
                for statement in migration.statements:
                    await conn.execute(statement.encode(), prepare=False)
            await conn.execute(
                sql.SQL("INSERT INTO {} (file) VALUES (%s)").format(sql.Identifier(version_table)),
                (migration.name,),
            )
            applied_now.append(migration.name)
    return applied_now


async def _both_or_neither(
    conn: AsyncConnection[TupleRow], events_table: str, snapshots_table: str
) -> bool:
    events, snapshots = await _exists(conn, events_table), await _exists(conn, snapshots_table)
    if events != snapshots:
        present, missing = (
            (events_table, snapshots_table) if events else (snapshots_table, events_table)
        )
        msg = f"table {present} exists but {missing} does not; create both or neither"
        raise ConfigurationError(msg)
    return events


async def apply_view_schema(conn: AsyncConnection[TupleRow], view_table: str) -> None:
    """Create the view table if missing (its DDL file is idempotent), under its lock."""
    async with conn.transaction():
        await _lock(conn, view_table)
        for migration in migrations("postgres/views", {"views": view_table}):
            for statement in migration.statements:
                await conn.execute(statement.encode(), prepare=False)
