"""The ``cqrs`` commands (Typer). Each command opens its repositories with
:func:`cqrs.connect`, runs one coroutine of the engines in this package, and prints the
result as text or, with ``--json``, as JSON on stdout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.json import JSON
from rich.progress import TaskID
from rich.table import Table

from cqrs.cli import projections as projection_commands
from cqrs.cli.capabilities import KnowsSchema, count_events
from cqrs.cli.checks import PROBLEM_KINDS, VerifyReport, collect_stats, verify_store
from cqrs.cli.copying import CopyReport, copy_events
from cqrs.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Output
from cqrs.connection import connect
from cqrs.errors import ConfigurationError, CqrsError
from cqrs.repository import PersistedEventRepository, SerializedEvent
from cqrs.subscription import Subscription

__all__ = ["app"]

T = TypeVar("T")

_EPILOG = (
    "Exit codes: 0 ok; 1 failure found (damage, a copy that does not verify, a database "
    "error or conflict); 2 usage (bad options, no or unsupported database URL). "
    "Passwords in URLs are never printed."
)

app = typer.Typer(
    name="cqrs",
    help="Operate a cqrs-es event store: schema, events, stats, copy, verify, projections.",
    epilog=_EPILOG,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(
    help="Create the schema; list applied and pending migrations.",
    epilog=_EPILOG,
    no_args_is_help=True,
)
events_app = typer.Typer(help="Look at stored events.", epilog=_EPILOG, no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(events_app, name="events")
app.add_typer(projection_commands.app, name="projections")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="CQRS_DATABASE_URL",
        show_envvar=True,
        help="The store, e.g. sqlite:///bank.db or postgresql://user@host/db.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
TypeOption = Annotated[
    str | None, typer.Option("--type", help="Only this aggregate type.", show_default=False)
]


def require_url(url: str | None, option: str = "--database-url") -> str:
    """``url``, or a usage error naming the option (and $CQRS_DATABASE_URL)."""
    if not url:
        msg = "no database URL: pass --database-url or set $CQRS_DATABASE_URL"
        raise typer.BadParameter(msg, param_hint=option)
    return url


def run(
    output: Output, work: Callable[[], Coroutine[Any, Any, int]], *, interrupt_ok: bool = False
) -> None:
    """Run a command's coroutine and exit with its code; errors become one scrubbed line
    on stderr: ConfigurationError and ValueError exit 2, other cqrs errors exit 1. Ctrl-C
    exits 1 (interrupted), or 0 with ``interrupt_ok`` (the way to end ``--follow``)."""
    try:
        with output.logging():
            code = asyncio.run(work())
    except KeyboardInterrupt:
        output.note("interrupted")
        code = EXIT_OK if interrupt_ok else EXIT_FAILURE
    except (ConfigurationError, ValueError) as error:
        output.error(str(error))
        code = EXIT_USAGE
    except (CqrsError, OSError) as error:
        output.error(str(error))
        code = EXIT_FAILURE
    raise typer.Exit(code)


async def _opened(
    url: str, work: Callable[[PersistedEventRepository], Awaitable[T]], *, create: bool = False
) -> T:
    async with connect(url, create_schema=create) as repository:
        return await work(repository)


# -- schema ---------------------------------------------------------------------------------


@schema_app.command("create")
def schema_create(database_url: DatabaseUrl = None, json_output: JsonFlag = False) -> None:
    """Apply the schema (idempotent): the migrations not yet applied, or the backend's
    collections and indexes."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async def create(repository: PersistedEventRepository) -> tuple[list[str], list[str]]:
            before = (
                await repository.schema_status()
                if isinstance(repository, KnowsSchema)
                else ([], [])
            )
            await repository.create_schema()
            after = (
                await repository.schema_status()
                if isinstance(repository, KnowsSchema)
                else ([], [])
            )
            return [name for name in after[0] if name not in before[0]], after[0]

        applied_now, applied = await _opened(url, create)
        if output.json:
            output.emit_json(
                {"database": output.url(url), "applied_now": applied_now, "applied": applied}
            )
        else:
            output.print(f"schema of {output.url(url)} is up to date")
            for name in applied_now:
                output.print(f"  applied {name}")
        return EXIT_OK

    run(output, work)


