-- Batches: enqueue many executions, or complete many, in one statement.
-- depends: 0007_purge
--
-- Why. One execution costs a fixed price per statement -- a round trip,
-- the queue lock, a commit and its WAL flush, plpgsql entry, the policy
-- lookup -- that is several times the price of the rows it writes (README
-- "Performance"). A producer that has many requests at hand and a worker
-- whose handlers finish together can pay it once per batch instead.
--
-- What stays the same. A batch is one transaction under the same queue
-- locks, so it is all or nothing, and the guarantees are those of the
-- single-execution functions it mirrors (fifoq.enqueue, fifoq.complete):
--   * seq is still commit order: a batch takes a contiguous range of seq
--     numbers from queues.last_seq under the queue lock, held to commit, in
--     the order of its input, so nothing can slip into or before the range
--     while it is in flight.
--   * FIFO and the limit: a batch admits at once only what a single
--     enqueue would (free slots and nobody waiting, in input order); the
--     rest waits behind everyone already queued. A completion batch frees
--     its slots and admits each queue's head with fifoq.admit.
--   * Deadlock freedom: a batch that touches several queues (group_by, or
--     completions of several actions) locks them in ascending queue id
--     order, the order every other multi-queue function uses.
--
-- Admission straight into a worker. A worker that completes executions
-- frees slots that fifoq.admit hands to the next in line; when those are
-- bare enqueues (nobody owns them), the worker would then be woken by
-- NOTIFY and claim them in a second statement -- it and every other
-- worker of the action. complete_many can instead give them to the
-- completing worker in the same transaction (p_claimer): admission and
-- claim become one row update, and nobody is woken for work already taken.
-- Which worker runs an admitted execution does not touch FIFO or the limit:
-- admission order and counts are fifoq.admit's, unchanged.

