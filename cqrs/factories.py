"""One way to build a framework over any repository; the backends' factories wrap it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from cqrs.aggregate import Aggregate
from cqrs.codec import Codec, default_codec
from cqrs.errors import ConfigurationError
from cqrs.framework import CqrsFramework, QueryFailure, Retry
from cqrs.query import Query
from cqrs.repository import PersistedEventRepository
from cqrs.store import PersistedEventStore
from cqrs.upcasting import EventUpcaster

__all__ = ["new_framework"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")


def new_framework(
    repository: PersistedEventRepository,
    aggregate_class: type[Aggregate[C, E, S]],
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
