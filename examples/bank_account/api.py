"""The HTTP API (FastAPI): POST a command, GET the view or the events.

What a client can rely on:

- Every response that is not a 200 is JSON ``{"error": ..., "request_id": ...}`` with a 4xx
  (or 503 while the database is unreachable; 500 only for a bug, logged with its request
  id). Unrouted paths are 404, wrong methods 405 with an ``Allow`` header.
- Callers authenticate with ``Authorization: Bearer KEY`` (401 otherwise; see
  :mod:`examples.bank_account.auth`). A principal sees only the accounts it opened: any
  other id is 404, whether or not someone else has an account by that name.
- Bodies are ``application/json`` only (415 otherwise; a browser's cross-site "simple"
  POST cannot send it), at most :data:`~examples.bank_account.models.MAX_BODY_BYTES`
  (413), decoded with exact decimals; the command must match the OpenAPI schema (422).
- A rule of the domain refusing a command (funds not available, account already open, ...)
  is 409: the request is valid, the account's state does not allow it.
- ``Idempotency-Key`` makes a command safe to retry (see
  :mod:`examples.bank_account.idempotency`); a replayed answer carries
  ``Idempotent-Replayed: true``. A key reused for another command on the account is 409
  (the request is valid; the key is taken).
- The details of database errors go to the log (with the request id), never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from decimal import Decimal
from http import HTTPStatus
from typing import Annotated, Any, cast

import msgspec
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from cqrs import (
    AggregateConflict,
    CqrsError,
    DatabaseConnectionError,
    EventEnvelope,
    UserError,
    event_type_of,
    event_version_of,
)
from examples.bank_account.auth import ANONYMOUS, ApiKeys, Principal
from examples.bank_account.domain import OpenAccount
from examples.bank_account.idempotency import IdempotencyKeyReused
from examples.bank_account.models import (
    COMMAND_NAMES,
    DAY_PATTERN,
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_BODY_BYTES,
    MAX_PAGE,
    AccountView,
    AtmView,
    CommandBody,
    DayView,
    Envelope,
    ErrorBody,
    ProjectionStatus,
    to_command,
)
from examples.bank_account.service import DEFAULT_DATABASE_URL, BankService

logger = logging.getLogger("examples.bank_account")

_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(float_hook=Decimal)


class ApiError(HTTPException):
    """An error answered as ``{"error": detail, "request_id": ...}`` with its status."""


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": message, "request_id": request_id(request)}
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def _json(value: object, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(value), 200, headers, media_type="application/json")


def request_id(request: Request) -> str:
    """The id of this request (also sent back in ``X-Request-Id``)."""
    return str(request.scope.get("state", {}).get("request_id", "-"))


class _JsonRequest(Request):
    """A request whose body is read up to MAX_BODY_BYTES and decoded with exact decimals."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _too_large()
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _too_large()
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:  # noqa: ANN401 - any JSON value
        if not hasattr(self, "_json"):
            try:
                self._json = _decoder.decode(await self.body())
            except msgspec.ValidationError as error:  # a subclass of DecodeError
                raise ApiError(422, f"the JSON body has a value out of range: {error}") from None
            except msgspec.DecodeError as error:
                raise ApiError(400, f"malformed JSON body: {error}") from None
            except RecursionError:
                raise ApiError(400, "malformed JSON body: nested too deeply") from None
        return self._json


def _too_large() -> ApiError:
    return ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


class JsonRoute(APIRoute):
    """A route that takes only ``application/json`` bodies, read by :class:`_JsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The FastAPI handler, given a :class:`_JsonRequest` after the media type check."""
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def route(request: Request) -> Response:
            if takes_body:
                media_type = request.headers.get("content-type", "").partition(";")[0]
                if media_type.strip().lower() != "application/json":
                    msg = "the body must be application/json"
                    raise ApiError(415, msg)
            return await handler(_JsonRequest(request.scope, request.receive))

        return route


