"""URLs, pools and connections: the one place asyncmy's errors are translated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncmy
import asyncmy.errors
from asyncmy.constants import CLIENT, ER

from cqrs.connection import redact_url
from cqrs.errors import (
    AggregateConflict,
    AggregateError,
    ConfigurationError,
    DatabaseConnectionError,
    UnexpectedError,
)
from cqrs.repository import not_open

__all__ = ["Connections", "MysqlConfig", "Pool", "parse_url"]

T = TypeVar("T")

Pool = asyncmy.Pool
"""asyncmy's pool."""

DEFAULT_MIN_SIZE = 1
DEFAULT_MAX_SIZE = 10
DEFAULT_TIMEOUT = 10.0

# Matched rows, not changed rows, as an UPDATE's row count: a checkpoint saved again at the
# same position is still a save under a current token. Several statements per query: a commit
# is one round trip.
_CLIENT_FLAGS = CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS

# Lost or refused connections, a server going away or shutting down, lock waits given up.
_CONNECTION_CODES = frozenset({1040, 1053, 1205, 2002, 2003, 2005, 2006, 2013, 2055, 1927})
_CONFLICT_CODES = frozenset({ER.DUP_ENTRY, ER.LOCK_DEADLOCK})
_CLIENT_ERRORS = 2000  # codes from here on are the client's (CR_*): lost connections...
_CONSTRAINT_FAILED = 4025  # MariaDB: a CHECK constraint (json_valid on a json column) failed


@dataclass(frozen=True, slots=True)
class MysqlConfig:
    """Where to connect: what :func:`parse_url` reads from a ``mysql://`` URL."""

    host: str
    port: int
    user: str
    password: str
    database: str
    url: str

    def connect_kwargs(self, timeout: float) -> dict[str, Any]:
        """The connection arguments for asyncmy: UTF-8 (utf8mb4), autocommit, UTC as the session
        time zone (timestamps are read and written in UTC), no notes, matched-row counts and
        several statements per query."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "charset": "utf8mb4",
            "autocommit": True,
            "client_flag": _CLIENT_FLAGS,
            # Notes (a table that exists already...) would each cost a SHOW WARNINGS.
            "init_command": "SET time_zone = '+00:00', sql_notes = 0",
            "connect_timeout": max(1, round(timeout)),
        }

    def __repr__(self) -> str:
        return f"MysqlConfig({redact_url(self.url)!r})"


def parse_url(url: str) -> MysqlConfig:
    """Read ``mysql://user:password@host:port/database`` (also ``mariadb://``; the port
    defaults to 3306, the user to root); raise ConfigurationError naming the URL (without
    its password) when it is not one."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except (ValueError, TypeError) as error:
        msg = f"invalid MySQL URL {shown}: {error}"
        raise ConfigurationError(msg) from error
    database = unquote(parts.path.lstrip("/"))
    if parts.scheme.lower() not in {"mysql", "mariadb"} or not parts.hostname or not database:
        msg = f"invalid MySQL URL {shown}: use mysql://user:password@host:port/database"
        raise ConfigurationError(msg)
    if parse_qsl(parts.query):
        msg = f"invalid MySQL URL {shown}: query parameters are not supported"
        raise ConfigurationError(msg)
    return MysqlConfig(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        url=url,
    )


def describe(config: MysqlConfig) -> str:
    """The server and database, without the password, for messages."""
    return f"mysql://{config.user}@{config.host}:{config.port}/{config.database}"


