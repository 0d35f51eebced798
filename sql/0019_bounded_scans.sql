-- Scans bounded by what they look for, not by the size of the tables.
-- depends: 0018_distinct_group_by
--
-- Four statements read far more than they return once tables grow (found by
-- a scale audit; the figures below were measured again for this migration,
-- PostgreSQL 15, 2 cores, warm cache):
--
-- 1. fifoq.purge. With few rows old enough (the last batch of every
--    `fifoq purge` run, which stops at the first short batch), it read and
--    sorted the whole finished history: 471 ms with 5M rows and none to
--    delete, 474 ms with 900. A row that finished before the cutoff was
--    enqueued before it too, so purge also asks for enqueued_at < cutoff,
--    which a BRIN index answers (0.7 and 3.9 ms): it keeps a min and max
--    per 128 pages (32 kB for those 5M rows, 510 MB), and old rows sit in
--    the first pages, since rows are appended as they are enqueued. The
--    summaries are made by autovacuum when a range fills (autosummarize)
--    and by VACUUM, not by the insert: enqueue + complete took 1.205 ms
--    with the index, 1.186 ms without (medians of 10 interleaved rounds of
--    3,000, within their spread). Caveat: a summary only widens, so pages
--    that purge empties and new rows refill keep their old minimum until
--    the index is rebuilt (REINDEX ... CONCURRENTLY); a purge then reads
--    those pages too: at worst the whole table, as before (measured: after
--    purging the oldest 700,000 rows and appending 700,000 new ones into
--    the freed pages, 128 ms instead of 0.7). The clock is
--    read once for both deletes, and the delete is planned with its actual
--    cutoff and limit on every call (EXECUTE ... USING): the generic plan
--    that plpgsql may cache after five calls (a `fifoq purge` run makes
--    one call per batch) does not know them, and walks executions_pkey
--    end to end when few rows qualify (1.8 s with 5M rows, none old enough).
-- 2. fifoq.maintain, step 2b, compared ended_at with clock_timestamp() -
--    10 minutes: a volatile bound is no index condition, so every executor
--    that ever ended was read. It uses the pass's v_now.
-- 3. fifoq.maintain, step 3 (admit wherever a slot is free), read every
--    queue; it now finds the queues with waiters in executions_queue_head.
--    With 100,000 idle queues, 100,000 executors ended a day ago and
--    20,000 live owned executions, a pass took 29.3 ms, now 0.6 ms. Every
--    executor calls maintain about twice a second, so with many executors
--    passes run back to back.
-- 4. fifoq.claim with a list of actions could read every unclaimed
--    execution of every action to keep those of its actions (its generic
--    plan: 2.4 ms with 10,000 unclaimed of other actions, now 0.7 ms). It
--    starts from the actions' queues when given actions; with NULL (any
--    action) it reads executions_unclaimed as before.

-- 1. Purge: executions by enqueue time, one summary per 128 pages.
CREATE INDEX executions_enqueued_brin ON fifoq.executions USING brin (enqueued_at)
    WITH (autosummarize = on);
COMMENT ON INDEX fifoq.executions_enqueued_brin IS
    'Page ranges by enqueue time (purge: where rows enqueued before the cutoff can be). BRIN, summarised by '
    'autovacuum, not by the insert.';

