"""The framework side: CqrsFramework and PersistedEventStore over any backend's repository."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.domain import AMOUNT, BenchAccount, DepositMany, amounts, open_command
from benchmarks.workloads import Operation, commit_groups_with_tasks
from cqrs import (
    CqrsFramework,
    EventDecoder,
    EventEnvelope,
    GenericQuery,
    PersistedEventRepository,
    PersistedEventStore,
    ProjectionRunner,
    QueryReplay,
    ViewProjection,
)
from examples.bank_account.domain import BankAccountServices, BankAccountView, DepositMoney

__all__ = ["FrameworkSide", "NoOpProjection"]

_BEYOND = 2**62
"""A position no catch-up reaches: ``wait_for`` then returns at the first idle read."""


class NoOpProjection:
    """A projection of the bench account's events that does nothing with them (it counts
    them): what is left is the runner's own cost."""

    event_types = None

    def __init__(self, name: str, store: EventDecoder) -> None:
        self.name = name
        self.sources = (store,)
        self.handled = 0

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.handled += len(events)


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

    def _runner(self, table: str, projection: Any) -> ProjectionRunner:
        assert self.repository is not None  # noqa: S101 - opened by the harness
        checkpoints = self.repository.checkpoint_store(self._view_table(table))
        self._checkpoints = checkpoints
        return ProjectionRunner(
            self.repository,
            checkpoints,
            [projection],
            owner="bench",
            batch_size=getattr(self.repository, "page_size", 500),
        )

    async def prepare_catchup(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002 - runs to the end
        projection = NoOpProjection("catchup", self.store)
        runner = self._runner(table, projection)
        await self._checkpoints.create_schema()
        return self._catch_up(runner, lambda: projection.handled)

    async def prepare_view_upsert(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002 - runs to the end
        assert self.repository is not None  # noqa: S101 - opened by the harness
        views = self.repository.view_repository(BankAccountView, self._view_table(table))
        await views.create_schema()
        applied = 0

        def update(view: BankAccountView, envelope: EventEnvelope[Any]) -> None:
            nonlocal applied
            view.update(envelope)
            applied += 1

        projection = ViewProjection(
            "upserts",
            [self.store],
            views,
            BankAccountView,
            key=lambda envelope: f"{envelope.aggregate_id}.{envelope.sequence}",
            update=update,
        )
        runner = self._runner(f"{table}_cp", projection)
        await self._checkpoints.create_schema()
        return self._catch_up(runner, lambda: applied)

    @staticmethod
    def _catch_up(runner: ProjectionRunner, handled: Callable[[], int]) -> list[Operation]:
        """One step: ``run()`` from position 0 until a read finds nothing more (its first
        idle read, ``wait_for``), then stop it; returns the events handed over."""

        async def catch_up() -> int:
            task = asyncio.create_task(runner.run())
            try:
                await runner.wait_for(_BEYOND, timeout=600)
            finally:
                runner.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return handled()

        return [catch_up]
