"""OpenTelemetry: the span tree and metrics of commands, queries and projections (through the
SDK's in-memory exporter and reader), the trace context stored in event metadata, and the
framework without an SDK or without opentelemetry at all."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cqrs import (
    AggregateConflict,
    ConfigurationError,
    CqrsFramework,
    DatabaseConnectionError,
    PersistedEventStore,
    QueryReplay,
    Retry,
    UserError,
    telemetry,
)
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import ProjectionRunner
from cqrs.subscription import Subscription
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (found,) = self.named(name)
        return found

    def children(self, parent: ReadableSpan) -> list[str]:
        return [
            span.name
            for span in sorted(self.spans(), key=lambda s: s.start_time or 0)
            if span.parent is not None and span.parent.span_id == parent.context.span_id
        ]

    def points(self, name: str) -> dict[tuple[tuple[str, object], ...], float]:
        """The data points of metric ``name``: sorted attributes -> value (sum or count)."""
        data = self.reader.get_metrics_data()
        found: dict[tuple[tuple[str, object], ...], float] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found[tuple(sorted((point.attributes or {}).items()))] = value
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry.configure(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    try:
        yield Otel(exporter, reader)
    finally:
        telemetry.configure()


def store_of(cqrs: CqrsFramework[Any, Any, Any]) -> PersistedEventStore[Any, Any, Any, Any]:
    store = cqrs.store
    assert isinstance(store, PersistedEventStore)
    return store


async def bank(**options) -> CqrsFramework[Any, Any, Any]:
    repository = MemoryEventRepository()
    await repository.open()
    store = PersistedEventStore(repository, BankAccount)
    return CqrsFramework(store, services=BankAccountServices(), **options)


def traceparent_of(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_command_is_a_span_with_load_handle_commit_and_dispatch(otel):
    class Counting:
        async def dispatch(self, aggregate_id, events):
            pass

    cqrs = await bank(queries=[Counting()])
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    otel.exporter.clear()

    envelopes = await cqrs.execute("acc-1", DepositMoney(Decimal(5)))

    execute = otel.one("execute DepositMoney")
    assert execute.parent is None
    assert otel.children(execute) == [
        "load BankAccount",
        "handle DepositMoney",
        "commit BankAccount",
        "dispatch Counting",
    ]
    assert dict(execute.attributes or {}) == {
        "cqrs.aggregate.type": "BankAccount",
        "cqrs.command.type": "DepositMoney",
        "cqrs.outcome": "ok",
        "cqrs.events.count": 1,
        "cqrs.retries": 0,
    }
    assert execute.status.status_code is StatusCode.UNSET
    assert otel.one("load BankAccount").attributes == {"cqrs.aggregate.version": 1}
    commit = otel.one("commit BankAccount")
    assert commit.attributes == {"cqrs.events.count": 1}
    # The commit's trace context travels with the event, stored and returned.
    assert envelopes[0].metadata == {"traceparent": traceparent_of(commit)}
    (stored,) = await cqrs.store.load_events("acc-1", after_sequence=1)
    assert stored.metadata == {"traceparent": traceparent_of(commit)}

    ok = (
        ("cqrs.aggregate.type", "BankAccount"),
        ("cqrs.command.type", "DepositMoney"),
        ("cqrs.outcome", "ok"),
    )
    assert otel.points("cqrs.command.duration")[ok] == 1  # one command, measured
    assert otel.points("cqrs.events.committed") == {(("cqrs.aggregate.type", "BankAccount"),): 2}


async def test_events_committed_is_a_monotonic_sum_that_survives_configure_again():
    """``cqrs.events.committed`` is read when the meter collects (an observable counter):
    a cumulative, monotonic sum by aggregate type; asking the same meter provider again
    (configure() once more) keeps counting into the counter the SDK registered first."""
    from opentelemetry.sdk.metrics.export import Sum  # noqa: PLC0415

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.configure(meter_provider=provider)
    try:
        cqrs = await bank()
        await cqrs.execute("acc-1", OpenAccount("acc-1"))
        telemetry.configure(meter_provider=provider)  # the same meter, asked anew
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
        data = reader.get_metrics_data()
        assert data is not None
        (metric,) = [
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "cqrs.events.committed"
        ]
        assert isinstance(metric.data, Sum)
        assert metric.data.is_monotonic
        assert metric.unit == "{event}"
        assert [(dict(p.attributes or {}), p.value) for p in metric.data.data_points] == [
            ({"cqrs.aggregate.type": "BankAccount"}, 3)
        ]
    finally:
        telemetry.configure()


async def test_durations_are_recorded_in_batches_and_at_every_collection(monkeypatch):
    """Durations wait in the process at most ``DURATION_BATCH`` commands, and any reader's
    collection records the pending ones first, for every reader."""
    monkeypatch.setattr(telemetry, "DURATION_BATCH", 3)
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[first, second]))
    try:
        cqrs = await bank()
        await cqrs.execute("acc-1", OpenAccount("acc-1"))
        measures = telemetry.instruments().measures  # type: ignore[union-attr]
        assert len(measures.pending) == 1
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
        assert measures.pending == []  # the third filled the batch: recorded
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
        assert len(measures.pending) == 1

        def counts(reader: InMemoryMetricReader) -> dict[str, int]:
            data = reader.get_metrics_data()
            assert data is not None
            return {
                str((p.attributes or {})["cqrs.command.type"]): p.count  # type: ignore[union-attr]
                for resource in data.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == "cqrs.command.duration"
                for p in metric.data.data_points
            }

        assert counts(second) == {"OpenAccount": 1, "DepositMoney": 3}
        assert measures.pending == []
        assert counts(first) == {"OpenAccount": 1, "DepositMoney": 3}
    finally:
        telemetry.configure()


async def test_the_aggregate_id_is_recorded_only_when_asked(otel):
    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    assert "cqrs.aggregate.id" not in (otel.one("execute OpenAccount").attributes or {})

    telemetry.configure(
        tracer_provider=telemetry.settings.tracer_provider, record_aggregate_id=True
    )
    await cqrs.execute("acc-1", DepositMoney(Decimal(1)), expected_version=1)
    attributes = otel.one("execute DepositMoney").attributes or {}
    assert attributes["cqrs.aggregate.id"] == "acc-1"
    assert attributes["cqrs.expected_version"] == 1


async def test_metadata_that_carries_a_trace_context_keeps_it(otel):
    cqrs = await bank()
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    (envelope,) = await cqrs.execute_with_metadata(
        "acc-1", OpenAccount("acc-1"), {"traceparent": upstream, "user": "ann"}
    )
    assert envelope.metadata == {"traceparent": upstream, "user": "ann"}


async def test_a_user_error_is_an_outcome_not_a_failure(otel, caplog):
    cqrs = await bank()
    with caplog.at_level(logging.DEBUG, logger="cqrs.framework"), pytest.raises(UserError):
        await cqrs.execute("acc-1", DepositMoney(Decimal(5)))  # not open
    assert [r.getMessage() for r in caplog.records] == [
        "DepositMoney on BankAccount 'acc-1' refused: account not open"
    ]

    execute = otel.one("execute DepositMoney")
    assert otel.children(execute) == ["load BankAccount", "handle DepositMoney"]
    assert execute.attributes is not None
    assert execute.attributes["cqrs.outcome"] == "user_error"
    assert execute.attributes["cqrs.events.count"] == 0
    assert execute.attributes["error.type"] == "UserError"
    assert execute.status.status_code is StatusCode.UNSET
    handle = otel.one("handle DepositMoney")
    assert handle.attributes == {"error.type": "BankAccountError"}
    assert handle.status.status_code is StatusCode.UNSET
    refused = (
        ("cqrs.aggregate.type", "BankAccount"),
        ("cqrs.command.type", "DepositMoney"),
        ("cqrs.outcome", "user_error"),
    )
    assert otel.points("cqrs.command.duration") == {refused: 1}
    assert otel.points("cqrs.events.committed") == {}


class Interfering:
    """An ATM that, while the withdrawal is being decided, lets another writer deposit into
    the same account ``times`` times: the decision's commit then conflicts."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.other: CqrsFramework[Any, Any, Any] | None = None

    async def withdrawal(self, atm_id, account_id, amount) -> bool:
        if self.times and self.other is not None:
            self.times -= 1
            await self.other.execute(account_id, DepositMoney(Decimal(1)))
        return True


