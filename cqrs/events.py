"""Domain events and the envelope they travel in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar, Generic, TypeVar
from uuid import UUID

import msgspec

__all__ = ["DomainEvent", "EventEnvelope", "event_type_of", "event_version_of"]

E_co = TypeVar("E_co", covariant=True)


class DomainEvent:
    """Optional base class for events: supplies ``event_type`` and ``event_version``.

    ``event_type`` defaults to the class name and ``event_version`` to ``"1.0"``; set either
    as a class attribute to override. Events should be immutable: frozen dataclasses,
    ``msgspec.Struct(frozen=True)`` or pydantic models. A class that does not inherit from
    ``DomainEvent`` gets the same defaults (see :func:`event_type_of`).
    """

    event_type: ClassVar[str]
    event_version: ClassVar[str] = "1.0"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


def event_type_of(event_class: type[object]) -> str:
    """The stored name of an event class: its ``event_type`` attribute, else its name."""
    value = getattr(event_class, "event_type", None)
    return value if isinstance(value, str) else event_class.__name__


def event_version_of(event_class: type[object]) -> str:
    """The current version of an event class: its ``event_version`` attribute, else "1.0"."""
    value = getattr(event_class, "event_version", None)
    return value if isinstance(value, str) else "1.0"


class EventEnvelope(msgspec.Struct, Generic[E_co], frozen=True, gc=False):
    """A committed event with everything known about it.

    - ``sequence`` is 1-based and gapless per aggregate.
    - ``position`` is the event's place in the global stream: it only grows along
      ``stream_all_events`` and no event at or below a position already seen appears later.
    - ``event_id`` is a random UUID fixed at commit, for idempotent consumers.
    - ``timestamp`` is the commit time (timezone-aware, UTC) as recorded by the framework.

    It is a frozen ``msgspec.Struct`` (cheap to build, compared by value, encodable).
    """

    aggregate_type: str
    aggregate_id: str
    sequence: int
    payload: E_co
    metadata: Mapping[str, str]
    timestamp: datetime
    event_id: UUID
    position: int
