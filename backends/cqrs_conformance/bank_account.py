"""The bank-account domain: commands, events, the aggregate, its services and its view.

The one sample domain, shared by the README, the tests, the conformance suite (which ships it,
so a third-party backend's run of the suite has it) and the example app, which re-exports it
as ``examples.bank_account.domain``.

Money is exact: an amount is a finite, positive :class:`~decimal.Decimal` of at most
:data:`MONEY_PLACES` decimal places and at most :data:`MAX_AMOUNT`; a balance never exceeds
:data:`MAX_BALANCE`. Sums and differences are computed in :data:`MONEY_CONTEXT`, never in the
ambient decimal context, and that context traps any rounding, so an event's ``balance`` is
always the exact sum of the amounts before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import (
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Underflow,
)
from typing import ClassVar, Protocol

from cqrs import Aggregate, DomainError, DomainEvent, EventEnvelope

__all__ = [
    "MAX_AMOUNT",
    "MAX_BALANCE",
    "MONEY_CONTEXT",
    "MONEY_PLACES",
    "AccountOpened",
    "AtmClient",
    "BankAccount",
    "BankAccountCommand",
    "BankAccountError",
    "BankAccountEvent",
    "BankAccountServices",
    "BankAccountView",
    "CheckingClient",
    "CustomerDepositedMoney",
    "CustomerWithdrewCash",
    "CustomerWroteCheck",
    "DepositMoney",
    "LedgerEntry",
    "LocalAtmClient",
    "LocalCheckingClient",
    "OpenAccount",
    "WithdrawMoney",
    "WriteCheck",
    "check_amount",
]

MONEY_PLACES = 2
"""Amounts have at most this many decimal places (cents)."""

MAX_AMOUNT = Decimal(1_000_000_000)
"""The largest amount one command moves (one billion)."""

MAX_BALANCE = Decimal(1_000_000_000_000)
"""The largest balance an account may hold (one trillion): a deposit beyond it is refused."""

MONEY_CONTEXT = Context(
    prec=34,
    traps=[InvalidOperation, DivisionByZero, Overflow, Underflow, Inexact, Rounded],
)
"""The decimal context of every sum and difference of money: wide enough for any balance up
to :data:`MAX_BALANCE` in cents, and trapping rounding, so a result that is not exact raises
instead of being silently rounded. It does not depend on ``decimal.getcontext()``."""

_CENT = Decimal(1).scaleb(-MONEY_PLACES)

# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAccount:
    account_id: str


@dataclass(frozen=True)
class DepositMoney:
    amount: Decimal


@dataclass(frozen=True)
class WithdrawMoney:
    amount: Decimal
    atm_id: str


@dataclass(frozen=True)
class WriteCheck:
    check_number: str
    amount: Decimal


BankAccountCommand = OpenAccount | DepositMoney | WithdrawMoney | WriteCheck

# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountOpened(DomainEvent):
    account_id: str


@dataclass(frozen=True)
class CustomerDepositedMoney(DomainEvent):
    amount: Decimal
    balance: Decimal


@dataclass(frozen=True)
class CustomerWithdrewCash(DomainEvent):
    # 1.1 added the ATM (for the per-ATM projection); 1.0 events decode with atm_id "".
    event_version: ClassVar[str] = "1.1"
    amount: Decimal
    balance: Decimal
    atm_id: str = ""


@dataclass(frozen=True)
class CustomerWroteCheck(DomainEvent):
    check_number: str
    amount: Decimal
    balance: Decimal


BankAccountEvent = (
    AccountOpened | CustomerDepositedMoney | CustomerWithdrewCash | CustomerWroteCheck
)

# -- services --------------------------------------------------------------------------------


class BankAccountError(DomainError):
    """A rule of the bank account refused the command; the message is for the customer.

    A DomainError, so the framework reports it as UserError (HTTP 400 in the API); any
    other exception from the handler is a bug and becomes UnexpectedError (HTTP 500)."""


class AtmClient(Protocol):
    async def withdrawal(self, atm_id: str, account_id: str, amount: Decimal) -> bool:
        """True if the ATM accepted the withdrawal."""
        ...


class CheckingClient(Protocol):
    async def validate_check(self, account_id: str, check_number: str) -> bool:
        """True if the check number is valid for the account."""
        ...


class LocalAtmClient:
    """Accepts ATMs whose id starts with "ATM-"."""

    async def withdrawal(self, atm_id: str, account_id: str, amount: Decimal) -> bool:
        return atm_id.startswith("ATM-")


class LocalCheckingClient:
    """Accepts check numbers made of digits."""

    async def validate_check(self, account_id: str, check_number: str) -> bool:
        return check_number.isdigit()


@dataclass
class BankAccountServices:
    atm: AtmClient = field(default_factory=LocalAtmClient)
    checking: CheckingClient = field(default_factory=LocalCheckingClient)


# -- the aggregate ---------------------------------------------------------------------------


def check_amount(amount: object) -> Decimal:
    """Return ``amount`` if it is a finite Decimal greater than 0, at most
    :data:`MAX_AMOUNT`, with at most :data:`MONEY_PLACES` decimal places (trailing zeros
    beyond them are fine: ``1.500``); raise BankAccountError naming it otherwise."""
    if (
        not isinstance(amount, Decimal)
        or not amount.is_finite()
        or not 0 < amount <= MAX_AMOUNT
        or MONEY_CONTEXT.remainder(amount, _CENT) != 0
    ):
        shown = str(amount)[:40] if isinstance(amount, Decimal) else repr(amount)[:40]
        raise BankAccountError(
            f"amount must be a positive decimal of at most {MONEY_PLACES} decimal places, "
            f"up to {MAX_AMOUNT}, not {shown}"
        )
    return amount


@dataclass
class BankAccount(Aggregate[BankAccountCommand, BankAccountEvent, BankAccountServices]):
    aggregate_type: ClassVar[str] = "BankAccount"
    event_classes: ClassVar[Sequence[type[object]]] = (
        AccountOpened,
        CustomerDepositedMoney,
        CustomerWithdrewCash,
        CustomerWroteCheck,
    )
    opened: bool = False
    balance: Decimal = Decimal(0)

    async def handle(
        self, command: BankAccountCommand, services: BankAccountServices
    ) -> Sequence[BankAccountEvent]:
        if isinstance(command, OpenAccount):
            if self.opened:
                raise BankAccountError("account already open")
            return [AccountOpened(command.account_id)]
        if not self.opened:
            raise BankAccountError("account not open")
        if isinstance(command, DepositMoney):
            amount = check_amount(command.amount)
            balance = MONEY_CONTEXT.add(self.balance, amount)
            if balance > MAX_BALANCE:
                raise BankAccountError(f"the balance would exceed the maximum of {MAX_BALANCE}")
            return [CustomerDepositedMoney(amount, balance)]
        if isinstance(command, WithdrawMoney):
            amount = self._available(command.amount)
            if not await services.atm.withdrawal(command.atm_id, self.aggregate_id, amount):
                raise BankAccountError(f"ATM {command.atm_id!r} rejected the transaction")
            return [CustomerWithdrewCash(amount, self._minus(amount), command.atm_id)]
        if isinstance(command, WriteCheck):
            amount = self._available(command.amount)
            if not await services.checking.validate_check(self.aggregate_id, command.check_number):
                raise BankAccountError(f"check {command.check_number!r} is invalid")
            return [CustomerWroteCheck(command.check_number, amount, self._minus(amount))]
        raise BankAccountError(f"unknown command {command!r}")

    def _available(self, amount: Decimal) -> Decimal:
        amount = check_amount(amount)
        if amount > self.balance:
            raise BankAccountError("funds not available")
        return amount

    def _minus(self, amount: Decimal) -> Decimal:
        return MONEY_CONTEXT.subtract(self.balance, amount)

    def apply(self, event: BankAccountEvent) -> None:
        if isinstance(event, AccountOpened):
            self.opened = True
        elif isinstance(event, CustomerDepositedMoney | CustomerWithdrewCash | CustomerWroteCheck):
            self.balance = event.balance


# -- the view --------------------------------------------------------------------------------


@dataclass
class LedgerEntry:
    description: str
    amount: Decimal


@dataclass
class BankAccountView:
    account_id: str = ""
    balance: Decimal = Decimal(0)
    written_checks: list[str] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)

    def update(self, event: EventEnvelope[BankAccountEvent]) -> None:
        payload = event.payload
        if isinstance(payload, AccountOpened):
            self.account_id = payload.account_id
        elif isinstance(payload, CustomerDepositedMoney):
            self.ledger.append(LedgerEntry("deposit", payload.amount))
            self.balance = payload.balance
        elif isinstance(payload, CustomerWithdrewCash):
            self.ledger.append(LedgerEntry("atm withdrawal", -payload.amount))
            self.balance = payload.balance
        elif isinstance(payload, CustomerWroteCheck):
            self.ledger.append(LedgerEntry(f"check {payload.check_number}", -payload.amount))
            self.written_checks.append(payload.check_number)
            self.balance = payload.balance
