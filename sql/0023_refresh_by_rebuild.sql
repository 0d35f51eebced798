-- fifoq.refresh_stats(true) rebuilds the snapshot instead of diffing it.
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
-- Locks. A plain REFRESH takes ACCESS EXCLUSIVE on fifoq.queue_stats until
-- its transaction ends: readers of the snapshot wait for it (the
-- milliseconds above, if the transaction commits at once), nothing else
-- does (the live view and the queue tables are only read, as before). Two
-- dangers, two rules:
--
-- - A caller's transaction that goes on after the refresh would keep the
--   readers waiting until it commits. A function cannot tell whether its
--   statement is the whole transaction, so the caller says so: only
--   refresh_stats(true) rebuilds; QueueManager.refresh_stats() passes true
--   (its statement runs on its own, autocommit). A plain call, from SQL
--   inside any transaction, refreshes CONCURRENTLY as before.
-- - A reader whose transaction stays open after reading the snapshot would
--   make the rebuild wait, and every later reader queue behind it. So the
--   rebuild waits at most 20 ms for its lock (or the caller's lock_timeout,
--   if shorter); on lock_not_available the snapshot is refreshed
--   CONCURRENTLY instead, which readers never block (EXCLUSIVE does not
--   conflict with the ACCESS SHARE they hold). The EXCEPTION block is a
--   subtransaction: its rollback also restores the caller's lock_timeout.
--
-- The function keeps 0005's SECURITY DEFINER and fixed search_path. It has
-- a new signature, so it is a new function (as is fifoq.cap_lock_timeout,
-- the lock_timeout rule this and later migrations share): granted to the executor role
-- if one exists (fifoq/executor_role.sql grants every function of the
-- schema, for databases whose owner revoked EXECUTE from PUBLIC).
-- Snapshots taken before a rebuild see the new rows (REFRESH writes them
-- frozen, like COPY FREEZE): harmless for statistics.

-- Used here and by 0024 and 0025: wait at most so long for a lock, unless
-- the caller asked for less; the caller's setting comes back to restore it.
CREATE FUNCTION fifoq.cap_lock_timeout(p_most text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_caller text := current_setting('lock_timeout');
BEGIN
    -- '0' is no timeout at all; the setting reads with its unit ('2s').
    IF v_caller::interval = interval '0' OR v_caller::interval > p_most::interval THEN
        PERFORM set_config('lock_timeout', p_most, true);  -- to the transaction's end
    END IF;
    RETURN v_caller;
END
$$;
COMMENT ON FUNCTION fifoq.cap_lock_timeout(text) IS
    'Lowers lock_timeout to p_most (e.g. ''200ms'') for the rest of the transaction unless it is lower already; returns the previous setting, for set_config(''lock_timeout'', previous, true).';

DROP FUNCTION fifoq.refresh_stats();

CREATE FUNCTION fifoq.refresh_stats(p_rebuild boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller_timeout text;
BEGIN
    IF NOT p_rebuild THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
        RETURN;
    END IF;
    BEGIN
        v_caller_timeout := fifoq.cap_lock_timeout('20ms');
        REFRESH MATERIALIZED VIEW fifoq.queue_stats;
        PERFORM set_config('lock_timeout', v_caller_timeout, true);
    EXCEPTION WHEN lock_not_available THEN
        -- A reader's open transaction holds the snapshot (or another
        -- refresh runs long): refresh beside the readers.
        REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
    END;
END
$$;

COMMENT ON FUNCTION fifoq.refresh_stats(boolean) IS
    'Refreshes fifoq.queue_stats CONCURRENTLY, beside its readers. refresh_stats(true), for a call that is its own transaction, rebuilds it instead (2-6x faster; readers wait until the caller commits), unless a reader''s open transaction holds it for over 20 ms.';
COMMENT ON MATERIALIZED VIEW fifoq.queue_stats IS
    'Snapshot of fifoq.queue_stats_live, refreshed by fifoq.refresh_stats() (see there: rebuilt or CONCURRENTLY).';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'fifoq_executor') THEN
        GRANT EXECUTE ON FUNCTION fifoq.refresh_stats(boolean) TO fifoq_executor;
        GRANT EXECUTE ON FUNCTION fifoq.cap_lock_timeout(text) TO fifoq_executor;
    END IF;
END
$$;
