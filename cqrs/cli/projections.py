"""``cqrs projections list | status | run | reset | rebuild``.

Projections are named on the command line as ``module:object`` (the module is imported from
the current directory too). The object is one of:

- a function taking the open repository and returning (or, if it is a coroutine function,
  resolving to) one of the forms below; this is the usual way, since a projection's sources
  (its stores) and its views are built over the repository;
- a projection, or a list of projections;
- an object with a ``projections`` attribute (a list) and, optionally, a ``checkpoints``
  attribute: the :class:`~cqrs.checkpoints.CheckpointStore` they run with (its
  ``create_schema()`` is called). Without one, the repository's
  ``checkpoint_store(--checkpoints-table)`` is used.

``reset`` clears a :class:`~cqrs.ViewProjection`'s views and checkpoint in one transaction
when the views are in the events' database (:func:`cqrs.rebuild.reset_views`), else it sets
the checkpoint back and says that the views must be cleared by their owner. ``rebuild`` is
a reset followed by a run until caught up, with a progress bar; for a rebuild into new
views while the old ones keep serving, use :func:`cqrs.rebuild.rebuild` in code.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cqrs.checkpoints import CheckpointStore
from cqrs.cli.capabilities import count_events
from cqrs.cli.output import EXIT_FAILURE, EXIT_OK, Output
from cqrs.connection import connect
from cqrs.errors import ConfigurationError
from cqrs.projection import Projection, ProjectionRunner, ViewProjection
from cqrs.rebuild import reset_views
from cqrs.repository import PersistedEventRepository

__all__ = ["ProjectionSet", "app", "load_projections"]

_EPILOG = (
    "Projections are given as module:object (a function of the repository returning "
    "projections, a projection, a list, or an object with .projections and .checkpoints). "
    "Exit codes: 0 ok; 1 failure (a projection failed or lags with --fail-on-lag); 2 usage."
)
_BEYOND = 2**62
"""A position no stream reaches: ``ProjectionRunner.wait_for`` then waits for the end."""

app = typer.Typer(
    help="Drive projections given as module:object: list, status, run, reset, rebuild.",
    epilog=_EPILOG,
    no_args_is_help=True,
)

Specs = Annotated[
    list[str], typer.Argument(metavar="MODULE:OBJECT...", help="Where the projections are.")
]
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
Table = Annotated[
    str,
    typer.Option(
        "--checkpoints-table",
        help="The checkpoint table, for projections that do not bring their own store.",
    ),
]
Names = Annotated[
    list[str] | None,
    typer.Option("--name", help="Only the projection of this name (repeatable)."),
]


@dataclass
class ProjectionSet:
    """The projections named on the command line and the checkpoint store they run with."""

    projections: list[Projection]
    checkpoints: CheckpointStore


def _import(spec: str) -> Any:  # noqa: ANN401 - whatever the user's module holds
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        msg = f"{spec!r} is not module:object (e.g. myapp.projections:build)"
        raise ConfigurationError(msg)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        msg = f"cannot import {module_name!r} (from {spec!r}): {error}"
        raise ConfigurationError(msg) from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as error:
            msg = f"{module_name!r} has no {attribute!r} (from {spec!r})"
            raise ConfigurationError(msg) from error
    return found


def _is_projection(value: object) -> bool:
    return all(hasattr(value, name) for name in ("name", "sources", "handle"))


async def load_projections(
    specs: Sequence[str], repository: PersistedEventRepository, table: str = "projections"
) -> ProjectionSet:
    """The projections ``specs`` name (see the module docstring), over ``repository``, with
    their checkpoint store (schema created). ConfigurationError names a spec that cannot be
    imported or does not give projections, and a checkpoint store that differs between
    specs."""
    projections: list[Projection] = []
    stores: list[CheckpointStore] = []
    for spec in specs:
        found = _import(spec)
        if callable(found) and not _is_projection(found):
            found = found(repository)
            if inspect.isawaitable(found):
                found = await found
        if hasattr(found, "projections"):
            if getattr(found, "checkpoints", None) is not None:
                stores.append(found.checkpoints)
            found = found.projections
        items = [found] if _is_projection(found) else found
        if not isinstance(items, list | tuple) or not items or not all(map(_is_projection, items)):
            msg = f"{spec!r} gives no projections (got {type(found).__name__})"
            raise ConfigurationError(msg)
        projections.extend(items)
    if len({id(store) for store in stores}) > 1:
        msg = "the projections bring different checkpoint stores: name them one store at a time"
        raise ConfigurationError(msg)
    checkpoints = stores[0] if stores else repository.checkpoint_store(table)
    await checkpoints.create_schema()
    return ProjectionSet(projections, checkpoints)


def _chosen(found: ProjectionSet, names: list[str] | None) -> list[Projection]:
    if not names:
        return found.projections
    known = {projection.name: projection for projection in found.projections}
    missing = [name for name in names if name not in known]
    if missing:
        msg = f"no projection named {', '.join(map(repr, missing))}; there are {sorted(known)}"
        raise ConfigurationError(msg)
    return [known[name] for name in names]


def _types(projection: Projection) -> list[str]:
    return sorted({source.aggregate_type for source in projection.sources})


async def _lag(
    repository: PersistedEventRepository, projection: Projection, position: int
) -> tuple[int, int]:
    """(events of the projection's types after ``position``, the newest such position)."""
    lag, head = 0, position
    for aggregate_type in _types(projection):
        # The events are read to find the head anyway: counting them costs nothing more.
        async for event in repository.stream_all_events(aggregate_type, position):
            head = max(head, event.position)
            lag += 1
    return lag, head


def _url(url: str | None) -> str:
    from cqrs.cli.app import require_url  # noqa: PLC0415 - app imports this module

    return require_url(url)


def _run(output: Output, work: Any) -> None:  # noqa: ANN401 - the command's coroutine function
    from cqrs.cli.app import run  # noqa: PLC0415 - app imports this module

    run(output, work)


@app.command("list")
def list_projections(
    specs: Specs,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
    table: Table = "projections",
) -> None:
    """The projections: name, aggregate types read, event types, kind and checkpoint."""
    url = _url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async with connect(url, create_schema=False) as repository:
            found = await load_projections(specs, repository, table)
            rows = [
                {
                    "name": p.name,
                    "types": _types(p),
                    "event_types": None if p.event_types is None else sorted(p.event_types),
                    "kind": type(p).__name__,
                    "checkpoint": await found.checkpoints.position(p.name),
                }
                for p in found.projections
            ]
        if output.json:
            output.emit_json(rows)
        for row in rows if not output.json else ():
            chosen: list[str] = row["event_types"] or ["every event"]  # type: ignore[assignment]
            types: list[str] = row["types"]  # type: ignore[assignment]
            output.print(
                f"{row['name']}  ({row['kind']})  reads {', '.join(types)}: "
                f"{', '.join(chosen)}; checkpoint {row['checkpoint']}"
            )
        return EXIT_OK

    _run(output, work)


@app.command("status")
def status(  # noqa: PLR0917 - Typer passes the options
    specs: Specs,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
    table: Table = "projections",
    names: Names = None,
    fail_on_lag: Annotated[
        int | None,
        typer.Option("--fail-on-lag", help="Exit 1 if a projection is more events behind."),
    ] = None,
) -> None:
    """Each projection's checkpoint, head position of its types, lag in events and parked
    events."""
    url = _url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async with connect(url, create_schema=False) as repository:
            found = await load_projections(specs, repository, table)
            rows = []
            for projection in _chosen(found, names):
                checkpoint = await found.checkpoints.position(projection.name)
                lag, head = await _lag(repository, projection, checkpoint)
                parked = await found.checkpoints.parked(projection.name)
                rows.append(
                    {
                        "name": projection.name,
                        "checkpoint": checkpoint,
                        "head": head,
                        "lag_events": lag,
                        "parked": len(parked),
                    }
                )
        if output.json:
            output.emit_json(rows)
        for row in rows if not output.json else ():
            output.print(
                f"{row['name']}: checkpoint {row['checkpoint']}, head {row['head']}, "
                f"lag {row['lag_events']:,} events, {row['parked']} parked"
            )
        lagging = fail_on_lag is not None and any(
            int(row["lag_events"]) > fail_on_lag  # type: ignore[call-overload]
            for row in rows
        )
        return EXIT_FAILURE if lagging else EXIT_OK

    _run(output, work)


@app.command("run")
def run_projections(  # noqa: PLR0917 - Typer passes the options
    specs: Specs,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
    table: Table = "projections",
    names: Names = None,
    until_caught_up: Annotated[
        bool,
        typer.Option("--until-caught-up", help="Stop once every projection has caught up."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 100,
) -> None:
    """Run the projections (under their leases: another runner stands by) until Ctrl-C or
    SIGTERM, or until caught up; exit 1 if one failed."""
    url = _url(database_url)
    output = Output(json_output=json_output, urls=[url])

    async def work() -> int:
        async with connect(url, create_schema=False) as repository:
            found = await load_projections(specs, repository, table)
            runner = ProjectionRunner(
                repository, found.checkpoints, _chosen(found, names), batch_size=batch_size
            )
            return await _drive(output, runner, until_caught_up=until_caught_up)

    _run(output, work)


async def _drive(output: Output, runner: ProjectionRunner, *, until_caught_up: bool) -> int:
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, runner.stop)
    task = asyncio.create_task(runner.run())
    try:
        if until_caught_up:
            waiting = asyncio.create_task(runner.wait_for(_BEYOND, timeout=10.0**9))
            await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                waiting.result()
            runner.stop()
        await task
    except RuntimeError:  # a projection failed: reported below
        runner.stop()
        await task
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
    statuses = runner.status()
    rows = [
        {
            "name": name,
            "state": s.state,
            "checkpoint": s.checkpoint,
            "head": s.head,
            "lag_events": s.lag_events,
            "error": s.error,
        }
        for name, s in statuses.items()
    ]
    if output.json:
        output.emit_json(rows)
    for row in rows if not output.json else ():
        error = f" ({row['error']})" if row["error"] else ""
        output.print(f"{row['name']}: {row['state']} at {row['checkpoint']}{error}")
    return EXIT_FAILURE if any(s.state == "failed" for s in statuses.values()) else EXIT_OK


async def _reset(
    output: Output, found: ProjectionSet, projection: Projection, position: int
) -> None:
    if (
        position == 0
        and isinstance(projection, ViewProjection)
        and projection.commits_with(found.checkpoints)
    ):
        await reset_views(found.checkpoints, projection)
        output.note(f"{projection.name}: views cleared, checkpoint 0")
        return
    await found.checkpoints.reset(projection.name, position)
    output.note(
        f"{projection.name}: checkpoint {position}; its views (if any) are not in the "
        "checkpoints' database: clear them yourself"
        if isinstance(projection, ViewProjection)
        else f"{projection.name}: checkpoint {position}"
    )


@app.command("reset")
def reset(  # noqa: PLR0917 - Typer passes the options
    specs: Specs,
    database_url: DatabaseUrl = None,
    table: Table = "projections",
    names: Names = None,
    to: Annotated[int, typer.Option("--to", min=0, help="The new checkpoint.")] = 0,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Set projections back (to 0: their views are cleared where the checkpoints' database
    holds them); the runner holding one is fenced off and the next one starts there."""
    url = _url(database_url)
    output = Output(urls=[url])
    if not yes:
        typer.confirm("Reset these projections (their views are rebuilt)?", abort=True)

    async def work() -> int:
        async with connect(url, create_schema=False) as repository:
            found = await load_projections(specs, repository, table)
            for projection in _chosen(found, names):
                await _reset(output, found, projection, to)
        return EXIT_OK

    _run(output, work)


@app.command("rebuild")
def rebuild(  # noqa: PLR0917 - Typer passes the options
    specs: Specs,
    database_url: DatabaseUrl = None,
    json_output: JsonFlag = False,
    table: Table = "projections",
    names: Names = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
) -> None:
    """Reset the projections and run them until caught up, with a progress bar (stop any
    other runner of them first, or it takes part in the rebuild)."""
    url = _url(database_url)
    output = Output(json_output=json_output, urls=[url])
    if not yes:
        typer.confirm("Rebuild these projections from the first event?", abort=True)

    async def work() -> int:
        async with connect(url, create_schema=False) as repository:
            found = await load_projections(specs, repository, table)
            chosen = _chosen(found, names)
            for projection in chosen:
                await _reset(output, found, projection, 0)
            runner = ProjectionRunner(repository, found.checkpoints, chosen, batch_size=batch_size)

            async def remaining() -> int | None:
                """Events still to apply, if the backend can count them (else no total)."""
                left = 0
                for projection in chosen:
                    checkpoint = runner.status()[projection.name].checkpoint
                    for aggregate_type in _types(projection):
                        counted = await count_events(repository, aggregate_type, checkpoint)
                        if counted is None:
                            return None
                        left += counted
                return left

            total = await remaining()
            with output.progress() as progress:
                task = progress.add_task("rebuilding", total=total)

                async def follow() -> None:
                    while total is not None:
                        await asyncio.sleep(0.2)
                        left = await remaining()
                        progress.update(task, completed=total - (left or 0))

                watcher = asyncio.create_task(follow())
                try:
                    code = await _drive(output, runner, until_caught_up=True)
                finally:
                    watcher.cancel()
                progress.update(task, total=total or 1, completed=total or 1)
            return code

    _run(output, work)
