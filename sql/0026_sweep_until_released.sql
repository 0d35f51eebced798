-- An ended executor's executions in a held queue are swept however long
-- the queue stays held, not only in the ten minutes after it ended.
-- depends: 0025_policy_admission_skips_held_queues
--
-- Why. Since 0024, fifoq.abandon_owned() skips a queue whose lock another
-- transaction holds (say, a client that enqueued into it with
-- enqueue(conn=...) and has not committed) and frees the executor's other
-- queues at once; what it left in the held queue was abandoned by
-- fifoq.maintain()'s sweep, which looks only at executors that ended in the
-- last ten minutes. A queue held longer than that kept the dead executor's
-- executions active, and their slots taken, for good: until an operator ran
-- fifoq.abandon_owned(id). SPEC §3.5: slots are freed without an operator.
--
-- Now abandon_owned() marks the executor (fifoq.executors.leftovers) when it
-- skips a queue, and clears the mark when a later call finds nothing left;
-- the sweep takes the marked executors as well as the recently ended ones.
--
-- A marked executor is swept with a 2 ms lock wait per queue, not 200 ms:
-- its queue may still be held, and every pass would wait for it again.
--
-- Cost: none on the hot path. The column has a constant default (no table
-- rewrite); the partial index holds only marked executors, normally none;
-- the mark is written only when it changes.

ALTER TABLE fifoq.executors ADD COLUMN leftovers boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN fifoq.executors.leftovers IS
    'Ended, but fifoq.abandon_owned skipped a queue another transaction held: fifoq.maintain sweeps it until '
    'nothing it owned is left queued or active.';

CREATE INDEX executors_leftovers ON fifoq.executors (id) WHERE leftovers;
COMMENT ON INDEX fifoq.executors_leftovers IS
    'Ended executors with executions left in a held queue (maintain''s sweep); normally empty.';

-- The executors that ended before this migration and still own queued or
-- active executions: the ones the ten-minute window already missed. Marked,
-- so that the first pass sweeps them.
UPDATE fifoq.executors x SET leftovers = true
WHERE x.ended_at IS NOT NULL
  AND EXISTS (SELECT FROM fifoq.executions e
              WHERE e.owner = x.id AND e.status IN ('queued', 'active'));

