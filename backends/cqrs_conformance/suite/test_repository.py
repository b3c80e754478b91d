"""The storage port's rules, checked on every backend through the protocol alone."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from cqrs import (
    AggregateConflict,
    ConfigurationError,
    NotOpenError,
    PersistedEventRepository,
    SerializedSnapshot,
    default_codec,
)
from cqrs_conformance.support import TYPE, batch, collect, event, payloads


async def test_persist_then_get_events_keeps_every_field(repository: PersistedEventRepository):
    stored = [
        event("a1", 1, metadata={"user": "ann"}, event_version="2.1"),
        event("a1", 2, payload={"x": [1, 2, {"y": "z"}]}),
    ]
    positions = await repository.persist(stored, None)
    loaded = await repository.get_events(TYPE, "a1")
    assert [e.sequence for e in loaded] == [1, 2]
    assert [e.position for e in loaded] == positions
    for original, got in zip(stored, loaded, strict=True):
        assert (got.aggregate_type, got.aggregate_id, got.event_type, got.event_version) == (
            original.aggregate_type,
            original.aggregate_id,
            original.event_type,
            original.event_version,
        )
        assert default_codec.decode_untyped(got.payload) == default_codec.decode_untyped(
            original.payload
        )
        assert default_codec.decode_metadata(got.metadata) == default_codec.decode_metadata(
            original.metadata
        )
        assert str(got.event_id) == str(original.event_id)  # a UUID or its text form
        assert abs((got.timestamp - original.timestamp).total_seconds()) < 0.001


async def test_get_events_of_unknown_aggregate_is_empty(repository: PersistedEventRepository):
    assert await repository.get_events(TYPE, "nobody") == []
    assert await repository.get_last_events(TYPE, "nobody", 0) == []
    assert await repository.get_snapshot(TYPE, "nobody") is None


async def test_get_last_events_returns_only_later_sequences(repository: PersistedEventRepository):
    await repository.persist(batch("a1", 1, 5), None)
    later = await repository.get_last_events(TYPE, "a1", 3)
    assert [e.sequence for e in later] == [4, 5]
    assert await repository.get_last_events(TYPE, "a1", 5) == []


async def test_aggregate_type_separates_streams(repository: PersistedEventRepository):
    await repository.persist(batch("same", 1, 2, aggregate_type="A"), None)
    await repository.persist(batch("same", 1, 3, aggregate_type="B"), None)
    assert len(await repository.get_events("A", "same")) == 2
    assert len(await repository.get_events("B", "same")) == 3


async def test_persist_returns_increasing_positions(repository: PersistedEventRepository):
    first = await repository.persist(batch("a1", 1, 3), None)
    second = await repository.persist(batch("a2", 1, 2), None)
    positions = first + second
    assert positions == sorted(positions)
    assert len(set(positions)) == 5


async def test_duplicate_sequence_raises_conflict(repository: PersistedEventRepository):
    await repository.persist(batch("a1", 1, 2), None)
    with pytest.raises(AggregateConflict):
        await repository.persist([event("a1", 2)], None)


async def test_conflicting_batch_writes_nothing(repository: PersistedEventRepository):
    await repository.persist(batch("a1", 1, 2), None)
    snapshot = SerializedSnapshot(TYPE, "a1", b'{"state": 1}', 4, 1)
    with pytest.raises(AggregateConflict):
        # sequences 2, 3, 4: the first collides, so 3 and 4 and the snapshot must not appear
        await repository.persist(batch("a1", 2, 3), snapshot)
    assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1, 2]
    assert await repository.get_snapshot(TYPE, "a1") is None
    assert len(await collect(repository.stream_all_events(None))) == 2


async def test_concurrent_writers_on_one_aggregate_get_one_winner_per_sequence(
    repository: PersistedEventRepository,
):
    writers, rounds = 32, 3
    wins: list[tuple[int, int]] = []

    async def writer(number: int) -> None:
        for round_ in range(rounds):
            while True:
                current = len(await repository.get_events(TYPE, "hot"))
                try:
                    await repository.persist(
                        [event("hot", current + 1, payload={"w": number, "r": round_})], None
                    )
                except AggregateConflict:
                    await asyncio.sleep(random.random() / 200)
                    continue
                wins.append((number, round_))
                break

    await asyncio.gather(*(writer(n) for n in range(writers)))
    stored = await repository.get_events(TYPE, "hot")
    assert [e.sequence for e in stored] == list(range(1, writers * rounds + 1))
    stored_pairs = [(p["w"], p["r"]) for p in payloads(stored)]  # type: ignore[index]
    assert sorted(stored_pairs) == sorted(wins)
    assert len(set(stored_pairs)) == writers * rounds


async def test_stream_all_events_is_in_strictly_increasing_position_order(
    repository: PersistedEventRepository,
):
    for i in range(5):
        await repository.persist(batch(f"a{i}", 1, 3), None)
        await repository.persist(batch(f"a{i}", 4, 1), None)
    streamed = await collect(repository.stream_all_events(None))
    positions = [e.position for e in streamed]
    assert len(streamed) == 20
    assert all(a < b for a, b in itertools.pairwise(positions))
    for i in range(5):
        assert [e.sequence for e in streamed if e.aggregate_id == f"a{i}"] == [1, 2, 3, 4]


async def test_stream_all_events_after_position_resumes_exactly(
    repository: PersistedEventRepository,
):
    await repository.persist(batch("a1", 1, 4), None)
    await repository.persist(batch("a2", 1, 4), None)
    everything = await collect(repository.stream_all_events(None))
    checkpoint = everything[2].position
    rest = await collect(repository.stream_all_events(None, after_position=checkpoint))
    assert [str(e.event_id) for e in rest] == [str(e.event_id) for e in everything[3:]]
    last = everything[-1].position
    assert await collect(repository.stream_all_events(None, after_position=last)) == []


async def test_stream_all_events_filters_by_aggregate_type(repository: PersistedEventRepository):
    await repository.persist(batch("x", 1, 2, aggregate_type="A"), None)
    await repository.persist(batch("x", 1, 3, aggregate_type="B"), None)
    await repository.persist(batch("y", 1, 1, aggregate_type="A"), None)
    only_a = await collect(repository.stream_all_events("A"))
    assert [(e.aggregate_id, e.sequence) for e in only_a] == [("x", 1), ("x", 2), ("y", 1)]
    assert len(await collect(repository.stream_all_events(None))) == 6


async def test_stream_events_reads_a_large_aggregate_in_order(
    repository: PersistedEventRepository,
):
    total = 1200  # more than one page on every backend
    for first in range(1, total + 1, 200):
        await repository.persist(batch("big", first, 200), None)
    streamed = await collect(repository.stream_events(TYPE, "big"))
    assert [e.sequence for e in streamed] == list(range(1, total + 1))
    everything = await collect(repository.stream_all_events(TYPE, after_position=None))
    assert len(everything) == total


async def test_tailing_reader_never_skips_or_repeats_during_concurrent_commits(
    repository: PersistedEventRepository,
):
    writers, commits = 8, 12
    committed: set[str] = set()
    done = asyncio.Event()

    async def writer(number: int) -> None:
        sequence = 0
        for _ in range(commits):
            size = random.randint(1, 5)
            rows = batch(f"w{number}", sequence + 1, size)
            await repository.persist(rows, None)
            committed.update(str(e.event_id) for e in rows)
            sequence += size
            await asyncio.sleep(0)

    seen: list[str] = []
    positions: list[int] = []

    async def read_once(checkpoint: int | None) -> int | None:
        async for e in repository.stream_all_events(None, after_position=checkpoint):
            assert checkpoint is None or e.position > checkpoint
            seen.append(str(e.event_id))
            positions.append(e.position)
            checkpoint = e.position
        return checkpoint

    async def reader() -> None:
        checkpoint = None
        while not done.is_set():
            checkpoint = await read_once(checkpoint)
            await asyncio.sleep(0.001)
        # Writers are done: keep reading until every committed event arrived (a backend may
        # hold recent events back until older transactions end).
        deadline = asyncio.get_running_loop().time() + 30
        while len(seen) < len(committed) and asyncio.get_running_loop().time() < deadline:
            checkpoint = await read_once(checkpoint)
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    await reading
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == committed, f"{len(committed - set(seen))} event(s) skipped"
    assert positions == sorted(positions)


async def test_snapshot_round_trip_and_only_newer_replaces(repository: PersistedEventRepository):
    await repository.persist(batch("a1", 1, 3), SerializedSnapshot(TYPE, "a1", b'{"v": 3}', 3, 1))
    snapshot = await repository.get_snapshot(TYPE, "a1")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (3, 1)
    assert default_codec.decode_untyped(snapshot.payload) == {"v": 3}
    await repository.persist(batch("a1", 4, 2), SerializedSnapshot(TYPE, "a1", b'{"v": 5}', 5, 2))
    snapshot = await repository.get_snapshot(TYPE, "a1")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (5, 2)
    # An older snapshot never replaces a newer one.
    await repository.persist(batch("a1", 6, 1), SerializedSnapshot(TYPE, "a1", b'{"v": 0}', 2, 3))
    snapshot = await repository.get_snapshot(TYPE, "a1")
    assert snapshot is not None
    assert default_codec.decode_untyped(snapshot.payload) == {"v": 5}


async def test_create_schema_is_idempotent(repository: PersistedEventRepository):
    await repository.persist(batch("a1", 1, 2), None)
    await repository.create_schema()
    await repository.create_schema()
    assert len(await repository.get_events(TYPE, "a1")) == 2


async def test_create_schema_is_safe_when_run_concurrently(backend):
    repositories = [backend.new_repository("shared_events", "shared_snaps") for _ in range(4)]
    for repository in repositories:
        await repository.open()
    await asyncio.gather(*(r.create_schema() for r in repositories))
    await asyncio.gather(*(r.create_schema() for r in repositories))
    await repositories[0].persist(batch("a1", 1, 1), None)
    if backend.has("persistent"):  # the repositories share one database
        assert len(await repositories[-1].get_events(TYPE, "a1")) == 1


async def test_configured_table_names_keep_data_apart(backend):
    first = await backend.open_repository("one_events", "one_snaps")
    second = await backend.open_repository("two_events", "two_snaps")
    await first.persist(batch("a1", 1, 2), SerializedSnapshot(TYPE, "a1", b"{}", 2, 1))
    assert await second.get_events(TYPE, "a1") == []
    assert await second.get_snapshot(TYPE, "a1") is None
    await second.persist(batch("a1", 1, 1), None)  # no conflict across tables
    assert len(await first.get_events(TYPE, "a1")) == 2


@pytest.mark.parametrize(
    "bad_name",
    ["events; DROP TABLE events", 'ev"ents', "1events", "", "ev-ents", "x" * 64, "évents"],
)
async def test_invalid_table_names_are_rejected(backend, bad_name: str):
    with pytest.raises(ConfigurationError, match="invalid"):
        backend.factory.repository(backend.workdir, bad_name, backend.name("snaps"))
    with pytest.raises(ConfigurationError, match="invalid"):
        backend.factory.repository(backend.workdir, backend.name("events"), bad_name)


@pytest.mark.parametrize(
    "aggregate_id",
    [
        "it's",
        'say "hi"',
        "back\\slash",
        "robert'); DROP TABLE events;--",
        "ünïcödé ✓ 𝄞 日本",
        "x" * 1024,
        " leading and trailing ",
        "$where",
        "a.b.c",
    ],
)
async def test_unusual_aggregate_ids_round_trip(
    repository: PersistedEventRepository, aggregate_id: str
):
    await repository.persist(batch(aggregate_id, 1, 2, metadata={aggregate_id: aggregate_id}), None)
    await repository.persist(batch("plain", 1, 1), None)
    loaded = await repository.get_events(TYPE, aggregate_id)
    assert [e.aggregate_id for e in loaded] == [aggregate_id, aggregate_id]
    assert default_codec.decode_metadata(loaded[0].metadata) == {aggregate_id: aggregate_id}
    streamed = await collect(repository.stream_events(TYPE, aggregate_id))
    assert len(streamed) == 2
    with pytest.raises(AggregateConflict):
        await repository.persist([event(aggregate_id, 2)], None)


async def test_data_survives_reopening(backend):
    backend.requires("persistent")
    first = await backend.open_repository()
    await first.persist(batch("a1", 1, 3), SerializedSnapshot(TYPE, "a1", b'{"v": 1}', 3, 1))
    await first.close()
    second = await backend.open_repository()
    assert [e.sequence for e in await second.get_events(TYPE, "a1")] == [1, 2, 3]
    assert (await second.get_snapshot(TYPE, "a1")) is not None


async def test_open_and_close_are_idempotent(backend):
    repository = backend.new_repository()
    await repository.open()
    await repository.open()  # keeps the first open's connections working
    await repository.create_schema()
    await repository.persist(batch("a1", 1, 1), None)
    assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1]
    await repository.close()
    await repository.close()
    with pytest.raises(NotOpenError):
        await repository.get_events(TYPE, "a1")
    async with repository:
        await repository.open()
        assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1]
        await repository.persist(batch("a1", 2, 1), None)
        assert [e.sequence for e in await repository.get_events(TYPE, "a1")] == [1, 2]
    await repository.close()
    with pytest.raises(NotOpenError):
        await repository.persist(batch("a1", 3, 1), None)
