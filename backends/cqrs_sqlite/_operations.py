"""What operator tools (the ``cqrs`` command line) ask of a SQLite store beyond the storage
port: the schema's state, counts, size on disk and a bulk import. They are optional methods
of :class:`~cqrs_sqlite.SqliteEventRepository`, found by name (see
:mod:`cqrs.cli.capabilities`); the port itself is unchanged."""

# ruff: noqa: S608 - the interpolated names are validated identifiers, never values

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cqrs.ddl import migrations
from cqrs.errors import AggregateConflict
from cqrs.repository import SerializedEvent, SerializedSnapshot, check_ids, validate_identifier
from cqrs_sqlite.rows import event_rows

if TYPE_CHECKING:
    from cqrs_sqlite.repository import SqliteEventRepository

__all__ = ["count_events", "import_events", "schema_status", "storage_size"]


async def schema_status(repository: SqliteEventRepository) -> tuple[list[str], list[str]]:
    """The DDL files recorded as applied to the repository's tables, and those pending."""
    files = [migration.name for migration in migrations("sqlite", {})]
    record = validate_identifier(repository.schema_table)

    def read(connection: sqlite3.Connection) -> list[str]:
        found = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (record,)
        ).fetchone()
        if found is None:
            return []
        return sorted(str(row[0]) for row in connection.execute(f"SELECT name FROM {record}"))

    applied = await repository.run(read, "reading the schema record")
    return applied, [name for name in files if name not in applied]


async def count_events(
    repository: SqliteEventRepository, aggregate_type: str | None, after_position: int | None
) -> int:
    """How many events are stored after ``after_position`` (of one type, or all)."""
    events = validate_identifier(repository.events_table)
    query = f"SELECT count(*) FROM {events} WHERE position > ?"
    params: tuple[object, ...] = (after_position or 0,)
    if aggregate_type is not None:
        query += " AND aggregate_type = ?"
        params += (aggregate_type,)

    def read(connection: sqlite3.Connection) -> int:
        return int(connection.execute(query, params).fetchone()[0])

    return await repository.run(read, "counting events")


async def storage_size(repository: SqliteEventRepository) -> int:
    """Bytes of the database file (every table in it), by its page count."""

    def read(connection: sqlite3.Connection) -> int:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)

    return await repository.run(read, "reading the size on disk")


async def import_events(
    repository: SqliteEventRepository,
    events: Sequence[SerializedEvent],
    snapshots: Sequence[SerializedSnapshot],
) -> int:
    """Store ``events`` and ``snapshots`` in one write transaction; return how many events
    were new. See :meth:`cqrs_sqlite.SqliteEventRepository.import_events`."""
    firsts = _check_runs(events)
    if len({(s.aggregate_type, s.aggregate_id) for s in snapshots}) != len(snapshots):
        msg = "import_events takes at most one snapshot per aggregate"
        raise ValueError(msg)
    statements = repository.statements
    events_table = validate_identifier(repository.events_table)
    rows = event_rows(events) if events else []
    ids = {(e.aggregate_type, e.aggregate_id, e.sequence): str(e.event_id) for e in events}
    snapshot_rows = [
        (s.aggregate_type, s.aggregate_id, s.last_sequence, s.snapshot_version, s.payload)
        for s in snapshots
    ]

    def write(connection: sqlite3.Connection) -> int:
        connection.execute("BEGIN IMMEDIATE")
        try:
            skip = _stored_already(connection, events_table, firsts, ids)
            new = [row for row in rows if (row[0], row[1], row[2]) not in skip]
            connection.executemany(statements.insert, new)
            connection.executemany(statements.upsert, snapshot_rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return len(new)

    written = await repository.run(write, f"importing {len(events)} events")
    if written:
        repository._commits.notify()  # noqa: SLF001 - the repository's own signal
    return written


def _stored_already(
    connection: sqlite3.Connection,
    events_table: str,
    firsts: dict[tuple[str, str], tuple[int, int]],
    ids: dict[tuple[str, str, int], str],
) -> set[tuple[str, str, int]]:
    """The batch's events stored already (same event ids); AggregateConflict for a gap or
    a sequence stored with another event id."""
    last_sequence = (
        f"SELECT max(sequence) FROM {events_table} WHERE aggregate_type = ? AND aggregate_id = ?"
    )
    stored_ids = (
        f"SELECT sequence, event_id FROM {events_table} "
        "WHERE aggregate_type = ? AND aggregate_id = ? AND sequence >= ? AND sequence <= ?"
    )
    skip: set[tuple[str, str, int]] = set()
    for key, (first, last) in firsts.items():
        stored = connection.execute(last_sequence, key).fetchone()[0] or 0
        if stored < first - 1:
            msg = (
                f"import into {events_table}: {key[0]} {key[1]!r} sequence {first} would "
                f"follow {stored}, leaving a gap; nothing was imported"
            )
            raise AggregateConflict(msg)
        if stored < first:
            continue
        for sequence, event_id in connection.execute(stored_ids, (*key, first, min(stored, last))):
            if str(event_id) != ids[(*key, sequence)]:
                msg = (
                    f"import into {events_table}: {key[0]} {key[1]!r} sequence {sequence} is "
                    "stored with another event id; nothing was imported"
                )
                raise AggregateConflict(msg)
            skip.add((*key, sequence))
    return skip


def _check_runs(events: Sequence[SerializedEvent]) -> dict[tuple[str, str], tuple[int, int]]:
    """Each aggregate's first and last sequence; ValueError unless its events are in
    consecutive sequence order."""
    runs: dict[tuple[str, str], tuple[int, int]] = {}
    for event in events:
        key = (event.aggregate_type, event.aggregate_id)
        run = runs.get(key)
        if run is None:
            check_ids(*key)
            if not isinstance(event.sequence, int) or event.sequence < 1:
                msg = f"sequences start at 1, not {event.sequence!r}"
                raise ValueError(msg)
            runs[key] = (event.sequence, event.sequence)
        elif event.sequence != run[1] + 1:
            msg = (
                f"import_events takes each aggregate's events in sequence order: "
                f"{key[0]} {key[1][:40]!r} sequence {event.sequence} follows {run[1]}"
            )
            raise ValueError(msg)
        else:
            runs[key] = (run[0], event.sequence)
    return runs
