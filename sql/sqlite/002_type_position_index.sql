-- The global stream of one aggregate type reads pages of (aggregate_type = ?, position > ?)
-- in position order. Without this index SQLite finds the type through the unique key and
-- sorts every page (quadratic over a long stream); with it each page is one index range.
-- position is the rowid, so the index is the type followed by the rowid.
CREATE INDEX IF NOT EXISTS events_type_position ON events (aggregate_type, position);
