"""What the MySQL backend's global order costs: commits/s with its counter row against the
same commits without it.

    python -m benchmarks.mysql_order [--url URL] [--seconds S] [--rounds N] [--json PATH]

Each round runs, for 1 and for 8 concurrent writers (each on its own aggregate, one event
per commit, one connection each), for ``--seconds`` each and alternating:

- ``counter``: the backend's ``persist`` (its one query: the follow check, START
  TRANSACTION, the counter row raised, the row inserted, COMMIT); commits are serialized
  from the counter update to the end of COMMIT;
- ``no_counter``: the same query without the counter row, the position taken from an
  ``AUTO_INCREMENT`` column instead, which is handed out at insert, not at commit, so a
  tailing reader can skip rows (what the counter prevents); commits run in parallel.

It prints the medians and the ratio counter/no_counter for each writer count. The server's
durability settings (``innodb_flush_log_at_trx_commit``, binary log) decide most of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncmy

from cqrs import SerializedEvent
from cqrs_mysql import MysqlEventRepository, parse_url

DEFAULT_URL = os.environ.get("CQRS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

_PLAIN = """CREATE TABLE {table} (position bigint AUTO_INCREMENT PRIMARY KEY,
  aggregate_type varbinary(255) NOT NULL, aggregate_id varbinary(1024) NOT NULL,
  sequence bigint NOT NULL, event_type text NOT NULL, event_version text NOT NULL,
  payload json NOT NULL, metadata json NOT NULL, timestamp timestamp(6) NOT NULL,
  event_id char(36) NOT NULL, UNIQUE KEY (aggregate_type, aggregate_id, sequence))
  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"""

_PLAIN_COMMIT = """SELECT COALESCE(max(sequence), 0) INTO @cqrs_last FROM {table}
  WHERE aggregate_type = %s AND aggregate_id = %s;
SET @cqrs_follows := @cqrs_last = %s;
START TRANSACTION;
INSERT INTO {table} (aggregate_type, aggregate_id, sequence, event_type, event_version,
  payload, metadata, timestamp, event_id)
  SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s FROM DUAL WHERE @cqrs_follows;
COMMIT"""


def _event(aggregate_id: str, sequence: int) -> SerializedEvent:
    return SerializedEvent(
        "Bench",
        aggregate_id,
        sequence,
        "Deposited",
        "1.0",
        b'{"amount":"10"}',
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


async def _counter(url: str, table: str, writers: int, seconds: float) -> float:
    repository = MysqlEventRepository(
        parse_url(url), f"{table}_events", f"{table}_snapshots", max_size=writers
    )
    async with repository:
        await repository.create_schema()
        deadline = time.perf_counter() + seconds
        counts = [0] * writers

        async def write(index: int) -> None:
            aggregate_id = uuid.uuid4().hex
            while time.perf_counter() < deadline:
                counts[index] += 1
                await repository.persist([_event(aggregate_id, counts[index])], None)

        started = time.perf_counter()
        await asyncio.gather(*(write(index) for index in range(writers)))
        return sum(counts) / (time.perf_counter() - started)


async def _no_counter(url: str, table: str, writers: int, seconds: float) -> float:
    config = parse_url(url)
    name = f"`{table}_plain`"
    setup = await asyncmy.connect(**config.connect_kwargs(10))
    try:
        await setup.cursor().execute(_PLAIN.format(table=name))
    finally:
        await setup.ensure_closed()
    query = _PLAIN_COMMIT.format(table=name)
    deadline = time.perf_counter() + seconds
    counts = [0] * writers

    async def write(index: int) -> None:
        aggregate_id = uuid.uuid4().hex
        conn = await asyncmy.connect(**config.connect_kwargs(10))
        try:
            cursor = conn.cursor()
            while time.perf_counter() < deadline:
                counts[index] += 1
                event = _event(aggregate_id, counts[index])
                await cursor.execute(
                    query,
                    (
                        *("Bench", aggregate_id, counts[index] - 1, "Bench", aggregate_id),
                        *(counts[index], "Deposited", "1.0", '{"amount":"10"}', "{}"),
                        *(event.timestamp.replace(tzinfo=None), str(event.event_id)),
                    ),
                )
                while await cursor.nextset():
                    pass
        finally:
            await conn.ensure_closed()

    started = time.perf_counter()
    await asyncio.gather(*(write(index) for index in range(writers)))
    return sum(counts) / (time.perf_counter() - started)


async def _drop(url: str, prefix: str) -> None:
    conn = await asyncmy.connect(**parse_url(url).connect_kwargs(10))
    try:
        cursor = conn.cursor()
        await cursor.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (f"{prefix}\\_%",),
        )
        for (table,) in await cursor.fetchall():
            await cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        await conn.ensure_closed()


async def run(url: str, seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """Medians of commits/s per writer count and variant, and their ratio."""
    prefix = f"order_{os.getpid()}"
    samples: dict[tuple[int, str], list[float]] = {}
    try:
        for round_ in range(rounds):
            for writers in (1, 8):
                for variant, measure in (("counter", _counter), ("no_counter", _no_counter)):
                    table = f"{prefix}_{round_}_{writers}_{variant}"
                    rate = await measure(url, table, writers, seconds)
                    samples.setdefault((writers, variant), []).append(rate)
    finally:
        await _drop(url, prefix)
    result: dict[str, dict[str, float]] = {}
    for writers in (1, 8):
        counter = statistics.median(samples[writers, "counter"])
        plain = statistics.median(samples[writers, "no_counter"])
        result[f"{writers}_writers"] = {
            "counter": round(counter, 1),
            "no_counter": round(plain, 1),
            "ratio": round(counter / plain, 3),
        }
    return result


def main() -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mysql_order")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    options = parser.parse_args()
    result = asyncio.run(run(options.url, options.seconds, options.rounds))
    print("| writers | counter (commits/s) | no counter (commits/s) | ratio |")
    print("|---:|---:|---:|---:|")
    for key, row in result.items():
        writers = key.split("_")[0]
        print(f"| {writers} | {row['counter']:,.0f} | {row['no_counter']:,.0f} | {row['ratio']} |")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:  # noqa: PTH123 - a plain path
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
