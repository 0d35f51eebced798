-- Drops what 0003_stats.sql created.
DROP FUNCTION fifoq.refresh_stats();
DROP MATERIALIZED VIEW fifoq.queue_stats;
DROP VIEW fifoq.queue_stats_live;
