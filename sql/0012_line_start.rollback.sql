-- Reverts 0012_line_start.sql: fifoq.admit_to as 0010 made it, the live stats
-- view as 0009 made it, and complete_many's plan choice as before.
ALTER FUNCTION fifoq.complete_many(bigint[], jsonb[], text[], bigint, text[], integer)
    RESET plan_cache_mode;

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
-- The comment of fifoq.admit_to is kept by CREATE OR REPLACE; its setting from 0011 is not.
ALTER FUNCTION fifoq.admit_to(integer, bigint, integer) SET enable_seqscan = off;

CREATE OR REPLACE VIEW fifoq.queue_stats_live AS
SELECT q.action,
       q.group_key AS "group",
       q.queued_count AS queue_length,
       q.active_count,
       -- fifoq.policy_for written as joins: the action's own policy, else
       -- its pack's, else the default (max_concurrent is never NULL in a
       -- policy row, so the first row found wins).
       coalesce(own.max_concurrent, pack.max_concurrent, dflt.max_concurrent) AS max_concurrent,
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
LEFT JOIN fifoq.policies own ON own.action = q.action
LEFT JOIN fifoq.policies pack ON pack.action = split_part(q.action, '.', 1) || '.*'
LEFT JOIN fifoq.policies dflt ON dflt.action = '*';
-- The view's and its columns' comments are kept by CREATE OR REPLACE.

ALTER TABLE fifoq.queues DROP COLUMN admitted_seq;