class Connections:
    """The pool a repository (and the view repositories and checkpoint store made from it)
    borrows connections from, opened by :meth:`open` and dropped by :meth:`close`.

    ``owner`` names the repository in :class:`~cqrs.errors.NotOpenError`.
    """

    def __init__(
        self, config: MysqlConfig, owner: str, *, min_size: int, max_size: int, timeout: float
    ) -> None:
        self.config = config
        self.owner = owner
        self.min_size, self.max_size, self.timeout = min_size, max_size, timeout
        self.pool: Pool | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the pool (idempotent); raise DatabaseConnectionError within about
        ``timeout`` seconds, naming the server and the reason, when it cannot connect."""
        async with self._lock:
            if self.pool is not None:
                return
            where = describe(self.config)
            try:
                async with asyncio.timeout(self.timeout):
                    self.pool = await asyncmy.create_pool(
                        minsize=self.min_size,
                        maxsize=self.max_size,
                        pool_recycle=-1,
                        **self.config.connect_kwargs(self.timeout),
                    )
            except (asyncmy.errors.Error, OSError, TimeoutError) as error:
                reason = " ".join(str(error).split()) or f"no connection within {self.timeout:g} s"
                msg = f"cannot connect to {where}: {reason}"
                raise DatabaseConnectionError(msg) from error

    async def close(self) -> None:
        """Close the pool (idempotent); connections lent out close when given back."""
        async with self._lock:
            pool, self.pool = self.pool, None
            if pool is not None:
                pool.close()
                await pool.wait_closed()

    @asynccontextmanager
    async def borrow(self, what: str) -> AsyncIterator[asyncmy.Connection]:
        """Lend a connection (autocommit mode, no transaction open).

        Raises NotOpenError (before any I/O) when not open. This is the backend's one
        translation of driver errors, each raised ``from`` the driver error: a duplicate
        key or a deadlock -> AggregateConflict; a lost or refused connection, a server
        shutting down or a lock wait timeout -> DatabaseConnectionError; any other ->
        UnexpectedError. ``what`` names the operation in the message. A connection left
        in a transaction or broken is closed, not reused.
        """
        try:
            async with self._connection() as conn:
                yield conn
        except (asyncmy.errors.MySQLError, OSError) as error:
            raise translate(error, what) from error

    async def run(
        self,
        what: str,
        operation: Callable[[asyncmy.Connection], Awaitable[T]],
        again: Callable[[asyncmy.Connection], Awaitable[T]] | None = None,
    ) -> T:
        """``operation`` on a borrowed connection (as :meth:`borrow`); if that connection
        turns out broken, ``again`` (default: ``operation``) once more on a fresh one.

        A pooled connection the server dropped while it was idle (a restart, a killed
        session) is found broken only when used; only operations that are safe to repeat
        come here: reads, and writes that recognize their own earlier success.
        """
        pool, conn = await self._acquire()
        try:
            result = await operation(conn)
        except (asyncmy.errors.MySQLError, OSError) as error:
            _give_back(pool, conn, error)
            if conn.connected:
                raise translate(error, what) from error
        except BaseException as error:
            _give_back(pool, conn, error)
            raise
        else:
            pool.release(conn)
            return result
        async with self.borrow(what) as fresh:
            return await (again or operation)(fresh)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncmy.Connection]:
        pool, conn = await self._acquire()
        try:
            yield conn
        except BaseException as error:
            _give_back(pool, conn, error)
            raise
        pool.release(conn)

    async def _acquire(self) -> tuple[Pool, asyncmy.Connection]:
        pool = self.pool
        if pool is None:
            raise not_open(self.owner)
        try:
            if pool.freesize:  # one is free: no wait to bound (and no timer to set)
                return pool, await pool.acquire()
            async with asyncio.timeout(self.timeout):
                return pool, await pool.acquire()
        except TimeoutError as error:
            msg = f"no free connection to {describe(self.config)} within {self.timeout:g} s"
            raise DatabaseConnectionError(msg) from error
        except RuntimeError as error:  # asyncmy: the pool was closed while this waited
            raise not_open(self.owner) from error


def _give_back(pool: Pool, conn: asyncmy.Connection, error: BaseException) -> None:
    """Return a connection whose operation raised ``error``: closed (so the pool drops it)
    if it may be out of step with the server, i.e. unless the server refused a statement
    and no transaction was left open."""
    if not isinstance(error, asyncmy.errors.MySQLError) or (
        conn.connected and conn.get_transaction_status()
    ):
        # Cancelled or failed half-way through a reply, or a transaction left open.
        conn.close()
    pool.release(conn)


def translate(error: BaseException, what: str) -> AggregateError:
    """The framework's error for a driver error raised while doing ``what``."""
    args: tuple[object, ...] = tuple(getattr(error, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(args[1]) if len(args) > 1 else str(error)
    message = f"{what}: {' '.join(text.split()) or type(error).__name__}"
    if code in _CONFLICT_CODES:
        return AggregateConflict(message)
    if code == _CONSTRAINT_FAILED:
        return UnexpectedError(f"{message} (a json value is not valid JSON, or a check failed)")
    if (
        code in _CONNECTION_CODES
        or isinstance(error, OSError)
        or (isinstance(error, asyncmy.errors.OperationalError) and (code or 0) >= _CLIENT_ERRORS)
    ):
        return DatabaseConnectionError(message)
    return UnexpectedError(message)
