"""What OpenTelemetry costs a command: ``commit_1`` with and without it, side by side.

``python -m benchmarks.telemetry [--backends memory,sqlite] [--commands 40] [--hooks]
[--repetitions 21] [--postgres-url URL] [--json PATH] [--clock wall|cpu]``

``commit_1`` as in ``python -m benchmarks`` (load an aggregate of 10 events, handle
``DepositMoney``, commit its one event; each command on another aggregate), on four sides
that differ only in what :mod:`cqrs.telemetry` sees, each on its own store:

- ``bare``: every telemetry hook bypassed (subclasses that validate their input and call the
  framework's and the store's inner methods directly): what is left of the instrumentation
  is the clock read around the write for the slow-commit log, one call for the events
  counter and the inner methods' own frames (one coroutine call each for execute, load and
  commit: about 0.1 µs each here);
- ``absent``: opentelemetry not importable (the module's flag as an ImportError leaves it);
- ``api``: opentelemetry-api installed, no SDK configured (no provider set);
- ``sdk``: the SDK configured: a ``TracerProvider`` without any span processor (spans are
  made, sampled and dropped: no exporter) and a ``MeterProvider`` with an in-memory reader
  that is never read (instruments aggregate as with a periodic exporter).

Each round seeds the aggregates of every side in turn, then runs every side in steps of
eight commands, interleaved, the order rotating; a
side's rate in a round is its commands over the time of its own steps; the result is the
median over the rounds. The ratios are each side against ``bare`` (``absent`` and ``api``:
the cost of the hooks when nothing is configured; ``sdk``: the cost of tracing and metrics),
and ``overhead_us`` what a side adds to one command. ``--clock cpu`` times the CPU of the
benchmark's thread instead of the elapsed time: on a machine loaded by other work, whose
preemptions swamp the wall clock, it still measures what a side adds; it leaves out the
database server and SQLite's worker thread, so its rates and ratios are not the commands'.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.domain import AMOUNT, BenchAccount, open_command
from cqrs import CqrsFramework, PersistedEventRepository, PersistedEventStore, telemetry
from cqrs.store import validate_input
from examples.bank_account.domain import BankAccountServices, DepositMoney

__all__ = ["CLOCKS", "SIDES", "main", "measure"]

SIDES = ("bare", "absent", "api", "sdk")
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""What ``--clock`` may name: the elapsed time, or the CPU time of the benchmark's thread."""
STEP = 8
SEED_EVENTS = 10
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class _BareStore(PersistedEventStore[Any, Any, Any, Any]):
    """The store with its telemetry wrappers skipped."""

    async def load_aggregate(self, aggregate_id: str) -> Any:
        validate_input(aggregate_id, {})
        return await self._load_aggregate(aggregate_id)

    async def commit(self, events: Any, context: Any, metadata: Any) -> Any:
        return await self._commit(events, context, metadata) if events else []


_SAVED: dict[str, tuple[Any, Any, Any, Any]] = {}


class _BareFramework(CqrsFramework[Any, Any, Any]):
    """The framework with its telemetry hook skipped."""

    async def execute_with_metadata(
        self,
        aggregate_id: str,
        command: Any,
        metadata: Mapping[str, str],
        *,
        expected_version: int | None = None,
    ) -> Any:
        validate_input(aggregate_id, metadata)
        return await self._execute(aggregate_id, command, metadata, expected_version, None)


@contextmanager
def _mode(side: str, sdk: tuple[Any, Any] | None) -> Iterator[None]:
    """Make :mod:`cqrs.telemetry` see what ``side`` stands for, for the block (its tracer and
    instruments are made once per side and kept, as an application keeps them)."""
    settings = telemetry.settings
    flag = telemetry._OTEL  # noqa: SLF001 - the benchmark switches what the module saw
    before = (
        settings.tracer_provider,
        settings.meter_provider,
        settings.tracer,
        settings.instruments,
    )
    if side not in _SAVED:
        providers = sdk if side == "sdk" and sdk is not None else (None, None)
        _SAVED[side] = (*providers, None, None)
    settings.tracer_provider, settings.meter_provider, settings.tracer, settings.instruments = (
        _SAVED[side]
    )
    hooks = {name: getattr(telemetry, name) for name in telemetry._HOOKS}  # noqa: SLF001
    if side in ("bare", "absent"):
        # What an ImportError of opentelemetry leaves: the flag down, the hooks switched off.
        telemetry._OTEL = False  # noqa: SLF001
        for name in telemetry._HOOKS:  # noqa: SLF001
            setattr(telemetry, name, telemetry._off)  # noqa: SLF001
    try:
        yield
    finally:
        for name, hook in hooks.items():
            setattr(telemetry, name, hook)
        _SAVED[side] = (
            settings.tracer_provider,
            settings.meter_provider,
            settings.tracer,
            settings.instruments,
        )
        telemetry._OTEL = flag  # noqa: SLF001
        settings.tracer_provider, settings.meter_provider, settings.tracer = before[:3]
        settings.instruments = before[3]


