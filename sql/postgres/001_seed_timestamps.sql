-- postgres-es's current init script makes the seed's tables without their timestamp
-- columns; add them where they are missing (rows stored before have none: they read as the
-- epoch), so that either variant upgrades in place. It sorts between 001 and 002 because
-- 002 needs the columns; a database that had 002 before this file existed runs it after,
-- finding nothing to do.
ALTER TABLE events ADD COLUMN IF NOT EXISTS timestamp timestamp with time zone;
ALTER TABLE events ALTER COLUMN timestamp SET DEFAULT (CURRENT_TIMESTAMP);
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS timestamp timestamp with time zone;
ALTER TABLE snapshots ALTER COLUMN timestamp SET DEFAULT (CURRENT_TIMESTAMP);
