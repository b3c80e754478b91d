"""The HTTP contract as pydantic models: request bodies, responses and their limits.

A command is sent as ``{"CommandName": {...fields}}``: :data:`CommandBody` is the
discriminated union of the four commands (the discriminator is the one key of the object),
so the OpenAPI document describes each command exactly, and unknown fields, wrong types and
amounts that are not money are refused (422) before the domain sees them. The responses are
documented here; the app encodes them with msgspec (exact decimals as JSON numbers).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    PlainValidator,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

from examples.bank_account.domain import (
    MAX_AMOUNT,
    MONEY_PLACES,
    BankAccountCommand,
    BankAccountError,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
    WriteCheck,
    check_amount,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,63}$"
"""Account and ATM ids: 1 to 64 letters, digits, ``.``, ``_``, ``~`` or ``-``, starting with
a letter or digit (safe in a URL path as they are)."""

DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
"""A UTC day, ``YYYY-MM-DD``."""

IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,128}$"
"""An ``Idempotency-Key``: 1 to 128 printable ASCII characters without spaces."""

MAX_BODY_BYTES = 16 * 1024
"""The largest request body accepted (413 beyond)."""

MAX_PAGE = 1000
"""The most events one ``GET /accounts/{id}/events`` returns."""

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
CheckNumber = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]


def _money(value: object) -> Decimal:
    # The body's numbers arrive as int or Decimal (decoded exactly, never through float).
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        msg = "must be a JSON number"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueError as a 422 detail
    try:
        return check_amount(Decimal(value))
    except BankAccountError as error:
        raise ValueError(str(error)) from None


Amount = Annotated[
    Decimal,
    PlainValidator(_money),
    WithJsonSchema(
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": int(MAX_AMOUNT),
            "multipleOf": 0.01,
            "description": f"Money: positive, at most {MONEY_PLACES} decimal places, "
            f"at most {MAX_AMOUNT}; decoded exactly (no binary floating point).",
        }
    ),
]
Money = Annotated[Decimal, WithJsonSchema({"type": "number"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAccountFields(_Strict):
    account_id: Identifier


class DepositMoneyFields(_Strict):
    amount: Amount


class WithdrawMoneyFields(_Strict):
    amount: Amount
    atm_id: Identifier


class WriteCheckFields(_Strict):
    check_number: CheckNumber
    amount: Amount


class OpenAccountBody(_Strict):
    OpenAccount: OpenAccountFields


class DepositMoneyBody(_Strict):
    DepositMoney: DepositMoneyFields


class WithdrawMoneyBody(_Strict):
    WithdrawMoney: WithdrawMoneyFields


class WriteCheckBody(_Strict):
    WriteCheck: WriteCheckFields


COMMAND_NAMES = ("OpenAccount", "DepositMoney", "WithdrawMoney", "WriteCheck")


def command_name(body: object) -> str | None:
    """The discriminator: the one key of the body object (None if it is not one)."""
    if isinstance(body, dict) and len(body) == 1:
        (name,) = body
        return name if isinstance(name, str) else None
    if isinstance(body, BaseModel):
        return next(iter(type(body).model_fields))
    return None


CommandBody = Annotated[
    Annotated[OpenAccountBody, Tag("OpenAccount")]
    | Annotated[DepositMoneyBody, Tag("DepositMoney")]
    | Annotated[WithdrawMoneyBody, Tag("WithdrawMoney")]
    | Annotated[WriteCheckBody, Tag("WriteCheck")],
    Discriminator(command_name),
]


def to_command(
    body: OpenAccountBody | DepositMoneyBody | WithdrawMoneyBody | WriteCheckBody,
) -> BankAccountCommand:
    """The domain command a validated body names."""
    if isinstance(body, OpenAccountBody):
        return OpenAccount(body.OpenAccount.account_id)
    if isinstance(body, DepositMoneyBody):
        return DepositMoney(body.DepositMoney.amount)
    if isinstance(body, WithdrawMoneyBody):
        return WithdrawMoney(body.WithdrawMoney.amount, body.WithdrawMoney.atm_id)
    return WriteCheck(body.WriteCheck.check_number, body.WriteCheck.amount)


# -- responses -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error: a short message for the client and the request's id (also in the
    ``X-Request-Id`` header) to find the details in the server's log."""

    error: str
    request_id: str


class Envelope(BaseModel):
    """A committed event; ``aggregate_id`` is the account id as the caller knows it."""

    aggregate_id: str
    sequence: int
    event_type: str
    event_version: str
    payload: dict[str, Any]
    metadata: dict[str, str]
    timestamp: datetime
    event_id: UUID
    position: int


class LedgerEntry(BaseModel):
    """One line of an account's ledger (negative amounts leave the account)."""

    description: str
    amount: Money


class AccountView(BaseModel):
    """An account: its balance (always the sum of the ledger), checks and ledger."""

    account_id: str
    balance: Money
    written_checks: list[str]
    ledger: list[LedgerEntry]


class AtmView(BaseModel):
    """Cash paid out by one ATM; ``accounts`` lists only the caller's own accounts."""

    atm_id: str
    withdrawals: int
    total: Money
    accounts: list[str]


class DayView(BaseModel):
    """Money moved on one UTC day, over every account."""

    day: str
    deposits: Money
    withdrawals: Money
    checks: Money
    events: int


class ProjectionStatus(BaseModel):
    """A projection's stored checkpoint, plus its state and lag when this server runs it."""

    checkpoint: int
    state: Literal["starting", "running", "standby", "stopped", "failed"] | None = None
    lag_events: int | None = None
