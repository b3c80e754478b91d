"""The SQL of the PostgreSQL repositories, composed once per repository from validated
table names (as quoted identifiers); every value is a bound parameter. The schema itself is
the files of ``sql/postgres``."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from cqrs.repository import validate_identifier

__all__ = ["PostgresStatements", "PostgresViewStatements", "notify_channel"]

# The rows are inserted only if the batch starts right after the stored last sequence (the
# max is one index probe, evaluated once): a gap or a taken sequence writes nothing, and the
# snapshot is written only with the events. Two writers at one sequence both pass the check;
# the unique key makes the second wait for the first and fail. No rows written, or a unique
# violation, is then told apart from a retry of this very batch by its event ids.
_EVENTS = """WITH written AS (
  INSERT INTO {events} (aggregate_type, aggregate_id, sequence, event_type, event_version,
    payload, metadata, timestamp, event_id, position)
  SELECT %b, %b, sequence, event_type, event_version, payload, metadata, timestamp, event_id,
    (pg_current_xact_id()::text::numeric * 1048576 + ordinal)::bigint
  FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::json[], %b::json[],
    %b::timestamptz[], %b::uuid[])
    WITH ORDINALITY AS batch (sequence, event_type, event_version, payload, metadata,
      timestamp, event_id, ordinal)
  WHERE batch.sequence - batch.ordinal = (SELECT COALESCE(max(stored.sequence), 0)
    FROM {events} AS stored WHERE stored.aggregate_type = %b AND stored.aggregate_id = %b)
  RETURNING position
)"""

_SNAPSHOT = """, snapshot AS (
  INSERT INTO {snapshots} AS stored (aggregate_type, aggregate_id, last_sequence,
    current_snapshot, payload, timestamp)
  SELECT %b::text, %b::text, %b::bigint, %b::bigint, %b::json, CURRENT_TIMESTAMP
  WHERE EXISTS (SELECT FROM written)
  ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
  SET last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot,
    payload = excluded.payload, timestamp = excluded.timestamp
  WHERE stored.last_sequence < excluded.last_sequence
)"""

# The wake-up for listeners when sent by the commit itself (notify="in_transaction", see
# cqrs_postgres.wake_ups): sent only if rows were written, and delivered by the server only
# if the transaction commits. A SELECT in a WITH that nothing references is never run, hence
# the join in the final SELECT (one row, or none when nothing was written).
_NOTIFY = """, notified AS (
  SELECT pg_notify({channel}, '') WHERE EXISTS (SELECT FROM written)
)"""

_RETURN = " SELECT position FROM written ORDER BY position"
_RETURN_NOTIFIED = " SELECT position FROM written, notified ORDER BY position"
_NOTIFY_ALONE = "SELECT pg_notify({channel}, '')"

# Event ids as text for the per-aggregate reads: a load never looks at them, and building a
# UUID per row (psycopg's binary loader runs UUID() in Python) cost about 0.5 us of the
# 2 us a loaded event costs; the store parses the text only when it builds an envelope.
_ONE_AGGREGATE = """SELECT sequence, event_type, event_version, payload, metadata,
  COALESCE(timestamp, 'epoch'), event_id::text, position
FROM {events} WHERE aggregate_type = %b AND aggregate_id = %b AND sequence > %b
ORDER BY sequence LIMIT %b"""

# Only rows of transactions below the snapshot's xmin: see cqrs_postgres.repository. Positions
# are computed in numeric, not with a bigint shift, which wraps silently: an id of 2**43 or
# more fails the commit ("bigint out of range") and the read bound is clamped to bigint.
_HORIZON = (
    "LEAST(pg_snapshot_xmin(pg_current_snapshot())::text::numeric * 1048576 - 1, "
    "9223372036854775807)::bigint"
)
_ALL = (
    """SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
  metadata, COALESCE(timestamp, 'epoch'), event_id, position
FROM {events} WHERE position > %b
  AND position <= """
    + _HORIZON
    + """
ORDER BY position LIMIT %b"""
)

# Row comparisons, not ``aggregate_type = ... AND position > ...``: with an equality on the
# type the planner may walk the position index and filter by type (it guesses the type is
# spread evenly), reading every other type's rows in between, or all of them for a type
# whose events are recent. Row bounds are served by the (aggregate_type, position) index,
# which reads exactly the rows of the page. This statement is never prepared: a generic plan
# does not know the type's share of the table nor the page size, and may choose the primary
# key plus a sort of every event of the type; planning each page with its values (a small
# cost next to reading a page) picks the index.
_ALL_OF_TYPE = (
    """SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
  metadata, COALESCE(timestamp, 'epoch'), event_id, position
FROM {events} WHERE (aggregate_type, position) > (%(type)b, %(after)b)
  AND (aggregate_type, position) <= (%(type)b, """
    + _HORIZON
    + """)
ORDER BY aggregate_type, position LIMIT %(limit)b"""
)

_NEWEST_ALL = "SELECT max(position) FROM {events}"
_NEWEST_OF_TYPE = "SELECT max(position) FROM {events} WHERE aggregate_type = %b"

_GET_SNAPSHOT = """SELECT payload, last_sequence, current_snapshot FROM {snapshots}
WHERE aggregate_type = %b AND aggregate_id = %b"""

# One round trip for a load from a snapshot, in one MVCC snapshot of the database: the
# snapshot as a row whose event_type is NULL (sequence: its last_sequence, position: its
# version), then the events after it. Sorted by sequence, so the snapshot row comes first.
_SNAPSHOT_AND_EVENTS = """WITH snapshot AS (
  SELECT payload, last_sequence, current_snapshot FROM {snapshots}
  WHERE aggregate_type = %(type)b AND aggregate_id = %(id)b
)
SELECT last_sequence, NULL::text, NULL::text, payload, NULL::json, NULL::timestamptz,
  NULL::text, current_snapshot
