-- Plans that stay index scans however small fifoq.executions was when they
-- were cached.
-- depends: 0010_set_based_admission
--
-- Why. plpgsql caches a generic plan for each statement of a function,
-- per session, made with the table's size at that moment. A worker that
-- connects to a young database (a new deployment, every bench workload)
-- plans "id = ANY ($1)" while executions holds a few hundred rows, where
-- reading the whole table is the cheapest plan, and keeps that plan as the
-- table grows until autovacuum or ANALYZE happens to invalidate it. Seen
-- with auto_explain in the bench: on some runs the completion batch's
-- look-ups by id read all of executions (2.8 ms instead of 0.3 ms per
-- batch) and the run went half as fast; which runs, depended on when the
-- plans were cached.
--
-- What. fifoq's functions read executions only through its indexes (the
-- plan guards in tests/perf check which), so they run with enable_seqscan
-- off: the planner takes the index path whatever the table's size, and a
-- sequential scan happens only where no index applies (the small queues
-- and policies tables are read by primary key then, as cheap). The setting
-- is the function's own: it ends when the function returns, and a caller's
-- queries are not affected. fifoq.purge keeps the default: it reads
-- history in bulk, where a sequential scan can be the right plan.
ALTER FUNCTION fifoq.enqueue(text, jsonb, text, bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.enqueue_many(text, jsonb[], text, bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.complete(bigint, jsonb, text) SET enable_seqscan = off;
ALTER FUNCTION fifoq.complete_many(bigint[], jsonb[], text[], bigint, text[], integer) SET enable_seqscan = off;
ALTER FUNCTION fifoq.admit_to(integer, bigint, integer) SET enable_seqscan = off;
ALTER FUNCTION fifoq.lock_execution(bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.cancel(bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.time_out(bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.watch(bigint, bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.claim(bigint, text[], integer) SET enable_seqscan = off;
ALTER FUNCTION fifoq.heartbeat(bigint, bigint[]) SET enable_seqscan = off;
ALTER FUNCTION fifoq.abandon_owned(bigint) SET enable_seqscan = off;
ALTER FUNCTION fifoq.maintain() SET enable_seqscan = off;
