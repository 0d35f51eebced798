-- fifoq.refresh_stats() rebuilds the snapshot instead of diffing it.
-- depends: 0022_column_comments
--
-- Why. REFRESH ... CONCURRENTLY (0003) runs the view's query into a
-- temporary table, checks it for duplicate rows, FULL JOINs it with the old
-- rows into a second temporary table, ANALYZEs both, deletes the old
-- version of every changed row and inserts the new one (every row changes:
-- last_updated is the refresh time), then drops both tables. Most of that
-- is fixed cost (two tables' files and catalog rows), the rest grows with
-- the rows. A plain REFRESH runs the query into a new heap, builds its one
-- index and swaps the files in. Measured on the development VM, server
-- side, medians (see the README's performance section):
--
--   queues    CONCURRENTLY   plain
--   100          5.3 ms      3.1 ms
--   1,000       29.8 ms      7.4 ms
--   10,000     261   ms     42   ms
--
-- and the view no longer bloats between vacuums (every concurrent refresh
-- left 100 dead rows behind for the next one to scan).
--
-- Locks. A plain REFRESH takes ACCESS EXCLUSIVE on fifoq.queue_stats:
-- readers of the snapshot wait for the refresh (the milliseconds above),
-- nothing else does (the live view and the queue tables are only read,
-- as before). The danger is a reader whose transaction stays open after
-- reading the snapshot: the refresh would wait for it, and every later
-- reader would queue behind the refresh. So the plain REFRESH waits at
-- most 20 ms for its lock (or the caller's lock_timeout, if shorter), and
-- on lock_not_available the snapshot is refreshed CONCURRENTLY instead,
-- which readers never block (EXCLUSIVE does not conflict with the ACCESS
-- SHARE they hold). The EXCEPTION block is a subtransaction: its rollback
-- also restores the caller's lock_timeout. Two refreshes at once still
-- serialize, as before.
--
-- A lock is held until the transaction ends: called inside a longer
-- transaction (its start is not this statement's start), a rebuild would
-- keep the snapshot's readers waiting until the caller commits, so there the
-- snapshot is refreshed CONCURRENTLY, as before. A call on its own (an
-- autocommit statement, like QueueManager.refresh_stats()) commits at once.
--
-- The function keeps 0005's SECURITY DEFINER and fixed search_path (CREATE
-- OR REPLACE resets what it does not restate). Snapshots taken before a
-- plain refresh see the new rows (REFRESH writes them frozen, like
-- TRUNCATE + COPY FREEZE): harmless for statistics.

CREATE OR REPLACE FUNCTION fifoq.refresh_stats() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller_timeout text := current_setting('lock_timeout');
BEGIN
    IF transaction_timestamp() <> statement_timestamp() THEN
        -- Inside a longer transaction: see above.
        REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
        RETURN;
    END IF;
    BEGIN
        IF v_caller_timeout::interval = interval '0'
           OR v_caller_timeout::interval > interval '20 milliseconds' THEN
            PERFORM set_config('lock_timeout', '20ms', true);
        END IF;
        REFRESH MATERIALIZED VIEW fifoq.queue_stats;
        PERFORM set_config('lock_timeout', v_caller_timeout, true);
    EXCEPTION WHEN lock_not_available THEN
        -- A reader's open transaction holds the snapshot (or another
        -- refresh runs long): refresh beside the readers.
        REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
    END;
END
$$;

COMMENT ON FUNCTION fifoq.refresh_stats() IS
    'Refreshes fifoq.queue_stats: rebuilds it (its readers wait the few milliseconds that takes); CONCURRENTLY, beside its readers, when one''s open transaction holds it for more than 20 ms or when called inside a longer transaction.';
COMMENT ON MATERIALIZED VIEW fifoq.queue_stats IS
    'Snapshot of fifoq.queue_stats_live, refreshed by fifoq.refresh_stats() (rebuilt, or CONCURRENTLY when a reader holds it or the caller''s transaction goes on, so readers never wait long).';
