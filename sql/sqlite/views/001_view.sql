-- A view table: one row per view id, with the version used for optimistic locking.
-- views stands for the configured table name (see cqrs.ddl.render).
CREATE TABLE IF NOT EXISTS views (
    view_id TEXT    PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 1),
    payload TEXT    NOT NULL  -- JSON
);
