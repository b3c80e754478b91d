"""The in-memory checkpoint store: :class:`cqrs.MemoryCheckpoints` kept in the database of a
repository, usable while that repository is open."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cqrs.checkpoints import MemoryCheckpoints

if TYPE_CHECKING:
    from cqrs_memory.repository import MemoryEventRepository

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore(MemoryCheckpoints):
    """Checkpoints, leases and parked events of projections in ``table`` of the database of
    ``repository``: repositories sharing a database share them. Every method raises
    NotOpenError while ``repository`` is not open."""

    def __init__(self, table: str, repository: MemoryEventRepository) -> None:
        shared = repository.database._checkpoint_table(table)  # noqa: SLF001 - same package
        super().__init__(table, shared=shared)
        self.repository = repository

    def _check_open(self) -> None:
        self.repository._check_open()  # noqa: SLF001 - same package
