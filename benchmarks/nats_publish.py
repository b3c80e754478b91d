"""Integration events on NATS JetStream: events/s from commit to JetStream acknowledgement.

``python -m benchmarks.nats_publish [--url nats://127.0.0.1:4222] [--events 20000]
[--aggregates 200] [--per-commit 10] [--batch 1000] [--runs 5] [--quick] [--json PATH]``

The event store is SQLite (a new file per run); the events are the bank account's,
``--per-commit`` per commit (an account opened with deposits), about ``--aggregates``
accounts at a time. Each run uses a new stream (deleted afterwards). Rows, medians of
``--runs`` runs, the sides interleaved:

- ``live`` (framework): a writer process (8 concurrent writers, as an application) commits
  ``--events`` events while this process's :class:`~cqrs.ProjectionRunner` runs the
  :class:`~cqrs_nats.JetStreamPublisher` (batches of ``--batch``); from the go to the
  writer to the checkpoint passing its last event, i.e. every event acknowledged by
  JetStream: the end-to-end rate (aim: 10,000 events/s).
- ``commit only``: the same writer process with no publisher: the ceiling of ``live``.
- ``backlog`` (framework): the publisher catching up on ``--events`` events already
  committed: read, decode, encode, publish, wait for the acks, checkpoint.
- ``backlog`` (raw nats-py): nats-py alone publishing the same messages (subjects, headers
  and bodies built beforehand, not timed), 1,000 acknowledgements in flight, no order kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.domain import BenchAccount, open_command
from cqrs import CqrsFramework, PersistedEventRepository, PersistedEventStore, ProjectionRunner
from cqrs_nats import JetStreamPublisher, connect_nats, ensure_stream, subject_for
from cqrs_nats.messages import headers_for
from examples.bank_account.domain import BankAccountServices

__all__ = ["Row", "main"]

BAR = 10_000.0
"""events/s, commit to JetStream acknowledgement (issue 17)."""

WRITERS = 8


@dataclass(frozen=True)
class Row:
    """One workload and side: the median rate of the runs (events/s) and each run's."""

    workload: str
    side: str
    events: int
    events_per_s: float
    runs: tuple[float, ...]


@dataclass
class Setup:
    path: Path
    repository: PersistedEventRepository
    store: PersistedEventStore[Any, Any, Any, Any]
    app: CqrsFramework[Any, Any, Any]
    stream: str
    prefix: str


