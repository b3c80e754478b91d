"""The SQL of the SQLite repositories, built once per repository from validated table names;
every value is a bound ``?`` parameter. The schema itself is the files of ``sql/sqlite``."""

# ruff: noqa: S608 - the interpolated names are validated identifiers, never values

from __future__ import annotations

from dataclasses import dataclass

from cqrs.repository import validate_identifier

__all__ = ["SqliteStatements", "SqliteViewStatements"]

_EVENT_COLUMNS = (
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, "
    "timestamp, event_id"
)
_READ_COLUMNS = (
    "sequence, event_type, event_version, payload, metadata, timestamp, event_id, position"
)


@dataclass(frozen=True, slots=True)
class SqliteStatements:
    """The statements of one :class:`~cqrs_sqlite.SqliteEventRepository` (its
    ``statements`` attribute), for tools that must run exactly what it runs."""

    insert: str
    """One event row (the nine columns of ``event_rows``), for ``executemany``."""
    last_sequence: str
    """``max(sequence)`` of one aggregate (type, id)."""
    events: str
    """One aggregate's events after a sequence (type, id, after), by sequence."""
    events_page: str
    """The same, one page (type, id, after, limit)."""
    all_page: str
    """Every type's events after a position (after, limit), by position."""
    type_page: str
    """One type's events after a position (after, type, limit), by position."""
    snapshot: str
    """One aggregate's snapshot: payload, last_sequence, current_snapshot (type, id)."""
    upsert: str
    """Store a snapshot unless the stored one has a greater or equal last_sequence."""
    create_record: str
    """Create ``<events>_schema``, the table recording the applied DDL files."""
    applied: str
    """The names of the applied DDL files."""
    record: str
    """Record one applied DDL file (name)."""

    @classmethod
    def for_tables(cls, events_table: str, snapshots_table: str) -> SqliteStatements:
        """The statements for these tables (validated as identifiers)."""
        events = validate_identifier(events_table)
        snapshots = validate_identifier(snapshots_table)
        schema = f"{events}_schema"
        one_aggregate = (
            f"SELECT {_READ_COLUMNS} FROM {events} "
            "WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ? ORDER BY sequence"
        )
        return cls(
            insert=(
                f"INSERT INTO {events} ({_EVENT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)"
            ),
            last_sequence=(
                f"SELECT max(sequence) FROM {events} WHERE aggregate_type = ? AND aggregate_id = ?"
            ),
            events=one_aggregate,
            events_page=f"{one_aggregate} LIMIT ?",
            all_page=(
                f"SELECT aggregate_type, aggregate_id, {_READ_COLUMNS} FROM {events} "
                "WHERE position > ? ORDER BY position LIMIT ?"
            ),
            type_page=(
                f"SELECT aggregate_type, aggregate_id, {_READ_COLUMNS} FROM {events} "
                "WHERE position > ? AND aggregate_type = ? ORDER BY position LIMIT ?"
            ),
            snapshot=(
                f"SELECT payload, last_sequence, current_snapshot FROM {snapshots} "
                "WHERE aggregate_type = ? AND aggregate_id = ?"
            ),
            upsert=(
                f"INSERT INTO {snapshots} (aggregate_type, aggregate_id, last_sequence, "
                "current_snapshot, payload) VALUES (?, ?, ?, ?, CAST(? AS TEXT)) "
                "ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET "
                "last_sequence = excluded.last_sequence, "
                "current_snapshot = excluded.current_snapshot, payload = excluded.payload, "
                "timestamp = CURRENT_TIMESTAMP "
                f"WHERE excluded.last_sequence > {snapshots}.last_sequence"
            ),
            create_record=(
                f"CREATE TABLE IF NOT EXISTS {schema} ("
                "name TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT (CURRENT_TIMESTAMP))"
            ),
            applied=f"SELECT name FROM {schema}",
            record=f"INSERT INTO {schema} (name) VALUES (?)",
        )


@dataclass(frozen=True, slots=True)
class SqliteViewStatements:
    """The statements of one :class:`~cqrs_sqlite.SqliteViewRepository` (its
    ``statements`` attribute)."""

    load: str
    """A view's payload and version (view_id)."""
    insert: str
    """Store a view that is not stored yet (view_id, version, payload); changes no row if
    one is."""
    update: str
    """Store a view if it is still at a version (version, payload, view_id, old version)."""

    @classmethod
    def for_table(cls, table: str) -> SqliteViewStatements:
        """The statements for this table (validated as an identifier)."""
        name = validate_identifier(table)
        return cls(
            load=f"SELECT payload, version FROM {name} WHERE view_id = ?",
            insert=(
                f"INSERT INTO {name} (view_id, version, payload) "
                "VALUES (?, ?, CAST(? AS TEXT)) ON CONFLICT (view_id) DO NOTHING"
            ),
            update=(
                f"UPDATE {name} SET version = ?, payload = CAST(? AS TEXT) "
                "WHERE view_id = ? AND version = ?"
            ),
        )
