-- The checks and figures of `fifoq demo` (fifoq/demo.py), one query per
-- `-- name:` block. They read only fifoq's tables, so the same questions can
-- be asked by hand in psql after a demo run with --dsn (replace the
-- parameters: prefix 'demo.%', first_id 1).

-- name: max_active
-- The most executions that held a slot at one instant, per queue, from the
-- started_at/finished_at intervals of the whole history. At equal timestamps
-- a release sorts before an acquisition: a completion hands its slot on in
-- the same transaction, at a later clock_timestamp().
WITH q AS (
    SELECT id, action, group_key FROM fifoq.queues WHERE action LIKE %(prefix)s
), ev AS (
    SELECT e.queue_id, e.started_at AS at, 1 AS delta
    FROM fifoq.executions e JOIN q ON q.id = e.queue_id
    WHERE e.started_at IS NOT NULL
    UNION ALL
    SELECT e.queue_id, e.finished_at, -1
    FROM fifoq.executions e JOIN q ON q.id = e.queue_id
    WHERE e.started_at IS NOT NULL AND e.finished_at IS NOT NULL
), running AS (
    SELECT queue_id,
           sum(delta) OVER (PARTITION BY queue_id ORDER BY at, delta
                            ROWS UNBOUNDED PRECEDING) AS active
    FROM ev
)
SELECT q.action, q.group_key AS "group", p.max_concurrent,
       coalesce(max(r.active), 0)::integer AS max_active
FROM q
LEFT JOIN running r ON r.queue_id = q.id
LEFT JOIN LATERAL fifoq.policy_for(q.action) p ON true
GROUP BY q.action, q.group_key, p.max_concurrent
ORDER BY q.action, q.group_key;

-- name: fifo
-- Per queue: executions that started before one with a lower seq
-- (out_of_order), and executions that started while one with a lower seq
-- was still waiting and never started (overtaken). Both must be 0.
WITH q AS (
    SELECT id, action, group_key FROM fifoq.queues WHERE action LIKE %(prefix)s
), started AS (
    SELECT e.queue_id, e.started_at,
           lag(e.started_at) OVER (PARTITION BY e.queue_id ORDER BY e.seq) AS prev_started
    FROM fifoq.executions e JOIN q ON q.id = e.queue_id
    WHERE e.started_at IS NOT NULL
), out_of_order AS (
    SELECT queue_id, count(*) AS n FROM started
    WHERE started_at < prev_started
    GROUP BY queue_id
), overtaken AS (
    SELECT w.queue_id, count(*) AS n
    FROM fifoq.executions w
    JOIN q ON q.id = w.queue_id
    JOIN fifoq.executions s
      ON s.queue_id = w.queue_id AND s.seq > w.seq AND s.started_at IS NOT NULL
    WHERE w.started_at IS NULL
      AND (w.finished_at IS NULL OR w.finished_at > s.started_at)
    GROUP BY w.queue_id
)
SELECT q.action, q.group_key AS "group",
       coalesce(o.n, 0)::integer AS out_of_order,
       coalesce(t.n, 0)::integer AS overtaken
FROM q
LEFT JOIN out_of_order o ON o.queue_id = q.id
LEFT JOIN overtaken t ON t.queue_id = q.id
ORDER BY q.action, q.group_key;

-- name: figures
-- What happened to this run's executions, per queue, and how long they waited.
SELECT q.action, q.group_key AS "group",
       count(*)::integer AS executions,
       count(*) FILTER (WHERE e.status = 'succeeded')::integer AS succeeded,
       count(*) FILTER (WHERE e.status = 'failed')::integer AS failed,
       count(*) FILTER (WHERE e.status = 'cancelled')::integer AS cancelled,
       count(*) FILTER (WHERE e.status = 'timed_out')::integer AS timed_out,
       count(*) FILTER (WHERE e.status = 'abandoned')::integer AS abandoned,
       count(*) FILTER (WHERE e.status IN ('queued', 'active'))::integer AS unfinished,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM e.started_at - e.enqueued_at)) AS wait_p50,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM e.started_at - e.enqueued_at)) AS wait_p99,
       min(e.enqueued_at) AS first_enqueued,
       max(e.finished_at) AS last_finished,
       count(DISTINCT e.owner)::integer AS owners
FROM fifoq.executions e
JOIN fifoq.queues q ON q.id = e.queue_id
WHERE q.action LIKE %(prefix)s AND e.id >= %(first_id)s
GROUP BY q.action, q.group_key
ORDER BY q.action, q.group_key;

-- name: workers
-- Which executors ran this run's executions, and how many each.
SELECT x.id, x.name, x.pid, count(*)::integer AS executions
FROM fifoq.executions e
JOIN fifoq.queues q ON q.id = e.queue_id
JOIN fifoq.executors x ON x.id = e.owner
WHERE q.action LIKE %(prefix)s AND e.id >= %(first_id)s
GROUP BY x.id, x.name, x.pid
ORDER BY x.id;

-- name: workers_connected
-- How many of the demo's worker processes are connected executors: a worker
-- registers before it claims anything, so once all are, work is spread
-- over all of them from the first execution on.
SELECT count(DISTINCT pid)::integer AS connected
FROM fifoq.executors
WHERE pid = ANY (%(pids)s) AND ended_at IS NULL;

-- name: unfinished
-- This run's executions still waiting or running.
SELECT count(*)::integer AS n
FROM fifoq.executions e
JOIN fifoq.queues q ON q.id = e.queue_id
WHERE q.action LIKE %(prefix)s AND e.id >= %(first_id)s AND e.status IN ('queued', 'active');