CREATE OR REPLACE FUNCTION fifoq.abandon_owned(p_executor bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
DECLARE
    v_queue_id integer;
    v_queued   integer;
    v_active   integer;
    v_total    integer := 0;
    v_skipped  boolean := false;
BEGIN
    -- One queue at a time, in ascending id order (the deadlock-free order),
    -- each in a subtransaction of its own: see the header.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.owner = p_executor AND e.status IN ('queued', 'active')
        ORDER BY e.queue_id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            WITH gone AS (
                UPDATE fifoq.executions e
                SET status = 'abandoned', finished_at = clock_timestamp(), deadline = NULL
                FROM fifoq.executions old
                WHERE old.id = e.id AND e.owner = p_executor AND e.queue_id = v_queue_id
                  AND e.status IN ('queued', 'active')
                RETURNING old.status AS old_status
            )
            SELECT count(*) FILTER (WHERE old_status = 'queued'),
                   count(*) FILTER (WHERE old_status = 'active')
            INTO v_queued, v_active
            FROM gone;
            UPDATE fifoq.queues
            SET queued_count = queued_count - v_queued,
                active_count = active_count - v_active,
                total_abandoned = total_abandoned + v_queued + v_active
            WHERE id = v_queue_id;
            PERFORM fifoq.admit(v_queue_id);
            v_total := v_total + v_queued + v_active;
        EXCEPTION WHEN lock_not_available THEN
            -- Another transaction holds this queue past the caller's
            -- lock_timeout (say, a client that enqueued into it and has not
            -- committed): its executions here stay for fifoq.maintain()'s
            -- sweep; the other queues are freed now.
            v_skipped := true;
        END;
    END LOOP;
    -- Mark an ended executor that left something behind, so that the sweep
    -- comes back for it however long the queue stays held; clear the mark
    -- once nothing is left. Written only when it changes: normally never.
    -- A live executor (an operator's call) is never marked: its new work
    -- is no leftover.
    UPDATE fifoq.executors x SET leftovers = v_skipped
    WHERE x.id = p_executor AND x.ended_at IS NOT NULL AND x.leftovers <> v_skipped;
    RETURN v_total;
END
$$;
COMMENT ON FUNCTION fifoq.abandon_owned(bigint) IS
    'Marks every queued or active execution of an executor abandoned, frees the slots and admits the next, '
    'queue by queue; a queue held past lock_timeout is skipped and the ended executor marked (leftovers) '
    'for fifoq.maintain''s sweep.';

CREATE OR REPLACE FUNCTION fifoq.maintain() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_queue_id  integer;
    v_executor  bigint;
    v_marked    boolean;
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
    --     after the reaper looked). And, however long ago they ended, the
    --     executors whose abandoning skipped a queue another transaction
    --     held (fifoq.executors.leftovers, set and cleared by
    --     fifoq.abandon_owned; sql/0026).
    FOR v_executor, v_marked IN
        (SELECT x.id, false FROM fifoq.executors x
         -- v_now, not clock_timestamp(): a volatile bound is no index
         -- condition, so every executor that ever ended was read, however
         -- long ago; compared with the variable it is a range of
         -- executors_ended. The ten minutes count from the pass's start.
         -- In order of ending (each executor is swept on its own, so any
         -- order will do), the index's order, and a LATERAL probe of
         -- executions_owned per executor rather than EXISTS (which may
         -- become a merge join along executors_pkey): so the generic plan
         -- that plpgsql may cache keeps to that range too.
         CROSS JOIN LATERAL (
             SELECT FROM fifoq.executions e
             WHERE e.owner = x.id AND e.status IN ('queued', 'active')
             LIMIT 1
         ) owned
         WHERE x.ended_at > v_now - interval '10 minutes'
           AND NOT x.leftovers  -- the marked ones come below, with a short wait
         ORDER BY x.ended_at, x.id)
        UNION
        -- executors_leftovers: empty unless a queue was held. No probe of
        -- what they own: abandon_owned clears the mark once nothing is
        -- left, also when the leftovers ended otherwise (cancelled, say).
        (SELECT x.id, true FROM fifoq.executors x WHERE x.leftovers)
    LOOP
        -- A marked executor's queue was held a moment ago and may still be:
        -- wait 2 ms for each of its queues' locks, not 200 (the mark brings
        -- it back next pass). Else a queue held for long would slow every
        -- pass by 200 ms per marked executor, and with it step 3 and the
        -- next pass's timeouts (a review: 6 marked, 1.2 s per pass).
        PERFORM set_config('lock_timeout', CASE WHEN v_marked THEN '2ms' ELSE '200ms' END, true);
        BEGIN
            v_abandoned := v_abandoned + fifoq.abandon_owned(v_executor);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', '200ms', true);

    -- 3. Work conservation: admit wherever a queue has waiters and a free
    --    slot. Normally nothing is found; this repairs what an aborted
    --    transaction or a policy change left behind.
    FOR v_queue_id IN
        -- The queues with waiters, with the policy in force for each as
        -- fifoq.queue_stats_live finds it (joins, not a plpgsql call per
        -- queue). The queues with waiters come from executions_queue_head
        -- (waiting executions only) by a skip scan: the lowest queue id,
        -- then the lowest above it, and so on, one index probe per queue
        -- with waiters. Collected in an array, so that each queue row is then
        -- read by id (queues_pkey); as a join the planner may walk them all.
        -- Before, every queue was read through queues_pkey and filtered on
        -- queued_count: 24 ms per pass with 100,000 queues, nearly all idle.
        -- A partial index on queues WHERE queued_count > 0 would find them
        -- too, but it makes every update that changes queued_count (each
        -- enqueue, each admission) a non-HOT update: 2 of 3 updates of a
        -- busy queue's row in a test, each then inserting into every index
        -- of queues.
        SELECT q.id FROM fifoq.queues q
        LEFT JOIN fifoq.policies own ON own.action = q.action
        LEFT JOIN fifoq.policies pack ON pack.action = fifoq.pack_pattern(q.action)
        LEFT JOIN fifoq.policies dflt ON dflt.action = '*'
        WHERE q.id = ANY (ARRAY(
                  WITH RECURSIVE waiting(queue_id) AS (
                      SELECT (SELECT e.queue_id FROM fifoq.executions e
                              WHERE e.status = 'queued'
                              ORDER BY e.queue_id LIMIT 1)
                      UNION ALL
                      SELECT (SELECT e.queue_id FROM fifoq.executions e
                              WHERE e.status = 'queued' AND e.queue_id > w.queue_id
                              ORDER BY e.queue_id LIMIT 1)
                      FROM waiting w WHERE w.queue_id IS NOT NULL
                  )
                  SELECT queue_id FROM waiting WHERE queue_id IS NOT NULL))
          AND q.queued_count > 0
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
-- The comment of fifoq.maintain is kept by CREATE OR REPLACE.
