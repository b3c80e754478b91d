"""The thread that owns a SQLite connection, and group commit.

A :class:`Worker` runs the calls queued to it in order, one at a time, on its own thread.
A hop is a ``queue.SimpleQueue`` put and a ``call_soon_threadsafe`` back: measured here at
about half the cost of ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor`` (no
concurrent future chained to an asyncio one), which a load that is one hop feels.

Group commit: with ``synchronous=FULL`` every COMMIT waits for an fsync, so commits made
one transaction each are bounded by the disk. The worker takes what was queued while it
was busy in one pass: the reads run first (a load does not wait for the fsync of commits
that have not returned yet; the repository sends reads of a file to a second worker with
its own connection instead, so they do not wait for a pass either), then the commits, up
to :data:`MAX_GROUP`, are written in one transaction: ``BEGIN IMMEDIATE``, each commit in
its own ``SAVEPOINT`` (a commit that conflicts is rolled back to its savepoint and fails
alone; the others go on), then one ``COMMIT``, one fsync for the group. Every caller is
answered only after that COMMIT returned, so a commit reported done is durable as before.
An error that is not a conflict (the disk full, an I/O error, the database locked by
another process past the busy timeout) rolls back the whole transaction and fails every
commit of the group; none of them is stored, so nothing committed is lost. Positions are
still given under the write lock in the order the commits are written, which is the order
they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from cqrs.errors import AggregateConflict

__all__ = ["MAX_GROUP", "Worker", "commit_group"]

T = TypeVar("T")

MAX_GROUP = 64
"""The most commits written in one transaction."""

_DRAIN = 4 * MAX_GROUP
"""The most queued items the worker takes in one pass."""

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Any]
"""Runs a function on the worker's connection (the repository's, which may replace the
connection and try once more, see ``SqliteEventRepository.run``)."""


class _Call(Generic[T]):
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[[], T], loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]
    ) -> None:
        self.fn, self.loop, self.future = fn, loop, future


class _Read(Generic[T]):
    """A read ``fn(connection)``: it may run ahead of the commits queued before it."""

    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        self.fn, self.loop, self.future = fn, loop, future


class _Commit(Generic[T]):
    """A write to run in a group: ``fn(connection)`` inside the group's transaction."""

    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        self.fn, self.loop, self.future = fn, loop, future


_STOP = object()


def _settle(outcomes: Sequence[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    # On the caller's event loop. A caller that was cancelled meanwhile gets nothing.
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _deliver(
    loop: asyncio.AbstractEventLoop,
    outcomes: Sequence[tuple[asyncio.Future[Any], Any, BaseException | None]],
) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        loop.call_soon_threadsafe(_settle, outcomes)


def commit_group(
    connection: sqlite3.Connection, writes: Sequence[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[Any, BaseException | None]]:
    """Run ``writes`` in one write transaction, each in its own savepoint when there are
    several; return each one's (result, None), or (None, error) for a write that conflicted
    (``AggregateConflict`` or a unique-key violation: rolled back to its savepoint, the
    others go on). Any other error rolls back the transaction and is raised."""
    outcomes: list[tuple[Any, BaseException | None]] = []
    execute = connection.execute
    execute("BEGIN IMMEDIATE")
    try:
        if len(writes) == 1:
            outcomes.append((writes[0](connection), None))
        else:
            for write in writes:
                execute("SAVEPOINT cqrs_commit")
                try:
                    result = write(connection)
                except (AggregateConflict, sqlite3.IntegrityError) as error:
                    execute("ROLLBACK TO cqrs_commit")
                    execute("RELEASE cqrs_commit")
                    outcomes.append((None, error))
                else:
                    execute("RELEASE cqrs_commit")
                    outcomes.append((result, None))
        execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            execute("ROLLBACK")
        raise
    return outcomes


class Worker:
    """One thread running queued calls in order; queued commits run in groups.

    ``runner`` runs a function on the connection (see :data:`Runner`); ``name`` names the
    thread. :meth:`start` starts the thread, :meth:`stop` ends it after the calls already
    queued. Errors are handed back to the caller as raised (sqlite3 errors untranslated).
    """

    def __init__(self, runner: Runner, name: str) -> None:
        self._runner = runner
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """End the thread once the calls queued before this one have run (no waiting)."""
        self._queue.put(_STOP)

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn()``; the future (of the running loop) gets its result or error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(fn, loop, future))
        return future

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue the read ``fn(connection)`` (run by the runner); the future gets its result
        or error. It may run before commits queued ahead of it that are not written yet (it
        then does not see them: they have not returned to their callers either); it never
        sees a group's uncommitted rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Read(fn, loop, future))
        return future

    def commit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue the write ``fn(connection)`` to run in a group's transaction (see
        :func:`commit_group`); the future gets its result or error after the COMMIT."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Commit(fn, loop, future))
        return future

    def _main(self) -> None:
        # Each pass takes what is queued now (up to _DRAIN items): reads run at once, commits
        # gather into a group written when the pass ends, and any other call is a barrier
        # (the group before it is written first, so calls and commits keep their order).
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            while len(batch) < _DRAIN:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            if not self._pass(batch):
                return

    def _pass(self, batch: list[object]) -> bool:
        """Run one pass; False once the stop was met."""
        group: list[_Commit[Any]] = []
        for item in batch:
            if isinstance(item, _Commit):
                group.append(item)
                if len(group) == MAX_GROUP:
                    self._commit(group)
                    group = []
            elif isinstance(item, _Read):
                self._read(item)
            else:
                if group:
                    self._commit(group)
                    group = []
                if item is _STOP:
                    return False
                self._call(item)  # type: ignore[arg-type]
        if group:
            self._commit(group)
        return True

    def _call(self, item: _Call[Any]) -> None:
        try:
            result = item.fn()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            _deliver(item.loop, [(item.future, None, error)])
        else:
            _deliver(item.loop, [(item.future, result, None)])

    def _read(self, item: _Read[Any]) -> None:
        try:
            result = self._runner(item.fn)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            _deliver(item.loop, [(item.future, None, error)])
        else:
            _deliver(item.loop, [(item.future, result, None)])

    def _commit(self, group: list[_Commit[Any]]) -> None:
        writes = [item.fn for item in group]
        try:
            outcomes: list[tuple[Any, BaseException | None]] = self._runner(
                lambda connection: commit_group(connection, writes)
            )
        except BaseException as error:  # noqa: BLE001 - every commit of the group failed
            outcomes = [(None, error)] * len(group)
        by_loop: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        ] = {}
        for item, (result, failure) in zip(group, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, result, failure))
        for loop, settled in by_loop.items():
            _deliver(loop, settled)
