"""``python -m examples.bank_account serve|demo [--database-url URL]``."""

from __future__ import annotations

import argparse
import asyncio
import os
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
        print("\nview:", msgspec.json.format(msgspec.json.encode(view), indent=2).decode())
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.bank_account")
    parser.add_argument("command", choices=["serve", "demo"])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CQRS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="memory://, sqlite:///bank.db, postgresql://..., mongodb://... "
        "(default: $CQRS_DATABASE_URL or sqlite:///bank.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            asyncio.run(demo(args.database_url))
        except CqrsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from examples.bank_account.api import create_app  # noqa: PLC0415 - only the server needs it

    uvicorn.run(create_app(database_url=args.database_url), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
