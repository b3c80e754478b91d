"""Checkpoints and leases: where each projection is, and which runner may move it.

A checkpoint is one integer per projection: the global position of the last event whose
effect is stored. A lease says which runner (``owner``) runs the projection until when;
every time a lease changes hands (or is taken again after it expired) its fencing
``token`` grows, and a checkpoint is written only under the current token. A runner that
was paused past its lease and resumes can therefore never write over the runner that took
over: its write raises :class:`~cqrs.errors.LeaseLost`.

Backends keep checkpoints and leases in the events' database (a table or collection next
to the events); :class:`MemoryCheckpoints` keeps them in process memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cqrs.errors import LeaseLost
from cqrs.repository import SerializedEvent, validate_identifier

__all__ = ["CheckpointStore", "Lease", "MemoryCheckpoints", "ParkedEvent", "check_lease_name"]


@dataclass(frozen=True, slots=True)
class Lease:
    """The right of ``owner`` to run projection ``name``, fenced by ``token``.

    ``position`` is the checkpoint when the lease was taken (0 for a new projection)."""

    name: str
    owner: str
    token: int
    position: int


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event a projection kept failing on, set aside with the error it raised."""

    name: str
    position: int
    event_id: str
    error: str


def check_lease_name(name: object, what: str = "projection name") -> str:
    """Return ``name`` if it is a usable projection (or owner) name: a non-empty string of at
    most 200 characters without NUL; else raise ValueError naming it."""
    if not isinstance(name, str) or not name or len(name) > 200 or "\x00" in name:  # noqa: PLR2004 - the documented limit
        msg = f"{what} must be a non-empty string of at most 200 characters, not {name!r}"
        raise ValueError(msg)
    return name


class CheckpointStore(Protocol):
    """Stores checkpoints, leases and parked events of projections.

    Rules every implementation keeps (the conformance suite checks them):

    - :meth:`acquire` gives the lease to ``owner`` if nobody holds it, if it expired, or if
      ``owner`` already holds it; each successful acquire returns a token greater than any
      given before for that name. Otherwise it returns None.
    - :meth:`save` stores the position only if the lease's token is still the current one,
      else raises LeaseLost; positions never go back.
    - :meth:`renew` extends the lease by ``ttl`` seconds if its token is current (False
      otherwise); :meth:`release` lets another runner take over at once.
    """

    async def create_schema(self) -> None:
        """Create the table/collection (idempotent)."""
        ...

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease of projection ``name`` for ``ttl`` seconds, or None if another
        owner holds an unexpired one."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend ``lease`` by ``ttl`` seconds from now; False if it was taken over."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` up (nothing happens if it was taken over already)."""
        ...

    async def save(self, lease: Lease, position: int) -> None:
        """Store ``position`` as the checkpoint under ``lease``; raise LeaseLost if another
        runner took the lease."""
        ...

    async def position(self, name: str) -> int:
        """The checkpoint of ``name`` (0 if it never ran)."""
        ...

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint of ``name`` (to rebuild it) and end its lease, so the next
        runner starts from ``position``."""
        ...

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set ``event`` aside for ``lease``'s projection with ``error``; raise LeaseLost if
        another runner took the lease."""
        ...

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The events parked by projection ``name``, by position."""
        ...


@dataclass(slots=True)
class _Row:
    position: int = 0
    owner: str = ""
    token: int = 0
    until: float = 0.0


class MemoryCheckpoints:
    """A :class:`CheckpointStore` in process memory (the in-memory backend's); every method
    is atomic on the event loop. ``clock`` gives seconds (monotonic by default)."""

    def __init__(
        self, table: str = "projections", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.table = validate_identifier(table)
        self._clock = clock
        self._rows: dict[str, _Row] = {}
        self._parked: dict[str, list[ParkedEvent]] = {}

    async def create_schema(self) -> None:
        """Nothing to create."""

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        row = self._rows.setdefault(name, _Row())
        now = self._clock()
        if row.owner and row.owner != owner and row.until > now:
            return None
        row.owner, row.token, row.until = owner, row.token + 1, now + ttl
        return Lease(name, owner, row.token, row.position)

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current."""
        row = self._rows.get(lease.name)
        if row is None or row.token != lease.token:
            return False
        row.until = self._clock() + ttl
        return True

    async def release(self, lease: Lease) -> None:
        """End the lease if its token is current."""
        row = self._rows.get(lease.name)
        if row is not None and row.token == lease.token:
            row.owner, row.until = "", 0.0

    async def save(self, lease: Lease, position: int) -> None:
        """Store the checkpoint under a current token; raise LeaseLost otherwise."""
        row = self._current(lease)
        row.position = max(row.position, position)

    async def position(self, name: str) -> int:
        """The checkpoint (0 if never saved)."""
        row = self._rows.get(name)
        return 0 if row is None else row.position

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease (the token still grows at the next acquire)."""
        row = self._rows.setdefault(check_lease_name(name), _Row())
        row.position, row.owner, row.until = position, "", 0.0
        row.token += 1

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token."""
        self._current(lease)
        parked = ParkedEvent(lease.name, event.position, str(event.event_id), error)
        self._parked.setdefault(lease.name, []).append(parked)

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        return sorted(self._parked.get(name, ()), key=lambda parked: parked.position)

    def _current(self, lease: Lease) -> _Row:
        row = self._rows.get(lease.name)
        if row is None or row.token != lease.token:
            current = 0 if row is None else row.token
            msg = (
                f"projection {lease.name!r}: the lease of {lease.owner!r} (token {lease.token}) "
                f"was taken over (token {current}); this runner must stop"
            )
            raise LeaseLost(msg)
        return row
