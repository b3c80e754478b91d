"""ViewProjection's writes on the in-memory backend, through ``handle`` (a view repository of
its own) and ``handle_and_save`` (views and checkpoint in one transaction): which events a
stored view skips, the version written, the retries when another writer changes a view and
their waits, the error after the last try, and a store that cannot hold the views."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

import cqrs.projection
from cqrs import AggregateConflict, ConfigurationError, DeserializationError, EventEnvelope
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import ViewProjection, partition_of
from cqrs.rebuild import SwitchableViews
from cqrs.repository import ViewContext
from cqrs_memory import MemoryEventRepository
from cqrs_memory.checkpoints import MemoryCheckpointStore


@dataclass
class Seen:
    positions: list[int] = field(default_factory=list)


def envelope(aggregate_id: str, position: int) -> EventEnvelope[Any]:
    return EventEnvelope(
        "A", aggregate_id, position, {}, {}, datetime.now(UTC), uuid.uuid4(), position
    )


class UpperBound:
    """Stands in for ``random``: ``uniform`` records its bounds and returns the upper one."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return high


@pytest.fixture
def waits(monkeypatch):
    """The bounds of the random waits between tries (and no real waiting)."""
    jitter = UpperBound()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(cqrs.projection, "random", jitter)
    monkeypatch.setattr(cqrs.projection, "asyncio", SimpleNamespace(sleep=sleep))
    return SimpleNamespace(bounds=jitter.bounds, slept=slept)


@pytest.fixture
async def repository():
    async with MemoryEventRepository() as repository:
        yield repository


def projection(views, name: str = "totals", **options) -> ViewProjection[Seen]:
    return ViewProjection(
        name,
        [],
        views,
        Seen,
        key=lambda e: e.aggregate_id,
        update=lambda view, e: view.positions.append(e.position),
        **options,
    )


class Contested:
    """A view repository whose first ``conflicts`` writes find the view changed by another
    writer (AggregateConflict), then write through to ``inner``."""

    def __init__(self, inner, conflicts: int) -> None:
        self.inner, self.conflicts = inner, conflicts
        self.written: list[tuple[str, int, int]] = []

    async def load_with_context(self, view_id: str):
        return await self.inner.load_with_context(view_id)

    async def update_view(self, view, context: ViewContext, version: int) -> None:
        self.written.append((context.view_id, context.version, version))
        if self.conflicts:
            self.conflicts -= 1
            raise AggregateConflict(f"view {context.view_id!r} changed")
        await self.inner.update_view(view, context, version)


class ContestedStore(MemoryCheckpointStore):
    """The repository's checkpoint store; its first ``conflicts`` batch commits find a view
    changed by another writer."""

    def __init__(self, repository: MemoryEventRepository, conflicts: int) -> None:
        super().__init__("projections", repository)
        self.conflicts = conflicts
        self.commits: list[tuple[int, list[tuple[str, int, int]]]] = []
        self.fetched: list[list[str]] = []

    async def fetch_views(self, views, view_ids):
        self.fetched.append(list(view_ids))
        return await super().fetch_views(views, view_ids)

    async def save_with_views(self, lease, position, views, writes) -> None:
        self.commits.append((position, [(w.view_id, w.version, w.expected) for w in writes]))
        if self.conflicts:
            self.conflicts -= 1
            raise AggregateConflict("a view changed")
        await super().save_with_views(lease, position, views, writes)


# -- handle: a view repository of its own ------------------------------------------------------


async def test_handle_skips_what_a_view_already_has_and_writes_the_last_position(repository):
    views = repository.view_repository(Seen, "seen")
    made = projection(views)
    await made.handle([envelope("a", 3), envelope("b", 4)])
    # a batch handed over again from an earlier position: only the events after 3 count
    await made.handle([envelope("a", 2), envelope("a", 3), envelope("a", 5), envelope("b", 4)])
    loaded = await views.load_with_context("a")
    assert loaded is not None
    assert loaded[0] == Seen([3, 5])
    assert loaded[1].version == 5
    b = await views.load_with_context("b")
    assert b is not None
    assert (b[0], b[1].version) == (Seen([4]), 4)


async def test_handle_retries_a_changed_view_with_growing_random_waits(repository, waits):
    views = Contested(repository.view_repository(Seen, "seen"), conflicts=3)
    made = projection(views)
    await made.handle([envelope("a", 1), envelope("a", 2)])
    assert views.written == [("a", 0, 2)] * 4  # a new view: version 0 expected, 2 written
    assert waits.bounds == [(0, 0.002), (0, 0.004), (0, 0.008)]
    assert waits.slept == [0.002, 0.004, 0.008]
    assert await views.inner.load("a") == Seen([1, 2])


