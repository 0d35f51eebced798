-- Reverts 0024_abandon_queue_by_queue.sql: abandon_owned() in one piece
-- (one locked queue undoes the call), unregister_executor() without a lock
-- timeout.

CREATE OR REPLACE FUNCTION fifoq.abandon_owned(p_executor bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
DECLARE
    v_queue_id integer;
    v_queued   integer;
    v_active   integer;
    v_total    integer := 0;
BEGIN
    -- One queue at a time, in ascending id order (the deadlock-free order).
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.owner = p_executor AND e.status IN ('queued', 'active')
        ORDER BY e.queue_id
    LOOP
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
    END LOOP;
    RETURN v_total;
END
$$;

CREATE OR REPLACE FUNCTION fifoq.unregister_executor(p_executor bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_abandoned integer;
BEGIN
    UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'closed'
    WHERE id = p_executor AND ended_at IS NULL;
    v_abandoned := fifoq.abandon_owned(p_executor);
    RETURN v_abandoned;
END
$$;
