"""A traced and measured Subscription on the in-memory backend: its page spans follow the
repository's ``page_size``, and a reconnect to an empty stream is counted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cqrs import DatabaseConnectionError, SerializedEvent, telemetry
from cqrs.subscription import Subscription
from cqrs_memory import MemoryEventRepository


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure(tracer_provider=provider)
    try:
        yield exporter
    finally:
        telemetry.configure()


def row(aggregate_id: str) -> SerializedEvent:
    return SerializedEvent(
        "A", aggregate_id, 1, "E", "1.0", b"{}", b"{}", datetime.now(UTC), uuid.uuid4()
    )


async def test_a_subscription_traces_pages_of_the_repositorys_page_size(exporter):
    async with MemoryEventRepository(page_size=2) as repository:
        for number in range(1, 6):
            await repository.persist([row(f"a{number}")], None)
        subscription = Subscription(repository, poll_interval=0.01)
        taken = []
        async with asyncio.timeout(5):
            async for event in subscription:
                taken.append(event.position)
                if len(taken) == 5:
                    break
        await subscription.close()
    assert taken == [1, 2, 3, 4, 5]
    pages = [s for s in exporter.get_finished_spans() if s.name == "subscription page"]
    # two full pages; the fifth event's page was still open when the loop broke off
    assert [s.attributes["cqrs.events.count"] for s in pages if s.attributes] == [2, 2]


class LosesOnce(MemoryEventRepository):
    """An empty repository whose first read of the global stream fails like a lost server."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def stream_all_events(self, aggregate_type, after_position=None):
        self.reads += 1
        if self.reads == 1:
            raise DatabaseConnectionError("server gone")
        async for item in super().stream_all_events(aggregate_type, after_position):
            yield item


async def test_a_reconnect_to_an_empty_stream_is_counted_for_the_subscription():
    reader = InMemoryMetricReader()
    telemetry.configure(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        async with LosesOnce() as repository:
            subscription = Subscription(repository, poll_interval=0.01)

            async def first() -> SerializedEvent:
                return await anext(aiter(subscription))

            reading = asyncio.create_task(first())
            async with asyncio.timeout(5):
                while repository.reads < 3:  # noqa: ASYNC110 - polls a counter
                    await asyncio.sleep(0.005)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await subscription.close()
        counted: dict[str, float] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "cqrs.subscription.reconnects":
                        for point in metric.data.data_points:
                            consumer = str((point.attributes or {})["cqrs.consumer"])
                            counted[consumer] = point.value  # type: ignore[union-attr]
    finally:
        telemetry.configure()
    assert counted == {"subscription": 1}