async def interfered(times: int, attempts: int) -> CqrsFramework[Any, Any, Any]:
    atm = Interfering(times)
    cqrs = await bank(retry=Retry(attempts=attempts, base_delay=0.0, max_delay=0.0))
    cqrs.services = BankAccountServices(atm=atm)
    atm.other = CqrsFramework(cqrs.store, services=BankAccountServices())
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    await cqrs.execute("acc-1", DepositMoney(Decimal(10)))
    return cqrs


async def test_a_conflict_that_a_retry_resolves(otel):
    cqrs = await interfered(times=2, attempts=3)
    otel.exporter.clear()

    await cqrs.execute("acc-1", WithdrawMoney(Decimal(1), "ATM-1"))

    execute = otel.one("execute WithdrawMoney")
    assert otel.children(execute) == [
        "load BankAccount",
        "handle WithdrawMoney",
        "commit BankAccount",
        "load BankAccount",
        "handle WithdrawMoney",
        "commit BankAccount",
        "load BankAccount",
        "handle WithdrawMoney",
        "commit BankAccount",
    ]
    assert execute.attributes is not None
    assert execute.attributes["cqrs.outcome"] == "ok"
    assert execute.attributes["cqrs.retries"] == 2
    assert [(e.name, (e.attributes or {})["cqrs.retry"]) for e in execute.events] == [
        ("retry", 1),
        ("retry", 2),
    ]
    commits = [span for span in otel.named("commit BankAccount") if span.parent == execute.context]
    assert [span.status.status_code for span in commits] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert (commits[0].attributes or {})["error.type"] == "AggregateConflict"
    # The interfering deposits are commands of their own, traced inside the handle spans.
    assert len(otel.named("execute DepositMoney")) == 2
    account = (("cqrs.aggregate.type", "BankAccount"),)
    assert otel.points("cqrs.command.conflicts") == {account: 2}
    assert otel.points("cqrs.command.retries") == {account: 2}


