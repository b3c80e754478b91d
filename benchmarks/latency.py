"""Commit-to-delivery latency of subscriptions: pushed wake-ups against polling.

``python -m benchmarks.latency [--backends memory,sqlite,postgres] [--commits 100]
[--gap 0.02] [--poll 1.0] [--projection] [--json PATH]``

For each backend, a writer repository commits one event at a time and a
:class:`~cqrs.subscription.Subscription` on a second repository (another client on the same
store) follows the stream. A sample is the time from the return of ``persist`` to the
subscription yielding that event (0 if it came first); the next commit waits for that
delivery, then a pause of up to ``--gap`` seconds. Both modes use the same poll interval
(``--poll``); "poll" hides the repository's ``wake_ups`` so that only polling is left, and
adds up to one poll interval to each pause so that commits land at every phase of it.
PostgreSQL is measured with both notify modes. The table gives p50, p99 and the maximum in
milliseconds; ``--json`` writes the rows (backend, mode, commits, p50_ms, p99_ms, max_ms).
With ``--projection`` the events are delivered to a projection run by a
:class:`~cqrs.ProjectionRunner` on the reader instead (``run()``, the same wake-ups, a
checkpoint in the reader's database saved after each batch): commit-to-projection latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cqrs import EventEnvelope, PersistedEventRepository, ProjectionRunner, SerializedEvent
from cqrs.subscription import Subscription

if TYPE_CHECKING:
    from cqrs_postgres.repository import Notify

__all__ = ["Row", "main", "measure"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

Repositories = Callable[[], tuple[PersistedEventRepository, PersistedEventRepository]]
"""Makes a new, unopened (writer, reader) pair on one new store."""


@dataclass(frozen=True)
class Row:
    """The latencies of one backend and mode (``push``, ``push (in_transaction)`` or
    ``poll``), in milliseconds."""

    backend: str
    mode: str
    label: str
    commits: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class _WithoutPushes:
    """A repository's global stream without its ``wake_ups``: subscriptions on it poll."""

    def __init__(self, repository: PersistedEventRepository) -> None:
        self._repository = repository

    def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        return self._repository.stream_all_events(aggregate_type, after_position)


def _event(aggregate_id: str, sequence: int) -> SerializedEvent:
    return SerializedEvent(
        "Probe",
        aggregate_id,
        sequence,
        "Committed",
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class _Undecoded:
    """Hands the stored probe rows to the projection as they are (the latency measured is
    not in decoding)."""

    aggregate_type = "Probe"

    def decode(self, row: SerializedEvent) -> EventEnvelope[Any]:
        return cast("EventEnvelope[Any]", row)


class _Arrivals:
    """A projection noting when each event id is handed to it."""

    name = "latency"
    event_types = None
    sources = (_Undecoded(),)

    def __init__(self, arrived: dict[str, float], delivered: asyncio.Event) -> None:
        self.arrived, self.delivered = arrived, delivered

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        now = time.perf_counter()
        for envelope in events:
            self.arrived[str(envelope.event_id)] = now
        self.delivered.set()


async def measure(
    backend: str,
    mode: str,
    label: str,
    repositories: Repositories,
    *,
    commits: int,
    poll_interval: float,
    pause: float,
    push: bool = True,
    projection: bool = False,
) -> Row:
    """Commit ``commits`` events one by one through the writer and time their delivery to a
    subscription on the reader (see the module docstring); with ``projection``, to a
    projection run by a ``ProjectionRunner`` on the reader (checkpoints in the reader's
    database, saved after each batch) instead."""
    writer, reader = repositories()
    await writer.open()
    await writer.create_schema()
    await reader.open()
    source = reader if push else cast("PersistedEventRepository", _WithoutPushes(reader))
    subscription = Subscription(source, poll_interval=poll_interval)
    arrived: dict[str, float] = {}  # by event id (a UUID or its text, by backend)
    delivered = asyncio.Event()

    async def follow() -> None:
        async for row in subscription:
            arrived[str(row.event_id)] = time.perf_counter()
            delivered.set()

    if projection:
        checkpoints = reader.checkpoint_store(f"{getattr(reader, 'events_table', 'events')}_cp")
        await checkpoints.create_schema()
        runner = ProjectionRunner(
            source, checkpoints, [_Arrivals(arrived, delivered)], poll_interval=poll_interval
        )
        following = asyncio.create_task(runner.run())
    else:
        following = asyncio.create_task(follow())
    samples: list[float] = []
    try:
        await asyncio.sleep(0.2)  # the subscription has read the empty store and waits
        for sequence in range(1, commits + 1):
            await asyncio.sleep(random.uniform(0, pause))
            event = _event("probe", sequence)
            event_id = str(event.event_id)
            delivered.clear()
            await writer.persist([event], None)
            committed = time.perf_counter()
            while event_id not in arrived:
                await asyncio.wait_for(delivered.wait(), poll_interval * 3 + 10)
                delivered.clear()
            samples.append(max(0.0, arrived[event_id] - committed) * 1000)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await subscription.close()
        await reader.close()
        await writer.close()
    return Row(
        backend,
        mode,
        label,
        len(samples),
        round(statistics.median(samples), 2),
        round(_percentile(samples, 0.99), 2),
        round(max(samples), 2),
    )


def _memory() -> Repositories:
    from cqrs_memory import MemoryDatabase, MemoryEventRepository  # noqa: PLC0415

    def pair() -> tuple[PersistedEventRepository, PersistedEventRepository]:
        database = MemoryDatabase()
        return (
            MemoryEventRepository(database=database),
            MemoryEventRepository(database=database),
        )

    return pair


def _sqlite(directory: Path) -> Repositories:
    from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415

    def pair() -> tuple[PersistedEventRepository, PersistedEventRepository]:
        path = directory / f"latency-{secrets.token_hex(4)}.db"
        return SqliteEventRepository(path), SqliteEventRepository(path)

    return pair


def _postgres(url: str, prefix: str, notify: Notify) -> Repositories:
    from cqrs_postgres import from_url  # noqa: PLC0415

    def pair() -> tuple[PersistedEventRepository, PersistedEventRepository]:
        tables = f"{prefix}_{secrets.token_hex(3)}"
        events, snapshots = f"{tables}_events", f"{tables}_snapshots"
        return (
            from_url(url, events_table=events, snapshots_table=snapshots, notify=notify),
            from_url(url, events_table=events, snapshots_table=snapshots),
        )

    return pair


async def _drop_postgres_tables(url: str, prefix: str) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND starts_with(tablename, %s)",
            (prefix,),
        )
        tables = [sql.Identifier(row[0]) for row in await cursor.fetchall()]
        if tables:
            await conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(tables)))