-- fifoq.admit with a claimer: the body of 0002's fifoq.admit (same locks,
-- same order, the same gap check in a form that plans well; see there),
-- plus: up to p_claim_limit of the admitted executions that nobody owns go
-- to p_claimer in the same update, and the workers' notification is sent
-- once, only if some admitted execution is left for them. Their ids come
-- back in admission (seq) order. fifoq.admit becomes a wrapper of it (no
-- claimer), so every admission uses this body.
CREATE FUNCTION fifoq.admit_to(
    p_queue_id    integer,
    p_claimer     bigint,
    p_claim_limit integer,
    OUT admitted  integer,
    OUT claimed   bigint[]
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue    fifoq.queues;
    v_policy   fifoq.policies;
    v_free     integer;
    v_prev_seq bigint;
    v_at       timestamptz;
    v_owner    bigint;
    v_notify   boolean := false;
    r          record;
BEGIN
    admitted := 0;
    claimed := '{}';
    SELECT * INTO v_queue FROM fifoq.queues WHERE id = p_queue_id;
    IF v_queue.queued_count = 0 THEN
        RETURN;
    END IF;
    v_policy := fifoq.policy_for(v_queue.action);
    v_free := v_policy.max_concurrent - v_queue.active_count;  -- NULL: unlimited
    IF v_free <= 0 THEN
        RETURN;
    END IF;

    FOR r IN
        SELECT e.id, e.seq, e.owner
        FROM fifoq.executions e
        WHERE e.queue_id = p_queue_id AND e.status = 'queued'
        ORDER BY e.seq
        LIMIT v_free               -- LIMIT NULL is LIMIT ALL
        FOR UPDATE SKIP LOCKED
    LOOP
        -- Gap check (see 0002): a waiting row between the previous one and
        -- this one that SKIP LOCKED passed over, i.e. this row is not the
        -- first waiting one after the previous (it is waiting itself, so
        -- the subquery finds at least it). Written as ORDER BY seq LIMIT 1,
        -- which every plan serves from executions_queue_head; 0002's EXISTS
        -- with "prev IS NULL OR seq > prev" was planned, with statistics
        -- taken while thousands waited, as a scan of the table (2.5 ms).
        IF r.seq <> (
            SELECT g.seq FROM fifoq.executions g
            WHERE g.queue_id = p_queue_id AND g.status = 'queued'
              AND g.seq > coalesce(v_prev_seq, -9223372036854775808)
            ORDER BY g.seq
            LIMIT 1
        ) THEN
            EXIT;
        END IF;
        v_owner := r.owner;
        IF v_owner IS NULL AND p_claimer IS NOT NULL AND cardinality(claimed) < p_claim_limit THEN
            v_owner := p_claimer;
            claimed := claimed || r.id;
        END IF;
        UPDATE fifoq.executions
        SET status = 'active', started_at = clock_timestamp(), deadline = NULL, owner = v_owner
        WHERE id = r.id
        RETURNING started_at INTO v_at;
        IF r.owner IS NOT NULL THEN
            PERFORM fifoq.notify_owner(r.owner, r.id, 'active', v_at);
        ELSIF v_owner IS NULL THEN
            v_notify := true;  -- nobody waits on it: wake the workers of this action
        END IF;
        v_prev_seq := r.seq;
        admitted := admitted + 1;
    END LOOP;

    IF admitted > 0 THEN
        UPDATE fifoq.queues
        SET queued_count = queued_count - admitted,
            active_count = active_count + admitted
        WHERE id = p_queue_id;
    END IF;
    IF v_notify THEN
        PERFORM pg_notify('fifoq_work', v_queue.action);
    END IF;
END
$$;
COMMENT ON FUNCTION fifoq.admit_to(integer, bigint, integer) IS
    'fifoq.admit that gives up to p_claim_limit admitted executions nobody owns to p_claimer (a worker) at once. '
    'The caller must hold the queue lock. Returns how many were admitted and the ids claimed.';

CREATE OR REPLACE FUNCTION fifoq.admit(p_queue_id integer) RETURNS integer
LANGUAGE sql VOLATILE
AS $$ SELECT (fifoq.admit_to(p_queue_id, NULL, 0)).admitted $$;
-- The comment is unchanged from 0002; CREATE OR REPLACE keeps it.

CREATE FUNCTION fifoq.enqueue_many(
    p_action   text,
    p_payloads jsonb[],
    p_group    text DEFAULT NULL,
    p_owner    bigint DEFAULT NULL
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
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
    -- One entry per queue of the batch: its group, id, first new seq, and
    -- how many of its share start at once.
    v_qgroups text[] := '{}';
    v_qids    integer[] := '{}';
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

    -- Then each queue's lock, in ascending id order (deadlock-free against
    -- other batches and against fifoq.abandon_owned, maintain, set_policy),
    -- and its share: counters, seq range, what starts at once. Set-based
    -- (one grouping, one join), so a batch over many groups costs no more
    -- per execution than a batch over one.
    FOR v_queue IN
        SELECT q.id, q.group_key, c.n
        FROM (SELECT g, count(*)::integer AS n FROM unnest(v_groups) AS g GROUP BY g) AS c
        JOIN fifoq.queues q ON q.action = p_action AND q.group_key = c.g
        ORDER BY q.id
    LOOP
        PERFORM fifoq.lock_queue(v_queue.id);
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
        v_qgroups := array_append(v_qgroups, v_queue.group_key);
        v_qids := array_append(v_qids, v_queue.id);
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
COMMENT ON FUNCTION fifoq.enqueue_many(text, jsonb[], text, bigint) IS
    'fifoq.enqueue for many payloads in one transaction: all are stored, in input order (contiguous seq per queue), '
    'or none. Admits at once what single enqueues would; FQ429 if the queue cannot hold the waiting part, FQ403 '
    'with on_limit=reject if any could not start at once. Returns the executions in input order.';

CREATE FUNCTION fifoq.complete_many(
    p_ids           bigint[],
    p_results       jsonb[],
    p_errors        text[],
    p_claimer       bigint DEFAULT NULL,
    p_claim_actions text[] DEFAULT NULL,
    p_claim_limit   integer DEFAULT 0
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_n        integer := coalesce(cardinality(p_ids), 0);
    v_claimed  bigint[] := '{}';
    v_older    bigint[];
    v_admit    record;
    v_bad      bigint;
    v_queue_id integer;
    v_queue_ids integer[];
    v_queue    record;
    v_status   fifoq.execution_status;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF coalesce(cardinality(p_results), 0) <> v_n OR coalesce(cardinality(p_errors), 0) <> v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('complete_many needs one result and one error per execution: %s ids, %s results, %s errors',
                             v_n, coalesce(cardinality(p_results), 0), coalesce(cardinality(p_errors), 0));
    END IF;
    SELECT i INTO v_bad FROM unnest(p_ids) AS i GROUP BY i HAVING count(*) > 1 OR i IS NULL LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('execution %s appears more than once in the batch', coalesce(v_bad::text, 'NULL'));
    END IF;
    SELECT i INTO v_bad FROM unnest(p_ids) AS i
    WHERE NOT EXISTS (SELECT 1 FROM fifoq.executions e WHERE e.id = i) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ404', MESSAGE = format('unknown execution %s', v_bad);
    END IF;

    -- Every queue of the batch, locked in ascending id order (a queue id
    -- never changes, so reading it before the lock is safe).
    SELECT array_agg(DISTINCT e.queue_id ORDER BY e.queue_id) INTO v_queue_ids
    FROM fifoq.executions e WHERE e.id = ANY (p_ids);
    FOREACH v_queue_id IN ARRAY v_queue_ids LOOP
        PERFORM fifoq.lock_queue(v_queue_id);
    END LOOP;

    -- Under the locks, before anything changes: only active executions
    -- complete, so a repeated completion never frees a second slot, and the
    -- RAISE leaves the whole batch undone.
    SELECT e.id, e.status INTO v_bad, v_status FROM fifoq.executions e
    WHERE e.id = ANY (p_ids) AND e.status <> 'active'
    ORDER BY e.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ409',
            MESSAGE = format('cannot complete execution %s: it is %s, not active', v_bad, v_status);
    END IF;

    -- The whole batch in one update, the counters of each queue in one more:
    -- exactly what fifoq.complete does per execution, set-based, so a batch
    -- over many queues costs no more per execution than one over a queue.
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_results, p_errors) AS t(id, result, error)
    ), done AS (
        UPDATE fifoq.executions e
        SET status = CASE WHEN i.error IS NULL THEN 'succeeded' ELSE 'failed' END::fifoq.execution_status,
            result = i.result, error = i.error, finished_at = clock_timestamp()
        FROM input i
        WHERE e.id = i.id AND e.status = 'active'
        RETURNING e.id, e.queue_id, e.owner, e.status, e.finished_at
    ), told AS (
        -- The claimer completing its own executions needs no word of it.
        SELECT d.queue_id, d.status,
               CASE WHEN d.owner IS DISTINCT FROM p_claimer
                    THEN fifoq.notify_owner(d.owner, d.id, d.status, d.finished_at) END
        FROM done d
    ), per_queue AS (
        SELECT t.queue_id, count(*)::integer AS n,
               count(*) FILTER (WHERE t.status = 'succeeded')::integer AS ok,
               count(*) FILTER (WHERE t.status = 'failed')::integer AS failed
        FROM told t
        GROUP BY t.queue_id
    )
    UPDATE fifoq.queues q
    SET active_count = q.active_count - c.n,
        total_succeeded = q.total_succeeded + c.ok,
        total_failed = q.total_failed + c.failed
    FROM per_queue c
    WHERE q.id = c.queue_id;

    -- The freed slots go to each queue's head, in ascending queue order;
    -- with p_claimer, to the claimer where nobody waits on them.
    FOR v_queue IN
        SELECT q.id, q.action, q.queued_count FROM fifoq.queues q
        WHERE q.id = ANY (v_queue_ids)
        ORDER BY q.id
    LOOP
        IF p_claimer IS NOT NULL AND (p_claim_actions IS NULL OR v_queue.action = ANY (p_claim_actions))
           AND cardinality(v_claimed) < p_claim_limit THEN
            -- Executions admitted earlier that no worker has taken yet come
            -- first (executions_unclaimed, in seq order): a worker starts
            -- its executions in seq order, so it must not take a newer one
            -- while an older one waits for a claim.
            SELECT array_agg(u.id ORDER BY u.seq) INTO v_older
            FROM (SELECT e.id, e.seq FROM fifoq.executions e
                  WHERE e.queue_id = v_queue.id AND e.status = 'active' AND e.owner IS NULL
                  ORDER BY e.seq
                  LIMIT p_claim_limit - cardinality(v_claimed)) AS u;
            IF v_older IS NOT NULL THEN
                UPDATE fifoq.executions SET owner = p_claimer WHERE id = ANY (v_older);
                v_claimed := v_claimed || v_older;
            END IF;
            IF v_queue.queued_count > 0 THEN
                v_admit := fifoq.admit_to(v_queue.id, p_claimer, p_claim_limit - cardinality(v_claimed));
                v_claimed := v_claimed || v_admit.claimed;
            END IF;
        ELSIF v_queue.queued_count > 0 THEN
            PERFORM fifoq.admit(v_queue.id);
        END IF;
    END LOOP;

    -- Read back by primary key (= ANY keeps the plan an index scan however
    -- long the history): the completed in input order, then what p_claimer
    -- was given in admission order.
    RETURN QUERY
        SELECT d.* FROM fifoq.execution_details d
        JOIN unnest(p_ids || v_claimed) WITH ORDINALITY AS u(id, ord) ON u.id = d.id
        WHERE d.id = ANY (p_ids || v_claimed)
        ORDER BY u.ord;
