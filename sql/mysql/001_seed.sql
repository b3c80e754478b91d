-- The table layout of mysql-es (the Rust crate's MySQL repository), so that a database one of
-- its services created upgrades in place: create_schema() records this file without running
-- it when both tables exist already. events and snapshots stand for the configured table
-- names (see cqrs.ddl.render).
CREATE TABLE events (
  aggregate_type varchar(255) NOT NULL,
  aggregate_id varchar(255) NOT NULL,
  sequence bigint NOT NULL CHECK (sequence >= 0),
  event_type text NOT NULL,
  event_version text NOT NULL,
  payload json NOT NULL,
  metadata json NOT NULL,
  timestamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots (
  aggregate_type varchar(255) NOT NULL,
  aggregate_id varchar(255) NOT NULL,
  last_sequence bigint NOT NULL CHECK (last_sequence >= 0),
  current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
  payload json NOT NULL,
  timestamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (aggregate_type, aggregate_id)
);
