-- Reverts 0008_batches.sql.
DROP FUNCTION fifoq.complete_many_deferred(bigint[], jsonb[], text[]);
DROP FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint);
DROP FUNCTION fifoq.complete_many(bigint[], jsonb[], text[]);
DROP FUNCTION fifoq.enqueue_many(text, jsonb[], text, bigint);
