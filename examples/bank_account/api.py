"""The HTTP API (FastAPI): POST a command, GET the view or the events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cqrs import (
    AggregateConflict,
    DatabaseConnectionError,
    EventEnvelope,
    UnexpectedError,
    UserError,
    event_type_of,
    event_version_of,
)
from examples.bank_account.domain import (
    BankAccountCommand,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
    WriteCheck,
)
from examples.bank_account.service import DEFAULT_DATABASE_URL, BankService

COMMANDS: dict[str, type[BankAccountCommand]] = {
    cls.__name__: cls for cls in (OpenAccount, DepositMoney, WithdrawMoney, WriteCheck)
}

logger = logging.getLogger("examples.bank_account")

_encoder = msgspec.json.Encoder(decimal_format="number")
_body = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _json(value: object, status_code: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code, media_type="application/json")


def _error(status_code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code)


def envelope_json(envelope: EventEnvelope[Any]) -> dict[str, object]:
    """The JSON shape of a committed event."""
    return {
        "aggregate_id": envelope.aggregate_id,
        "sequence": envelope.sequence,
        "event_type": event_type_of(type(envelope.payload)),
        "event_version": event_version_of(type(envelope.payload)),
        "payload": envelope.payload,
        "metadata": envelope.metadata,
        "timestamp": envelope.timestamp,
        "event_id": envelope.event_id,
        "position": envelope.position,
    }


def parse_command(body: bytes) -> BankAccountCommand:
    """Decode ``{"CommandName": {...fields}}``; raise ValueError naming the problem."""
    try:
        outer = _body.decode(body)
    except msgspec.ValidationError:  # a subclass of DecodeError: test it first
        raise ValueError("the body must be a JSON object naming one command") from None
    except msgspec.DecodeError as error:
        raise ValueError(f"malformed JSON body: {error}") from None
    if len(outer) != 1:
        known = ", ".join(COMMANDS)
        raise ValueError(f"the body must name exactly one command, one of: {known}")
    ((name, fields),) = outer.items()
    command_type = COMMANDS.get(name)
    if command_type is None:
        raise ValueError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
    try:
        return msgspec.json.decode(fields, type=command_type)
    except msgspec.ValidationError as error:
        raise ValueError(f"invalid {name}: {error}") from None


def get_service(request: Request) -> BankService:
    """The app's BankService (a FastAPI dependency)."""
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[BankService, Depends(get_service)]


router = APIRouter()


@router.post("/accounts/{account_id}")
async def execute(account_id: str, request: Request, bank: Service) -> Response:
    """Execute the command in the body; 200 with the committed events."""
    try:
        command = parse_command(await request.body())
    except ValueError as error:
        return _error(422, str(error))
    try:
        envelopes = await bank.cqrs.execute(account_id, command)
    except UserError as error:
        return _error(400, str(error))
    except AggregateConflict as error:
        return _error(409, f"conflict, try again: {error}")
    return _json([envelope_json(e) for e in envelopes])


@router.get("/accounts/{account_id}")
async def view(account_id: str, bank: Service) -> Response:
    """The account's view, or 404."""
    found = await bank.views.load(account_id)
    if found is None:
        return _error(404, f"no account {account_id!r}")
    return _json(found)


@router.get("/accounts/{account_id}/events")
async def events(account_id: str, bank: Service) -> Response:
    """The account's events in order."""
    return _json([envelope_json(e) for e in await bank.store.load_events(account_id)])


@router.get("/atms/{atm_id}")
async def atm(atm_id: str, bank: Service) -> Response:
    """Cash paid out by one ATM (kept by the bank_atms projection), or 404."""
    found = await bank.projections.atms.load(atm_id)
    if found is None:
        return _error(404, f"no withdrawals at ATM {atm_id!r} (yet)")
    return _json(found)


@router.get("/days/{day}")
async def day(day: str, bank: Service) -> Response:
    """Money moved on one UTC day, YYYY-MM-DD (kept by bank_daily_totals), or 404."""
    found = await bank.projections.days.load(day)
    if found is None:
        return _error(404, f"nothing recorded on {day!r} (yet)")
    return _json(found)


@router.get("/projections")
async def projections(request: Request, bank: Service) -> Response:
    """Each projection's stored checkpoint, and the live status when this server runs them."""
    runner = getattr(request.app.state, "runner", None)
    result: dict[str, object] = {}
    for projection in bank.projections.projections:
        entry: dict[str, object] = {
            "checkpoint": await bank.projections.checkpoints.position(projection.name)
        }
        if runner is not None:
            status = runner.status()[projection.name]
            entry |= {"state": status.state, "lag_events": status.lag_events}
        result[projection.name] = entry
    return _json(result)


async def _unavailable(request: Request, error: Exception) -> Response:  # noqa: ARG001
    return _error(503, f"database unavailable: {error}")


async def _internal(request: Request, error: Exception) -> Response:
    # A bug (say, in the handler): log the details, tell the client nothing of the internals.
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return _error(500, "internal error")


def create_app(
    service: BankService | None = None,
    database_url: str | None = None,
    *,
    run_projections: bool = False,
) -> FastAPI:
    """The ASGI app. With ``service``, it is used as is (tests); otherwise the app opens
    ``database_url`` (default: $CQRS_DATABASE_URL, else sqlite:///bank.db) on startup.
    With ``run_projections`` the server also runs the bank's projections (otherwise run
    ``python -m examples.bank_account project`` beside it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            opened = service
        else:
            url = database_url or os.environ.get("CQRS_DATABASE_URL") or DEFAULT_DATABASE_URL
            opened = await BankService.connect(url)
        app.state.service = opened
        task = None
        if run_projections:
            app.state.runner = runner = opened.projections.runner()
            task = asyncio.create_task(runner.run())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if service is None:
                await opened.close()

    app = FastAPI(title="Bank account (cqrs-es example)", lifespan=lifespan)
    app.state.service = service
    app.add_exception_handler(DatabaseConnectionError, _unavailable)
    app.add_exception_handler(UnexpectedError, _internal)
    app.include_router(router)
    return app
