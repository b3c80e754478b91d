"""The framework side: CqrsFramework and PersistedEventStore over any backend's repository."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.domain import AMOUNT, BenchAccount, DepositMany, amounts, open_command
from benchmarks.workloads import Operation, commit_groups_with_tasks
from cqrs import (
    CqrsFramework,
    GenericQuery,
    PersistedEventRepository,
    PersistedEventStore,
    QueryReplay,
)
from examples.bank_account.domain import BankAccountServices, BankAccountView, DepositMoney

__all__ = ["FrameworkSide"]


class FrameworkSide:
    """Runs the workloads through the public API, as an application would.

    ``repository`` builds the (unopened) repository over this side's own tables; the side
    opens it, creates the schema, and closes it. With ``snapshot_every`` the store snapshots
    (``PersistedEventStore(snapshot_every=N)``); otherwise the events are the source of truth.
    """

    name = "framework"

    def __init__(
        self,
        repository: Callable[[], PersistedEventRepository],
        *,
        snapshot_every: int | None = None,
        view_table: Callable[[str], str] = lambda table: table,
    ) -> None:
        self._make_repository = repository
        self._snapshot_every = snapshot_every
        self._view_table = view_table
        self.repository: PersistedEventRepository | None = None

    async def open(self) -> None:
        repository = self._make_repository()
        await repository.open()
        await repository.create_schema()
        self.repository = repository
        self.store = PersistedEventStore(
            repository, BenchAccount, snapshot_every=self._snapshot_every
        )
        self.cqrs: CqrsFramework[Any, Any, Any] = CqrsFramework(
            self.store, services=BankAccountServices()
        )
        self._deposit = DepositMoney(AMOUNT)

    async def close(self) -> None:
        if self.repository is not None:
            await self.repository.close()
            self.repository = None

    async def create(self, aggregate_id: str, events: int) -> None:
        # expected_version=0: the aggregate is new, so the framework does not read it first
        # (RawSide.load_before_create mirrors that).
        await self.cqrs.execute(
            aggregate_id, open_command(aggregate_id, events), expected_version=0
        )

    async def grow(self, aggregate_id: str, events: int) -> None:
        await self.cqrs.execute(aggregate_id, DepositMany(amounts(events)))

    async def deposit(self, aggregate_id: str) -> None:
        await self.cqrs.execute(aggregate_id, self._deposit)

    async def load(self, aggregate_id: str) -> object:
        return (await self.store.load_aggregate(aggregate_id)).aggregate

    async def commit_groups(self, groups: list[list[str]]) -> None:
        await commit_groups_with_tasks(self, groups)

    async def prepare_replay(self, table: str) -> Operation | None:
        assert self.repository is not None  # noqa: S101 - opened by the harness
        views = self.repository.view_repository(BankAccountView, self._view_table(table))
        await views.create_schema()
        replay = QueryReplay(self.store, GenericQuery(views, BankAccountView))
        return replay.replay_all
