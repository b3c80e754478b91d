"""The databases the benchmark runs on, and how each builds its three sides.

Every (workload, side) pair gets its own new tables (SQLite: its own file), named with the
run's unique prefix, so no workload sees another's rows; the tables are dropped at the end.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from benchmarks.workloads import Side

if TYPE_CHECKING:
    import asyncmy

__all__ = [
    "MemoryTarget",
    "MongoTarget",
    "MysqlTarget",
    "PostgresTarget",
    "SqliteTarget",
    "Target",
    "version",
]

SHORT = {
    "commit_1": "c1",
    "commit_10": "c10",
    "load_100": "l100",
    "load_1000": "l1000",
    "load_snapshot": "lsnap",
    "concurrent_8": "conc8",
    "replay_10k": "r10k",
    "catchup_10k": "cu10k",
    "view_upsert": "vu",
}


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


class _Names:
    """A new short name per call for one workload: ``c1``, then ``c1b``, ``c1c``... (a
    retried workload gets new tables)."""

    def __init__(self) -> None:
        self._uses: dict[str, int] = {}

    def __call__(self, workload: str) -> str:
        uses = self._uses.get(workload, 0)
        self._uses[workload] = uses + 1
        return SHORT[workload] + ("" if uses == 0 else chr(ord("a") + uses))


def _peer(app_name: str, env: dict[str, str], snapshot_every: int | None) -> list[Side]:
    """The peer side, or nothing when the ``eventsourcing`` package is not installed."""
    try:
        from benchmarks.peer import PeerSide  # noqa: PLC0415 - optional dependency
    except ImportError:
        return []
    return [PeerSide(app_name, env, snapshot_every=snapshot_every)]


class Target(Protocol):
    """One backend under benchmark."""

    name: str

    async def unavailable(self) -> str | None:
        """None if usable, else a one-line reason to skip it."""

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        """New framework, raw and peer sides (those that exist here) for ``workload``."""

    async def describe(self) -> dict[str, object]:
        """Versions and settings for the JSON's ``machine`` section."""

    async def cleanup(self) -> None:
        """Drop everything this run created."""


class MemoryTarget:
    """``memory://``: the framework and the peer's in-memory (POPO) persistence; no raw."""

    name = "memory"

    def __init__(self) -> None:
        self._names = _Names()

    async def unavailable(self) -> str | None:
        return None

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        from benchmarks.framework import FrameworkSide  # noqa: PLC0415
        from cqrs_memory import MemoryEventRepository  # noqa: PLC0415 - per backend

        return [
            FrameworkSide(MemoryEventRepository, snapshot_every=snapshot_every),
            *_peer(
                f"mem_{self._names(workload)}",
                {"PERSISTENCE_MODULE": "eventsourcing.popo"},
                snapshot_every,
            ),
        ]

    async def describe(self) -> dict[str, object]:
        return {}

    async def cleanup(self) -> None:
        return None


