-- Drops what 0001_tables.sql created (the schema itself belongs to migrate()).
DROP TABLE fifoq.executors;
DROP TABLE fifoq.executions;
DROP TABLE fifoq.queues;
DROP TABLE fifoq.policies;
DROP FUNCTION fifoq.valid_name(text);
DROP TYPE fifoq.execution_status;
