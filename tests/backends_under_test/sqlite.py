from __future__ import annotations

from pathlib import Path

from cqrs_sqlite import SqliteEventRepository


class SqliteFactory:
    id = "sqlite"
    capabilities = frozenset({"persistent", "multiprocess", "push", "push_across_clients"})

    async def unavailable(self) -> str | None:
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> SqliteEventRepository:
        # One file per test: every repository of a test shares it, as processes would.
        paging = {} if page_size is None else {"page_size": page_size}
        return SqliteEventRepository(workdir / "store.db", events_table, snapshots_table, **paging)

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        return None  # the file lives in the test's own tmp_path


FACTORY = SqliteFactory()
