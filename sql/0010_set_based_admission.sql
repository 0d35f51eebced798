-- Admission and completion batches in a fixed number of statements.
-- depends: 0009_scans_by_index
--
-- Why. With batches (0008) one queue's throughput is bound by a serial
-- cycle: a worker's completion statement frees its slots, admits the next
-- executions and hands them to it; only then can their handlers run. Most
-- of that statement's server time was per-statement overhead (executor
-- start-up, plan cache checks) of small statements, not rows: fifoq.admit
-- ran two statements per admitted row (the gap check and its own UPDATE),
-- and complete_many four look-ups before its update (pg_stat_statements,
-- perf on the backend). For a batch of 10 that was about 40 statements.
--
-- What changes (results are the same):
--   * fifoq.admit_to takes the head with one SKIP LOCKED query, applies
--     0002's gap rule as one prefix test against the line as it stands,
--     and starts all admitted rows with one UPDATE by primary key. They
--     share one started_at, taken under the queue lock (it still never
--     decreases as seq grows). The policy lookup is the stats view's join.
--   * complete_many checks ids (repeats, unknown) and finds the queues in
--     one look-up, and no longer reads the statuses before its update: the
--     update completes only active rows, and if it completed fewer than the
--     batch, the RAISE (FQ409, naming the first such id as before) undoes
--     the whole statement. The error branches look up their details only
--     when they are taken.
-- Locks and their order, FIFO, the limit and the notifications are as
-- before.

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
    v_action    text;
    v_queued    integer;
    v_free      integer;
    v_ids       bigint[];
    v_seqs      bigint[];
    v_owners    bigint[];
    v_head      bigint[];
    v_take      bigint[] := '{}';
    v_at        timestamptz;
    v_notify    boolean := false;
    i           integer;
