-- Reverts 0029_escaped_names_in_messages.sql: enqueue and enqueue_many as
-- 0016 left them, set_policy and delete_policy as 0025 did, check_names as
-- 0017 made it, and no fifoq.name_literal.

CREATE OR REPLACE FUNCTION fifoq.enqueue(
    p_action  text,
    p_payload jsonb DEFAULT NULL,
    p_group   text DEFAULT NULL,
    p_owner   bigint DEFAULT NULL
) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_policy   fifoq.policies;
    v_group    text;
    v_queue_id integer;
    v_queued   integer;
    v_active   integer;
    v_seq      bigint;
    v_wait     boolean;
    v_where    text;
    v_row      fifoq.executions;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid action name %L: %s', p_action, fifoq.name_problem(p_action));
    END IF;
    -- This read only finds the queue (group_by); the checks use the one
    -- taken under the lock below.
    v_policy := fifoq.policy_for(p_action);
    v_group := coalesce(p_group, '');
    IF v_group = '' AND cardinality(v_policy.group_by) > 0 THEN
        v_group := fifoq.group_key(v_policy.group_by, p_payload);
    END IF;
    IF v_group <> '' AND NOT fifoq.valid_name(v_group) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid group name %L for action %L: %s',
                             v_group, p_action, fifoq.name_problem(v_group));
    END IF;

    -- The queue lock, held to commit: it orders seq with commit order (see
    -- fifoq.admit) and makes the counter checks below exact.
    v_queue_id := fifoq.ensure_queue(p_action, v_group);
    PERFORM fifoq.lock_queue(v_queue_id);
    -- The policy again, now that the lock is held: the limit may have been
    -- lowered while we waited for it, and the previous holder may have
    -- committed an admission after that. Both are visible to this new
    -- statement (READ COMMITTED), so the limit and the counters compared
    -- below are of one instant; the first read would admit past the new
    -- limit. The group stays the one the first read gave.
    v_policy := fifoq.policy_for(p_action);

    -- Take a seq and count the newcomer in, in one statement. SET sees the
    -- counters as they were: a newcomer waits whenever anyone waits, even if
    -- a slot is free at this instant (it never jumps ahead of the line), or
    -- when all slots are taken. If a check below refuses it, the RAISE
    -- rolls this update back with everything else.
    UPDATE fifoq.queues
    SET last_seq = last_seq + 1,
        total_enqueued = total_enqueued + 1,
        queued_count = queued_count
            + CASE WHEN queued_count > 0 OR active_count >= v_policy.max_concurrent THEN 1 ELSE 0 END,
        active_count = active_count
            + CASE WHEN queued_count > 0 OR active_count >= v_policy.max_concurrent THEN 0 ELSE 1 END
    WHERE id = v_queue_id
    RETURNING last_seq, queued_count, active_count INTO v_seq, v_queued, v_active;
    -- Admission needs an empty line, so a positive count means it waits.
    v_wait := v_queued > 0;

    IF v_wait THEN
        v_where := CASE WHEN v_group = '' THEN '' ELSE format(' (group %L)', v_group) END;
        IF v_policy.on_limit = 'reject' THEN
            RAISE EXCEPTION USING ERRCODE = 'FQ403',
                MESSAGE = format('action %L%s is at its limit: %s of %s active, %s waiting (on_limit=reject)',
                                 p_action, v_where, v_active, v_policy.max_concurrent, v_queued - 1);
        END IF;
        IF v_queued - 1 >= v_policy.max_queue_length THEN
            RAISE EXCEPTION USING ERRCODE = 'FQ429',
                MESSAGE = format('queue full for action %L%s: %s of %s waiting',
                                 p_action, v_where, v_queued - 1, v_policy.max_queue_length);
        END IF;
    END IF;

    -- Free slot and nobody waiting: the execution is admitted by this same
    -- insert instead of a separate fifoq.admit call.
    INSERT INTO fifoq.executions (queue_id, seq, status, owner, enqueued_at, deadline, started_at, payload)
    VALUES (v_queue_id, v_seq,
            CASE WHEN v_wait THEN 'queued' ELSE 'active' END::fifoq.execution_status,
            p_owner,
            clock_timestamp(),
            CASE WHEN v_wait THEN clock_timestamp() + v_policy.queue_timeout * interval '1 second' END,
            CASE WHEN v_wait THEN NULL ELSE clock_timestamp() END,
            p_payload)
    RETURNING * INTO v_row;
    IF NOT v_wait AND p_owner IS NULL THEN
        PERFORM pg_notify('fifoq_work', p_action);
    END IF;

    RETURN fifoq.details(v_row, p_action, v_group);
