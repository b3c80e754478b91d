"""Wiring: the bank-account application over any repository (chosen by URL)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cqrs
from cqrs import (
    CqrsFramework,
    EventEnvelope,
    GenericQuery,
    PersistedEventRepository,
    PersistedEventStore,
    Retry,
    ViewRepository,
)
from examples.bank_account.domain import (
    BankAccount,
    BankAccountCommand,
    BankAccountEvent,
    BankAccountServices,
    BankAccountView,
)
from examples.bank_account.idempotency import IdempotencyIndex, Outcome, execute_once
from examples.bank_account.projections import TABLE_PREFIX, BankProjections

DEFAULT_DATABASE_URL = "sqlite:///bank.db"
VIEW_TABLE = "bank_account_views"
IDEMPOTENCY_TABLE = "bank_idempotency_keys"

logger = logging.getLogger("examples.bank_account")


class EventLogger:
    """A query that logs every committed event."""

    async def dispatch(
        self, aggregate_id: str, events: Sequence[EventEnvelope[BankAccountEvent]]
    ) -> None:
        for event in events:
            logger.info("%s #%d: %r", aggregate_id, event.sequence, event.payload)


@dataclass
class BankService:
    """The framework, store, view repositories and projections of the bank-account app."""

    repository: PersistedEventRepository
    store: PersistedEventStore[
        BankAccount, BankAccountCommand, BankAccountEvent, BankAccountServices
    ]
    views: ViewRepository[BankAccountView]
    cqrs: CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices]
    projections: BankProjections
    idempotency: ViewRepository[IdempotencyIndex]
    view_queries: Sequence[GenericQuery[Any]] = ()

    @classmethod
    async def over(
        cls,
        repository: PersistedEventRepository,
        *,
        snapshot_every: int | None = 20,
        view_table: str = VIEW_TABLE,
        projection_prefix: str = TABLE_PREFIX,
        idempotency_table: str = IDEMPOTENCY_TABLE,
    ) -> BankService:
        """Build the app over an open repository (creating the view tables if needed; the
        projections' tables are named with ``projection_prefix``)."""
        views = repository.view_repository(BankAccountView, view_table)
        keys = repository.view_repository(IdempotencyIndex, idempotency_table)
        for table in (views, keys):
            await table.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=snapshot_every)
        view_queries: list[GenericQuery[Any]] = [
            GenericQuery(views, BankAccountView, store=store, attempts=100),
            GenericQuery(keys, IdempotencyIndex, store=store, attempts=100),
        ]
        framework = CqrsFramework(
            store,
            [EventLogger(), *view_queries],
            BankAccountServices(),
            retry=Retry(attempts=50, base_delay=0.002, max_delay=0.05),
        )
        projections = await BankProjections.over(repository, store, projection_prefix)
        return cls(repository, store, views, framework, projections, keys, view_queries)

    @classmethod
    async def open(
        cls,
        repository: PersistedEventRepository,
        *,
        snapshot_every: int | None = 20,
        view_table: str = VIEW_TABLE,
        projection_prefix: str = TABLE_PREFIX,
        idempotency_table: str = IDEMPOTENCY_TABLE,
    ) -> BankService:
        """Open ``repository``, create its schema and build the app over it; the repository
        is closed again if that fails."""
        await repository.open()
        try:
            await repository.create_schema()
            return await cls.over(
                repository,
                snapshot_every=snapshot_every,
                view_table=view_table,
                projection_prefix=projection_prefix,
                idempotency_table=idempotency_table,
            )
        except BaseException:
            await repository.close()
            raise

    @classmethod
    async def connect(cls, database_url: str, *, snapshot_every: int | None = 20) -> BankService:
        """Open the repository named by the URL and build the app over it."""
        repository = await cqrs.connect(database_url)
        try:
            return await cls.over(repository, snapshot_every=snapshot_every)
        except BaseException:
            await repository.close()
            raise

    async def execute(
        self,
        aggregate_id: str,
        command: BankAccountCommand,
        metadata: Mapping[str, str],
        idempotency_key: str | None = None,
    ) -> Outcome:
        """Execute ``command`` with ``metadata`` on every event; with ``idempotency_key``,
        at most once per key and account (see :mod:`examples.bank_account.idempotency`)."""
        if idempotency_key is None:
            envelopes = await self.cqrs.execute_with_metadata(aggregate_id, command, metadata)
            return Outcome(envelopes, replayed=False)
        outcome = await execute_once(
            self.cqrs,
            self.store,
            self.idempotency,
            aggregate_id=aggregate_id,
            command=command,
            metadata=metadata,
            key=idempotency_key,
        )
        if outcome.replayed:
            # The first attempt's process may have died before updating the views: bring
            # them up to date now (a GenericQuery applies each event once, whatever happens).
            for query in self.view_queries:
                try:
                    await query.dispatch(aggregate_id, outcome.envelopes)
                except Exception:
                    logger.exception("updating the views after a replayed command failed")
        return outcome

    async def account_view(self, aggregate_id: str) -> BankAccountView | None:
        """The account's view, or None when the account has no events. A view that missed
        its update (a process died between a commit and the view's update) is brought up to
        date from the events first."""
        loaded = await self.views.load_with_context(aggregate_id)
        version = 0 if loaded is None else loaded[1].version
        missed = await self.store.load_events(aggregate_id, version)
        if not missed:
            return None if loaded is None else loaded[0]
        for query in self.view_queries:
            await query.dispatch(aggregate_id, missed)
        return await self.views.load(aggregate_id)

    async def close(self) -> None:
        """Close the repository."""
        await self.repository.close()
