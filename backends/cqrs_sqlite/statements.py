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
# The columns of an EventRow (cqrs.repository): an empty metadata object is read as NULL, so
# no string is built for it.
_ROW_COLUMNS = (
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, "
    "NULLIF(metadata, '{}'), timestamp, event_id, position"
)


@dataclass(frozen=True, slots=True)
class SqliteStatements:
    """The statements of one :class:`~cqrs_sqlite.SqliteEventRepository` (its
    ``statements`` attribute), for tools that must run exactly what it runs.

    - ``insert``: one event row (the nine values of ``rows.event_rows``), for executemany;
    - ``last_sequence``: ``max(sequence)`` of an aggregate (type, id);
    - ``events``: an aggregate's events after a sequence (type, id, after);
    - ``events_page``: the same, one page (type, id, after, limit);
    - ``all_page``: every type's events after a position (after, limit);
    - ``type_page``: one type's events after a position (after, type, limit);
    - ``all_rows``, ``type_rows``: the same as ``all_page`` and ``type_page``, as
      :data:`~cqrs.repository.EventRow` tuples (``read_event_rows``);
    - ``snapshot``: payload, last_sequence, current_snapshot (type, id);
    - ``upsert``: store a snapshot unless the stored one's last_sequence is not smaller;
    - ``create_record``, ``applied``, ``record``: create ``<events>_schema``, read the
      names of the applied DDL files, record one (name).
    """

    insert: str
    last_sequence: str
    events: str
    events_page: str
    all_page: str
    type_page: str
    all_rows: str
    type_rows: str
    snapshot: str
    upsert: str
    create_record: str
    applied: str
    record: str

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
            all_rows=(
                f"SELECT {_ROW_COLUMNS} FROM {events} WHERE position > ? ORDER BY position LIMIT ?"
            ),
            type_rows=(
                f"SELECT {_ROW_COLUMNS} FROM {events} "
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
    ``statements`` attribute).

    - ``load``: a view's payload and version (view_id);
    - ``insert``: store a view not stored yet, else change nothing (view_id, version,
      payload);
    - ``update``: store a view still at a version (version, payload, view_id, old version).
    """

    load: str
    insert: str
    update: str

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
