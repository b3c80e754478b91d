"""Loading from a snapshot in one round trip: ``snapshot_and_events`` (a backend's own
``get_snapshot_and_events``, or the kit's composed default) returns the snapshot and exactly
the events after it, also while commits race the read."""

from __future__ import annotations

import asyncio

from cqrs import PersistedEventRepository, SerializedEvent, SerializedSnapshot, default_codec
from cqrs.repository import snapshot_and_events
from cqrs_conformance.support import TYPE, batch


class _Composed:
    """The repository's port methods alone, so the kit's composed default runs."""

    def __init__(self, repository: PersistedEventRepository) -> None:
        self.get_snapshot = repository.get_snapshot
        self.get_events = repository.get_events
        self.get_last_events = repository.get_last_events


def _snapshot(aggregate_id: str, last_sequence: int, version: int) -> SerializedSnapshot:
    payload = default_codec.encode({"at": last_sequence})
    return SerializedSnapshot(TYPE, aggregate_id, payload, last_sequence, version)


def _key(loaded: tuple[SerializedSnapshot | None, list[SerializedEvent]]) -> object:
    snapshot, events = loaded
    head = None
    if snapshot is not None:
        head = (
            snapshot.last_sequence,
            snapshot.snapshot_version,
            default_codec.decode_untyped(snapshot.payload),
        )
    return head, [(e.sequence, str(e.event_id), e.position) for e in events]


async def _both(
    repository: PersistedEventRepository, aggregate_id: str
) -> tuple[SerializedSnapshot | None, list[SerializedEvent]]:
    """What the backend returns, checked equal to what the composed default returns."""
    loaded = await snapshot_and_events(repository, TYPE, aggregate_id)
    composed = await snapshot_and_events(_Composed(repository), TYPE, aggregate_id)  # type: ignore[arg-type]
    assert _key(loaded) == _key(composed)
    return loaded


async def test_snapshot_and_events_of_unknown_aggregate(repository: PersistedEventRepository):
    assert await _both(repository, "nobody") == (None, [])


async def test_snapshot_and_events_without_snapshot_returns_every_event(
    repository: PersistedEventRepository,
):
    await repository.persist(batch("a1", 1, 3), None)
    await repository.persist(batch("other", 1, 2), _snapshot("other", 2, 1))
    snapshot, events = await _both(repository, "a1")
    assert snapshot is None
    assert [e.sequence for e in events] == [1, 2, 3]
    assert all((e.aggregate_type, e.aggregate_id) == (TYPE, "a1") for e in events)


async def test_snapshot_and_events_returns_the_events_after_the_snapshot(
    repository: PersistedEventRepository,
):
    stored = batch("a1", 1, 4)
    await repository.persist(stored, _snapshot("a1", 4, 1))
    later = batch("a1", 5, 3)
    positions = await repository.persist(later, None)
    snapshot, events = await _both(repository, "a1")
    assert snapshot is not None
    assert (snapshot.aggregate_type, snapshot.aggregate_id) == (TYPE, "a1")
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (4, 1)
    assert default_codec.decode_untyped(snapshot.payload) == {"at": 4}
    assert [e.sequence for e in events] == [5, 6, 7]
    assert [str(e.event_id) for e in events] == [str(e.event_id) for e in later]
    assert [e.position for e in events] == positions
    assert [default_codec.decode_untyped(e.payload) for e in events] == [
        {"n": 5},
        {"n": 6},
        {"n": 7},
    ]


async def test_snapshot_and_events_with_snapshot_at_the_last_event(
    repository: PersistedEventRepository,
):
    await repository.persist(batch("a1", 1, 2), _snapshot("a1", 2, 1))
    await repository.persist(batch("a1", 3, 3), _snapshot("a1", 5, 2))
    snapshot, events = await _both(repository, "a1")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (5, 2)
    assert events == []


async def test_snapshot_and_events_while_commits_race_the_read(
    repository: PersistedEventRepository,
):
    """A writer commits batches of 3, with a snapshot every other batch, while a reader
    loads: every load is a snapshot plus the events right after it with no gap, and never
    goes back in time."""
    batches = 30
    done = asyncio.Event()
    loads: list[tuple[int, int]] = []  # (snapshot's last_sequence, last sequence loaded)

    async def writer() -> None:
        try:
            for index in range(batches):
                first = 3 * index + 1
                snapshot = _snapshot("hot", first + 2, index // 2 + 1) if index % 2 else None
                await repository.persist(batch("hot", first, 3), snapshot)
                await asyncio.sleep(0)
        finally:
            done.set()

    async def reader() -> None:
        while not done.is_set():
            snapshot, events = await snapshot_and_events(repository, TYPE, "hot")
            after = 0 if snapshot is None else snapshot.last_sequence
            if snapshot is not None:
                assert default_codec.decode_untyped(snapshot.payload) == {"at": after}
            sequences = [e.sequence for e in events]
            assert sequences == list(range(after + 1, after + 1 + len(sequences)))
            loads.append((after, sequences[-1] if sequences else after))
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader())
    assert loads, "the reader never ran"
    lasts = [last for _, last in loads]
    assert lasts == sorted(lasts), "a later load saw fewer events"
    assert all(last % 3 == 0 for last in lasts), "a load saw part of a commit"
    snapshot, events = await _both(repository, "hot")
    assert snapshot is not None
    assert snapshot.last_sequence == 3 * batches
    assert events == []
