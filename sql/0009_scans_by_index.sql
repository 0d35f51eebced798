-- Scans that an index can serve: the queue-timeout pass of fifoq.maintain and
-- the policy lookup of fifoq.queue_stats_live.
-- depends: 0008_batches
--
-- Why. Two reads grew with the data instead of staying index probes, found
-- with pg_stat_statements while the bench ran:
--   * maintain() looked for expired waiters with "deadline <=
--     clock_timestamp()". clock_timestamp() is volatile, so the planner
--     cannot use it as an index condition: executions_deadline was read
--     whole and every waiting row filtered, 4.4 ms per pass with 6,000
--     waiting (every connected executor runs a pass about twice a second).
--     It now compares with the pass's start time held in a variable: one
--     range probe, 0.04 ms.
--   * queue_stats_live found each queue's limit with a LATERAL subquery
--     (ORDER BY ... LIMIT 1 over the three candidate policies), which the
--     planner ran once per queue, each a scan of fifoq.policies: 3.4 ms
--     for 100 queues with 100 policies. Three hash joins (own, pack,
--     default) do it for all queues at once: 0.24 ms. maintain's own
--     per-queue call of fifoq.policy_for becomes the same joins.
-- Nothing changes in what they return.

CREATE OR REPLACE VIEW fifoq.queue_stats_live AS
SELECT q.action,
       q.group_key AS "group",
       q.queued_count AS queue_length,
       q.active_count,
       -- fifoq.policy_for written as joins: the action's own policy, else
       -- its pack's, else the default (max_concurrent is never NULL in a
       -- policy row, so the first row found wins).
       coalesce(own.max_concurrent, pack.max_concurrent, dflt.max_concurrent) AS max_concurrent,
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
LEFT JOIN fifoq.policies own ON own.action = q.action
LEFT JOIN fifoq.policies pack ON pack.action = split_part(q.action, '.', 1) || '.*'
LEFT JOIN fifoq.policies dflt ON dflt.action = '*';
-- The view's and its columns' comments are kept by CREATE OR REPLACE.

CREATE OR REPLACE FUNCTION fifoq.maintain() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue_id  integer;
    v_executor  bigint;
    v_timed_out integer := 0;
    v_reaped    integer := 0;
    v_abandoned integer := 0;
    v_admitted  integer := 0;
    v_n         integer;
    v_now       timestamptz;
BEGIN
    -- Every connected executor calls this about twice a second; one at a
    -- time does the work, the others return at once.
    IF NOT pg_try_advisory_xact_lock(1718183539, 0) THEN
        RETURN NULL;
    END IF;
    -- Never wait long behind a busy queue (for example a client transaction
    -- that enqueued and has not committed yet): skip it, retry next pass.
    PERFORM set_config('lock_timeout', '200ms', true);
    -- The pass's one "now". Compared with a variable, deadline <= v_now is a
    -- range condition of executions_deadline; with clock_timestamp()
    -- (volatile, so no index condition) every waiting row was read and
    -- filtered: 4.4 ms per pass with 6,000 waiting, linear in the backlog.
    v_now := clock_timestamp();

    -- 1. Queue timeouts, enforced here whether or not anyone waits.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.status = 'queued' AND e.deadline <= v_now
        ORDER BY e.queue_id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            WITH expired AS (
                UPDATE fifoq.executions e
                SET status = 'timed_out', finished_at = clock_timestamp(), deadline = NULL
                WHERE e.queue_id = v_queue_id AND e.status = 'queued' AND e.deadline <= v_now
                RETURNING e.id, e.owner
            ), told AS (
                SELECT fifoq.notify_owner(owner, id, 'timed_out') FROM expired
            )
            SELECT count(*) INTO v_n FROM told;
            UPDATE fifoq.queues
            SET queued_count = queued_count - v_n, total_timed_out = total_timed_out + v_n
            WHERE id = v_queue_id;
            v_timed_out := v_timed_out + v_n;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 2. Reap executors whose lease ran out: their executions are abandoned.
    --    Not in the first lease after a server start: executors that lived
    --    through a restart get one lease to reconnect and keep their work.
    FOR v_executor IN
        SELECT x.id FROM fifoq.executors x
        WHERE x.ended_at IS NULL
          AND x.heartbeat_at + x.lease * interval '1 second' < clock_timestamp()
          AND pg_postmaster_start_time() + x.lease * interval '1 second' < clock_timestamp()
        ORDER BY x.id
    LOOP
        BEGIN
            UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'lease expired'
            WHERE id = v_executor;
            v_abandoned := v_abandoned + fifoq.abandon_owned(v_executor);
            v_reaped := v_reaped + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 2b. Sweep: anything still queued or active under an executor that
    --     ended in the last ten minutes is abandoned too. It catches an
    --     execution given to an executor in the instant it was being reaped
    --     or closed (the owner check of executions_owner_alive reads the
    --     executor row without a lock, so such an insert can commit just
    --     after the reaper looked), and a reaping cut short by lock_timeout.
    FOR v_executor IN
        SELECT x.id FROM fifoq.executors x
        WHERE x.ended_at > clock_timestamp() - interval '10 minutes'
          AND EXISTS (SELECT 1 FROM fifoq.executions e
                      WHERE e.owner = x.id AND e.status IN ('queued', 'active'))
        ORDER BY x.id
    LOOP
        BEGIN
            v_abandoned := v_abandoned + fifoq.abandon_owned(v_executor);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 3. Work conservation: admit wherever a queue has waiters and a free
    --    slot. Normally nothing is found; this repairs what an aborted
    --    transaction or a policy change left behind.
    FOR v_queue_id IN
        -- The policy in force, as fifoq.queue_stats_live finds it (joins,
        -- not a plpgsql call per queue), for the queues with waiters only.
        SELECT q.id FROM fifoq.queues q
        LEFT JOIN fifoq.policies own ON own.action = q.action
        LEFT JOIN fifoq.policies pack ON pack.action = split_part(q.action, '.', 1) || '.*'
        LEFT JOIN fifoq.policies dflt ON dflt.action = '*'
        WHERE q.queued_count > 0
          AND q.active_count < coalesce(own.max_concurrent, pack.max_concurrent,
                                        dflt.max_concurrent, q.active_count + 1)
        ORDER BY q.id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            v_admitted := v_admitted + fifoq.admit(v_queue_id);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    RETURN jsonb_build_object('timed_out', v_timed_out, 'reaped', v_reaped,
                              'abandoned', v_abandoned, 'admitted', v_admitted);
END
$$;
-- The function's comment is kept by CREATE OR REPLACE.
