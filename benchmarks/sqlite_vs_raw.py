"""SQLite: the framework against raw sqlite3 doing the same SQL, side by side in one run.

Workloads (the bank account of benchmarks/domain.py, payloads encoded by the core codec):

- ``commit_1``: append one ``CustomerDepositedMoney`` to an aggregate
  (``PersistedEventStore.commit`` with the context of the previous commit);
- ``commit_10``: ``AccountOpened`` plus nine deposits, one commit on a new aggregate;
- ``execute_10``: ``CqrsFramework.execute`` of that command (load + handle + commit);
- ``load_100`` / ``load_1000``: ``load_aggregate`` of an aggregate of that many events
  (fetch, decode, apply).

Raw sqlite3 runs the same statements on the same schema with the same pragmas: a commit is
BEGIN IMMEDIATE, the last-sequence check, ``executemany`` of the same INSERT, last_insert_rowid
and COMMIT; a load is the same SELECT, then the codec's decoder for each event's class and
``apply``. "raw sync" calls sqlite3 on the event loop's thread (no hop, blocking the loop);
"raw 1-hop" runs each transaction/query as one call on a worker thread, the round trips the
framework makes. Rounds alternate the order of the sides; the table shows medians.
(``python -m benchmarks`` is the project-wide harness; this script is the SQLite backend's own
quick check, with the extra "raw sync" column.)

    python -m benchmarks.sqlite_vs_raw [--rounds 7] [--synchronous FULL|NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.domain import (
    AMOUNT,
    AccountOpened,
    BenchAccount,
    CustomerDepositedMoney,
    DepositMany,
    amounts,
    open_command,
)
from cqrs import AggregateContext, PersistedEventStore, default_codec
from cqrs_sqlite import SqliteEventRepository, sqlite_cqrs

TYPE = BenchAccount.aggregate_type
COLUMNS = (
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, "
    "timestamp, event_id"
)


class Raw:
    """Hand-written sqlite3 over the same schema: what an expert would write without us."""

    def __init__(self, path: Path, synchronous: str, *, hop: bool) -> None:
        self.connection = sqlite3.connect(
            path, timeout=5, isolation_level=None, check_same_thread=False
        )
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute(f"PRAGMA synchronous = {synchronous}")
        self.executor = ThreadPoolExecutor(1) if hop else None
        self.insert = (
            f"INSERT INTO events ({COLUMNS}) "  # noqa: S608 - a constant
            "VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)"
        )
        self.last = "SELECT max(sequence) FROM events WHERE aggregate_type = ? AND aggregate_id = ?"
        self.select = (
            "SELECT sequence, event_type, event_version, payload, metadata, timestamp, "
            "event_id, position FROM events "
            "WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ? ORDER BY sequence"
        )
        # The decoders the core codec builds for these classes.
        self.decoders = {
            "AccountOpened": msgspec.json.Decoder(AccountOpened).decode,
            "CustomerDepositedMoney": msgspec.json.Decoder(CustomerDepositedMoney).decode,
        }

    async def call(self, fn: Callable[[], Any]) -> Any:
        if self.executor is None:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def commit(self, aggregate_id: str, first: int, events: list[object]) -> list[int]:
        encode = default_codec.encode
        timestamp = datetime.now(UTC).isoformat(sep=" ")
        rows = [
            (TYPE, aggregate_id, first + i, type(e).__name__, "1.0", encode(e), b"{}", timestamp,
             str(uuid.uuid4()))
            for i, e in enumerate(events)
        ]  # fmt: skip

        def transaction() -> int:
            execute = self.connection.execute
            execute("BEGIN IMMEDIATE")
            try:
                stored = execute(self.last, (TYPE, aggregate_id)).fetchone()[0] or 0
                check(stored == first - 1, "conflict")
                self.connection.executemany(self.insert, rows)
                last: int = execute("SELECT last_insert_rowid()").fetchone()[0]
                execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:
                    execute("ROLLBACK")
                raise
            return last

        last = await self.call(transaction)
        return list(range(last - len(rows) + 1, last + 1))

    async def load(self, aggregate_id: str) -> BenchAccount:
        rows = await self.call(
            lambda: self.connection.execute(self.select, (TYPE, aggregate_id, 0)).fetchall()
        )
        account = BenchAccount()
        account.aggregate_id = aggregate_id
        decoders = self.decoders
        for row in rows:
            account.apply(decoders[row[1]](row[3]))
        return account

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
        self.connection.close()


def check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def deposits(balance_before: int, count: int) -> list[object]:
    return [CustomerDepositedMoney(AMOUNT, AMOUNT * (balance_before + i + 1)) for i in range(count)]


def ten_events(account_id: str) -> list[object]:
    return [AccountOpened(account_id), *deposits(0, 9)]


class Bench:
    def __init__(self, workdir: Path, synchronous: str) -> None:
        self.workdir = workdir
        self.synchronous = synchronous
        self.counter = 0

    def fresh_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    async def setup(self) -> None:
        self.repository = SqliteEventRepository(
            self.workdir / "framework.db", synchronous=self.synchronous
        )
        await self.repository.open()
        await self.repository.create_schema()
        self.store: PersistedEventStore[Any, Any, Any] = PersistedEventStore(
            self.repository, BenchAccount
        )
        self.framework = sqlite_cqrs(self.repository, BenchAccount)
        raw_repository = SqliteEventRepository(self.workdir / "raw.db")
        async with raw_repository:
            await raw_repository.create_schema()  # the same DDL
        self.raw_sync = Raw(self.workdir / "raw.db", self.synchronous, hop=False)
        self.raw_hop = Raw(self.workdir / "raw.db", self.synchronous, hop=True)
        # Aggregates to load, written once by the framework into both files.
        for size in (100, 1000):
            await self.framework.execute(f"load-{size}", open_command(f"load-{size}", 1))
            await self.framework.execute(f"load-{size}", DepositMany(amounts(size - 1)))
            events = [AccountOpened(f"load-{size}"), *deposits(0, size - 1)]
            await self.raw_sync.commit(f"load-{size}", 1, events)

    async def teardown(self) -> None:
        await self.repository.close()
        self.raw_sync.close()
        self.raw_hop.close()

    # -- one timed run per (workload, side): returns operations per second ----------------

    async def commit_1_framework(self, n: int) -> float:
        account = self.fresh_id("c1f")
        context: AggregateContext[Any, Any, Any] = await self.store.load_aggregate(account)
        await self.store.commit([AccountOpened(account)], context, {})
        started = time.perf_counter()
        for i in range(n):
            await self.store.commit(deposits(i, 1), context, {})
        return n / (time.perf_counter() - started)

    async def commit_1_raw(self, raw: Raw, n: int) -> float:
        account = self.fresh_id("c1r")
        await raw.commit(account, 1, [AccountOpened(account)])
        started = time.perf_counter()
        for i in range(n):
            await raw.commit(account, i + 2, deposits(i, 1))
        return n / (time.perf_counter() - started)

    async def commit_10_framework(self, n: int) -> float:
        ids = [self.fresh_id("c10f") for _ in range(n)]
        contexts = [AggregateContext(i, BenchAccount(), 0) for i in ids]
        started = time.perf_counter()
        for account, context in zip(ids, contexts, strict=True):
            await self.store.commit(ten_events(account), context, {})
        return n / (time.perf_counter() - started)

    async def commit_10_raw(self, raw: Raw, n: int) -> float:
        ids = [self.fresh_id("c10r") for _ in range(n)]
        started = time.perf_counter()
        for account in ids:
            await raw.commit(account, 1, ten_events(account))
        return n / (time.perf_counter() - started)

    async def execute_10_framework(self, n: int) -> float:
        ids = [self.fresh_id("x10f") for _ in range(n)]
        started = time.perf_counter()
        for account in ids:
            await self.framework.execute(account, open_command(account, 10))
        return n / (time.perf_counter() - started)

    async def execute_10_raw(self, raw: Raw, n: int) -> float:
        ids = [self.fresh_id("x10r") for _ in range(n)]
        started = time.perf_counter()
        for account in ids:
            state = await raw.load(account)
            events = await state.handle(open_command(account, 10), None)  # type: ignore[arg-type]
            await raw.commit(account, 1, list(events))
        return n / (time.perf_counter() - started)

    async def load_framework(self, size: int, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            context = await self.store.load_aggregate(f"load-{size}")
        check(context.version == size, "short load")
        return n / (time.perf_counter() - started)

    async def load_raw(self, raw: Raw, size: int, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            account = await raw.load(f"load-{size}")
        check(account.balance == AMOUNT * (size - 1), "short load")
        return n / (time.perf_counter() - started)


Side = Callable[[], Awaitable[float]]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()

    def ops(count: int) -> int:
        return max(1, int(count * args.scale))

    with tempfile.TemporaryDirectory(prefix="cqrs-bench-", dir=Path.cwd()) as directory:
        bench = Bench(Path(directory), args.synchronous)
        await bench.setup()
        workloads: dict[str, tuple[int, Side, Side, Side]] = {
            "commit_1": (
                1,
                lambda: bench.commit_1_framework(ops(300)),
                lambda: bench.commit_1_raw(bench.raw_hop, ops(300)),
                lambda: bench.commit_1_raw(bench.raw_sync, ops(300)),
            ),
            "commit_10": (
                10,
                lambda: bench.commit_10_framework(ops(200)),
                lambda: bench.commit_10_raw(bench.raw_hop, ops(200)),
                lambda: bench.commit_10_raw(bench.raw_sync, ops(200)),
            ),
            "execute_10": (
                10,
                lambda: bench.execute_10_framework(ops(200)),
                lambda: bench.execute_10_raw(bench.raw_hop, ops(200)),
                lambda: bench.execute_10_raw(bench.raw_sync, ops(200)),
            ),
            "load_100": (
                100,
                lambda: bench.load_framework(100, ops(200)),
                lambda: bench.load_raw(bench.raw_hop, 100, ops(200)),
                lambda: bench.load_raw(bench.raw_sync, 100, ops(200)),
            ),
            "load_1000": (
                1000,
                lambda: bench.load_framework(1000, ops(40)),
                lambda: bench.load_raw(bench.raw_hop, 1000, ops(40)),
                lambda: bench.load_raw(bench.raw_sync, 1000, ops(40)),
            ),
        }
        results: dict[str, list[list[float]]] = {name: [[], [], []] for name in workloads}
        for round_ in range(args.rounds):
            for name, (_, *sides) in workloads.items():
                order = [0, 1, 2] if round_ % 2 == 0 else [2, 1, 0]
                for index in order:
                    results[name][index].append(await sides[index]())
        await bench.teardown()

    print(
        f"SQLite {sqlite3.sqlite_version}, synchronous={args.synchronous}, WAL; "
        f"median of {args.rounds} alternating rounds (ops/s; events/s in brackets)"
    )
    header = f"{'workload':<11} {'framework':>18} {'raw 1-hop':>18} {'raw sync':>18} "
    print(header + f"{'vs 1-hop':>9} {'vs sync':>8}")
    for name, (events, *_) in workloads.items():
        medians = [statistics.median(samples) for samples in results[name]]
        cells = [f"{m:>8.0f} [{m * events:>7.0f}]" for m in medians]
        ratios = f"{medians[0] / medians[1]:>8.2f}x {medians[0] / medians[2]:>7.2f}x"
        print(f"{name:<11} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} {ratios}")


if __name__ == "__main__":
    asyncio.run(main())
