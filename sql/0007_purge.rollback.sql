-- Reverts 0007_purge.sql.
DROP FUNCTION fifoq.purge(interval, integer);
