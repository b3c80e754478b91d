"""MySQL / MariaDB backend on asyncmy (extra ``mysql``).

Build a repository with :func:`from_url` (``mysql://user:password@host:port/database``) or
use ``cqrs.connect("mysql://...")``, and run ``create_schema()`` once. The schema is the
files of ``sql/mysql``: mysql-es's layout first, so a database a Rust service made upgrades
in place. Global order comes from a counter row raised in every committing transaction
(see :mod:`cqrs_mysql.repository`); subscriptions of other clients poll it.

The driver is asyncmy, not aiomysql: both are maintained asyncio drivers, and asyncmy is
the one released most recently and most often (0.2.18 in November 2026, against aiomysql's
0.3.2 of October 2025); its protocol is compiled (Cython) where aiomysql runs PyMySQL's
pure-Python one, so rows decode faster; and it ships type stubs (``py.typed``), which
``mypy --strict`` needs.
"""

from cqrs_mysql.checkpoints import MysqlCheckpointStatements, MysqlCheckpointStore
from cqrs_mysql.connection import MysqlConfig, parse_url
from cqrs_mysql.factories import mysql_aggregate_cqrs, mysql_cqrs, mysql_snapshot_cqrs
from cqrs_mysql.repository import MysqlEventRepository, from_url
from cqrs_mysql.statements import MysqlStatements, MysqlViewStatements
from cqrs_mysql.views import MysqlViewRepository
from cqrs_mysql.wake_ups import MysqlWakeUps

__all__ = [
    "MysqlCheckpointStatements",
    "MysqlCheckpointStore",
    "MysqlConfig",
    "MysqlEventRepository",
    "MysqlStatements",
    "MysqlViewRepository",
    "MysqlViewStatements",
    "MysqlWakeUps",
    "from_url",
    "mysql_aggregate_cqrs",
    "mysql_cqrs",
    "mysql_snapshot_cqrs",
    "parse_url",
]