async def test_a_conflict_that_outlasts_the_retries(otel, caplog):
    cqrs = await interfered(times=5, attempts=3)
    otel.exporter.clear()

    with (
        caplog.at_level(logging.DEBUG, logger="cqrs.framework"),
        pytest.raises(AggregateConflict),
    ):
        await cqrs.execute("acc-1", WithdrawMoney(Decimal(1), "ATM-1"))

    execute = otel.one("execute WithdrawMoney")
    assert execute.attributes is not None
    assert execute.attributes["cqrs.outcome"] == "conflict"
    assert execute.attributes["cqrs.retries"] == 2
    assert execute.status.status_code is StatusCode.ERROR
    account = (("cqrs.aggregate.type", "BankAccount"),)
    assert otel.points("cqrs.command.conflicts") == {account: 3}
    assert otel.points("cqrs.command.retries") == {account: 2}
    conflict = (
        ("cqrs.aggregate.type", "BankAccount"),
        ("cqrs.command.type", "WithdrawMoney"),
        ("cqrs.outcome", "conflict"),
    )
    assert otel.points("cqrs.command.duration")[conflict] == 1
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "cqrs.framework" and r.getMessage().startswith("WithdrawMoney")
    ]
    assert [line for _, line in lines[:2]] == [
        "WithdrawMoney on BankAccount 'acc-1': conflict on try 1, retrying in 0.0000 s",
        "WithdrawMoney on BankAccount 'acc-1': conflict on try 2, retrying in 0.0000 s",
    ]
    assert [level for level, _ in lines] == ["DEBUG", "DEBUG", "WARNING"]
    assert lines[-1][1].startswith(
        "WithdrawMoney on BankAccount 'acc-1': conflict after 3 tries, giving up"
    )
    # The interfering deposits were committed: each command says so at DEBUG.
    deposits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Deposit")]
    assert deposits[-1] == "DepositMoney on BankAccount 'acc-1': 1 event(s) committed, at version 5"


