-- The SQL of `fifoq bench`, one query per `-- name:` block (loaded by
-- fifoq/bench/queries.py). Every workload runs in a scratch database of its
-- own, so these queries may read whole tables: nothing else lives there.

-- name: server_settings
-- What the results depend on. Settings a non-superuser may not read come back NULL.
SELECT current_setting('server_version') AS server_version,
       version() AS version,
       current_setting('fsync', true) AS fsync,
       current_setting('synchronous_commit', true) AS synchronous_commit,
       current_setting('wal_sync_method', true) AS wal_sync_method,
       current_setting('full_page_writes', true) AS full_page_writes,
       current_setting('shared_buffers', true) AS shared_buffers,
       current_setting('max_connections', true) AS max_connections,
       current_setting('track_commit_timestamp', true) AS track_commit_timestamp;

-- name: server_clock
-- The server's wall clock, for the client-server clock offset of the latency workloads.
SELECT extract(epoch FROM clock_timestamp())::float8 AS server_epoch;

-- name: set_policy
SELECT fifoq.set_policy(%(action)s, %(max_concurrent)s, %(max_queue_length)s) IS NOT NULL;

-- name: throughput_window
-- End to end, from the first enqueue to the last completion, measured by the
-- server's clock; plus how many executions finished and how.
SELECT count(*) AS executions,
       count(*) FILTER (WHERE e.status = 'succeeded') AS succeeded,
       extract(epoch FROM min(e.enqueued_at))::float8 AS first_enqueued,
       extract(epoch FROM max(e.finished_at))::float8 AS last_finished
FROM fifoq.executions e;

-- name: finished_count
-- How many executions have ended, from the queue counters (cheap to poll:
-- one small row per queue, no scan of the executions).
SELECT coalesce(sum(total_succeeded + total_failed + total_cancelled + total_timed_out
                    + total_abandoned), 0)::bigint
FROM fifoq.queues;

-- name: queued_head
-- The waiting execution of a queue, once its waiter has enqueued it and
-- registered its wait (watch sets the owner); latency workloads.
SELECT e.id
FROM fifoq.executions e
JOIN fifoq.queues q ON q.id = e.queue_id
WHERE q.action = %(action)s AND e.status = 'queued' AND e.owner IS NOT NULL
ORDER BY e.seq
LIMIT 1;

-- name: commit_times
-- When the transaction that last changed each execution committed (needs
-- track_commit_timestamp = on), and when it was started, by the server's clock.
-- A finished execution never changes again, so its xmin is the transaction
-- that finished it: for a completion, also the one that admitted the next.
SELECT e.id,
       extract(epoch FROM pg_xact_commit_timestamp(e.xmin))::float8 AS committed,
       extract(epoch FROM e.started_at)::float8 AS started,
       extract(epoch FROM e.finished_at)::float8 AS finished
FROM fifoq.executions e
WHERE e.id = ANY (%(ids)s);

-- name: started_times
-- Fallback without commit timestamps: when each execution was started.
SELECT e.id,
       NULL::float8 AS committed,
       extract(epoch FROM e.started_at)::float8 AS started,
       extract(epoch FROM e.finished_at)::float8 AS finished
FROM fifoq.executions e
WHERE e.id = ANY (%(ids)s);

-- name: explain_cancel
-- Runs the cancel for real, as QueueManager.cancel does (EXPLAIN ANALYZE
-- executes it; `flush` follows); "Execution Time" is the server-side time of
-- fifoq.cancel, without parsing, planning and commit.
EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT fifoq.cancel_deferred(%(id)s);

-- name: explain_refresh_stats
-- The statement QueueManager.refresh_stats() runs (fifoq/queries.sql).
EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT fifoq.refresh_stats(true);

-- name: refresh_stats
SELECT fifoq.refresh_stats(true);

-- name: refresh_floor_create
-- PostgreSQL's own floor for the refresh: a materialized view of the same
-- columns, column storage (names inline, so no TOAST table: sql/0027), rows
-- and unique index as fifoq.queue_stats, over a plain copy of the live rows
-- (no queue probes, no policy look-ups), rebuilt by the same plain REFRESH
-- fifoq.refresh_stats(true) runs when no reader holds the view (sql/0023).
-- What remains is the command's own work: a new heap and index, their
-- files, the catalog update. Lives in the workload's scratch database.
CREATE TABLE public.bench_floor_rows AS SELECT * FROM fifoq.queue_stats_live;
CREATE MATERIALIZED VIEW public.bench_floor AS
SELECT action, "group", queue_length, active_count, max_concurrent, oldest_enqueued_at,
       total_enqueued, total_completed, total_failed, total_cancelled, total_timed_out,
       total_abandoned, clock_timestamp() AS last_updated