@pytest.mark.parametrize("attempts", [1, 3])
async def test_handle_gives_up_on_a_view_that_keeps_changing(repository, waits, attempts):
    views = Contested(repository.view_repository(Seen, "seen"), conflicts=99)
    made = projection(views, attempts=attempts)
    with pytest.raises(AggregateConflict) as raised:
        await made.handle([envelope("acc-1", 1)])
    assert str(raised.value) == "view 'acc-1' kept changing under projection 'totals'"
    assert len(views.written) == attempts
    assert len(waits.slept) == attempts


# -- handle_and_save: views and checkpoint in one transaction ----------------------------------


async def test_handle_and_save_skips_what_a_view_has_and_commits_once(repository):
    checkpoints = repository.checkpoint_store()
    views = repository.view_repository(Seen, "seen")
    made = projection(views)
    assert made.commits_with(checkpoints)
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    await views.update_view(Seen([7]), ViewContext("a", 0), 7)
    await views.update_view(Seen([9]), ViewContext("b", 0), 9)
    batch = [envelope("b", 8), envelope("a", 6), envelope("a", 7), envelope("a", 10)]
    await made.handle_and_save(batch, checkpoints, lease, 10)
    assert await views.load("a") == Seen([7, 10])  # 6 and 7 were in it already
    assert await views.load("b") == Seen([9])  # 8 is below 9: not written at all
    loaded = await views.load_with_context("a")
    assert loaded is not None
    assert loaded[1].version == 10
    assert await checkpoints.position("totals") == 10
    # exactly the last position a view has is skipped too
    await made.handle_and_save([envelope("a", 10), envelope("b", 9)], checkpoints, lease, 11)
    assert (await views.load("a"), await views.load("b")) == (Seen([7, 10]), Seen([9]))
    assert await checkpoints.position("totals") == 11


async def test_handle_and_save_writes_new_views_from_version_0(repository):
    checkpoints = ContestedStore(repository, conflicts=0)
    views = repository.view_repository(Seen, "seen")
    made = projection(views)
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    await made.handle_and_save([envelope("a", 1), envelope("b", 2)], checkpoints, lease, 3)
    assert checkpoints.commits == [(3, [("a", 1, 0), ("b", 2, 0)])]
    assert (await views.load("a"), await views.load("b")) == (Seen([1]), Seen([2]))
    assert checkpoints.fetched == [["a", "b"]]
    await made.handle_and_save([], checkpoints, lease, 4)  # nothing to write: the checkpoint
    assert checkpoints.commits[-1] == (4, [])
    assert checkpoints.fetched == [["a", "b"]]  # and no view to read
    assert await checkpoints.position("totals") == 4


async def test_handle_and_save_starts_over_when_a_view_changed_meanwhile(repository, waits):
    checkpoints = ContestedStore(repository, conflicts=2)
    views = repository.view_repository(Seen, "seen")
    made = projection(views)
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    await views.update_view(Seen([1]), ViewContext("a", 0), 1)
    await made.handle_and_save([envelope("a", 1), envelope("a", 2)], checkpoints, lease, 2)
    assert checkpoints.commits == [(2, [("a", 2, 1)])] * 3
    assert waits.bounds == [(0, 0.002), (0, 0.004)]
    assert await views.load("a") == Seen([1, 2])
    assert await checkpoints.position("totals") == 2


async def test_handle_and_save_gives_up_on_views_that_keep_changing(repository, waits):
    checkpoints = ContestedStore(repository, conflicts=99)
    made = projection(repository.view_repository(Seen, "seen"), attempts=4)
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    with pytest.raises(AggregateConflict) as raised:
        await made.handle_and_save([envelope("a", 1)], checkpoints, lease, 1)
    assert str(raised.value) == "the views of projection 'totals' kept changing under it"
    assert len(checkpoints.commits) == 4
    assert waits.bounds == [(0, 0.002), (0, 0.004), (0, 0.008), (0, 0.016)]
    assert await checkpoints.position("totals") == 0


async def test_handle_and_save_needs_views_its_store_can_hold(repository):
    checkpoints = repository.checkpoint_store()
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    switchable = SwitchableViews(repository.view_repository(Seen, "seen"))
    made = projection(switchable)
    assert not made.commits_with(checkpoints)
    with pytest.raises(ConfigurationError) as raised:
        await made.handle_and_save([envelope("a", 1)], checkpoints, lease, 1)
    assert str(raised.value) == (f"projection 'totals': {checkpoints!r} cannot store its views")
    plain = MemoryCheckpoints()
    with pytest.raises(ConfigurationError) as raised:
        await projection(repository.view_repository(Seen, "seen")).handle_and_save(
            [envelope("a", 1)], plain, lease, 1
        )
    assert str(raised.value) == f"projection 'totals': {plain!r} cannot store its views"


