-- Drops what 0004_owner_alive.sql created.
DROP TRIGGER executions_owner_alive ON fifoq.executions;
DROP FUNCTION fifoq.check_owner_alive();
