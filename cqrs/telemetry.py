"""OpenTelemetry traces and metrics, when ``opentelemetry-api`` is installed (the ``otel`` extra).

Nothing here is needed to run the framework. ``opentelemetry`` is imported once, when this
module is; without it every hook is a call that returns None at once. With the API but no
SDK configured (no global tracer or meter provider set, nothing passed to :func:`configure`)
the hooks see that with a dictionary lookup and do nothing either: no span objects, no
context switches, no metric calls. Once an application sets a provider (the SDK's
``trace.set_tracer_provider`` / ``metrics.set_meter_provider``, or the
``opentelemetry-instrument`` launcher), the next command is traced and measured.

Traces (tracer ``cqrs``):

- ``execute <Command>``: one span per :meth:`CqrsFramework.execute
  <cqrs.CqrsFramework.execute>`, with ``cqrs.aggregate.type``, ``cqrs.command.type``,
  ``cqrs.events.count``, ``cqrs.expected_version`` (when given), ``cqrs.retries`` and
  ``cqrs.outcome`` (``ok``, ``user_error``, ``conflict``, ``unexpected`` or ``error`` for
  anything else, such as a lost database). ``cqrs.aggregate.id`` is set only after
  ``configure(record_aggregate_id=True)``: an id can be personal data. Its children:
  ``load <type>`` (per try), ``handle <Command>`` (per try), ``commit <type>`` (per try
  that reaches the store) and ``dispatch <Query>`` (per query, after the commit). A retry
  after a conflict is an event named ``retry`` on the execute span. A user error is an
  outcome, not a failure: the span's status stays unset; every other error sets it to
  ERROR with the exception recorded.
- ``project <name>``: one span per projection batch a :class:`~cqrs.ProjectionRunner`
  applies, with ``cqrs.projection``, ``cqrs.events.count`` and the positions it covers, and
  a link to the commit of each event in it (at most :data:`MAX_LINKS` distinct ones).
- ``subscription page``: one span per page of up to ``page_size`` events a
  :class:`~cqrs.Subscription` reads (:data:`SUBSCRIPTION_PAGE` when the repository does
  not say), linked the same way.

Context propagation: a commit made while its span records stores the W3C trace context of
the commit span in each event's metadata under :data:`TRACEPARENT` (and
:data:`TRACESTATE` when there is one), unless the metadata already has a ``traceparent``
(a context handed over from elsewhere is kept). A projection in another process links its
batch span to that context. These keys are reserved: do not use them for other data.

Metrics (meter ``cqrs``): ``cqrs.command.duration`` (seconds; a histogram, whose count is
the number of commands) by aggregate type, command type and outcome, recorded
:data:`DURATION_BATCH` commands at a time and at every collection, so that a collection
sees every command that ended before it (its points carry no exemplars);
``cqrs.command.conflicts`` (every conflict, retried or not) and ``cqrs.command.retries``;
``cqrs.events.committed`` by aggregate type (an observable counter: counted in process,
read when the meter collects, so its points carry no exemplars); ``cqrs.query.failures``
by query; ``cqrs.projection.events`` (events handed to a projection),
``cqrs.projection.lag.events`` and ``cqrs.projection.lag.seconds`` (gauges of every
projection a runner of this process runs: see :class:`~cqrs.projection.ProjectionStatus`);
``cqrs.subscription.wake_ups`` and ``cqrs.subscription.reconnects`` by consumer
(``subscription`` or the projection's name).

Database spans come from the drivers' own instrumentations (``opentelemetry-
instrumentation-psycopg``, ``-pymongo``, ``-sqlite3``); the load and commit spans are
current while the driver runs, so its spans nest under them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import msgspec

from cqrs.errors import AggregateConflict, UnexpectedError, UserError

try:
    from opentelemetry import context as _context
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags, TraceState

    _OTEL = True
except ImportError:  # the otel extra is not installed: every hook stays off
    _OTEL = False

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from cqrs.repository import SerializedEvent

__all__ = [
    "DURATION_BATCH",
    "MAX_LINKS",
    "SUBSCRIPTION_PAGE",
    "TRACEPARENT",
    "TRACESTATE",
    "available",
    "configure",
]

TRACEPARENT = "traceparent"
"""The metadata key of the W3C ``traceparent`` of the commit that stored an event."""

TRACESTATE = "tracestate"
"""The metadata key of the W3C ``tracestate`` stored beside :data:`TRACEPARENT`, if any."""

MAX_LINKS = 128
"""At most this many distinct commits are linked from one projection batch or page span."""

SUBSCRIPTION_PAGE = 500
"""Events per subscription page span when the repository has no ``page_size``."""

_NAME = "cqrs"
T = TypeVar("T")
_OUTCOMES = {UserError: "user_error", AggregateConflict: "conflict", UnexpectedError: "unexpected"}


class _Settings:
    __slots__ = (
        "instruments",
        "meter_provider",
        "record_aggregate_id",
        "slow_commit",
        "tracer",
        "tracer_provider",
    )

    def __init__(self) -> None:
        self.tracer_provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.tracer: Tracer | None = None
        self.instruments: _Instruments | None = None
        self.record_aggregate_id = False
        self.slow_commit: float | None = 1.0


settings = _Settings()
"""The current settings (read them; change them with :func:`configure`)."""


def available() -> bool:
    """Whether ``opentelemetry-api`` could be imported."""
    return _OTEL


def configure(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    record_aggregate_id: bool = False,
    slow_commit: float | None = 1.0,
) -> None:
    """Set how the framework reports itself; every call replaces all earlier settings.

    ``tracer_provider`` / ``meter_provider``: where spans and metrics go (default: the
    global providers, once the application sets them). ``record_aggregate_id``: put
    ``cqrs.aggregate.id`` on the command spans (off by default: ids can be personal data).
    ``slow_commit``: a commit whose write takes longer than this many seconds is logged as
    a WARNING on ``cqrs.store`` (None: never). A provider given without ``opentelemetry``
    installed is a :class:`~cqrs.errors.ConfigurationError`.
    """
    from cqrs.errors import ConfigurationError  # noqa: PLC0415 - only to refuse

    if (tracer_provider is not None or meter_provider is not None) and not _OTEL:
        msg = "a tracer or meter provider needs opentelemetry: pip install 'cqrs-es[otel]'"
        raise ConfigurationError(msg)
    if slow_commit is not None and not slow_commit >= 0:
        msg = f"slow_commit must be a number of seconds >= 0 or None, not {slow_commit!r}"
        raise ConfigurationError(msg)
    settings.tracer_provider = tracer_provider
    settings.meter_provider = meter_provider
    settings.tracer = None
    settings.instruments = None
    settings.record_aggregate_id = bool(record_aggregate_id)
    settings.slow_commit = slow_commit


# -- is anything configured? ---------------------------------------------------------------------
#
# The API's global providers can be set once per process. Until then get_tracer_provider()
# returns a proxy, and asking costs a function call and an os.environ lookup (about 0.7 µs,
# twice per command); reading the API module's global directly costs a dict lookup. Should
# a later API rename that global, or a provider be named by environment variable, we ask the
# API each time instead (its no-op objects then stand in for ours).

if _OTEL:
    _TRACE_GLOBALS: dict[str, Any] = vars(_trace)
    _METRICS_GLOBALS: dict[str, Any] = vars(_metrics._internal)  # noqa: SLF001 - see above
    _TRACE_KNOWN = "_TRACER_PROVIDER" in _TRACE_GLOBALS and (
        "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    )
    _METRICS_KNOWN = "_METER_PROVIDER" in _METRICS_GLOBALS and (
        "OTEL_PYTHON_METER_PROVIDER" not in os.environ
    )


def tracer() -> Tracer | None:
    """The framework's tracer, or None when no tracer provider is configured."""
    found = settings.tracer
    if found is not None:
        return found
    if not _OTEL:
        return None
    provider = settings.tracer_provider
    if provider is None:
        if _TRACE_KNOWN and _TRACE_GLOBALS.get("_TRACER_PROVIDER") is None:
            return None
        provider = _trace.get_tracer_provider()
    settings.tracer = found = provider.get_tracer(_NAME, _version())
    return found


