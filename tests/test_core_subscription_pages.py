"""A traced Subscription on the in-memory backend: its page spans follow the repository's
``page_size``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cqrs import SerializedEvent, telemetry
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