async def test_a_failing_query_is_an_error_span_under_a_successful_command(otel, caplog):
    class Broken:
        async def dispatch(self, aggregate_id, events):
            raise RuntimeError("view store down")

    cqrs = await bank(queries=[Broken()])
    with caplog.at_level(logging.ERROR, logger="cqrs.framework"):
        await cqrs.execute("acc-1", OpenAccount("acc-1"))

    execute = otel.one("execute OpenAccount")
    assert execute.attributes is not None
    assert execute.attributes["cqrs.outcome"] == "ok"
    assert execute.attributes["cqrs.query.failures"] == 1
    dispatch = otel.one("dispatch Broken")
    assert dispatch.parent == execute.context
    assert dispatch.status.status_code is StatusCode.ERROR
    assert dispatch.status.description == "view store down"
    assert [event.name for event in dispatch.events] == ["exception"]
    assert otel.points("cqrs.query.failures") == {(("cqrs.query", "Broken"),): 1}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cqrs.framework"]
    assert re.fullmatch(
        r"query <.*\.Broken object at 0x\w+> failed on 1 event\(s\) of 'acc-1'", line
    )


async def test_an_unexpected_error_is_recorded(otel):
    class Faulty:
        async def withdrawal(self, atm_id, account_id, amount) -> bool:
            raise ZeroDivisionError("bug")

    cqrs = await bank()
    cqrs.services = BankAccountServices(atm=Faulty())
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    await cqrs.execute("acc-1", DepositMoney(Decimal(3)))
    with pytest.raises(Exception, match="bug"):
        await cqrs.execute("acc-1", WithdrawMoney(Decimal(1), "ATM-1"))
    execute = otel.one("execute WithdrawMoney")
    assert (execute.attributes or {})["cqrs.outcome"] == "unexpected"
    assert execute.status.status_code is StatusCode.ERROR
    assert otel.one("handle WithdrawMoney").status.status_code is StatusCode.ERROR