def instruments() -> _Instruments | None:
    """The framework's metric instruments, or None when no meter provider is configured."""
    found = settings.instruments
    if found is not None:
        return found
    if not _OTEL:
        return None
    provider = settings.meter_provider
    if provider is None:
        if _METRICS_KNOWN and _METRICS_GLOBALS.get("_METER_PROVIDER") is None:
            return None
        provider = _metrics.get_meter_provider()
    settings.instruments = found = _Instruments(provider.get_meter(_NAME, _version()))
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - once

    try:
        return version("cqrs-es")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class _Instruments:
    __slots__ = (
        "conflicts",
        "measures",
        "projection_events",
        "query_failures",
        "reconnects",
        "retries",
        "wake_ups",
    )

    def __init__(self, meter: Meter) -> None:
        self.measures = _Meter.of(meter)
        self.conflicts = meter.create_counter(
            "cqrs.command.conflicts", "{conflict}", "Commits refused because another won"
        )
        self.retries = meter.create_counter(
            "cqrs.command.retries", "{retry}", "Commands tried again after a conflict"
        )
        self.query_failures = meter.create_counter(
            "cqrs.query.failures", "{failure}", "Query dispatches that raised after a commit"
        )
        self.projection_events = meter.create_counter(
            "cqrs.projection.events", "{event}", "Events handed to projections"
        )
        self.wake_ups = meter.create_counter(
            "cqrs.subscription.wake_ups", "{wake_up}", "Waits for new events that ended"
        )
        self.reconnects = meter.create_counter(
            "cqrs.subscription.reconnects",
            "{reconnect}",
            "Reads that succeeded again after the database was lost",
        )
        meter.create_observable_gauge(
            "cqrs.projection.lag.events",
            [_lag_events],
            "{event}",
            "Positions read by a projection and not yet applied",
        )
        meter.create_observable_gauge(
            "cqrs.projection.lag.seconds",
            [_lag_seconds],
            "s",
            "Age of the oldest event a projection has read and not yet applied",
        )


