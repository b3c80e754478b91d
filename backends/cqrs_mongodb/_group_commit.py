"""Group commit: concurrent ``persist`` calls of one repository share one transaction.

Every transaction increments the one counter document, so two transactions in flight at
once write-conflict and one of them is retried after a backoff; with many writers that
retry traffic would make throughput fall below that of a single writer. Instead, the
commits waiting in one process are taken together by a single committer task: one counter
increment, one ``insert_many`` and one snapshot ``bulk_write`` for all of them, in one
transaction. Each caller still gets its own outcome:

- a group holds at most one commit per aggregate (the others wait for the next group), so
  a duplicate key names exactly one culprit; the group is retried without it;
- a batch must start right after the aggregate's stored last sequence. The transaction first
  reads the previous sequence of each commit not starting at 1, unless this process stored
  it or read it (events are never deleted): a command loads its aggregate before it
  commits, so on that path the read is never needed. One indexed equality query per
  commit: an ``$or`` over the group would be one round trip on MongoDB, but the test server
  SecantusDB answers it ~100 times slower than an equality. A commit whose previous
  sequence is missing would leave a gap: it gets AggregateConflict and the others commit in
  the same transaction, without its snapshot;
- a commit that collides with stored sequences (a duplicate key, or sequences this process
  knows it stored, which costs no transaction) is read back: if its event ids are stored at
  its sequences it is a retry of a stored commit and gets their positions
  (:func:`cqrs.repository.stored_positions`); otherwise AggregateConflict;
- a lost connection, a timeout or an unknown commit result (the transaction may have
  committed): the group's commits are read back, those found stored by their event ids
  succeed and the rest are retried once in a new transaction (the driver has discarded the
  broken connection, so it runs on a fresh one); if that outcome is unknown too, they fail
  with DatabaseConnectionError, never with a conflict;
- an event position that is already taken (a counter document behind the events) fails
  the whole group with UnexpectedError: that is no conflict between writers;
- any other error is retried commit by commit, so one bad commit cannot fail the others.

Across processes the counter still serializes writers (the driver's transaction helper
retries the write conflicts) and the unique index refuses a sequence stored twice; the
in-process knowledge of stored sequences only saves round trips.
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

from cqrs.errors import AggregateConflict, CqrsError, UnexpectedError
from cqrs.repository import SerializedEvent, stored_positions
from cqrs_mongodb._documents import event_from_document
from cqrs_mongodb._driver import Document, translate

MAX_GROUP_DOCUMENTS = 1000
"""A group takes further commits only while it holds fewer event documents than this."""

REMEMBERED_AGGREGATES = 10_000
"""How many aggregates' recently stored sequences a committer remembers."""

_DUPLICATE_KEY = 11000


