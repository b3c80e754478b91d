"""How an event travels on NATS: the message body and its headers.

The body is the event's payload as JSON (the codec's encoding of the current, upcast
version), or the payload of the integration event a mapper made of it. The headers:

- ``Nats-Msg-Id``: the event id (JetStream drops a second message with the same id within
  the stream's duplicate window);
- ``Cqrs-Event-Type``, ``Cqrs-Event-Version``: the event type and version (those of the
  integration event, when mapped);
- ``Cqrs-Aggregate-Type``, ``Cqrs-Aggregate-Id``: the aggregate, escaped as in
  :mod:`cqrs_nats.subjects`;
- ``Cqrs-Sequence``: the event's sequence in its aggregate (1-based);
- ``Cqrs-Position``: its global position in the event store;
- ``Cqrs-Timestamp``: when it was committed (ISO 8601, UTC);
- ``Cqrs-Metadata``: the event's metadata as a JSON object (absent when empty);
- ``traceparent``, ``tracestate``: the W3C trace context, copied from the event's metadata
  when it has these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from cqrs import DeserializationError, EventEnvelope, SerializedEvent
from cqrs_nats.subjects import escape_token, unescape_token

__all__ = ["HEADERS", "IntegrationEvent", "serialized_event"]

HEADERS = {
    "id": "Nats-Msg-Id",
    "type": "Cqrs-Event-Type",
    "version": "Cqrs-Event-Version",
    "aggregate_type": "Cqrs-Aggregate-Type",
    "aggregate_id": "Cqrs-Aggregate-Id",
    "sequence": "Cqrs-Sequence",
    "position": "Cqrs-Position",
    "timestamp": "Cqrs-Timestamp",
    "metadata": "Cqrs-Metadata",
}
"""The header names, by what they carry (see the module's table)."""

TRACE_KEYS = ("traceparent", "tracestate")

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class IntegrationEvent:
    """What a mapper publishes instead of a domain event: ``event_type`` and
    ``event_version`` name it for consumers, ``payload`` is encoded with the store's codec
    (bytes are sent as they are), and ``headers`` are added to the message (they may not
    replace the headers the publisher sets)."""

    event_type: str
    payload: Any
    event_version: str = "1.0"
    headers: Mapping[str, str] = field(default_factory=dict)


def headers_for(
    envelope: EventEnvelope[Any], event_type: str, event_version: str
) -> dict[str, str]:
    """The headers of the message of ``envelope`` (the module's table)."""
    headers = {
        "Nats-Msg-Id": str(envelope.event_id),
        "Cqrs-Event-Type": event_type,
        "Cqrs-Event-Version": event_version,
        "Cqrs-Aggregate-Type": escape_token(envelope.aggregate_type),
        "Cqrs-Aggregate-Id": escape_token(envelope.aggregate_id),
        "Cqrs-Sequence": str(envelope.sequence),
        "Cqrs-Position": str(envelope.position),
        "Cqrs-Timestamp": envelope.timestamp.isoformat(),
    }
    metadata = envelope.metadata
    if metadata:
        headers["Cqrs-Metadata"] = _json.encode(dict(metadata)).decode()
        for key in TRACE_KEYS:
            value = metadata.get(key)
            if value and "\r" not in value and "\n" not in value:
                headers[key] = value
    return headers


def serialized_event(data: bytes, headers: Mapping[str, str] | None) -> SerializedEvent:
    """The event a message carries, as a stored event a store decodes (``decode``): the
    same event id, sequence, position, metadata and timestamp as in the event store.
    Raise DeserializationError naming the missing or malformed header."""
    headers = headers or {}
    try:
        return SerializedEvent(
            unescape_token(headers["Cqrs-Aggregate-Type"]),
            unescape_token(headers["Cqrs-Aggregate-Id"]),
            int(headers["Cqrs-Sequence"]),
            headers["Cqrs-Event-Type"],
            headers["Cqrs-Event-Version"],
            data,
            headers.get("Cqrs-Metadata", "{}"),
            datetime.fromisoformat(headers["Cqrs-Timestamp"]),
            headers["Nats-Msg-Id"],
            int(headers["Cqrs-Position"]),
        )
    except KeyError as error:
        msg = f"a NATS message has no {error.args[0]!r} header: not an event of cqrs_nats"
        raise DeserializationError(msg) from error
    except ValueError as error:
        msg = f"a NATS message has a malformed header ({error}); headers: {dict(headers)}"
        raise DeserializationError(msg) from error
