from __future__ import annotations

from pathlib import Path

from cqrs_memory import MemoryDatabase, MemoryEventRepository


class MemoryFactory:
    id = "memory"
    capabilities = frozenset({"persistent", "push", "push_across_clients"})

    def __init__(self) -> None:
        self._databases: dict[Path, MemoryDatabase] = {}

    async def unavailable(self) -> str | None:
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> MemoryEventRepository:
        database = self._databases.setdefault(workdir, MemoryDatabase())
        paging = {} if page_size is None else {"page_size": page_size}
        return MemoryEventRepository(events_table, snapshots_table, database=database, **paging)

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        self._databases.pop(workdir, None)


FACTORY = MemoryFactory()
