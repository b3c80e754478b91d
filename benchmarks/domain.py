"""The benchmark domain: the sample bank account, plus commands that emit many events.

Every side (framework, raw, peer) does the same logical work with these definitions:
``DepositMoney`` (one ``CustomerDepositedMoney`` event) for the ``commit_1`` workloads, and
``OpenWithDeposits`` (``AccountOpened`` then nine ``CustomerDepositedMoney``: ten events on a
new aggregate) for ``commit_10``. ``DepositMany`` grows an aggregate quickly when seeding.
The JSON payloads are those of the bank account's events, encoded by the core codec:
``{"account_id":"..."}`` and ``{"amount":"10.00","balance":"110.00"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountCommand,
    BankAccountError,
    BankAccountEvent,
    BankAccountServices,
    CustomerDepositedMoney,
    DepositMoney,
)

__all__ = [
    "AMOUNT",
    "AccountOpened",
    "BenchAccount",
    "CustomerDepositedMoney",
    "DepositMany",
    "DepositMoney",
    "OpenWithDeposits",
    "amounts",
    "open_command",
]

AMOUNT = Decimal("10.00")
"""Every deposit in the benchmarks is this amount."""


@dataclass(frozen=True)
class OpenWithDeposits:
    """Open the account and deposit each amount: 1 + len(amounts) events."""

    account_id: str
    amounts: tuple[Decimal, ...]


@dataclass(frozen=True)
class DepositMany:
    """Deposit each amount into an open account: len(amounts) events."""

    amounts: tuple[Decimal, ...]


BenchCommand = BankAccountCommand | OpenWithDeposits | DepositMany


def amounts(count: int) -> tuple[Decimal, ...]:
    """``count`` deposits of :data:`AMOUNT`."""
    return (AMOUNT,) * count


def open_command(account_id: str, events: int) -> OpenWithDeposits:
    """The command that creates ``account_id`` with ``events`` events in all."""
    return OpenWithDeposits(account_id, amounts(events - 1))


@dataclass
class BenchAccount(BankAccount):
    """The bank account with two batch commands; the same state, events and rules."""

    aggregate_type: ClassVar[str] = "BankAccount"

    async def handle(
        self, command: BenchCommand, services: BankAccountServices
    ) -> Sequence[BankAccountEvent]:
        if isinstance(command, OpenWithDeposits):
            if self.opened:
                raise BankAccountError("account already open")
            return [AccountOpened(command.account_id), *_deposits(Decimal(0), command.amounts)]
        if isinstance(command, DepositMany):
            if not self.opened:
                raise BankAccountError("account not open")
            return _deposits(self.balance, command.amounts)
        return await super().handle(command, services)


def _deposits(balance: Decimal, deposits: Sequence[Decimal]) -> list[BankAccountEvent]:
    events: list[BankAccountEvent] = []
    for amount in deposits:
        if amount <= 0:
            raise BankAccountError(f"amount must be positive, not {amount!r}")
        balance += amount
        events.append(CustomerDepositedMoney(amount, balance))
    return events
