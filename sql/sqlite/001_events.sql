-- Events and snapshots: the seed's columns in SQLite types, plus the global position and the
-- event id. events and snapshots stand for the configured table names (see cqrs.ddl.render).
-- Applied once per database by create_schema(), which records it.

-- position: the global order. AUTOINCREMENT never reuses a number, and writers hold the write
-- lock (BEGIN IMMEDIATE) from the first insert to COMMIT, so positions follow commit order.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,  -- JSON
    metadata       TEXT    NOT NULL,  -- JSON object of strings
    timestamp      TEXT    DEFAULT (CURRENT_TIMESTAMP),  -- ISO 8601, UTC
    event_id       TEXT    NOT NULL,  -- UUID
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- One row per aggregate (the seed keys snapshots by last_sequence too); an upsert replaces
-- it only with a snapshot of a greater last_sequence.
CREATE TABLE snapshots (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,  -- JSON
    timestamp        TEXT    DEFAULT (CURRENT_TIMESTAMP),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