async def test_a_slow_commit_is_logged(otel, caplog):
    telemetry.configure(slow_commit=0.0)
    cqrs = await bank()
    with caplog.at_level(logging.WARNING, logger="cqrs.store"):
        await cqrs.execute("acc-1", OpenAccount("acc-1"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cqrs.store"]
    assert line.startswith("slow commit: 1 event(s) of BankAccount 'acc-1' took ")


def test_configure_refuses_a_bad_slow_commit():
    with pytest.raises(ConfigurationError, match="slow_commit"):
        telemetry.configure(slow_commit=-1)


def run_python(code: str, *, block_opentelemetry: bool = False, tmp_path: Path) -> str:
    """Run ``code`` in a new interpreter (no SDK configured there); return its stdout."""
    env_path = [str(ROOT), str(ROOT / "backends")]
    if block_opentelemetry:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            textwrap.dedent(
                """
                import sys

                class Block:
                    def find_spec(self, name, path=None, target=None):
                        if name == "opentelemetry" or name.startswith("opentelemetry."):
                            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                        return None

                sys.meta_path.insert(0, Block())
                """
            )
        )
        env_path.insert(0, str(site))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


COMMANDS = """
    import asyncio
    from decimal import Decimal
    from cqrs import CqrsFramework, PersistedEventStore, telemetry
    from cqrs_memory import MemoryEventRepository
    from examples.bank_account.domain import BankAccount, BankAccountServices, DepositMoney
    from examples.bank_account.domain import OpenAccount

    async def commands():
        repository = MemoryEventRepository()
        await repository.open()
        cqrs = CqrsFramework(PersistedEventStore(repository, BankAccount),
                             services=BankAccountServices())
        await cqrs.execute("acc-1", OpenAccount("acc-1"))
        envelopes = await cqrs.execute("acc-1", DepositMoney(Decimal(2)))
        return envelopes[0].metadata
"""


def test_without_an_sdk_nothing_is_recorded_until_one_is_set(tmp_path):
    out = run_python(
        COMMANDS
        + """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    print(asyncio.run(commands()), telemetry.tracer(), telemetry.instruments())
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    metadata = asyncio.run(commands())
    print(sorted(metadata), sorted(span.name for span in exporter.get_finished_spans())[:2])
    """,
        tmp_path=tmp_path,
    )
    assert out.splitlines() == [
        "{} None None",
        "['traceparent'] ['commit BankAccount', 'commit BankAccount']",
    ]


def test_without_opentelemetry_the_framework_works(tmp_path):
    out = run_python(
        COMMANDS
        + """
    import sys
    from cqrs import ConfigurationError
    print(asyncio.run(commands()), telemetry.available(), telemetry.tracer())
    try:
        telemetry.configure(tracer_provider=object())
    except ConfigurationError as error:
        print(error)
    print(any(name.startswith("opentelemetry") for name in sys.modules))
    """,
        block_opentelemetry=True,
        tmp_path=tmp_path,
    )
    assert out.splitlines() == [
        "{} False None",
        "a tracer or meter provider needs opentelemetry: pip install 'cqrs-es[otel]'",
        "False",
    ]


def test_the_wake_up_and_reconnect_counters(otel):
    telemetry.woke("subscription")
    telemetry.woke("subscription")
    telemetry.reconnected("totals")
    assert otel.points("cqrs.subscription.wake_ups") == {(("cqrs.consumer", "subscription"),): 2}
    assert otel.points("cqrs.subscription.reconnects") == {(("cqrs.consumer", "totals"),): 1}


def test_links_skip_metadata_without_a_valid_trace_context():
    from cqrs import SerializedEvent  # noqa: PLC0415

    def row(metadata: str, position: int) -> SerializedEvent:
        from datetime import UTC, datetime  # noqa: PLC0415

        return SerializedEvent(
            "A", "a", position, "E", "1", b"{}", metadata, datetime.now(UTC), "x", position
        )

    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    rows = [
        row("{}", 1),
        row('{"traceparent": "garbage"}', 2),
        row('{"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"}', 3),
        row(f'{{"traceparent": "{good}"}}', 4),
        row(f'{{"traceparent": "{good}", "user": "x"}}', 5),  # the same commit: one link
        row('{"traceparent": 12}', 6),  # not a string: skipped
    ]
    (link,) = telemetry.links(rows)
    assert f"{link.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert link.context.is_remote
    assert link.attributes == {"cqrs.position": 4}


class Recording:
    """A projection of the bank account that records the events it gets; while ``gate`` is
    clear it waits before taking a batch."""

    event_types = None

    def __init__(self, name: str, store: PersistedEventStore[Any, Any, Any, Any], tracer) -> None:
        self.name = name
        self.sources = (store,)
        self.seen: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.tracer = tracer

    async def handle(self, events) -> None:
        await self.gate.wait()
        with self.tracer.start_as_current_span("inside handle"):
            self.seen.extend(envelope.position for envelope in events)


async def test_a_projection_batch_is_a_span_linked_to_the_commits_of_its_events(otel):
    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
    await cqrs.execute("acc-2", OpenAccount("acc-2"))
    commits = otel.named("commit BankAccount")
    otel.exporter.clear()

    tracer = telemetry.settings.tracer_provider.get_tracer("test")  # type: ignore[union-attr]
    projection = Recording("totals", store_of(cqrs), tracer)
    runner = ProjectionRunner(store_of(cqrs).repository, MemoryCheckpoints(), [projection])
    assert await runner.run_once() == 3

    batch = otel.one("project totals")
    assert batch.parent is None  # a trace of its own, linked to the commands' traces
    assert dict(batch.attributes or {}) == {
        "cqrs.projection": "totals",
        "cqrs.events.count": 3,
        "cqrs.position.first": 1,
        "cqrs.position.last": 3,
    }
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (commit.context.trace_id, commit.context.span_id) for commit in commits
    ]
    assert [(link.attributes or {})["cqrs.position"] for link in batch.links] == [1, 2, 3]
    # Current while the projection runs: its own spans nest under the batch.
    assert otel.one("inside handle").parent == batch.context
    assert otel.points("cqrs.projection.events") == {(("cqrs.projection", "totals"),): 3}


