-- Queue statistics: a live view and the materialized view fifoq.queue_stats.
-- depends: 0002_protocol
--
-- Both read the counters of fifoq.queues (one row per queue) plus one index
-- probe per queue for the oldest waiter, never the execution history: a
-- refresh costs the same with a million finished executions as with none.

CREATE VIEW fifoq.queue_stats_live AS
SELECT q.action,
       q.group_key AS "group",
       q.queued_count AS queue_length,
       q.active_count,
       p.max_concurrent,
       (SELECT e.enqueued_at FROM fifoq.executions e
         WHERE e.queue_id = q.id AND e.status = 'queued'
         ORDER BY e.seq LIMIT 1) AS oldest_enqueued_at,   -- executions_queue_head
       q.total_enqueued,
       q.total_succeeded + q.total_failed AS total_completed,
       q.total_failed,
       q.total_cancelled,
       q.total_timed_out,
       q.total_abandoned,
       clock_timestamp() AS last_updated
FROM fifoq.queues q
-- The lookup of fifoq.policy_for (the action's own policy, else its pack's,
-- else the default), written out so the planner runs it as one index probe
-- per queue: a plpgsql function called per row cost about 0.1 ms each, most
-- of a refresh with a hundred queues.
LEFT JOIN LATERAL (
    SELECT pol.max_concurrent
    FROM fifoq.policies pol
    WHERE pol.action IN (q.action, split_part(q.action, '.', 1) || '.*', '*')
    ORDER BY CASE pol.action WHEN q.action THEN 0 WHEN '*' THEN 2 ELSE 1 END
    LIMIT 1
) p ON true;
COMMENT ON VIEW fifoq.queue_stats_live IS
    'Live statistics per queue (action, group), computed from the queue counters at query time.';
COMMENT ON COLUMN fifoq.queue_stats_live.queue_length IS 'Executions waiting (not counting active ones).';
COMMENT ON COLUMN fifoq.queue_stats_live.max_concurrent IS 'Limit of the policy in force; NULL: unlimited.';
COMMENT ON COLUMN fifoq.queue_stats_live.total_completed IS 'Succeeded plus failed.';

CREATE MATERIALIZED VIEW fifoq.queue_stats AS
SELECT * FROM fifoq.queue_stats_live;
COMMENT ON MATERIALIZED VIEW fifoq.queue_stats IS
    'Snapshot of fifoq.queue_stats_live, refreshed by fifoq.refresh_stats() (CONCURRENTLY, so readers never block).';

-- REFRESH ... CONCURRENTLY needs a unique index over all rows.
CREATE UNIQUE INDEX queue_stats_action_group ON fifoq.queue_stats (action, "group");
COMMENT ON INDEX fifoq.queue_stats_action_group IS 'One row per queue; required for REFRESH CONCURRENTLY.';

CREATE FUNCTION fifoq.refresh_stats() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY fifoq.queue_stats;
END
$$;
COMMENT ON FUNCTION fifoq.refresh_stats() IS 'Refreshes fifoq.queue_stats without blocking its readers.';