END
$$;
COMMENT ON FUNCTION fifoq.complete_many(bigint[], jsonb[], text[], bigint, text[], integer) IS
    'fifoq.complete for many executions in one transaction: each succeeded (NULL error) or failed, slots freed and '
    'heads admitted; all or nothing (FQ404 unknown id, FQ409 one not active, FQ422 mismatched arrays or a repeated id). '
    'With p_claimer (a worker''s executor id), up to p_claim_limit admitted executions nobody owns, of '
    'p_claim_actions (NULL: any), are given to it at once. Returns the executions in input order, then those claimed.';

-- The deferred forms, as in 0006_flush_outside_lock.sql: follow each with
-- CALL fifoq.flush_and_notify() on the same connection.

CREATE FUNCTION fifoq.enqueue_many_deferred(
    p_action   text,
    p_payloads jsonb[],
    p_group    text DEFAULT NULL,
    p_owner    bigint DEFAULT NULL
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN QUERY SELECT * FROM fifoq.enqueue_many(p_action, p_payloads, p_group, p_owner);
END
$$;
COMMENT ON FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint) IS
    'fifoq.enqueue_many committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.complete_many_deferred(
    p_ids           bigint[],
    p_results       jsonb[],
    p_errors        text[],
    p_claimer       bigint DEFAULT NULL,
    p_claim_actions text[] DEFAULT NULL,
    p_claim_limit   integer DEFAULT 0
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN QUERY SELECT * FROM fifoq.complete_many(p_ids, p_results, p_errors,
                                                   p_claimer, p_claim_actions, p_claim_limit);
END
$$;
COMMENT ON FUNCTION fifoq.complete_many_deferred(bigint[], jsonb[], text[], bigint, text[], integer) IS
    'fifoq.complete_many committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';