END
$$;

CREATE OR REPLACE FUNCTION fifoq.enqueue_many(
    p_action   text,
    p_payloads jsonb[],
    p_group    text DEFAULT NULL,
    p_owner    bigint DEFAULT NULL
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_policy  fifoq.policies;
    v_groups  text[];
    v_bad     text;
    v_group   text;
    v_queue   record;
    v_row     fifoq.queues;
    v_admit   integer;
    v_wait    integer;
    v_first   bigint;
    v_where   text;
    v_notify  boolean := false;
    -- One entry per queue of the batch, in ascending id order: its group,
    -- id, how many payloads go to it, first new seq, and how many of its
    -- share start at once.
    v_qgroups text[] := '{}';
    v_qids    integer[] := '{}';
    v_qns     integer[] := '{}';
    v_firsts  bigint[] := '{}';
    v_admits  integer[] := '{}';
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid action name %L: %s', p_action, fifoq.name_problem(p_action));
    END IF;
    IF coalesce(cardinality(p_payloads), 0) = 0 THEN
        RETURN;
    END IF;
    -- This read only derives the groups (group_by); the checks use the one
    -- taken once every queue lock is held, below.
    v_policy := fifoq.policy_for(p_action);

    -- The group of each payload, exactly as fifoq.enqueue derives it.
    IF coalesce(p_group, '') <> '' OR coalesce(cardinality(v_policy.group_by), 0) = 0 THEN
        v_groups := array_fill(coalesce(p_group, ''), ARRAY[cardinality(p_payloads)]);
    ELSE
        SELECT array_agg(fifoq.group_key(v_policy.group_by, p) ORDER BY ord) INTO v_groups
        FROM unnest(p_payloads) WITH ORDINALITY AS t(p, ord);
    END IF;
    SELECT g INTO v_bad FROM unnest(v_groups) AS g WHERE g <> '' AND NOT fifoq.valid_name(g) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid group name %L for action %L: %s',
                             v_bad, p_action, fifoq.name_problem(v_bad));
    END IF;

    -- Missing queues are created first, in group name order: a new queue's
    -- row is an uncommitted insert that a second batch creating the same
    -- queue waits for, so two batches creating several must do it in one
    -- order, or each waits for the other (deadlock).
    FOR v_group IN SELECT DISTINCT g FROM unnest(v_groups) AS g ORDER BY 1 LOOP
        PERFORM fifoq.ensure_queue(p_action, v_group);
    END LOOP;

    -- Then every queue's lock, in ascending id order (deadlock-free against
    -- other batches and against fifoq.abandon_owned, maintain, set_policy).
    -- Set-based (one grouping, one join), so a batch over many groups costs
    -- no more per execution than a batch over one.
    FOR v_queue IN
        SELECT q.id, q.group_key, c.n
        FROM (SELECT g, count(*)::integer AS n FROM unnest(v_groups) AS g GROUP BY g) AS c
        JOIN fifoq.queues q ON q.action = p_action AND q.group_key = c.g
        ORDER BY q.id
    LOOP
        PERFORM fifoq.lock_queue(v_queue.id);
        v_qgroups := array_append(v_qgroups, v_queue.group_key);
        v_qids := array_append(v_qids, v_queue.id);
        v_qns := array_append(v_qns, v_queue.n);
    END LOOP;

    -- The policy again, now that every lock of the batch is held: the limit
    -- may have been lowered while we waited for one, and its previous holder
    -- may have committed an admission after that. Both are visible to this
    -- new statement (READ COMMITTED), so each queue's limit and counters
    -- below are compared as of after its lock; the first read would admit
    -- past the new limit. One read for the whole batch, after its last
    -- lock, so one policy decides all of it. The groups stay the first
    -- read's.
    v_policy := fifoq.policy_for(p_action);

    -- Each queue's share, in the same order: counters, seq range, what
    -- starts at once.
    FOR v_queue IN
        SELECT s.id, s.group_key, s.n
        FROM unnest(v_qids, v_qgroups, v_qns) WITH ORDINALITY AS s(id, group_key, n, ord)
        ORDER BY s.ord
    LOOP
        -- Read under the lock: a new statement sees what the previous holder committed.
        SELECT * INTO v_row FROM fifoq.queues WHERE id = v_queue.id;
        -- Admitted at once: only into free slots of a queue nobody waits in
        -- (a newcomer never jumps the line), and in input order.
        v_admit := CASE WHEN v_row.queued_count > 0 THEN 0
                        ELSE least(v_queue.n,
                                   greatest(coalesce(v_policy.max_concurrent - v_row.active_count, v_queue.n), 0))
                   END;
        v_wait := v_queue.n - v_admit;
        IF v_wait > 0 THEN
            v_where := CASE WHEN v_queue.group_key = '' THEN '' ELSE format(' (group %L)', v_queue.group_key) END;
            IF v_policy.on_limit = 'reject' THEN
                RAISE EXCEPTION USING ERRCODE = 'FQ403',
                    MESSAGE = format('action %L%s is at its limit: %s of %s active, %s waiting; %s of the %s '
                                     'executions in this batch could not start at once (on_limit=reject)',
                                     p_action, v_where, v_row.active_count, v_policy.max_concurrent,
                                     v_row.queued_count, v_wait, v_queue.n);
            END IF;
            IF v_row.queued_count + v_wait > v_policy.max_queue_length THEN
                RAISE EXCEPTION USING ERRCODE = 'FQ429',
                    MESSAGE = format('queue full for action %L%s: %s of %s waiting, a batch of %s would add %s',
                                     p_action, v_where, v_row.queued_count, v_policy.max_queue_length,
                                     v_queue.n, v_wait);
            END IF;
        END IF;
        UPDATE fifoq.queues
        SET last_seq = last_seq + v_queue.n,
            total_enqueued = total_enqueued + v_queue.n,
            queued_count = queued_count + v_wait,
            active_count = active_count + v_admit
        WHERE id = v_queue.id
        RETURNING last_seq - v_queue.n INTO v_first;
        v_firsts := array_append(v_firsts, v_first);
        v_admits := array_append(v_admits, v_admit);
        v_notify := v_notify OR (v_admit > 0 AND p_owner IS NULL);
    END LOOP;

    IF v_notify THEN
        PERFORM pg_notify('fifoq_work', p_action);  -- sent at commit
    END IF;

    -- One insert for the whole batch. Each payload's rank in its queue's
    -- share gives its seq; rows go in queue by queue in seq order, so id,
    -- enqueued_at and started_at grow with seq. The answer is built from
    -- what the insert returns (reading the new ids back from the table can
    -- be planned as a scan of the whole history), in input order.
    RETURN QUERY
        WITH input AS (
            SELECT t.p, t.g, t.ord, row_number() OVER (PARTITION BY t.g ORDER BY t.ord) AS rank
            FROM unnest(p_payloads, v_groups) WITH ORDINALITY AS t(p, g, ord)
        ), placed AS (
            -- Where each payload goes: its queue and seq (the answer is
            -- matched back on exactly these two, a hash join).
            SELECT s.queue_id, s.first_seq + i.rank AS seq, i.rank <= s.admit AS admitted, i.p, i.g, i.ord
            FROM input i
            JOIN unnest(v_qgroups, v_qids, v_firsts, v_admits) AS s(g, queue_id, first_seq, admit) ON s.g = i.g
        ), inserted AS (
            INSERT INTO fifoq.executions (queue_id, seq, status, owner, enqueued_at, deadline, started_at, payload)
            SELECT pl.queue_id, pl.seq,
                   CASE WHEN pl.admitted THEN 'active' ELSE 'queued' END::fifoq.execution_status,
                   p_owner,
                   clock_timestamp(),
                   CASE WHEN NOT pl.admitted THEN clock_timestamp() + v_policy.queue_timeout * interval '1 second' END,
                   CASE WHEN pl.admitted THEN clock_timestamp() END,
                   pl.p
            FROM placed pl
            ORDER BY pl.queue_id, pl.seq
            RETURNING *
        )
        SELECT d.*
        FROM inserted x
        JOIN placed pl ON pl.queue_id = x.queue_id AND pl.seq = x.seq
        CROSS JOIN LATERAL fifoq.details(ROW(x.*)::fifoq.executions, p_action, pl.g) AS d
        ORDER BY pl.ord;
END
$$;

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

CREATE OR REPLACE FUNCTION fifoq.check_names() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT coalesce(fifoq.valid_name(NEW.action), false) THEN
        RAISE EXCEPTION 'invalid action name %: %', quote_literal(NEW.action), fifoq.name_problem(NEW.action)
            USING ERRCODE = 'check_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    -- Only queues have a group ('' is the action's one default group). Two
    -- IFs: plpgsql would resolve NEW.group_key on a policy row in one.
    IF TG_TABLE_NAME = 'queues' THEN
        IF NEW.group_key <> '' AND NOT fifoq.valid_name(NEW.group_key) THEN
            RAISE EXCEPTION 'invalid group name %: %', quote_literal(NEW.group_key), fifoq.name_problem(NEW.group_key)
                USING ERRCODE = 'check_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP FUNCTION fifoq.name_literal(text);
