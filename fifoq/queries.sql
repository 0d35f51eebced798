-- The SQL that fifoq's Python code runs, one query per `-- name:` block.
-- State changes are calls of the functions in sql/0002_protocol.sql, so each
-- API operation is one statement. On fifoq's own connections they run in
-- their deferred form (sql/0006_flush_outside_lock.sql): the statement
-- commits without waiting for the disk, so the queue lock is not held
-- through the flush, and `flush` follows on the same connection before the
-- call returns. Payloads and results arrive as JSON text (already validated
-- and size-checked in Python) and are cast to jsonb here.

-- name: enqueue
-- Enqueue inside the caller's transaction (enqueue(conn=...)): durable with
-- its commit. The payload is left out of the answer: the caller has it.
SELECT id, action, "group", seq, status, NULL::jsonb AS payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.enqueue(%(action)s, %(payload)s::jsonb, %(group)s, %(owner)s);

-- name: enqueue_deferred
SELECT id, action, "group", seq, status, NULL::jsonb AS payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.enqueue_deferred(%(action)s, %(payload)s::jsonb, %(group)s, %(owner)s, %(request)s);

-- name: enqueue_many
-- Many enqueues of one action in one statement, in the caller's transaction.
-- Rows come back in input order; payloads are left out (the caller has them).
SELECT id, action, "group", seq, status, NULL::jsonb AS payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.enqueue_many(%(action)s, %(payloads)s::jsonb[], %(group)s, %(owner)s);

-- name: enqueue_many_deferred
SELECT id, action, "group", seq, status, NULL::jsonb AS payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.enqueue_many_deferred(%(action)s, %(payloads)s::jsonb[], %(group)s, %(owner)s,
                                  %(request)s);

-- name: flush
-- After a *_deferred statement, on the same connection: returns once that
-- statement's commit is on disk, then sends the notifications it held back.
CALL fifoq.flush_and_notify();

-- name: watch
-- Become the owner of an execution one is about to wait on.
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.watch_deferred(%(id)s, %(executor)s);

-- name: complete
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.complete_deferred(%(id)s, %(result)s::jsonb, %(error)s);

-- name: complete_many
-- Many completions in one statement, all or nothing; rows in input order,
-- then (a worker's call, claimer set) the executions it was given at once.
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.complete_many_deferred(%(ids)s::bigint[], %(results)s::jsonb[], %(errors)s::text[],
                                  %(claimer)s, %(actions)s::text[], %(limit)s);

-- name: cancel
SELECT fifoq.cancel_deferred(%(id)s) AS cancelled;

-- name: time_out
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.time_out_deferred(%(id)s);

-- name: get
-- Primary-key lookup joined to the (small) queues table.
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.execution_details
WHERE id = %(id)s;

-- name: list_executions
-- The live executions of an action's queues (all groups, or one): the active
-- ones, then the waiting line in the order it will start. Neither part reads
-- the finished history, so the cost does not grow with it:
-- - active rows come from the two partial indexes that together hold every
--   one: executions_unclaimed (queue_id, seq; active and unowned) and
--   executions_owned (owner; live and owned, scanned whole: it holds only
--   live executions of connected executors);
-- - waiting rows from executions_queue_head (queue_id, seq; queued),
--   starting at each queue's line start (admitted_seq, see 0012), at most
--   %(limit)s per queue before the overall limit.
-- No locks: a plain read, so a row may be a flush ahead of its waiter.
WITH action_queues AS (
    SELECT id, action, group_key, admitted_seq
    FROM fifoq.queues
    WHERE action = %(action)s
      AND (%(group)s::text IS NULL OR group_key = %(group)s::text)
), live AS (
    SELECT e.*, q.action, q.group_key
    FROM action_queues q JOIN fifoq.executions e ON e.queue_id = q.id
    WHERE e.status = 'active' AND e.owner IS NULL
    UNION ALL
    SELECT e.*, q.action, q.group_key
    FROM fifoq.executions e JOIN action_queues q ON q.id = e.queue_id
    WHERE e.status = 'active' AND e.owner IS NOT NULL
    UNION ALL
    SELECT w.*, q.action, q.group_key
    FROM action_queues q
    CROSS JOIN LATERAL (
        SELECT e.* FROM fifoq.executions e
        WHERE e.queue_id = q.id AND e.status = 'queued' AND e.seq > q.admitted_seq
        ORDER BY e.seq
        LIMIT %(limit)s
    ) w
)
SELECT id, action, group_key AS "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM live
ORDER BY group_key, status = 'queued', seq
LIMIT %(limit)s;

-- name: claim
-- A worker takes admitted executions that nobody owns yet.
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.claim_deferred(%(executor)s, %(actions)s::text[], %(limit)s);

-- name: set_policy
SELECT * FROM fifoq.set_policy(%(action)s, %(max_concurrent)s, %(max_queue_length)s,
                               %(queue_timeout)s, %(on_limit)s, %(group_by)s);

-- name: delete_policy
-- No row when none was set (the function returns NULL then).
SELECT * FROM fifoq.delete_policy(%(action)s) WHERE action IS NOT NULL;

-- name: get_policy
-- NULL action means no policy applies: the action is unlimited.
SELECT * FROM fifoq.policy_for(%(action)s) WHERE action IS NOT NULL;

-- name: list_policies
SELECT * FROM fifoq.policies ORDER BY action;

-- name: stats_live_all
SELECT * FROM fifoq.queue_stats_live ORDER BY action, "group";

-- name: stats_live_action
-- One action's queues: all its groups (group NULL), or one queue (stats(),
-- where the default group is ''). The filter reaches fifoq.queues
-- through the view, so this reads the action's rows by queues_action_group_key
-- instead of every queue.
SELECT * FROM fifoq.queue_stats_live
WHERE action = %(action)s AND (%(group)s::text IS NULL OR "group" = %(group)s::text)
ORDER BY "group";

