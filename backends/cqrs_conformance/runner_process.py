"""A projection runner in its own OS process, for the multi-process runner tests, and the
projection those tests share with it.

    python -m cqrs_conformance.runner_process FACTORY WORKDIR EVENTS SNAPSHOTS CHECKPOINTS
        VIEWS OWNER LOG [--ttl SECONDS] [--batch N] [--delay SECONDS]

It builds a repository with the test backend's own factory (FACTORY is its ``module:name``,
see ``cqrs_conformance.factory.reference``; so it reaches the database the
test uses: the same SQLite file under WORKDIR, or the server named by the environment), runs
the "totals" projection with the repository's checkpoint store until SIGTERM (a graceful
stop), and appends to LOG, around each handle() call, ``start OWNER TIME FIRST LAST`` and
``end OWNER TIME FIRST LAST`` (TIME from time.monotonic(), the same clock in every process
of the machine; FIRST and LAST the batch's positions). ``--delay`` makes each batch take
that much longer, so a SIGKILL can land in the middle of one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from cqrs import EventEnvelope, PersistedEventStore, ProjectionRunner, ViewProjection
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
)
from cqrs_conformance.factory import load

NAME = "totals"


@dataclass
class Totals:
    """What the projection keeps per account and overall ("all"): every position applied,
    so an event applied twice or lost shows."""

    accounts: int = 0
    deposits: Decimal = Decimal(0)
    withdrawals: Decimal = Decimal(0)
    positions: list[int] = field(default_factory=list)


def update(view: Totals, envelope: EventEnvelope[Any]) -> None:
    event = envelope.payload
    if isinstance(event, AccountOpened):
        view.accounts += 1
    elif isinstance(event, CustomerDepositedMoney):
        view.deposits += event.amount
    elif isinstance(event, CustomerWithdrewCash):
        view.withdrawals += event.amount
    view.positions.append(envelope.position)


def keys(envelope: EventEnvelope[Any]) -> list[str]:
    return [envelope.aggregate_id, "all"]


def totals_projection(store: PersistedEventStore[Any, Any, Any, Any], views: Any) -> Any:
    """The projection every runner of these tests runs, in-process or here."""
    return ViewProjection(NAME, [store], views, Totals, key=keys, update=update)


class Recorded:
    """Wraps a projection: logs each handle() call and makes it last ``delay`` longer."""

    def __init__(self, inner: Any, owner: str, log: Path, delay: float) -> None:
        self.inner, self.owner, self.delay = inner, owner, delay
        self.name, self.sources, self.event_types = inner.name, inner.sources, inner.event_types
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, what: str, events: Sequence[EventEnvelope[Any]]) -> None:
        line = f"{what} {self.owner} {time.monotonic():.6f} {events[0].position} "
        os.write(self._log, f"{line}{events[-1].position}\n".encode())

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.record("start", events)
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.inner.handle(events)
        self.record("end", events)


async def main(args: argparse.Namespace) -> None:
    factory = load(args.factory)
    repository = factory.repository(Path(args.workdir), args.events, args.snapshots)
    await repository.open()
    try:
        store = PersistedEventStore(repository, BankAccount)
        views = repository.view_repository(Totals, args.views)
        projection = Recorded(totals_projection(store, views), args.owner, args.log, args.delay)
        runner = ProjectionRunner(
            repository,
            repository.checkpoint_store(args.checkpoints),
            [projection],
            owner=args.owner,
            batch_size=args.batch,
            lease_ttl=args.ttl,
            poll_interval=0.05,
            retry_delay=0.01,
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.stop)
        await runner.run()
    finally:
        await repository.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("factory", "workdir", "events", "snapshots", "checkpoints", "views", "owner"):
        parser.add_argument(name)
    parser.add_argument("log", type=Path)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