@schema_app.command("status")
def schema_status(database_url: DatabaseUrl = None, json_output: JsonFlag = False) -> None:
    """List the applied and pending migrations (exit 1 when some are pending)."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async def status(
            repository: PersistedEventRepository,
        ) -> tuple[list[str], list[str]] | None:
            if isinstance(repository, KnowsSchema):
                return await repository.schema_status()
            return None

        found = await _opened(url, status)
        if found is None:
            if output.json:
                output.emit_json({"database": output.url(url), "migrations": None})
            else:
                output.print(
                    f"{output.url(url)}: this backend keeps no migrations; "
                    "'cqrs schema create' creates what is missing"
                )
            return EXIT_OK
        applied, pending = found
        if output.json:
            output.emit_json({"database": output.url(url), "applied": applied, "pending": pending})
        else:
            output.print(f"schema of {output.url(url)}")
            for name in applied:
                output.print(f"  applied  {name}")
            for name in pending:
                output.print(f"  pending  {name}")
            if not pending:
                output.print("up to date")
        return EXIT_FAILURE if pending else EXIT_OK

    run(output, work)


# -- events ---------------------------------------------------------------------------------


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _event_dict(event: SerializedEvent) -> dict[str, object]:
    def parsed(data: bytes | str) -> object:
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return _text(data)

    return {
        "position": event.position,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "timestamp": event.timestamp.isoformat(),
        "event_id": str(event.event_id),
        "metadata": parsed(event.metadata),
        "payload": parsed(event.payload),
    }


def _event_line(event: SerializedEvent) -> str:
    return (
        f"{event.position:>12}  {event.timestamp.isoformat(timespec='milliseconds')}  "
        f"{event.aggregate_type} {event.aggregate_id} #{event.sequence}  "
        f"{event.event_type} {event.event_version}"
    )


@events_app.command("show")
def events_show(
    aggregate_type: Annotated[str, typer.Argument(metavar="TYPE", help="The aggregate type.")],
    aggregate_id: Annotated[str, typer.Argument(metavar="ID", help="The aggregate id.")],
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """One aggregate's events: sequence, type, version, time, metadata and payload
    (exit 1 when it has none)."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async def read(repository: PersistedEventRepository) -> list[SerializedEvent]:
            return [e async for e in repository.stream_events(aggregate_type, aggregate_id)]

        events = await _opened(url, read)
        if output.json:
            output.emit_json([_event_dict(event) for event in events])
        elif not events:
            output.print(f"no events for {aggregate_type} {aggregate_id!r}")
        for event in events if not output.json else ():
            data = _event_dict(event)
            output.print(
                f"#{event.sequence}  {event.event_type} {event.event_version}  "
                f"{data['timestamp']}  position {event.position}  id {data['event_id']}"
            )
            output.print(f"  metadata: {msgspec.json.encode(data['metadata']).decode()}")
            output.print_renderable(JSON.from_data(data["payload"], indent=2))
        return EXIT_OK if events else EXIT_FAILURE

    run(output, work)


@events_app.command("tail")
def events_tail(  # noqa: PLR0917 - Typer passes the options
    aggregate_type: TypeOption = None,
    after: Annotated[
        int | None, typer.Option("--after", help="Start after this global position.", min=0)
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following new events (Ctrl-C stops).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Stop after this many events.", min=1)
    ] = None,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """The global stream (of one aggregate type with --type), after a position; with
    --follow it waits for new events (one JSON object per line with --json)."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    def show(event: SerializedEvent) -> None:
        if output.json:
            output.emit_json(_event_dict(event))
        else:
            output.print(_event_line(event))

    async def work() -> int:
        async def tail(repository: PersistedEventRepository) -> int:
            shown = 0
            if follow:
                types = None if aggregate_type is None else [aggregate_type]
                subscription = Subscription(
                    repository, after_position=after, types=types, poll_interval=0.5
                )
                try:
                    async for event in subscription:
                        show(event)
                        shown += 1
                        if limit is not None and shown >= limit:
                            break
                finally:
                    await subscription.close()
                return shown
            async for event in repository.stream_all_events(aggregate_type, after):
                show(event)
                shown += 1
                if limit is not None and shown >= limit:
                    break
            return shown

        await _opened(url, tail)
        return EXIT_OK

    run(output, work, interrupt_ok=follow)


# -- stats ----------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":  # noqa: PLR2004 - binary units
            return f"{value:,.1f} {unit}" if unit != "B" else f"{size:,} B"
        value /= 1024
    return f"{size:,} B"  # pragma: no cover - the loop always returns


@app.command("stats")
def stats(database_url: DatabaseUrl = None, json_output: JsonFlag = False) -> None:
    """Events, aggregates and snapshots per aggregate type, the head position, and the size
    on disk where the backend can tell."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async def collect(repository: PersistedEventRepository) -> dict[str, object]:
            total = await count_events(repository, None, None)
            with output.progress() as progress:
                task = progress.add_task("reading", total=total)
                report = await collect_stats(repository, lambda n: progress.advance(task, n))
            return report.as_dict()

        data = await _opened(url, collect)
        if output.json:
            output.emit_json({"database": output.url(url), **data})
            return EXIT_OK
        table = Table(title=f"{output.url(url)}")
        for column in ("aggregate type", "events", "aggregates", "snapshots", "last position"):
            table.add_column(column, justify="left" if column == "aggregate type" else "right")
        types: dict[str, dict[str, int]] = data["types"]  # type: ignore[assignment]
        for name, row in types.items():
            table.add_row(
                name,
                f"{row['events']:,}",
                f"{row['aggregates']:,}",
                f"{row['snapshots']:,}",
                str(row["last_position"]),
            )
        output.print_renderable(table)
        output.print(
            f"events {data['events']:,}  aggregates {data['aggregates']:,}  "
            f"snapshots {data['snapshots']:,}  head position {data['head_position']}  "
            f"size on disk {_size(data['size_bytes'])}"  # type: ignore[arg-type]
        )
        return EXIT_OK

    run(output, work)


# -- copy -----------------------------------------------------------------------------------


@app.command("copy")
def copy(
    source_url: Annotated[
        str, typer.Option("--from", help="The source store's URL.", show_default=False)
    ],
    target_url: Annotated[
        str, typer.Option("--to", help="The target store's URL.", show_default=False)
    ],
    aggregate_type: TypeOption = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Events per target transaction.", min=1)
    ] = 5000,
    json_output: JsonFlag = False,
) -> None:
    """Copy events and snapshots to another store in global order, keeping ids, sequences,
    event ids, timestamps and metadata; resumable (re-run it after an interruption); ends
    by comparing counts and a checksum of both sides (exit 1 if they differ)."""
    output = Output(json_output=json_output, urls=[source_url, target_url])
    for option, url in (("--from", source_url), ("--to", target_url)):
        if url.lower().startswith("memory:"):
            msg = f"{url} keeps nothing after the command ends; copy between persistent stores"
            raise typer.BadParameter(msg, param_hint=option)

    async def work() -> int:
        async with (
            connect(source_url, create_schema=False) as source,
            connect(target_url) as target,
        ):
            with output.progress() as progress:
                task = progress.add_task("copying", total=None)
                verifying: list[TaskID] = []

                def on_verify(total: int | None) -> Callable[[int], None]:
                    progress.update(task, description="copied")
                    verifying.append(progress.add_task("verifying", total=total))
                    return lambda n: progress.advance(verifying[0], n)

                report = await copy_events(
                    source,
                    target,
                    source_url=source_url,
                    target_url=target_url,
                    aggregate_type=aggregate_type,
                    chunk_size=chunk_size,
                    on_total=lambda total: progress.update(task, total=total),
                    on_progress=lambda n: progress.advance(task, n),
                    on_verify=on_verify,
                )
                for extra in verifying:
                    done = next(t.completed for t in progress.tasks if t.id == extra)
                    progress.update(extra, total=done or 1, completed=done or 1)
        _show_copy(output, report)
        return EXIT_OK if report.equal else EXIT_FAILURE

    run(output, work)