async def _commit(setup: Setup, events: int, aggregates: int, per_commit: int) -> None:
    """``events`` events, ``per_commit`` per commit, by 8 writers over new accounts, about
    ``aggregates`` of them at a time."""
    commits = events // per_commit
    per_account = max(1, commits // max(1, aggregates))
    names = iter(range(commits))

    async def writer() -> None:
        for number in names:
            account = f"acc-{number // per_account}-{number}"
            await setup.app.execute(account, open_command(account, per_commit))

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def _writer_process(options: argparse.Namespace) -> None:
    """``--writer PATH``: commit the events into PATH when a line comes on stdin; print
    ``ready`` before and ``done LAST_POSITION`` after."""
    repository = await _sqlite(Path(options.writer))
    try:
        store: PersistedEventStore[Any, Any, Any, Any] = PersistedEventStore(
            repository, BenchAccount
        )
        app: CqrsFramework[Any, Any, Any] = CqrsFramework(store, (), BankAccountServices())
        setup = Setup(Path(options.writer), repository, store, app, "", "")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await _commit(setup, options.events, options.aggregates, options.per_commit)
        print(f"done {await _last(setup)}", flush=True)
    finally:
        await repository.close()


async def _commit_elsewhere(setup: Setup, options: argparse.Namespace) -> tuple[int, float]:
    """Commit from a writer process (as an application would); return the last position
    and the time from the go to the writer's last commit."""
    command = [sys.executable, "-m", "benchmarks.nats_publish", "--writer", str(setup.path)]
    command += ["--events", str(options.events), "--aggregates", str(options.aggregates)]
    command += ["--per-commit", str(options.per_commit)]
    writer = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    stdin, stdout = writer.stdin, writer.stdout
    if stdin is None or stdout is None or (await stdout.readline()).strip() != b"ready":
        msg = "the writer process did not start"
        raise RuntimeError(msg)
    started = time.perf_counter()
    stdin.write(b"go\n")
    await stdin.drain()
    done = (await stdout.readline()).split()
    elapsed = time.perf_counter() - started
    await writer.wait()
    if done[:1] != [b"done"]:
        msg = f"the writer process failed: {done!r}"
        raise RuntimeError(msg)
    return int(done[1]), elapsed


async def _last(setup: Setup) -> int:
    return max([e.position async for e in setup.store.stream_all_events()], default=0)


def _runner(setup: Setup, client: Any, options: argparse.Namespace) -> ProjectionRunner:
    publisher = JetStreamPublisher(client, setup.stream, [setup.store], prefix=setup.prefix)
    checkpoints = setup.repository.checkpoint_store("bench_projections")
    return ProjectionRunner(
        setup.repository, checkpoints, [publisher], batch_size=options.batch, poll_interval=0.01
    )


async def live(setup: Setup, options: argparse.Namespace, client: Any) -> tuple[int, float]:
    runner = _runner(setup, client, options)
    await setup.repository.checkpoint_store("bench_projections").create_schema()
    task = asyncio.create_task(runner.run())
    try:
        started = time.perf_counter()
        last, _ = await _commit_elsewhere(setup, options)
        await runner.wait_for(last, timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        runner.stop()
        await task
    return options.events, elapsed


async def commit_only(
    setup: Setup,
    options: argparse.Namespace,
    client: Any,  # noqa: ARG001 - the same signature as the other sides
) -> tuple[int, float]:
    _, elapsed = await _commit_elsewhere(setup, options)
    return options.events, elapsed


async def backlog(setup: Setup, options: argparse.Namespace, client: Any) -> tuple[int, float]:
    await _commit(setup, options.events, options.aggregates, options.per_commit)
    await setup.repository.checkpoint_store("bench_projections").create_schema()
    runner = _runner(setup, client, options)
    last = await _last(setup)
    task = asyncio.create_task(runner.run())
    try:
        started = time.perf_counter()
        await runner.wait_for(last, timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        runner.stop()
        await task
    return options.events, elapsed


async def raw(setup: Setup, options: argparse.Namespace, client: Any) -> tuple[int, float]:
    await _commit(setup, options.events, options.aggregates, options.per_commit)
    codec = setup.store.codec
    messages = [
        (
            subject_for(setup.prefix, e.aggregate_type, e.aggregate_id),
            codec.encode(e.payload),
            headers_for(e, type(e.payload).__name__, "1.0"),
        )
        async for e in setup.store.stream_all_events()
    ]
    js = client.jetstream(publish_async_max_pending=1000)
    started = time.perf_counter()
    futures = [await js.publish_async(s, d, headers=h) for s, d, h in messages]
    for future in futures:
        await future
    return len(messages), time.perf_counter() - started


SIDES: dict[tuple[str, str], Callable[[Setup, argparse.Namespace, Any], Awaitable[Any]]] = {
    ("live", "framework"): live,
    ("live", "commit only"): commit_only,
    ("backlog", "framework"): backlog,
    ("backlog", "raw nats-py"): raw,
}


async def _once(
    measure: Callable[[Setup, argparse.Namespace, Any], Awaitable[tuple[int, float]]],
    options: argparse.Namespace,
    workdir: Path,
) -> float:
    tag = uuid.uuid4().hex[:10]
    repository = await _sqlite(workdir / f"{tag}.db")
    client = await connect_nats(options.url)
    stream, prefix = f"BENCH{tag}", f"bench{tag}"
    try:
        await ensure_stream(client, stream, prefix=prefix)
        store: PersistedEventStore[Any, Any, Any, Any] = PersistedEventStore(
            repository, BenchAccount
        )
        app: CqrsFramework[Any, Any, Any] = CqrsFramework(store, (), BankAccountServices())
        setup = Setup(workdir / f"{tag}.db", repository, store, app, stream, prefix)
        events, seconds = await measure(setup, options, client)
        return events / seconds
    finally:
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)
        await client.close()
        await repository.close()


async def _sqlite(path: Path) -> PersistedEventRepository:
    import cqrs  # noqa: PLC0415 - the connect entry point, kept local to the harness

    repository = await cqrs.connect(f"sqlite:///{path}")
    await repository.create_schema()
    return repository


async def run(options: argparse.Namespace) -> list[Row]:
    """Measure every side ``options.runs`` times, interleaved, and return the rows."""
    results: dict[tuple[str, str], list[float]] = {key: [] for key in SIDES}
    with tempfile.TemporaryDirectory(prefix="cqrs-nats-bench-") as workdir:
        for _ in range(options.runs):
            for key, measure in SIDES.items():
                results[key].append(await _once(measure, options, Path(workdir)))
    return [
        Row(workload, side, options.events, statistics.median(rates), tuple(rates))
        for (workload, side), rates in results.items()
    ]


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, with the ratios and the bar."""
    by = {(row.workload, row.side): row.events_per_s for row in rows}
    lines = ["| workload | side | events/s (median) | ratio |", "|---|---|---:|---:|"]
    for row in rows:
        other = {"live": "commit only", "backlog": "raw nats-py"}[row.workload]
        ratio = row.events_per_s / by[(row.workload, other)] if row.side == "framework" else None
        shown = "" if ratio is None else f"{ratio:.2f} of {other}"
        lines.append(f"| {row.workload} | {row.side} | {row.events_per_s:,.0f} | {shown} |")
    live_rate = by[("live", "framework")]
    verdict = "met" if live_rate >= BAR else "missed"
    lines.append(f"\nbar: live >= {BAR:,.0f} events/s end to end: {verdict} ({live_rate:,.0f})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nats_publish",
        description="Events/s from commit to JetStream acknowledgement (cqrs_nats).",
    )
    parser.add_argument("--url", default="nats://127.0.0.1:4222", help="NATS server")
    parser.add_argument("--events", type=int, default=20_000, help="events per run (20000)")
    parser.add_argument("--aggregates", type=int, default=200, help="accounts (200)")
    parser.add_argument("--per-commit", type=int, default=10, help="events per commit (10)")
    parser.add_argument("--writer", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1000, help="runner batch size (1000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per side; medians (5)")
    parser.add_argument("--quick", action="store_true", help="2,000 events, 2 runs")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    options = parser.parse_args(argv)
    if options.quick:
        options.events, options.runs = 2_000, 2
    if not 1 <= options.per_commit <= options.events or options.runs < 1:
        parser.error("need 1 <= --per-commit <= --events, and --runs at least 1")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table (and write JSON); 0 on success."""
    options = parse_args(argv)
    if options.writer:
        asyncio.run(_writer_process(options))
        return 0
    rows = asyncio.run(run(options))
    print(table(rows))
    if options.json:
        Path(options.json).write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
