"""Factories: a CqrsFramework over SQLite in one call, one per source of truth."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

from cqrs.aggregate import Aggregate
from cqrs.framework import CqrsFramework
from cqrs.query import Query
from cqrs.store import PersistedEventStore
from cqrs_sqlite.repository import SqliteEventRepository

__all__ = ["sqlite_aggregate_cqrs", "sqlite_cqrs", "sqlite_snapshot_cqrs"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")

PathOrRepository = SqliteEventRepository | str | os.PathLike[str]
"""An open :class:`SqliteEventRepository`, or a path (or ``":memory:"``) for a new one."""


def _repository(path_or_repo: PathOrRepository) -> SqliteEventRepository:
    if isinstance(path_or_repo, SqliteEventRepository):
        return path_or_repo
    return SqliteEventRepository(path_or_repo)


def sqlite_cqrs(
    path_or_repo: PathOrRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework whose source of truth is the events alone (every load replays them).

    Pass a repository you opened (and will close), with its schema created. A path creates
    a new, unopened :class:`SqliteEventRepository`; open it and create its schema before the
    first command, through ``framework.store.repository``.
    """
    store = PersistedEventStore.new_event_store(_repository(path_or_repo), aggregate_class)
    return CqrsFramework(store, queries, services)


def sqlite_snapshot_cqrs(
    path_or_repo: PathOrRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]],
    snapshot_every: int,
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`sqlite_cqrs`, storing a snapshot whenever a commit crosses a multiple of
    ``snapshot_every`` events; a load reads the snapshot and the events after it."""
    store = PersistedEventStore.new_snapshot_store(
        _repository(path_or_repo), aggregate_class, snapshot_every
    )
    return CqrsFramework(store, queries, services)


def sqlite_aggregate_cqrs(
    path_or_repo: PathOrRepository,
    aggregate_class: type[Aggregate[C, E, S]],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`sqlite_cqrs`, storing the state after every commit (the events are still
    stored, so queries and replays see them); a load reads the state and nothing else."""
    store = PersistedEventStore.new_aggregate_store(_repository(path_or_repo), aggregate_class)
    return CqrsFramework(store, queries, services)
