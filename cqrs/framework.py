"""CqrsFramework: load, decide, commit, then feed the queries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from cqrs import telemetry
from cqrs.errors import AggregateConflict, CqrsError, UnexpectedError, UserError
from cqrs.events import EventEnvelope
from cqrs.query import Query
from cqrs.store import AggregateContext, EventStore, validate_input

__all__ = ["CqrsFramework", "QueryFailure", "Retry"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")

logger = logging.getLogger("cqrs.framework")


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry on AggregateConflict: up to ``attempts`` tries in all, sleeping a random time
    between 0 and ``min(max_delay, base_delay * 2**n)`` before try n+1 (full jitter)."""

    attempts: int = 5
    base_delay: float = 0.002
    max_delay: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            msg = f"invalid {self!r}: attempts must be >= 1 and delays >= 0"
            raise ValueError(msg)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))  # noqa: S311 - jitter, not crypto


@dataclass(frozen=True, slots=True)
class QueryFailure(Generic[E]):
    """A query that raised after a commit: which query, for which events, and the error."""

    query: Query[E]
    aggregate_id: str
    events: Sequence[EventEnvelope[E]]
    error: Exception


class CqrsFramework(Generic[C, E, S]):
    """Executes commands against aggregates held in an :class:`~cqrs.store.EventStore`.

    ``CqrsFramework[C, E, S]`` takes commands ``C``, returns envelopes of events ``E`` and
    passes services ``S`` to the handler; all three are inferred from the store
    (``CqrsFramework(PersistedEventStore(repository, BankAccount))`` takes exactly
    BankAccount's commands), so a command of the wrong type is a type error.

    ``execute`` loads the aggregate, calls its ``handle`` with the services, commits the
    events with optimistic concurrency and then dispatches the committed envelopes to every
    query in registration order. A command that yields no events commits and dispatches
    nothing. Query failures are logged on the ``cqrs.framework`` logger and passed to
    ``on_query_error``; they never undo the commit and are not raised to the caller.
    A conflict that outlasts every retry is logged there too (WARNING); each retry, each
    command's outcome and each refusal at DEBUG.
    With OpenTelemetry configured, each command is a span with the load, handle, commit and
    dispatch spans below it, and is counted and timed (see :mod:`cqrs.telemetry`).

    Errors: :class:`~cqrs.errors.UserError` when the handler refuses (raises one of the
    aggregate's ``user_errors``, by default :class:`~cqrs.errors.DomainError`);
    :class:`~cqrs.errors.UnexpectedError` when it raises anything else (a bug; the original
    is the ``__cause__``); :class:`~cqrs.errors.AggregateConflict` when another writer won;
    and the store's connection and deserialization errors. With ``retry``, only
    AggregateConflict is retried (a fresh load and a new decision each time, up to
    ``retry.attempts`` tries in all); every other error is raised at once, after one try.
    """

    def __init__(
        self,
        store: EventStore[C, E, S],
        queries: Sequence[Query[E]] = (),
        services: S | None = None,
        *,
        retry: Retry | None = None,
        on_query_error: Callable[[QueryFailure[E]], object] | None = None,
    ) -> None:
        self.store = store
        self.queries = tuple(queries)
        self.services = cast("S", services)
        self.retry = retry
        self.on_query_error = on_query_error

    async def execute(
        self, aggregate_id: str, command: C, *, expected_version: int | None = None
    ) -> list[EventEnvelope[E]]:
        """Execute ``command`` on ``aggregate_id``; return the committed envelopes."""
        return await self.execute_with_metadata(
            aggregate_id, command, {}, expected_version=expected_version
        )

    async def execute_with_metadata(
        self,
        aggregate_id: str,
        command: C,
        metadata: Mapping[str, str],
        *,
        expected_version: int | None = None,
    ) -> list[EventEnvelope[E]]:
        """Like :meth:`execute`, storing ``metadata`` (str to str) with every event.

        With ``expected_version``, the command runs only if the aggregate's version (the
        sequence of its last event) equals it; otherwise AggregateConflict is raised and
        nothing is retried. ``expected_version=0`` creates a new aggregate without reading
        the store first (one round trip less); only when the handler refuses or yields no
        events is the store read, to raise AggregateConflict if the aggregate exists.
        """
        validate_input(aggregate_id, metadata)
        probe = telemetry.command(self.store, command, aggregate_id, expected_version)
        if probe is None:
            return await self._execute(aggregate_id, command, metadata, expected_version, None)
        with probe:
            return await self._execute(aggregate_id, command, metadata, expected_version, probe)

    def _aggregate_type(self) -> str:
        return telemetry.aggregate_type_of(self.store)

    async def _execute(
        self,
        aggregate_id: str,
        command: C,
        metadata: Mapping[str, str],
        expected_version: int | None,
        probe: telemetry.Command | None,
    ) -> list[EventEnvelope[E]]:
        retry = None if expected_version is not None else self.retry
        attempts = 1 if retry is None else retry.attempts
        for attempt in range(attempts):
            try:
                envelopes = await self._execute_once(
                    aggregate_id, command, metadata, expected_version, probe
                )
            except AggregateConflict as error:
                last = retry is None or attempt + 1 >= attempts
                delay = None if retry is None or last else retry.delay(attempt)
                if probe is not None:
                    probe.conflict(delay)
                if delay is None:
                    if attempts > 1:
                        logger.warning(
                            "%s on %s %r: conflict after %d tries, giving up: %s",
                            type(command).__qualname__,
                            self._aggregate_type(),
                            aggregate_id,
                            attempts,
                            error,
                        )
                    raise
                logger.debug(
                    "%s on %s %r: conflict on try %d, retrying in %.4f s",
                    type(command).__qualname__,
                    self._aggregate_type(),
                    aggregate_id,
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if probe is not None:
                probe.events = len(envelopes)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s on %s %r: %d event(s) committed, at version %s",
                    type(command).__qualname__,
                    self._aggregate_type(),
                    aggregate_id,
                    len(envelopes),
                    envelopes[-1].sequence if envelopes else "unchanged",
                )
            if envelopes:
                await self._dispatch(aggregate_id, envelopes, probe)
            return envelopes
        raise AssertionError("unreachable")  # pragma: no cover

    async def _execute_once(
        self,
        aggregate_id: str,
        command: C,
        metadata: Mapping[str, str],
        expected_version: int | None,
        probe: telemetry.Command | None,
    ) -> list[EventEnvelope[E]]:
        if expected_version == 0:
            # A new aggregate: nothing to load. If it exists after all, the commit at
            # sequence 1 collides and raises AggregateConflict, as the version check would.
            context = AggregateContext(aggregate_id, self.store.new_aggregate(aggregate_id), 0)
        else:
            context = await self.store.load_aggregate(aggregate_id)
        if expected_version is not None and context.version != expected_version:
            msg = f"{aggregate_id!r} is at version {context.version}, expected {expected_version}"
            raise AggregateConflict(msg)
        aggregate = context.aggregate
        traced = (
            None
            if probe is None
            else probe.span_for(f"handle {type(command).__name__}", aggregate.user_errors)
        )
        try:
            if traced is None:
                events = await aggregate.handle(command, self.services)
            else:
                with traced:
                    events = await aggregate.handle(command, self.services)
        except CqrsError:
            raise
        except aggregate.user_errors as error:
            if expected_version == 0:
                await self._check_new(aggregate_id)
            logger.debug(
                "%s on %s %r refused: %s",
                type(command).__qualname__,
                aggregate.aggregate_type,
                aggregate_id,
                error,
            )
            raise UserError(error) from error
        except Exception as error:
            msg = f"{type(aggregate).__qualname__}.handle raised {error!r}"
            raise UnexpectedError(msg) from error
        if not events:
            if expected_version == 0:
                await self._check_new(aggregate_id)
            return []
        return await self.store.commit(events, context, metadata)

    async def _check_new(self, aggregate_id: str) -> None:
        # expected_version=0 skipped the load. Only a commit proves the aggregate new, so a
        # refused or empty outcome is checked now: decided on the empty state of an aggregate
        # that exists, it is the version mismatch, not the user's answer.
        version = (await self.store.load_aggregate(aggregate_id)).version
        if version != 0:
            msg = f"{aggregate_id!r} is at version {version}, expected 0"
            raise AggregateConflict(msg)

    async def _dispatch(
        self,
        aggregate_id: str,
        envelopes: list[EventEnvelope[E]],
        probe: telemetry.Command | None,
    ) -> None:
        for query in self.queries:
            traced = None if probe is None else probe.span_for(f"dispatch {type(query).__name__}")
            try:
                if traced is None:
                    await query.dispatch(aggregate_id, envelopes)
                else:
                    with traced:
                        await query.dispatch(aggregate_id, envelopes)
            except Exception as error:  # noqa: BLE001 - reported below, never undoes the commit
                if probe is None:
                    telemetry.query_failed(query)
                else:
                    probe.query_failed(query)
                self._report(QueryFailure(query, aggregate_id, envelopes, error))

    def _report(self, failure: QueryFailure[E]) -> None:
        logger.error(
            "query %r failed on %d event(s) of %r",
            failure.query,
            len(failure.events),
            failure.aggregate_id,
            exc_info=failure.error,
        )
        if self.on_query_error is not None:
            try:
                self.on_query_error(failure)
            except Exception:
                logger.exception("on_query_error raised while reporting a query failure")