def _sdk() -> tuple[Any, Any] | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    except ImportError:
        return None
    return TracerProvider(), MeterProvider(metric_readers=[InMemoryMetricReader()])


class _Side:
    def __init__(self, name: str, repository: PersistedEventRepository) -> None:
        self.name = name
        self.repository = repository
        store_class = _BareStore if name == "bare" else PersistedEventStore
        self.store = store_class(repository, BenchAccount)
        framework_class = _BareFramework if name == "bare" else CqrsFramework
        self.cqrs: CqrsFramework[Any, Any, Any] = framework_class(
            self.store, services=BankAccountServices()
        )
        self.command = DepositMoney(AMOUNT)
        self.count = 0

    async def seed(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            self.count += 1
            aggregate_id = f"{self.name}-{self.count}"
            await self.cqrs.execute(
                aggregate_id, open_command(aggregate_id, SEED_EVENTS), expected_version=0
            )
            ids.append(aggregate_id)
        return ids

    async def deposit(self, aggregate_id: str) -> None:
        await self.cqrs.execute(aggregate_id, self.command)


Repositories = Callable[[str], Awaitable[PersistedEventRepository]]


async def _round(
    sides: list[_Side],
    sdk: tuple[Any, Any] | None,
    commands: int,
    index: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Seconds (of ``clock``) each side spent on ``commands`` commands, in interleaved
    steps."""
    # Seeded in turn, one aggregate per side at a time, so that no side finds its
    # aggregates fresher in the caches than another's.
    work: dict[str, list[str]] = {side.name: [] for side in sides}
    for _ in range(commands):
        for side in sides:
            work[side.name] += await side.seed(1)
    elapsed = dict.fromkeys(work, 0.0)
    gc.collect()
    for step, start in enumerate(range(0, commands, STEP)):
        shift = (index + step) % len(sides)
        for side in sides[shift:] + sides[:shift]:
            with _mode(side.name, sdk):
                began = clock()
                for aggregate_id in work[side.name][start : start + STEP]:
                    await side.deposit(aggregate_id)
                elapsed[side.name] += clock() - began
    return elapsed


async def measure(
    repositories: Repositories,
    commands: int,
    repetitions: int,
    warmups: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Rates (commands/s) of every side of ``SIDES`` on new stores from ``repositories``,
    their medians, their ratios to ``bare`` and what each side adds to a command (µs, from
    the medians: ``1e6 / side - 1e6 / bare``)."""
    sdk = _sdk()
    names = [name for name in SIDES if name != "sdk" or sdk is not None]
    if not telemetry.available():
        names = [name for name in names if name not in ("api", "sdk")]
    sides = [_Side(name, await repositories(name)) for name in names]
    rates: dict[str, list[float]] = {side.name: [] for side in sides}
    try:
        for index in range(warmups + repetitions):
            elapsed = await _round(sides, sdk, commands, index, clock)
            if index >= warmups:
                for name, seconds in elapsed.items():
                    rates[name].append(commands / seconds)
    finally:
        for side in sides:
            await side.repository.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    bare = medians["bare"]
    return {
        "medians": {name: round(value, 1) for name, value in medians.items()},
        "ratios": {name: round(value / bare, 3) for name, value in medians.items()},
        "overhead_us": {
            name: round(1e6 / value - 1e6 / bare, 1) for name, value in medians.items()
        },
        "samples": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


async def _memory(_: str) -> PersistedEventRepository:
    from cqrs_memory import MemoryEventRepository  # noqa: PLC0415

    repository = MemoryEventRepository()
    await repository.open()
    return repository


def _sqlite(directory: Path) -> Repositories:
    async def make(name: str) -> PersistedEventRepository:
        from cqrs_sqlite import SqliteEventRepository  # noqa: PLC0415

        repository = SqliteEventRepository(str(directory / f"{name}.db"), "events", "snapshots")
        await repository.open()
        await repository.create_schema()
        return repository

    return make


def _postgres(url: str, prefix: str, tables: list[str]) -> Repositories:
    async def make(name: str) -> PersistedEventRepository:
        from cqrs_postgres import from_url  # noqa: PLC0415

        events, snapshots = f"{prefix}_{name}_events", f"{prefix}_{name}_snapshots"
        tables.extend((events, snapshots))
        repository = from_url(url, events_table=events, snapshots_table=snapshots)
        await repository.open()
        await repository.create_schema()
        return repository

    return make


async def _drop(url: str, tables: Sequence[str]) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        for table in tables:
            await connection.execute(
                sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table))
            )


async def run(options: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per backend: ``{"backend", "workload": "commit_1", "unit", medians,
    ratios, overhead_us, samples}``."""
    rows = []
    for backend in options.backends:
        print(f"{backend}: commit_1 ...", file=sys.stderr, flush=True)
        tables: list[str] = []
        with tempfile.TemporaryDirectory(prefix="cqrs-bench-otel-") as directory:
            repositories: Repositories
            if backend == "memory":
                repositories = _memory
            elif backend == "sqlite":
                repositories = _sqlite(Path(directory))
            else:
                prefix = f"otel_{secrets.token_hex(3)}"
                repositories = _postgres(options.postgres_url, prefix, tables)
            try:
                measured = await measure(
                    repositories, options.commands, options.repetitions, clock=CLOCKS[options.clock]
                )
            finally:
                if tables:
                    await _drop(options.postgres_url, tables)
        unit = "commands/s" if options.clock == "wall" else "commands/CPU-s"
        rows.append({"backend": backend, "workload": "commit_1", "unit": unit, **measured})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table: each side's median, its ratio to ``bare``, and the
    µs the SDK adds to a command."""
    lines = [
        "| backend | workload | "
        + " | ".join(SIDES)
        + " | absent/bare | api/bare | sdk/bare | sdk µs/command |",
        "|---|---|" + "---:|" * (len(SIDES) + 4),
    ]
    for row in rows:
        medians, ratios = row["medians"], row["ratios"]
        cells = [f"{medians[name]:,.0f}" if name in medians else "-" for name in SIDES]
        cells += [f"{ratios[name]:.3f}" if name in ratios else "-" for name in SIDES[1:]]
        overhead = row.get("overhead_us", {}).get("sdk")
        cells.append("-" if overhead is None else f"{overhead:.0f}")
        lines.append(f"| {row['backend']} | {row['workload']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_HOOK_PATH = """
probe = telemetry.command(store, command, "a", None)
if probe is None: pass
loading = telemetry.span("load", "A")
if loading is None: pass
committing = telemetry.span("commit", "A")
if committing is None: pass
if probe is not None: pass
if probe is not None: pass
if probe is not None: pass
if log.isEnabledFor(10): pass
"""
"""The telemetry calls and checks one command makes when nothing records (``absent``: the
hooks are the no-op function; ``api``: they find no provider)."""


def hook_costs(number: int = 100_000, repeat: int = 15) -> dict[str, float]:
    """Nanoseconds per command of the hook path when nothing records (``absent``, ``api``)
    and of one coroutine frame (the instrumented methods each add one), each the best of
    ``repeat`` timings: a CPU cost small enough to drown in the noise of ``measure``."""
    import logging  # noqa: PLC0415
    import timeit  # noqa: PLC0415

    names = {
        "telemetry": telemetry,
        "store": type("Store", (), {"aggregate_type": "A"})(),
        "command": object(),
        "log": logging.getLogger("cqrs.framework"),
    }
    costs: dict[str, float] = {}
    empty = min(timeit.repeat("pass", number=number, repeat=repeat))
    for side in ("absent", "api"):
        with _mode(side, None):
            best = min(timeit.repeat(_HOOK_PATH, number=number, repeat=repeat, globals=names))
        costs[f"hooks_{side}_ns"] = round((best - empty) / number * 1e9, 1)

    async def body() -> None:
        return None

    async def wrapped() -> None:
        return await body()

    async def frames() -> float:
        best = {body: float("inf"), wrapped: float("inf")}
        for _ in range(repeat):
            for function in (body, wrapped):
                began = time.perf_counter()
                for _ in range(number // 2):
                    await function()
                best[function] = min(best[function], time.perf_counter() - began)
        return (best[wrapped] - best[body]) / (number // 2) * 1e9

    costs["frame_ns"] = round(asyncio.run(frames()), 1)
    return costs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.telemetry", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--backends",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=["memory", "sqlite"],
        help="comma-separated: memory, sqlite, postgres (default: memory,sqlite)",
    )
    parser.add_argument("--commands", type=int, default=40, help="commands per side per round")
    parser.add_argument("--repetitions", type=int, default=21, help="counted rounds")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default): elapsed time; cpu: this thread's CPU time, which a loaded "
        "machine's preemptions leave out, as it leaves out the database server's work: "
        "then only the µs/command a side adds mean something, not the rates",
    )
    parser.add_argument(
        "--hooks",
        action="store_true",
        help="instead: time the hook path of one command when nothing records (ns)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write the JSON if asked; 0."""
    options = _parser().parse_args(argv)
    unknown = set(options.backends) - {"memory", "sqlite", "postgres"}
    if unknown:
        _parser().error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if options.hooks:
        print(json.dumps(hook_costs()))
        return 0
    rows = asyncio.run(run(options))
    print(markdown(rows))
    if options.json is not None:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