FROM snapshot
UNION ALL
SELECT sequence, event_type, event_version, payload, metadata, COALESCE(timestamp, 'epoch'),
  event_id::text, position
FROM {events} WHERE aggregate_type = %(type)b AND aggregate_id = %(id)b
  AND sequence > COALESCE((SELECT last_sequence FROM snapshot), 0)
ORDER BY 1"""

_LOAD_VIEW = "SELECT payload, version FROM {table} WHERE view_id = %b"
_INSERT_VIEW = """INSERT INTO {table} (view_id, version, payload) VALUES (%b, %b, %b::json)
ON CONFLICT (view_id) DO NOTHING"""
_UPDATE_VIEW = """UPDATE {table} SET version = %b, payload = %b::json
WHERE view_id = %b AND version = %b"""


def _compose(text: str, **names: str) -> bytes:
    parts: dict[str, sql.Composable] = {
        key: sql.Identifier(validate_identifier(name)) for key, name in names.items()
    }
    if "channel" in names:  # pg_notify's argument: a string, not a name
        parts["channel"] = sql.Literal(names["channel"])
    return sql.SQL(text).format(**parts).as_bytes(None)


def notify_channel(events_table: str) -> str:
    """The channel a commit to ``events_table`` notifies: ``<events table>_commits``."""
    return validate_identifier(f"{events_table}_commits", "notification channel")


@dataclass(frozen=True, slots=True)
class PostgresStatements:
    """The statements of one :class:`~cqrs_postgres.PostgresEventRepository` (its
    ``statements`` attribute), for tools that must run exactly what it runs. Parameters are
    binary (``%b``).

    - ``persist``: store a batch that follows the stored last sequence, return its
      positions (type, id, the arrays of sequence, event_type, event_version, payload,
      metadata, timestamp and event_id, then type and id again); built with
      ``notify_in_transaction``, it also notifies ``channel`` when it stores the rows;
    - ``persist_with_snapshot``: the same and the snapshot upsert (then type, id,
      last_sequence, version, payload);
    - ``one_aggregate``: an aggregate's events after a sequence (type, id, after, limit;
      the event id as text);
    - ``all``: every type's events after a position, of finished transactions (after,
      limit);
    - ``all_of_type``: one type's (named: type, after, limit; run unprepared);
    - ``newest_all``, ``newest_of_type``: the greatest stored position (of a type);
    - ``get_snapshot``: payload, last_sequence, current_snapshot (type, id);
    - ``snapshot_and_events``: the snapshot as a first row whose event_type is NULL
      (last_sequence, -, -, payload, -, -, -, current_snapshot), if there is one, then the
      events after it in ``one_aggregate``'s columns (named: type, id);
    - ``channel``, ``listen``, ``notify``: the notification channel of commits (see
      :func:`notify_channel`), ``LISTEN`` on it, and ``pg_notify`` on it with an empty
      payload.
    """

    channel: str
    listen: bytes
    notify: bytes
    persist: bytes
    persist_with_snapshot: bytes
    one_aggregate: bytes
    all: bytes
    all_of_type: bytes
    newest_all: bytes
    newest_of_type: bytes
    get_snapshot: bytes
    snapshot_and_events: bytes

    @classmethod
    def for_tables(
        cls, events_table: str, snapshots_table: str, *, notify_in_transaction: bool = False
    ) -> PostgresStatements:
        """The statements for these tables (validated as identifiers)."""
        channel = notify_channel(events_table)
        names = {"events": events_table, "snapshots": snapshots_table, "channel": channel}
        end = _NOTIFY + _RETURN_NOTIFIED if notify_in_transaction else _RETURN
        return cls(
            channel=channel,
            listen=_compose("LISTEN {channel_name}", channel_name=channel),
            notify=_compose(_NOTIFY_ALONE, channel=channel),
            persist=_compose(_EVENTS + end, **names),
            persist_with_snapshot=_compose(_EVENTS + _SNAPSHOT + end, **names),
            one_aggregate=_compose(_ONE_AGGREGATE, **names),
            all=_compose(_ALL, **names),
            all_of_type=_compose(_ALL_OF_TYPE, **names),
            newest_all=_compose(_NEWEST_ALL, **names),
            newest_of_type=_compose(_NEWEST_OF_TYPE, **names),
            get_snapshot=_compose(_GET_SNAPSHOT, **names),
            snapshot_and_events=_compose(_SNAPSHOT_AND_EVENTS, **names),
        )


@dataclass(frozen=True, slots=True)
class PostgresViewStatements:
    """The statements of one :class:`~cqrs_postgres.PostgresViewRepository` (its
    ``statements`` attribute).

    - ``load``: a view's payload and version (view_id);
    - ``insert``: store a view not stored yet, else change nothing (view_id, version,
      payload);
    - ``update``: store a view still at a version (version, payload, view_id, old version).
    """

    load: bytes
    insert: bytes
    update: bytes

    @classmethod
    def for_table(cls, table: str) -> PostgresViewStatements:
        """The statements for this table (validated as an identifier)."""
        return cls(
            load=_compose(_LOAD_VIEW, table=table),
            insert=_compose(_INSERT_VIEW, table=table),
            update=_compose(_UPDATE_VIEW, table=table),
        )
