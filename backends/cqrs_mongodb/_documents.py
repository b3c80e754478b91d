"""The document layout (described in :mod:`cqrs_mongodb.repository`): events to documents
and back, and the snapshot upsert."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING, UpdateOne

from cqrs.errors import DeserializationError
from cqrs.repository import SerializedEvent, SerializedSnapshot
from cqrs_mongodb._driver import Document

SEQUENCE_KEY = [("aggregate_type", ASCENDING), ("aggregate_id", ASCENDING), ("sequence", ASCENDING)]
"""The keys of the events collection's unique index (optimistic concurrency)."""


def _text(data: bytes | str) -> str | bytes:
    """JSON is stored as a string; bytes that are not UTF-8 are kept as BSON binary so
    the read side reports them as undecodable instead of failing the write."""
    if isinstance(data, str):
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def event_document(event: SerializedEvent) -> Document:
    """The document of ``event``; its ``_id`` (the position) is set at commit."""
    timestamp = event.timestamp
    return {
        "_id": 0,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "payload": _text(event.payload),
        "metadata": _text(event.metadata),
        "timestamp": timestamp,
        "timestamp_us": timestamp.microsecond % 1000,
        "event_id": event.event_id,
    }


def event_from_document(document: Document) -> SerializedEvent:
    """The stored event; DeserializationError naming its position if a field is missing."""
    try:
        timestamp: datetime = document["timestamp"]
        micros = document.get("timestamp_us", 0)
        if micros:
            timestamp = timestamp.replace(microsecond=timestamp.microsecond + micros)
        return SerializedEvent(
            document["aggregate_type"],
            document["aggregate_id"],
            document["sequence"],
            document["event_type"],
            document["event_version"],
            document["payload"],
            document["metadata"],
            timestamp,
            document["event_id"],
            document["_id"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        msg = f"event document at position {document.get('_id')!r} is malformed: {error!r}"
        raise DeserializationError(msg) from error


def snapshot_update(snapshot: SerializedSnapshot) -> UpdateOne:
    """Filter and pipeline for an upsert that replaces the stored snapshot only when the new
    one includes more events (one round trip, no read-then-write race)."""
    newer = {"$lt": [{"$ifNull": ["$last_sequence", -1]}, snapshot.last_sequence]}
    fields = {
        "last_sequence": snapshot.last_sequence,
        "current_snapshot": snapshot.snapshot_version,
        "payload": _text(snapshot.payload),
        "timestamp": datetime.now(UTC),
    }
    changes = {
        name: {"$cond": [newer, {"$literal": value}, f"${name}"]} for name, value in fields.items()
    }
    key = {"aggregate_type": snapshot.aggregate_type, "aggregate_id": snapshot.aggregate_id}
    return UpdateOne(key, [{"$set": changes}], upsert=True)