STUCK = (("cqrs.projection", "stuck"),)


async def test_projection_lag_gauges_and_wake_ups(otel):
    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    tracer = telemetry.settings.tracer_provider.get_tracer("test")  # type: ignore[union-attr]
    projection = Recording("stuck", store_of(cqrs), tracer)
    projection.gate.clear()
    runner = ProjectionRunner(
        store_of(cqrs).repository, MemoryCheckpoints(), [projection], poll_interval=0.01
    )
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(2000):  # up to 20 s on a loaded machine
            if runner.status()["stuck"].head:
                break
            await asyncio.sleep(0.01)
        assert runner.status()["stuck"].head, "the runner never saw the head of the stream"
        await asyncio.sleep(0.05)
        # Only this test's runner: the gauges cover every running runner of the process.
        assert otel.points("cqrs.projection.lag.events")[STUCK] == 1
        seconds = otel.points("cqrs.projection.lag.seconds")[STUCK]
        assert seconds >= 0.05
        projection.gate.set()
        await runner.wait_for(1)
        await asyncio.sleep(0.05)  # a few empty polls
        assert otel.points("cqrs.projection.lag.events")[STUCK] == 0
        assert otel.points("cqrs.projection.lag.seconds")[STUCK] == 0
        woke = otel.points("cqrs.subscription.wake_ups")[(("cqrs.consumer", "stuck"),)]
        assert woke >= 1
    finally:
        projection.gate.set()  # a failed assertion must not leave the runner stuck in handle
        runner.stop()
        await asyncio.wait_for(task, 10)


async def test_a_subscription_page_is_a_span_linked_to_its_commits(otel):
    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
    commits = otel.named("commit BankAccount")
    subscription = Subscription(store_of(cqrs).repository, poll_interval=0.01)
    events = aiter(subscription)
    try:
        assert [(await anext(events)).position for _ in range(2)] == [1, 2]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(events), 0.1)  # reads to the end, then waits
    finally:
        await subscription.close()
    page = otel.one("subscription page")
    assert dict(page.attributes or {}) == {
        "cqrs.events.count": 2,
        "cqrs.position.first": 1,
        "cqrs.position.last": 2,
    }
    assert [link.context.span_id for link in page.links] == [
        commit.context.span_id for commit in commits
    ]
    assert otel.points("cqrs.subscription.wake_ups")[(("cqrs.consumer", "subscription"),)] >= 1


async def test_a_replay_is_a_span_and_one_log_line(otel, caplog):
    class Inner:
        def __init__(self, tracer) -> None:
            self.tracer = tracer
            self.events = 0

        async def dispatch(self, aggregate_id, events):
            with self.tracer.start_as_current_span("dispatched"):
                self.events += len(events)

    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    await cqrs.execute("acc-1", DepositMoney(Decimal(5)))
    otel.exporter.clear()
    query = Inner(telemetry.settings.tracer_provider.get_tracer("test"))  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO, logger="cqrs.query"):
        assert await QueryReplay(store_of(cqrs), query, batch_size=1).replay_all() == 2
        assert await QueryReplay(store_of(cqrs), query).replay("acc-1") == 2
    first, second = otel.named("replay Inner")
    assert [span.name for span in otel.spans() if span.parent == first.context] == [
        "dispatched",
        "dispatched",
    ]
    assert second.parent is None
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.query"]
    assert messages[0].startswith("replayed 2 event(s) of BankAccount after position None into <")
    assert messages[1].startswith("replayed 2 event(s) of 'acc-1' into <")


