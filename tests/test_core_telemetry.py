"""cqrs.telemetry's hooks on their own, through the SDK's in-memory exporter and reader: the
outcome and status of a command span by error, its retry events and query failures, and the
subscription page spans (the framework-level behaviour is in tests/test_telemetry.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cqrs import DatabaseConnectionError, SerializedEvent, UserError, telemetry


class Sink:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def outcomes(self) -> dict[str, int]:
        """cqrs.command.duration's count by outcome."""
        found: dict[str, int] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "cqrs.command.duration":
                        for point in metric.data.data_points:
                            outcome = str((point.attributes or {})["cqrs.outcome"])
                            found[outcome] = point.count  # type: ignore[union-attr]
        return found


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(sink.exporter))
    telemetry.configure(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[sink.reader]),
    )
    try:
        yield sink
    finally:
        telemetry.configure()


STORE = SimpleNamespace(aggregate_type="Account")


class Deposit:
    pass


def run_command(error: BaseException | None) -> None:
    hook = telemetry.command(STORE, Deposit(), "acc-1", None)
    assert hook is not None
    if error is None:
        with hook:
            return
    with pytest.raises(type(error)), hook:
        raise error


def test_each_kind_of_failure_has_its_outcome_and_status(sink):
    run_command(None)
    run_command(UserError(ValueError("no")))
    run_command(DatabaseConnectionError("gone"))
    run_command(asyncio.CancelledError())
    run_command(RuntimeError("x" * 300))
    assert sink.outcomes() == {"ok": 1, "user_error": 1, "error": 2, "cancelled": 1}
    spans = sink.spans()
    assert [span.attributes["cqrs.outcome"] for span in spans] == [
        "ok",
        "user_error",
        "error",
        "cancelled",
        "error",
    ]
    ok, refused, lost, _, bug = spans
    assert ok.status.status_code is StatusCode.UNSET
    assert refused.status.status_code is StatusCode.UNSET  # an outcome, not a failure
    assert lost.status.status_code is StatusCode.ERROR
    assert lost.status.description == "gone"
    assert bug.status.description == "x" * 200
    (recorded,) = [e for e in lost.events if e.name == "exception"]
    assert recorded.attributes["exception.message"] == "gone"
    assert not [e for e in refused.events if e.name == "exception"]


def test_retries_and_failed_queries_are_counted_on_the_span(sink):
    hook = telemetry.command(STORE, Deposit(), "acc-1", 3)
    assert hook is not None
    with hook:
        hook.conflict(0.25)
        hook.conflict(0.5)
        hook.conflict(None)  # no more tries: a conflict, not a retry
        hook.query_failed(object())
        hook.query_failed(object())
    (span,) = sink.spans()
    assert span.attributes["cqrs.retries"] == 2
    assert span.attributes["cqrs.query.failures"] == 2
    assert span.attributes["cqrs.expected_version"] == 3
    assert "cqrs.aggregate.id" not in span.attributes  # not recorded by default
    retries = [dict(e.attributes) for e in span.events if e.name == "retry"]
    assert retries == [
        {"cqrs.retry": 1, "cqrs.retry.delay": 0.25},
        {"cqrs.retry": 2, "cqrs.retry.delay": 0.5},
    ]


def row(position: int) -> SerializedEvent:
    return SerializedEvent(
        "Account",
        "a",
        position,
        "E",
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
        position,
    )


def test_pages_are_spans_of_page_size_events_from_the_first_read(sink):
    pages = telemetry.pages(SimpleNamespace(page_size=2))
    before = time.time_ns()
    for position in range(1, 6):
        pages.add(row(position))
    pages.flush()
    pages.flush()  # nothing read since: no span
    spans = [s for s in sink.spans() if s.name == "subscription page"]
    assert [
        (
            s.attributes["cqrs.events.count"],
            s.attributes["cqrs.position.first"],
            s.attributes["cqrs.position.last"],
        )
        for s in spans
    ] == [(2, 1, 2), (2, 3, 4), (1, 5, 5)]
    assert all(before <= s.start_time <= s.end_time for s in spans)


def test_pages_default_to_the_subscription_page_size(sink):
    pages = telemetry.pages(SimpleNamespace())
    for position in range(1, telemetry.SUBSCRIPTION_PAGE + 2):
        pages.add(row(position))
    spans = [s for s in sink.spans() if s.name == "subscription page"]
    assert [s.attributes["cqrs.events.count"] for s in spans] == [telemetry.SUBSCRIPTION_PAGE]


TRACE = "0af7651916cd43dd8448eb211c80319c"


def parent(span: int, flags: str = "01") -> str:
    return f"00-{TRACE}-{span:016x}-{flags}"


def carried(position: int, metadata: bytes | str) -> SerializedEvent:
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


def test_links_skip_what_carries_no_usable_context_and_keep_going():
    rows = [
        carried(1, b"{}"),
        carried(2, "{}"),
        carried(3, b'{"traceparent": '),  # not JSON
        carried(4, json.dumps({"traceparent": "00-bad"})),
        carried(5, json.dumps({"traceparent": f"00-{TRACE}-{0:016x}-01"})),  # no span id
        carried(6, json.dumps({"traceparent": f"00-{TRACE}-{'z' * 16}-01"})),  # not hex
        carried(7, json.dumps({"traceparent": f"00-{TRACE}-{1:016x}-1"})),  # short flags
        carried(8, json.dumps({"traceparent": f"00-{TRACE}-{1:015x}-01"})),  # short span id
        carried(9, json.dumps({"traceparent": parent(1, "0b"), "tracestate": "k=v"}).encode()),
        carried(10, json.dumps({"traceparent": parent(1, "0b")})),  # the same commit
        carried(11, json.dumps({"traceparent": parent(2)})),
        carried(12, json.dumps({"other": 1, "tracestate": "k=v"})),
    ]
    found = telemetry.links(rows)
    assert [dict(link.attributes or {}) for link in found] == [
        {"cqrs.position": 9},
        {"cqrs.position": 11},
    ]
    first, second = (link.context for link in found)
    assert (first.trace_id, first.span_id, int(first.trace_flags)) == (int(TRACE, 16), 1, 11)
    assert first.is_remote
    assert first.trace_state.to_header() == "k=v"
    assert second.span_id == 2
    assert not second.trace_state


def test_links_stop_at_max_links():
    rows = [
        carried(n, json.dumps({"traceparent": parent(n)}))
        for n in range(1, telemetry.MAX_LINKS + 3)
    ]
    found = telemetry.links(rows)
    assert len(found) == telemetry.MAX_LINKS
    assert found[-1].context.span_id == telemetry.MAX_LINKS
