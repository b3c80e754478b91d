"""Cross-account views of the bank, kept by projections that run on their own.

- :class:`AtmActivity`, one per ATM: how much cash it paid out, how often, to which accounts.
- :class:`DailyTotals`, one per UTC day: deposits, withdrawals and checks of every account.

Both are :class:`~cqrs.ViewProjection` s: each view records the position of the last event
applied to it, so every event counts exactly once, even when a runner crashes mid-batch or
another process takes over. ``python -m examples.bank_account project`` runs them in a
process of their own; start it twice and the second one stands by until the first stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cqrs import (
    CheckpointStore,
    EventEnvelope,
    PersistedEventRepository,
    ProjectionRunner,
    ViewProjection,
    ViewRepository,
)
from cqrs.projection import EventDecoder
from examples.bank_account.domain import (
    MONEY_CONTEXT,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    CustomerWroteCheck,
)

TABLE_PREFIX = "bank"
"""Tables: ``<prefix>_atm_views``, ``<prefix>_daily_views`` and the checkpoints in
``<prefix>_projections``."""


@dataclass
class AtmActivity:
    """Cash paid out by one ATM."""

    atm_id: str = ""
    withdrawals: int = 0
    total: Decimal = Decimal(0)
    accounts: list[str] = field(default_factory=list)


def update_atm(view: AtmActivity, envelope: EventEnvelope[Any]) -> None:
    """Count one withdrawal at the view's ATM."""
    event = envelope.payload
    if isinstance(event, CustomerWithdrewCash):
        view.atm_id = event.atm_id
        view.withdrawals += 1
        view.total = MONEY_CONTEXT.add(view.total, event.amount)
        if envelope.aggregate_id not in view.accounts:
            view.accounts.append(envelope.aggregate_id)


def atm_key(envelope: EventEnvelope[Any]) -> str | None:
    """The ATM a withdrawal happened at (events before version 1.1 name none)."""
    event = envelope.payload
    if isinstance(event, CustomerWithdrewCash) and event.atm_id:
        return event.atm_id
    return None


@dataclass
class DailyTotals:
    """Money moved on one UTC day, over every account."""

    day: str = ""
    deposits: Decimal = Decimal(0)
    withdrawals: Decimal = Decimal(0)
    checks: Decimal = Decimal(0)
    events: int = 0


def update_daily(view: DailyTotals, envelope: EventEnvelope[Any]) -> None:
    """Add one event's money to its day."""
    event = envelope.payload
    view.day = day_key(envelope)
    view.events += 1
    if isinstance(event, CustomerDepositedMoney):
        view.deposits = MONEY_CONTEXT.add(view.deposits, event.amount)
    elif isinstance(event, CustomerWithdrewCash):
        view.withdrawals = MONEY_CONTEXT.add(view.withdrawals, event.amount)
    elif isinstance(event, CustomerWroteCheck):
        view.checks = MONEY_CONTEXT.add(view.checks, event.amount)


def day_key(envelope: EventEnvelope[Any]) -> str:
    """The UTC day of the commit, as YYYY-MM-DD."""
    return envelope.timestamp.date().isoformat()


@dataclass
class BankProjections:
    """The bank's projections, their views and checkpoints, over one repository."""

    repository: PersistedEventRepository
    checkpoints: CheckpointStore
    atms: ViewRepository[AtmActivity]
    days: ViewRepository[DailyTotals]
    projections: list[ViewProjection[Any]]

    @classmethod
    async def over(
        cls, repository: PersistedEventRepository, store: EventDecoder, prefix: str = TABLE_PREFIX
    ) -> BankProjections:
        """The projections over an open repository (creating their tables, named with
        ``prefix``, if needed)."""
        checkpoints = repository.checkpoint_store(f"{prefix}_projections")
        atms = repository.view_repository(AtmActivity, f"{prefix}_atm_views")
        days = repository.view_repository(DailyTotals, f"{prefix}_daily_views")
        for schema in (checkpoints, atms, days):
            await schema.create_schema()
        projections: list[ViewProjection[Any]] = [
            ViewProjection(
                "bank_atms",
                [store],
                atms,
                AtmActivity,
                key=atm_key,
                update=update_atm,
                event_types={"CustomerWithdrewCash"},
            ),
            ViewProjection(
                "bank_daily_totals",
                [store],
                days,
                DailyTotals,
                key=day_key,
                update=update_daily,
            ),
        ]
        return cls(repository, checkpoints, atms, days, projections)

    def runner(
        self,
        *,
        owner: str | None = None,
        batch_size: int = 100,
        lease_ttl: float = 10.0,
        poll_interval: float = 1.0,
    ) -> ProjectionRunner:
        """A runner for these projections (see :class:`~cqrs.ProjectionRunner`)."""
        return ProjectionRunner(
            self.repository,
            self.checkpoints,
            self.projections,
            owner=owner,
            batch_size=batch_size,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
        )
