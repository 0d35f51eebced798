-- Enqueues check the policy read under the queue lock; group_by values are
-- escaped before they are joined into a group name.
-- depends: 0013_printable_names
--
-- 1. The policy an enqueue admits by. fifoq.enqueue and fifoq.enqueue_many
-- read the policy (fifoq.policy_for) before taking the queue lock and used
-- that read for the admission check, on_limit and max_queue_length. The
-- lock can be a long wait (an enqueue inside a client transaction holds it
-- to commit), and the policy can change meanwhile. Reproduced: tx A
-- enqueues into a queue at limit 5 and stays open; B's enqueue reads limit
-- 5 and waits for the lock; an operator lowers the limit to 1 (set_policy
-- commits without waiting: it locks only queues with waiters); A commits;
-- B admits by the stale 5, and the queue runs 2 executions at limit 1. The
-- README promises that after a lowered limit the queue admits nobody until
-- its active executions have drained below it.
--
-- Now both functions read the policy again once they hold the lock (in
-- READ COMMITTED a new statement sees what committed before it, the policy
-- and the previous holder's counters alike) and every check uses that
-- read. The first read still gives the group_by keys: they are needed to
-- find the queue, hence the lock. enqueue_many takes all its queues' locks
-- first and then reads the policy once, so the whole batch is decided by
-- one policy, read after every lock it holds. The other admitters already
-- read the limit under the lock: fifoq.admit_to (called by complete_many,
-- and through fifoq.admit by complete, cancel, abandon_owned, maintain and
-- set_policy) reads it in the statement that reads the queue's counters,
-- after its caller took the lock. maintain's and set_policy's policy reads
-- before the lock only pick which queues to visit.
--
-- 2. Group names of several group_by keys. fifoq.group_key joined the keys'
-- values with ',', so group_by (region, host) made the group 'eu,west,h1'
-- of both {"region": "eu,west", "host": "h1"} and {"region": "eu", "host":
-- "west,h1"}: two groups shared one queue and one limit. Each value is now
-- escaped before the join (a backslash becomes '\\', a comma '\,'), so
-- different value lists make different names. A value with neither
-- character is unchanged: existing queues keep their names ('eu,h1').
-- Payloads whose group_by values contain ',' or '\' get new group names
-- from now on (also with a single key: 'a,b' becomes 'a\,b'); their old
-- queue rows simply stay, and executions still waiting there are admitted
-- there, under the same limit as the new queue's (until the old queue
-- drains, such a group can run up to twice its limit).
--
-- CREATE OR REPLACE FUNCTION drops a function's SET clauses, so both
-- enqueue functions restate 0011's enable_seqscan = off. Their comments
-- are unchanged (CREATE OR REPLACE keeps them).

CREATE OR REPLACE FUNCTION fifoq.group_key(group_by text[], payload jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    -- Values of the group_by keys, in order, each escaped (backslash ->
    -- '\\', comma -> '\,') and joined by ','. Escaping makes the name
    -- tell the values apart: unescaped, ("eu,west", "h1") and ("eu",
    -- "west,h1") both gave 'eu,west,h1' and shared one limit. A value with
    -- neither character stays as it is, so names stay readable. A missing
    -- key or a non-object payload contributes an empty string.
    IF cardinality(group_by) = 0 THEN
        RETURN '';
    END IF;
    RETURN (SELECT string_agg(
                       -- Backslashes first, or the comma's escape would be doubled.
                       replace(replace(coalesce(CASE WHEN jsonb_typeof(payload) = 'object' THEN payload ->> k END, ''),
                                       '\', '\\'),
                               ',', '\,'),
                       ',' ORDER BY ord)
            FROM unnest(group_by) WITH ORDINALITY AS g(k, ord));
END
$$;
COMMENT ON FUNCTION fifoq.group_key(text[], jsonb) IS
    'Group of an execution from its policy''s group_by keys and its payload: the keys'' values in order, '
    'each with ''\'' written ''\\'' and '','' written ''\,'', joined by '','' (a missing key gives an empty value).';

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
            MESSAGE = format('invalid action name %L: must be 1-255 characters without control characters', p_action);
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
            MESSAGE = format('invalid group name %L for action %L: must be 1-255 characters without control characters',
                             v_group, p_action);
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
            MESSAGE = format('invalid action name %L: must be 1-255 characters without control characters', p_action);
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
            MESSAGE = format('invalid group name %L for action %L: must be 1-255 characters without control characters',
                             v_bad, p_action);
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
