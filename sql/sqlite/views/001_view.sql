-- A view table: one row per view id, with the version used for optimistic locking.
-- {table} stands for the configured (validated) table name.
CREATE TABLE IF NOT EXISTS {table} (
    view_id TEXT    PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 1),
    payload TEXT    NOT NULL  -- JSON
);
