-- Reverts 0009_scans_by_index.sql: the view and fifoq.maintain exactly as
-- 0003 and 0002 created them.
CREATE OR REPLACE VIEW fifoq.queue_stats_live AS
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
BEGIN
    -- Every connected executor calls this about twice a second; one at a
    -- time does the work, the others return at once.
    IF NOT pg_try_advisory_xact_lock(1718183539, 0) THEN
        RETURN NULL;
    END IF;
    -- Never wait long behind a busy queue (for example a client transaction
    -- that enqueued and has not committed yet): skip it, retry next pass.
    PERFORM set_config('lock_timeout', '200ms', true);

    -- 1. Queue timeouts, enforced here whether or not anyone waits.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.status = 'queued' AND e.deadline <= clock_timestamp()
        ORDER BY e.queue_id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            WITH expired AS (
                UPDATE fifoq.executions e
                SET status = 'timed_out', finished_at = clock_timestamp(), deadline = NULL
                WHERE e.queue_id = v_queue_id AND e.status = 'queued' AND e.deadline <= clock_timestamp()
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
        SELECT q.id FROM fifoq.queues q
        CROSS JOIN LATERAL fifoq.policy_for(q.action) p
        WHERE q.queued_count > 0
          AND (p.max_concurrent IS NULL OR q.active_count < p.max_concurrent)
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
