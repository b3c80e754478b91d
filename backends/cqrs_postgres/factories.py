"""Ready-made frameworks over a PostgreSQL pool, one per source of truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from cqrs.aggregate import Aggregate
from cqrs.framework import CqrsFramework
from cqrs.query import Query
from cqrs.store import PersistedEventStore
from cqrs_postgres.connection import Pool
from cqrs_postgres.repository import PostgresEventRepository

__all__ = ["postgres_aggregate_cqrs", "postgres_cqrs", "postgres_snapshot_cqrs"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


def postgres_cqrs(
    pool: Pool,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework whose source of truth is the events, on the default tables of ``pool``
    (run ``PostgresEventRepository(pool).create_schema()`` once first)."""
    store = PersistedEventStore.new_event_store(PostgresEventRepository(pool), aggregate_class)
    return CqrsFramework(store, queries, services)


def postgres_snapshot_cqrs(
    pool: Pool,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]],
    snapshot_every: int,
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`postgres_cqrs`, also storing the state every ``snapshot_every`` events."""
    repository = PostgresEventRepository(pool)
    store = PersistedEventStore.new_snapshot_store(repository, aggregate_class, snapshot_every)
    return CqrsFramework(store, queries, services)


def postgres_aggregate_cqrs(
    pool: Pool,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`postgres_cqrs`, storing the state after every commit (aggregate store)."""
    store = PersistedEventStore.new_aggregate_store(PostgresEventRepository(pool), aggregate_class)
    return CqrsFramework(store, queries, services)
