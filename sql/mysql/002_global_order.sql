-- What the framework needs on top of mysql-es's layout; upgrades such a database in place.
-- MySQL commits each DDL statement on its own: create_schema() records this file once all
-- of it ran, under a named lock (GET_LOCK), with ANSI_QUOTES for the quoted table names.
--
-- Text as UTF-8 (utf8mb4) whatever the server's default; ids as bytes: compared exactly
-- (no case folding, no trailing-space padding), and the longest ids every backend takes
-- (255 and 1024 UTF-8 bytes) fit InnoDB's 3072-byte index keys.
ALTER TABLE events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE snapshots CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- position: the global order, taken from events_counter in the committing transaction (see
-- cqrs_mysql.repository); event_id: a UUID per event, for idempotent consumers. Timestamps
-- to the microsecond (TIMESTAMP is stored in UTC and read in the session's zone, which is
-- UTC on the framework's connections).
ALTER TABLE events
  MODIFY aggregate_type varbinary(255) NOT NULL,
  MODIFY aggregate_id varbinary(1024) NOT NULL,
  MODIFY timestamp timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  ADD COLUMN event_id char(36) CHARACTER SET ascii NULL,
  ADD COLUMN position bigint NULL;

-- Rows written before this upgrade get event ids, and positions 1..n in time order but never
-- against their aggregate's sequence order.
UPDATE events SET event_id = uuid();
UPDATE events JOIN (
  SELECT aggregate_type, aggregate_id, sequence,
    row_number() OVER (ORDER BY settled, aggregate_type, aggregate_id, sequence) AS numbered
  FROM (
    SELECT aggregate_type, aggregate_id, sequence,
      max(timestamp) OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS settled
    FROM events
  ) AS ordered
) AS numbering USING (aggregate_type, aggregate_id, sequence)
SET events.position = numbering.numbered;

ALTER TABLE events
  MODIFY event_id char(36) CHARACTER SET ascii NOT NULL DEFAULT (uuid()),
  MODIFY position bigint NOT NULL,
  ADD UNIQUE INDEX events_position_key (position),
  ADD INDEX events_type_position_idx (aggregate_type, position);

-- One row: the last position given. A commit raises it first thing in its transaction, which
-- locks the row until that commit ends, so commits take positions one after another.
CREATE TABLE events_counter (
  id tinyint PRIMARY KEY CHECK (id = 1),
  position bigint NOT NULL
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
INSERT INTO events_counter (id, position) SELECT 1, COALESCE(max(position), 0) FROM events;

ALTER TABLE snapshots
  MODIFY aggregate_type varbinary(255) NOT NULL,
  MODIFY aggregate_id varbinary(1024) NOT NULL,
  MODIFY timestamp timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6);
