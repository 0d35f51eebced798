-- Reverts 0023_refresh_by_rebuild.sql: refresh_stats() takes no argument and
-- refreshes CONCURRENTLY only, as 0003 and 0005 made it, with their comments
-- (and the executor role's grant, if there is one).

DROP FUNCTION fifoq.refresh_stats(boolean);
DROP FUNCTION fifoq.cap_lock_timeout(text);

CREATE FUNCTION fifoq.refresh_stats() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
END
$$;

COMMENT ON FUNCTION fifoq.refresh_stats() IS 'Refreshes fifoq.queue_stats without blocking its readers.';
COMMENT ON MATERIALIZED VIEW fifoq.queue_stats IS
    'Snapshot of fifoq.queue_stats_live, refreshed by fifoq.refresh_stats() (CONCURRENTLY, so readers never block).';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'fifoq_executor') THEN
        GRANT EXECUTE ON FUNCTION fifoq.refresh_stats() TO fifoq_executor;
    END IF;
END
$$;