# What every command measures is kept in process and handed to the SDK in bulk (see _Meter).
# An SDK measurement is costly, most of all when the process has just waited for a database:
# the metric pipeline's code and data are no longer in the CPU's caches. Measured on a
# loaded 2-vCPU VM: a counter.add() right after a PostgreSQL commit took about 80 us of CPU,
# 11 us in a tight in-memory loop; a histogram record() at the end of a command 50 us, 12 us.
DURATION_BATCH = 64
"""Command durations are recorded into ``cqrs.command.duration`` this many at a time (and
whatever is pending whenever the meter collects)."""

_meters: weakref.WeakKeyDictionary[Any, _Meter] = weakref.WeakKeyDictionary()
_meters_lock = threading.Lock()  # commits may come from several event loops' threads


class _Meter:
    """The measurements of one meter kept in process: the events committed per aggregate type
    (an observable counter reads them) and the command durations not yet recorded.

    The histogram gets the durations ``DURATION_BATCH`` at a time, one cold SDK call and
    the rest warm, and at every collection: the SDK calls the observable counter's callback
    before it collects the instruments, and the callback records what is pending first.
    One per meter, so that a meter asked again (after :func:`configure`) keeps its
    callback, which the SDK registers once."""

    __slots__ = ("committed", "duration", "pending")

    def __init__(self, meter: Meter) -> None:
        self.committed: dict[str, int] = {}
        self.pending: list[tuple[float, Mapping[str, str | int]]] = []
        self.duration: Histogram = meter.create_histogram(
            "cqrs.command.duration", "s", "Time to execute a command, retries included"
        )
        meter.create_observable_counter(
            "cqrs.events.committed", [self.observe], "{event}", "Events committed"
        )

    @staticmethod
    def of(meter: Meter) -> _Meter:
        try:
            found = _meters.get(meter)
        except TypeError:  # pragma: no cover - a meter that cannot be weakly referenced
            return _Meter(meter)
        if found is None:
            found = _meters[meter] = _Meter(meter)
        return found

    def committed_events(self, aggregate_type: str, count: int) -> None:
        with _meters_lock:
            counts = self.committed
            counts[aggregate_type] = counts.get(aggregate_type, 0) + count

    def measured(self, elapsed: float, labels: Mapping[str, str | int]) -> None:
        with _meters_lock:
            pending = self.pending
            pending.append((elapsed, labels))
            if len(pending) < DURATION_BATCH:
                return
        self.flush()

    def flush(self) -> None:
        with _meters_lock:
            pending, self.pending = self.pending, []
        record = self.duration.record
        for elapsed, labels in pending:
            record(elapsed, labels)

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        self.flush()
        with _meters_lock:
            totals = list(self.committed.items())
        return [Observation(total, {"cqrs.aggregate.type": kind}) for kind, total in totals]


