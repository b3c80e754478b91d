"""cqrs.rebuild on the in-memory backend: rebuild's runner options, its timeout (the
projection's lease is free again after it) and a switch that is a coroutine function;
reset_views clearing the views and fencing the runner, or refusing views elsewhere."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest
from test_core_projection import Decoder, Recorder, Seen, view_projection

from cqrs import ConfigurationError, LeaseLost, SerializedEvent, ViewContext
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.rebuild import SwitchableViews, rebuild, reset_views
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
    checkpoints = MemoryCheckpoints()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await rebuild(
            repository,
            checkpoints,
            Stuck("stuck", [Decoder("A")]),
            lambda: switched.append(True),
            timeout=0.1,
            poll_interval=0.02,
            lease_ttl=60,
        )
    assert time.monotonic() - started < 5
    assert switched == []
    # the runner was stopped and gave its lease up: the next try takes over at once
    assert await checkpoints.acquire("stuck", "next try", 60) is not None


# -- reset_views -------------------------------------------------------------------------------


async def test_reset_views_clears_the_views_and_fences_the_runner_holding_them(repository):
    checkpoints = repository.checkpoint_store()
    projection = view_projection(repository)
    await projection.view_repository.update_view(Seen([1]), ViewContext("a1", 0))
    lease = await checkpoints.acquire("totals", "runner", 60)
    assert lease is not None
    await checkpoints.save(lease, 3)
    await reset_views(checkpoints, projection)
    assert await projection.view_repository.load("a1") is None
    assert await checkpoints.position("totals") == 0
    with pytest.raises(LeaseLost):
        await checkpoints.save(lease, 3)


async def test_reset_views_refuses_views_outside_the_checkpoints_database(repository):
    checkpoints = repository.checkpoint_store()
    async with MemoryEventRepository() as elsewhere:
        projection = view_projection(elsewhere)
        await projection.view_repository.update_view(Seen([1]), ViewContext("a1", 0))
        with pytest.raises(ConfigurationError) as raised:
            await reset_views(checkpoints, projection)
        assert str(raised.value) == (
            f"the views of projection 'totals' are not in the database of {checkpoints!r}: "
            "delete them yourself, then reset its checkpoint"
        )
        assert await projection.view_repository.load("a1") == Seen([1])
    with pytest.raises(ConfigurationError, match="delete them yourself"):
        await reset_views(MemoryCheckpoints(), view_projection(repository))


async def test_a_rebuild_whose_projection_fails_names_the_failure_and_does_not_switch(repository):
    switched: list[bool] = []
    for _ in range(3):  # the run and the wait end at nearly the same time: same error each way
        with pytest.raises(RuntimeError) as raised:
            await rebuild(
                repository,
                MemoryCheckpoints(),
                Recorder("broken", [Decoder("A")], fail_on=[2]),
                lambda: switched.append(True),
                timeout=5,
                attempts=1,
                retry_delay=0.001,
                poll_interval=0.02,
            )
        assert str(raised.value).startswith("projection 'broken' failed: ")
        assert "bad [2]" in str(raised.value)
    assert switched == []


async def test_a_rebuild_whose_runner_breaks_raises_what_broke_it(repository):
    class Broken(MemoryCheckpoints):
        async def acquire(self, name, owner, ttl):
            raise LookupError("no checkpoints here")

    switched: list[bool] = []
    with pytest.raises(LookupError, match="no checkpoints here"):
        await rebuild(
            repository,
            Broken(),
            Recorder("totals", [Decoder("A")]),
            lambda: switched.append(True),
            timeout=5,
            poll_interval=0.02,
        )
    assert switched == []


# -- SwitchableViews -----------------------------------------------------------------------------


async def test_switchable_views_read_and_write_through_to_the_views_switched_to(repository):
    first = repository.view_repository(Seen, "first")
    second = repository.view_repository(Seen, "second")
    await first.update_view(Seen([1]), ViewContext("v", 0))
    await second.update_view(Seen([2]), ViewContext("v", 0))
    views = SwitchableViews(first)
    assert await views.load_with_context("v") == (Seen([1]), ViewContext("v", 1))
    views.switch(second)
    assert views.current is second
    await views.create_schema()
    assert await views.load("v") == Seen([2])
    assert await views.load_with_context("v") == (Seen([2]), ViewContext("v", 1))
    await views.update_view(Seen([3]), ViewContext("v", 1))
    assert await second.load("v") == Seen([3])
    assert await first.load("v") == Seen([1])
