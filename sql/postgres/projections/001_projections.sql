-- Checkpoints and leases of projections, and the events they parked (see cqrs.checkpoints).
-- projections stands for the configured table name (see cqrs.ddl.render).

-- One row per projection. lease_until is on the server's clock (now()); owner is '' while
-- nobody holds the lease.
CREATE TABLE IF NOT EXISTS projections (
  name text PRIMARY KEY,
  position bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
  owner text NOT NULL DEFAULT '',
  token bigint NOT NULL DEFAULT 0,
  lease_until timestamp with time zone NOT NULL DEFAULT '-infinity'
);

CREATE TABLE IF NOT EXISTS projections_parked (
  name text NOT NULL,
  position bigint NOT NULL,
  event_id uuid NOT NULL,
  error text NOT NULL,
  parked_at timestamp with time zone NOT NULL DEFAULT (CURRENT_TIMESTAMP),
  PRIMARY KEY (name, position)
);