CREATE OR REPLACE FUNCTION fifoq.purge(p_older_than interval, p_limit integer DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_now       timestamptz;
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
    -- One clock reading for both deletes. Capped: a cutoff before 4713 BC is
    -- out of timestamp range, and nothing finished a thousand years ago anyway.
    v_now := clock_timestamp();
    v_cutoff := v_now - least(p_older_than, interval '1000 years');

    -- No queue lock: terminal rows are never written again, and no fifoq
    -- function reads them to decide anything. SKIP LOCKED: a row an
    -- operator holds is left for the next call.
    --
    -- enqueued_at < cutoff adds nothing to the result (enqueued_at <=
    -- finished_at) but bounds the scan: executions_enqueued_brin gives the
    -- page ranges that can hold rows enqueued before the cutoff, and when
    -- few qualify the planner reads only those (a bitmap scan, then a
    -- sort by id of what it found). When many qualify it walks
    -- executions_pkey from the oldest id (ids grow with enqueue time, so old
    -- finished rows come first) and stops after p_limit. Which of the two
    -- depends on the cutoff and the limit, so the statement is planned
    -- with their values on every call (EXECUTE ... USING) rather than once
    -- per session with placeholders. No index on finished_at is kept for
    -- this, which would cost every completion an index insertion.
    EXECUTE
        'WITH doomed AS (
             SELECT e.id FROM fifoq.executions e
             WHERE e.enqueued_at < $1
               AND e.status NOT IN (''queued'', ''active'') AND e.finished_at < $1
             ORDER BY e.id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         DELETE FROM fifoq.executions e USING doomed WHERE e.id = doomed.id'
        USING v_cutoff, p_limit;
    GET DIAGNOSTICS v_purged = ROW_COUNT;

    -- Ended executors owning nothing live. The maintenance sweep looks at
    -- executors ended in the last ten minutes, so never purge those.
    DELETE FROM fifoq.executors x
    WHERE x.ended_at < least(v_cutoff, v_now - interval '10 minutes')
      AND NOT EXISTS (SELECT 1 FROM fifoq.executions e
                      WHERE e.owner = x.id AND e.status IN ('queued', 'active'));
    GET DIAGNOSTICS v_executors = ROW_COUNT;

    RETURN jsonb_build_object('executions', v_purged, 'executors', v_executors);
END
$$;
-- The comment of fifoq.purge is kept by CREATE OR REPLACE.

-- 2 and 3. maintain.
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
        -- v_now, not clock_timestamp(): a volatile bound is no index
        -- condition, so every executor that ever ended was read, however
        -- long ago; compared with the variable it is a range of
        -- executors_ended. The ten minutes count from the pass's start.
        -- In order of ending (each executor is swept on its own, so any
        -- order will do), the index's order, and a LATERAL probe of
        -- executions_owned per executor rather than EXISTS (which may become
        -- a merge join along executors_pkey): so the generic plan that
        -- plpgsql may cache keeps to that range too.
        CROSS JOIN LATERAL (
            SELECT FROM fifoq.executions e
            WHERE e.owner = x.id AND e.status IN ('queued', 'active')
            LIMIT 1
        ) owned
        WHERE x.ended_at > v_now - interval '10 minutes'
        ORDER BY x.ended_at, x.id
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

-- 4. claim.
CREATE OR REPLACE FUNCTION fifoq.claim(p_executor bigint, p_actions text[], p_limit integer)
RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_queues    refcursor;
    v_queue_ids integer[];
    v_queue_id  integer;
    v_taken     integer := 0;
    v_id        bigint;
BEGIN
    -- Workers take admitted, unowned executions of their actions, oldest
    -- admission first. Queues whose lock is busy are skipped, not waited for;
    -- the notification of the next admission brings the worker back.
    --
    -- The queues that hold such executions, in queue id order, read through
    -- a cursor (fetched as the loop goes, as the loop over one query was
    -- before). One statement per case, so that each has its own
    -- plan: as one statement ("p_actions IS NULL OR q.action = ANY
    -- (p_actions)") the generic plan that plpgsql caches served both, and
    -- read every unclaimed execution of every action to keep those of the
    -- given actions.
    IF p_actions IS NULL THEN
        -- Any action: executions_unclaimed holds exactly the rows wanted.
        OPEN v_queues FOR
            SELECT DISTINCT e.queue_id
            FROM fifoq.executions e
            WHERE e.status = 'active' AND e.owner IS NULL
            ORDER BY e.queue_id;
    ELSE
        -- The given actions' queues (queues_action_group_key), each probed
        -- in executions_unclaimed (queue_id, seq): unclaimed executions of
        -- other actions are never read. Planned on every call with the
        -- actual array (EXECUTE, whose plans are never cached): for an array
        -- it cannot see, a generic plan guesses that a tenth of all queues
        -- match and walks all of them (queues_pkey). LATERAL ... LIMIT 1,
        -- not EXISTS, which may become a semi join that reads all of
        -- executions_unclaimed first. Collected in an array (these queues
        -- are few: the actions' queues with work waiting for a worker),
        -- then read in the array's order.
        EXECUTE
            'SELECT ARRAY(
                 SELECT q.id
                 FROM fifoq.queues q
                 CROSS JOIN LATERAL (
                     SELECT FROM fifoq.executions e
                     WHERE e.queue_id = q.id AND e.status = ''active'' AND e.owner IS NULL
                     LIMIT 1
                 ) unclaimed
                 WHERE q.action = ANY ($1)
                 ORDER BY q.id)'
            INTO v_queue_ids USING p_actions;
        OPEN v_queues FOR SELECT unnest(v_queue_ids);
    END IF;
    LOOP
        FETCH v_queues INTO v_queue_id;
        EXIT WHEN NOT FOUND OR v_taken >= p_limit;
        CONTINUE WHEN NOT fifoq.try_lock_queue(v_queue_id);
        -- One row at a time in seq order (executions_unclaimed), so the
        -- result lists each queue's executions in the order they were admitted.
        FOR v_id IN
            SELECT u.id FROM fifoq.executions u
            WHERE u.queue_id = v_queue_id AND u.status = 'active' AND u.owner IS NULL
            ORDER BY u.seq
            LIMIT p_limit - v_taken
        LOOP
            UPDATE fifoq.executions SET owner = p_executor WHERE id = v_id;
            v_taken := v_taken + 1;
            RETURN QUERY SELECT * FROM fifoq.execution_details WHERE id = v_id;
        END LOOP;
    END LOOP;
    CLOSE v_queues;
END
$$;
-- The comment of fifoq.claim is kept by CREATE OR REPLACE.