def get_service(request: Request) -> BankService:
    """The app's BankService (a FastAPI dependency)."""
    return request.app.state.service  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`.")


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, by its API key; 401 without a valid one (a FastAPI dependency)."""
    keys: ApiKeys | None = request.app.state.api_keys
    if keys is None:
        return ANONYMOUS
    principal = None if credentials is None else keys.authenticate(credentials.credentials)
    if principal is None:
        msg = "a valid API key is required: Authorization: Bearer KEY"
        raise ApiError(401, msg, headers={"WWW-Authenticate": "Bearer"})
    return principal


Service = Annotated[BankService, Depends(get_service)]
Caller = Annotated[Principal, Depends(get_principal)]
AccountId = Annotated[str, Path(pattern=ID_PATTERN, description="The account's id.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Malformed JSON.",
        401: "No valid API key.",
        404: "No such account (of yours), or nothing recorded yet.",
        405: "Method not allowed (see the Allow header).",
        413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
        415: "The body is not application/json.",
        422: "The request does not match the schema.",
        503: "The database is unreachable; try again later.",
    }.items()
}
_COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    409: {
        "model": ErrorBody,
        "description": "Refused by the account's rules (e.g. funds not available), the "
        "Idempotency-Key was used for another command, or the account stayed too busy to "
        "commit; nothing was stored.",
    },
}

router = APIRouter(route_class=JsonRoute, responses=_ERRORS)


def _account_json(principal: Principal, envelope: EventEnvelope[Any]) -> dict[str, object]:
    return {
        "aggregate_id": principal.account_id(envelope.aggregate_id),
        "sequence": envelope.sequence,
        "event_type": event_type_of(type(envelope.payload)),
        "event_version": event_version_of(type(envelope.payload)),
        "payload": envelope.payload,
        "metadata": envelope.metadata,
        "timestamp": envelope.timestamp,
        "event_id": envelope.event_id,
        "position": envelope.position,
    }


def _not_found(account_id: str) -> ApiError:
    return ApiError(404, f"no account {account_id!r}")


@router.post(
    "/accounts/{account_id}",
    response_model=list[Envelope],
    responses=_COMMAND_ERRORS,
    summary="Execute a command on an account",
)
async def execute(
    account_id: AccountId,
    *,
    command: Annotated[CommandBody, Body(description="One command: {name: {fields}}.")],
    request: Request,
    bank: Service,
    principal: Caller,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Retry safely: a repeated key returns the first result.",
        ),
    ] = None,
) -> Response:
    """Execute the command in the body; 200 with the committed events."""
    domain_command = to_command(command)
    if isinstance(domain_command, OpenAccount) and domain_command.account_id != account_id:
        msg = f"OpenAccount names {domain_command.account_id!r}, the path {account_id!r}"
        raise ApiError(422, msg)
    aggregate_id = principal.aggregate_id(account_id)
    metadata = {"principal": principal.name, "request_id": request_id(request)}
    try:
        outcome = await bank.execute(aggregate_id, domain_command, metadata, idempotency_key)
    except UserError as error:
        opening = isinstance(domain_command, OpenAccount)
        if not opening and (await bank.store.load_aggregate(aggregate_id)).version == 0:
            raise _not_found(account_id) from None
        raise ApiError(409, str(error)) from None
    except IdempotencyKeyReused as error:
        raise ApiError(409, str(error)) from None
    except AggregateConflict as error:
        logger.warning("[%s] %s", request_id(request), error)
        raise ApiError(409, "the account is busy; try again") from None
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return _json([_account_json(principal, e) for e in outcome.envelopes], headers)


@router.get("/accounts/{account_id}", response_model=AccountView, summary="An account's view")
async def view(account_id: AccountId, bank: Service, principal: Caller) -> Response:
    """The account's view, or 404."""
    found = await bank.account_view(principal.aggregate_id(account_id))
    if found is None:
        raise _not_found(account_id)
    found.account_id = account_id
    return _json(found)


@router.get(
    "/accounts/{account_id}/events",
    response_model=list[Envelope],
    summary="An account's events, a page at a time",
)
async def events(
    account_id: AccountId,
    bank: Service,
    principal: Caller,
    after: Annotated[int, Query(ge=0, le=2**62, description="Events after this sequence.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many.")] = 100,
) -> Response:
    """At most ``limit`` of the account's events after sequence ``after``, in order."""
    aggregate_id = principal.aggregate_id(account_id)
    page: list[EventEnvelope[Any]] = []
    stream = cast(
        "AsyncGenerator[EventEnvelope[Any], None]", bank.store.stream_events(aggregate_id)
    )
    async with aclosing(stream):
        async for envelope in stream:
            if envelope.sequence > after:
                page.append(envelope)
                if len(page) >= limit:
                    break
    if not page and (await bank.store.load_aggregate(aggregate_id)).version == 0:
        raise _not_found(account_id)
    return _json([_account_json(principal, e) for e in page])


@router.get("/atms/{atm_id}", response_model=AtmView, summary="Cash paid out by one ATM")
async def atm(
    atm_id: Annotated[str, Path(pattern=ID_PATTERN)], bank: Service, principal: Caller
) -> Response:
    """Cash paid out by one ATM (kept by the bank_atms projection), or 404."""
    found = await bank.projections.atms.load(atm_id)
    if found is None:
        raise ApiError(404, f"no withdrawals at ATM {atm_id!r} (yet)")
    mine = (principal.account_id(account) for account in found.accounts)
    found.accounts = [account for account in mine if account is not None]
    return _json(found)


@router.get("/days/{day}", response_model=DayView, summary="Money moved on one UTC day")
async def day(
    day: Annotated[str, Path(pattern=DAY_PATTERN, description="YYYY-MM-DD")],
    bank: Service,
    _principal: Caller,
) -> Response:
    """Money moved on one UTC day, YYYY-MM-DD (kept by bank_daily_totals), or 404."""
    found = await bank.projections.days.load(day)
    if found is None:
        raise ApiError(404, f"nothing recorded on {day!r} (yet)")
    return _json(found)


@router.get(
    "/projections",
    response_model=dict[str, ProjectionStatus],
    summary="The projections' checkpoints",
)
async def projections(request: Request, bank: Service, _principal: Caller) -> Response:
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


# -- errors ----------------------------------------------------------------------------------


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for HTTPException
    detail = error.detail if isinstance(error, ApiError) else _reason(error.status_code)
    headers = dict(error.headers or {})
    if (
        error.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    ):  # Starlette names only the first route's methods
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return _error(request, error.status_code, detail, headers)


def _allowed_methods(request: Request) -> list[str]:
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in [*request.app.router.routes, *router.routes]:  # router: included as is
        pattern, allowed = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if pattern is not None and allowed and pattern.match(path):
            methods |= set(allowed)
    return sorted(methods)


def _reason(status: int) -> str:
    return {404: "not found", 405: "method not allowed"}.get(status, "request refused")


async def _invalid(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for it
    return _error(request, 422, describe_errors(error.errors()))


def describe_errors(errors: Any) -> str:  # noqa: ANN401 - pydantic's error dicts
    """One line naming each problem of a request that does not match the schema."""
    problems = []
    for error in errors[:5]:
        kind, ctx = error.get("type", ""), error.get("ctx") or {}
        if kind == "union_tag_invalid":
            tag = str(ctx.get("tag", ""))[:40]
            problems.append(f"unknown command {tag!r}; known: {', '.join(COMMAND_NAMES)}")
        elif kind == "union_tag_not_found":
            known = ", ".join(COMMAND_NAMES)
            problems.append(f"the body must be a JSON object naming exactly one command: {known}")
        else:
            parts: list[str] = []
            for part in map(str, error.get("loc", ())):
                if part != "body" and (not parts or parts[-1] != part):
                    parts.append(part)  # the union's tag repeats the command's name
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{'.'.join(parts)}: {message}"[:300])
    return "; ".join(problems) or "invalid request"


async def _unavailable(request: Request, error: Exception) -> Response:
    logger.warning("[%s] database unavailable: %s", request_id(request), error)
    return _error(request, 503, "the database is unavailable; try again later")


async def _bad_input(request: Request, error: Exception) -> Response:
    # Input the core refuses (ValueError naming the culprit): its message names only what the
    # client sent, but is logged rather than echoed, like every other internal message.
    if isinstance(error, CqrsError):  # ConfigurationError, NotOpenError: ours, not the client's
        return await _internal(request, error)
    logger.info("[%s] refused: %s", request_id(request), error)
    return _error(request, 422, "the request was refused as invalid")


async def _internal(request: Request, error: Exception) -> Response:
    # A bug, or a database error: log the details, tell the client only the request id.
    logger.error(
        "[%s] %s %s failed", request_id(request), request.method, request.url.path, exc_info=error
    )
    return _error(request, 500, "internal error")


class RequestIdMiddleware:
    """Gives every request an id (``request.scope["state"]["request_id"]``) and sends it back
    as ``X-Request-Id``."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


# -- the app ---------------------------------------------------------------------------------


def _docs(app: FastAPI) -> None:
    try:  # the example extra's swagger-ui-bundle-v2: Swagger UI's assets, served from here
        swagger_ui_path = importlib.import_module("swagger_ui_bundle").swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path is not None:
        from starlette.staticfiles import StaticFiles  # noqa: PLC0415 - only with the assets

        app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return HTMLResponse(
                "<!doctype html><title>Bank API</title><p>The interactive docs need the "
                "<code>example</code> extra (<code>swagger-ui-bundle-v2</code>). The API is "
                'described by <a href="/openapi.json">/openapi.json</a>.'
            )
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Bank account API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def create_app(
    service: BankService | None = None,
    database_url: str | None = None,
    *,
    api_keys: ApiKeys | None = None,
    insecure_no_auth: bool = False,
    open_service: Callable[[], Awaitable[BankService]] | None = None,
    run_projections: bool = False,
) -> FastAPI:
    """The ASGI app.

    The service: ``service`` as is (the caller closes it), else ``open_service()`` or
    ``database_url`` (default: $CQRS_DATABASE_URL, else sqlite:///bank.db), opened at startup
    and closed at shutdown. Callers authenticate with ``api_keys``; without keys the app
    refuses to be built unless ``insecure_no_auth`` (every caller is then ``anonymous`` and
    account ids are stored as given). With ``run_projections`` the server also runs the
    bank's projections (otherwise run ``python -m examples.bank_account project`` beside it).
    """
    if api_keys is None and not insecure_no_auth:
        msg = "no API keys: pass api_keys, or insecure_no_auth=True for local play"
        raise ValueError(msg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            opened = service
        elif open_service is not None:
            opened = await open_service()
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

    app = FastAPI(
        title="Bank account (cqrs-es example)",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # "/accounts/" is no account: 404, not a redirect
    )
    app.state.service = service
    app.state.api_keys = None if insecure_no_auth else api_keys
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(DatabaseConnectionError, _unavailable)
    app.add_exception_handler(ValueError, _bad_input)
    app.add_exception_handler(Exception, _internal)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    _docs(app)
    if insecure_no_auth:
        _without_security(app)
    return app


def _without_security(app: FastAPI) -> None:
    """Drop the security requirements from the OpenAPI document (nothing is enforced)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.pop("security", None)
        schema.get("components", {}).pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
