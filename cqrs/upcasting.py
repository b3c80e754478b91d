"""Upcasters: turn stored events of an older version into the current shape on read.

Upcasters run on load, on streams and on replay, before decoding into the event class; the
stored rows are never rewritten. They work on the decoded JSON payload (plain dicts).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cqrs.errors import ConfigurationError

__all__ = ["EventUpcaster", "RawEvent", "SemanticVersionEventUpcaster", "parse_version"]

JsonObject = dict[str, Any]  # Any: a JSON payload holds arbitrary JSON values


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A stored event's name, version and decoded JSON payload, as upcasters see it."""

    event_type: str
    event_version: str
    payload: JsonObject


class EventUpcaster(Protocol):
    """Rewrites one kind of stored event into a newer shape.

    Upcasters given to a store are tried in list order, each once per event; an upcaster
    whose ``can_upcast`` is true is applied and the next sees its result, so a chain
    1.0 -> 1.1 -> 2.0 is two upcasters listed in that order.
    """

    def can_upcast(self, event_type: str, event_version: str) -> bool:
        """True if this upcaster applies to a stored event of this type and version."""
        ...

    def upcast(self, event: RawEvent) -> RawEvent:
        """Return the rewritten event (normally with a newer ``event_version``)."""
        ...


_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def parse_version(version: str) -> tuple[int, ...]:
    """Parse a version ("1", "1.2", "2.0.1": dotted non-negative integers) into the key it
    compares by; raise ValueError for anything else.

    Versions compare like semantic versions, part by part, with missing parts equal to
    zero: "2" == "2.0" == "2.0.0" < "2.0.1" < "2.1" < "10". The key is the parts with
    trailing zeros dropped ("2.0.0" -> ``(2,)``), so equal versions have equal keys and
    tuple order is version order.
    """
    if not _VERSION.fullmatch(version):
        msg = f"invalid event version {version!r}: expected dotted integers like '1.0'"
        raise ValueError(msg)
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


class SemanticVersionEventUpcaster:
    """Upcasts events named ``event_type`` whose version is older than ``event_version``.

    ``upcast_fn`` receives the old JSON payload (a dict) and returns the new one; the event's
    version becomes ``event_version``. Versions compare as semantic versions (see
    :func:`parse_version`): "1.10" > "1.9", and "2" == "2.0", so an upcaster to "2.0" never
    touches an event stored at "2". A stored version that does not parse is never upcast.
    """

    def __init__(
        self, event_type: str, event_version: str, upcast_fn: Callable[[JsonObject], JsonObject]
    ) -> None:
        try:
            self._version = parse_version(event_version)
        except ValueError as error:
            raise ConfigurationError(f"upcaster for {event_type!r}: {error}") from None
        self.event_type = event_type
        self.event_version = event_version
        self._upcast_fn = upcast_fn

    def can_upcast(self, event_type: str, event_version: str) -> bool:
        """True for ``event_type`` stored at a version strictly older than this upcaster's;
        false at an equal version however written ("2" and "2.0") and above it."""
        if event_type != self.event_type:
            return False
        try:
            return parse_version(event_version) < self._version
        except ValueError:
            return False

    def upcast(self, event: RawEvent) -> RawEvent:
        """Apply the function and stamp the new version."""
        return RawEvent(event.event_type, self.event_version, self._upcast_fn(event.payload))

    def __repr__(self) -> str:
        return f"SemanticVersionEventUpcaster({self.event_type!r}, {self.event_version!r})"


def check_upcaster_order(upcasters: Sequence[EventUpcaster]) -> None:
    """Raise ConfigurationError if two semantic-version upcasters of one event type are
    listed newest first (the older step would then never run before the newer one), or
    target the same version however written ("2" and "2.0": the second would never run)."""
    newest: dict[str, SemanticVersionEventUpcaster] = {}
    for upcaster in upcasters:
        if isinstance(upcaster, SemanticVersionEventUpcaster):
            seen = newest.get(upcaster.event_type)
            if seen is not None and seen._version >= upcaster._version:  # noqa: SLF001 - same module
                msg = (
                    f"upcasters for {upcaster.event_type!r} must be listed oldest first, "
                    f"one per version; {upcaster.event_version!r} comes after "
                    f"{seen.event_version!r}"
                )
                raise ConfigurationError(msg)
            newest[upcaster.event_type] = upcaster
