"""What operator tools (the ``cqrs`` command line) ask of a PostgreSQL store beyond the
storage port: the schema's state, counts, size on disk and a bulk import. They are optional
methods of :class:`~cqrs_postgres.PostgresEventRepository`, found by name (see
:mod:`cqrs.cli.capabilities`); the port itself is unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, tuple_row

from cqrs.ddl import migrations
from cqrs.errors import AggregateConflict
from cqrs.repository import SerializedEvent, SerializedSnapshot, check_ids, validate_identifier
from cqrs_postgres.schema import schema_version_table

if TYPE_CHECKING:
    from cqrs_postgres.repository import PostgresEventRepository

__all__ = ["count_events", "import_events", "schema_status", "storage_size"]

# Events of many aggregates in one statement, in the given order (positions from the
# transaction id and the row's index, as in a commit). Rows stored already are skipped by the
# primary key; the final SELECT sees the table as it was before the insert, so it counts the
# batch's rows stored before with the same event id, with another event id, and the
# aggregates whose first row does not follow a stored sequence (a gap).
_IMPORT = """WITH batch AS (
  SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[],
    %b::json[], %b::json[], %b::timestamptz[], %b::uuid[])
    WITH ORDINALITY AS b (aggregate_type, aggregate_id, sequence, event_type, event_version,
      payload, metadata, timestamp, event_id, ordinal)
), written AS (
  INSERT INTO {events} (aggregate_type, aggregate_id, sequence, event_type, event_version,
    payload, metadata, timestamp, event_id, position)
  SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
    timestamp, event_id, (pg_current_xact_id()::text::numeric * 1048576 + ordinal)::bigint
  FROM batch
  ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING
  RETURNING 1
), firsts AS (
  SELECT DISTINCT ON (aggregate_type, aggregate_id) aggregate_type, aggregate_id, sequence
  FROM batch ORDER BY aggregate_type, aggregate_id, sequence
)
SELECT (SELECT count(*) FROM written),
  (SELECT count(*) FROM batch JOIN {events} AS stored
     USING (aggregate_type, aggregate_id, sequence) WHERE stored.event_id = batch.event_id),
  (SELECT count(*) FROM batch JOIN {events} AS stored
     USING (aggregate_type, aggregate_id, sequence) WHERE stored.event_id <> batch.event_id),
  (SELECT count(*) FROM firsts WHERE sequence > 1 AND NOT EXISTS (
     SELECT FROM {events} AS stored WHERE (stored.aggregate_type, stored.aggregate_id,
       stored.sequence) = (firsts.aggregate_type, firsts.aggregate_id, firsts.sequence - 1)))"""

_IMPORT_SNAPSHOTS = """INSERT INTO {snapshots} AS stored (aggregate_type, aggregate_id,
  last_sequence, current_snapshot, payload, timestamp)
SELECT aggregate_type, aggregate_id, last_sequence, current_snapshot, payload,
  CURRENT_TIMESTAMP
FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::json[])
  AS s (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
SET last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot,
  payload = excluded.payload, timestamp = excluded.timestamp
WHERE stored.last_sequence < excluded.last_sequence"""

_COUNT = "SELECT count(*) FROM {events} WHERE position > %s"

_MAX_IMPORT = (1 << 20) - 1


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


def _names(repository: PostgresEventRepository) -> dict[str, sql.Identifier]:
    return {
        "events": sql.Identifier(validate_identifier(repository.events_table)),
        "snapshots": sql.Identifier(validate_identifier(repository.snapshots_table)),
    }


async def schema_status(repository: PostgresEventRepository) -> tuple[list[str], list[str]]:
    """The DDL files recorded as applied to the repository's tables, and those pending."""
    files = [migration.name for migration in migrations("postgres", {})]
    table = schema_version_table(repository.events_table)

    async def read(conn: AsyncConnection[TupleRow]) -> list[str]:
        cursor = conn.cursor(row_factory=tuple_row)
        await cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',))
        row = await cursor.fetchone()
        if not (row and row[0]):
            return []
        await cursor.execute(sql.SQL("SELECT file FROM {}").format(sql.Identifier(table)))
        return sorted(str(found[0]) for found in await cursor.fetchall())

    applied = await repository._connections.run("read the schema version", read)  # noqa: SLF001
    return applied, [name for name in files if name not in applied]


async def count_events(
    repository: PostgresEventRepository, aggregate_type: str | None, after_position: int | None
) -> int:
    """How many events are stored after ``after_position`` (of one type, or all)."""
    text = _COUNT if aggregate_type is None else _COUNT + " AND aggregate_type = %s"
    query = sql.SQL(text).format(**_names(repository))
    params: list[object] = [after_position or 0]
    if aggregate_type is not None:
        params.append(aggregate_type)

    async def read(conn: AsyncConnection[TupleRow]) -> int:
        cursor = conn.cursor(row_factory=tuple_row)
        await cursor.execute(query, params)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    return await repository._connections.run("count events", read)  # noqa: SLF001


async def storage_size(repository: PostgresEventRepository) -> int:
    """Bytes the events and snapshots tables take on disk, indexes included."""
    query = "SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s)"
    names = (f'"{repository.events_table}"', f'"{repository.snapshots_table}"')

    async def read(conn: AsyncConnection[TupleRow]) -> int:
        cursor = conn.cursor(row_factory=tuple_row)
        await cursor.execute(query, names)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    return await repository._connections.run("read the size on disk", read)  # noqa: SLF001


async def import_events(
    repository: PostgresEventRepository,
    events: Sequence[SerializedEvent],
    snapshots: Sequence[SerializedSnapshot],
) -> int:
    """Store ``events`` and ``snapshots`` in one transaction; return how many events were
    new. See :meth:`cqrs_postgres.PostgresEventRepository.import_events`."""
    if len(events) > _MAX_IMPORT:
        msg = f"import_events takes at most {_MAX_IMPORT} events at once, not {len(events)}"
        raise ValueError(msg)
    _check_runs(events)
    names = _names(repository)
    statement = sql.SQL(_IMPORT).format(**names)
    params = [
        [e.aggregate_type for e in events],
        [e.aggregate_id for e in events],
        [e.sequence for e in events],
        [e.event_type for e in events],
        [e.event_version for e in events],
        [_text(e.payload) for e in events],
        [_text(e.metadata) for e in events],
        [e.timestamp for e in events],
        [e.event_id for e in events],
    ]
    snapshot_statement = sql.SQL(_IMPORT_SNAPSHOTS).format(**names)
    snapshot_params = [
        [s.aggregate_type for s in snapshots],
        [s.aggregate_id for s in snapshots],
        [s.last_sequence for s in snapshots],
        [s.snapshot_version for s in snapshots],
        [_text(s.payload) for s in snapshots],
    ]
    if len({(s.aggregate_type, s.aggregate_id) for s in snapshots}) != len(snapshots):
        msg = "import_events takes at most one snapshot per aggregate"
        raise ValueError(msg)
    notify = repository.statements.notify if repository.notify == "in_transaction" else None

    async def write(conn: AsyncConnection[TupleRow]) -> int:
        async with conn.transaction():
            written = 0
            if events:
                cursor = conn.cursor(row_factory=tuple_row)
                await cursor.execute(statement, params)
                row = await cursor.fetchone()
                written, same, other, gaps = (int(value) for value in row or (0, 0, 0, 0))
                if other or gaps or written + same != len(events):
                    msg = (
                        f"import into {repository.events_table}: {other} event(s) collide "
                        f"with stored events of other ids, {gaps} aggregate(s) would have a "
                        "gap; nothing was imported"
                    )
                    raise AggregateConflict(msg)
            if snapshots:
                await conn.execute(snapshot_statement, snapshot_params)
            if notify is not None and written:
                await conn.execute(notify)
            return written

    written = await repository._connections.run("import events", write)  # noqa: SLF001
    notifier = repository._notifier  # noqa: SLF001
    if notifier is not None and written:
        notifier.committed()
    return written


def _check_runs(events: Sequence[SerializedEvent]) -> None:
    last: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.aggregate_type, event.aggregate_id)
        before = last.get(key)
        if before is None:
            check_ids(*key)
            if not isinstance(event.sequence, int) or event.sequence < 1:
                msg = f"sequences start at 1, not {event.sequence!r}"
                raise ValueError(msg)
        elif event.sequence != before + 1:
            msg = (
                f"import_events takes each aggregate's events in sequence order: "
                f"{key[0]} {key[1][:40]!r} sequence {event.sequence} follows {before}"
            )
            raise ValueError(msg)
        last[key] = event.sequence
