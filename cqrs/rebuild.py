"""Rebuilding a projection: a plain reset, or a rebuild into new views without downtime.

A plain reset (:func:`reset_views`) deletes a :class:`~cqrs.projection.ViewProjection`'s
views and sets its checkpoint back to 0 in one transaction of the events' database: the
runner holding it is fenced off, and whichever runner takes it next rebuilds the views from
the first event. Readers see the views empty, then filling up.

A rebuild without downtime (:func:`rebuild`) runs the projection under a new name into new
views (``projection.renamed(name, views)``) while the old one keeps running and serving;
once the new one has applied every event committed before the rebuild started and has read
to the end of the stream, ``switch`` is called: point readers at the new views (a
:class:`SwitchableViews` does it for readers in this process; other processes restart with
the new table name), then run the new projection instead of the old one and drop the old
tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from cqrs.checkpoints import CheckpointStore, ViewCheckpointStore
from cqrs.errors import ConfigurationError
from cqrs.projection import Projection, ProjectionRunner, ViewProjection
from cqrs.repository import PersistedEventRepository, ViewContext, ViewRepository

__all__ = ["SwitchableViews", "rebuild", "reset_views"]

V = TypeVar("V")


async def reset_views(checkpoints: CheckpointStore, projection: ViewProjection[Any]) -> None:
    """Delete every view of ``projection`` and set its checkpoint to 0, in one transaction
    (its views must be in the checkpoint store's database: ``projection.commits_with``);
    the runner running it is fenced off and the next one rebuilds the views from the start.
    Raise ConfigurationError when the views are elsewhere: clear them yourself, then
    ``checkpoints.reset(projection.name)``."""
    if not projection.commits_with(checkpoints) or not isinstance(checkpoints, ViewCheckpointStore):
        msg = (
            f"the views of projection {projection.name!r} are not in the database of "
            f"{checkpoints!r}: delete them yourself, then reset its checkpoint"
        )
        raise ConfigurationError(msg)
    await checkpoints.reset_with_views(projection.name, [projection.view_repository], 0)


async def rebuild(
    repository: PersistedEventRepository,
    checkpoints: CheckpointStore,
    projection: Projection,
    switch: Callable[[], Awaitable[None] | None],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the documented bound of the whole rebuild
    **options: Any,  # noqa: ANN401 - ProjectionRunner's options, passed on
) -> int:
    """Run ``projection`` (a new name, new views) by itself until it has caught up, then call
    ``switch()`` once (a function or a coroutine function) and return its checkpoint.

    Caught up means a read that started after this call reached the end of the stream, so
    every event committed before this call is applied. The projection is run by a
    :class:`~cqrs.projection.ProjectionRunner` over ``repository`` and ``checkpoints`` with
    ``options`` (``batch_size``, ``lease_ttl``...), under its lease, so it resumes where it
    was if the rebuild is interrupted and started again. Meanwhile the old projection keeps
    running wherever it runs, and its views keep serving. Raise TimeoutError after
    ``timeout`` seconds (None: no limit), RuntimeError if the projection fails."""
    runner = ProjectionRunner(repository, checkpoints, [projection], **options)
    task = asyncio.create_task(runner.run())
    # wait_for returns once a read that started after this call found the end of the stream
    waiting = asyncio.create_task(runner.wait_for(_BEYOND, timeout=timeout or _FOREVER))
    try:
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what ended the run, if anything did
        # run() returns by itself only once the projection failed, and wait_for then raises
        # the failure at its next check: whichever ends first, the error names the cause.
        await waiting  # TimeoutError, or RuntimeError if the projection failed
        runner.stop()
        await task
    finally:
        for pending in (waiting, task):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
    switched = switch()
    if inspect.isawaitable(switched):
        await switched
    return await checkpoints.position(projection.name)


_BEYOND = 2**62
"""A position no stream reaches: wait_for then waits for the end of the stream."""

_FOREVER = 10.0**9


class SwitchableViews(Generic[V]):
    """A :class:`~cqrs.repository.ViewRepository` that reads and writes through to
    ``current`` until :meth:`switch` points it at another one: give it to readers (an API)
    and call ``switch(new_views)`` from :func:`rebuild`'s ``switch``."""

    def __init__(self, current: ViewRepository[V]) -> None:
        self.current = current

    def switch(self, views: ViewRepository[V]) -> None:
        """Serve ``views`` from now on."""
        if views is self:
            msg = "a SwitchableViews cannot point at itself"
            raise ConfigurationError(msg)
        self.current = views

    async def create_schema(self) -> None:
        """Create the current views' table."""
        await self.current.create_schema()

    async def load(self, view_id: str) -> V | None:
        """The view from the current views."""
        return await self.current.load(view_id)

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its context from the current views."""
        return await self.current.load_with_context(view_id)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store the view in the current views."""
        await self.current.update_view(view, context, version)
