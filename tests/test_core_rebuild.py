"""cqrs.rebuild.rebuild on the in-memory backend: the runner options it passes on, its
timeout, and a switch that is a coroutine function."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest
from test_core_projection import Decoder, Recorder

from cqrs import SerializedEvent
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.rebuild import rebuild
from cqrs_memory import MemoryEventRepository


def stored(aggregate_id: str) -> SerializedEvent:
    return SerializedEvent(
        "A", aggregate_id, 1, "E", "1.0", b"{}", b"{}", datetime.now(UTC), uuid.uuid4()
    )


@pytest.fixture
async def repository():
    async with MemoryEventRepository() as repository:
        for number in range(1, 4):
            await repository.persist([stored(f"a{number}")], None)
        yield repository


async def test_rebuild_passes_the_runner_options_on_and_awaits_an_async_switch(repository):
    projection = Recorder("totals_v2", [Decoder("A")])
    switched: list[int] = []

    async def switch() -> None:
        await asyncio.sleep(0)
        switched.append(len(projection.batches))

    checkpoints = MemoryCheckpoints()
    position = await rebuild(
        repository, checkpoints, projection, switch, batch_size=1, poll_interval=0.02
    )
    assert position == 3
    assert projection.batches == [[1], [2], [3]]  # batch_size=1 reached the runner
    assert switched == [3]  # awaited, after the catch-up


async def test_rebuild_gives_up_after_its_timeout(repository):
    class Stuck(Recorder):
        async def handle(self, events):
            await asyncio.sleep(30)

    switched: list[bool] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await rebuild(
            repository,
            MemoryCheckpoints(),
            Stuck("stuck", [Decoder("A")]),
            lambda: switched.append(True),
            timeout=0.1,
            poll_interval=0.02,
        )
    assert time.monotonic() - started < 5
    assert switched == []
