"""Pushed wake-ups over a change stream.

Every commit transaction increments the events collection's counter document, so a
listener watches that one document (``$match`` on its ``_id``, ``$project`` down to the
resume token): one change per committed transaction, none for an aborted one, and no event
data on the wire. Change streams need a replica set (which transactions need anyway) and a
server that implements them; where ``watch`` is refused, pushes are off for that
repository (logged once at INFO on ``cqrs.backends.mongodb``) and subscriptions poll. A
lost stream (a restarted server, a failover the driver could not resume across) is logged
and reopened at a later wait; the subscription's polling covers the gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from cqrs.errors import CqrsError
from cqrs_mongodb._driver import Document

__all__ = ["ChangeStreamSupport", "MongoWakeUps"]

logger = logging.getLogger("cqrs.backends.mongodb")

MAX_AWAIT = 1.0
"""The longest a change stream's getMore waits on the server, in seconds (a wait's timeout,
when shorter, is used instead, so a wait ends close to its timeout)."""

MAX_RETRY_DELAY = 5.0

GRACE = 5.0
"""How long past its timeout a wait lets the driver try (to resume a stream, to select a
server) before it gives the stream up as lost."""


class ChangeStreamSupport:
    """Whether the server of one repository accepts change streams (None until known), shared
    by its listeners, so a server that refuses them is asked and logged about once."""

    def __init__(self) -> None:
        self.refused: str | None = None


class MongoWakeUps:
    """A listener for the commits counted by the counter document ``counter_id`` in
    collection ``counters`` of ``database()`` (the repository's, which must be open when it
    waits).

    No I/O until the first :meth:`wait`, which opens the change stream and returns at once
    (a commit may have happened before). A stream that fails is closed and logged (WARNING
    once per outage), the timeout stands in for that wait, and a later wait reopens it
    (after a growing delay while that fails, at most 5 s), logging at INFO when it does.
    """

    def __init__(
        self,
        database: Callable[[], AsyncDatabase[Document]],
        counters: str,
        counter_id: str,
        support: ChangeStreamSupport,
    ) -> None:
        self.counter_id = counter_id
        self._database = database
        self._counters = counters
        self._support = support
        self._stream: AsyncChangeStream[Any] | None = None
        self._lost = False
        self._failures = 0
        self._retry_at = 0.0

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        """Return when a commit was made since the previous wait returned, or after about
        ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stream = self._stream
        if stream is None:
            if (
                self._support.refused is None
                and loop.time() >= self._retry_at
                and await self._open(timeout)
            ):
                return
            await asyncio.sleep(max(deadline - loop.time(), 0.0))
            return
        try:
            async with asyncio.timeout(timeout + MAX_AWAIT + GRACE):
                while deadline - loop.time() > 0:
                    if await stream.try_next() is not None:
                        return
        except (PyMongoError, TimeoutError) as error:
            self._lose("lost its change stream", error)
            await self._close_stream()
            await asyncio.sleep(max(deadline - loop.time(), 0.0))

    async def close(self) -> None:
        """Close the change stream (idempotent)."""
        await self._close_stream()

    async def _open(self, poll: float) -> bool:
        pipeline: list[Document] = [
            {"$match": {"documentKey._id": self.counter_id}},
            {"$project": {"_id": 1}},
        ]
        max_await = max(1, int(min(poll, MAX_AWAIT) * 1000))
        try:
            counters = self._database().get_collection(self._counters)
            async with asyncio.timeout(poll + GRACE):
                self._stream = await counters.watch(pipeline, max_await_time_ms=max_await)
        except OperationFailure as error:
            if error.timeout:
                return self._failed("cannot open a change stream", error)
            self._support.refused = str(error)
            logger.info(
                "change streams are refused by this MongoDB server (%s): pushed wake-ups are "
                "off for %s, subscriptions poll",
                " ".join(str(error).split()),
                self.counter_id,
            )
            return False
        except (PyMongoError, CqrsError, TimeoutError) as error:
            return self._failed("cannot open a change stream", error)
        self._failures = 0
        if self._lost:
            self._lost = False
            logger.info("listener on %s reopened its change stream", self.counter_id)
        return True

    def _failed(self, what: str, error: BaseException) -> bool:
        loop = asyncio.get_running_loop()
        self._failures += 1
        self._retry_at = loop.time() + min(MAX_RETRY_DELAY, 0.1 * 2**self._failures)
        self._lose(what, error)
        return False

    def _lose(self, what: str, error: BaseException) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        if self._lost:
            logger.debug("listener on %s %s: %s", self.counter_id, what, reason)
            return
        self._lost = True
        logger.warning(
            "listener on %s %s (%s); reopening it at a later wait, polling meanwhile",
            self.counter_id,
            what,
            reason,
        )

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except PyMongoError as error:
                logger.debug("closing the change stream on %s: %s", self.counter_id, error)
