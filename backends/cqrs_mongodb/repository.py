"""The MongoDB event repository.

Layout, per events collection:

- one document per event: ``_id`` is the global position; ``aggregate_type``,
  ``aggregate_id``, ``sequence``, ``event_type``, ``event_version``, ``payload`` and
  ``metadata`` (the codec's JSON text, stored as a string, so ``Decimal``, ``datetime`` and
  ``UUID`` values come back exactly as encoded), ``timestamp`` (a BSON date, which keeps
  milliseconds) with ``timestamp_us`` (the microseconds below the millisecond) and
  ``event_id`` (a UUID, BSON binary subtype 4). A unique index on
  ``(aggregate_type, aggregate_id, sequence)`` gives optimistic concurrency.
- one counter document in the counters collection, ``_id`` = the events collection's name,
  holding the last position given out.
- one snapshot document per aggregate in the snapshots collection (unique on
  ``(aggregate_type, aggregate_id)``) with ``last_sequence``, ``current_snapshot``,
  ``payload`` and ``timestamp``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from bson.errors import BSONError
from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from cqrs.codec import Codec, default_codec
from cqrs.repository import (
    AsyncResource,
    SerializedEvent,
    SerializedSnapshot,
    check_batch,
    check_page_size,
    not_open,
    read_pages,
    validate_identifier,
)
from cqrs_mongodb._documents import (
    SEQUENCE_KEY,
    event_document,
    event_from_document,
    snapshot_update,
)
from cqrs_mongodb._driver import (
    CODEC_OPTIONS,
    Document,
    check_transactions,
    database_from_url,
    resolve_database,
    translate,
    validate_database_name,
)
from cqrs_mongodb._group_commit import Commit, GroupCommitter
from cqrs_mongodb.checkpoints import MongoCheckpointStore
from cqrs_mongodb.views import MongoViewRepository
from cqrs_mongodb.wake_ups import ChangeStreamSupport, MongoWakeUps

__all__ = ["PAGE_SIZE", "MongoEventRepository", "from_url"]

V = TypeVar("V")

PAGE_SIZE = 500
"""The default ``page_size``: documents per page read by the ``stream_*`` methods."""

_DUPLICATE_KEY = 11000


class MongoEventRepository(AsyncResource):
    """Events and snapshots in MongoDB (a PersistedEventRepository).

    ``client_or_database`` is a ``pymongo.AsyncMongoClient`` (the database is ``database``,
    else the one named in the client's URL, else ``"cqrs"``), an ``AsyncDatabase``, or a
    ``mongodb://`` URL. The caller keeps ownership of a client passed in; for a URL the
    repository creates its own client in :meth:`open` and closes it in :meth:`close` (as
    :func:`from_url` does). Motor objects are rejected with a ConfigurationError saying to
    pass ``pymongo.AsyncMongoClient``.

    Each :meth:`persist` is one multi-document transaction, so the deployment must be a
    replica set (a single node is enough) or a sharded cluster; :meth:`open` checks this and
    raises ConfigurationError for a standalone server. Collection names are validated with
    :func:`cqrs.validate_identifier`. The ``stream_*`` methods read ``page_size`` documents
    per query. Used before :meth:`open` or after :meth:`close`, every method that reads or
    writes raises :class:`cqrs.NotOpenError` before any I/O (``view_repository`` only builds
    the view repository, which raises it when used).
    """

    def __init__(
        self,
        client_or_database: AsyncMongoClient[Any] | AsyncDatabase[Any] | str,
        *,
        database: str | None = None,
        events_collection: str = "events",
        snapshots_collection: str = "snapshots",
        counters_collection: str = "counters",
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.page_size = check_page_size(page_size)
        self.events_collection = validate_identifier(events_collection, "collection name")
        self.snapshots_collection = validate_identifier(snapshots_collection, "collection name")
        self.counters_collection = validate_identifier(counters_collection, "collection name")
        self._source: AsyncDatabase[Document] | str
        if isinstance(client_or_database, str):
            self._source = client_or_database
            self._database_name = (
                validate_database_name(database)
                if database is not None
                else database_from_url(client_or_database)
            )
        else:
            self._source = resolve_database(client_or_database, database)
            self._database_name = self._source.name
        self._client: AsyncMongoClient[Document] | None = None
        self._database: AsyncDatabase[Document] | None = None
        self._committer: GroupCommitter | None = None
        self._opening = asyncio.Lock()
        self._change_streams = ChangeStreamSupport()

    def with_collections(
        self,
        events: str | None = None,
        snapshots: str | None = None,
        counters: str | None = None,
    ) -> MongoEventRepository:
        """A new, unopened repository on the same client (or URL) and database, with these
        (validated) collection names; names not given are kept, and so is ``page_size``."""
        return MongoEventRepository(
            self._source,
            database=self._database_name,
            events_collection=self.events_collection if events is None else events,
            snapshots_collection=self.snapshots_collection if snapshots is None else snapshots,
            counters_collection=self.counters_collection if counters is None else counters,
            page_size=self.page_size,
        )

    def with_tables(self, events_table: str, snapshots_table: str) -> MongoEventRepository:
        """Same as :meth:`with_collections` (the name the other backends use)."""
        return self.with_collections(events_table, snapshots_table)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def database(self) -> AsyncDatabase[Document]:
        """The database in use; raises NotOpenError before :meth:`open` and after
        :meth:`close`."""
        if self._database is None:
            raise not_open(repr(self))
        return self._database

    async def open(self) -> None:
        """Connect (creating the client for a URL) and check that the deployment runs
        transactions. Idempotent. Raises ConfigurationError for a standalone server and
        DatabaseConnectionError when no server answers."""
        async with self._opening:
            if self._database is None:
                await self._open()

    async def _open(self) -> None:
        client: AsyncMongoClient[Document] | None = None
        try:
            if isinstance(self._source, str):
                client = AsyncMongoClient(self._source)
                database = client.get_database(self._database_name, codec_options=CODEC_OPTIONS)
            else:
                database = self._source
            await check_transactions(database)
        except BaseException as error:
            if client is not None:
                await client.close()
            if isinstance(error, PyMongoError | BSONError):
                raise translate(error, "connecting") from error
            raise
        self._client = client
        self._database = database
        self._committer = GroupCommitter(
            database.get_collection(self.counters_collection),
            self.events_collection,
            database.get_collection(self.events_collection),
            database.get_collection(self.snapshots_collection),
        )

    async def close(self) -> None:
        """Wait for the commits in flight, then close the client if this repository
        created it. Idempotent."""
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer.drain()
        client, self._client, self._database = self._client, None, None
        if client is not None:
            await client.close()

    def __repr__(self) -> str:
        return (
            f"MongoEventRepository(database={self._database_name!r}, "
            f"events={self.events_collection!r}, snapshots={self.snapshots_collection!r})"
        )

    def _collection(self, name: str) -> AsyncCollection[Document]:
        return self.database.get_collection(name)

    async def create_schema(self) -> None:
        """Create the indexes and the counter document. Idempotent; safe when several
        processes run it at once."""
        events = self._collection(self.events_collection)
        snapshots = self._collection(self.snapshots_collection)
        counters = self._collection(self.counters_collection)
        try:
            await events.create_index(SEQUENCE_KEY, unique=True, name="aggregate_sequence")
            await events.create_index(
                [("aggregate_type", ASCENDING), ("_id", ASCENDING)], name="type_position"
            )
            await snapshots.create_index(
                [("aggregate_type", ASCENDING), ("aggregate_id", ASCENDING)],
                unique=True,
                name="aggregate",
            )
            try:
                await counters.update_one(
                    {"_id": self.events_collection},
                    {"$setOnInsert": {"position": 0}},
                    upsert=True,
                )
            except OperationFailure as error:
                if error.code != _DUPLICATE_KEY:  # another process inserted it first
                    raise
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"creating the schema of {self!r}") from error

    # -- reading --------------------------------------------------------------------------

    async def get_events(self, aggregate_type: str, aggregate_id: str) -> list[SerializedEvent]:
        """All events of one aggregate, by sequence."""
        return self._seen(
            await self._find_events(
                {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id}
            )
        )

    async def get_last_events(
        self, aggregate_type: str, aggregate_id: str, after_sequence: int
    ) -> list[SerializedEvent]:
        """The events of one aggregate after ``after_sequence``, by sequence."""
        return self._seen(
            await self._find_events(
                {
                    "aggregate_type": aggregate_type,
                    "aggregate_id": aggregate_id,
                    "sequence": {"$gt": after_sequence},
                }
            )
        )

    def _seen(self, events: list[SerializedEvent]) -> list[SerializedEvent]:
        """Tell the committer the aggregate's last sequence is stored: a commit that follows
        it (the usual load, handle, commit) then needs no read to rule out a gap."""
        if events and self._committer is not None:
            last = events[-1]
            self._committer.saw((last.aggregate_type, last.aggregate_id), last.sequence)
        return events

    async def _find_events(
        self, query: Document, limit: int = 0, sort: str = "sequence", *, durable: bool = False
    ) -> list[SerializedEvent]:
        events = self._collection(self.events_collection)
        if durable:
            # Only majority-committed events: an event a reader has seen can never be rolled
            # back by a failover (and its position reused by another event).
            events = events.with_options(read_concern=ReadConcern("majority"))
        try:
            documents = await events.find(query, sort=[(sort, ASCENDING)], limit=limit).to_list()
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"reading events from {self.events_collection}") from error
        return [event_from_document(document) for document in documents]

    async def get_snapshot(
        self, aggregate_type: str, aggregate_id: str
    ) -> SerializedSnapshot | None:
        """The aggregate's snapshot, or None."""
        snapshots = self._collection(self.snapshots_collection)
        try:
            document = await snapshots.find_one(
                {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id}
            )
        except (PyMongoError, BSONError) as error:
            raise translate(
                error, f"reading a snapshot from {self.snapshots_collection}"
            ) from error
        if document is None:
            return None
        return SerializedSnapshot(
            aggregate_type,
            aggregate_id,
            document["payload"],
            document["last_sequence"],
            document["current_snapshot"],
        )

    async def stream_events(
        self, aggregate_type: str, aggregate_id: str
    ) -> AsyncIterator[SerializedEvent]:
        """The aggregate's events by sequence, read in pages of ``page_size`` (each page
        continues after the previous page's last sequence)."""
        size = self.page_size

        async def fetch(after: int) -> list[SerializedEvent]:
            query = {
                "aggregate_type": aggregate_type,
                "aggregate_id": aggregate_id,
                "sequence": {"$gt": after},
            }
            return await self._find_events(query, size)

        async for event in read_pages(fetch, 0, size, by_sequence=True):
            yield event

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        """Events in position order, read in windows of ``page_size`` documents with
        ``_id > last``. A position is taken in the transaction that commits it, and the
        counter document makes those transactions commit in position order, so a position
        never becomes visible after a higher one: a tailing reader cannot miss an event.
        Reads use the "majority" read concern, so what a reader has seen survives failover."""
        query: Document = {} if aggregate_type is None else {"aggregate_type": aggregate_type}
        size = self.page_size

        async def fetch(after: int) -> list[SerializedEvent]:
            return await self._find_events(
                {**query, "_id": {"$gt": after}}, size, "_id", durable=True
            )

        async for event in read_pages(fetch, after_position or 0, size):
            yield event

    # -- writing --------------------------------------------------------------------------

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        """Insert the events, take their positions from the counter document and write the
        snapshot, in one transaction. A batch that collides with stored sequences or does not
        follow the stored last sequence raises AggregateConflict and stores nothing, unless
        its event ids are stored at its sequences: then it returns their positions.
        Concurrent calls share transactions (see ``_group_commit``)."""
        check_batch(events)
        committer = self._committer
        if committer is None:
            raise not_open(repr(self))
        first, last = events[0], events[-1]
        commit = Commit(
            (first.aggregate_type, first.aggregate_id),
            events,
            [event_document(event) for event in events],
            None if snapshot is None else snapshot_update(snapshot),
            f"storing {first.aggregate_type} {first.aggregate_id!r} sequence "
            f"{first.sequence} to {last.sequence}",
        )
        return await committer.commit(commit)

    def wake_ups(self) -> MongoWakeUps:
        """A listener for commits to these events by any client (see
        :class:`cqrs.subscription.WakeUpSource`): a change stream on the events collection's
        counter document, from its first wait until it is closed; where the server refuses
        change streams, it only waits its timeouts (see :mod:`cqrs_mongodb.wake_ups`)."""
        return MongoWakeUps(
            lambda: self.database,
            self.counters_collection,
            self.events_collection,
            self._change_streams,
        )

    @staticmethod
    def snapshot_update(snapshot: SerializedSnapshot) -> UpdateOne:
        """The upsert :meth:`persist` sends with a snapshot (in the snapshots collection,
        replacing the stored one only if ``last_sequence`` grows), for tools that must send
        exactly what it sends."""
        return snapshot_update(snapshot)

    def view_repository(
        self, view_type: type[V], table: str, *, codec: Codec = default_codec
    ) -> MongoViewRepository[V]:
        """A view repository on this repository's client and database (usable once this
        repository is open)."""
        return MongoViewRepository(view_type, table, self, codec=codec)

    def checkpoint_store(self, table: str = "projections") -> MongoCheckpointStore:
        """The checkpoints, leases and parked events of projections in the collections
        ``table`` and ``<table>_parked`` of this repository's database, on its client
        (usable once this repository is open; call the store's ``create_schema()``)."""
        return MongoCheckpointStore(table, self)

    async def count_events(self, aggregate_type: str | None, after_position: int | None) -> int:
        """How many events of ``aggregate_type`` (every type for None) are stored after
        ``after_position``: an optional method for operator tools (``cqrs.cli.capabilities``),
        not part of the port."""
        query: Document = {"_id": {"$gt": after_position or 0}}
        if aggregate_type is not None:
            query["aggregate_type"] = aggregate_type
        try:
            return await self._collection(self.events_collection).count_documents(query)
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"counting events in {self.events_collection}") from error


def from_url(url: str, *, page_size: int = PAGE_SIZE) -> MongoEventRepository:
    """An unopened repository for ``mongodb://`` / ``mongodb+srv://`` URLs that creates its
    own ``AsyncMongoClient`` in ``open()`` and closes it in ``close()``. The database is the
    URL's path (``mongodb://host/mydb?replicaSet=rs0``), ``"cqrs"`` when there is none; the
    collections are ``events``, ``snapshots`` and ``counters``."""
    return MongoEventRepository(url, page_size=page_size)
