-- Checkpoints and leases of projections, and the events they parked (see cqrs.checkpoints).
-- projections stands for the configured table name (see cqrs.ddl.render).

-- One row per projection. lease_until is seconds since the epoch on the runners' wall clock
-- (Python's time.time()); owner is '' while nobody holds the lease.
CREATE TABLE IF NOT EXISTS projections (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL DEFAULT 0 CHECK (position >= 0),
    owner       TEXT    NOT NULL DEFAULT '',
    token       INTEGER NOT NULL DEFAULT 0,
    lease_until REAL    NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS projections_parked (
    name      TEXT    NOT NULL,
    position  INTEGER NOT NULL,
    event_id  TEXT    NOT NULL,  -- UUID
    error     TEXT    NOT NULL,
    parked_at TEXT    DEFAULT (CURRENT_TIMESTAMP),
    PRIMARY KEY (name, position)
);
