"""What the MongoDB repositories share: codec options, the client check, the one error
translation, and the transaction-support check run at open."""

from __future__ import annotations

from datetime import UTC
from typing import Any
from urllib.parse import unquote, urlsplit

from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)
from pymongo.errors import ConfigurationError as DriverConfigurationError

from cqrs.errors import (
    AggregateConflict,
    ConfigurationError,
    CqrsError,
    DatabaseConnectionError,
    UnexpectedError,
)

Document = dict[str, Any]
"""A BSON document as the driver returns it."""

CODEC_OPTIONS: CodecOptions[Document] = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
)
"""Applied to every collection we use, whatever the caller's client was configured with:
aware UTC datetimes and UUIDs as BSON binary subtype 4."""

DEFAULT_DATABASE = "cqrs"

_DUPLICATE_KEY = 11000
_WRITE_CONFLICT = 112
_MAX_DATABASE_NAME_BYTES = 63
_FORBIDDEN_IN_DATABASE_NAME = frozenset('/\\. "$*<>:|?\x00')


def resolve_database(source: object, database: str | None) -> AsyncDatabase[Document]:
    """The database to use for ``source`` (an ``AsyncMongoClient`` or ``AsyncDatabase``);
    rejects Motor and synchronous clients with a message saying what to pass instead."""
    kind = type(source)
    if kind.__module__.split(".", 1)[0] == "motor":
        msg = (
            f"{kind.__module__}.{kind.__qualname__} is a Motor object; Motor reached end of life "
            "in May 2026 and is not supported. Pass a pymongo.AsyncMongoClient (or one of its "
            "AsyncDatabase objects) instead: pymongo.AsyncMongoClient('mongodb://...')"
        )
        raise ConfigurationError(msg)
    if isinstance(source, AsyncDatabase):
        if database is not None and database != source.name:
            msg = f"database={database!r} conflicts with the given database {source.name!r}"
            raise ConfigurationError(msg)
        return source.with_options(codec_options=CODEC_OPTIONS)
    if isinstance(source, AsyncMongoClient):
        name = validate_database_name(
            database or source.get_default_database(DEFAULT_DATABASE).name
        )
        return source.get_database(name, codec_options=CODEC_OPTIONS)
    msg = (
        f"expected a pymongo.AsyncMongoClient or AsyncDatabase, not {kind.__module__}."
        f"{kind.__qualname__} (synchronous MongoClient and Motor objects are not supported)"
    )
    raise ConfigurationError(msg)


def validate_database_name(name: str) -> str:
    """Return ``name`` if MongoDB accepts it as a database name, else raise
    ConfigurationError naming it."""
    if (
        not name
        or len(name.encode()) > _MAX_DATABASE_NAME_BYTES
        or _FORBIDDEN_IN_DATABASE_NAME.intersection(name)
    ):
        msg = (
            f"invalid database name {name!r}: 1 to {_MAX_DATABASE_NAME_BYTES} bytes, "
            'none of / \\ . space " $ * < > : | ?'
        )
        raise ConfigurationError(msg)
    return name


def database_from_url(url: str) -> str:
    """The database named in a ``mongodb://`` URL's path, or ``"cqrs"`` when there is none."""
    path = unquote(urlsplit(url).path).lstrip("/")
    return validate_database_name(path) if path else DEFAULT_DATABASE


def translate(error: PyMongoError | BSONError, doing: str) -> CqrsError:
    """The framework error for a driver error (raise it ``from`` the driver error).

    A duplicate key (11000, also inside a bulk write) or a write conflict means another
    writer won: AggregateConflict. Connection and server-selection failures, timeouts (a
    commit whose retries ran out of time) and an unknown commit result (the commit may or may
    not be stored): DatabaseConnectionError. Anything else: UnexpectedError.
    """
    message = f"MongoDB error while {doing}: {error}"
    if isinstance(error, ConnectionFailure) or (
        isinstance(error, PyMongoError)
        and (error.timeout or error.has_error_label("UnknownTransactionCommitResult"))
    ):
        return DatabaseConnectionError(message)
    if isinstance(error, DriverConfigurationError):
        return ConfigurationError(message)
    if isinstance(error, BulkWriteError):
        codes = {e.get("code") for e in error.details.get("writeErrors", ())}
        if _DUPLICATE_KEY in codes:
            return AggregateConflict(message)
    elif isinstance(error, OperationFailure) and error.code in (_DUPLICATE_KEY, _WRITE_CONFLICT):
        return AggregateConflict(message)
    return UnexpectedError(message)


async def check_transactions(database: AsyncDatabase[Document]) -> None:
    """Raise ConfigurationError unless the deployment can run multi-document transactions
    (a replica set member, even a single node, or a mongos)."""
    hello = await database.client.admin.command("hello")
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        return
    address = await database.client.address
    where = f"{address[0]}:{address[1]}" if address else "the server"
    msg = (
        f"MongoDB at {where} is a standalone server: cqrs-es commits events in multi-document "
        "transactions, which need a replica set or a sharded cluster. A single-node replica "
        "set is enough: start mongod with --replSet rs0, run rs.initiate() once, and connect "
        "with ?replicaSet=rs0 (see compose.yaml)."
    )
    raise ConfigurationError(msg)
