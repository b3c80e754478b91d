"""Helpers shared by the conformance tests (no backend names here)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

from cqrs import SerializedEvent, default_codec

T = TypeVar("T")

TYPE = "Thing"


def event(
    aggregate_id: str,
    sequence: int,
    *,
    aggregate_type: str = TYPE,
    event_type: str = "ThingHappened",
    event_version: str = "1.0",
    payload: object = None,
    metadata: dict[str, str] | None = None,
) -> SerializedEvent:
    body = {"n": sequence} if payload is None else payload
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version,
        default_codec.encode(body),
        default_codec.encode(metadata or {}),
        datetime.now(UTC),
        uuid.uuid4(),
    )


def batch(aggregate_id: str, first: int, count: int, **kwargs: object) -> list[SerializedEvent]:
    return [event(aggregate_id, first + i, **kwargs) for i in range(count)]  # type: ignore[arg-type]


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    return [item async for item in iterator]


def payloads(events: Sequence[SerializedEvent]) -> list[object]:
    return [default_codec.decode_untyped(e.payload) for e in events]


def amount(value: str) -> Decimal:
    return Decimal(value)
