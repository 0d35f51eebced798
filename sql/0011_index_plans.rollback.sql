-- Reverts 0011_index_plans.sql.
ALTER FUNCTION fifoq.enqueue(text, jsonb, text, bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.enqueue_many(text, jsonb[], text, bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.complete(bigint, jsonb, text) RESET enable_seqscan;
ALTER FUNCTION fifoq.complete_many(bigint[], jsonb[], text[], bigint, text[], integer) RESET enable_seqscan;
ALTER FUNCTION fifoq.admit_to(integer, bigint, integer) RESET enable_seqscan;
ALTER FUNCTION fifoq.lock_execution(bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.cancel(bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.time_out(bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.watch(bigint, bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.claim(bigint, text[], integer) RESET enable_seqscan;
ALTER FUNCTION fifoq.heartbeat(bigint, bigint[]) RESET enable_seqscan;
ALTER FUNCTION fifoq.abandon_owned(bigint) RESET enable_seqscan;
ALTER FUNCTION fifoq.maintain() RESET enable_seqscan;
