"""SQLite backend: the embedded default, one file and no server.

Each repository owns one connection on one worker thread; every commit and every load is a
single hop to that thread. The schema is the files in ``sql/sqlite``. Only the standard
library's ``sqlite3`` is needed (SQLite 3.24 or newer).
"""

from cqrs_sqlite.checkpoints import SqliteCheckpointStatements, SqliteCheckpointStore
from cqrs_sqlite.factories import sqlite_aggregate_cqrs, sqlite_cqrs, sqlite_snapshot_cqrs
from cqrs_sqlite.repository import SqliteEventRepository
from cqrs_sqlite.statements import SqliteStatements, SqliteViewStatements
from cqrs_sqlite.url import from_url
from cqrs_sqlite.views import SqliteViewRepository

__all__ = [
    "SqliteCheckpointStatements",
    "SqliteCheckpointStore",
    "SqliteEventRepository",
    "SqliteStatements",
    "SqliteViewRepository",
    "SqliteViewStatements",
    "from_url",
    "sqlite_aggregate_cqrs",
    "sqlite_cqrs",
    "sqlite_snapshot_cqrs",
]
