"""Checkpoints and leases: where each projection is, and which runner may move it.

A checkpoint is one integer per projection: the global position of the last event whose
effect is stored. A lease says which runner (``owner``) runs the projection until when;
every time a lease changes hands (or is taken again after it expired) its fencing
``token`` grows, and a checkpoint is written only under the current token. A runner that
was paused past its lease and resumes can therefore never write over the runner that took
over: its write raises :class:`~cqrs.errors.LeaseLost`.

Backends keep checkpoints and leases in the events' database (a table or collection next
to the events, from the repository's ``checkpoint_store()``); :class:`MemoryCheckpoints`
keeps them in process memory and is the reference every backend behaves like.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cqrs.errors import AggregateConflict, LeaseLost
from cqrs.repository import SerializedEvent, ViewRepository, validate_identifier

__all__ = [
    "CheckpointStore",
    "Lease",
    "MemoryCheckpoints",
    "ParkedEvent",
    "ViewCheckpointStore",
    "ViewWrite",
    "check_lease_name",
    "lease_lost",
    "view_conflict",
]


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


@dataclass(frozen=True, slots=True)
class ViewWrite:
    """One view change of a batch: store ``payload`` (the codec's JSON) as view ``view_id``
    at ``version`` if its stored version is still ``expected`` (0: no view is stored yet)."""

    view_id: str
    payload: bytes
    version: int
    expected: int


def check_lease_name(name: object, what: str = "projection name") -> str:
    """Return ``name`` if it is a usable projection (or owner) name: a non-empty string of at
    most 200 characters without NUL; else raise ValueError naming it."""
    if not isinstance(name, str) or not name or len(name) > 200 or "\x00" in name:  # noqa: PLR2004 - the documented limit
        msg = f"{what} must be a non-empty string of at most 200 characters, not {name!r}"
        raise ValueError(msg)
    return name


# mutmut adds its mutants to a class as methods, which a runtime-checkable protocol would
# require of every implementation (isinstance(store, ViewCheckpointStore) became False).
class CheckpointStore(Protocol):  # pragma: no mutate block
    """Stores checkpoints, leases and parked events of projections.

    Rules every implementation keeps (the conformance suite checks them):

    - **Leases.** :meth:`acquire` gives the lease of a projection to ``owner`` if nobody
      holds it (never taken, released, or ended by :meth:`reset`), if it expired (``ttl``
      seconds passed since it was taken or last renewed), or if ``owner`` holds it already;
      otherwise it returns None and changes nothing. Of several clients acquiring at once,
      in any processes, exactly one wins a lease nobody holds.
    - **Fencing tokens.** Each successful acquire returns a token greater than every token
      given before for that name, and the token changes only then and at :meth:`reset`.
      A lease is *current* while its token is the stored one: release and expiry do not
      change the token, so a runner whose lease expired keeps writing until someone else
      takes the projection.
    - **Checkpoints.** :meth:`save` under a current lease stores the greater of the stored
      and the given position (positions never go back; only :meth:`reset` moves one back);
      under a lease that is not current it raises LeaseLost and changes nothing. So does
      :meth:`park`.
    - :meth:`renew` extends a current lease that was not released by ``ttl`` seconds from
      now (True), else returns False and changes nothing; :meth:`release` ends a current
      lease (nothing happens otherwise) so another runner can take over at once.
    - :meth:`reset` sets the checkpoint, ends any lease and makes its token stale: the
      holder's next save, park or renew fails, and the next runner starts from there.
    - :meth:`park` records an event by its position: parking the same position again
      replaces the record (a runner that takes over and fails again lists it once).
    - Every operation is atomic (one statement or one transaction), and projection and
      owner names are checked with :func:`check_lease_name` (ValueError) before any I/O.
    - **Clocks.** ``ttl`` is in seconds of the store's clock: process time in memory, the
      database server's clock where leases are compared on the server, else the wall clock
      of the machines running the runners (which must then agree to well within a ttl).
    - :meth:`create_schema` is idempotent and safe when several processes run it at once;
      a store from a repository raises NotOpenError while that repository is not open.
    """

    async def create_schema(self) -> None:
        """Create the tables/collections (idempotent, safe when run concurrently)."""
        ...

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease of projection ``name`` for ``ttl`` seconds, or None if another
        owner holds an unexpired one."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend ``lease`` by ``ttl`` seconds from now; False if it was taken over, reset
        or released."""
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
        """Set the checkpoint of ``name`` (to rebuild it, or to skip ahead) and end its
        lease, fencing the runner holding it, so the next runner starts from ``position``."""
        ...

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set ``event`` aside for ``lease``'s projection with ``error`` (replacing a record
        of the same position); raise LeaseLost if another runner took the lease."""
        ...

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The events parked by projection ``name``, by position."""
        ...


