"""Pools and connections: opening a pool, and the one place driver errors are translated."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.string import TextBinaryLoader
from psycopg_pool import AsyncConnectionPool

from cqrs.errors import (
    AggregateConflict,
    AggregateError,
    ConfigurationError,
    DatabaseConnectionError,
    UnexpectedError,
)
from cqrs.repository import not_open

__all__ = [
    "Connections",
    "Pool",
    "default_postgres_pool",
    "describe_url",
    "new_pool",
    "open_pool",
    "raw_json_cursor",
]

T = TypeVar("T")

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]
"""The pool type the repositories take (psycopg_pool's default for a URL)."""

DEFAULT_MIN_SIZE = 1
DEFAULT_MAX_SIZE = 10
DEFAULT_TIMEOUT = 10.0


def describe_url(url: str) -> str:
    """``url`` without its password, for error messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        msg = f"invalid PostgreSQL URL: {error}"
        raise ConfigurationError(msg) from error
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"postgresql://{params.get('user') or ''}@{host}:{port}/{params.get('dbname') or ''}"


def new_pool(url: str, *, min_size: int, max_size: int, timeout: float) -> Pool:
    """An unopened pool of autocommit connections to ``url`` that prepare every statement
    on the server at its first use (no I/O)."""
    describe_url(url)
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        kwargs={"autocommit": True, "prepare_threshold": 0},
        open=False,
        name=f"cqrs {describe_url(url)}",
    )


async def open_pool(pool: Pool, seconds: float, *, probe: bool = False) -> None:
    """Open ``pool`` (idempotent), or raise DatabaseConnectionError within about ``seconds``,
    naming the server and the reason. ``probe`` (for pools made by :func:`new_pool`) makes
    one direct connection first and closes the pool on failure; a caller's pool is left open
    to reconnect in the background, so calling this again succeeds once the server is up."""
    if not pool.closed:
        return
    url = pool.conninfo if isinstance(pool.conninfo, str) else None
    target = describe_url(url) if url is not None else f"the server of pool {pool.name!r}"
    try:
        if probe:
            if url is not None:
                # One direct attempt first: an unreachable server fails fast with its real
                # reason, where the pool would retry quietly until the timeout.
                async with asyncio.timeout(seconds):
                    first = await AsyncConnection.connect(url, autocommit=True)
                await first.close()
            await pool.open(wait=True, timeout=seconds)
        else:
            # Not pool.open(wait=True): on a timeout it closes the caller's pool, and a closed
            # psycopg pool never reopens. Left open, it keeps reconnecting in the background,
            # so a later open() works once the server is up.
            await pool.open()
            async with pool.connection(timeout=seconds):
                pass
    except (psycopg.Error, TimeoutError) as error:
        if probe:
            await pool.close()
        reason = " ".join(str(error).split()) or f"no connection within {seconds:g} s"
        msg = f"cannot connect to {target}: {reason}"
        raise DatabaseConnectionError(msg) from error


async def default_postgres_pool(
    url: str,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the pool's own wait bound, by design
) -> Pool:
    """An open pool of ``min_size`` to ``max_size`` autocommit connections to ``url``, with
    ``prepare_threshold=0`` (statements are prepared on the server at first use).

    ``timeout`` bounds both opening and every later wait for a free connection. Raises
    DatabaseConnectionError (naming the server, never the password) when the server cannot
    be reached within ``timeout`` seconds. The caller closes the pool.
    """
    pool = new_pool(url, min_size=min_size, max_size=max_size, timeout=timeout)
    await open_pool(pool, timeout, probe=True)
    return pool


class Connections:
    """Where a repository and the view repositories made from it borrow connections: the
    pool (replaced when an owned pool is reopened) and whether the repository is open.

    ``owner`` names the repository in :class:`~cqrs.errors.NotOpenError`. A repository over
    a caller's pool that is open can be used without ``open()``; once the repository is
    closed (``closed`` set), nothing is lent until it is opened again.
    """

    def __init__(self, pool: Pool, owner: str) -> None:
        self.pool = pool
        self.owner = owner
        self.closed = False

    @asynccontextmanager
    async def borrow(self, what: str) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """Lend a connection in autocommit mode (restored afterwards).

        Raises NotOpenError (before any I/O) if the repository or its pool is not open. This
        is the backend's one translation of driver errors, each raised ``from`` the driver
        error: a unique violation or a serialization failure -> AggregateConflict; a
        connection, pool or server-shutdown error -> DatabaseConnectionError; any other ->
        UnexpectedError. ``what`` names the operation in the message.
        """
        try:
            async with self._connection() as conn:
                yield conn
        except psycopg.Error as error:
            raise _translate(error, what) from error

    async def run(
        self,
        what: str,
        operation: Callable[[AsyncConnection[TupleRow]], Awaitable[T]],
        again: Callable[[AsyncConnection[TupleRow]], Awaitable[T]] | None = None,
    ) -> T:
        """``operation`` on a borrowed connection (as :meth:`borrow`); if that connection
        turns out broken, ``again`` (default: ``operation``) once more on a fresh one.

        A pooled connection the server dropped while it was idle (a restart, a killed
        backend) is only found broken when used: the retry makes an operation sent after
        such a fault succeed. The broken connection may also have carried the operation to
        the server before it broke, so only operations that are safe to repeat come here:
        reads, and writes that recognize their own earlier success.
        """
        # _connection() inlined: reads are one round trip, and a context manager less is a
        # measurable part of one.
        if self.closed or self.pool.closed:
            raise not_open(self.owner)
        conn: AsyncConnection[TupleRow] | None = None
        try:
            async with self.pool.connection() as conn:
                if conn.autocommit:
                    return await operation(conn)
                await conn.set_autocommit(True)
                try:
                    return await operation(conn)
                finally:
                    if not conn.closed:
                        await conn.set_autocommit(False)
        except psycopg.Error as error:
            if conn is None or not conn.broken:
                raise _translate(error, what) from error
            with contextlib.suppress(psycopg.Error):  # the retry below finds out
                await _replace_connections(self.pool)
        async with self.borrow(what) as conn:
            return await (again or operation)(conn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        if self.closed or self.pool.closed:
            raise not_open(self.owner)
        conn: AsyncConnection[TupleRow] | None = None
        try:
            async with self.pool.connection() as conn:
                restore = not conn.autocommit
                if restore:
                    await conn.set_autocommit(True)
                try:
                    yield conn
                finally:
                    if restore and not conn.closed:
                        await conn.set_autocommit(False)
        except psycopg.Error:
            if conn is not None and conn.broken:
                # The pool's idle connections are most likely as dead as this one (a
                # restart, or every idle backend killed): replace them all.
                await _replace_connections(self.pool)
            raise


def _translate(error: psycopg.Error, what: str) -> AggregateError:
    primary = error.diag.message_primary if isinstance(error, psycopg.DatabaseError) else None
    message = f"{what}: {primary or str(error).strip()}"
    if primary and error.diag.message_detail:
        message += f" ({error.diag.message_detail})"
    if isinstance(error, psycopg.errors.UniqueViolation | psycopg.errors.TransactionRollback):
        return AggregateConflict(message)
    if isinstance(error, psycopg.OperationalError):
        return DatabaseConnectionError(message)
    return UnexpectedError(message)


async def _replace_connections(pool: Pool) -> None:
    drain = getattr(pool, "drain", None)  # psycopg_pool >= 3.3; check() is the older way
    await (drain() if drain is not None else pool.check())


class _JsonbBinaryLoader(Loader):
    """jsonb's binary form is a version byte then the JSON text: return the text."""

    format = pq.Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data[1:])


def raw_json_cursor(conn: AsyncConnection[TupleRow]) -> AsyncCursor[TupleRow]:
    """A tuple-row cursor with binary results (cheaper timestamps and UUIDs) that returns
    ``json``/``jsonb`` columns as undecoded JSON text, so the core codec decodes each
    payload exactly once."""
    cursor = conn.cursor(row_factory=tuple_row, binary=True)
    cursor.adapters.register_loader("json", TextBinaryLoader)
    cursor.adapters.register_loader("jsonb", _JsonbBinaryLoader)
    return cursor