FROM public.bench_floor_rows
WITH NO DATA;
ALTER MATERIALIZED VIEW public.bench_floor
    ALTER COLUMN action SET STORAGE PLAIN,
    ALTER COLUMN "group" SET STORAGE PLAIN;
REFRESH MATERIALIZED VIEW public.bench_floor;  -- drops the TOAST table made with it
CREATE UNIQUE INDEX bench_floor_key ON public.bench_floor (action, "group");
CREATE FUNCTION public.bench_refresh_floor() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    REFRESH MATERIALIZED VIEW public.bench_floor;
END
$$;

-- name: explain_refresh_floor
-- Timed as fifoq.refresh_stats(true) is (a function around the REFRESH, EXPLAIN
-- ANALYZE's "Execution Time"), so the two figures compare like for like.
EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) SELECT public.bench_refresh_floor();

-- name: live_load
-- The queues the stats workload refreshes over: every action gets waiting and
-- active executions, through the real enqueue function.
SELECT count(fifoq.enqueue(%(prefix)s || a, NULL, NULL, NULL))
FROM generate_series(1, %(actions)s) AS a, generate_series(1, %(per_action)s) AS n;

-- name: stats_policies
SELECT count(fifoq.set_policy(%(prefix)s || a, %(max_concurrent)s, %(max_queue_length)s))
FROM generate_series(1, %(actions)s) AS a;

-- name: history_queues
SELECT count(fifoq.ensure_queue(%(prefix)s || a, ''))
FROM generate_series(1, %(actions)s) AS a;

-- name: history_insert
-- Finished history, written directly (bench data, not the protocol): per
-- queue, seq 1..n succeeded in seq order, a day ago. One statement.
INSERT INTO fifoq.executions (queue_id, seq, status, enqueued_at, started_at, finished_at)
SELECT q.id, s.n, 'succeeded',
       t.at, t.at, t.at + interval '1 millisecond'
FROM fifoq.queues q
CROSS JOIN generate_series(1, %(per_queue)s) AS s(n)
CROSS JOIN LATERAL (SELECT now() - interval '1 day' + s.n * interval '1 millisecond' AS at) AS t
WHERE q.action LIKE %(prefix)s || '%%';

-- name: history_counters
-- The queue counters that match the history just inserted.
UPDATE fifoq.queues
SET last_seq = last_seq + %(per_queue)s,
    total_enqueued = total_enqueued + %(per_queue)s,
    total_succeeded = total_succeeded + %(per_queue)s
WHERE action LIKE %(prefix)s || '%%';

-- name: storage_enqueue
-- Waiting executions through the real enqueue function, one batch per call.
SELECT count(fifoq.enqueue(%(action)s, NULL, NULL, NULL))
FROM generate_series(1, %(n)s);

-- name: storage_sizes
-- Bytes of the executions table and of each of its indexes (TOAST, free
-- space and visibility maps included in the table figure).
SELECT c.relname AS relation,
       CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid)
            ELSE pg_table_size(c.oid) END AS bytes
FROM pg_class c
WHERE c.oid = 'fifoq.executions'::regclass
   OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'fifoq.executions'::regclass)
ORDER BY c.relkind DESC, c.relname;

-- name: storage_total
SELECT pg_total_relation_size('fifoq.executions') AS bytes;