@runtime_checkable
class ViewCheckpointStore(CheckpointStore, Protocol):  # pragma: no mutate block
    """A :class:`CheckpointStore` that also writes the views of its own database, so a batch's
    view changes and its checkpoint commit in one transaction (exactly-once effect, one
    commit per batch). Backends with same-database views implement it; the generic part (what
    to write) is :class:`~cqrs.projection.ViewProjection`'s.

    - :meth:`shares_database` says whether a view repository lives in this store's database,
      on its connections; the other methods take only such repositories (ValueError else).
    - :meth:`save_with_views` is one transaction: it checks ``lease`` is current and raises
      the checkpoint exactly like :meth:`~CheckpointStore.save` (LeaseLost, nothing stored,
      if it is not), and stores every write only if that view's stored version is still the
      write's ``expected`` one; if any is not, nothing at all is stored and it raises
      AggregateConflict naming the view (see :func:`view_conflict`). The fencing check
      holds the projection's record until the commit, so a runner taking the lease over
      meanwhile waits for it or makes it fail.
    - :meth:`reset_with_views` is one transaction doing :meth:`~CheckpointStore.reset` and
      deleting every view of ``views``: a plain rebuild from ``position`` (normally 0).
    """

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True if ``views`` is stored in this store's database, on its connections."""
        ...

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored ``(payload, version)`` of the views of ``view_ids`` that exist, by id, in
        one read, as stored (the caller checks that they are JSON and a positive int)."""
        ...

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Store ``writes`` into ``views`` and ``position`` as the checkpoint, in one
        transaction, or nothing (LeaseLost or AggregateConflict)."""
        ...

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Delete every view of ``views`` and reset ``name`` to ``position``, in one
        transaction."""
        ...


def view_conflict(views: ViewRepository[Any], write: ViewWrite) -> AggregateConflict:
    """The error :meth:`ViewCheckpointStore.save_with_views` raises when ``write`` was refused
    because its view's stored version is no longer ``write.expected``."""
    where = f"view {write.view_id!r} in {getattr(views, 'table', views)}"
    if write.expected == 0:
        return AggregateConflict(f"{where} was stored by another writer first (none was loaded)")
    return AggregateConflict(f"{where} is no longer at version {write.expected}")


@dataclass(slots=True)
class _Row:
    position: int = 0
    owner: str = ""
    token: int = 0
    until: float = 0.0


class MemoryCheckpoints:
    """A :class:`CheckpointStore` in process memory, the reference implementation of its
    rules; every method is atomic on the event loop. ``clock`` gives seconds (monotonic by
    default). ``shared``: another MemoryCheckpoints whose data this one uses (how the
    in-memory backend gives repositories on one database the same checkpoints)."""

    def __init__(
        self,
        table: str = "projections",
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: MemoryCheckpoints | None = None,
    ) -> None:
        self.table = validate_identifier(table)
        self._clock = clock
        self._rows: dict[str, _Row] = {} if shared is None else shared._rows  # noqa: SLF001
        self._parked: dict[str, dict[int, ParkedEvent]] = (
            {} if shared is None else shared._parked  # noqa: SLF001 - same class
        )

    def _check_open(self) -> None:
        """Raise NotOpenError when the store cannot be used now (never, by default)."""

    async def create_schema(self) -> None:
        """Nothing to create."""
        self._check_open()

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        self._check_open()
        row = self._rows.setdefault(name, _Row())
        now = self._clock()
        if row.owner and row.owner != owner and row.until > now:
            return None
        row.owner, row.token, row.until = owner, row.token + 1, now + ttl
        return Lease(name, owner, row.token, row.position)

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current and it was not released."""
        self._check_open()
        row = self._rows.get(lease.name)
        if row is None or row.token != lease.token or not row.owner:
            return False
        row.until = self._clock() + ttl
        return True

    async def release(self, lease: Lease) -> None:
        """End the lease if its token is current."""
        self._check_open()
        row = self._rows.get(lease.name)
        if row is not None and row.token == lease.token:
            row.owner, row.until = "", 0.0

    async def save(self, lease: Lease, position: int) -> None:
        """Store the checkpoint under a current token; raise LeaseLost otherwise."""
        self._check_open()
        row = self._current(lease)
        row.position = max(row.position, position)

    async def position(self, name: str) -> int:
        """The checkpoint (0 if never saved)."""
        check_lease_name(name)
        self._check_open()
        row = self._rows.get(name)
        return 0 if row is None else row.position

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease; the token moves on, fencing its holder."""
        check_lease_name(name)
        self._check_open()
        row = self._rows.setdefault(name, _Row())
        row.position, row.owner, row.until = position, "", 0.0
        row.token += 1

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token (replacing one of its position)."""
        self._check_open()
        self._current(lease)
        parked = ParkedEvent(lease.name, event.position, str(event.event_id), error)
        self._parked.setdefault(lease.name, {})[event.position] = parked

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        check_lease_name(name)
        self._check_open()
        return sorted(self._parked.get(name, {}).values(), key=lambda parked: parked.position)

    def _current(self, lease: Lease) -> _Row:
        row = self._rows.get(lease.name)
        if row is None or row.token != lease.token:
            raise lease_lost(lease, None if row is None else row.token)
        return row


def lease_lost(lease: Lease, current: int | None) -> LeaseLost:
    """The error a store raises when a write under ``lease`` is refused because the token is
    ``current`` now (None: the projection has no lease record)."""
    now = "no lease" if current is None else f"token {current}"
    msg = (
        f"projection {lease.name!r}: the lease of {lease.owner!r} (token {lease.token}) "
        f"was taken over ({now}); this runner must stop"
    )
    return LeaseLost(msg)
