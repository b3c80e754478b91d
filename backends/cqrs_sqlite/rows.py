"""Rows to events and back: the per-event work of a commit and of a load, in one pass."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from cqrs.repository import SerializedEvent

__all__ = ["all_rows", "event_rows", "stream_rows"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _format_timestamp(timestamp: datetime) -> str:
    aware = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    return aware.isoformat(sep=" ", timespec="microseconds")


def _parse_timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def event_rows(events: Sequence[SerializedEvent]) -> list[tuple[object, ...]]:
    """The INSERT parameters of a batch (checked by ``cqrs.repository.check_batch`` first)."""
    last_timestamp: datetime | None = None
    text = ""
    rows: list[tuple[object, ...]] = []
    for event in events:
        if event.timestamp is not last_timestamp:  # one commit shares one timestamp
            last_timestamp = event.timestamp
            text = _format_timestamp(last_timestamp)
        rows.append(
            (
                event.aggregate_type,
                event.aggregate_id,
                event.sequence,
                event.event_type,
                event.event_version,
                event.payload,
                event.metadata,
                text,
                str(event.event_id),
            )
        )
    return rows


def stream_rows(
    aggregate_type: str, aggregate_id: str, cursor: sqlite3.Cursor
) -> list[SerializedEvent]:
    """The events of one aggregate from a cursor over the 8 columns after aggregate_id."""
    # One pass from the cursor to the events; rows of one commit share a timestamp string.
    events = []
    last_text, timestamp = "", _EPOCH
    for sequence, event_type, version, payload, metadata, text, event_id, position in cursor:
        if text != last_text:
            last_text, timestamp = text, _parse_timestamp(text)
        events.append(
            SerializedEvent(
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                version,
                payload,
                metadata,
                timestamp,
                event_id,  # text: the store parses it only for envelopes
                position,
            )
        )
    return events


def all_rows(cursor: sqlite3.Cursor) -> list[SerializedEvent]:
    """Events of any aggregate from a cursor over all 10 columns."""
    events = []
    last_text, timestamp = "", _EPOCH
    for (
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        version,
        payload,
        metadata,
        text,
        event_id,
        position,
    ) in cursor:
        if text != last_text:
            last_text, timestamp = text, _parse_timestamp(text)
        events.append(
            SerializedEvent(
                aggregate_type,
                aggregate_id,
                sequence,
                event_type,
                version,
                payload,
                metadata,
                timestamp,
                event_id,  # text: the store parses it only for envelopes
                position,
            )
        )
    return events