# -- the example app: --log-json, and OTLP export when $OTEL_EXPORTER_OTLP_ENDPOINT is set --

FAKE_OTLP = {
    # Stand-ins for opentelemetry-exporter-otlp-proto-http (not a test dependency): they
    # write what they are handed to $FAKE_OTLP_OUT instead of sending it.
    "trace_exporter.py": """
import os
from opentelemetry.sdk.trace.export import SpanExportResult, SpanExporter

class OTLPSpanExporter(SpanExporter):
    def export(self, spans):
        with open(os.environ["FAKE_OTLP_OUT"], "a") as out:
            for span in spans:
                out.write(f"span {span.name} {span.resource.attributes['service.name']}\\n")
        return SpanExportResult.SUCCESS
""",
    "metric_exporter.py": """
import os
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

class OTLPMetricExporter(MetricExporter):
    def __init__(self):
        super().__init__()

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        with open(os.environ["FAKE_OTLP_OUT"], "a") as out:
            for resource in metrics_data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        out.write(f"metric {metric.name}\\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass
""",
}


def run_example(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.bank_account",
            "demo",
            "--database-url",
            "memory://",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )


def test_the_example_exports_over_otlp_when_an_endpoint_is_set(tmp_path):
    package = tmp_path / "fake" / "opentelemetry" / "exporter" / "otlp" / "proto" / "http"
    package.mkdir(parents=True)
    for name, text in FAKE_OTLP.items():
        (package / name).write_text(textwrap.dedent(text))
    out = tmp_path / "exported.txt"
    result = run_example(
        tmp_path,
        "--log-json",
        "--log-level",
        "DEBUG",
        env={
            # opentelemetry is a namespace package: the fake exporter joins it
            "PYTHONPATH": f"{tmp_path / 'fake'}:{ROOT}:{ROOT / 'backends'}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_SERVICE_NAME": "bank-test",
            "FAKE_OTLP_OUT": str(out),
        },
    )
    assert result.returncode == 0, result.stderr
    exported = out.read_text().splitlines()
    assert "span execute OpenAccount bank-test" in exported
    assert "span project bank_atms bank-test" in exported
    assert "metric cqrs.command.duration" in exported
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert lines[0]["message"] == "exporting traces and metrics over OTLP to http://127.0.0.1:4318"
    committed = [line for line in lines if line["message"].startswith("OpenAccount on")]
    assert committed[0]["logger"] == "cqrs.framework"
    assert committed[0]["level"] == "DEBUG"
    assert len(committed[0]["trace_id"]) == 32  # logged inside the command's span


