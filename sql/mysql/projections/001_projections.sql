-- Checkpoints and leases of projections, and the events they parked (see cqrs.checkpoints).
-- projections stands for the configured table name (see cqrs.ddl.render).

-- One row per projection. Names are bytes (UTF-8, compared exactly); lease_until is UTC on
-- the server's clock (UTC_TIMESTAMP(6)); owner is empty while nobody holds the lease.
CREATE TABLE IF NOT EXISTS projections (
  name varbinary(800) NOT NULL PRIMARY KEY,
  position bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
  owner varbinary(800) NOT NULL DEFAULT '',
  token bigint NOT NULL DEFAULT 0,
  lease_until datetime(6) NOT NULL DEFAULT '1000-01-01 00:00:00'
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS projections_parked (
  name varbinary(800) NOT NULL,
  position bigint NOT NULL,
  event_id char(36) CHARACTER SET ascii NOT NULL,
  error longtext NOT NULL,
  parked_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (name, position)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
