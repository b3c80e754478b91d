"""The port's exact rules, on every backend: gaps, idempotence by event id, the not-open
error, id limits, paging at its edges, atomic snapshots, and a second client that shares
no in-process state with the first."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from msgspec.structs import replace

from cqrs import (
    AggregateConflict,
    NotOpenError,
    PersistedEventRepository,
    SerializedSnapshot,
    ViewContext,
)
from cqrs.repository import MAX_AGGREGATE_ID_BYTES, MAX_AGGREGATE_TYPE_BYTES
from cqrs_conformance.support import TYPE, batch, collect, event


def ids(events) -> list[str]:
    return [str(e.event_id) for e in events]


# -- gaps --------------------------------------------------------------------------------


async def test_a_batch_after_a_gap_is_a_conflict_and_stores_nothing(repository):
    await repository.persist([event("a1", 1)], None)
    with pytest.raises(AggregateConflict):
        await repository.persist(batch("a1", 3, 2), None)
    with pytest.raises(AggregateConflict):
        await repository.persist(batch("a1", 3, 1), SerializedSnapshot(TYPE, "a1", b"{}", 3, 1))
    assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1]
    assert await repository.get_snapshot(TYPE, "a1") is None
    await repository.persist(batch("a1", 2, 2), None)  # the right next sequence still works
    assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1, 2, 3]


async def test_a_new_aggregate_starts_at_sequence_1(repository):
    with pytest.raises(AggregateConflict):
        await repository.persist(batch("fresh", 2, 2), None)
    assert await repository.get_events(TYPE, "fresh") == []
    assert await collect(repository.stream_all_events(TYPE)) == []


# -- idempotence by event id ----------------------------------------------------------------


async def test_persisting_the_same_batch_again_returns_its_positions_and_stores_it_once(
    repository,
):
    rows = batch("a1", 1, 3)
    first = await repository.persist(rows, None)
    again = await repository.persist(rows, None)
    assert again == first
    await repository.persist(batch("a1", 4, 2), None)  # later events do not matter
    assert await repository.persist(rows, None) == first
    assert await repository.persist(rows[1:], None) == first[1:]
    stored = await repository.get_events(TYPE, "a1")
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5]
    assert ids(stored[:3]) == ids(rows)
    streamed = await collect(repository.stream_all_events(TYPE))
    assert len(streamed) == 5


async def test_the_same_sequences_with_other_event_ids_are_a_conflict(repository):
    rows = batch("a1", 1, 3)
    await repository.persist(rows, None)
    other = [replace(e, event_id=uuid.uuid4()) for e in rows]
    with pytest.raises(AggregateConflict):
        await repository.persist(other, None)
    one_differs = [*rows[:2], replace(rows[2], event_id=uuid.uuid4())]
    with pytest.raises(AggregateConflict):
        await repository.persist(one_differs, None)
    longer = [*rows, event("a1", 4)]  # stored ids, then one more: not a retry of a commit
    with pytest.raises(AggregateConflict):
        await repository.persist(longer, None)
    assert ids(await repository.get_events(TYPE, "a1")) == ids(rows)


# -- not open ------------------------------------------------------------------------------


async def _every_method_refuses(repository: PersistedEventRepository) -> None:
    calls = {
        "get_events": lambda: repository.get_events(TYPE, "a1"),
        "get_last_events": lambda: repository.get_last_events(TYPE, "a1", 0),
        "get_snapshot": lambda: repository.get_snapshot(TYPE, "a1"),
        "persist": lambda: repository.persist(batch("a1", 1, 1), None),
        "stream_events": lambda: collect(repository.stream_events(TYPE, "a1")),
        "stream_all_events": lambda: collect(repository.stream_all_events(None)),
        "create_schema": repository.create_schema,
    }
    for name, call in calls.items():
        with pytest.raises(NotOpenError, match="not open"):
            await call()
        assert name  # the loop names the method in a failure's traceback


async def test_a_repository_used_before_open_raises_not_open(backend):
    await _every_method_refuses(backend.new_repository())


async def test_a_repository_used_after_close_raises_not_open_and_reopens(backend):
    repository = await backend.open_repository()
    await repository.persist(batch("a1", 1, 2), None)
    await repository.close()
    await _every_method_refuses(repository)
    await repository.open()
    assert len(await repository.get_events(TYPE, "a1")) == 2


async def test_a_view_repository_on_a_closed_repository_raises_not_open(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(dict[str, int], backend.name("views"))
    await views.create_schema()
    await views.update_view({"n": 1}, ViewContext("v1", 0))
    await repository.close()
    with pytest.raises(NotOpenError):
        await views.load("v1")
    with pytest.raises(NotOpenError):
        await views.update_view({"n": 2}, ViewContext("v1", 1))
    await repository.open()
    assert await views.load("v1") == {"n": 1}


# -- ids -----------------------------------------------------------------------------------


async def test_ids_at_the_byte_limits_round_trip(repository):
    long_type = "T" * (MAX_AGGREGATE_TYPE_BYTES - 2) + "é"  # 2 bytes in UTF-8
    long_id = "€" * (MAX_AGGREGATE_ID_BYTES // 3) + "x" * (MAX_AGGREGATE_ID_BYTES % 3)
    assert len(long_id.encode()) == MAX_AGGREGATE_ID_BYTES
    rows = batch(long_id, 1, 2, aggregate_type=long_type)
    positions = await repository.persist(rows, SerializedSnapshot(long_type, long_id, b"{}", 2, 1))
    assert ids(await repository.get_events(long_type, long_id)) == ids(rows)
    assert [e.position for e in await collect(repository.stream_all_events(long_type))] == (
        positions
    )
    assert await repository.get_snapshot(long_type, long_id) is not None


@pytest.mark.parametrize(
    ("aggregate_type", "aggregate_id", "limit"),
    [
        (TYPE, "€" * (MAX_AGGREGATE_ID_BYTES // 3 + 1), MAX_AGGREGATE_ID_BYTES),
        (TYPE, "x" * (MAX_AGGREGATE_ID_BYTES + 1), MAX_AGGREGATE_ID_BYTES),
        ("T" * (MAX_AGGREGATE_TYPE_BYTES + 1), "a1", MAX_AGGREGATE_TYPE_BYTES),
    ],
)
async def test_ids_over_the_byte_limits_are_refused_naming_the_limit(
    repository, aggregate_type, aggregate_id, limit
):
    with pytest.raises(ValueError, match=f"limit is {limit}"):
        await repository.persist(batch(aggregate_id, 1, 1, aggregate_type=aggregate_type), None)
    assert await collect(repository.stream_all_events(None)) == []


async def test_batches_that_break_the_rule_are_refused_before_any_io(backend):
    repository = backend.new_repository()  # not even open: the batch is checked first
    bad = {
        "two aggregates": [event("a1", 1), event("a2", 2)],
        "not consecutive": [event("a1", 1), event("a1", 3)],
        "sequence 0": [event("a1", 0)],
        "empty id": [event("", 1)],
    }
    for name, rows in bad.items():
        with pytest.raises(ValueError, match=r"sequence|aggregate"):
            await repository.persist(rows, None)
        assert name


# -- paging at its edges ----------------------------------------------------------------------


async def test_small_pages_across_commits_larger_than_a_page_deliver_every_event_once(backend):
    repository = await backend.open_repository(page_size=3)
    committed = []
    sequences = {"a": 0, "b": 0}
    for aggregate, size, aggregate_type in [
        ("a", 7, TYPE),
        ("b", 1, "Other"),
        ("a", 3, TYPE),
        ("b", 5, "Other"),
        ("a", 1, TYPE),
        ("b", 6, TYPE),
        ("a", 4, TYPE),
    ]:
        key = aggregate if aggregate_type == TYPE else f"{aggregate}-other"
        first = sequences.get(key, 0) + 1
        rows = batch(aggregate, first, size, aggregate_type=aggregate_type)
        sequences[key] = first + size - 1
        positions = await repository.persist(rows, None)
        committed += [
            (str(r.event_id), r.aggregate_type, p) for r, p in zip(rows, positions, strict=True)
        ]
    everything = await collect(repository.stream_all_events(None))
    assert [(str(e.event_id), e.aggregate_type, e.position) for e in everything] == committed
    of_type = await collect(repository.stream_all_events(TYPE))
    assert [str(e.event_id) for e in of_type] == [i for i, t, _ in committed if t == TYPE]
    for index in range(len(committed)):  # resume after every position, page edges included
        after = committed[index][2]
        rest = await collect(repository.stream_all_events(None, after_position=after))
        assert [str(e.event_id) for e in rest] == [i for i, _, _ in committed[index + 1 :]]


async def test_small_pages_of_one_aggregate_with_others_interleaved(backend):
    repository = await backend.open_repository(page_size=2)
    expected: dict[str, list[str]] = {"x": [], "y": []}
    next_sequence = {"x": 1, "y": 1}
    for aggregate, size in [("x", 3), ("y", 2), ("x", 1), ("y", 4), ("x", 2), ("y", 1), ("x", 3)]:
        rows = batch(aggregate, next_sequence[aggregate], size)
        await repository.persist(rows, None)
        next_sequence[aggregate] += size
        expected[aggregate] += ids(rows)
    for aggregate, wanted in expected.items():
        streamed = await collect(repository.stream_events(TYPE, aggregate))
        assert ids(streamed) == wanted
        assert [e.sequence for e in streamed] == list(range(1, len(wanted) + 1))


# -- atomic snapshots ------------------------------------------------------------------------


async def test_a_refused_commit_stores_neither_its_events_nor_its_snapshot(backend):
    repository = await backend.open_repository()
    # A second client knows nothing of what the first stored: only the database refuses.
    other = await backend.open_repository()
    await repository.persist(batch("a1", 1, 2), SerializedSnapshot(TYPE, "a1", b'{"v": 2}', 2, 1))
    for client in (repository, other):
        with pytest.raises(AggregateConflict):
            await client.persist(
                batch("a1", 2, 3), SerializedSnapshot(TYPE, "a1", b'{"v": 4}', 4, 2)
            )
        snapshot = await client.get_snapshot(TYPE, "a1")
        assert snapshot is not None
        assert (snapshot.last_sequence, snapshot.snapshot_version) == (2, 1)
        assert [e.sequence for e in await client.get_events(TYPE, "a1")] == [1, 2]
    for client in (repository, other):
        with pytest.raises(AggregateConflict):
            await client.persist([event("new", 2)], None)
        with pytest.raises(AggregateConflict):
            await client.persist([event("new", 2)], SerializedSnapshot(TYPE, "new", b"{}", 2, 1))
        assert await client.get_snapshot(TYPE, "new") is None


# -- a second client -------------------------------------------------------------------------


async def test_a_second_client_cannot_overwrite_or_duplicate_a_sequence(backend):
    first = await backend.open_repository()
    second = await backend.open_repository()
    await first.persist(batch("a1", 1, 2), None)
    # The second client never saw these sequences: only the database can refuse it.
    with pytest.raises(AggregateConflict):
        await second.persist([event("a1", 2)], None)
    with pytest.raises(AggregateConflict):
        await second.persist(batch("a1", 1, 3), None)
    await second.persist([event("a1", 3)], None)
    with pytest.raises(AggregateConflict):
        await first.persist([event("a1", 3)], None)
    assert [e.sequence for e in await first.get_events(TYPE, "a1")] == [1, 2, 3]


async def test_two_clients_racing_for_one_sequence_get_exactly_one_winner(backend):
    first = await backend.open_repository()
    second = await backend.open_repository()
    for sequence in range(1, 6):
        outcomes = await asyncio.gather(
            first.persist([event("hot", sequence)], None),
            second.persist([event("hot", sequence)], None),
            return_exceptions=True,
        )
        conflicts = [o for o in outcomes if isinstance(o, AggregateConflict)]
        assert len(conflicts) == 1, outcomes
        assert [o for o in outcomes if not isinstance(o, BaseException)], outcomes
    assert [e.sequence for e in await first.get_events(TYPE, "hot")] == [1, 2, 3, 4, 5]


async def test_a_reader_on_another_client_never_skips_while_several_clients_write(backend):
    scale = getattr(backend.factory, "stress_scale", 1.0)
    writers = [await backend.open_repository() for _ in range(3)]
    reader_repository = await backend.open_repository(page_size=4)
    rounds = max(4, int(12 * scale))
    committed: set[str] = set()
    done = asyncio.Event()

    async def writer(repository: PersistedEventRepository, name: str) -> None:
        sequence = 0
        for _ in range(rounds):
            rows = batch(name, sequence + 1, random.randint(1, 6))
            await repository.persist(rows, None)
            committed.update(ids(rows))
            sequence += len(rows)
            await asyncio.sleep(0)

    seen: list[str] = []
    positions: list[int] = []

    async def read_once(checkpoint: int | None) -> int | None:
        async for e in reader_repository.stream_all_events(None, after_position=checkpoint):
            seen.append(str(e.event_id))
            positions.append(e.position)
            checkpoint = e.position
        return checkpoint

    async def reader() -> None:
        checkpoint = None
        while not done.is_set():
            checkpoint = await read_once(checkpoint)
            await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + 30
        while len(seen) < len(committed) and asyncio.get_running_loop().time() < deadline:
            checkpoint = await read_once(checkpoint)
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(reader())
    await asyncio.gather(
        *(
            writer(repository, f"w{index}-{task}")
            for index, repository in enumerate(writers)
            for task in range(3)
        )
    )
    done.set()
    await reading
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == committed, f"{len(committed - set(seen))} event(s) skipped"
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
