"""Wiring: the bank-account application over any repository (chosen by URL)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

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
from examples.bank_account.projections import TABLE_PREFIX, BankProjections

DEFAULT_DATABASE_URL = "sqlite:///bank.db"
VIEW_TABLE = "bank_account_views"

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
    """The framework, store, view repository and projections of the bank-account app."""

    repository: PersistedEventRepository
    store: PersistedEventStore[
        BankAccount, BankAccountCommand, BankAccountEvent, BankAccountServices
    ]
    views: ViewRepository[BankAccountView]
    cqrs: CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices]
    projections: BankProjections

    @classmethod
    async def over(
        cls,
        repository: PersistedEventRepository,
        *,
        snapshot_every: int | None = 20,
        view_table: str = VIEW_TABLE,
        projection_prefix: str = TABLE_PREFIX,
    ) -> BankService:
        """Build the app over an open repository (creating the view tables if needed; the
        projections' tables are named with ``projection_prefix``)."""
        views = repository.view_repository(BankAccountView, view_table)
        await views.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=snapshot_every)
        framework = CqrsFramework(
            store,
            [EventLogger(), GenericQuery(views, BankAccountView, store=store, attempts=100)],
            BankAccountServices(),
            retry=Retry(attempts=50, base_delay=0.002, max_delay=0.05),
        )
        projections = await BankProjections.over(repository, store, projection_prefix)
        return cls(repository, store, views, framework, projections)

    @classmethod
    async def connect(cls, database_url: str, *, snapshot_every: int | None = 20) -> BankService:
        """Open the repository named by the URL and build the app over it."""
        repository = await cqrs.connect(database_url)
        try:
            return await cls.over(repository, snapshot_every=snapshot_every)
        except BaseException:
            await repository.close()
            raise

    async def close(self) -> None:
        """Close the repository."""
        await self.repository.close()
