"""The SQL of the MySQL repositories, composed once per repository from validated table
names (as quoted identifiers); every value is a bound parameter (``%s``, escaped by the
driver). The schema itself is the files of ``sql/mysql``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from cqrs.repository import validate_identifier

__all__ = ["MysqlStatements", "MysqlViewStatements"]

_COLUMNS = (
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, "
    "timestamp, event_id, position"
)

# A commit, sent as one query (several statements, one round trip):
# 1. whether the batch follows the stored last sequence, read before any lock (SELECT ... INTO
#    is a plain consistent read, where SET @v := (SELECT ...) would take shared locks that
#    deadlock with other commits' inserts);
# 2. the counter row raised by the batch's size, which locks it until COMMIT: commits take
#    positions one after another, each after the previous one is visible, so a reader that
#    saw position p can never see a smaller one appear later. LAST_INSERT_ID(expr) hands the
#    new value back in the statement's reply (the driver's lastrowid) at no extra cost;
# 3. the rows, numbered below that value, and the snapshot, both only if 1 said so. A
#    gap or a taken sequence writes nothing (an insert of 0 rows). Two writers at one
#    sequence both pass 1; the primary key refuses the second one's rows (a duplicate key:
#    the client rolls back). Either is then told apart from a retry of this very batch by
#    its event ids.
_CHECK = (
    "SELECT COALESCE(max(sequence), 0) INTO @cqrs_last FROM {events} "
    "WHERE aggregate_type = %s AND aggregate_id = %s;\n"
    "SET @cqrs_follows := @cqrs_last = %s"
)
_TAKE = (
    "UPDATE {counter} SET position = LAST_INSERT_ID(position + {count}) "
    "WHERE id = 1 AND @cqrs_follows"
)
_ROW = (
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, LAST_INSERT_ID() - {back} "
    "FROM DUAL WHERE @cqrs_follows"
)

# The assignments run in order: last_sequence is compared before it changes.
_SNAPSHOT = """INSERT INTO {snapshots} (aggregate_type, aggregate_id, last_sequence,
  current_snapshot, payload, timestamp)
SELECT %s, %s, %s, %s, %s, CURRENT_TIMESTAMP(6) FROM DUAL WHERE @cqrs_follows
ON DUPLICATE KEY UPDATE
  current_snapshot = IF(VALUES(last_sequence) > last_sequence, VALUES(current_snapshot),
    current_snapshot),
  payload = IF(VALUES(last_sequence) > last_sequence, VALUES(payload), payload),
  timestamp = IF(VALUES(last_sequence) > last_sequence, VALUES(timestamp), timestamp),
  last_sequence = GREATEST(last_sequence, VALUES(last_sequence))"""

_ONE_AGGREGATE = """SELECT sequence, event_type, event_version, payload, metadata, timestamp,
  event_id, position
