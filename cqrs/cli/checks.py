"""``cqrs verify`` and ``cqrs stats``: read a whole store once and report on it.

Both read the global stream (:meth:`~cqrs.repository.PersistedEventRepository.stream_all_events`)
and then each aggregate's snapshot (``get_snapshot``), so they work on every backend through
the port; memory grows with the number of aggregates, not of events.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from cqrs.cli.capabilities import KnowsSize
from cqrs.repository import PersistedEventRepository, SerializedEvent, SerializedSnapshot

__all__ = [
    "PROBLEM_KINDS",
    "Problem",
    "StatsReport",
    "TypeStats",
    "VerifyReport",
    "collect_stats",
    "verify_store",
]

PROBLEM_KINDS = {
    "gap": "an aggregate's sequences skip a number (or do not start at 1)",
    "sequence order": "a sequence at or below one stored before it (a repeat, or out of order)",
    "position order": "a position not greater than the one before it in the stream",
    "payload": "a payload that is not JSON",
    "metadata": "metadata that is not a JSON object",
    "snapshot ahead": "a snapshot that includes sequences beyond the aggregate's last event",
    "snapshot payload": "a snapshot whose state is not JSON",
}
"""What :func:`verify_store` looks for, by the ``kind`` of a :class:`Problem`."""

_MAX_LISTED = 1000
_CONCURRENCY = 16

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Problem:
    """One piece of damage: its kind (a key of :data:`PROBLEM_KINDS`), where it is, and
    what was found."""

    kind: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    position: int
    detail: str

    def as_dict(self) -> dict[str, object]:
        """The problem as plain data (for ``--json``)."""
        return {
            "kind": self.kind,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "sequence": self.sequence,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    """What :func:`verify_store` read and found; ``problems`` lists the first 1,000,
    ``counts`` counts them all by kind."""

    events: int = 0
    aggregates: int = 0
    snapshots: int = 0
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.counts

    def add(self, problem: Problem) -> None:
        """Record ``problem``."""
        self.counts[problem.kind] += 1
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, object]:
        """The report as plain data (for ``--json``)."""
        return {
            "ok": self.ok,
            "events": self.events,
            "aggregates": self.aggregates,
            "snapshots": self.snapshots,
            "counts": {kind: self.counts[kind] for kind in PROBLEM_KINDS if self.counts[kind]},
            "problems": [problem.as_dict() for problem in self.problems],
        }


_decoder = msgspec.json.Decoder()


def _json(data: bytes | str) -> object:
    return _decoder.decode(data)


async def verify_store(
    repository: PersistedEventRepository,
    aggregate_type: str | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every event (of ``aggregate_type``, or all) and each aggregate's snapshot:
    gapless sequences from 1 per aggregate in position order, positions strictly growing,
    payloads JSON, metadata JSON objects, snapshots not ahead of their events and JSON."""
    report = VerifyReport()
    last: dict[tuple[str, str], int] = {}
    previous = None
    batch = 0
    async for event in repository.stream_all_events(aggregate_type):
        report.events += 1
        _check_event(report, event, last, previous)
        previous = event.position
        batch += 1
        if progress is not None and batch == 1000:  # noqa: PLR2004 - progress granularity
            progress(batch)
            batch = 0
    if progress is not None and batch:
        progress(batch)
    report.aggregates = len(last)
    for key, snapshot in await _snapshots(repository, last):
        if snapshot is None:
            continue
        report.snapshots += 1
        _check_snapshot(report, snapshot, last[key])
    return report


