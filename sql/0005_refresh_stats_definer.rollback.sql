-- Reverts 0005_refresh_stats_definer.sql.
ALTER FUNCTION fifoq.refresh_stats() SECURITY INVOKER RESET search_path;