# -- spans -----------------------------------------------------------------------------------


class _Span:
    """A span made current for the ``with`` block; on an exception its status is ERROR with
    the exception recorded, unless the exception is one of ``expected`` (an outcome)."""

    __slots__ = ("expected", "parent", "span", "token")

    def __init__(
        self,
        span: Span,
        expected: tuple[type[BaseException], ...] = (),
        parent: Context | None = None,
    ) -> None:
        self.span = span
        self.expected = expected
        self.parent = parent  # the context it was started in, if known (saves a lookup)
        self.token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self.token = _context.attach(_trace.set_span_in_context(self.span, self.parent))
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        _context.detach(self.token)  # type: ignore[arg-type]  # set by __enter__
        span = self.span
        if error is not None:
            _fail(span, error, expected=isinstance(error, self.expected))
        span.end()


def _fail(span: Span, error: BaseException, *, expected: bool = False) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    if not expected and not isinstance(error, asyncio.CancelledError):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def span(operation: str, subject: str) -> _Span | None:
    """A span named ``"<operation> <subject>"`` to use as ``with`` (current inside), or
    None when tracing is off (the name is not even formatted then)."""
    found = tracer()
    if found is None:
        return None
    return _Span(found.start_span(f"{operation} {subject}"))


async def within(traced: _Span | None, work: Awaitable[T]) -> T:
    """Await ``work`` with ``traced`` current (it ends with it), or just await it if None."""
    if traced is None:
        return await work
    with traced:
        return await work


def with_trace_context(metadata: Mapping[str, str], current: Span) -> Mapping[str, str]:
    """``metadata`` plus the W3C trace context of ``current`` when it records and the
    metadata carries none yet; else ``metadata`` itself."""
    if TRACEPARENT in metadata or not current.is_recording():
        return metadata
    context = current.get_span_context()
    carrier = dict(metadata)
    # The W3C format, as the API's TraceContextTextMapPropagator writes it (a third cheaper).
    carrier[TRACEPARENT] = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    if context.trace_state:
        carrier[TRACESTATE] = context.trace_state.to_header()
    return carrier


class _TraceMetadata(msgspec.Struct):
    traceparent: str | None = None
    tracestate: str | None = None


_decode_trace_metadata = msgspec.json.Decoder(_TraceMetadata).decode


def links(rows: Iterable[SerializedEvent]) -> list[Link]:
    """Links to the commits that stored ``rows`` (by the trace context in their metadata),
    each commit once, at most :data:`MAX_LINKS`."""
    found: list[Link] = []
    seen: set[str] = set()
    for row in rows:
        metadata = row.metadata
        if isinstance(metadata, bytes):
            if b"traceparent" not in metadata:
                continue
        elif TRACEPARENT not in metadata:
            continue
        try:
            carried = _decode_trace_metadata(metadata)
        except msgspec.DecodeError:
            continue
        parent = carried.traceparent
        if parent is None or parent in seen:
            continue
        context = _span_context(parent, carried.tracestate)
        if context is None:
            continue
        seen.add(parent)
        found.append(Link(context, {"cqrs.position": row.position}))
        if len(found) >= MAX_LINKS:
            break
    return found


def _span_context(traceparent: str, tracestate: str | None) -> SpanContext | None:
    # version-trace_id-span_id-flags, as the W3C recommendation and the API's propagator read it
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:  # noqa: PLR2004
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
    )


# -- commands --------------------------------------------------------------------------------


