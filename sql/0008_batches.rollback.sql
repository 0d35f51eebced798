-- Reverts 0008_batches.sql.
DROP FUNCTION fifoq.complete_many_deferred(bigint[], jsonb[], text[], bigint, text[], integer);
DROP FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint);
DROP FUNCTION fifoq.complete_many(bigint[], jsonb[], text[], bigint, text[], integer);
DROP FUNCTION fifoq.enqueue_many(text, jsonb[], text, bigint);
-- fifoq.admit exactly as 0002 created it (its own body again), then admit_to can go.
CREATE OR REPLACE FUNCTION fifoq.admit(p_queue_id integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue    fifoq.queues;
    v_policy   fifoq.policies;
    v_free     integer;
    v_prev_seq bigint;
    v_admitted integer := 0;
    v_at       timestamptz;
    r          record;
BEGIN
    SELECT * INTO v_queue FROM fifoq.queues WHERE id = p_queue_id;
    IF v_queue.queued_count = 0 THEN
        RETURN 0;
    END IF;
    v_policy := fifoq.policy_for(v_queue.action);
    v_free := v_policy.max_concurrent - v_queue.active_count;  -- NULL: unlimited
    IF v_free <= 0 THEN
        RETURN 0;
    END IF;

    FOR r IN
        SELECT e.id, e.seq, e.owner
        FROM fifoq.executions e
        WHERE e.queue_id = p_queue_id AND e.status = 'queued'
        ORDER BY e.seq
        LIMIT v_free               -- LIMIT NULL is LIMIT ALL
        FOR UPDATE SKIP LOCKED
    LOOP
        -- Gap check: a waiting row before this one that SKIP LOCKED passed over.
        IF EXISTS (
            SELECT 1 FROM fifoq.executions g
            WHERE g.queue_id = p_queue_id AND g.status = 'queued'
              AND g.seq < r.seq AND (v_prev_seq IS NULL OR g.seq > v_prev_seq)
        ) THEN
            EXIT;
        END IF;
        UPDATE fifoq.executions
        SET status = 'active', started_at = clock_timestamp(), deadline = NULL
        WHERE id = r.id
        RETURNING started_at INTO v_at;
        IF r.owner IS NULL THEN
            -- Nobody waits on it: wake the workers that run this action.
            PERFORM pg_notify('fifoq_work', v_queue.action);
        ELSE
            PERFORM fifoq.notify_owner(r.owner, r.id, 'active', v_at);
        END IF;
        v_prev_seq := r.seq;
        v_admitted := v_admitted + 1;
    END LOOP;

    IF v_admitted > 0 THEN
        UPDATE fifoq.queues
        SET queued_count = queued_count - v_admitted,
            active_count = active_count + v_admitted
        WHERE id = p_queue_id;
    END IF;
    RETURN v_admitted;
END
$$;
DROP FUNCTION fifoq.admit_to(integer, bigint, integer);
