"""Convenience factories: a CqrsFramework over a MongoEventRepository in one call.

The repository's lifecycle stays with the caller: open it (``async with repository:``)
before executing commands and close it afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from cqrs.aggregate import Aggregate
from cqrs.framework import CqrsFramework, Retry
from cqrs.query import Query
from cqrs.store import PersistedEventStore
from cqrs.upcasting import EventUpcaster
from cqrs_mongodb.repository import MongoEventRepository

__all__ = ["mongodb_aggregate_cqrs", "mongodb_cqrs", "mongodb_snapshot_cqrs"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


def mongodb_cqrs(
    repository: MongoEventRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework whose source of truth is the events alone (replayed on every load)."""
    store = PersistedEventStore(repository, aggregate_class, upcasters=upcasters)
    return CqrsFramework(store, queries, services, retry=retry)


def mongodb_snapshot_cqrs(
    repository: MongoEventRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]],
    snapshot_size: int,
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework that stores a snapshot whenever a commit crosses a multiple of
    ``snapshot_size`` events, and loads from the snapshot plus the events after it."""
    store = PersistedEventStore(
        repository, aggregate_class, snapshot_every=snapshot_size, upcasters=upcasters
    )
    return CqrsFramework(store, queries, services, retry=retry)


def mongodb_aggregate_cqrs(
    repository: MongoEventRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework whose source of truth is the aggregate's state, stored after every
    commit (the events are still stored, for queries and replays)."""
    store = PersistedEventStore(repository, aggregate_class, snapshot_every=1, upcasters=upcasters)
    return CqrsFramework(store, queries, services, retry=retry)