def _check_event(
    report: VerifyReport,
    event: SerializedEvent,
    last: dict[tuple[str, str], int],
    previous: int | None,
) -> None:
    key = (event.aggregate_type, event.aggregate_id)
    where = (event.aggregate_type, event.aggregate_id, event.sequence, event.position)
    if previous is not None and event.position <= previous:
        report.add(
            Problem("position order", *where, f"position {event.position} follows {previous}")
        )
    before = last.get(key, 0)
    if event.sequence <= before:
        detail = f"sequence {event.sequence} comes after sequence {before} in the stream"
        report.add(Problem("sequence order", *where, detail))
    else:
        if event.sequence != before + 1:
            missing = (
                f"{before + 1}"
                if event.sequence == before + 2
                else f"{before + 1}..{event.sequence - 1}"
            )
            report.add(Problem("gap", *where, f"sequence(s) {missing} missing"))
        last[key] = event.sequence
    try:
        _json(event.payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        report.add(Problem("payload", *where, f"not JSON: {error}"))
    try:
        metadata = _json(event.metadata)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        report.add(Problem("metadata", *where, f"not JSON: {error}"))
    else:
        if not isinstance(metadata, dict):
            report.add(Problem("metadata", *where, f"a JSON {type(metadata).__name__}"))


def _check_snapshot(report: VerifyReport, snapshot: SerializedSnapshot, last: int) -> None:
    where = (snapshot.aggregate_type, snapshot.aggregate_id, snapshot.last_sequence, 0)
    if snapshot.last_sequence > last:
        detail = f"snapshot at sequence {snapshot.last_sequence}, last event {last}"
        report.add(Problem("snapshot ahead", *where, detail))
    try:
        _json(snapshot.payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        report.add(Problem("snapshot payload", *where, f"not JSON: {error}"))


async def _snapshots(
    repository: PersistedEventRepository, keys: Iterable[tuple[str, str]]
) -> list[tuple[tuple[str, str], SerializedSnapshot | None]]:
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(key: tuple[str, str]) -> tuple[tuple[str, str], SerializedSnapshot | None]:
        async with limit:
            return key, await repository.get_snapshot(*key)

    return list(await asyncio.gather(*(one(key) for key in keys)))


@dataclass
class TypeStats:
    """Counts of one aggregate type."""

    events: int = 0
    aggregates: int = 0
    snapshots: int = 0
    first_position: int = 0
    last_position: int = 0


@dataclass
class StatsReport:
    """What :func:`collect_stats` counted; ``size`` is None when the backend cannot tell."""

    types: dict[str, TypeStats] = field(default_factory=dict)
    head: int = 0
    size: int | None = None

    @property
    def events(self) -> int:
        """Events of every type."""
        return sum(stats.events for stats in self.types.values())

    def as_dict(self) -> dict[str, object]:
        """The report as plain data (for ``--json``)."""
        return {
            "events": self.events,
            "aggregates": sum(stats.aggregates for stats in self.types.values()),
            "snapshots": sum(stats.snapshots for stats in self.types.values()),
            "head_position": self.head,
            "size_bytes": self.size,
            "types": {
                name: {
                    "events": stats.events,
                    "aggregates": stats.aggregates,
                    "snapshots": stats.snapshots,
                    "first_position": stats.first_position,
                    "last_position": stats.last_position,
                }
                for name, stats in sorted(self.types.items())
            },
        }


async def collect_stats(
    repository: PersistedEventRepository, progress: Progress | None = None
) -> StatsReport:
    """Events, aggregates and snapshots per type, the head position and (where the backend
    can tell, see :mod:`cqrs.cli.capabilities`) the size on disk."""
    report = StatsReport()
    aggregates: set[tuple[str, str]] = set()
    batch = 0
    async for event in repository.stream_all_events(None):
        stats = report.types.get(event.aggregate_type)
        if stats is None:
            stats = report.types[event.aggregate_type] = TypeStats(first_position=event.position)
        stats.events += 1
        stats.last_position = event.position
        aggregates.add((event.aggregate_type, event.aggregate_id))
        report.head = event.position
        batch += 1
        if progress is not None and batch == 1000:  # noqa: PLR2004 - progress granularity
            progress(batch)
            batch = 0
    if progress is not None and batch:
        progress(batch)
    for key, snapshot in await _snapshots(repository, aggregates):
        stats = report.types[key[0]]
        stats.aggregates += 1
        stats.snapshots += snapshot is not None
    if isinstance(repository, KnowsSize):
        report.size = await repository.storage_size()
    return report
