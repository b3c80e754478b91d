"""Catch-up of a projection against the backend's own ``stream_all_events``, side by side.

``python -m benchmarks.catchup [--backends sqlite,postgres] [--events 10000]
[--rounds 9] [--json PATH]``

For each backend, ``--events`` events (aggregates of 100) are stored in new tables, then each
round runs, one after the other in one process: ``stream`` (the repository's
``stream_all_events`` of the aggregate type, rows left undecoded: the "raw stream_all_events
speed" of issue 13), ``stream+decode`` (the same, each row decoded to an envelope by the
store: what any consumer of decoded events pays at least), ``stream+decode_all`` (the rows
gathered in pages of ``page_size`` and each page decoded with ``decode_all``, as the runner
does on a backend without a page reader: its floor there), ``rows+decode_rows`` (only for a
backend with the optional ``read_event_rows``: its pages of ``page_size`` EventRow tuples,
each decoded with ``decode_rows``, as the runner reads and decodes them there: its floor)
and ``runner`` (a
:class:`~cqrs.ProjectionRunner` with a no-op projection catching up from a new checkpoint, as
``catchup_10k`` in ``python -m benchmarks``). The order rotates each round. The table gives
the median events/s of each and their ratios to ``stream``; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.domain import BenchAccount, open_command
from benchmarks.framework import NoOpProjection
from cqrs import CqrsFramework, PersistedEventRepository, PersistedEventStore, ProjectionRunner
from cqrs.repository import EventRow
from examples.bank_account.domain import BankAccountServices

__all__ = ["main", "measure"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_BEYOND = 2**62


async def measure(
    repository: PersistedEventRepository, events: int, rounds: int
) -> dict[str, float]:
    """Median events/s of ``stream``, ``stream+decode``, ``stream+decode_all``,
    ``rows+decode_rows`` (backends with ``read_event_rows``) and ``runner`` on
    ``repository`` (open, schema created, empty)."""
    store = PersistedEventStore(repository, BenchAccount)
    app: CqrsFramework[Any, Any, Any] = CqrsFramework(store, services=BankAccountServices())
    for index in range(max(events // 100, 1)):
        await app.execute(f"cu-{index}", open_command(f"cu-{index}", 100), expected_version=0)
    size: int = getattr(repository, "page_size", 500)
    # A new checkpoint table per round, made untimed, named after the events table so that
    # dropping the run's tables drops them too.
    prefix = getattr(repository, "events_table", "events").removesuffix("_events")
    stores = []
    for index in range(rounds + 1):
        checkpoints = repository.checkpoint_store(f"{prefix}_cp_{secrets.token_hex(3)}_{index}")
        await checkpoints.create_schema()
        stores.append(checkpoints)

    async def runner() -> int:
        checkpoints = stores.pop()
        projection = NoOpProjection("catchup", store)
        running = ProjectionRunner(
            repository, checkpoints, [projection], owner="bench", batch_size=size
        )
        task = asyncio.create_task(running.run())
        try:
            await running.wait_for(_BEYOND, timeout=600)
        finally:
            running.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return projection.handled

    return await _alternate({**_streams(repository, store, size), "runner": runner}, rounds)


def _streams(
    repository: PersistedEventRepository, store: PersistedEventStore[Any, Any, Any, Any], size: int
) -> dict[str, Callable[[], Awaitable[int]]]:
    """The ways of reading the stream without a runner: raw, decoded row by row, and
    decoded a page (``size`` rows) at a time."""
    kind = store.aggregate_type

    async def stream() -> int:
        count = 0
        async for _ in repository.stream_all_events(kind, 0):
            count += 1
        return count

    async def stream_and_decode() -> int:
        count = 0
        async for row in repository.stream_all_events(kind, 0):
            store.decode(row)
            count += 1
        return count

    async def stream_and_decode_pages() -> int:
        count, page = 0, []
        async for row in repository.stream_all_events(kind, 0):
            page.append(row)
            if len(page) == size:
                count += len(store.decode_all(page))
                page = []
        return count + len(store.decode_all(page))

    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "stream": stream,
        "stream+decode": stream_and_decode,
        "stream+decode_all": stream_and_decode_pages,
    }
    reader = getattr(repository, "read_event_rows", None)
    if reader is not None:
        ways["rows+decode_rows"] = _rows(reader, store, size)
    return ways


def _rows(
    reader: Callable[[str, int, int], Awaitable[list[EventRow]]],
    store: PersistedEventStore[Any, Any, Any, Any],
    size: int,
) -> Callable[[], Awaitable[int]]:
    """The backend's ``read_event_rows`` pages of ``size``, each decoded with
    ``decode_rows``: what the runner reads and decodes on such a backend."""
    kind = store.aggregate_type

    async def rows_and_decode_rows() -> int:
        count, after = 0, 0
        while True:
            page = await reader(kind, after, size)
            count += len(store.decode_rows(page))
            if len(page) < size:
                return count
            after = page[-1][9]

    return rows_and_decode_rows


async def _alternate(
    ways: dict[str, Callable[[], Awaitable[int]]], rounds: int
) -> dict[str, float]:
    """Run each way once per round, in a rotating order, after a warm-up round; the median
    rate of each."""
    rates: dict[str, list[float]] = {name: [] for name in ways}
    order = list(ways)
    for round_ in range(rounds + 1):
        for name in order:
            started = time.perf_counter()
            count = await ways[name]()
            if round_:
                rates[name].append(count / (time.perf_counter() - started))
        order.append(order.pop(0))
    return {name: statistics.median(values) for name, values in rates.items()}


def _repository(backend: str, directory: Path, options: argparse.Namespace) -> Any:
    prefix = f"bcu_{secrets.token_hex(3)}"
    if backend == "sqlite":
        from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415 - per backend

        return SqliteEventRepository(str(directory / "catchup.db"), "events", "snapshots")
    if backend == "postgres":
        from cqrs_postgres.repository import from_url  # noqa: PLC0415 - per backend

        return from_url(
            options.postgres_url,
            events_table=f"{prefix}_events",
            snapshots_table=f"{prefix}_snapshots",
        )
    msg = f"unknown backend {backend!r} (sqlite, postgres)"
    raise SystemExit(msg)


async def run(options: argparse.Namespace) -> list[dict[str, object]]:
    """Measure every backend of ``options``; return the rows."""
    rows: list[dict[str, object]] = []
    directory = Path(tempfile.mkdtemp(prefix="cqrs-catchup-"))
    try:
        for backend in options.backends.split(","):
            repository = _repository(backend, directory, options)
            await repository.open()
            try:
                await repository.create_schema()
                medians = await measure(repository, options.events, options.rounds)
            finally:
                await _drop(backend, repository)
                await repository.close()
            base = medians["stream"]
            rows.append(
                {
                    "backend": backend,
                    "events": options.events,
                    **{name: round(value, 1) for name, value in medians.items()},
                    "ratio_decode": round(medians["stream+decode"] / base, 3),
                    "ratio_decode_all": round(medians["stream+decode_all"] / base, 3),
                    **(
                        {"ratio_decode_rows": round(medians["rows+decode_rows"] / base, 3)}
                        if "rows+decode_rows" in medians
                        else {}
                    ),
                    "ratio_runner": round(medians["runner"] / base, 3),
                }
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


async def _drop(backend: str, repository: Any) -> None:
    if backend != "postgres":
        return
    tables = [repository.events_table, repository.snapshots_table]
    async with repository.pool.connection() as conn:
        rows = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
            (repository.events_table.removesuffix("_events") + "%",),
        )
        tables += [row[0] for row in await rows.fetchall()]
        for table in dict.fromkeys(tables):
            await conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; prints the table (and writes ``--json``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catchup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--postgres-url", default=os.environ.get("CQRS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    options = parser.parse_args(argv)
    rows = asyncio.run(run(options))
    print(
        "| backend | stream | stream+decode | stream+decode_all | rows+decode_rows | runner "
        "| decode/stream | decode_all/stream | decode_rows/stream | runner/stream |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        rows_side = row.get("rows+decode_rows")
        rows_ratio = row.get("ratio_decode_rows")
        print(
            f"| {row['backend']} | {row['stream']:,.0f} | {row['stream+decode']:,.0f} "
            f"| {row['stream+decode_all']:,.0f} "
            f"| {'-' if rows_side is None else f'{rows_side:,.0f}'} | {row['runner']:,.0f} "
            f"| {row['ratio_decode']:.2f} | {row['ratio_decode_all']:.2f} "
            f"| {'-' if rows_ratio is None else f'{rows_ratio:.2f}'} "
            f"| {row['ratio_runner']:.2f} |"
        )
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