class SqliteTarget:
    """SQLite files in a new temporary directory: one file per workload and side."""

    name = "sqlite"

    def __init__(self, directory: str | None = None) -> None:
        self._parent = directory
        self._directory: Path | None = None
        self._names = _Names()

    def _dir(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="cqrs-bench-", dir=self._parent))
        return self._directory

    async def unavailable(self) -> str | None:
        try:
            import cqrs_sqlite  # noqa: F401, PLC0415
        except ImportError as error:
            return f"the SQLite backend is not importable: {error}"
        return None

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        from benchmarks.framework import FrameworkSide  # noqa: PLC0415
        from benchmarks.raw_sqlite import RawSqliteSide  # noqa: PLC0415
        from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415

        short = self._names(workload)
        base = self._dir()
        framework_path = str(base / f"{short}_framework.db")
        return [
            FrameworkSide(
                lambda: SqliteEventRepository(framework_path, "events", "snapshots"),
                snapshot_every=snapshot_every,
            ),
            RawSqliteSide(
                str(base / f"{short}_raw.db"),
                "events",
                "snapshots",
                view_prefix="",
                snapshot_every=snapshot_every,
            ),
            *_peer(
                f"sqlite_{short}",
                {
                    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": str(base / f"{short}_peer.db"),
                },
                snapshot_every,
            ),
        ]

    async def describe(self) -> dict[str, object]:
        return {
            "sqlite": sqlite3.sqlite_version,
            "sqlite_settings": "journal_mode=WAL, synchronous=FULL (all sides)",
            "sqlite_directory": str(self._dir().parent),
        }

    async def cleanup(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


class PostgresTarget:
    """Tables named ``<run prefix>_<workload>_<side>_*`` on the server at ``url``."""

    name = "postgres"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._names = _Names()

    async def unavailable(self) -> str | None:
        try:
            import psycopg  # noqa: PLC0415

            import cqrs_postgres  # noqa: F401, PLC0415
        except ImportError as error:
            return f"the PostgreSQL backend is not importable: {error}"
        try:
            connection = await psycopg.AsyncConnection.connect(self.url, connect_timeout=3)
        except psycopg.Error as error:
            return f"PostgreSQL at {self._public_url()} is unreachable: {str(error).strip()}"
        await connection.close()
        return None

    def _public_url(self) -> str:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        params = conninfo_to_dict(self.url)
        host, port = params.get("host") or "localhost", params.get("port") or 5432
        return f"postgresql://{params.get('user') or ''}@{host}:{port}/{params.get('dbname')}"

    def _peer_env(self) -> dict[str, str]:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        params = conninfo_to_dict(self.url)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
            "POSTGRES_HOST": str(params.get("host") or "localhost"),
            "POSTGRES_PORT": str(params.get("port") or "5432"),
            "POSTGRES_USER": str(params.get("user") or "postgres"),
            "POSTGRES_PASSWORD": str(params.get("password") or ""),
            "CREATE_TABLE": "yes",
        }

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        from benchmarks.framework import FrameworkSide  # noqa: PLC0415
        from benchmarks.raw_postgres import RawPostgresSide  # noqa: PLC0415
        from cqrs_postgres import from_url  # noqa: PLC0415

        base = f"{self.prefix}_{self._names(workload)}"
        url = self.url
        return [
            FrameworkSide(
                lambda: from_url(
                    url, events_table=f"{base}_fw_events", snapshots_table=f"{base}_fw_snapshots"
                ),
                snapshot_every=snapshot_every,
                view_table=lambda table: f"{base}_fw_{table}",
            ),
            RawPostgresSide(
                url,
                f"{base}_raw_events",
                f"{base}_raw_snapshots",
                view_prefix=f"{base}_raw_",
                snapshot_every=snapshot_every,
            ),
            *_peer(f"{base}_peer", self._peer_env(), snapshot_every),
        ]

    async def describe(self) -> dict[str, object]:
        import psycopg  # noqa: PLC0415

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            settings = {}
            for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers"):
                cursor = await conn.execute(f"SHOW {name}")
                row = await cursor.fetchone()
                settings[name] = row[0] if row else None
        return {
            "postgres_server": settings.pop("server_version"),
            "postgres_settings": settings,
            "postgres_url": self._public_url(),
            "psycopg": psycopg.__version__,
            "psycopg_pool": version("psycopg-pool"),
            "libpq": psycopg.pq.version(),
        }

    async def cleanup(self) -> None:
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT schemaname, tablename FROM pg_tables WHERE starts_with(tablename, %s)",
                (f"{self.prefix}_",),
            )
            for schema, table in await cursor.fetchall():
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                )


