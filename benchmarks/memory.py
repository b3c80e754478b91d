"""Peak memory while streaming a large store: reading stays bounded by the page size.

``python -m benchmarks.memory [--backends sqlite,postgres] [--events 1000000] [--json PATH]``

For each backend, ``--events`` bank-account events (aggregates of 5,000) are stored untimed
(written straight through the repository in batches, SQLite with ``synchronous=OFF`` for the
seeding only), then a fresh Python process opens the store and decodes every event through
``PersistedEventStore.stream_all_events`` (the repository's pages, ``page_size`` each),
reading its own peak RSS (``ru_maxrss``) before the stream, after 100,000 events and at the
end. A stream that held what it read would grow by hundreds of MB between the last two; a
bounded one stays flat. The row gives events/s, those three peaks and the growth from
100,000 events to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.domain import AMOUNT, BenchAccount
from cqrs import PersistedEventRepository, PersistedEventStore, SerializedEvent, default_codec
from cqrs.events import event_type_of, event_version_of
from examples.bank_account.domain import AccountOpened, CustomerDepositedMoney

__all__ = ["main", "seed", "stream"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
EACH = 5_000
CHECKPOINT = 100_000


def _mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def seed(repository: PersistedEventRepository, events: int) -> None:
    """Store ``events`` bank-account events, aggregates of :data:`EACH`."""
    now = datetime.now(UTC)
    kind = BenchAccount.aggregate_type
    for start in range(0, events, EACH):
        aggregate_id = f"m-{start // EACH}"
        count = min(EACH, events - start)
        rows = []
        balance = Decimal(0)
        for sequence in range(1, count + 1):
            event: object
            if sequence == 1:
                event = AccountOpened(aggregate_id)
            else:
                balance += AMOUNT
                event = CustomerDepositedMoney(AMOUNT, balance)
            rows.append(
                SerializedEvent(
                    kind,
                    aggregate_id,
                    sequence,
                    event_type_of(type(event)),
                    event_version_of(type(event)),
                    default_codec.encode(event),
                    b"{}",
                    now,
                    uuid.uuid4(),
                )
            )
        await repository.persist(rows, None)


async def stream(repository: PersistedEventRepository) -> dict[str, Any]:
    """Decode every stored event through the store; events/s and peak RSS (MB) before,
    at :data:`CHECKPOINT` events and at the end."""
    store = PersistedEventStore(repository, BenchAccount)
    before = _mb()
    at_checkpoint = None
    count = 0
    started = time.perf_counter()
    async for _ in store.stream_all_events():
        count += 1
        if count == CHECKPOINT:
            at_checkpoint = _mb()
    elapsed = time.perf_counter() - started
    end = _mb()
    return {
        "events": count,
        "events_per_s": round(count / elapsed, 1),
        "page_size": getattr(repository, "page_size", None),
        "rss_before_mb": round(before, 1),
        "rss_at_100k_mb": None if at_checkpoint is None else round(at_checkpoint, 1),
        "rss_peak_mb": round(end, 1),
        "growth_after_100k_mb": None if at_checkpoint is None else round(end - at_checkpoint, 1),
    }


def _repository(backend: str, target: str, *, seeding: bool) -> PersistedEventRepository:
    if backend == "sqlite":
        from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415 - per backend

        return SqliteEventRepository(target, synchronous="OFF" if seeding else "FULL")
    from cqrs_postgres import from_url  # noqa: PLC0415 - per backend

    url, prefix = target.rsplit(" ", 1)
    return from_url(url, events_table=f"{prefix}_events", snapshots_table=f"{prefix}_snapshots")


async def _child(backend: str, target: str) -> dict[str, Any]:
    repository = _repository(backend, target, seeding=False)
    await repository.open()
    try:
        return await stream(repository)
    finally:
        await repository.close()


async def _seed_target(backend: str, target: str, events: int) -> None:
    repository = _repository(backend, target, seeding=True)
    await repository.open()
    try:
        await repository.create_schema()
        await seed(repository, events)
    finally:
        await repository.close()


async def _drop(url: str, prefix: str) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE starts_with(tablename, %s)", (prefix,)
        )
        for (table,) in await cursor.fetchall():
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def measure(backend: str, events: int, postgres_url: str) -> dict[str, Any]:
    """Seed a new store of ``backend`` and stream it in a fresh process; the row."""
    directory = Path(tempfile.mkdtemp(prefix="cqrs-memory-"))
    prefix = f"memory_{os.getpid()}_{secrets.token_hex(2)}"
    target = str(directory / "memory.db") if backend == "sqlite" else f"{postgres_url} {prefix}"
    try:
        started = time.perf_counter()
        asyncio.run(_seed_target(backend, target, events))
        print(
            f"{backend}: seeded {events:,} events in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        child = subprocess.run(  # noqa: S603 - this very module, our own arguments
            [sys.executable, "-m", "benchmarks.memory", "--child", backend, target],
            capture_output=True,
            text=True,
            check=True,
        )
        row: dict[str, Any] = {"backend": backend, **json.loads(child.stdout)}
        return row
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if backend == "postgres":
            asyncio.run(_drop(postgres_url, prefix))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        (
            "| backend | events streamed | events/s | page size | RSS before (MB) | "
            "at 100k (MB) | peak (MB) | growth after 100k (MB) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {row['backend']} | {row['events']:,} | {row['events_per_s']:,.0f} | "
        f"{row['page_size']} | {row['rss_before_mb']} | {row['rss_at_100k_mb']} | "
        f"{row['rss_peak_mb']} | {row['growth_after_100k_mb']} |"
        for row in rows
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres-url", default=os.environ.get("CQRS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "TARGET"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        print(json.dumps(asyncio.run(_child(*options.child))))
        return 0
    backends = [name.strip() for name in options.backends.split(",") if name.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown or options.events < 1:
        parser.error(f"unknown backend(s) {sorted(unknown)} or --events < 1")
    rows = [measure(backend, options.events, options.postgres_url) for backend in backends]
    print(markdown(rows))
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
