from __future__ import annotations

from pathlib import Path

from cqrs_memory import MemoryEventRepository


class MemoryFactory:
    id = "memory"
    capabilities = frozenset[str]()

    async def unavailable(self) -> str | None:
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str
    ) -> MemoryEventRepository:
        return MemoryEventRepository(events_table, snapshots_table)

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        return None


FACTORY = MemoryFactory()
