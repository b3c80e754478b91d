"""PostgreSQL backend on psycopg 3 and psycopg_pool (extra ``postgres``).

Open a pool with :func:`default_postgres_pool`, build a repository or a ready framework on
it, and run ``create_schema()`` once; or use ``cqrs.connect("postgresql://...")``.
"""

from cqrs_postgres.checkpoints import PostgresCheckpointStatements, PostgresCheckpointStore
from cqrs_postgres.connection import default_postgres_pool
from cqrs_postgres.factories import postgres_aggregate_cqrs, postgres_cqrs, postgres_snapshot_cqrs
from cqrs_postgres.repository import PostgresEventRepository, from_url
from cqrs_postgres.statements import PostgresStatements, PostgresViewStatements
from cqrs_postgres.views import PostgresViewRepository

__all__ = [
    "PostgresCheckpointStatements",
    "PostgresCheckpointStore",
    "PostgresEventRepository",
    "PostgresStatements",
    "PostgresViewRepository",
    "PostgresViewStatements",
    "default_postgres_pool",
    "from_url",
    "postgres_aggregate_cqrs",
    "postgres_cqrs",
    "postgres_snapshot_cqrs",
]
