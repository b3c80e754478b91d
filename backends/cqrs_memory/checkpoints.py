"""The in-memory checkpoint store: :class:`cqrs.MemoryCheckpoints` kept in the database of a
repository, usable while that repository is open, writing that database's views together
with checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cqrs.checkpoints import Lease, MemoryCheckpoints, ViewWrite, view_conflict
from cqrs.repository import ViewRepository

if TYPE_CHECKING:
    from cqrs_memory.repository import MemoryEventRepository

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore(MemoryCheckpoints):
    """Checkpoints, leases and parked events of projections in ``table`` of the database of
    ``repository``: repositories sharing a database share them. Every method raises
    NotOpenError while ``repository`` is not open.

    A :class:`~cqrs.checkpoints.ViewCheckpointStore` for the view repositories of that
    database: each batch is checked whole and then applied, with no await in between, so it
    is atomic on the event loop."""

    def __init__(self, table: str, repository: MemoryEventRepository) -> None:
        shared = repository.database._checkpoint_table(table)  # noqa: SLF001 - same package
        super().__init__(table, shared=shared)
        self.repository = repository

    def _check_open(self) -> None:
        self.repository._check_open()  # noqa: SLF001 - same package

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True for a view repository made by a repository on the same database."""
        from cqrs_memory.repository import MemoryViewRepository  # noqa: PLC0415 - a cycle

        return (
            isinstance(views, MemoryViewRepository)
            and views.repository is not None
            and views.repository.database is self.repository.database
        )

    def _table(self, views: ViewRepository[Any]) -> dict[str, tuple[bytes, int]]:
        if not self.shares_database(views):
            msg = f"{views!r} is not a view repository of this store's database"
            raise ValueError(msg)
        table: str = views.table  # type: ignore[attr-defined] # checked above
        return self.repository.database._view_table(table)  # noqa: SLF001 - same package

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored views of ``view_ids`` that exist."""
        rows = self._table(views)
        self._check_open()
        return {view_id: row for view_id in view_ids if (row := rows.get(view_id)) is not None}

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Check the lease and every expected version, then store it all."""
        rows = self._table(views)
        self._check_open()
        row = self._current(lease)
        for write in writes:
            stored = rows.get(write.view_id)
            if (0 if stored is None else stored[1]) != write.expected:
                raise view_conflict(views, write)
        for write in writes:
            rows[write.view_id] = (write.payload, write.version)
        row.position = max(row.position, position)

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Clear the views and reset the checkpoint, fencing its holder."""
        tables = [self._table(each) for each in views]
        await self.reset(name, position)
        for rows in tables:
            rows.clear()
