"""``python -m examples.bank_account serve|demo|project [--database-url URL]``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from decimal import Decimal

import msgspec

from cqrs import CqrsError, UserError
from examples.bank_account.domain import DepositMoney, OpenAccount, WithdrawMoney, WriteCheck
from examples.bank_account.service import DEFAULT_DATABASE_URL, BankService


async def demo(database_url: str) -> None:
    """Open an account, deposit, withdraw, write a check, try an overdraft; print it all."""
    service = await BankService.connect(database_url)
    try:
        account = f"demo-{uuid.uuid4().hex[:8]}"
        print(f"database: {database_url}\naccount:  {account}\n")
        for command in (
            OpenAccount(account),
            DepositMoney(Decimal(1000)),
            WithdrawMoney(Decimal(400), "ATM-N"),
            WriteCheck("1170", Decimal("256.28")),
            WithdrawMoney(Decimal(500), "ATM-N"),
        ):
            try:
                for envelope in await service.cqrs.execute(account, command):
                    print(f"  #{envelope.sequence} {envelope.payload!r}")
            except UserError as refused:
                print(f"  refused {command!r}: {refused}")
        view = await service.views.load(account)
        print("\nview:", _pretty(view))
        # The cross-account views are kept by projections, normally in their own process
        # (`project`); here one batch at a time until they have caught up.
        runner = service.projections.runner()
        while await runner.run_once():
            pass
        atm = await service.projections.atms.load("ATM-N")
        print("\nATM-N (projection bank_atms):", _pretty(atm))
        status = runner.status()
        for name, projection in status.items():
            print(f"projection {name}: checkpoint {projection.checkpoint}")
    finally:
        await service.close()


async def project(database_url: str, *, batch_size: int, lease_ttl: float) -> None:
    """Run the bank's projections until SIGTERM/SIGINT; another process running the same
    command stands by and takes over within the lease when this one stops or dies."""
    service = await BankService.connect(database_url)
    runner = service.projections.runner(batch_size=batch_size, lease_ttl=lease_ttl)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.stop)
    print(f"projecting {database_url} as {runner.owner} (Ctrl-C stops)", flush=True)
    try:
        await runner.run()
    finally:
        await service.close()
    for name, status in runner.status().items():
        print(f"projection {name}: {status.state}, checkpoint {status.checkpoint}")


def _pretty(value: object) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.bank_account")
    parser.add_argument("command", choices=["serve", "demo", "project"])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CQRS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="memory://, sqlite:///bank.db, postgresql://..., mongodb://... "
        "(default: $CQRS_DATABASE_URL or sqlite:///bank.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=100, help="project: events per batch")
    parser.add_argument(
        "--lease-ttl", type=float, default=10.0, help="project: seconds before a takeover"
    )
    parser.add_argument(
        "--project",
        action="store_true",
        help="serve: also run the projections in the server (e.g. for memory://)",
    )
    args = parser.parse_args(argv)
    if args.command == "project":
        try:
            asyncio.run(
                project(args.database_url, batch_size=args.batch_size, lease_ttl=args.lease_ttl)
            )
        except CqrsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        try:
            asyncio.run(demo(args.database_url))
        except CqrsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from examples.bank_account.api import create_app  # noqa: PLC0415 - only the server needs it

    app = create_app(database_url=args.database_url, run_projections=args.project)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
