-- An executor's executions are abandoned queue by queue: a queue that
-- another transaction holds no longer holds up the others.
-- depends: 0023_refresh_by_rebuild
--
-- Why. fifoq.abandon_owned() frees what an ended executor owned, one queue
-- at a time under each queue's lock. fifoq.maintain() calls it with a
-- 200 ms lock_timeout, so as not to wait behind a busy queue, but one queue
-- whose lock was not available undid the whole call: a client transaction
-- that had enqueued into queue X and not yet committed (enqueue(conn=...))
-- kept a dead executor's executions in every other queue active, their
-- slots taken and their waiters waiting, until it ended; reaping was
-- retried every pass and failed every pass. A closing executor
-- (unregister_executor, no lock_timeout) waited for X, its close timed out
-- after 5 s, and its executions elsewhere stayed active. SPEC §3.6: queues
-- never block each other; §3.5: slots are freed within a bounded time.
--
-- Now each queue runs in a subtransaction of its own: a queue whose lock
-- does not come within the caller's lock_timeout is skipped, the others are
-- freed at once. With no lock_timeout it waits, as before. The executor is
-- ended all the same (reaped, or closed), and what it left in the skipped
-- queue is abandoned by fifoq.maintain()'s sweep (executors ended in the
-- last ten minutes) on its first pass after that queue is free.
-- unregister_executor() now waits at most 200 ms per queue, as maintain()
-- does (or the caller's lock_timeout, if shorter; restored afterwards).
--
-- Cost: one subtransaction per queue the executor had work in, only when
-- an executor ends.

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
    -- One queue at a time, in ascending id order (the deadlock-free order),
    -- each in a subtransaction of its own: see the header.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.owner = p_executor AND e.status IN ('queued', 'active')
        ORDER BY e.queue_id
    LOOP
        BEGIN
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
        EXCEPTION WHEN lock_not_available THEN
            -- Another transaction holds this queue past the caller's
            -- lock_timeout (say, a client that enqueued into it and has not
            -- committed): its executions here stay for fifoq.maintain()'s
            -- sweep; the other queues are freed now.
            NULL;
        END;
    END LOOP;
    RETURN v_total;
END
$$;

CREATE OR REPLACE FUNCTION fifoq.unregister_executor(p_executor bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_abandoned      integer;
    v_caller_timeout text;
BEGIN
    UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'closed'
    WHERE id = p_executor AND ended_at IS NULL;
    -- Wait at most 200 ms for each queue (or the caller's lock_timeout, if
    -- shorter): a queue held longer is left to the sweep (see the header).
    v_caller_timeout := fifoq.cap_lock_timeout('200ms');
    v_abandoned := fifoq.abandon_owned(p_executor);
    PERFORM set_config('lock_timeout', v_caller_timeout, true);
    RETURN v_abandoned;
END
$$;
