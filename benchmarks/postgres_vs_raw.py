"""The PostgreSQL backend against raw psycopg doing the same statements and round trips.

Cases: commit 1 and 10 events (``PersistedEventStore.commit``: encode, one INSERT ... RETURNING
in autocommit), load an aggregate of 100 and 1000 events (``load_aggregate``: fetch, decode
each payload with the codec's msgspec decoder, apply), and 8 concurrent writers on different
aggregates (plus 1 writer, to show that writers scale). Raw psycopg runs the backend's own
statements the same way: a psycopg_pool pool of autocommit connections, server-side prepared
statements, binary result rows with ``json`` read as text, the same decoder and ``apply``.
Framework and raw runs alternate, in alternating order; the table shows the medians and the
ratio framework / raw (higher is better for the framework).

    python benchmarks/postgres_vs_raw.py [--url URL] [--rounds 7] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.string import TextBinaryLoader
from psycopg_pool import AsyncConnectionPool

from cqrs import AggregateContext, PersistedEventStore
from cqrs_postgres import PostgresEventRepository, default_postgres_pool
from examples.bank_account.domain import BankAccount, CustomerDepositedMoney

DEFAULT_URL = os.environ.get(
    "CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TYPE = BankAccount.aggregate_type


async def _configure(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    conn.adapters.register_loader("json", TextBinaryLoader)


def deposits(count: int) -> list[CustomerDepositedMoney]:
    return [CustomerDepositedMoney(Decimal("10.00"), Decimal(n * 10)) for n in range(count)]


class Bench:
    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.seconds = seconds
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"

    async def setup(self) -> None:
        self.pool = await default_postgres_pool(self.url, min_size=9, max_size=9)
        self.repository = PostgresEventRepository(
            self.pool, f"{self.prefix}_events", f"{self.prefix}_snapshots"
        )
        await self.repository.create_schema()
        self.store = PersistedEventStore(self.repository, BankAccount)
        self.raw_pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self.url,
            min_size=9,
            max_size=9,
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
        )
        await self.raw_pool.open(wait=True)
        self.insert = self.repository._persist  # noqa: SLF001 - the very same statement
        self.select = self.repository._one_aggregate  # noqa: SLF001 - the very same statement
        self.encoder = msgspec.json.Encoder(decimal_format="string")
        self.payload_decoder = msgspec.json.Decoder(CustomerDepositedMoney)

    async def teardown(self) -> None:
        await self.raw_pool.close()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            for suffix in ("events", "snapshots", "events_schema_version"):
                name = sql.Identifier(f"{self.prefix}_{suffix}")
                await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        await self.pool.close()

    # -- one unit of work each, framework and raw ----------------------------------------------

    def framework_writer(self, size: int) -> Callable[[], Awaitable[int]]:
        events = deposits(size)
        context = AggregateContext(f"fw-{uuid.uuid4()}", BankAccount(), 0)

        async def commit() -> int:
            await self.store.commit(events, context, {})
            return size

        return commit

    def raw_writer(self, size: int) -> Callable[[], Awaitable[int]]:
        events = deposits(size)
        aggregate_id = f"raw-{uuid.uuid4()}"
        version = 0
        encode = self.encoder.encode

        async def commit() -> int:
            nonlocal version
            now = datetime.now(UTC)
            params = [
                TYPE,
                aggregate_id,
                list(range(version + 1, version + size + 1)),
                ["CustomerDepositedMoney"] * size,
                ["1.0"] * size,
                [encode(e).decode() for e in events],
                ["{}"] * size,
                [now] * size,
                [uuid.uuid4() for _ in range(size)],
            ]
            async with self.raw_pool.connection() as conn:
                cursor = await conn.execute(self.insert, params, prepare=True)
                await cursor.fetchall()
            version += size
            return size

        return commit

    async def seeded_aggregate(self, count: int) -> str:
        aggregate_id = f"load-{count}-{uuid.uuid4()}"
        context = AggregateContext(aggregate_id, BankAccount(), 0)
        events = deposits(count)
        for start in range(0, count, 500):
            await self.store.commit(events[start : start + 500], context, {})
        return aggregate_id

    def framework_loader(self, aggregate_id: str) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            return (await self.store.load_aggregate(aggregate_id)).version

        return load

    def raw_loader(self, aggregate_id: str) -> Callable[[], Awaitable[int]]:
        decode = self.payload_decoder.decode

        async def load() -> int:
            async with self.raw_pool.connection() as conn:
                cursor = conn.cursor(binary=True)
                await cursor.execute(self.select, (TYPE, aggregate_id, -1, None), prepare=True)
                rows = await cursor.fetchall()
            account = BankAccount()
            account.aggregate_id = aggregate_id
            for row in rows:
                account.apply(decode(row[3]))
            return len(rows)

        return load

    # -- timing --------------------------------------------------------------------------------

    async def rate(self, units: list[Callable[[], Awaitable[int]]]) -> float:
        """Events (or loads) per second with one task per unit, for ``self.seconds``."""
        stop = time.perf_counter() + self.seconds
        done = 0

        async def loop(unit: Callable[[], Awaitable[int]]) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                count = await unit()  # not `done += await ...`: that loses concurrent updates
                done += count

        started = time.perf_counter()
        await asyncio.gather(*(loop(unit) for unit in units))
        return done / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    bench = Bench(args.url, args.seconds)
    await bench.setup()
    try:
        loaded = {n: await bench.seeded_aggregate(n) for n in (100, 1000)}
        cases: list[tuple[str, str, Callable[[], list], Callable[[], list]]] = [
            (
                "commit 1 event",
                "events/s",
                lambda: [bench.framework_writer(1)],
                lambda: [bench.raw_writer(1)],
            ),
            (
                "commit 10 events",
                "events/s",
                lambda: [bench.framework_writer(10)],
                lambda: [bench.raw_writer(10)],
            ),
            (
                "load 100 events",
                "events/s",
                lambda: [bench.framework_loader(loaded[100])],
                lambda: [bench.raw_loader(loaded[100])],
            ),
            (
                "load 1000 events",
                "events/s",
                lambda: [bench.framework_loader(loaded[1000])],
                lambda: [bench.raw_loader(loaded[1000])],
            ),
            (
                "1 writer x 10 events",
                "events/s",
                lambda: [bench.framework_writer(10)],
                lambda: [bench.raw_writer(10)],
            ),
            (
                "8 writers x 10 events",
                "events/s",
                lambda: [bench.framework_writer(10) for _ in range(8)],
                lambda: [bench.raw_writer(10) for _ in range(8)],
            ),
        ]
        results: list[tuple[str, str, float, float]] = []
        for name, unit, framework, raw in cases:
            ours: list[float] = []
            theirs: list[float] = []
            await bench.rate(framework())  # warm up both: prepared statements, caches
            await bench.rate(raw())
            for round_ in range(args.rounds):
                order = [(framework, ours), (raw, theirs)]
                if round_ % 2:
                    order.reverse()
                for build, sink in order:
                    sink.append(await bench.rate(build()))
            results.append((name, unit, statistics.median(ours), statistics.median(theirs)))
        print(f"PostgreSQL, framework vs raw psycopg, medians of {args.rounds} alternating runs")
        print(f"{'case':<24}{'framework':>14}{'raw psycopg':>14}{'ratio':>8}  unit")
        for name, unit, ours_median, raw_median in results:
            print(
                f"{name:<24}{ours_median:>14,.0f}{raw_median:>14,.0f}"
                f"{ours_median / raw_median:>8.2f}  {unit}"
            )
        one = next(r for r in results if r[0].startswith("1 writer"))
        eight = next(r for r in results if r[0].startswith("8 writers"))
        print(f"scaling, framework 8 writers / 1 writer: {eight[2] / one[2]:.2f}x")
    finally:
        await bench.teardown()


if __name__ == "__main__":
    asyncio.run(main())
