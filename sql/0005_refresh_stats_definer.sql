-- fifoq.refresh_stats() runs with its owner's rights.
-- depends: 0004_owner_alive
--
-- REFRESH MATERIALIZED VIEW is allowed to the view's owner only, so a
-- least-privilege executor role (scripts/executor_role.sql) could not refresh
-- the statistics. As SECURITY DEFINER the function refreshes as the schema's
-- owner; the fixed search_path keeps a caller's own objects (say, an operator
-- "=" in a schema of theirs) out of the queries the refresh runs.
ALTER FUNCTION fifoq.refresh_stats() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
