-- A raised limit (set_policy, delete_policy) no longer waits for a queue
-- that another transaction holds.
-- depends: 0024_abandon_queue_by_queue
--
-- Why. fifoq.set_policy admits into the new free slots of every queue the
-- policy governs, taking each queue's lock in turn. A client transaction
-- that enqueued into one of them and has not committed (enqueue(conn=...))
-- holds that queue's lock until it ends: raising a pack's or the default
-- limit waited for it, and so did the admissions in every other queue of
-- the pack (SPEC §3.6: queues never block each other; found checking the
-- black-box audit's finding about ended executors, sql/0024).
--
-- Now each queue's admission runs in a subtransaction, waiting at most
-- 200 ms for the lock (or the caller's lock_timeout, if shorter; restored
-- afterwards). A queue skipped that way gets its admissions from
-- fifoq.maintain()'s work-conservation step, which every connected
-- executor runs a few times a second, once the queue is free. The policy
-- itself is written as before, before any queue is touched.
--
-- What. set_policy as 0018 left it and delete_policy as 0020 did, each with
-- that loop (deleting a policy raises a limit too: the queues fall back to
-- the pack's or the default policy, or none).

CREATE OR REPLACE FUNCTION fifoq.set_policy(
    p_action           text,
    p_max_concurrent   integer,
    p_max_queue_length integer DEFAULT 10000,
    p_queue_timeout    double precision DEFAULT 3600.0,
    p_on_limit         text DEFAULT 'enqueue',
    p_group_by         text[] DEFAULT '{}'
) RETURNS fifoq.policies
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_policy         fifoq.policies;
    v_queue_id       integer;
    v_caller_timeout text;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy: action name %L %s', p_action, fifoq.name_problem(p_action));
    ELSIF p_max_concurrent IS NULL OR p_max_concurrent < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: max_concurrent must be at least 1, got %s', p_action, coalesce(p_max_concurrent::text, 'NULL'));
    ELSIF p_max_queue_length IS NULL OR p_max_queue_length < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: max_queue_length must be at least 0, got %s', p_action, coalesce(p_max_queue_length::text, 'NULL'));
    ELSIF p_queue_timeout IS NOT NULL AND NOT (p_queue_timeout > 0 AND p_queue_timeout < 'infinity') THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: queue_timeout must be a positive number of seconds, got %s', p_action, p_queue_timeout);
    ELSIF p_queue_timeout > 1e9 THEN
        -- Deadlines are clock_timestamp() + queue_timeout seconds: far beyond
        -- this the interval or the timestamp overflows and every enqueue fails.
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: queue_timeout must be at most 1000000000 seconds (NULL waits forever), got %s', p_action, p_queue_timeout);
    ELSIF p_on_limit IS NULL OR p_on_limit NOT IN ('enqueue', 'reject') THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: on_limit must be ''enqueue'' or ''reject'', got %L', p_action, p_on_limit);
    ELSIF EXISTS (SELECT 1 FROM unnest(coalesce(p_group_by, '{}')) k WHERE NOT coalesce(fifoq.valid_name(k), false)) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = (SELECT format('invalid policy for action %L: group_by key %L %s', p_action, k, fifoq.name_problem(k))
                       FROM unnest(p_group_by) k WHERE NOT coalesce(fifoq.valid_name(k), false) LIMIT 1);
    ELSIF cardinality(p_group_by) > (SELECT count(DISTINCT k) FROM unnest(p_group_by) k) THEN
        -- A key named twice adds its value to the group twice: no new
        -- grouping, only a group name that differs from the single key's.
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = (SELECT format('invalid policy for action %L: group_by names key %L twice', p_action, k)
                       FROM unnest(p_group_by) WITH ORDINALITY AS u(k, i)
                       GROUP BY k HAVING count(*) > 1 ORDER BY min(i) LIMIT 1);
    END IF;

    INSERT INTO fifoq.policies AS p (action, max_concurrent, max_queue_length, queue_timeout, on_limit, group_by)
    VALUES (p_action, p_max_concurrent, p_max_queue_length, p_queue_timeout, p_on_limit, coalesce(p_group_by, '{}'))
    ON CONFLICT (action) DO UPDATE
    SET max_concurrent = excluded.max_concurrent,
        max_queue_length = excluded.max_queue_length,
        queue_timeout = excluded.queue_timeout,
        on_limit = excluded.on_limit,
        group_by = excluded.group_by,
        updated_at = clock_timestamp()
    RETURNING * INTO v_policy;

    -- A raised limit takes effect at once: admit into the new free slots of
    -- every queue this policy governs, locking queues in id order. A queue
    -- whose lock does not come within 200 ms (or the caller's lock_timeout,
    -- if shorter) is skipped: see the header.
    v_caller_timeout := fifoq.cap_lock_timeout('200ms');
    FOR v_queue_id IN
        SELECT q.id FROM fifoq.queues q
        WHERE q.queued_count > 0 AND (fifoq.policy_for(q.action)).action = p_action
        ORDER BY q.id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            PERFORM fifoq.admit(v_queue_id);
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- fifoq.maintain() admits there once the queue is free
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', v_caller_timeout, true);
    RETURN v_policy;
END
$$;

CREATE OR REPLACE FUNCTION fifoq.delete_policy(p_action text) RETURNS fifoq.policies
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_policy         fifoq.policies;
    v_queue_id       integer;
    v_caller_timeout text;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy: action name %L %s', p_action, fifoq.name_problem(p_action));
    END IF;

    -- The primary key finds the row; its row lock makes a concurrent
    -- set_policy of the same name wait for this transaction (then insert).
    DELETE FROM fifoq.policies WHERE action = p_action RETURNING * INTO v_policy;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- Queue by queue, each lock awaited at most 200 ms, as in set_policy.
    v_caller_timeout := fifoq.cap_lock_timeout('200ms');
    FOR v_queue_id IN
        SELECT q.id FROM fifoq.queues q
        WHERE q.queued_count > 0
          AND (p_action = '*'
               OR q.action = p_action
               OR fifoq.pack_pattern(q.action) = p_action)
        ORDER BY q.id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            PERFORM fifoq.admit(v_queue_id);
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- fifoq.maintain() admits there once the queue is free
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', v_caller_timeout, true);
    RETURN v_policy;
END
$$;
