-- Rows a postgres-es service inserts the seed's way (only the seed's columns, in a database
-- this framework upgraded) get their global position by default, by the framework's own
-- rule: (transaction id << 20) + index of the row in its transaction. Readers read only
-- rows of transactions below the oldest one still running (see cqrs_postgres.repository),
-- so such rows, like the framework's, appear after every position a reader has seen.
-- event_id and transaction_id have had defaults since 002.
--
-- The index counts in a setting local to the transaction (cqrs.position_index), from 1 in
-- insertion order, so one transaction's rows keep their order; more than 2**20 - 1 rows in
-- one transaction fail. One function serves every events table: it is replaced under a
-- lock of its own, so that migrations of different tables do not race.
SELECT pg_advisory_xact_lock(7306086219405735217);

CREATE OR REPLACE FUNCTION cqrs_next_position() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  n bigint := COALESCE(NULLIF(current_setting('cqrs.position_index', true), ''), '0')::bigint + 1;
BEGIN
  IF n >= 1048576 THEN
    RAISE EXCEPTION 'more than 1048575 rows inserted in one transaction without a position';
  END IF;
  PERFORM set_config('cqrs.position_index', n::text, true);
  RETURN (pg_current_xact_id()::text::numeric * 1048576 + n)::bigint;
END
$$;

ALTER TABLE events ALTER COLUMN position SET DEFAULT cqrs_next_position();
