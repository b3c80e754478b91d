-- Columns the framework needs on top of the seed schema; upgrades a seed database in place.
--
-- position:       (transaction_id << 20) + index of the row in its commit. Readers only read
--                 rows whose transaction is older than every running one (the snapshot's
--                 xmin), so no row at or below a position a reader has seen can appear later.
-- transaction_id: pg_current_xact_id() of the writing transaction (the commit-order column).
-- event_id:       a UUID per event, for idempotent consumers.
ALTER TABLE events
  ADD COLUMN event_id uuid NOT NULL DEFAULT gen_random_uuid(),
  ADD COLUMN transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
  ADD COLUMN position bigint;

-- Rows written before this upgrade are numbered 1..n, in time order but never against their
-- aggregate's sequence order. Every transaction that can still write has an id of at least
-- this snapshot's xmin, so these numbers stay below all later positions if n is small enough.
DO $$
BEGIN
  IF (SELECT count(*) FROM events) >= pg_snapshot_xmin(pg_current_snapshot())::text::numeric * 1048576
  THEN
    RAISE EXCEPTION 'too many existing rows to number below the current transaction id';
  END IF;
END
$$;

UPDATE events SET position = numbered.position
FROM (
  SELECT aggregate_type, aggregate_id, sequence,
    row_number() OVER (ORDER BY settled, aggregate_type, aggregate_id, sequence) AS position
  FROM (
    SELECT aggregate_type, aggregate_id, sequence,
      max(COALESCE(timestamp, '-infinity'))
        OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS settled
    FROM events
  ) AS ordered
) AS numbered
WHERE (events.aggregate_type, events.aggregate_id, events.sequence)
  = (numbered.aggregate_type, numbered.aggregate_id, numbered.sequence);

ALTER TABLE events ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX events_position_key ON events (position);
CREATE INDEX events_type_position_idx ON events (aggregate_type, position);

-- One snapshot per aggregate: a snapshot is a cache, so older rows can go.
DELETE FROM snapshots USING snapshots AS newer
WHERE (snapshots.aggregate_type, snapshots.aggregate_id)
    = (newer.aggregate_type, newer.aggregate_id)
  AND snapshots.last_sequence < newer.last_sequence;
CREATE UNIQUE INDEX snapshots_aggregate_key ON snapshots (aggregate_type, aggregate_id);