BEGIN
    admitted := 0;
    claimed := '{}';
    -- The free slots, with the limit in force found as the stats view finds
    -- it (joins, not a plpgsql call).
    SELECT q.action, q.queued_count,
           coalesce(own.max_concurrent, pack.max_concurrent, dflt.max_concurrent) - q.active_count
    INTO v_action, v_queued, v_free
    FROM fifoq.queues q
    LEFT JOIN fifoq.policies own ON own.action = q.action
    LEFT JOIN fifoq.policies pack ON pack.action = split_part(q.action, '.', 1) || '.*'
    LEFT JOIN fifoq.policies dflt ON dflt.action = '*'
    WHERE q.id = p_queue_id;
    IF v_queued = 0 OR v_free <= 0 THEN   -- v_free NULL: unlimited
        RETURN;
    END IF;

    -- The first v_free waiting executions that nobody else holds a row lock
    -- on (FOR UPDATE SKIP LOCKED over executions_queue_head, in seq order:
    -- under the queue lock no fifoq session holds one, but an operator's
    -- SELECT ... FOR UPDATE may).
    SELECT array_agg(h.id ORDER BY h.seq), array_agg(h.seq ORDER BY h.seq), array_agg(h.owner ORDER BY h.seq)
    INTO v_ids, v_seqs, v_owners
    FROM (SELECT e.id, e.seq, e.owner FROM fifoq.executions e
          WHERE e.queue_id = p_queue_id AND e.status = 'queued'
          ORDER BY e.seq
          LIMIT v_free                     -- LIMIT NULL is LIMIT ALL
          FOR UPDATE SKIP LOCKED) AS h;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- Gap rule (0002's, as one prefix test): admission stops before the
    -- first waiting execution that SKIP LOCKED passed over, rather than
    -- start a later one first; the next completion or maintenance pass
    -- retries. v_head is the line as it stands, locked rows included.
    SELECT array_agg(g.seq ORDER BY g.seq) INTO v_head
    FROM (SELECT e.seq FROM fifoq.executions e
          WHERE e.queue_id = p_queue_id AND e.status = 'queued'
          ORDER BY e.seq
          LIMIT cardinality(v_ids)) AS g;
    -- Which to admit, and which of those go to p_claimer: up to
    -- p_claim_limit that nobody owns, in seq order. Array work only.
    FOR i IN 1 .. cardinality(v_ids) LOOP
        EXIT WHEN v_seqs[i] <> v_head[i];
        v_take := v_take || v_ids[i];
        IF v_owners[i] IS NULL THEN
            IF p_claimer IS NOT NULL AND cardinality(claimed) < p_claim_limit THEN
                claimed := claimed || v_ids[i];
            ELSE
                v_notify := true;  -- nobody waits on it: wake the workers of this action
            END IF;
        END IF;
    END LOOP;
    admitted := cardinality(v_take);
    IF admitted = 0 THEN
        RETURN;
    END IF;

    -- One update for all of them, found by primary key (= ANY plans as an
    -- index scan however long the history; a join with an unnested array
    -- can be planned as a scan of the table). One start time, taken under
    -- the queue lock, so started_at still never decreases as seq grows.
    v_at := clock_timestamp();
    UPDATE fifoq.executions e
    SET status = 'active', started_at = v_at, deadline = NULL,
        owner = CASE WHEN e.id = ANY (claimed) THEN p_claimer ELSE e.owner END
    WHERE e.id = ANY (v_take);
    UPDATE fifoq.queues
    SET queued_count = queued_count - admitted,
        active_count = active_count + admitted
    WHERE id = p_queue_id;

    -- The waiters of the admitted executions they own hear of it.
    FOR i IN 1 .. admitted LOOP
        IF v_owners[i] IS NOT NULL THEN
            PERFORM fifoq.notify_owner(v_owners[i], v_ids[i], 'active', v_at);
        END IF;
    END LOOP;
    IF v_notify THEN
        PERFORM pg_notify('fifoq_work', v_action);
    END IF;
END
$$;
-- The comment of fifoq.admit_to is kept by CREATE OR REPLACE.

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
    v_n         integer := coalesce(cardinality(p_ids), 0);
    v_claimed   bigint[] := '{}';
    v_older     bigint[];
    v_admit     record;
    v_bad       bigint;
    v_unique    boolean;
    v_found     integer;
    v_done_ids  bigint[];
    v_queue_id  integer;
    v_queue_ids integer[];
    v_queue     record;
    v_status    fifoq.execution_status;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF coalesce(cardinality(p_results), 0) <> v_n OR coalesce(cardinality(p_errors), 0) <> v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('complete_many needs one result and one error per execution: %s ids, %s results, %s errors',
                             v_n, coalesce(cardinality(p_results), 0), coalesce(cardinality(p_errors), 0));
    END IF;

    -- One look at the batch before any lock: ids all distinct and not NULL,
    -- all known, and the queues they belong to (a queue id never changes,
    -- so reading it before the lock is safe). Rows by primary key (= ANY).
    -- The errors' details are looked up only when there is one.
    SELECT (SELECT count(DISTINCT i) = v_n FROM unnest(p_ids) AS i),
           count(*)::integer,
           array_agg(DISTINCT e.queue_id ORDER BY e.queue_id)
    INTO v_unique, v_found, v_queue_ids
    FROM fifoq.executions e WHERE e.id = ANY (p_ids);
    IF NOT v_unique THEN  -- count(DISTINCT) skips NULL, so a NULL id lands here too
        SELECT i INTO v_bad FROM unnest(p_ids) AS i GROUP BY i HAVING count(*) > 1 OR i IS NULL LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('execution %s appears more than once in the batch', coalesce(v_bad::text, 'NULL'));
    END IF;
    IF v_found < v_n THEN
        SELECT i INTO v_bad FROM unnest(p_ids) AS i
        WHERE NOT EXISTS (SELECT 1 FROM fifoq.executions e WHERE e.id = i) LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'FQ404', MESSAGE = format('unknown execution %s', v_bad);
    END IF;

    -- Every queue of the batch, locked in ascending id order.
    FOREACH v_queue_id IN ARRAY v_queue_ids LOOP
        PERFORM fifoq.lock_queue(v_queue_id);
    END LOOP;

    -- The whole batch in one update, the counters of each queue in one more:
    -- exactly what fifoq.complete does per execution, set-based, so a batch
    -- over many queues costs no more per execution than one over a queue.
    -- Only active executions complete (so a repeated completion never frees
    -- a second slot): if any of the batch is not active, the RAISE below
    -- undoes the whole statement, notifications included.
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
    ), counted AS (
        UPDATE fifoq.queues q
        SET active_count = q.active_count - c.n,
            total_succeeded = q.total_succeeded + c.ok,
            total_failed = q.total_failed + c.failed
        FROM per_queue c
        WHERE q.id = c.queue_id
    )
    -- (counted runs whether or not it is read: a data-modifying WITH always does)
    SELECT coalesce(array_agg(d.id), '{}') INTO v_done_ids FROM done d;
    IF cardinality(v_done_ids) < v_n THEN
        SELECT e.id, e.status INTO v_bad, v_status FROM fifoq.executions e
        WHERE e.id = ANY (p_ids) AND NOT e.id = ANY (v_done_ids)
        ORDER BY e.id LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'FQ409',
            MESSAGE = format('cannot complete execution %s: it is %s, not active', v_bad, v_status);
    END IF;

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
-- The comment of fifoq.complete_many is kept by CREATE OR REPLACE.
