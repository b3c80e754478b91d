CREATE TABLE IF NOT EXISTS views (view_id text PRIMARY KEY, version bigint NOT NULL,
  payload json NOT NULL);