class Command:
    """The telemetry of one command execution (made by :func:`command`): its span, current
    inside the ``with`` block, and its metrics when it ends."""

    __slots__ = (
        "attributes",
        "context",
        "events",
        "instruments",
        "queries_failed",
        "retries",
        "span",
        "started",
        "token",
    )

    def __init__(
        self, found: Tracer | None, measured: _Instruments | None, attributes: dict[str, str | int]
    ) -> None:
        self.instruments = measured
        self.attributes = attributes
        self.span: Span | None = None
        self.context: Context | None = None
        self.token: Token[Context] | None = None
        self.events = 0
        self.retries = 0
        self.queries_failed = 0
        self.started = 0.0
        if found is not None:
            self.span = found.start_span(
                f"execute {attributes['cqrs.command.type']}", attributes=attributes
            )

    def __enter__(self) -> Self:
        if self.span is not None:
            self.context = _trace.set_span_in_context(self.span)
            self.token = _context.attach(self.context)
        self.started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        elapsed = time.perf_counter() - self.started
        outcome = "ok" if error is None else _outcome(error)
        current = self.span
        if current is not None:
            _context.detach(self.token)  # type: ignore[arg-type]  # set by __enter__
            if current.is_recording():  # not when sampled out
                ended: dict[str, str | int] = {
                    "cqrs.outcome": outcome,
                    "cqrs.events.count": self.events,
                    "cqrs.retries": self.retries,
                }
                if self.queries_failed:
                    ended["cqrs.query.failures"] = self.queries_failed
                current.set_attributes(ended)
                if error is not None:
                    _fail(current, error, expected=outcome == "user_error")
            current.end()
        measured = self.instruments
        if measured is not None:
            labels = {
                "cqrs.aggregate.type": self.attributes["cqrs.aggregate.type"],
                "cqrs.command.type": self.attributes["cqrs.command.type"],
                "cqrs.outcome": outcome,
            }
            measured.measures.measured(elapsed, labels)

    def span_for(self, name: str, expected: tuple[type[BaseException], ...] = ()) -> _Span | None:
        """A child span (current inside its ``with``), or None when this one is not traced."""
        found = settings.tracer
        context = self.context
        if context is None or found is None:
            return None
        return _Span(found.start_span(name, context), expected, context)

    def conflict(self, retry_in: float | None) -> None:
        """A try ended in a conflict; ``retry_in`` is the delay before the next try (None:
        no more tries)."""
        measured = self.instruments
        labels = {"cqrs.aggregate.type": self.attributes["cqrs.aggregate.type"]}
        if measured is not None:
            measured.conflicts.add(1, labels)
        if retry_in is None:
            return
        self.retries += 1
        if measured is not None:
            measured.retries.add(1, labels)
        if self.span is not None:
            self.span.add_event("retry", {"cqrs.retry": self.retries, "cqrs.retry.delay": retry_in})

    def query_failed(self, query: object) -> None:
        """A query raised after the commit."""
        self.queries_failed += 1
        query_failed(query)


def _outcome(error: BaseException) -> str:
    for kind, outcome in _OUTCOMES.items():
        if isinstance(error, kind):
            return outcome
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"


def command(
    store: object, command: object, aggregate_id: str, expected_version: int | None
) -> Command | None:
    """The telemetry of a command about to run on an aggregate of ``store``, or None when
    neither traces nor metrics are configured (the framework then runs it without any)."""
    found = tracer()
    measured = instruments()
    if found is None and measured is None:
        return None
    attributes: dict[str, str | int] = {
        "cqrs.aggregate.type": aggregate_type_of(store),
        "cqrs.command.type": type(command).__name__,
    }
    if expected_version is not None:
        attributes["cqrs.expected_version"] = expected_version
    if settings.record_aggregate_id:
        attributes["cqrs.aggregate.id"] = aggregate_id
    return Command(found, measured, attributes)


def aggregate_type_of(store: object) -> str:
    """The aggregate type of ``store`` (its ``aggregate_type``, else its class name)."""
    name = getattr(store, "aggregate_type", None)
    return name if isinstance(name, str) else type(store).__qualname__


def query_failed(query: object) -> None:
    """Count a query dispatch that raised."""
    measured = instruments()
    if measured is not None:
        measured.query_failures.add(1, {"cqrs.query": type(query).__name__})


def events_committed(aggregate_type: str, count: int) -> None:
    """Count ``count`` events committed to ``aggregate_type``."""
    measured = instruments()
    if measured is not None:
        measured.measures.committed_events(aggregate_type, count)


# -- projections and subscriptions -----------------------------------------------------------