-- name: ceiling_table
-- The raw database ceiling: the least one execution costs, a row inserted and
-- then updated, each in a commit of its own, with nothing else around it.
CREATE TABLE fifoq_bench_ceiling (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status      text NOT NULL DEFAULT 'queued',
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

-- name: lock_table
-- The bound of fifoq's protocol on one queue: every enqueue and every
-- completion is a transaction that holds the queue's lock through its
-- commit, so one queue runs them one at a time. This row stands in for the
-- queue; its counter counts the transactions.
CREATE TABLE fifoq_bench_lock (id integer PRIMARY KEY, n bigint NOT NULL);
INSERT INTO fifoq_bench_lock VALUES (1, 0);

-- name: lock_transaction
-- What fifoq does per state change, minus the work: take the lock (held to
-- commit), change a row, commit without waiting for the disk (the deferred
-- statement), then `flush`.
WITH locked AS (SELECT pg_advisory_xact_lock(1718183599, 1),
                       set_config('synchronous_commit', 'off', true))
UPDATE fifoq_bench_lock SET n = n + 1 FROM locked WHERE id = 1;

-- name: flush
-- The durable flush that follows each deferred statement (no lock held).
CALL fifoq.flush_and_notify();

-- name: ceiling_insert
INSERT INTO fifoq_bench_ceiling DEFAULT VALUES RETURNING id;

-- name: ceiling_update
UPDATE fifoq_bench_ceiling SET status = 'succeeded', finished_at = clock_timestamp()
WHERE id = %(id)s;

-- name: ceiling_window
SELECT count(*) AS executions,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       extract(epoch FROM min(enqueued_at))::float8 AS first_enqueued,
       extract(epoch FROM max(finished_at))::float8 AS last_finished
FROM fifoq_bench_ceiling;

-- name: check_limit
-- Guarantee 1 (limit), from the history: per queue, the most executions that
-- were ever active at one instant. Every start adds one and every finish of a
-- started execution takes one away; at equal times the finish counts first,
-- because admission stamps the next started_at after the freed slot's
-- finished_at in the same transaction. Rows: one per queue over its limit.
WITH events AS (
    SELECT e.queue_id, e.started_at AS at, 1 AS delta
    FROM fifoq.executions e
    WHERE e.started_at IS NOT NULL
    UNION ALL
    SELECT e.queue_id, e.finished_at, -1
    FROM fifoq.executions e
    WHERE e.started_at IS NOT NULL AND e.finished_at IS NOT NULL
), running AS (
    SELECT ev.queue_id, ev.at,
           sum(ev.delta) OVER (PARTITION BY ev.queue_id ORDER BY ev.at, ev.delta
                               ROWS UNBOUNDED PRECEDING) AS active
    FROM events ev
), peaks AS (
    SELECT DISTINCT ON (r.queue_id) r.queue_id, r.active AS peak, r.at AS peak_at
    FROM running r
    ORDER BY r.queue_id, r.active DESC, r.at
)
SELECT 'limit' AS kind, q.action, q.group_key AS "group",
       format('%%s executions active at once at %%s, limit %%s',
              pk.peak, pk.peak_at, p.max_concurrent) AS detail
FROM peaks pk
JOIN fifoq.queues q ON q.id = pk.queue_id
LEFT JOIN LATERAL fifoq.policy_for(q.action) p ON true
WHERE pk.peak > p.max_concurrent
ORDER BY q.action, q.group_key;

-- name: check_fifo
-- Guarantee 2 (strict FIFO), from the history: an execution may start only
-- once every execution before it in its queue has left the waiting line
-- (started, or finished without starting); a still-waiting one never leaves.
-- This also catches started_at decreasing as seq grows, and duplicate seqs.
WITH ordered AS (
    SELECT e.queue_id, e.id, e.seq, e.started_at,
           max(coalesce(e.started_at, e.finished_at, 'infinity')) OVER before AS earlier_left,
           lag(e.seq) OVER (PARTITION BY e.queue_id ORDER BY e.seq, e.id) AS prev_seq
    FROM fifoq.executions e
    WINDOW before AS (PARTITION BY e.queue_id ORDER BY e.seq, e.id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT 'fifo' AS kind, q.action, q.group_key AS "group",
       CASE WHEN o.prev_seq = o.seq
            THEN format('seq %%s is used twice (execution %%s)', o.seq, o.id)
            ELSE format('execution %%s (seq %%s) started at %%s while an earlier one was '
                        'still waiting (it left the line at %%s)',
                        o.id, o.seq, o.started_at, o.earlier_left)
       END AS detail
FROM ordered o
JOIN fifoq.queues q ON q.id = o.queue_id
WHERE o.prev_seq = o.seq
   OR (o.started_at IS NOT NULL AND o.earlier_left > o.started_at)
ORDER BY q.action, q.group_key, o.seq
LIMIT 20;

-- name: check_counters
-- The queue counters against the executions they count: a drift means a
-- slot was freed twice or never.
SELECT 'counters' AS kind, q.action, q.group_key AS "group",
       format('counters say %%s queued, %%s active; the executions say %%s queued, %%s active',
              q.queued_count, q.active_count, coalesce(c.queued, 0), coalesce(c.active, 0)) AS detail
FROM fifoq.queues q
LEFT JOIN (
    SELECT e.queue_id,
           count(*) FILTER (WHERE e.status = 'queued') AS queued,
           count(*) FILTER (WHERE e.status = 'active') AS active
    FROM fifoq.executions e
    GROUP BY e.queue_id
) c ON c.queue_id = q.id
WHERE q.queued_count <> coalesce(c.queued, 0) OR q.active_count <> coalesce(c.active, 0)
ORDER BY q.action, q.group_key;
