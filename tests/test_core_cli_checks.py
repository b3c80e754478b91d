"""``cqrs.cli.checks``: what ``verify_store`` reports for each kind of damage (kind, place and
text), its progress reports, and the counts of ``collect_stats``.

A store's global stream is handed over as given by :class:`_Stream` (a broken backend can
hand over anything); snapshots come from a real in-memory repository.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import cqrs
from cqrs import SerializedEvent, SerializedSnapshot
from cqrs.cli.checks import (
    PROBLEM_KINDS,
    Problem,
    StatsReport,
    TypeStats,
    VerifyReport,
    collect_stats,
    verify_store,
)

WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def event(
    aggregate_id: str,
    sequence: int,
    position: int,
    *,
    aggregate_type: str = "Account",
    payload: bytes | str = '{"amount": 1}',
    metadata: bytes | str = "{}",
) -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        "Deposited",
        "1.0",
        payload,
        metadata,
        WHEN,
        uuid.uuid4(),
        position,
    )


def snapshot(aggregate_id: str, last: int, payload: str = '{"balance": 1}') -> SerializedSnapshot:
    return SerializedSnapshot("Account", aggregate_id, payload, last, 1)


class _Stream:
    """A memory repository whose global stream is ``events``, as given (filtered by type)."""

    def __init__(self, repository: cqrs.PersistedEventRepository, events: list[SerializedEvent]):
        self._repository = repository
        self.events = events

    def __getattr__(self, name: str) -> object:
        return getattr(self._repository, name)

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        for item in self.events:
            if (aggregate_type is None or item.aggregate_type == aggregate_type) and (
                after_position is None or item.position > after_position
            ):
                yield item


async def _verify(
    events: list[SerializedEvent],
    snapshots: Sequence[SerializedSnapshot] = (),
    aggregate_type: str | None = None,
) -> VerifyReport:
    async with cqrs.connect("memory://") as repository:
        for snap in snapshots:
            # A snapshot is stored with the first event of its aggregate (the memory
            # backend keeps it as given).
            first = event(snap.aggregate_id, 1, 0, aggregate_type=snap.aggregate_type)
            await repository.persist([first], snap)
        return await verify_store(_Stream(repository, events), aggregate_type)  # type: ignore[arg-type]


def _found(report: VerifyReport) -> list[tuple[str, str, str, int, int, str]]:
    return [
        (p.kind, p.aggregate_type, p.aggregate_id, p.sequence, p.position, p.detail)
        for p in report.problems
    ]


async def test_a_sound_stream_has_no_problems_and_counts_what_it_read():
    events = [event("a", 1, 1), event("b", 1, 2), event("a", 2, 3), event("b", 2, 5)]
    report = await _verify(events)
    assert report.ok
    assert report.problems == []
    assert (report.events, report.aggregates, report.snapshots) == (4, 2, 0)
    assert report.as_dict() == {
        "ok": True,
        "events": 4,
        "aggregates": 2,
        "snapshots": 0,
        "counts": {},
        "problems": [],
    }


async def test_gaps_name_the_missing_sequences():
    events = [
        event("a", 2, 1),  # 1 missing
        event("b", 1, 2),
        event("b", 4, 3),  # 2..3 missing
        event("c", 1, 4),
        event("c", 2, 5),
        event("c", 7, 6),  # 3..6 missing
        event("d", 1, 7),
        event("d", 3, 8),  # 2 missing
    ]
    report = await _verify(events)
    assert _found(report) == [
        ("gap", "Account", "a", 2, 1, "sequence(s) 1 missing"),
        ("gap", "Account", "b", 4, 3, "sequence(s) 2..3 missing"),
        ("gap", "Account", "c", 7, 6, "sequence(s) 3..6 missing"),
        ("gap", "Account", "d", 3, 8, "sequence(s) 2 missing"),
    ]
    assert report.counts == {"gap": 4}
    assert not report.ok
    assert report.aggregates == 4


async def test_a_repeated_or_earlier_sequence_is_out_of_order():
    events = [
        event("a", 1, 1),
        event("a", 2, 2),
        event("a", 2, 3),  # a repeat
        event("a", 1, 4),  # earlier
        event("a", 3, 5),  # follows the highest seen: fine
    ]
    report = await _verify(events)
    assert _found(report) == [
        ("sequence order", "Account", "a", 2, 3, "sequence 2 comes after sequence 2 in the stream"),
        ("sequence order", "Account", "a", 1, 4, "sequence 1 comes after sequence 2 in the stream"),
    ]
    assert report.counts == {"sequence order": 2}


async def test_positions_must_grow_strictly():
    events = [event("a", 1, 5), event("b", 1, 5), event("c", 1, 3), event("d", 1, 9)]
    report = await _verify(events)
    assert _found(report) == [
        ("position order", "Account", "b", 1, 5, "position 5 follows 5"),
        ("position order", "Account", "c", 1, 3, "position 3 follows 5"),
    ]


async def test_payloads_must_be_json_and_metadata_json_objects():
    events = [
        event("a", 1, 1, payload='{"amount": '),
        event("a", 2, 2, payload=b"\xff\xfe"),
        event("b", 1, 3, metadata="not json"),
        event("b", 2, 4, metadata="[1, 2]"),
        event("b", 3, 5, metadata='"text"'),
        event("c", 1, 6, payload=b'{"fine": true}', metadata=b'{"user": "ann"}'),
    ]
    report = await _verify(events)
    found = _found(report)
    assert [item[:5] for item in found] == [
        ("payload", "Account", "a", 1, 1),
        ("payload", "Account", "a", 2, 2),
        ("metadata", "Account", "b", 1, 3),
        ("metadata", "Account", "b", 2, 4),
        ("metadata", "Account", "b", 3, 5),
    ]
    assert all(item[5].startswith("not JSON: ") for item in found[:3])
    assert len(found[0][5]) > len("not JSON: ")  # the decoder's reason follows
    assert [item[5] for item in found[3:]] == ["a JSON list", "a JSON str"]
    assert report.counts == {"payload": 2, "metadata": 3}
    assert report.as_dict()["counts"] == {"payload": 2, "metadata": 3}


async def test_snapshots_ahead_of_their_events_or_not_json_are_found():
    events = [
        event("none", 1, 1),  # no snapshot: skipped, and the ones after it are still read
        event("ahead", 1, 2),
        event("ahead", 2, 3),
        event("level", 1, 4),
        event("level", 2, 5),
        event("bad", 1, 6),
        event("bad", 2, 7),
    ]
    snapshots = [snapshot("ahead", 3), snapshot("level", 2), snapshot("bad", 1, "garbage")]
    report = await _verify(events, snapshots)
    assert report.snapshots == 3
    assert report.aggregates == 4
    found = _found(report)
    assert found[0] == (
        "snapshot ahead",
        "Account",
        "ahead",
        3,
        0,
        "snapshot at sequence 3, last event 2",
    )
    assert found[1][:5] == ("snapshot payload", "Account", "bad", 1, 0)
    assert found[1][5].startswith("not JSON: ")
    assert len(found) == 2
    assert report.counts == {"snapshot ahead": 1, "snapshot payload": 1}


async def test_only_the_type_asked_for_is_read():
    events = [
        event("a", 1, 1),
        event("o", 2, 2, aggregate_type="Order"),  # a gap, of another type
        event("a", 2, 3),
    ]
    report = await _verify(events, aggregate_type="Account")
    assert report.ok
    assert (report.events, report.aggregates) == (2, 1)
    everything = await _verify(events)
    assert everything.counts == {"gap": 1}


async def test_progress_is_reported_per_thousand_events_and_the_rest_at_the_end():
    events = [event(f"a{n}", 1, n + 1) for n in range(2500)]
    async with cqrs.connect("memory://") as repository:
        stream = _Stream(repository, events)
        calls: list[int] = []
        report = await verify_store(stream, None, calls.append)  # type: ignore[arg-type]
        assert calls == [1000, 1000, 500]
        assert report.events == 2500
        assert report.ok
        exact: list[int] = []
        stream.events = events[:2000]
        await verify_store(stream, None, exact.append)  # type: ignore[arg-type]
        assert exact == [1000, 1000]
        quiet = await verify_store(stream, None, None)  # type: ignore[arg-type]
        assert quiet.events == 2000
        stream.events = events[:1500]
        assert (await verify_store(stream)).events == 1500  # type: ignore[arg-type]


async def test_the_report_lists_a_thousand_problems_and_counts_them_all():
    events = [event(f"a{n}", 1, n + 1, payload="x") for n in range(1001)]
    report = await _verify(events)
    assert report.counts == {"payload": 1001}
    assert len(report.problems) == 1000
    assert report.problems[-1].aggregate_id == "a999"
    assert report.as_dict()["counts"] == {"payload": 1001}


def test_report_and_problem_as_plain_data():
    report = VerifyReport(events=3, aggregates=2, snapshots=1)
    report.add(Problem("metadata", "Account", "a", 2, 7, "a JSON list"))
    report.add(Problem("gap", "Order", "o", 3, 9, "sequence(s) 2 missing"))
    data = report.as_dict()
    assert data == {
        "ok": False,
        "events": 3,
        "aggregates": 2,
        "snapshots": 1,
        "counts": {"gap": 1, "metadata": 1},
        "problems": [
            {
                "kind": "metadata",
                "aggregate_type": "Account",
                "aggregate_id": "a",
                "sequence": 2,
                "position": 7,
                "detail": "a JSON list",
            },
            {
                "kind": "gap",
                "aggregate_type": "Order",
                "aggregate_id": "o",
                "sequence": 3,
                "position": 9,
                "detail": "sequence(s) 2 missing",
            },
        ],
    }
    counts = data["counts"]
    assert isinstance(counts, dict)
    assert list(counts) == [kind for kind in PROBLEM_KINDS if kind in {"gap", "metadata"}]
    json.dumps(data)


# -- collect_stats ---------------------------------------------------------------------------


async def _persist(repository: cqrs.PersistedEventRepository, *events: SerializedEvent) -> None:
    await repository.persist(list(events), None)


async def test_stats_count_per_type_with_first_and_last_positions(tmp_path):
    async with cqrs.connect(f"sqlite:///{tmp_path / 's.db'}") as repository:
        await _persist(repository, event("a", 1, 0), event("a", 2, 0))  # positions 1, 2
        await _persist(repository, event("o", 1, 0, aggregate_type="Order"))  # 3
        await repository.persist([event("b", 1, 0)], snapshot("b", 1))  # 4, with a snapshot
        await _persist(repository, event("o", 2, 0, aggregate_type="Order"))  # 5
        await _persist(repository, event("p", 1, 0, aggregate_type="Order"))  # 6
        calls: list[int] = []
        report = await collect_stats(repository, calls.append)
        assert calls == [6]
        quiet = await collect_stats(repository)
    assert quiet.as_dict() == report.as_dict()
    assert report.types == {
        "Account": TypeStats(
            events=3, aggregates=2, snapshots=1, first_position=1, last_position=4
        ),
        "Order": TypeStats(events=3, aggregates=2, snapshots=0, first_position=3, last_position=6),
    }
    assert report.head == 6
    assert report.events == 6
    assert report.size is not None
    assert report.size > 0
    data = report.as_dict()
    assert data == {
        "events": 6,
        "aggregates": 4,
        "snapshots": 1,
        "head_position": 6,
        "size_bytes": report.size,
        "types": {
            "Account": {
                "events": 3,
                "aggregates": 2,
                "snapshots": 1,
                "first_position": 1,
                "last_position": 4,
            },
            "Order": {
                "events": 3,
                "aggregates": 2,
                "snapshots": 0,
                "first_position": 3,
                "last_position": 6,
            },
        },
    }


async def test_stats_progress_per_thousand_and_no_size_without_the_capability():
    async with cqrs.connect("memory://") as repository:
        for n in range(1200):
            await _persist(repository, event(f"a{n}", 1, 0, aggregate_type=f"T{n % 3}"))
        calls: list[int] = []
        report = await collect_stats(repository, calls.append)
        assert calls == [1000, 200]
        assert report.size is None
        assert report.head == 1200
        assert {name: stats.events for name, stats in report.types.items()} == {
            "T0": 400,
            "T1": 400,
            "T2": 400,
        }
        assert report.types["T2"].first_position == 3
        assert report.types["T2"].last_position == 1200
        assert (await collect_stats(repository)).events == 1200
        exact: list[int] = []
        for n in range(1200, 2000):
            await _persist(repository, event(f"a{n}", 1, 0))
        await collect_stats(repository, exact.append)
        assert exact == [1000, 1000]


def test_an_empty_stats_report():
    assert StatsReport().as_dict() == {
        "events": 0,
        "aggregates": 0,
        "snapshots": 0,
        "head_position": 0,
        "size_bytes": None,
        "types": {},
    }
