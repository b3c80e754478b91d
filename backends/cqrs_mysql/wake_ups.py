"""Wake-ups for subscriptions on MySQL, backed by polling.

MySQL cannot push a commit to another session (it has no LISTEN/NOTIFY nor change streams
without the binary log). Commits through the repository in this process are signalled at
once (a :class:`~cqrs.subscription.LocalSignal`); commits by other clients and processes
are seen by reading the events table's counter row (``<events>_counter``, raised by every
commit) every ``check_interval`` seconds on a connection of the listener's own, while it
waits. A check is one primary-key read (about 0.1 ms of server time), so a waiting listener
costs the server little; any change wakes the subscription, which then reads the events.
"""

from __future__ import annotations

import asyncio
import logging

import asyncmy
import asyncmy.errors

from cqrs.subscription import WakeUps
from cqrs_mysql.connection import MysqlConfig, describe

__all__ = ["CHECK_INTERVAL", "MysqlWakeUps"]

logger = logging.getLogger("cqrs.backends.mysql")

CHECK_INTERVAL = 0.05
"""Seconds between two reads of the counter row while a listener waits."""

MAX_RETRY_DELAY = 5.0


class MysqlWakeUps:
    """A listener for commits to one events table (see the module docstring).

    ``local`` is the repository's in-process listener. No I/O until the first
    :meth:`wait`, which connects, reads the counter and returns at once (a commit may have
    happened before). A lost connection is logged on ``cqrs.backends.mysql`` (WARNING once
    per outage); the listener then waits on the in-process signal alone and reconnects at a
    later wait (after a growing delay while that fails), logging at INFO when it does.
    """

    connect_timeout = 5.0

    def __init__(
        self,
        config: MysqlConfig,
        statement: str,
        local: WakeUps,
        *,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.config = config
        self.check_interval = check_interval
        self._statement = statement
        self._local = local
        self._conn: asyncmy.Connection | None = None
        self._last: object = None
        self._lost = False
        self._failures = 0
        self._retry_at = 0.0

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        """Return after a commit since the previous wait returned, or after ``timeout``
        seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._conn is None:
            if loop.time() >= self._retry_at and await self._connect():
                return
            await self._local.wait(max(deadline - loop.time(), 0.0))
            return
        while (remaining := deadline - loop.time()) > 0:
            await self._local.wait(min(self.check_interval, remaining))
            try:
                last = await self._read()
            except (asyncmy.errors.MySQLError, OSError) as error:
                self._lose("lost its connection to", error)
                await self._disconnect()
                await self._local.wait(max(deadline - loop.time(), 0.0))
                return
            if last != self._last:
                self._last = last
                return

    async def close(self) -> None:
        """Close the listener's connection (idempotent)."""
        await self._disconnect()
        await self._local.close()

    async def _read(self) -> object:
        assert self._conn is not None  # noqa: S101 - only called while connected
        cursor = self._conn.cursor()
        await cursor.execute(self._statement)
        row = await cursor.fetchone()
        return None if row is None else row[0]

    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        conn: asyncmy.Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncmy.connect(**self.config.connect_kwargs(self.connect_timeout))
                self._conn = conn
                self._last = await self._read()
        except (asyncmy.errors.MySQLError, OSError, TimeoutError) as error:
            self._conn = None
            if conn is not None:
                conn.close()
            self._failures += 1
            self._retry_at = loop.time() + min(MAX_RETRY_DELAY, 0.1 * 2**self._failures)
            self._lose("cannot connect to", error)
            return False
        self._failures = 0
        if self._lost:
            self._lost = False
            logger.info("wake-ups of %s reconnected", describe(self.config))
        return True

    def _lose(self, what: str, error: BaseException) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        where = describe(self.config)
        if self._lost:
            logger.debug("wake-ups %s %s: %s", what, where, reason)
            return
        self._lost = True
        logger.warning(
            "wake-ups %s %s (%s); reconnecting at a later wait, polling meanwhile",
            what,
            where,
            reason,
        )

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.ensure_closed()
