-- Reverts 0006_flush_outside_lock.sql: drops the deferred forms and restores
-- fifoq.notify_owner as 0002_protocol.sql created it.
DROP FUNCTION fifoq.claim_deferred(bigint, text[], integer);
DROP FUNCTION fifoq.watch_deferred(bigint, bigint);
DROP FUNCTION fifoq.time_out_deferred(bigint);
DROP FUNCTION fifoq.cancel_deferred(bigint);
DROP FUNCTION fifoq.complete_deferred(bigint, jsonb, text);
DROP FUNCTION fifoq.enqueue_deferred(text, jsonb, text, bigint);
DROP PROCEDURE fifoq.flush_and_notify();

CREATE OR REPLACE FUNCTION fifoq.notify_owner(owner bigint, execution_id bigint, status fifoq.execution_status,
                                              at timestamptz DEFAULT clock_timestamp())
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- Each executor LISTENs on its own channel, so a notification wakes only
    -- the process that waits. Delivered at commit, like the change itself.
    -- The payload carries the transition time so the waiter needs no second
    -- round trip to learn started_at.
    IF owner IS NOT NULL THEN
        PERFORM pg_notify('fifoq_executor_' || owner,
                          execution_id || ' ' || status || ' ' || extract(epoch FROM at));
    END IF;
END
$$;

DROP FUNCTION fifoq.defer_flush();