@dataclass(eq=False)
class Commit:
    """One ``persist`` call: its events, their documents (``_id`` set at commit), its
    snapshot upsert, and the future that receives its positions or its error."""

    key: tuple[str, str]
    events: Sequence[SerializedEvent]
    documents: list[Document]
    snapshot: UpdateOne | None
    doing: str
    done: asyncio.Future[list[int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def first(self) -> int:
        """The batch's first sequence."""
        return self.events[0].sequence

    @property
    def last(self) -> int:
        """The batch's last sequence."""
        return self.events[-1].sequence


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

    async def commit(self, commit: Commit) -> list[int]:
        """Queue ``commit`` and wait for its positions (or its error)."""
        if self._overlap(commit) is not None:
            await self._settle_known(commit)
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
                group, known = self._next_group()
                if known:
                    await asyncio.gather(*(self._settle_known(commit) for commit in known))
                if group:
                    await self._commit_group(group)
        except BaseException as error:  # e.g. the loop is shutting down: nobody waits forever
            for commit in self._queue:
                _fail(commit, error)
            self._queue.clear()
            raise

    def _next_group(self) -> tuple[list[Commit], list[Commit]]:
        """The next group, and the queued commits known to collide with stored sequences."""
        group: list[Commit] = []
        known: list[Commit] = []
        later: list[Commit] = []
        keys: set[tuple[str, str]] = set()
        size = 0
        for commit in self._queue:
            if commit.done.done():  # cancelled by its caller
                continue
            if self._overlap(commit) is not None:
                known.append(commit)
            elif commit.key in keys or (
                group and size + len(commit.documents) > MAX_GROUP_DOCUMENTS
            ):
                later.append(commit)
            else:
                group.append(commit)
                keys.add(commit.key)
                size += len(commit.documents)
        self._queue = later
        return group, known

    # -- what this process knows it stored ---------------------------------------------------

    def saw(self, key: tuple[str, str], sequence: int) -> None:
        """Remember that aggregate ``key``'s ``sequence`` is stored (a reader saw it)."""
        self._extend(key, sequence, sequence)

    def _remember(self, commit: Commit) -> None:
        """Record the sequences ``commit`` stored."""
        self._extend(commit.key, commit.first, commit.last)

    def _extend(self, key: tuple[str, str], first: int, last: int) -> None:
        """Record that ``first`` to ``last`` are stored, extending the aggregate's known
        range when they touch it (else they replace it)."""
        known = self._stored.pop(key, None)
        if known is not None and known[0] <= first <= known[1] + 1:
            first, last = known[0], max(last, known[1])
        self._stored[key] = (first, last)
        if len(self._stored) > REMEMBERED_AGGREGATES:
            self._stored.popitem(last=False)

    def _knows(self, key: tuple[str, str], sequence: int) -> bool:
        known = self._stored.get(key)
        return known is not None and known[0] <= sequence <= known[1]

    def _overlap(self, commit: Commit) -> int | None:
        """The first of ``commit``'s sequences this process knows is stored, if any."""
        known = self._stored.get(commit.key)
        if known is None or commit.first > known[1] or commit.last < known[0]:
            return None
        return max(commit.first, known[0])

    # -- reading back --------------------------------------------------------------------------

    async def _settle(self, commits: Sequence[Commit]) -> list[Commit]:
        """Read back the stored events at each commit's sequences (concurrently, outside any
        transaction): a commit whose event ids are stored there gets their positions. Return
        the others; a commit whose read fails gets that error."""
        stored = await asyncio.gather(*(self._stored_at(commit) for commit in commits))
        rest = []
        for commit, rows in zip(commits, stored, strict=True):
            positions = None if rows is None else stored_positions(commit.events, rows)
            if positions is not None:
                if not commit.done.done():
                    commit.done.set_result(positions)
                self._remember(commit)
            elif rows is not None:
                rest.append(commit)
        return rest

    async def _stored_at(self, commit: Commit) -> list[SerializedEvent] | None:
        """The stored events at ``commit``'s sequences, or None (and ``commit`` failed) if
        they cannot be read."""
        query = _at(commit, {"$gte": commit.first, "$lte": commit.last})
        try:
            documents = await self._events.find(query, sort=[("sequence", 1)]).to_list()
            return [event_from_document(document) for document in documents]
        except (PyMongoError, BSONError) as error:
            _fail(commit, translate(error, commit.doing), error)
        except CqrsError as error:  # a stored event that does not decode
            _fail(commit, error)
        return None

    async def _settle_known(self, commit: Commit) -> None:
        """Settle a commit that overlaps sequences this process stored, without a
        transaction: a retry of a stored commit succeeds, anything else is a conflict."""
        sequence = self._overlap(commit)
        for rest in await self._settle([commit]):
            msg = (
                f"conflict while {rest.doing}: sequence {sequence} is already stored "
                "(another writer committed first)"
            )
            _fail(rest, AggregateConflict(msg))

    # -- transactions --------------------------------------------------------------------------

    async def _commit_group(self, group: list[Commit], *, retried: bool = False) -> None:
        while group:
            try:
                started, gapped = await self._transaction(group)
            except (PyMongoError, BSONError) as error:
                if _outcome_unknown(error) and not retried:
                    retried = True  # the next outcome that is unknown fails the group
                    group = await self._settle(group)
                    continue
                group = await self._after_error(group, error, retried=retried)
                continue
            except BaseException as error:
                for commit in group:
                    _fail(commit, error)
                raise
            for commit in gapped:
                msg = (
                    f"conflict while {commit.doing}: sequence {commit.first - 1} is not "
                    f"stored, so sequence {commit.first} would leave a gap (the aggregate is "
                    "behind what this writer expects)"
                )
                _fail(commit, AggregateConflict(msg))
            for commit, start in started:
                if not commit.done.done():
                    commit.done.set_result(list(range(start, start + len(commit.documents))))
                self._remember(commit)
            return

    async def _after_error(
        self, group: list[Commit], error: PyMongoError | BSONError, *, retried: bool
    ) -> list[Commit]:
        """Give the failed commits their outcomes; return the commits to retry together."""
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
            for commit in await self._settle([culprit]):  # stored by an earlier try?
                _fail(commit, translate(error, commit.doing), error)
            return [commit for commit in group if commit is not culprit]
        if len(group) == 1 or _outcome_unknown(error):
            for commit in group:
                _fail(commit, translate(error, commit.doing), error)
            return []
        for commit in group:
            await self._commit_group([commit], retried=retried)
        return []

    async def _gapped(self, group: Sequence[Commit], session: AsyncClientSession) -> list[Commit]:
        """The commits whose previous sequence is not stored (not read for aggregates whose
        previous sequence this process stored)."""
        gapped = []
        for commit in group:
            if commit.first == 1 or self._knows(commit.key, commit.first - 1):
                continue
            previous = await self._events.find_one(
                _at(commit, commit.first - 1), {"_id": 1}, session=session
            )
            if previous is None:
                gapped.append(commit)
        return gapped

    async def _transaction(
        self, group: Sequence[Commit]
    ) -> tuple[list[tuple[Commit, int]], list[Commit]]:
        """Commit the group's commits that follow their stored sequences; return each one
        with its first position, and the commits that would leave a gap."""

        async def attempt(
            session: AsyncClientSession,
        ) -> tuple[list[tuple[Commit, int]], list[Commit]]:
            # Re-run from scratch on a transient error (a write conflict on the counter);
            # a duplicate key is not transient, so it leaves the helper at once.
            gapped = await self._gapped(group, session)
            live = [commit for commit in group if commit not in gapped]
            documents = [document for commit in live for document in commit.documents]
            if not documents:
                return [], gapped
            total = len(documents)
            counter = await self._counters.find_one_and_update(
                {"_id": self._counter_id},
                {"$inc": {"position": total}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            assert counter is not None  # noqa: S101 - upsert with AFTER returns the document
            position: int = counter["position"] - total + 1
            started = []
            for commit in live:
                started.append((commit, position))
                for document in commit.documents:
                    document["_id"] = position
                    position += 1
            await self._events.insert_many(documents, session=session)
            snapshots = [commit.snapshot for commit in live if commit.snapshot is not None]
            if snapshots:
                await self._snapshots.bulk_write(snapshots, session=session)
            return started, gapped

        # The helper retries transient errors (write conflicts, a lost connection) for up to
        # 120 s; bound that by the client's timeoutMS, else its serverSelectionTimeoutMS, so
        # an outage fails the commit with DatabaseConnectionError within the time the driver
        # would wait for a server anyway, and a restart within it is survived.
        client = self._events.database.client
        with pymongo.timeout(client.options.timeout or client.options.server_selection_timeout):
            async with client.start_session() as session:
                return await session.with_transaction(attempt)


def _at(commit: Commit, sequence: object) -> Document:
    """A filter for ``commit``'s aggregate's events whose sequence matches ``sequence`` (a
    value or an operator document): served by the unique index."""
    return {"aggregate_type": commit.key[0], "aggregate_id": commit.key[1], "sequence": sequence}


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
    commit result): its commits must be read back before anything is retried or reported,
    else a stored commit would be reported as a conflict with itself."""
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
