"""The optional page reader ``read_event_rows`` (see ``PersistedEventRepository``): on a
backend that has it, every page is exactly the matching slice of ``stream_all_events``, as
EventRow tuples; a backend without it is read through ``stream_all_events`` by the runner."""

from __future__ import annotations

from typing import Any

import pytest

from cqrs import PersistedEventRepository, SerializedEvent, default_codec
from cqrs.repository import EventRow, row_event
from cqrs_conformance.support import TYPE, batch, collect, event


def _reader(repository: PersistedEventRepository) -> Any:
    reader = getattr(repository, "read_event_rows", None)
    if reader is None:
        pytest.skip("the backend has no read_event_rows (optional: the runner streams)")
    return reader


def _key(row: SerializedEvent) -> tuple[object, ...]:
    return (
        row.aggregate_type,
        row.aggregate_id,
        row.sequence,
        row.event_type,
        row.event_version,
        default_codec.decode_untyped(row.payload),
        default_codec.decode_metadata(row.metadata),
        row.timestamp,
        str(row.event_id).lower(),
        row.position,
    )


async def _pages(reader: Any, kind: str | None, after: int, limit: int) -> list[EventRow]:
    """Every row after ``after``, read ``limit`` at a time until a short page."""
    rows: list[EventRow] = []
    while True:
        page: list[EventRow] = await reader(kind, after, limit)
        assert len(page) <= limit
        rows.extend(page)
        if len(page) < limit:
            return rows
        after = page[-1][9]


async def _store_mixed(repository: PersistedEventRepository) -> None:
    await repository.persist(batch("a1", 1, 3), None)
    await repository.persist(
        [event("o1", 1, aggregate_type="Other", metadata={"user": "ann"}, event_version="2.1")],
        None,
    )
    await repository.persist(batch("a2", 1, 2, metadata={"trace": "x", "k": "é"}), None)
    await repository.persist(batch("a1", 4, 2, payload={"x": [1, {"y": "z"}]}), None)


@pytest.mark.parametrize("kind", [TYPE, "Other", None])
@pytest.mark.parametrize("limit", [1, 2, 3, 500])
async def test_read_event_rows_pages_are_the_stream(
    repository: PersistedEventRepository, kind: str | None, limit: int
):
    reader = _reader(repository)
    await _store_mixed(repository)
    streamed = await collect(repository.stream_all_events(kind, 0))
    for after in (0, streamed[len(streamed) // 2].position, streamed[-1].position):
        expected = [_key(row) for row in streamed if row.position > after]
        rows = await _pages(reader, kind, after, limit)
        assert all(isinstance(row, tuple) and len(row) == 10 for row in rows)
        assert [_key(row_event(row)) for row in rows] == expected


async def test_read_event_rows_of_an_empty_store_or_past_the_end(
    repository: PersistedEventRepository,
):
    reader = _reader(repository)
    assert await reader(TYPE, 0, 10) == []
    assert await reader(None, 0, 10) == []
    positions = await repository.persist(batch("a1", 1, 2), None)
    assert await reader(None, positions[-1], 10) == []
    assert await reader("Nobody", 0, 10) == []
    assert [row[9] for row in await reader(TYPE, 0, 1)] == positions[:1]