class MysqlTarget:
    """Tables named ``<run prefix>_<workload>_<side>_*`` in the database of ``url`` (MySQL
    or MariaDB). Framework and raw only (``eventsourcing`` has no MySQL persistence)."""

    name = "mysql"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._names = _Names()

    async def _connect(self) -> asyncmy.Connection:
        import asyncmy  # noqa: PLC0415

        from cqrs_mysql import parse_url  # noqa: PLC0415

        return await asyncmy.connect(**parse_url(self.url).connect_kwargs(3))

    async def unavailable(self) -> str | None:
        try:
            import asyncmy  # noqa: F401, PLC0415

            import cqrs_mysql  # noqa: F401, PLC0415
        except ImportError as error:
            return f"the MySQL backend is not importable: {error}"
        try:
            conn = await self._connect()
        except Exception as error:  # noqa: BLE001 - any failure to connect is the reason
            return f"MySQL is unreachable: {error}"
        await conn.ensure_closed()
        return None

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        from benchmarks.framework import FrameworkSide  # noqa: PLC0415
        from benchmarks.raw_mysql import RawMysqlSide  # noqa: PLC0415
        from cqrs_mysql import from_url  # noqa: PLC0415

        base = f"{self.prefix}_{self._names(workload)}"
        url = self.url
        return [
            FrameworkSide(
                lambda: from_url(
                    url, events_table=f"{base}_fw_events", snapshots_table=f"{base}_fw_snapshots"
                ),
                snapshot_every=snapshot_every,
                view_table=lambda table: f"{base}_fw_{table}",
            ),
            RawMysqlSide(
                url,
                f"{base}_raw_events",
                f"{base}_raw_snapshots",
                view_prefix=f"{base}_raw_",
                snapshot_every=snapshot_every,
            ),
        ]

    async def describe(self) -> dict[str, object]:
        conn = await self._connect()
        try:
            cursor = conn.cursor()
            await cursor.execute(
                "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin"
            )
            row = await cursor.fetchone()
        finally:
            await conn.ensure_closed()
        server, flush, sync_binlog, log_bin = row or (None, None, None, None)
        return {
            "mysql_server": server,
            "mysql_settings": {
                "innodb_flush_log_at_trx_commit": flush,
                "sync_binlog": sync_binlog,
                "log_bin": log_bin,
            },
            "asyncmy": version("asyncmy"),
        }

    async def cleanup(self) -> None:
        conn = await self._connect()
        try:
            cursor = conn.cursor()
            await cursor.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name LIKE %s",
                (f"{self.prefix}\\_%",),
            )
            for (table,) in await cursor.fetchall():
                await cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            await conn.ensure_closed()


class MongoTarget:
    """Collections named ``<run prefix>_<workload>_<side>_*`` in the database of ``url``.

    Framework and raw only (``eventsourcing`` has no MongoDB persistence of its own).
    """

    name = "mongodb"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._names = _Names()

    async def unavailable(self) -> str | None:
        try:
            import pymongo  # noqa: PLC0415

            import cqrs_mongodb  # noqa: F401, PLC0415
        except ImportError as error:
            return f"the MongoDB backend is not importable: {error}"
        client: pymongo.AsyncMongoClient[dict[str, object]] = pymongo.AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=3000
        )
        try:
            await client.admin.command("ping")
        except pymongo.errors.PyMongoError as error:
            return f"MongoDB is unreachable: {error}"
        finally:
            await client.close()
        return None

    def sides(self, workload: str, snapshot_every: int | None) -> list[Side]:
        from benchmarks.framework import FrameworkSide  # noqa: PLC0415
        from benchmarks.raw_mongodb import RawMongoSide, framework_repository  # noqa: PLC0415

        base = f"{self.prefix}_{self._names(workload)}"
        url = self.url
        return [
            FrameworkSide(
                lambda: framework_repository(url, f"{base}_fw"),
                snapshot_every=snapshot_every,
                view_table=lambda table: f"{base}_fw_{table}",
            ),
            RawMongoSide(url, f"{base}_raw", snapshot_every=snapshot_every),
        ]

    async def describe(self) -> dict[str, object]:
        import pymongo  # noqa: PLC0415

        client: pymongo.AsyncMongoClient[dict[str, object]] = pymongo.AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=3000
        )
        try:
            info = await client.server_info()
        finally:
            await client.close()
        return {"mongodb_server": info.get("version"), "pymongo": pymongo.version}

    async def cleanup(self) -> None:
        import pymongo  # noqa: PLC0415

        client: pymongo.AsyncMongoClient[dict[str, object]] = pymongo.AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=3000
        )
        try:
            database = client.get_default_database("cqrs")
            for name in await database.list_collection_names():
                if name.startswith(f"{self.prefix}_"):
                    await database.drop_collection(name)
        finally:
            await client.close()
