-- Reverts 0019_bounded_scans.sql: fifoq.purge as 0007 made it, fifoq.maintain as
-- 0015 made it, fifoq.claim as 0002 made it (with 0011's setting), and no BRIN index.

CREATE OR REPLACE FUNCTION fifoq.purge(p_older_than interval, p_limit integer DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_cutoff    timestamptz;
    v_purged    bigint;
    v_executors bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid retention %s: must be a duration of zero or more', coalesce(p_older_than::text, 'NULL'));
    END IF;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid purge limit %s: must be at least 1', coalesce(p_limit::text, 'NULL'));
    END IF;
    -- Capped: a cutoff before 4713 BC is out of timestamp range, and nothing
    -- finished a thousand years ago anyway.
    v_cutoff := clock_timestamp() - least(p_older_than, interval '1000 years');

    -- No queue lock: terminal rows are never written again, and no fifoq
    -- function reads them to decide anything. Walks executions_pkey from the
    -- oldest id (ids grow with enqueue time, so old finished rows come
    -- first) and stops after p_limit matches: no index on finished_at is
    -- kept for this, which would cost every completion an index insertion.
    -- SKIP LOCKED: a row an operator holds is left for the next call.
    WITH doomed AS (
        SELECT e.id FROM fifoq.executions e
        WHERE e.status NOT IN ('queued', 'active') AND e.finished_at < v_cutoff
        ORDER BY e.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM fifoq.executions e USING doomed WHERE e.id = doomed.id;
    GET DIAGNOSTICS v_purged = ROW_COUNT;

    -- Ended executors owning nothing live. The maintenance sweep looks at
    -- executors ended in the last ten minutes, so never purge those.
    DELETE FROM fifoq.executors x
    WHERE x.ended_at < least(v_cutoff, clock_timestamp() - interval '10 minutes')
      AND NOT EXISTS (SELECT 1 FROM fifoq.executions e
                      WHERE e.owner = x.id AND e.status IN ('queued', 'active'));
    GET DIAGNOSTICS v_executors = ROW_COUNT;

    RETURN jsonb_build_object('executions', v_purged, 'executors', v_executors);
END
$$;

CREATE OR REPLACE FUNCTION fifoq.maintain() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
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
        LEFT JOIN fifoq.policies pack ON pack.action = fifoq.pack_pattern(q.action)
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

CREATE OR REPLACE FUNCTION fifoq.claim(p_executor bigint, p_actions text[], p_limit integer)
RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue record;
    v_taken integer := 0;
    v_id    bigint;
BEGIN
    -- Workers take admitted, unowned executions of their actions, oldest
    -- admission first. Queues whose lock is busy are skipped, not waited for;
    -- the notification of the next admission brings the worker back.
    FOR v_queue IN
        SELECT DISTINCT e.queue_id
        FROM fifoq.executions e
        JOIN fifoq.queues q ON q.id = e.queue_id
        WHERE e.status = 'active' AND e.owner IS NULL
          AND (p_actions IS NULL OR q.action = ANY (p_actions))
        ORDER BY e.queue_id
    LOOP
        EXIT WHEN v_taken >= p_limit;
        CONTINUE WHEN NOT fifoq.try_lock_queue(v_queue.queue_id);
        -- One row at a time in seq order (executions_unclaimed), so the
        -- result lists each queue's executions in the order they were admitted.
        FOR v_id IN
            SELECT u.id FROM fifoq.executions u
            WHERE u.queue_id = v_queue.queue_id AND u.status = 'active' AND u.owner IS NULL
            ORDER BY u.seq
            LIMIT p_limit - v_taken
        LOOP
            UPDATE fifoq.executions SET owner = p_executor WHERE id = v_id;
            v_taken := v_taken + 1;
            RETURN QUERY SELECT * FROM fifoq.execution_details WHERE id = v_id;
        END LOOP;
    END LOOP;
END
$$;
ALTER FUNCTION fifoq.claim(bigint, text[], integer) SET enable_seqscan = off;

DROP INDEX fifoq.executions_enqueued_brin;