def _show_copy(output: Output, report: CopyReport) -> None:
    if output.json:
        output.emit_json(report.as_dict())
        return
    resumed = (
        f" (resumed after source position {report.resumed_after})" if report.resumed_after else ""
    )
    output.print(f"copied {report.source} -> {report.target}{resumed}")
    output.print(
        f"  {report.read:,} events read, {report.written:,} written, "
        f"{report.read - report.written:,} already there; {report.snapshots:,} snapshots; "
        f"{report.seconds:.1f} s, {report.rate:,.0f} events/s"
    )
    output.print(f"  source: {report.source_count:,} events, checksum {report.source_checksum}")
    output.print(f"  target: {report.target_count:,} events, checksum {report.target_checksum}")
    output.print("  verified: equal" if report.equal else "  NOT EQUAL: the target differs")


# -- verify ---------------------------------------------------------------------------------


@app.command("verify")
def verify(
    aggregate_type: TypeOption = None,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Check the store: gapless sequences per aggregate, positions strictly growing,
    payloads and metadata decodable JSON, snapshots not ahead of their events; exit 1 when
    damage is found."""
    url = require_url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async def check(repository: PersistedEventRepository) -> VerifyReport:
            total = await count_events(repository, aggregate_type, None)
            with output.progress() as progress:
                task = progress.add_task("verifying", total=total)
                return await verify_store(
                    repository, aggregate_type, lambda n: progress.advance(task, n)
                )

        report = await _opened(url, check)
        if output.json:
            output.emit_json({"database": output.url(url), **report.as_dict()})
        else:
            output.print(
                f"{output.url(url)}: {_count(report.events, 'event')}, "
                f"{_count(report.aggregates, 'aggregate')}, "
                f"{_count(report.snapshots, 'snapshot')} checked"
            )
            if report.ok:
                output.print("no damage found")
            for kind in PROBLEM_KINDS:
                if report.counts[kind]:
                    output.print(f"  {kind}: {report.counts[kind]:,} ({PROBLEM_KINDS[kind]})")
            for problem in report.problems:
                output.print(
                    f"  [{problem.kind}] {problem.aggregate_type} {problem.aggregate_id!r} "
                    f"sequence {problem.sequence} position {problem.position}: {problem.detail}"
                )
        return EXIT_OK if report.ok else EXIT_FAILURE

    run(output, work)
