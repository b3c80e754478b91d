"""Optional repository methods the command line uses when a backend has them.

The storage port (:class:`~cqrs.repository.PersistedEventRepository`) stays as it is: every
command works on any backend through it, and a backend may add these methods, found by name,
to make a command faster or tell more. The SQLite and PostgreSQL backends have all four,
the MongoDB backend ``count_events``.

- ``schema_status() -> (applied, pending)``: the DDL files recorded as applied and those
  ``create_schema()`` would apply (``cqrs schema status``; without it the backend is said to
  keep no migrations).
- ``count_events(aggregate_type, after_position) -> int``: how many events a stream would
  read (the totals of progress bars; without it they show a rate but no ETA).
- ``storage_size() -> int``: bytes on disk (``cqrs stats``).
- ``import_events(events, snapshots) -> int``: store events of many aggregates in one
  transaction, positions in the given order, skipping events already stored with the same
  event id and raising AggregateConflict (storing nothing) for an event stored with another
  id or a gap; at most one snapshot per aggregate, kept only if newer. ``cqrs copy`` uses it
  for whole chunks; without it, it calls ``persist`` once per run of one aggregate's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cqrs.repository import PersistedEventRepository, SerializedEvent, SerializedSnapshot

__all__ = ["CountsEvents", "ImportsEvents", "KnowsSchema", "KnowsSize", "count_events"]


@runtime_checkable
class KnowsSchema(Protocol):
    """A repository that can list its applied and pending DDL files."""

    async def schema_status(self) -> tuple[list[str], list[str]]:
        """(applied, pending) DDL file names."""
        ...


@runtime_checkable
class CountsEvents(Protocol):
    """A repository that can count events without reading them."""

    async def count_events(self, aggregate_type: str | None, after_position: int | None) -> int:
        """Events of ``aggregate_type`` (None: every type) after ``after_position``."""
        ...


@runtime_checkable
class KnowsSize(Protocol):
    """A repository that can tell the bytes it takes on disk."""

    async def storage_size(self) -> int:
        """Bytes on disk."""
        ...


@runtime_checkable
class ImportsEvents(Protocol):
    """A repository that stores events of many aggregates in one transaction."""

    async def import_events(
        self, events: Sequence[SerializedEvent], snapshots: Sequence[SerializedSnapshot]
    ) -> int:
        """Store them (see the module docstring); the number of new events."""
        ...


async def count_events(
    repository: PersistedEventRepository, aggregate_type: str | None, after_position: int | None
) -> int | None:
    """The repository's count of the events a stream would read, or None if it cannot tell
    without reading them."""
    if isinstance(repository, CountsEvents):
        return await repository.count_events(aggregate_type, after_position)
    return None
