-- A view table (mysql-es's layout, with view ids as bytes like the events' ids); views
-- stands for the configured table name (see cqrs.ddl.render).
CREATE TABLE IF NOT EXISTS views (
  view_id varbinary(1024) NOT NULL,
  version bigint NOT NULL CHECK (version >= 0),
  payload json NOT NULL,
  PRIMARY KEY (view_id)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
