"""One way to build a framework over any repository; the backends' factories wrap it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cqrs.aggregate import Aggregate, AggregateClass
from cqrs.codec import Codec, default_codec
from cqrs.errors import ConfigurationError
from cqrs.framework import CqrsFramework, QueryFailure, Retry
from cqrs.query import Query
from cqrs.repository import PersistedEventRepository
from cqrs.store import PersistedEventStore
from cqrs.upcasting import EventUpcaster

__all__ = ["aggregate_cqrs", "event_store_cqrs", "new_framework", "snapshot_cqrs"]

A = TypeVar("A", bound="Aggregate[Any, Any, Any]")  # Any: any aggregate class
C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


def new_framework(
    repository: PersistedEventRepository,
    aggregate_class: AggregateClass[A, C, E, S],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
    *,
    snapshot_every: int | None = None,
    aggregate_store: bool = False,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
    on_query_error: Callable[[QueryFailure[E]], object] | None = None,
    codec: Codec = default_codec,
) -> CqrsFramework[C, E, S]:
    """A :class:`~cqrs.CqrsFramework` over a :class:`~cqrs.PersistedEventStore` on
    ``repository`` (no I/O: open the repository and create its schema before executing).

    The source of truth: the events alone (the default), a snapshot whenever a commit
    crosses a multiple of ``snapshot_every`` events, or with ``aggregate_store=True`` the
    state after every commit (events are still stored). ``upcasters`` apply on every read;
    ``retry`` retries conflicts; ``on_query_error`` receives query failures. Raises
    ConfigurationError if both ``snapshot_every`` and ``aggregate_store`` are given, or for
    an invalid aggregate class.

    Typing: the framework's ``C``, ``E`` and ``S`` (commands, events, services) are read
    from ``aggregate_class`` (see :class:`~cqrs.aggregate.AggregateClass`), so
    ``new_framework(repository, BankAccount)`` is a ``CqrsFramework[BankAccountCommand,
    BankAccountEvent, BankAccountServices]``; the same holds for the three factories below
    and the backends' ``*_cqrs`` factories, which are these functions.
    """
    if aggregate_store:
        if snapshot_every is not None:
            msg = "give snapshot_every or aggregate_store=True, not both"
            raise ConfigurationError(msg)
        snapshot_every = 1
    store = PersistedEventStore(
        repository,
        aggregate_class,
        snapshot_every=snapshot_every,
        upcasters=upcasters,
        codec=codec,
    )
    return CqrsFramework(store, queries, services, retry=retry, on_query_error=on_query_error)


# The per-backend factories named after cqrs-es (``postgres_cqrs``, ``sqlite_snapshot_cqrs``,
# ...) are these three functions under the backend's names, so every backend has the same
# parameters, names and order by construction.


def event_store_cqrs(
    repository: PersistedEventRepository,
    aggregate_class: AggregateClass[A, C, E, S],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """A framework whose source of truth is the events alone (every load replays them),
    over an open ``repository`` whose schema exists. See :func:`new_framework`."""
    return new_framework(
        repository, aggregate_class, queries, services, upcasters=upcasters, retry=retry
    )


def snapshot_cqrs(
    repository: PersistedEventRepository,
    aggregate_class: AggregateClass[A, C, E, S],
    queries: Sequence[Query[E]],
    snapshot_every: int,
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`event_store_cqrs`, also storing the state whenever a commit crosses a
    multiple of ``snapshot_every`` events; a load reads the snapshot and the events after it."""
    return new_framework(
        repository,
        aggregate_class,
        queries,
        services,
        snapshot_every=snapshot_every,
        upcasters=upcasters,
        retry=retry,
    )


def aggregate_cqrs(
    repository: PersistedEventRepository,
    aggregate_class: AggregateClass[A, C, E, S],
    queries: Sequence[Query[E]] = (),
    services: S | None = None,
    *,
    upcasters: Sequence[EventUpcaster] = (),
    retry: Retry | None = None,
) -> CqrsFramework[C, E, S]:
    """Like :func:`event_store_cqrs`, storing the state after every commit (the events are
    still stored, so queries and replays see them); a load reads the state alone."""
    return new_framework(
        repository,
        aggregate_class,
        queries,
        services,
        aggregate_store=True,
        upcasters=upcasters,
        retry=retry,
    )
