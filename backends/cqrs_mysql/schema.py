"""Applying the DDL files of ``sql/mysql/`` (see :mod:`cqrs.ddl`) under the configured
table names: each file once, recorded in ``<events table>_schema_version``, while holding a
named lock (``GET_LOCK``) per table, so processes that start together do not race.

MySQL commits every DDL statement on its own, so a file is not applied atomically: it is
recorded once all its statements ran. A file interrupted half-way (a lost connection) is
left for an operator to finish by hand; no event is lost either way. The files quote table
names the standard way (``"name"``), so they run with ``ANSI_QUOTES`` added to the
session's ``sql_mode`` (restored afterwards).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncmy
import asyncmy.errors

from cqrs.ddl import Migration, migrations, pending
from cqrs.errors import ConfigurationError, DatabaseConnectionError
from cqrs.repository import validate_identifier
from cqrs_mysql.statements import quote

__all__ = ["apply_event_schema", "apply_schema", "schema_version_table"]

SEED_FILE = "001_seed.sql"
"""mysql-es's layout; a database made with it has both tables and no schema-version table."""

LOCK_TIMEOUT = 60
"""Seconds to wait for another process's schema change before giving up."""

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {} (file varchar(255) PRIMARY KEY,
  applied_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"""
_EXISTS = """SELECT count(*) FROM information_schema.tables
WHERE table_schema = DATABASE() AND table_name = %s"""


def schema_version_table(events_table: str) -> str:
    """The table recording which DDL files were applied for ``events_table``."""
    return validate_identifier(f"{events_table}_schema_version", "schema-version table name")


def _lock_name(table: str) -> str:
    return "cqrs-es:" + hashlib.blake2b(table.encode(), digest_size=16).hexdigest()


@asynccontextmanager
async def _locked(conn: asyncmy.Connection, *tables: str) -> AsyncIterator[None]:
    """Hold the named locks of ``tables`` (sorted: no deadlock between overlapping callers)
    with ANSI_QUOTES in the session's sql_mode; release both afterwards."""
    cursor = conn.cursor()
    names = sorted({_lock_name(table) for table in tables})
    taken: list[str] = []
    await cursor.execute("SELECT @@SESSION.sql_mode")
    row = await cursor.fetchone()
    mode = str(row[0]) if row else ""
    try:
        for name in names:
            await cursor.execute("SELECT GET_LOCK(%s, %s)", (name, LOCK_TIMEOUT))
            got = await cursor.fetchone()
            if not got or got[0] != 1:
                held = ", ".join(tables)
                msg = f"another process held the schema lock of {held} for {LOCK_TIMEOUT} s"
                raise DatabaseConnectionError(msg)
            taken.append(name)
        await cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',ANSI_QUOTES')")
        yield
    finally:
        if conn.connected:
            await cursor.execute("SET SESSION sql_mode = %s", (mode,))
            for name in reversed(taken):
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (name,))
                await cursor.fetchall()


async def _run(conn: asyncmy.Connection, migration: Migration) -> None:
    cursor = conn.cursor()
    for statement in migration.statements:
        await cursor.execute(statement)


async def _exists(conn: asyncmy.Connection, table: str) -> bool:
    cursor = conn.cursor()
    await cursor.execute(_EXISTS, (table,))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def apply_event_schema(
    conn: asyncmy.Connection, events_table: str, snapshots_table: str
) -> list[str]:
    """Bring the events and snapshots tables up to date on ``conn``; return the names of
    the files applied now.

    A database created with mysql-es's layout (both tables, no schema-version table) gets
    ``001`` recorded without running it, then the later files upgrade it in place. A record
    whose tables were both dropped is cleared and the files applied again; one table without
    the other is a ConfigurationError.
    """
    files = migrations("mysql", {"events": events_table, "snapshots": snapshots_table})
    version_table = quote(schema_version_table(events_table))
    applied_now: list[str] = []
    async with _locked(conn, events_table, snapshots_table):
        cursor = conn.cursor()
        await cursor.execute(_VERSION_TABLE.format(version_table))
        await cursor.execute(f"SELECT file FROM {version_table}")  # noqa: S608 - a validated name
        done = {str(row[0]) for row in await cursor.fetchall()}
        events, snapshots = (
            await _exists(conn, events_table),
            await _exists(conn, snapshots_table),
        )
        if events != snapshots:
            present, missing = (
                (events_table, snapshots_table) if events else (snapshots_table, events_table)
            )
            msg = f"table {present} exists but {missing} does not; create both or neither"
            raise ConfigurationError(msg)
        if done and not events:
            # The tables were dropped but not their record: start again from nothing.
            await cursor.execute(f"DELETE FROM {version_table}")  # noqa: S608 - a validated name
            done = set()
        for migration in pending(files, done):
            if migration.name != SEED_FILE or not events:
                await _run(conn, migration)
            await cursor.execute(
                f"INSERT INTO {version_table} (file) VALUES (%s)",  # noqa: S608 - a validated name
                (migration.name,),
            )
            applied_now.append(migration.name)
    return applied_now


async def apply_schema(conn: asyncmy.Connection, dialect: str, word: str, table: str) -> None:
    """Run the (idempotent) files of ``sql/<dialect>`` for ``table`` (standing for the table
    word ``word`` in them) under the table's lock: the view and checkpoint tables."""
    async with _locked(conn, table):
        for migration in migrations(dialect, {word: table}):
            await _run(conn, migration)
