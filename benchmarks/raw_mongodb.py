"""Raw MongoDB: the MongoDB backend's operations, directly on ``pymongo.AsyncMongoClient``.

Like the backend: one document per event (the JSON payload stored as a string), a load is
one ``find`` sorted by sequence, a commit is one transaction (``find_one_and_update`` of the
counter document, ``insert_many`` of the events, ``bulk_write`` of the snapshot upsert when
due) run by the driver's ``with_transaction``. The backend additionally groups concurrent
commits into one transaction; raw commits one transaction per command, so under
``concurrent_8`` raw is not an upper bound. The backend's read of a batch's previous
sequence (its gap check) is not run on these workloads: every command's aggregate was
stored or loaded by the same repository just before, which makes that read unnecessary, so
raw does not do it either. The collections and indexes are created by the
backend's ``create_schema``. Only run against a real ``mongod`` replica set
(``--mongodb-url``); test servers are not benchmarked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession

from benchmarks.raw import AGGREGATE_TYPE, METADATA, RawSide, Row, Snapshot, new_event_ids
from cqrs import SerializedSnapshot
from cqrs_mongodb import MongoEventRepository

__all__ = ["RawMongoSide", "framework_repository"]

Document = dict[str, Any]

_OPTIONS: CodecOptions[Document] = CodecOptions(
    document_class=dict, tz_aware=True, tzinfo=UTC, uuid_representation=UuidRepresentation.STANDARD
)


def framework_repository(url: str, prefix: str) -> MongoEventRepository:
    """The backend's repository on collections ``<prefix>_events``/``_snapshots``/``_counters``."""
    return MongoEventRepository(
        url,
        events_collection=f"{prefix}_events",
        snapshots_collection=f"{prefix}_snapshots",
        counters_collection=f"{prefix}_counters",
    )


class RawMongoSide(RawSide):
    """The raw side on collections named ``<prefix>_*`` of the URL's database."""

    def __init__(self, url: str, prefix: str, *, snapshot_every: int | None = None) -> None:
        super().__init__(snapshot_every=snapshot_every)
        self.url = url
        self.prefix = prefix
        self.client: AsyncMongoClient[Document] | None = None

    async def open(self) -> None:
        async with framework_repository(self.url, self.prefix) as schema:
            await schema.create_schema()
        self.client = AsyncMongoClient(self.url)
        database = self.client.get_default_database("cqrs", codec_options=_OPTIONS)
        self.events = database.get_collection(f"{self.prefix}_events")
        self.snapshots = database.get_collection(f"{self.prefix}_snapshots")
        self.counters = database.get_collection(f"{self.prefix}_counters")
        self.database = database

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    @staticmethod
    def _row(document: Document) -> Row:
        return (
            document["sequence"],
            document["event_type"],
            document["event_version"],
            document["payload"],
        )

    async def read_events(self, aggregate_id: str, after: int) -> list[Row]:
        query: Document = {"aggregate_type": AGGREGATE_TYPE, "aggregate_id": aggregate_id}
        if after:
            query["sequence"] = {"$gt": after}
        documents = await self.events.find(query, sort=[("sequence", ASCENDING)]).to_list()
        return [self._row(document) for document in documents]

    async def read_snapshot(self, aggregate_id: str) -> tuple[bytes | str, int, int] | None:
        document = await self.snapshots.find_one(
            {"aggregate_type": AGGREGATE_TYPE, "aggregate_id": aggregate_id}
        )
        if document is None:
            return None
        return document["payload"], document["last_sequence"], document["current_snapshot"]

    async def write_events(
        self,
        aggregate_id: str,
        version: int,
        events: Sequence[object],
        payloads: list[bytes],
        *,
        timestamp: datetime,
        snapshot: Snapshot | None,
    ) -> None:
        metadata = METADATA.decode()
        event_ids = new_event_ids(len(events))
        documents = [
            {
                "_id": 0,
                "aggregate_type": AGGREGATE_TYPE,
                "aggregate_id": aggregate_id,
                "sequence": version + index,
                "event_type": type(event).event_type,  # type: ignore[attr-defined]
                "event_version": type(event).event_version,  # type: ignore[attr-defined]
                "payload": payload.decode(),
                "metadata": metadata,
                "timestamp": timestamp,
                "timestamp_us": timestamp.microsecond % 1000,
                "event_id": event_id,
            }
            for index, (event, payload, event_id) in enumerate(
                zip(events, payloads, event_ids, strict=True), 1
            )
        ]
        upsert = (
            None
            if snapshot is None
            else MongoEventRepository.snapshot_update(  # the backend's own upsert
                SerializedSnapshot(
                    AGGREGATE_TYPE,
                    aggregate_id,
                    snapshot.payload,
                    snapshot.last_sequence,
                    snapshot.version,
                )
            )
        )
        total = len(documents)

        async def attempt(session: AsyncClientSession) -> None:
            counter = await self.counters.find_one_and_update(
                {"_id": f"{self.prefix}_events"},
                {"$inc": {"position": total}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            assert counter is not None  # noqa: S101 - upsert with AFTER returns it
            position: int = counter["position"] - total + 1
            for document in documents:
                document["_id"] = position
                position += 1
            await self.events.insert_many(documents, session=session)
            if upsert is not None:
                await self.snapshots.bulk_write([upsert], session=session)

        assert self.client is not None  # noqa: S101 - opened by the harness
        async with self.client.start_session() as session:
            await session.with_transaction(attempt)

    async def read_page(self, after: int, limit: int) -> list[Row]:
        documents = await self.events.find(
            {"aggregate_type": AGGREGATE_TYPE, "_id": {"$gt": after}},
            sort=[("_id", ASCENDING)],
            limit=limit,
        ).to_list()
        return [
            (
                document["aggregate_type"],
                document["aggregate_id"],
                document["sequence"],
                document["event_type"],
                document["event_version"],
                document["payload"],
                document["_id"],
            )
            for document in documents
        ]

    async def create_view_table(self, table: str) -> str:
        full = f"{self.prefix}_{table}"
        await self.database.create_collection(full, check_exists=False)
        return full

    async def read_view(self, table: str, view_id: str) -> tuple[bytes | str, int] | None:
        document = await self.database.get_collection(table).find_one({"_id": view_id})
        return None if document is None else (document["payload"], document["version"])

    async def write_view(
        self, table: str, view_id: str, payload: bytes, loaded: int, version: int
    ) -> None:
        collection = self.database.get_collection(table)
        text = payload.decode()
        if loaded == 0:
            await collection.insert_one({"_id": view_id, "version": version, "payload": text})
            return
        result = await collection.update_one(
            {"_id": view_id, "version": loaded},
            {"$set": {"version": version, "payload": text}},
        )
        if result.matched_count != 1:
            msg = f"view {view_id!r} changed"
            raise RuntimeError(msg)
