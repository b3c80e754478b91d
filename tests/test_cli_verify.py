"""``cqrs verify`` finds each kind of damage planted with raw SQL in a SQLite store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from test_cli import cli, dump, invoke, seed

import cqrs
from cqrs import SerializedEvent
from cqrs.cli.checks import PROBLEM_KINDS, verify_store


def _store(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    seed(url, 400, aggregates=12)
    return url, path


def _aggregates(url: str) -> list[tuple[str, str]]:
    """Aggregates with at least four events and a snapshot, by id."""
    rows, snapshots = dump(url)
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[(row[0], row[1])] = counts.get((row[0], row[1]), 0) + 1
    return sorted(key for key, count in counts.items() if count >= 4 and key in snapshots)


def _found(stdout: str) -> set[tuple[str, str, str, int]]:
    data = json.loads(stdout)
    return {
        (p["kind"], p["aggregate_type"], p["aggregate_id"], p["sequence"]) for p in data["problems"]
    }


def test_a_sound_store_passes(tmp_path):
    url, _ = _store(tmp_path)
    result = invoke("verify", "--database-url", url)
    assert result.exit_code == 0
    assert "400 events, 12 aggregates" in result.stdout
    assert "no damage found" in result.stdout
    data = json.loads(invoke("verify", "--json", "--database-url", url).stdout)
    assert data["ok"] is True
    assert data["problems"] == []
    assert data["snapshots"] == len(dump(url)[1]) > 0


def test_each_kind_of_damage_is_found_where_it_is(tmp_path):
    url, path = _store(tmp_path)
    (
        (gap_type, gap_id),
        (swap_type, swap_id),
        (pay_type, pay_id),
        (meta_type, meta_id),
        (
            snap_type,
            snap_id,
        ),
        (bad_snap_type, bad_snap_id),
    ) = _aggregates(url)[:6]
    with sqlite3.connect(path) as db:
        db.execute(
            "DELETE FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND sequence = 2",
            (gap_type, gap_id),
        )
        first, third = (
            db.execute(
                "SELECT position FROM events WHERE aggregate_type = ? AND aggregate_id = ? "
                "AND sequence = ?",
                (swap_type, swap_id, sequence),
            ).fetchone()[0]
            for sequence in (1, 3)
        )
        for old, new in ((first, -1), (third, first), (-1, third)):
            db.execute("UPDATE events SET position = ? WHERE position = ?", (new, old))
        db.execute(
            "UPDATE events SET payload = '{\"amount\": ' WHERE aggregate_type = ? "
            "AND aggregate_id = ? AND sequence = 2",
            (pay_type, pay_id),
        )
        db.execute(
            "UPDATE events SET metadata = 'not json' WHERE aggregate_type = ? "
            "AND aggregate_id = ? AND sequence = 1",
            (meta_type, meta_id),
        )
        db.execute(
            "UPDATE events SET metadata = '[1, 2]' WHERE aggregate_type = ? "
            "AND aggregate_id = ? AND sequence = 3",
            (meta_type, meta_id),
        )
        db.execute(
            "UPDATE snapshots SET last_sequence = 999 "
            "WHERE aggregate_type = ? AND aggregate_id = ?",
            (snap_type, snap_id),
        )
        db.execute(
            "UPDATE snapshots SET payload = 'garbage' "
            "WHERE aggregate_type = ? AND aggregate_id = ?",
            (bad_snap_type, bad_snap_id),
        )
    result = invoke("verify", "--json", "--database-url", url)
    assert result.exit_code == 1
    assert _found(result.stdout) == {
        ("gap", gap_type, gap_id, 3),
        ("gap", swap_type, swap_id, 3),  # sequence 3 is now first in the stream
        ("sequence order", swap_type, swap_id, 2),
        ("sequence order", swap_type, swap_id, 1),
        ("payload", pay_type, pay_id, 2),
        ("metadata", meta_type, meta_id, 1),
        ("metadata", meta_type, meta_id, 3),
        ("snapshot ahead", snap_type, snap_id, 999),
        (
            "snapshot payload",
            bad_snap_type,
            bad_snap_id,
            bad_snap_last(url, bad_snap_type, bad_snap_id),
        ),
    }
    counts = json.loads(result.stdout)["counts"]
    assert counts == {
        "gap": 2,
        "sequence order": 2,
        "payload": 1,
        "metadata": 2,
        "snapshot ahead": 1,
        "snapshot payload": 1,
    }
    text = cli("verify", "--database-url", url)  # once as a process, as text
    assert text.returncode == 1
    assert f"[gap] {gap_type} {gap_id!r} sequence 3" in text.stdout
    assert "sequence(s) 2 missing" in text.stdout
    assert f"gap: 2 ({PROBLEM_KINDS['gap']})" in text.stdout
    assert "[snapshot ahead]" in text.stdout
    assert "snapshot at sequence 999" in text.stdout
    # Only one type: the others' damage is not looked at.
    only = invoke("verify", "--json", "--type", pay_type, "--database-url", url)
    assert all(found[1] == pay_type for found in _found(only.stdout))
    assert ("payload", pay_type, pay_id, 2) in _found(only.stdout)


def bad_snap_last(url: str, aggregate_type: str, aggregate_id: str) -> int:
    return dump(url)[1][(aggregate_type, aggregate_id)][1]


class _Misordered:
    """A repository whose global stream hands two events over in the wrong order (a broken
    backend): the positions go down once."""

    def __init__(self, repository: cqrs.PersistedEventRepository) -> None:
        self._repository = repository

    def __getattr__(self, name: str) -> object:
        return getattr(self._repository, name)

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        events = [
            e async for e in self._repository.stream_all_events(aggregate_type, after_position)
        ]
        events[10], events[11] = events[11], events[10]
        for event in events:
            yield event


async def test_positions_that_do_not_grow_are_found(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with cqrs.connect(url) as repository:
        for number in range(20):  # one event each: only the positions are out of order
            event = SerializedEvent(
                "Account", f"a{number}", 1, "Opened", "1.0", "{}", "{}", datetime.now(UTC), uuid4()
            )
            await repository.persist([event], None)
        report = await verify_store(_Misordered(repository))  # type: ignore[arg-type]
    assert dict(report.counts) == {"position order": 1}
    [problem] = report.problems
    assert problem.position == 11
    assert problem.detail == "position 11 follows 12"
