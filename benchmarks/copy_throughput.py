"""``cqrs copy`` throughput, SQLite -> PostgreSQL, side by side with the raw drivers.

``python -m benchmarks.copy_throughput [--events 100000] [--rounds 3] [--postgres-url URL]
[--json PATH]``

A SQLite file is filled with ``--events`` events of 1,000 aggregates, 1-4 events per commit,
interleaved as real traffic is, with a snapshot every 5th sequence. Each round then copies it
into new PostgreSQL tables, one side after the other (the order rotates):

- ``copy``: the engine of ``cqrs copy`` (:func:`cqrs.cli.copying.copy_events`) with the
  target's ``import_events``: chunks of 5,000 events, snapshots, a checkpoint per chunk;
  the verification (a checksum of the target) is timed separately, as ``copy+verify``;
- ``copy_port_only``: the same engine through the storage port alone (one ``persist`` per
  run of one aggregate's events), what a backend without ``import_events`` gets; it commits
  once per run, so it copies a source of ``--port-only-events`` (5,000) events of the same
  shape instead;
- ``raw``: ``sqlite3`` reading the rows and psycopg's binary ``COPY`` writing them, in chunks
  of 5,000, one transaction each: no snapshots, checkpoints or verification.

The table gives the median events/s of each and the ratio of ``copy`` to ``raw``; the bar
(issue 15) is ``copy`` >= 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

import cqrs
from cqrs import PersistedEventRepository, SerializedEvent, SerializedSnapshot
from cqrs.cli.copying import copy_events
from cqrs_postgres import from_url as postgres_from_url

__all__ = ["main"]

DEFAULT_POSTGRES_URL = os.environ.get(
    "CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BAR = 20_000.0
CHUNK = 5000


async def fill(url: str, events: int, aggregates: int = 1000) -> None:
    """``events`` events over ``aggregates`` aggregates, stored in chunks (fast to set up)."""
    rnd = random.Random(15)
    sequences: dict[str, int] = {}
    clock = datetime(2025, 1, 1, tzinfo=UTC)
    chunk: list[SerializedEvent] = []
    snapshots: dict[str, SerializedSnapshot] = {}
    async with cqrs.connect(url) as repository:
        importer = getattr(repository, "import_events")  # noqa: B009 - the SQLite backend's
        done = 0
        while done < events:
            aggregate = f"account-{rnd.randrange(aggregates)}"
            last = sequences.get(aggregate, 0)
            size = min(rnd.randint(1, 4), events - done)
            clock += timedelta(milliseconds=rnd.randint(1, 900))
            for index in range(size):
                payload = f'{{"amount": {rnd.randint(1, 9999)}, "atm_id": "ATM-{index}"}}'
                chunk.append(
                    SerializedEvent(
                        "BankAccount",
                        aggregate,
                        last + index + 1,
                        "CustomerDepositedMoney",
                        "1.0",
                        payload,
                        '{"correlation_id": "c-1", "user": "teller"}',
                        clock,
                        uuid.uuid4(),
                    )
                )
            sequences[aggregate] = last + size
            if (last + size) // 5 > last // 5:
                state = f'{{"balance": {last + size}}}'
                snapshots[aggregate] = SerializedSnapshot(
                    "BankAccount", aggregate, state, last + size, (last + size) // 5
                )
            done += size
            if len(chunk) >= CHUNK or done == events:
                await importer(chunk, list(snapshots.values()))
                chunk, snapshots = [], {}


class _PortOnly:
    def __init__(self, repository: PersistedEventRepository) -> None:
        self._repository = repository

    def __getattr__(self, name: str) -> object:
        if name == "import_events":
            raise AttributeError(name)
        return getattr(self._repository, name)


def _raw(source: Path, postgres_url: str, table: str) -> int:
    """Rows from sqlite3 into PostgreSQL by binary COPY, a transaction per chunk."""
    columns = (
        "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, "
        "timestamp, event_id"
    )
    copied = 0
    with (
        sqlite3.connect(source) as reader,
        psycopg.connect(postgres_url, autocommit=True) as writer,
    ):
        writer.execute(
            f"CREATE TABLE {table} (position bigint PRIMARY KEY, aggregate_type text NOT NULL, "
            "aggregate_id text NOT NULL, sequence bigint NOT NULL, event_type text NOT NULL, "
            "event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, "
            "timestamp timestamptz, event_id uuid NOT NULL, "
            "UNIQUE (aggregate_type, aggregate_id, sequence))"
        )
        cursor = reader.execute(f"SELECT position, {columns} FROM events ORDER BY position")  # noqa: S608 - fixed names
        while rows := cursor.fetchmany(CHUNK):
            with writer.transaction(), writer.cursor() as out:
                statement = f"COPY {table} (position, {columns}) FROM STDIN"
                with out.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(
                            (*row[:8], datetime.fromisoformat(row[8]), uuid.UUID(row[9]))
                        )
            copied += len(rows)
    return copied


async def _round(
    sources: dict[str, str], source_path: Path, postgres_url: str, order: list[str]
) -> dict[str, float]:
    results: dict[str, float] = {}
    prefix = f"bc{secrets.token_hex(4)}"
    tables = [f"{prefix}_{side}" for side in ("copy", "port", "raw")]
    try:
        for side in order:
            if side == "raw":
                began = time.perf_counter()
                count = await asyncio.to_thread(_raw, source_path, postgres_url, tables[2])
                results["raw"] = count / (time.perf_counter() - began)
                continue
            events_table = tables[0] if side == "copy" else tables[1]
            target = postgres_from_url(
                postgres_url, events_table=events_table, snapshots_table=f"{events_table}_snap"
            )
            source_url = sources[side]
            async with cqrs.connect(source_url, create_schema=False) as source, target:
                await target.create_schema()
                wrapped = target if side == "copy" else _PortOnly(target)
                began = time.perf_counter()
                report = await copy_events(
                    source,
                    wrapped,  # type: ignore[arg-type]
                    source_url=source_url,
                    target_url=postgres_url,
                    checkpoint_table=f"{events_table}_copy",
                )
                total = time.perf_counter() - began
                if not report.equal:
                    msg = f"{side}: the copy does not verify"
                    raise AssertionError(msg)
                results[side] = report.read / report.seconds
                if side == "copy":
                    results["copy+verify"] = report.read / total
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            names = [
                name
                for (name,) in admin.execute(
                    "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{prefix}%",)
                )
            ]
            for name in names:
                admin.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    return results


async def measure(
    events: int, rounds: int, postgres_url: str, port_only_events: int = 5000
) -> dict[str, float]:
    """Median events/s of each side over ``rounds`` rounds."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "source.db"
        sources = {
            "copy": f"sqlite:///{path}?synchronous=NORMAL",
            "copy_port_only": f"sqlite:///{Path(directory) / 'small.db'}?synchronous=NORMAL",
        }
        await fill(sources["copy"], events)
        await fill(sources["copy_port_only"], min(events, port_only_events))
        sides = ["copy", "copy_port_only", "raw"]
        samples: dict[str, list[float]] = {}
        for index in range(rounds):
            order = sides[index % 3 :] + sides[: index % 3]
            for side, rate in (await _round(sources, path, postgres_url, order)).items():
                samples.setdefault(side, []).append(rate)
    return {side: statistics.median(values) for side, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table (and write ``--json``); 1 if the bar is missed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.copy_throughput")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port-only-events", type=int, default=5000)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    medians = asyncio.run(
        measure(options.events, options.rounds, options.postgres_url, options.port_only_events)
    )
    raw = medians["raw"]
    rows = [
        {
            "workload": "copy_sqlite_to_postgres",
            "side": side,
            "events": options.events,
            "events_per_second": round(rate, 1),
            "ratio_raw": round(rate / raw, 3),
        }
        for side, rate in medians.items()
    ]
    print(f"cqrs copy SQLite -> PostgreSQL, {options.events:,} events, median of {options.rounds}")
    print(f"{'side':<16}{'events/s':>12}{'vs raw':>9}")
    for row in rows:
        print(f"{row['side']:<16}{row['events_per_second']:>12,.0f}{row['ratio_raw']:>9.2f}")
    met = medians["copy"] >= BAR
    print(f"bar: copy >= {BAR:,.0f} events/s: {'met' if met else 'MISSED'}")
    if options.json is not None:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