def test_the_example_without_the_exporter_says_so_and_runs(tmp_path):
    result = run_example(
        tmp_path,
        env={
            "PYTHONPATH": f"{ROOT}:{ROOT / 'backends'}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "view:" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry export is not installed" in warning


async def test_the_overhead_benchmark_runs_every_side(otel):
    from benchmarks import telemetry as bench  # noqa: PLC0415

    measured = await bench.measure(bench._memory, commands=8, repetitions=2, warmups=0)
    assert set(measured["medians"]) == {"bare", "absent", "api", "sdk"}
    assert measured["ratios"]["bare"] == 1.0
    assert measured["overhead_us"]["bare"] == 0.0
    sdk, bare = measured["medians"]["sdk"], measured["medians"]["bare"]
    added = 1e6 / sdk - 1e6 / bare  # from the rounded medians: within the rounding
    assert measured["overhead_us"]["sdk"] == pytest.approx(added, rel=1e-3, abs=0.1)
    assert all(len(rates) == 2 for rates in measured["samples"].values())
    table = bench.markdown([{"backend": "memory", "workload": "commit_1", **measured}])
    assert table.splitlines()[2].startswith("| memory | commit_1 | ")
    # The benchmark leaves the settings as it found them, and the real hooks.
    assert telemetry.settings.tracer_provider is not None
    assert telemetry.command is not telemetry._off
    cqrs = await bank()
    await cqrs.execute("acc-1", OpenAccount("acc-1"))
    assert otel.named("execute OpenAccount")


def test_the_hook_cost_benchmark_runs():
    from benchmarks import telemetry as bench  # noqa: PLC0415

    costs = bench.hook_costs(number=200, repeat=2)
    assert set(costs) == {"hooks_absent_ns", "hooks_api_ns", "frame_ns"}
    assert telemetry.command is not telemetry._off  # restored


def test_the_overhead_benchmark_times_cpu_when_asked(tmp_path, monkeypatch):
    """``--clock cpu`` times the thread's CPU (a wait in a side's step does not count)."""
    from benchmarks import telemetry as bench  # noqa: PLC0415

    slept = {"wall": 0.0, "cpu": 0.0}
    sleepy = bench._Side.deposit

    async def deposit(self, aggregate_id):
        if self.name == "sdk":
            await asyncio.sleep(0.002)  # elapsed, not CPU
        await sleepy(self, aggregate_id)

    monkeypatch.setattr(bench._Side, "deposit", deposit)
    for clock in ("wall", "cpu"):
        out = tmp_path / f"{clock}.json"
        argv = ["--backends", "memory", "--commands", "8", "--repetitions", "1"]
        assert bench.main([*argv, "--clock", clock, "--json", str(out)]) == 0
        (row,) = json.loads(out.read_text())
        slept[clock] = row["overhead_us"]["sdk"]
        assert row["unit"] == ("commands/s" if clock == "wall" else "commands/CPU-s")
    assert slept["wall"] > 2000 > slept["cpu"]


class Flaky(MemoryEventRepository):
    """Fails the next ``failures`` reads of the global stream like a lost server."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def stream_all_events(self, aggregate_type, after_position=None):
        if self.failures:
            self.failures -= 1
            raise DatabaseConnectionError("server gone")
        async for item in super().stream_all_events(aggregate_type, after_position):
            yield item


async def test_reconnects_are_counted_and_said_once(otel, caplog):
    repository = Flaky()
    await repository.open()
    store = PersistedEventStore(repository, BankAccount)
    await CqrsFramework(store, services=BankAccountServices()).execute(
        "acc-1", OpenAccount("acc-1")
    )
    tracer = telemetry.settings.tracer_provider.get_tracer("test")  # type: ignore[union-attr]
    projection = Recording("totals", store, tracer)
    runner = ProjectionRunner(
        repository, MemoryCheckpoints(), [projection], poll_interval=0.01, retry_delay=0.001
    )
    repository.failures = 2
    with caplog.at_level(logging.INFO, logger="cqrs.projections"):
        task = asyncio.create_task(runner.run())
        try:
            await runner.wait_for(1, timeout=5)
        finally:
            runner.stop()
            await task
    assert projection.seen == [1]
    assert otel.points("cqrs.subscription.reconnects") == {(("cqrs.consumer", "totals"),): 1}
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.projections"]
    assert sum("lost its database" in m for m in messages) == 2
    assert messages.count("projection 'totals' reached its database again") == 1

    repository.failures = 1
    subscription = Subscription(repository, poll_interval=0.01, max_retry_delay=0.01)
    try:
        assert (await asyncio.wait_for(anext(aiter(subscription)), 5)).position == 1
    finally:
        await subscription.close()
    assert otel.points("cqrs.subscription.reconnects")[(("cqrs.consumer", "subscription"),)] == 1
