"""Group commit: concurrent ``persist`` calls of one repository share one transaction.

Every transaction increments the one counter document, so two transactions in flight at
once write-conflict and one of them is retried after a backoff; with many writers that
retry traffic would make throughput fall below that of a single writer. Instead, the
commits waiting in one process are taken together by a single committer task: one counter
increment, one ``insert_many`` and one snapshot ``bulk_write`` for all of them, in one
transaction. Each caller still gets its own outcome:

- a group holds at most one commit per aggregate (the others wait for the next group), so
  a duplicate key names exactly one culprit: it gets AggregateConflict and the group is
  retried without it;
- a commit that reuses a sequence this process has stored (a stale writer on a hot
  aggregate) gets AggregateConflict at once, without a transaction;
- a lost connection, a timeout or an unknown commit result (the transaction may have
  committed) fails the whole group with DatabaseConnectionError, never with a conflict;
- an event position that is already taken (a counter document behind the events) fails
  the whole group with UnexpectedError: that is no conflict between writers;
- any other error is retried commit by commit, so one bad commit cannot fail the others.

Across processes the counter still serializes writers (the driver's transaction helper
retries the write conflicts); that is accepted on MongoDB.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pymongo
from bson.errors import BSONError
from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from cqrs.errors import AggregateConflict, UnexpectedError
from cqrs_mongodb._driver import Document, translate

MAX_GROUP_DOCUMENTS = 1000
"""A group takes further commits only while it holds fewer event documents than this."""

REMEMBERED_AGGREGATES = 10_000
"""How many aggregates' recently stored sequences a committer remembers."""

_DUPLICATE_KEY = 11000


