"""cqrs.telemetry's documented surface as an application with the OpenTelemetry SDK sees it:
the settings and what configure() accepts, the tracer and meter it reports through (their
scope, the global providers), each metric's name, unit, description, kind and labels, the
names and attributes of its spans, the context it makes current, the W3C trace context it
writes and reads back, and the hooks with only traces or only metrics configured.

Every label value is unique to its test, so the counts hold however the counters are fed."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from cqrs import (
    AggregateConflict,
    ConfigurationError,
    CqrsFramework,
    PersistedEventStore,
    SerializedEvent,
    UnexpectedError,
    UserError,
    telemetry,
)
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import BankAccount, BankAccountServices, OpenAccount

Labels = tuple[tuple[str, AttributeValue], ...]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Sink:
    """Providers that keep what they get: finished spans and metric data."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    meter_provider: MeterProvider = field(init=False)

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def one(self, name: str) -> ReadableSpan:
        (found,) = [span for span in self.spans() if span.name == name]
        return found

    def metrics(self) -> dict[str, tuple[Any, Metric]]:
        """Each metric by name, with the instrumentation scope it came from."""
        data = self.reader.get_metrics_data()
        found: dict[str, tuple[Any, Metric]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = (scope.scope, metric)
        return found

    def points(self, name: str) -> dict[Labels, Any]:
        """The data points of metric ``name`` by sorted labels: a value, or for a histogram
        (count, sum)."""
        found: dict[Labels, Any] = {}
        for metric_name, (_, metric) in self.metrics().items():
            if metric_name != name:
                continue
            for point in metric.data.data_points:
                labels = tuple(sorted((point.attributes or {}).items()))
                count = getattr(point, "count", None)
                found[labels] = (
                    getattr(point, "value", None)
                    if count is None
                    else (
                        count,
                        point.sum,  # type: ignore[union-attr]
                    )
                )
        return found


@pytest.fixture(autouse=True)
def no_global_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No provider set by the application (what trace/metrics.set_*_provider would set);
    the settings are reset after each test."""
    monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
    telemetry.configure()
    try:
        yield
    finally:
        telemetry.configure()


@pytest.fixture
def sink() -> Sink:
    sink = Sink()
    telemetry.configure(tracer_provider=sink.tracer_provider, meter_provider=sink.meter_provider)
    return sink


class Deposit:
    pass


class Stores:
    class Plain:
        """A store without an aggregate_type."""

    class Numbered:
        aggregate_type = 7  # not a name


class Errors:
    class LostError(Exception):
        pass


def store_of(name: str) -> SimpleNamespace:
    return SimpleNamespace(aggregate_type=name)


def row(position: int, metadata: bytes | str = b"{}") -> SerializedEvent:
    return SerializedEvent(
        "Account",
        "a",
        position,
        "E",
        "1.0",
        b"{}",
        metadata,
        datetime.now(UTC),
        uuid.uuid4(),
        position,
    )


# -- settings and configure() -----------------------------------------------------------------


def test_the_settings_before_any_configure_are_configures_defaults():
    fresh = type(telemetry.settings)()  # what a process that never calls configure() has
    assert fresh.tracer_provider is None
    assert fresh.meter_provider is None
    assert fresh.tracer is None
    assert fresh.instruments is None
    assert fresh.record_aggregate_id is False
    assert fresh.slow_commit == 1.0


def test_each_configure_replaces_every_earlier_setting():
    sink = Sink()
    telemetry.configure(
        tracer_provider=sink.tracer_provider,
        meter_provider=sink.meter_provider,
        record_aggregate_id=True,
        slow_commit=0.25,
    )
    settings = telemetry.settings
    assert settings.tracer_provider is sink.tracer_provider
    assert settings.meter_provider is sink.meter_provider
    assert settings.record_aggregate_id is True
    assert settings.slow_commit == 0.25
    assert telemetry.tracer() is not None
    assert telemetry.instruments() is not None

    telemetry.configure()
    after = telemetry.settings
    assert after.tracer_provider is None
    assert after.meter_provider is None
    assert after.record_aggregate_id is False
    assert after.slow_commit == 1.0
    assert telemetry.tracer() is None  # no provider anywhere
    assert telemetry.instruments() is None
    assert telemetry.command(store_of("Account"), Deposit(), "a", None) is None


@pytest.mark.parametrize("seconds", [None, 0, 0.0, 0.5, 1, 30.0], ids=repr)
def test_configure_accepts_slow_commit_seconds_from_zero_or_none(seconds):
    telemetry.configure(slow_commit=seconds)
    assert telemetry.settings.slow_commit == seconds


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan], ids=repr)
def test_configure_refuses_a_negative_or_nan_slow_commit(seconds):
    with pytest.raises(ConfigurationError) as raised:
        telemetry.configure(slow_commit=seconds)
    assert str(raised.value) == (
        f"slow_commit must be a number of seconds >= 0 or None, not {seconds!r}"
    )
    assert telemetry.settings.slow_commit == 1.0  # nothing changed


def test_record_aggregate_id_is_stored_as_a_bool():
    telemetry.configure(record_aggregate_id=1)  # type: ignore[arg-type]
    assert telemetry.settings.record_aggregate_id is True
    telemetry.configure(record_aggregate_id=0)  # type: ignore[arg-type]
    assert telemetry.settings.record_aggregate_id is False


@pytest.mark.parametrize(
    "given", ["tracer_provider", "meter_provider", "both"], ids=["tracer", "meter", "both"]
)
def test_without_opentelemetry_a_provider_is_refused(monkeypatch, given):
    monkeypatch.setattr(telemetry, "_OTEL", False)  # as when the import failed
    providers: dict[str, Any] = {
        "tracer_provider": TracerProvider(),
        "meter_provider": MeterProvider(),
    }
    if given != "both":
        providers = {given: providers[given]}
    with pytest.raises(ConfigurationError) as raised:
        telemetry.configure(**providers)
    assert str(raised.value) == (
        "a tracer or meter provider needs opentelemetry: pip install 'cqrs-es[otel]'"
    )
    telemetry.configure(slow_commit=2.0)  # the other settings still work
    assert telemetry.settings.slow_commit == 2.0
    assert not telemetry.available()
    assert telemetry.tracer() is None
    assert telemetry.instruments() is None


# -- the tracer and meter -------------------------------------------------------------------


def test_providers_set_by_the_application_are_used_from_the_next_command(monkeypatch):
    store, command = store_of(unique("Account")), Deposit()
    assert telemetry.command(store, command, "a", None) is None
    assert telemetry.span("load", "Account") is None
    sink = Sink()
    # What trace.set_tracer_provider and metrics.set_meter_provider do.
    monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", sink.tracer_provider)
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", sink.meter_provider)
    hook = telemetry.command(store, command, "a", None)
    assert hook is not None
    with hook:
        pass
    assert [span.name for span in sink.spans()] == ["execute Deposit"]
    labels = (
        ("cqrs.aggregate.type", store.aggregate_type),
        ("cqrs.command.type", "Deposit"),
        ("cqrs.outcome", "ok"),
    )
    assert sink.points("cqrs.command.duration")[labels][0] == 1


def test_spans_and_metrics_come_from_the_cqrs_tracer_and_meter(sink):
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        pass
    (span,) = sink.spans()
    expected = ("cqrs", version("cqrs-es"))
    assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == expected
    scope, _ = sink.metrics()["cqrs.command.duration"]
    assert (scope.name, scope.version) == expected


@dataclass(eq=False)
class Runner:
    """Stands in for a ProjectionRunner: the status of each projection it runs."""

    statuses: dict[str, SimpleNamespace]

    def status(self) -> dict[str, SimpleNamespace]:
        return self.statuses


def status(state: str, lag_events: int, lag_seconds: float) -> SimpleNamespace:
    return SimpleNamespace(state=state, lag_events=lag_events, lag_seconds=lag_seconds)


def test_every_metric_has_its_name_unit_description_and_kind(sink):
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        hook.conflict(0.0)
        hook.query_failed(Deposit())
    telemetry.events_committed(unique("Account"), 1)
    within = telemetry.batch(unique("totals"), [row(1)])
    assert within is not None
    with within:
        pass
    telemetry.woke(unique("consumer"))
    telemetry.reconnected(unique("consumer"))
    runner = Runner({unique("totals"): status("running", 2, 0.5)})
    telemetry.watch(runner)

    found = {
        name: (metric.unit, metric.description, type(metric.data).__name__)
        for name, (_, metric) in sink.metrics().items()
    }
    assert found == {
        "cqrs.command.duration": ("s", "Time to execute a command, retries included", "Histogram"),
        "cqrs.command.conflicts": ("{conflict}", "Commits refused because another won", "Sum"),
        "cqrs.command.retries": ("{retry}", "Commands tried again after a conflict", "Sum"),
        "cqrs.events.committed": ("{event}", "Events committed", "Sum"),
        "cqrs.query.failures": (
            "{failure}",
            "Query dispatches that raised after a commit",
            "Sum",
        ),
        "cqrs.projection.events": ("{event}", "Events handed to projections", "Sum"),
        "cqrs.subscription.wake_ups": ("{wake_up}", "Waits for new events that ended", "Sum"),
        "cqrs.subscription.reconnects": (
            "{reconnect}",
            "Reads that succeeded again after the database was lost",
            "Sum",
        ),
        "cqrs.projection.lag.events": (
            "{event}",
            "Positions read by a projection and not yet applied",
            "Gauge",
        ),
        "cqrs.projection.lag.seconds": (
            "s",
            "Age of the oldest event a projection has read and not yet applied",
            "Gauge",
        ),
    }
    counters = [
        metric for _, metric in sink.metrics().values() if type(metric.data).__name__ == "Sum"
    ]
    assert all(metric.data.is_monotonic for metric in counters)


def test_the_counters_count_by_their_labels(sink):
    account, other = unique("Account"), unique("Account")
    hook = telemetry.command(store_of(account), Deposit(), "a", None)
    assert hook is not None
    with hook:
        hook.conflict(0.1)
        hook.conflict(0.2)
        hook.conflict(None)  # no more tries: a conflict, not a retry
    telemetry.events_committed(account, 3)
    telemetry.events_committed(account, 2)
    telemetry.events_committed(other, 1)
    consumer, lost = unique("consumer"), unique("consumer")
    telemetry.woke(consumer)
    telemetry.woke(consumer)
    telemetry.woke(lost)
    telemetry.reconnected(lost)
    projection = unique("totals")
    for rows in ([row(1), row(2), row(3)], [row(4)]):
        traced = telemetry.batch(projection, rows)
        assert traced is not None
        with traced:
            pass

    mine = (("cqrs.aggregate.type", account),)
    assert sink.points("cqrs.command.conflicts")[mine] == 3
    assert sink.points("cqrs.command.retries")[mine] == 2
    committed = sink.points("cqrs.events.committed")
    assert committed[mine] == 5
    assert committed[(("cqrs.aggregate.type", other),)] == 1
    woke = sink.points("cqrs.subscription.wake_ups")
    assert woke[(("cqrs.consumer", consumer),)] == 2
    assert woke[(("cqrs.consumer", lost),)] == 1
    reconnects = sink.points("cqrs.subscription.reconnects")
    assert reconnects[(("cqrs.consumer", lost),)] == 1
    assert (("cqrs.consumer", consumer),) not in reconnects
    assert sink.points("cqrs.projection.events")[(("cqrs.projection", projection),)] == 4


def test_query_failures_count_by_query_class(sink):
    class Totals:
        pass

    class Ledger:
        pass

    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        hook.query_failed(Totals())
        hook.query_failed(Totals())
    telemetry.query_failed(Ledger())  # a query that failed outside a traced command
    failures = sink.points("cqrs.query.failures")
    assert failures[(("cqrs.query", "Totals"),)] == 2
    assert failures[(("cqrs.query", "Ledger"),)] == 1
    (span,) = sink.spans()
    assert span.attributes is not None
    assert span.attributes["cqrs.query.failures"] == 2


def test_the_command_duration_is_the_time_inside_the_block(sink):
    account = unique("Account")
    started = time.perf_counter()
    hook = telemetry.command(store_of(account), Deposit(), "a", None)
    assert hook is not None
    with hook:
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    labels = (
        ("cqrs.aggregate.type", account),
        ("cqrs.command.type", "Deposit"),
        ("cqrs.outcome", "ok"),
    )
    count, seconds = sink.points("cqrs.command.duration")[labels]
    assert count == 1
    assert 0.02 <= seconds <= elapsed


def test_the_lag_gauges_show_the_running_projections_of_watched_runners(sink):
    running, stopped, failed = unique("running"), unique("stopped"), unique("failed")
    runner = Runner(
        {
            running: status("running", 3, 1.5),
            stopped: status("stopped", 7, 9.0),
            failed: status("failed", 4, 2.0),
        }
    )
    telemetry.watch(runner)
    other = Runner({unique("other"): status("running", 0, 0.0)})
    telemetry.watch(other)
    assert telemetry.instruments() is not None  # made by the first hook that measures
    lag_events = sink.points("cqrs.projection.lag.events")
    lag_seconds = sink.points("cqrs.projection.lag.seconds")
    assert lag_events[(("cqrs.projection", running),)] == 3
    assert lag_seconds[(("cqrs.projection", running),)] == 1.5
    names = {labels[0][1] for labels in (*lag_events, *lag_seconds)}
    assert stopped not in names
    assert failed not in names
    (other_name,) = other.statuses
    assert lag_events[(("cqrs.projection", other_name),)] == 0


# -- command spans --------------------------------------------------------------------------


def test_a_command_span_names_its_command_and_says_how_it_ended(sink):
    account = unique("Account")
    telemetry.configure(
        tracer_provider=sink.tracer_provider,
        meter_provider=sink.meter_provider,
        record_aggregate_id=True,
    )
    hook = telemetry.command(store_of(account), Deposit(), "acc-9", 0)
    assert hook is not None
    with hook:
        pass
    span = sink.one("execute Deposit")
    assert dict(span.attributes or {}) == {
        "cqrs.aggregate.type": account,
        "cqrs.command.type": "Deposit",
        "cqrs.expected_version": 0,
        "cqrs.aggregate.id": "acc-9",
        "cqrs.outcome": "ok",
        "cqrs.events.count": 0,
        "cqrs.retries": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert not span.events


def test_the_aggregate_type_is_the_stores_else_its_class_name(sink):
    assert telemetry.aggregate_type_of(store_of("Account")) == "Account"
    assert telemetry.aggregate_type_of(Stores.Plain()) == "Stores.Plain"
    assert telemetry.aggregate_type_of(Stores.Numbered()) == "Stores.Numbered"
    hook = telemetry.command(Stores.Plain(), Deposit(), "a", None)
    assert hook is not None
    with hook:
        pass
    assert (sink.one("execute Deposit").attributes or {})["cqrs.aggregate.type"] == "Stores.Plain"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (AggregateConflict("another writer won"), "conflict"),
        (UnexpectedError("Account.handle raised KeyError()"), "unexpected"),
        (Errors.LostError("server gone"), "error"),
    ],
    ids=["conflict", "unexpected", "other"],
)
def test_a_failed_command_is_an_error_span_with_its_outcome(sink, error, outcome):
    account = unique("Account")
    hook = telemetry.command(store_of(account), Deposit(), "a", None)
    assert hook is not None
    with pytest.raises(type(error)), hook:
        raise error
    span = sink.one("execute Deposit")
    attributes = span.attributes or {}
    assert attributes["cqrs.outcome"] == outcome
    assert attributes["error.type"] == type(error).__qualname__
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(error)
    (recorded,) = [event for event in span.events if event.name == "exception"]
    assert (recorded.attributes or {})["exception.message"] == str(error)
    labels = (
        ("cqrs.aggregate.type", account),
        ("cqrs.command.type", "Deposit"),
        ("cqrs.outcome", outcome),
    )
    assert sink.points("cqrs.command.duration")[labels][0] == 1


def test_a_refused_or_cancelled_command_is_not_a_failure(sink):
    for error in (UserError(ValueError("not open")), asyncio.CancelledError()):
        hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
        assert hook is not None
        with pytest.raises(type(error)), hook:
            raise error
    refused, cancelled = sink.spans()
    assert (refused.attributes or {})["cqrs.outcome"] == "user_error"
    assert (refused.attributes or {})["error.type"] == "UserError"
    assert (cancelled.attributes or {})["error.type"] == "CancelledError"
    for span in (refused, cancelled):
        assert span.status.status_code is StatusCode.UNSET
        assert not [event for event in span.events if event.name == "exception"]


def test_the_command_span_is_current_inside_its_block_only(sink):
    mine = sink.tracer_provider.get_tracer("test")
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        with mine.start_as_current_span("inside"):
            pass
        current = trace_api.get_current_span()
    assert not trace_api.get_current_span().get_span_context().is_valid
    execute = sink.one("execute Deposit")
    assert current.get_span_context().span_id == execute.context.span_id
    assert sink.one("inside").parent == execute.context


def test_retries_are_events_on_the_command_span(sink):
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        hook.conflict(0.125)
        hook.conflict(0.25)
        hook.conflict(None)
    span = sink.one("execute Deposit")
    assert [(event.name, dict(event.attributes or {})) for event in span.events] == [
        ("retry", {"cqrs.retry": 1, "cqrs.retry.delay": 0.125}),
        ("retry", {"cqrs.retry": 2, "cqrs.retry.delay": 0.25}),
    ]
    assert (span.attributes or {})["cqrs.retries"] == 2


def test_child_spans_of_a_command(sink):
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        handle = hook.span_for("handle Deposit", (Errors.LostError,))
        assert handle is not None
        with pytest.raises(Errors.LostError), handle:
            raise Errors.LostError("refused, as expected")
        dispatch = hook.span_for("dispatch Totals")
        assert dispatch is not None
        seen: list[object] = []

        def down() -> None:
            seen.append(trace_api.get_current_span())
            raise RuntimeError("view store down")

        with pytest.raises(RuntimeError), dispatch as current:
            down()
        assert seen == [current]
        assert trace_api.get_current_span().get_span_context().span_id == (
            sink.one("handle Deposit").parent.span_id
        )
    execute = sink.one("execute Deposit")
    expected, failed = sink.one("handle Deposit"), sink.one("dispatch Totals")
    assert expected.parent == execute.context
    assert failed.parent == execute.context
    assert dict(expected.attributes or {}) == {"error.type": "Errors.LostError"}
    assert expected.status.status_code is StatusCode.UNSET
    assert not expected.events
    assert dict(failed.attributes or {}) == {"error.type": "RuntimeError"}
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "view store down"
    assert [event.name for event in failed.events] == ["exception"]


def test_only_metrics_configured(sink):
    telemetry.configure(meter_provider=sink.meter_provider)
    account = unique("Account")
    hook = telemetry.command(store_of(account), Deposit(), "a", None)
    assert hook is not None
    with hook:
        assert not trace_api.get_current_span().get_span_context().is_valid
        assert hook.span_for("handle Deposit") is None
        hook.conflict(0.1)
        hook.conflict(None)
    # A tracer provider configured while the command ran: it stays untraced.
    telemetry.configure(tracer_provider=sink.tracer_provider, meter_provider=sink.meter_provider)
    assert telemetry.tracer() is not None
    assert hook.span_for("dispatch Totals") is None
    assert sink.spans() == []
    mine = (("cqrs.aggregate.type", account),)
    assert sink.points("cqrs.command.conflicts")[mine] == 2
    assert sink.points("cqrs.command.retries")[mine] == 1
    labels = (*mine, ("cqrs.command.type", "Deposit"), ("cqrs.outcome", "ok"))
    assert sink.points("cqrs.command.duration")[labels][0] == 1
    projection = unique("totals")
    telemetry.configure(meter_provider=sink.meter_provider)
    assert telemetry.batch(projection, [row(1), row(2)]) is None  # no span, but counted
    assert sink.points("cqrs.projection.events")[(("cqrs.projection", projection),)] == 2


def test_only_traces_configured(sink):
    telemetry.configure(tracer_provider=sink.tracer_provider)
    hook = telemetry.command(store_of(unique("Account")), Deposit(), "a", None)
    assert hook is not None
    with hook:
        hook.conflict(0.5)
        hook.conflict(None)
        hook.query_failed(Deposit())
    telemetry.events_committed("Account", 1)
    telemetry.woke("subscription")
    telemetry.reconnected("subscription")
    traced = telemetry.batch("totals", [row(1)])
    assert traced is not None
    with traced:
        pass
    span = sink.one("execute Deposit")
    assert [event.name for event in span.events] == ["retry"]
    assert (span.attributes or {})["cqrs.query.failures"] == 1
    assert sink.one("project totals").attributes
    assert sink.metrics() == {}


def test_nothing_configured_every_hook_is_silent():
    assert telemetry.command(store_of("Account"), Deposit(), "a", None) is None
    assert telemetry.span("load", "Account") is None
    assert telemetry.batch("totals", [row(1)]) is None
    pages = telemetry.pages(SimpleNamespace(page_size=1))
    pages.add(row(1))
    pages.flush()
    telemetry.events_committed("Account", 1)
    telemetry.query_failed(Deposit())
    telemetry.woke("subscription")
    telemetry.reconnected("subscription")


# -- load/commit spans, within() ----------------------------------------------------------


async def test_a_span_is_named_operation_and_subject_and_current_inside(sink):
    traced = telemetry.span("load", "Account")
    assert traced is not None
    with traced as current:
        assert trace_api.get_current_span() is current
    assert not trace_api.get_current_span().get_span_context().is_valid
    load = sink.one("load Account")
    assert load.status.status_code is StatusCode.UNSET
    assert load.end_time is not None

    failing = telemetry.span("commit", "Account")
    assert failing is not None
    with pytest.raises(Errors.LostError), failing:
        raise Errors.LostError("x" * 250)
    commit = sink.one("commit Account")
    assert dict(commit.attributes or {}) == {"error.type": "Errors.LostError"}
    assert commit.status.status_code is StatusCode.ERROR
    assert commit.status.description == "x" * 200
    (recorded,) = commit.events
    assert (recorded.attributes or {})["exception.message"] == "x" * 250

    cancelled = telemetry.span("load", "Ledger")
    assert cancelled is not None
    with pytest.raises(asyncio.CancelledError), cancelled:
        raise asyncio.CancelledError
    stopped = sink.one("load Ledger")
    assert stopped.status.status_code is StatusCode.UNSET
    assert not stopped.events


async def test_within_awaits_the_work_with_the_span_current(sink):
    async def work() -> int:
        return trace_api.get_current_span().get_span_context().span_id

    assert await telemetry.within(None, work()) == 0  # no span: just awaited
    traced = telemetry.span("replay", "Totals")
    assert traced is not None
    seen = await telemetry.within(traced, work())
    assert seen == sink.one("replay Totals").context.span_id
    assert not trace_api.get_current_span().get_span_context().is_valid


# -- trace context in event metadata ------------------------------------------------------


async def bank() -> CqrsFramework[Any, Any, Any]:
    repository = MemoryEventRepository()
    await repository.open()
    return CqrsFramework(
        PersistedEventStore(repository, BankAccount), services=BankAccountServices()
    )


async def test_a_commit_stores_its_trace_context_with_the_trace_state(sink):
    upstream = SpanContext(
        int("0af7651916cd43dd8448eb211c80319c", 16),
        int("b7ad6b7169203331", 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    cqrs = await bank()
    with trace_api.use_span(NonRecordingSpan(upstream)):
        (envelope,) = await cqrs.execute_with_metadata(
            "acc-1", OpenAccount("acc-1"), {"user": "ann"}
        )
    commit = sink.one("commit BankAccount").context
    assert envelope.metadata == {
        "user": "ann",
        "traceparent": f"00-0af7651916cd43dd8448eb211c80319c-{commit.span_id:016x}-01",
        "tracestate": "vendor=v1",
    }


async def test_a_commit_that_is_not_recorded_stores_no_trace_context():
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    telemetry.configure(tracer_provider=unsampled)
    cqrs = await bank()
    (envelope,) = await cqrs.execute_with_metadata("acc-1", OpenAccount("acc-1"), {"user": "ann"})
    assert envelope.metadata == {"user": "ann"}


def test_with_trace_context_adds_the_w3c_traceparent_of_a_recording_span(sink):
    tracer = sink.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("commit") as span:
        context = span.get_span_context()
        metadata = {"user": "ann"}
        carried = telemetry.with_trace_context(metadata, span)
        assert carried == {
            "user": "ann",
            "traceparent": (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            ),
        }
        assert metadata == {"user": "ann"}  # not changed in place
        handed_over = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        assert telemetry.with_trace_context(handed_over, span) is handed_over
    unsampled = NonRecordingSpan(context)
    assert telemetry.with_trace_context(metadata, unsampled) is metadata


# -- links from the trace context in metadata -----------------------------------------------

TRACE = "0af7651916cd43dd8448eb211c80319c"


def carrying(position: int, traceparent: str, **more: str) -> SerializedEvent:
    return row(position, json.dumps({"traceparent": traceparent, **more}))


def test_links_read_the_w3c_fields_in_hex():
    (link,) = telemetry.links([carrying(3, f"00-{TRACE}-b7ad6b7169203331-10")])
    assert link.context.trace_id == int(TRACE, 16)
    assert link.context.span_id == 0xB7AD6B7169203331
    assert int(link.context.trace_flags) == 0x10
    assert link.context.is_remote is True
    assert not link.context.trace_state
    assert dict(link.attributes or {}) == {"cqrs.position": 3}


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE}-b7ad6b7169203331-01-00",  # five fields
        f"00-{TRACE}-b7ad6b7169203331",  # three fields
        f"00-{TRACE[:-1]}-b7ad6b7169203331-01",  # a short trace id
        f"00-{TRACE}0-b7ad6b7169203331-01",  # a long trace id
        f"00-{TRACE}-b7ad6b71692033310-01",  # a long span id
        f"00-{TRACE}-b7ad6b7169203331-011",  # long flags
        f"00-{'0' * 32}-b7ad6b7169203331-01",  # no trace id
        f"00-{TRACE}-b7ad6b7169203331-0g",  # flags not hex
        f"00-{TRACE[:-1]}g-b7ad6b7169203331-01",  # trace id not hex
    ],
    ids=[
        "five-fields",
        "three-fields",
        "short-trace",
        "long-trace",
        "long-span",
        "long-flags",
        "zero-trace",
        "flags-not-hex",
        "trace-not-hex",
    ],
)
def test_links_skip_a_malformed_traceparent(traceparent):
    good = f"00-{TRACE}-{1:016x}-01"
    found = telemetry.links([carrying(1, traceparent), carrying(2, good)])
    assert [dict(link.attributes or {}) for link in found] == [{"cqrs.position": 2}]


# -- projection batches and subscription pages ----------------------------------------------


def test_a_batch_span_covers_its_positions(sink):
    committed = carrying(6, f"00-{TRACE}-{4:016x}-01")
    traced = telemetry.batch("totals", [row(5), committed, row(9)])
    assert traced is not None
    with traced:
        pass
    batch = sink.one("project totals")
    assert dict(batch.attributes or {}) == {
        "cqrs.projection": "totals",
        "cqrs.events.count": 3,
        "cqrs.position.first": 5,
        "cqrs.position.last": 9,
    }
    assert [(link.context.span_id, dict(link.attributes or {})) for link in batch.links] == [
        (4, {"cqrs.position": 6})
    ]


@pytest.mark.parametrize(
    ("page_size", "pages"),
    [(1, [1, 1, 1]), (0, [3]), (-2, [3]), ("2", [3]), (None, [3])],
    ids=["one", "zero", "negative", "text", "none"],
)
def test_pages_take_a_positive_page_size_else_the_default(sink, page_size, pages):
    subscription = telemetry.pages(SimpleNamespace(page_size=page_size))
    for position in (1, 2, 3):
        subscription.add(row(position))
    subscription.flush()
    spans = [span for span in sink.spans() if span.name == "subscription page"]
    assert [(span.attributes or {})["cqrs.events.count"] for span in spans] == pages


def test_a_page_starts_at_its_first_event_and_ends_when_flushed(sink):
    pages = telemetry.pages(SimpleNamespace(page_size=10))
    before = time.time_ns()
    pages.add(row(7, json.dumps({"traceparent": f"00-{TRACE}-{5:016x}-01"})))
    after_first = time.time_ns()
    time.sleep(0.01)
    pages.add(row(8))
    flushed = time.time_ns()
    pages.flush()
    page = sink.one("subscription page")
    assert before <= (page.start_time or 0) <= after_first
    assert (page.end_time or 0) >= flushed
    assert dict(page.attributes or {}) == {
        "cqrs.events.count": 2,
        "cqrs.position.first": 7,
        "cqrs.position.last": 8,
    }
    (link,) = page.links
    assert link.context.span_id == 5
    assert page.parent is None
    assert re.fullmatch(r"[0-9a-f]{32}", f"{page.context.trace_id:032x}")


def test_from_a_source_tree_without_the_distribution_the_scope_version_is_zero(monkeypatch):
    import importlib.metadata  # noqa: PLC0415

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    sink = Sink()
    telemetry.configure(tracer_provider=sink.tracer_provider)
    traced = telemetry.span("load", "Account")
    assert traced is not None
    with traced:
        pass
    (span,) = sink.spans()
    scope = span.instrumentation_scope
    assert scope is not None
    assert (scope.name, scope.version) == ("cqrs", "0")


def test_a_collection_sees_every_command_that_ended_before_it_once(sink):
    account = unique("Account")
    labels = (
        ("cqrs.aggregate.type", account),
        ("cqrs.command.type", "Deposit"),
        ("cqrs.outcome", "ok"),
    )
    ended = 0
    for commands in (1, 150, 3, 0):  # across any batching of the measurements
        for _ in range(commands):
            hook = telemetry.command(store_of(account), Deposit(), "a", None)
            assert hook is not None
            with hook:
                pass
        ended += commands
        count, seconds = sink.points("cqrs.command.duration")[labels]
        assert count == ended
        assert 0 <= seconds < 10


def test_events_committed_keep_counting_when_the_meter_is_asked_again():
    account = unique("Account")
    first = Sink()
    telemetry.configure(meter_provider=first.meter_provider)
    telemetry.events_committed(account, 2)
    assert first.points("cqrs.events.committed")[(("cqrs.aggregate.type", account),)] == 2
    telemetry.configure(meter_provider=first.meter_provider)  # the same meter again
    telemetry.events_committed(account, 3)
    assert first.points("cqrs.events.committed")[(("cqrs.aggregate.type", account),)] == 5
    second = Sink()
    telemetry.configure(meter_provider=second.meter_provider)  # another meter counts anew
    telemetry.events_committed(account, 1)
    assert second.points("cqrs.events.committed")[(("cqrs.aggregate.type", account),)] == 1
    assert first.points("cqrs.events.committed")[(("cqrs.aggregate.type", account),)] == 5