async def run(options: argparse.Namespace) -> list[Row]:
    """Measure every backend in ``options.backends``: pushed (each way it pushes), then
    polling."""
    rows: list[Row] = []
    poll = options.poll
    pushed = {"commits": options.commits, "poll_interval": poll, "pause": options.gap}
    pushed["projection"] = options.projection
    polled = {**pushed, "pause": options.gap + poll, "push": False}
    polling = f"polling every {poll:g} s"
    with tempfile.TemporaryDirectory(prefix="cqrs-latency-") as directory:
        for backend in options.backends:
            cases: list[tuple[str, str, Repositories, dict[str, object]]]
            prefix = f"lat_{os.getpid()}_{secrets.token_hex(2)}"
            if backend == "memory":
                cases = [
                    ("push", "pushed (in-process signal)", _memory(), pushed),
                    ("poll", polling, _memory(), polled),
                ]
            elif backend == "sqlite":
                cases = [
                    ("push", "pushed (data_version, 25 ms)", _sqlite(Path(directory)), pushed),
                    ("poll", polling, _sqlite(Path(directory)), polled),
                ]
            else:
                url = options.postgres_url
                cases = [
                    (
                        "push",
                        "pushed (NOTIFY after commit)",
                        _postgres(url, prefix, "after_commit"),
                        pushed,
                    ),
                    (
                        "push (in_transaction)",
                        "pushed (NOTIFY in the commit)",
                        _postgres(url, prefix, "in_transaction"),
                        pushed,
                    ),
                    ("poll", polling, _postgres(url, prefix, "after_commit"), polled),
                ]
            try:
                for mode, label, repositories, kwargs in cases:
                    if options.projection:
                        label = f"{label}, ProjectionRunner"  # noqa: PLW2901 - the row's label
                    row = await measure(backend, mode, label, repositories, **kwargs)  # type: ignore[arg-type]
                    print(f"{row}", file=sys.stderr, flush=True)
                    rows.append(row)
            finally:
                if backend == "postgres":
                    await _drop_postgres_tables(options.postgres_url, prefix)
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| backend | wake-ups | commits | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {r.backend} | {r.label} | {r.commits} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
        f"| {r.max_ms:.2f} |"
        for r in rows
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description="Commit-to-delivery latency of subscriptions, pushed vs polling.",
    )
    parser.add_argument("--backends", default="memory,sqlite,postgres")
    parser.add_argument("--commits", type=int, default=100, help="commits per mode")
    parser.add_argument(
        "--gap", type=float, default=0.02, help="most seconds between commits (0.02)"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval, seconds (1)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--projection",
        action="store_true",
        help="deliver to a projection run by a ProjectionRunner (run(), a checkpoint saved "
        "after each batch) instead of a Subscription",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CQRS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    options = parser.parse_args(argv)
    options.backends = [name.strip() for name in options.backends.split(",") if name.strip()]
    unknown = set(options.backends) - {"memory", "sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if options.commits < 1 or not options.gap >= 0 or not options.poll > 0:
        parser.error("--commits must be >= 1, --gap >= 0 and --poll > 0")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table."""
    options = parse_args(argv)
    rows = asyncio.run(run(options))
    print(markdown(rows))
    if options.json:
        Path(options.json).write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