@dataclass(eq=False)
class Commit:
    """One ``persist`` call: its event documents (``_id`` set at commit), its snapshot
    upsert, and the future that receives its first position or its error."""

    key: tuple[str, str]
    documents: list[Document]
    snapshot: UpdateOne | None
    doing: str
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter:
    """Runs the transactions of one repository's commits (see the module docstring)."""

    def __init__(
        self,
        counters: AsyncCollection[Document],
        counter_id: str,
        events: AsyncCollection[Document],
        snapshots: AsyncCollection[Document],
    ) -> None:
        self._counters = counters
        self._counter_id = counter_id
        self._events = events
        self._snapshots = snapshots
        self._queue: list[Commit] = []
        self._task: asyncio.Task[None] | None = None
        self._stored: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    async def commit(self, commit: Commit) -> int:
        """Queue ``commit`` and wait for its first position (or its error)."""
        self._fail_if_stored(commit)
        if commit.done.done():
            return await commit.done
        self._queue.append(commit)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await commit.done

    async def drain(self) -> None:
        """Wait until every queued commit has its outcome."""
        task = self._task
        if task is not None:
            await asyncio.wait({task})

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._commit_group(self._next_group())
        except BaseException as error:  # e.g. the loop is shutting down: nobody waits forever
            for commit in self._queue:
                _fail(commit, error)
            self._queue.clear()
            raise

    def _next_group(self) -> list[Commit]:
        group: list[Commit] = []
        later: list[Commit] = []
        keys: set[tuple[str, str]] = set()
        size = 0
        for commit in self._queue:
            self._fail_if_stored(commit)
            if commit.done.done():  # cancelled by its caller, or known to conflict
                continue
            if commit.key in keys or (group and size + len(commit.documents) > MAX_GROUP_DOCUMENTS):
                later.append(commit)
                continue
            group.append(commit)
            keys.add(commit.key)
            size += len(commit.documents)
        self._queue = later
        return group

    def _remember(self, commit: Commit) -> None:
        """Record the sequences ``commit`` stored, extending the aggregate's known range."""
        first, last = commit.documents[0]["sequence"], commit.documents[-1]["sequence"]
        known = self._stored.pop(commit.key, None)
        if known is not None and known[0] <= first <= known[1] + 1:
            first, last = known[0], max(last, known[1])
        self._stored[commit.key] = (first, last)
        if len(self._stored) > REMEMBERED_AGGREGATES:
            self._stored.popitem(last=False)

    def _fail_if_stored(self, commit: Commit) -> None:
        """Fail ``commit`` at once if this process stored one of its sequences: a stale
        writer on a hot aggregate then costs no transaction to find out."""
        known = self._stored.get(commit.key)
        if known is None:
            return
        first, last = commit.documents[0]["sequence"], commit.documents[-1]["sequence"]
        if first <= known[1] and last >= known[0]:
            msg = (
                f"conflict while {commit.doing}: sequence {max(first, known[0])} is already "
                "stored (another writer committed first)"
            )
            _fail(commit, AggregateConflict(msg))

    async def _commit_group(self, group: list[Commit]) -> None:
        while group:
            try:
                starts = await self._transaction(group)
            except (PyMongoError, BSONError) as error:
                group = await self._after_error(group, error)
                continue
            except BaseException as error:
                for commit in group:
                    _fail(commit, error)
                raise
            for commit, start in zip(group, starts, strict=True):
                if not commit.done.done():
                    commit.done.set_result(start)
                self._remember(commit)
            return

    async def _after_error(
        self, group: list[Commit], error: PyMongoError | BSONError
    ) -> list[Commit]:
        """Give the failed commits their errors; return the commits to retry together."""
        if _position_taken(error):
            taken = _duplicate_key(error).get("keyValue")
            for commit in group:
                msg = (
                    f"MongoDB error while {commit.doing}: position {taken} is already taken; "
                    f"the counter document {self._counter_id!r} in {self._counters.name} is "
                    "behind the events (reset, or restored from an older copy): set its "
                    "position to the highest event _id"
                )
                _fail(commit, UnexpectedError(msg), error)
            return []
        culprit = _duplicate_key_culprit(error, group)
        if culprit is not None:
            _fail(culprit, translate(error, culprit.doing), error)
            return [commit for commit in group if commit is not culprit]
        if len(group) == 1 or _outcome_unknown(error):
            for commit in group:
                _fail(commit, translate(error, commit.doing), error)
            return []
        for commit in group:
            await self._commit_group([commit])
        return []

    async def _transaction(self, group: Sequence[Commit]) -> list[int]:
        documents = [document for commit in group for document in commit.documents]
        snapshots = [commit.snapshot for commit in group if commit.snapshot is not None]
        total = len(documents)

        async def attempt(session: AsyncClientSession) -> list[int]:
            # Re-run from scratch on a transient error (a write conflict on the counter);
            # a duplicate key is not transient, so it leaves the helper at once.
            counter = await self._counters.find_one_and_update(
                {"_id": self._counter_id},
                {"$inc": {"position": total}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            assert counter is not None  # noqa: S101 - upsert with AFTER returns the document
            position: int = counter["position"] - total + 1
            starts = []
            for commit in group:
                starts.append(position)
                for document in commit.documents:
                    document["_id"] = position
                    position += 1
            await self._events.insert_many(documents, session=session)
            if snapshots:
                await self._snapshots.bulk_write(snapshots, session=session)
            return starts

        # The helper retries transient errors (write conflicts, a lost connection) for up to
        # 120 s; bound that by the client's timeoutMS, else its serverSelectionTimeoutMS, so
        # an outage fails the commit with DatabaseConnectionError within the time the driver
        # would wait for a server anyway, and a restart within it is survived.
        client = self._events.database.client
        with pymongo.timeout(client.options.timeout or client.options.server_selection_timeout):
            async with client.start_session() as session:
                return await session.with_transaction(attempt)


def _duplicate_key(error: BaseException) -> Document:
    """The first write error of a bulk write if it is a duplicate key, else ``{}``."""
    if not isinstance(error, BulkWriteError):
        return {}
    write_errors = error.details.get("writeErrors") or ()
    if not write_errors or write_errors[0].get("code") != _DUPLICATE_KEY:
        return {}
    first: Document = write_errors[0]
    return first


def _position_taken(error: BaseException) -> bool:
    """True if an event document's ``_id`` (its position) was taken: not a conflict
    between writers but a counter behind the events."""
    duplicate = _duplicate_key(error)
    if not duplicate or not isinstance(duplicate.get("op"), dict):
        return False
    pattern = duplicate.get("keyPattern")
    if isinstance(pattern, dict):
        return list(pattern) == ["_id"]
    return "index: _id_ " in str(duplicate.get("errmsg", ""))


def _duplicate_key_culprit(error: BaseException, group: Sequence[Commit]) -> Commit | None:
    """The commit whose event document hit a duplicate key, if that is what failed (the
    driver attaches the failed document to the write error as ``op``)."""
    duplicate = _duplicate_key(error)
    if not duplicate:
        return None
    failed = duplicate.get("op")
    failed_id = failed.get("_id") if isinstance(failed, dict) else None
    if failed_id is None:  # not an event document (a snapshot upsert has no _id)
        return None
    for commit in group:
        if any(document["_id"] == failed_id for document in commit.documents):
            return commit
    return None


def _outcome_unknown(error: PyMongoError | BSONError) -> bool:
    """True if the transaction may have committed (a lost connection, a timeout, an unknown
    commit result): retrying its commits one by one would then meet their own stored events
    and report conflicts for commits that are stored."""
    return isinstance(error, ConnectionFailure) or (
        isinstance(error, PyMongoError)
        and (error.timeout or error.has_error_label("UnknownTransactionCommitResult"))
    )


def _fail(commit: Commit, error: BaseException, cause: BaseException | None = None) -> None:
    if commit.done.done():
        return
    if cause is not None:
        error.__cause__ = cause
    commit.done.set_exception(error)
