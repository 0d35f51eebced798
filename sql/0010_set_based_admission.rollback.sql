-- Reverts 0010_set_based_admission.sql: fifoq.admit_to and fifoq.complete_many
-- exactly as 0008 created them.
CREATE OR REPLACE FUNCTION fifoq.admit_to(
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

CREATE OR REPLACE FUNCTION fifoq.complete_many(
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
