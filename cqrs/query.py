"""The read side: queries fed after each commit, views, and replays."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from cqrs import telemetry
from cqrs.aggregate import Aggregate
from cqrs.errors import AggregateConflict, ConfigurationError
from cqrs.events import EventEnvelope
from cqrs.repository import ViewContext, ViewRepository
from cqrs.store import PersistedEventStore

__all__ = ["EventSource", "GenericQuery", "Query", "QueryReplay", "View"]

logger = logging.getLogger("cqrs.query")

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
E_contra = TypeVar("E_contra", contravariant=True)
V = TypeVar("V", bound="View[Any]")  # Any: a view may accept any narrower event type


class Query(Protocol[E_contra]):
    """Receives the envelopes of each commit, in commit order for one aggregate.

    The framework calls every registered query in registration order after the commit; a
    query that raises is logged and reported, and never undoes the commit.
    """

    async def dispatch(self, aggregate_id: str, events: Sequence[EventEnvelope[E_contra]]) -> None:
        """Handle the events just committed to ``aggregate_id``."""
        ...


class View(Protocol[E_contra]):
    """A read model built from events. ``ViewType()`` must give the empty view, and the view
    must be encodable by the codec (a dataclass or ``msgspec.Struct``)."""

    def update(self, event: EventEnvelope[E_contra]) -> None:
        """Change the view by one event."""
        ...


class EventSource(Protocol):
    """Where GenericQuery fetches events a view is missing (an EventStore is one)."""

    async def load_events(
        self, aggregate_id: str, after_sequence: int = 0
    ) -> Sequence[EventEnvelope[object]]:
        """The events of one aggregate after ``after_sequence``, by sequence."""
        ...


class GenericQuery(Generic[V]):
    """A query that keeps one view per aggregate (view id = aggregate id) in a repository.

    The stored view's version is the sequence of the last event applied to it, so a dispatch
    applies each event exactly once and in sequence order, whatever order concurrent
    dispatches arrive in: events at or below the version are skipped (a repeated dispatch or
    a replay over an existing view changes nothing). A dispatch that would leave a gap
    fetches the missing events from ``store`` when one is given (so a view that missed an
    update, say because a process died after its commit, heals at the next command);
    without a store it waits for the earlier commit's dispatch to land. When another writer
    changed the view in between, or a gap remains, it waits a random moment (growing with
    each try, at most ``max_delay`` seconds) and tries again, up to ``attempts`` times, then
    raises AggregateConflict (the framework reports it; ``QueryReplay.replay(aggregate_id)``
    heals a view left behind).
    """

    def __init__(
        self,
        view_repository: ViewRepository[V],
        view_type: Callable[[], V],
        *,
        store: EventSource | None = None,
        attempts: int = 20,
        max_delay: float = 0.05,
    ) -> None:
        if not isinstance(attempts, int) or attempts < 1:
            msg = f"GenericQuery attempts must be at least 1, not {attempts!r}"
            raise ConfigurationError(msg)
        self.view_repository = view_repository
        self.view_type = view_type
        self.store = store
        self.attempts = attempts
        self.max_delay = max_delay

    async def dispatch(self, aggregate_id: str, events: Sequence[EventEnvelope[object]]) -> None:
        """Apply ``events`` (of one aggregate, by sequence) to its view and store it."""
        problem = "kept changing"
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.max_delay, 0.001 * 2**attempt)
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter
            loaded = await self.view_repository.load_with_context(aggregate_id)
            view, context = loaded or (self.view_type(), ViewContext(aggregate_id, 0))
            pending = [event for event in events if event.sequence > context.version]
            if not pending:
                return
            if pending[0].sequence != context.version + 1 and self.store is not None:
                stored = await self.store.load_events(aggregate_id, context.version)
                first = pending[0].sequence
                pending = [event for event in stored if event.sequence < first] + pending
            if pending[0].sequence != context.version + 1:
                problem = (
                    f"is at sequence {context.version} but the next events start at "
                    f"{pending[0].sequence}"
                )
                continue
            for event in pending:
                view.update(event)
            try:
                await self.view_repository.update_view(view, context, pending[-1].sequence)
            except AggregateConflict:
                problem = "kept changing"
                continue
            return
        msg = f"view {aggregate_id!r} {problem}; gave up after {self.attempts} attempts"
        raise AggregateConflict(msg)

    async def load(self, view_id: str) -> V | None:
        """The stored view, or None."""
        return await self.view_repository.load(view_id)


class QueryReplay(Generic[C, E, S]):
    """Feeds stored events to a query again, to rebuild a view or backfill a projection.

    ``QueryReplay[C, E, S]`` replays the events ``E`` of a store of ``Aggregate[C, E, S]``
    (any aggregate class) into a ``Query[E]``.

    Events are read in pages (bounded memory), decoded and upcast like on load, and each is
    dispatched exactly once, in stream order, one batch per ``dispatch`` call. A batch holds
    consecutive events of one aggregate and is full (``batch_size`` events) unless the run
    of that aggregate's events or the stream ends first: 7 events of one aggregate with
    ``batch_size=3`` are dispatched as batches of 3, 3 and 1. Dispatches are awaited one at
    a time. A ``GenericQuery`` skips events its views already include, so a replay fills in
    what a view missed; to rebuild views from scratch, replay into an empty table (a new
    one, then switch). ``batch_size`` below 1 is a ConfigurationError.

    Each replay is one ``replay <Query>`` span when tracing (see :mod:`cqrs.telemetry`) and
    one INFO line on ``cqrs.query`` when it ends.
    """

    def __init__(
        self,
        store: PersistedEventStore[Aggregate[C, E, S], C, E, S],
        query: Query[E],
        *,
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            msg = f"QueryReplay batch_size must be at least 1, not {batch_size!r}"
            raise ConfigurationError(msg)
        self.store = store
        self.query = query
        self.batch_size = batch_size

    async def replay(self, aggregate_id: str) -> int:
        """Dispatch every event of one aggregate, by sequence, in batches of ``batch_size``
        (the last one holds the rest); return how many were dispatched."""
        count = await telemetry.within(
            telemetry.span("replay", type(self.query).__name__), self._replay(aggregate_id)
        )
        logger.info("replayed %d event(s) of %r into %r", count, aggregate_id, self.query)
        return count

    async def _replay(self, aggregate_id: str) -> int:
        batch: list[EventEnvelope[E]] = []
        count = 0
        async for envelope in self.store.stream_events(aggregate_id):
            batch.append(envelope)
            if len(batch) >= self.batch_size:
                await self.query.dispatch(aggregate_id, batch)
                count += len(batch)
                batch = []
        if batch:
            await self.query.dispatch(aggregate_id, batch)
            count += len(batch)
        return count

    async def replay_all(self, after_position: int | None = None) -> int:
        """Dispatch every event of the store's aggregate type after ``after_position``, in
        global order; a batch ends where ``batch_size`` is reached or the next event belongs
        to another aggregate (so one aggregate's events may come in several batches, between
        other aggregates'). Return how many were dispatched."""
        count = await telemetry.within(
            telemetry.span("replay", type(self.query).__name__), self._replay_all(after_position)
        )
        logger.info(
            "replayed %d event(s) of %s after position %s into %r",
            count,
            self.store.aggregate_type,
            after_position,
            self.query,
        )
        return count

    async def _replay_all(self, after_position: int | None) -> int:
        batch: list[EventEnvelope[E]] = []
        count = 0
        async for envelope in self.store.stream_all_events(after_position):
            if batch and (
                batch[0].aggregate_id != envelope.aggregate_id or len(batch) >= self.batch_size
            ):
                await self.query.dispatch(batch[0].aggregate_id, batch)
                count += len(batch)
                batch = []
            batch.append(envelope)
        if batch:
            await self.query.dispatch(batch[0].aggregate_id, batch)
            count += len(batch)
        return count