class _Status(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def lag_events(self) -> int: ...
    @property
    def lag_seconds(self) -> float: ...


class _Runner(Protocol):
    def status(self) -> Mapping[str, _Status]: ...


_runners: weakref.WeakSet[Any] = weakref.WeakSet()
_runners_lock = threading.Lock()  # a periodic metric reader calls the gauges from its thread


def watch(runner: _Runner) -> None:
    """Report the lag of the projections ``runner`` runs (while it lives) in the gauges."""
    if _OTEL:
        with _runners_lock:
            _runners.add(runner)


def _running() -> Iterator[tuple[str, _Status]]:
    with _runners_lock:
        runners = list(_runners)
    for runner in runners:
        for name, status in runner.status().items():
            if status.state == "running":
                yield name, status


def _lag_events(_: CallbackOptions) -> Iterable[Observation]:
    return [Observation(s.lag_events, {"cqrs.projection": n}) for n, s in _running()]


def _lag_seconds(_: CallbackOptions) -> Iterable[Observation]:
    return [Observation(s.lag_seconds, {"cqrs.projection": n}) for n, s in _running()]


def batch(name: str, rows: Sequence[SerializedEvent]) -> _Span | None:
    """The span of one projection batch (``rows``, read from the stream), linked to the
    commits of its events; None when tracing is off. Also counts the events."""
    measured = instruments()
    if measured is not None:
        measured.projection_events.add(len(rows), {"cqrs.projection": name})
    found = tracer()
    if found is None:
        return None
    attributes: dict[str, str | int] = {
        "cqrs.projection": name,
        "cqrs.events.count": len(rows),
        "cqrs.position.first": rows[0].position,
        "cqrs.position.last": rows[-1].position,
    }
    return _Span(found.start_span(f"project {name}", attributes=attributes, links=links(rows)))


class Pages:
    """The spans of the pages a subscription reads (made by :func:`pages`): one span per
    ``size`` events, from the first event read to the last, linked to their commits. Not
    current: the events were handed out one by one in between."""

    __slots__ = ("rows", "size", "started")

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: list[SerializedEvent] = []
        self.started = 0

    def add(self, row: SerializedEvent) -> None:
        """One event read; ends the page when it is full."""
        rows = self.rows
        if not rows:
            self.started = time.time_ns()
        rows.append(row)
        if len(rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        """End the current page (the stream ended or paused), if any event was read."""
        rows, self.rows = self.rows, []
        found = settings.tracer
        if not rows or found is None:
            return
        attributes: dict[str, str | int] = {
            "cqrs.events.count": len(rows),
            "cqrs.position.first": rows[0].position,
            "cqrs.position.last": rows[-1].position,
        }
        found.start_span(
            "subscription page", attributes=attributes, links=links(rows), start_time=self.started
        ).end()


class _NoPages(Pages):
    __slots__ = ()

    def add(self, row: SerializedEvent) -> None:
        pass

    def flush(self) -> None:
        pass


_NO_PAGES = _NoPages(1)


def pages(repository: object) -> Pages:
    """Page spans for a subscription over ``repository`` (its ``page_size``, else
    :data:`SUBSCRIPTION_PAGE`); when tracing is off, pages that record nothing."""
    if tracer() is None:
        return _NO_PAGES
    size = getattr(repository, "page_size", None)
    return Pages(size if isinstance(size, int) and size > 0 else SUBSCRIPTION_PAGE)


def woke(consumer: str) -> None:
    """Count a wait for new events that ended (pushed or timed out)."""
    measured = instruments()
    if measured is not None:
        measured.wake_ups.add(1, {"cqrs.consumer": consumer})


def reconnected(consumer: str) -> None:
    """Count a read that succeeded again after the database was lost."""
    measured = instruments()
    if measured is not None:
        measured.reconnects.add(1, {"cqrs.consumer": consumer})


def _off(*_: object, **__: object) -> None:
    return None


_HOOKS = ("command", "events_committed", "query_failed", "span")
"""The hooks called on every command, load or commit: without opentelemetry, where nothing
can ever be configured (configure() refuses providers), they are :func:`_off`, a function
that only returns None."""

if not _OTEL:
    command = span = events_committed = query_failed = _off