class Fetches(MemoryCheckpointStore):
    """The repository's checkpoint store, handing out ``rows`` as the stored views and
    recording the view writes of a batch instead of making them."""

    def __init__(self, repository: MemoryEventRepository, rows: dict[str, tuple[object, object]]):
        super().__init__("projections", repository)
        self.rows = rows
        self.written: list[tuple[str, bytes, int, int]] = []

    async def save_with_views(self, lease, position, views, writes) -> None:
        self.written.extend((w.view_id, w.payload, w.version, w.expected) for w in writes)

    async def fetch_views(self, views, view_ids):
        return {view_id: self.rows[view_id] for view_id in view_ids if view_id in self.rows}


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ((b'{"positions": []}', 0), "its version is not a positive int"),
        ((b'{"positions": []}', -2), "its version is not a positive int"),
        ((b'{"positions": []}', True), "its version is not a positive int"),
        ((b'{"positions": []}', "3"), "its version is not a positive int"),
        ((17, 3), "its payload is int, not JSON"),
        ((None, 3), "its payload is NoneType, not JSON"),
    ],
    ids=["zero", "negative", "bool", "text", "int-payload", "no-payload"],
)
async def test_a_stored_view_that_does_not_decode_names_itself(repository, row, problem):
    checkpoints = Fetches(repository, {"acc-1": row})
    made = projection(repository.view_repository(Seen, "seen"))
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    with pytest.raises(DeserializationError) as raised:
        await made.handle_and_save([envelope("acc-1", 9)], checkpoints, lease, 9)
    assert str(raised.value) == (
        f"view 'acc-1' in seen (version {row[1]!r}) does not decode: {problem}"
    )
    assert await checkpoints.position("totals") == 0


async def test_a_stored_view_payload_that_is_not_json_names_the_view(repository):
    checkpoints = Fetches(repository, {"acc-1": (b"{oops", 4)})
    made = projection(repository.view_repository(Seen, "seen"))
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    with pytest.raises(DeserializationError) as raised:
        await made.handle_and_save([envelope("acc-1", 9)], checkpoints, lease, 9)
    assert str(raised.value).startswith("view 'acc-1' in seen (version 4) does not decode: ")


async def test_a_stored_view_row_is_decoded_and_written_after_its_version(repository):
    checkpoints = Fetches(repository, {"acc-1": ('{"positions": [2, 4]}', 4)})
    views = repository.view_repository(Seen, "seen")
    made = projection(views)
    lease = await checkpoints.acquire("totals", "me", 10)
    assert lease is not None
    await made.handle_and_save([envelope("acc-1", 3), envelope("acc-1", 5)], checkpoints, lease, 5)
    ((view_id, payload, version, expected),) = checkpoints.written
    assert (view_id, version, expected) == ("acc-1", 5, 4)
    assert views.codec.decode(payload, Seen) == Seen([2, 4, 5])


async def test_an_event_changes_every_view_its_key_names_and_none_for_no_key(repository):
    views = repository.view_repository(Seen, "seen")

    def keys(e: EventEnvelope[Any]) -> str | list[str] | None:
        if e.position == 1:
            return None  # an event no view cares about
        if e.position == 2:
            return "a"
        return [e.aggregate_id, "all"]  # a string, or several

    made = ViewProjection(
        "totals",
        [],
        views,
        Seen,
        key=keys,
        update=lambda view, e: view.positions.append(e.position),
    )
    await made.handle([envelope("a", 1), envelope("a", 2), envelope("b", 3), envelope("a", 4)])
    assert await views.load("a") == Seen([2, 4])
    assert await views.load("b") == Seen([3])
    assert await views.load("all") == Seen([3, 4])


async def test_each_partition_writes_only_the_views_whose_ids_fall_in_it(repository):
    views = repository.view_repository(Seen, "seen")
    ids = [f"acc-{n}" for n in range(12)]
    parts = projection(views).partitions(3)
    batch = [envelope(view_id, n + 1) for n, view_id in enumerate(ids)]
    await parts[1].handle(batch)
    written = {view_id for view_id in ids if await views.load(view_id) is not None}
    assert written == {view_id for view_id in ids if partition_of(view_id, 3) == 1}
    assert 0 < len(written) < len(ids)
