"""How the cost grows with load: concurrent writers and stream length, with PNG charts.

``python -m benchmarks.scaling [--backends sqlite,postgres] [--writers 1,2,4,8,16,32,64]
[--seconds 1.5] [--streams 10,100,1000,10000,100000] [--loads 5] [--json PATH]
[--charts DIR]``

Writers: for each number of concurrent writers (asyncio tasks on one event loop, one
``CqrsFramework`` over one repository), each writer runs ``DepositMoney`` commands (load,
decide, commit one event) back to back for ``--seconds``, either each on its own aggregate
(``distinct``) or on 4 hot aggregates shared by all (``hot``: ``Retry(attempts=20)``, so a
conflict reloads and tries again; a command that still conflicts is counted as failed). The
row gives the commands/s over the period and the p50/p99 latency of one command, retries
included.

Loads: one aggregate per stream length, stored by commands of up to 1,000 events (the
store's context carried from commit to commit, so seeding never reloads) plus a last
command of 50 events, then loaded once untimed and ``--loads`` times: the median seconds
of one ``load_aggregate``, from the events alone (``events``) and with a snapshot every 100 events
(``snapshot``: the snapshot and at most 99 events after it).

The charts (matplotlib, ``--charts``, default ``docs/images``): ``scaling_writers.png``
(commands/s and p99 latency against writers) and ``scaling_loads.png`` (load time against
stream length, log-log). SQLite runs in a temporary file with ``synchronous=FULL``, as in
``python -m benchmarks``; PostgreSQL on new tables dropped at the end.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.domain import AMOUNT, BenchAccount, DepositMany, amounts, open_command
from cqrs import (
    AggregateConflict,
    CqrsFramework,
    PersistedEventRepository,
    PersistedEventStore,
    Retry,
)
from examples.bank_account.domain import BankAccountServices, DepositMoney

__all__ = ["HOT_AGGREGATES", "chart", "loads", "main", "writers"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOT_AGGREGATES = 4
SNAPSHOT_EVERY = 100
SEED_BATCH = 1_000
TAIL = 50

Opener = Callable[[str], PersistedEventRepository]
"""Builds an unopened repository on new tables named with the given suffix."""


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def writers(
    repository: PersistedEventRepository, count: int, mode: str, seconds: float, tag: str
) -> dict[str, Any]:
    """``count`` concurrent writers running commands for ``seconds`` (``mode``: distinct
    or hot); returns commands/s, p50/p99 latency (ms) and how many failed."""
    store = PersistedEventStore(repository, BenchAccount)
    retry = Retry(attempts=20) if mode == "hot" else None
    app: CqrsFramework[Any, Any, Any] = CqrsFramework(
        store, services=BankAccountServices(), retry=retry
    )
    targets = count if mode == "distinct" else HOT_AGGREGATES
    ids = [f"{tag}-{mode}-{count}-{n}" for n in range(targets)]
    for aggregate_id in ids:
        await app.execute(aggregate_id, open_command(aggregate_id, 10), expected_version=0)
    latencies: list[float] = []
    failed = 0
    command = DepositMoney(AMOUNT)
    deadline = time.perf_counter() + seconds

    async def writer(index: int) -> None:
        nonlocal failed
        aggregate_id = ids[index % targets]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await app.execute(aggregate_id, command)
            except AggregateConflict:
                failed += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for index in range(count):
            tasks.create_task(writer(index))
    elapsed = time.perf_counter() - started
    return {
        "writers": count,
        "mode": mode,
        "commands": len(latencies),
        "failed": failed,
        "commands_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
    }


async def _seed(
    store: PersistedEventStore[Any, Any, Any, Any], aggregate_id: str, events: int
) -> None:
    services = BankAccountServices()
    context = await store.load_aggregate(aggregate_id)
    first = min(events, SEED_BATCH) if events <= TAIL else min(events - TAIL, SEED_BATCH)
    batches = [first]
    remaining = events - first
    while remaining > TAIL:
        batches.append(min(remaining - TAIL, SEED_BATCH))
        remaining -= batches[-1]
    if remaining:
        batches.append(remaining)
    for index, size in enumerate(batches):
        command: Any = (
            open_command(aggregate_id, size) if index == 0 else DepositMany(amounts(size))
        )
        await store.commit(await context.aggregate.handle(command, services), context, {})


async def loads(
    repository: PersistedEventRepository, streams: Sequence[int], repeat: int, tag: str
) -> list[dict[str, Any]]:
    """For each stream length: the median seconds of one load from the events alone and
    with a snapshot every 100 events."""
    plain = PersistedEventStore(repository, BenchAccount)
    snapshots = PersistedEventStore(repository, BenchAccount, snapshot_every=SNAPSHOT_EVERY)
    rows = []
    for events in streams:
        row: dict[str, Any] = {"events": events}
        for name, store in (("events", plain), ("snapshot", snapshots)):
            aggregate_id = f"{tag}-{name}-{events}"
            await _seed(store, aggregate_id, events)
            await store.load_aggregate(aggregate_id)  # untimed: statements get prepared
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                context = await store.load_aggregate(aggregate_id)
                times.append(time.perf_counter() - started)
            if context.version != events:
                msg = f"loaded {context.version} of {events} events"
                raise AssertionError(msg)
            row[f"{name}_ms"] = round(statistics.median(times) * 1000, 3)
        rows.append(row)
        _log(f"  load {events:>7} events: {row}")
    return rows


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _openers(options: argparse.Namespace, directory: Path) -> dict[str, Opener]:
    openers: dict[str, Opener] = {}
    if "sqlite" in options.backends:
        from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415 - per backend

        def sqlite(suffix: str) -> PersistedEventRepository:
            return SqliteEventRepository(directory / f"scaling_{suffix}.db")

        openers["sqlite"] = sqlite
    if "postgres" in options.backends:
        from cqrs_postgres import from_url  # noqa: PLC0415 - per backend

        prefix = f"scaling_{os.getpid()}_{secrets.token_hex(2)}"
        options.postgres_prefix = prefix

        def postgres(suffix: str) -> PersistedEventRepository:
            return from_url(
                options.postgres_url,
                events_table=f"{prefix}_{suffix}_events",
                snapshots_table=f"{prefix}_{suffix}_snapshots",
            )

        openers["postgres"] = postgres
    return openers


async def _drop_postgres(url: str, prefix: str) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE starts_with(tablename, %s)", (f"{prefix}_",)
        )
        for (table,) in await cursor.fetchall():
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


async def run(options: argparse.Namespace) -> dict[str, Any]:
    """Measure every backend of ``options``; the JSON report."""
    directory = Path(tempfile.mkdtemp(prefix="cqrs-scaling-"))
    report: dict[str, Any] = {"writers": [], "loads": [], "settings": vars(options).copy()}
    report["settings"].pop("func", None)
    try:
        for backend, opener in _openers(options, directory).items():
            for mode in ("distinct", "hot"):
                for count in options.writers:
                    repository = opener(f"w_{mode}_{count}")
                    await repository.open()
                    try:
                        await repository.create_schema()
                        row = await writers(repository, count, mode, options.seconds, "w")
                    finally:
                        await repository.close()
                    row["backend"] = backend
                    report["writers"].append(row)
                    _log(f"{backend} {mode:>8} writers={count:>2}: {row}")
            repository = opener("loads")
            await repository.open()
            try:
                await repository.create_schema()
                for row in await loads(repository, options.streams, options.loads, "l"):
                    row["backend"] = backend
                    report["loads"].append(row)
            finally:
                await repository.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        prefix = getattr(options, "postgres_prefix", None)
        if prefix is not None:
            await _drop_postgres(options.postgres_url, prefix)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as two markdown tables."""
    lines = [
        "| backend | writers | aggregates | commands/s | p50 ms | p99 ms | failed |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in report["writers"]:
        aggregates = "own" if row["mode"] == "distinct" else f"{HOT_AGGREGATES} hot"
        lines.append(
            f"| {row['backend']} | {row['writers']} | {aggregates} | "
            f"{row['commands_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['failed']} |"
        )
    lines += [
        "",
        "| backend | events | load, events only (ms) | load with snapshots (ms) |",
        "|---|---:|---:|---:|",
    ]
    lines.extend(
        f"| {row['backend']} | {row['events']:,} | {row['events_ms']:.3f} | "
        f"{row['snapshot_ms']:.3f} |"
        for row in report["loads"]
    )
    return "\n".join(lines)


def chart(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write ``scaling_writers.png`` and ``scaling_loads.png`` into ``directory``."""
    import matplotlib as mpl  # noqa: PLC0415 - optional, bench group only

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in report["writers"]:
        series.setdefault((row["backend"], row["mode"]), []).append(row)
    for (backend, mode), rows in series.items():
        label = f"{backend}, {'own aggregate' if mode == 'distinct' else '4 hot aggregates'}"
        style = "-" if mode == "distinct" else "--"
        counts = [row["writers"] for row in rows]
        rate.plot(counts, [row["commands_per_s"] for row in rows], style, marker="o", label=label)
        latency.plot(counts, [row["p99_ms"] for row in rows], style, marker="o", label=label)
    counts = sorted({row["writers"] for row in report["writers"]})
    for axis, title in ((rate, "commands/s"), (latency, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(count) for count in counts])
        axis.set_xlabel("concurrent writers")
        axis.set_title(title)
        axis.grid(visible=True, alpha=0.3)
    latency.set_yscale("log")
    rate.legend(fontsize=8)
    figure.tight_layout()
    path = directory / "scaling_writers.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for row in report["loads"]:
        by_backend.setdefault(row["backend"], []).append(row)
    for backend, rows in by_backend.items():
        events = [row["events"] for row in rows]
        axis.plot(events, [row["events_ms"] for row in rows], "-", marker="o", label=backend)
        axis.plot(
            events,
            [row["snapshot_ms"] for row in rows],
            "--",
            marker="s",
            label=f"{backend}, snapshot every {SNAPSHOT_EVERY}",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("events in the stream")
    axis.set_ylabel("one load_aggregate (ms)")
    axis.grid(visible=True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = directory / "scaling_loads.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``python -m benchmarks.scaling --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description="Throughput and latency against concurrent writers; load time against "
        "stream length; PNG charts.",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writers", type=_numbers, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=1.5, help="per writer count")
    parser.add_argument("--streams", type=_numbers, default=[10, 100, 1000, 10_000, 100_000])
    parser.add_argument("--loads", type=int, default=5, help="loads per stream (median)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CQRS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--charts", metavar="DIR", default="docs/images")
    parser.add_argument("--no-charts", action="store_true")
    options = parser.parse_args(argv)
    options.backends = [name.strip() for name in options.backends.split(",") if name.strip()]
    unknown = set(options.backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if min(options.writers, default=0) < 1 or min(options.streams, default=0) < 1:
        parser.error("--writers and --streams take positive numbers")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the tables, write the JSON and the charts."""
    options = parse_args(argv)
    started = time.perf_counter()
    report = asyncio.run(run(options))
    print(markdown(report))
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not options.no_charts:
        for path in chart(report, Path(options.charts)):
            _log(f"chart: {path}")
    _log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
