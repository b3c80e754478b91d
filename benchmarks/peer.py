"""The peer side: the ``eventsourcing`` package (PyPI, 9.x) doing the same workload.

``eventsourcing`` is synchronous: it has no async API. Its calls are made here as plain
blocking calls from the benchmark's event loop (nothing else runs meanwhile, so this costs it
nothing), and ``concurrent_8`` runs its 8 writers on 8 threads, its own way to be concurrent.
It uses its own persistence modules on the same database server or file system:
``eventsourcing.popo`` (memory), ``eventsourcing.sqlite`` (its own file, WAL mode, SQLite's
default ``synchronous=FULL`` like our backend) and ``eventsourcing.postgres`` (psycopg 3, its
own connection pool, tables named after the application: ``<name>_events`` and
``<name>_snapshots``). Its aggregate, :class:`PeerAccount`, has the same state and the same
two events with the same fields as the bank account; ``eventsourcing`` adds its own fields
(timestamp, topic) and its own JSON encoding, as it would for any user. Aggregate ids are
its native UUIDs. ``replay_10k`` is not measured: the package has no generic view store to
replay into (its projections need a hand-written recorder), so the peer column is null.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.domain import AMOUNT
from benchmarks.workloads import Operation

__all__ = ["PeerAccount", "PeerSide"]


class PeerAccount(Aggregate):
    """The bank account as an ``eventsourcing`` aggregate (decorator style)."""

    @event("AccountOpened")
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.opened = True
        self.balance = Decimal(0)

    def deposit(self, amount: Decimal) -> None:
        """The command: checks the amount, then records the event."""
        if amount <= 0:
            msg = f"amount must be positive, not {amount!r}"
            raise ValueError(msg)
        self._deposited(amount, self.balance + amount)

    @event("CustomerDepositedMoney")
    def _deposited(self, amount: Decimal, balance: Decimal) -> None:  # noqa: ARG002 - a field
        self.balance = balance


class PeerSide:
    """``eventsourcing`` with the persistence given by ``env`` (PERSISTENCE_MODULE and its
    settings); ``name`` is the application name (the Postgres table prefix)."""

    name = "peer"

    def __init__(
        self, app_name: str, env: dict[str, str], *, snapshot_every: int | None = None
    ) -> None:
        attributes: dict[str, Any] = {"name": app_name}
        if snapshot_every is not None:
            attributes["snapshotting_intervals"] = {PeerAccount: snapshot_every}
        self._app_class = type(f"Peer_{app_name}", (Application,), attributes)
        self._env = env
        self._ids: dict[str, UUID] = {}
        self.app: Application[UUID] | None = None

    async def open(self) -> None:
        self.app = self._app_class(env=self._env)

    async def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    def _application(self) -> Application[UUID]:
        assert self.app is not None  # noqa: S101 - opened by the harness
        return self.app

    async def create(self, aggregate_id: str, events: int) -> None:
        account = PeerAccount(aggregate_id)
        for _ in range(events - 1):
            account.deposit(AMOUNT)
        self._application().save(account)
        self._ids[aggregate_id] = account.id

    async def grow(self, aggregate_id: str, events: int) -> None:
        app = self._application()
        account: PeerAccount = app.repository.get(self._ids[aggregate_id])
        for _ in range(events):
            account.deposit(AMOUNT)
        app.save(account)

    def _deposit(self, aggregate_id: str) -> None:
        app = self._application()
        account: PeerAccount = app.repository.get(self._ids[aggregate_id])
        account.deposit(AMOUNT)
        app.save(account)

    async def deposit(self, aggregate_id: str) -> None:
        self._deposit(aggregate_id)

    async def load(self, aggregate_id: str) -> object:
        return self._application().repository.get(self._ids[aggregate_id])

    async def commit_groups(self, groups: list[list[str]]) -> None:
        def run(group: list[str]) -> None:
            for aggregate_id in group:
                self._deposit(aggregate_id)

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(groups), thread_name_prefix="peer") as threads:
            await asyncio.gather(*(loop.run_in_executor(threads, run, g) for g in groups))

    async def prepare_replay(self, table: str) -> Operation | None:  # noqa: ARG002
        return None

    async def prepare_catchup(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002
        return None

    async def prepare_view_upsert(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002
        return None