FROM {events} WHERE aggregate_type = %s AND aggregate_id = %s AND sequence > %s
ORDER BY sequence LIMIT %s"""

_SELECT_ALL = """SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
  payload, metadata, timestamp, event_id, position FROM {events}"""
_ALL = _SELECT_ALL + " WHERE position > %s ORDER BY position LIMIT %s"
_ALL_OF_TYPE = (
    _SELECT_ALL + " WHERE aggregate_type = %s AND position > %s ORDER BY position LIMIT %s"
)

_GET_SNAPSHOT = """SELECT payload, last_sequence, current_snapshot FROM {snapshots}
WHERE aggregate_type = %s AND aggregate_id = %s"""

_LAST_POSITION = "SELECT position FROM {counter} WHERE id = 1"

_LOAD_VIEW = "SELECT payload, version FROM {table} WHERE view_id = %s"
_INSERT_VIEW = "INSERT INTO {table} (view_id, version, payload) VALUES (%s, %s, %s)"
_UPDATE_VIEW = "UPDATE {table} SET version = %s, payload = %s WHERE view_id = %s AND version = %s"


def quote(name: str, what: str = "table name") -> str:
    """``name`` validated as an identifier and quoted with backticks."""
    return f"`{validate_identifier(name, what)}`"


@dataclass(frozen=True, slots=True)
class MysqlStatements:
    """The statements of one :class:`~cqrs_mysql.MysqlEventRepository` (its ``statements``
    attribute), for tools that must run exactly what it runs.

    - :meth:`persist`: one query committing a batch of ``count`` events (and a snapshot):
      the batch's type, id and ``first sequence - 1``; then per event its type, id,
      sequence, event_type, event_version, payload, metadata, timestamp (UTC) and event_id;
      then, with a snapshot, its type, id, last_sequence, version and payload. Its results,
      in order: the check (two), START TRANSACTION, the counter (lastrowid: the batch's last
      position), the rows (row count: the batch's size, or 0 if it does not follow the stored
      last sequence), the snapshot, COMMIT;
    - ``one_aggregate``: an aggregate's events after a sequence (type, id, after, limit);
    - ``all``: every type's events after a position (after, limit);
    - ``all_of_type``: one type's (type, after, limit);
    - ``get_snapshot``: payload, last_sequence, current_snapshot (type, id);
    - ``last_position``: the last position given (no parameters).
    """

    events: str
    snapshots: str
    counter: str
    one_aggregate: str
    all: str
    all_of_type: str
    get_snapshot: str
    last_position: str
    _check: str = field(repr=False)

    @classmethod
    def for_tables(cls, events_table: str, snapshots_table: str) -> MysqlStatements:
        """The statements for these tables (validated as identifiers)."""
        events, snapshots = quote(events_table), quote(snapshots_table)
        counter = quote(f"{events_table}_counter")
        return cls(
            events=events,
            snapshots=snapshots,
            counter=counter,
            one_aggregate=_ONE_AGGREGATE.format(events=events),
            all=_ALL.format(events=events),
            all_of_type=_ALL_OF_TYPE.format(events=events),
            get_snapshot=_GET_SNAPSHOT.format(snapshots=snapshots),
            last_position=_LAST_POSITION.format(counter=counter),
            _check=_CHECK.format(events=events),
        )

    def persist(self, count: int, *, snapshot: bool) -> str:
        """The commit query for a batch of ``count`` events (built once per size)."""
        return _persist((self._check, self.events, self.snapshots, self.counter), count, snapshot)


@lru_cache(maxsize=256)
def _persist(names: tuple[str, str, str, str], count: int, snapshot: bool) -> str:
    check, events, snapshots, counter = names
    rows = " UNION ALL ".join(_ROW.format(back=count - 1 - index) for index in range(count))
    parts = [
        check,
        "START TRANSACTION",
        _TAKE.format(counter=counter, count=count),
        f"INSERT INTO {events} ({_COLUMNS}) {rows}",
    ]
    if snapshot:
        parts.append(_SNAPSHOT.format(snapshots=snapshots))
    parts.append("COMMIT")
    return ";\n".join(parts)


@dataclass(frozen=True, slots=True)
class MysqlViewStatements:
    """The statements of one :class:`~cqrs_mysql.MysqlViewRepository` (its ``statements``
    attribute).

    - ``load``: a view's payload and version (view_id);
    - ``insert``: store a view not stored yet; a duplicate key if it is (view_id, version,
      payload);
    - ``update``: store a view still at a version (version, payload, view_id, old version).
    """

    load: str
    insert: str
    update: str

    @classmethod
    def for_table(cls, table: str) -> MysqlViewStatements:
        """The statements for this table (validated as an identifier)."""
        name = quote(table)
        return cls(
            load=_LOAD_VIEW.format(table=name),
            insert=_INSERT_VIEW.format(table=name),
            update=_UPDATE_VIEW.format(table=name),
        )