-- name: refresh_stats
-- true: rebuild rather than diff (sql/0023). Safe here because this statement
-- is its own transaction (autocommit): the rebuild's lock ends with it.
SELECT fifoq.refresh_stats(true);

-- name: snapshot_stats
SELECT * FROM fifoq.queue_stats ORDER BY action, "group";

-- name: register_executor
SELECT fifoq.register_executor(%(name)s, %(hostname)s, %(pid)s, %(lease)s) AS id;

-- name: attach_executor
-- Run on the listener connection: its session then holds the executor's lock.
SELECT fifoq.attach_executor(%(executor)s);

-- name: heartbeat
SELECT execution_id, status FROM fifoq.heartbeat(%(executor)s, %(watching)s);

-- name: unregister_executor
SELECT fifoq.unregister_executor(%(executor)s) AS abandoned;

-- name: maintain
SELECT fifoq.maintain() AS summary;

-- name: status
-- An execution's status and owner, by primary key (checking a change after a lost flush).
SELECT status, owner FROM fifoq.executions WHERE id = %(id)s;

-- name: purge
-- One batch of retention (oldest finished executions first); see fifoq.purge.
SELECT fifoq.purge(%(older_than)s, %(limit)s) AS purged;

-- The queries below run only after a connection was lost with no SQLSTATE
-- while a state change was in flight (see fifoq/statements.py): the change
-- may have committed although its answer never came.

-- name: end_backend
-- The lost connection's backend: ended, waiting up to 5 s for it to exit, so
-- that the statement either committed or never will. Idle too: the server
-- may not have received the statement yet (a packet in flight when the
-- client saw the reset), and would run it after any look. Only a backend
-- that started before the lost attempt had its connection (not a later one
-- that reuses the pid), that ran only fifoq's statements as far as can be
-- seen (the last or current one is fifoq's, or none yet: a pid reused since
-- (a crash ended ours) by another application's session of the same role
-- is left alone), of this role. No row: nothing to end. ended false: it did
-- not exit in time.
SELECT pg_terminate_backend(pid, 5000) AS ended
FROM pg_stat_activity
WHERE pid = %(pid)s
  AND backend_start < clock_timestamp() - make_interval(secs => %(elapsed)s)
  AND (query = '' OR strpos(query, 'fifoq.') > 0)
  AND usename = current_user;  -- ours ran as this role; another's may not be ended

-- name: find_request
-- The executions a lost enqueue call stored, by its request token (sql/0021):
-- none if it did not commit. The token is not indexed; the primary key
-- range starts at the last execution enqueued a second before the call
-- began (ids and enqueued_at grow together, give or take microseconds), so
-- only the executions created since are read. Payloads are left out, as in
-- enqueue_deferred.
SELECT d.id, d.action, d."group", d.seq, d.status, NULL::jsonb AS payload, d.result, d.error,
       d.enqueued_at, d.started_at, d.finished_at, d.owner
FROM fifoq.execution_details d
WHERE d.id IN (
    SELECT e.id FROM fifoq.executions e
    WHERE e.request = %(request)s
      AND e.id > coalesce((SELECT b.id FROM fifoq.executions b
                           WHERE b.enqueued_at < clock_timestamp()
                                                 - make_interval(secs => %(elapsed)s + 1)
                           ORDER BY b.id DESC
                           LIMIT 1), 0))
ORDER BY d.id;

-- name: find_completed
-- Which of a lost completion's executions are finished with exactly the
-- outcome it asked for (status, result and error): all of them means it
-- committed (a batch is all or nothing). Rows in input order.
SELECT d.id, d.action, d."group", d.seq, d.status, d.payload, d.result, d.error,
       d.enqueued_at, d.started_at, d.finished_at, d.owner
FROM unnest(%(ids)s::bigint[], %(results)s::jsonb[], %(errors)s::text[])
         WITH ORDINALITY AS i(id, result, error, n)
JOIN fifoq.execution_details d ON d.id = i.id
WHERE d.status = CASE WHEN i.error IS NULL THEN 'succeeded' ELSE 'failed' END::fifoq.execution_status
  AND d.result IS NOT DISTINCT FROM i.result
  AND d.error IS NOT DISTINCT FROM i.error
ORDER BY i.n;

-- name: adopt
-- A worker's executions it does not know of: active, owned by its executor,
-- of its actions (NULL: any), not among those it runs. A claim whose answer
-- was lost leaves these (executions_owned holds every live owned one).
SELECT id, action, "group", seq, status, payload, result, error,
       enqueued_at, started_at, finished_at, owner
FROM fifoq.execution_details
WHERE owner = %(executor)s AND status = 'active'
  AND (%(actions)s::text[] IS NULL OR action = ANY (%(actions)s::text[]))
  AND NOT id = ANY (%(known)s::bigint[])
ORDER BY seq;
