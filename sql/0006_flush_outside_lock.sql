-- Release the queue lock before the commit's disk flush, not after it.
-- depends: 0005_refresh_stats_definer
--
-- Why. Every state change holds its queue's advisory lock to commit (see
-- fifoq.admit). With a durable commit that includes the WAL flush, so one
-- queue ran one transaction per fsync and group commit could not help.
-- PostgreSQL also serialises the commits of every transaction that sent a
-- NOTIFY, cluster-wide and through the flush, so owner notifications tied
-- the queues together as well. Both showed in `fifoq bench` (README
-- "Performance").
--
-- How. The client runs an operation in three steps, each its own
-- transaction, and acknowledges only after the second:
--
--   1. fifoq.<operation>_deferred(...): the operation itself, unchanged
--      (same function, same lock, same checks), but its transaction commits
--      with synchronous_commit = off: the commit record is written and the
--      locks are released without waiting for the disk. Owner
--      notifications are held back in the session instead of sent.
--   2. CALL fifoq.flush_and_notify(): a transaction that writes one small
--      WAL record and commits durably. A durable commit waits until the WAL
--      is flushed up to its own commit record, which lies after step 1's:
--      from here on step 1 is on disk. No lock is held while waiting, so
--      the flushes of many clients are shared (group commit).
--   3. In the same CALL, after that commit: the held notifications are sent
--      in a transaction of their own, with synchronous_commit = off (its
--      only content is the NOTIFY, so it need not wait for the disk either).
--
-- What this keeps. The arbiter is the same queue lock, so the limit, seq
-- order = commit order and FIFO are untouched. The WAL is a sequence: a
-- crash can lose only a suffix of it, so it never keeps a later change
-- while losing an earlier one that the later change saw. No caller learns
-- of a change before it is durable: the client returns after step 2, a
-- waiter is woken by step 3, and the poll that backs notifications up
-- (fifoq.heartbeat) commits durably itself, after what it read. What a
-- crash can now take back is a change in the ~1 ms between steps 1 and 2
-- that nobody had been told about yet; a plain read (fifoq.execution_details)
-- may see it in that window.
--
-- The plain functions (fifoq.enqueue, fifoq.complete, ...) behave as before
-- and remain the interface for callers inside their own transaction
-- (`enqueue(conn=...)`, triggers): their changes are durable with the
-- caller's commit.

CREATE FUNCTION fifoq.defer_flush() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- Both settings are transaction-local: they end with this transaction.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM set_config('fifoq.hold_notifications', 'on', true);
END
$$;
COMMENT ON FUNCTION fifoq.defer_flush() IS
    'Step 1 of a deferred operation: this transaction commits without waiting for the WAL flush and holds its '
    'owner notifications in the session until CALL fifoq.flush_and_notify().';

CREATE OR REPLACE FUNCTION fifoq.notify_owner(owner bigint, execution_id bigint, status fifoq.execution_status,
                                              at timestamptz DEFAULT clock_timestamp())
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_channel text;
    v_message text;
BEGIN
    -- Each executor LISTENs on its own channel, so a notification wakes only
    -- the process that waits. The payload carries the transition time so the
    -- waiter needs no second round trip to learn started_at.
    IF owner IS NULL THEN
        RETURN;
    END IF;
    v_channel := 'fifoq_executor_' || owner;
    v_message := execution_id || ' ' || status || ' ' || extract(epoch FROM at);
    IF current_setting('fifoq.hold_notifications', true) = 'on' THEN
        -- A deferred operation (fifoq.defer_flush): the waiter must not hear
        -- of the change before it is on disk. Kept in a session setting, one
        -- line per notification, so it outlives this transaction's commit;
        -- set non-locally inside the transaction, it is discarded with the
        -- transaction if that rolls back.
        PERFORM set_config('fifoq.held_notifications',
                           coalesce(current_setting('fifoq.held_notifications', true), '')
                               || v_channel || ' ' || v_message || E'\n',
                           false);
    ELSE
        PERFORM pg_notify(v_channel, v_message);
    END IF;
END
$$;
-- The comment is unchanged from 0002; CREATE OR REPLACE keeps it.

CREATE PROCEDURE fifoq.flush_and_notify()
LANGUAGE plpgsql
AS $$
DECLARE
    v_held text := coalesce(current_setting('fifoq.held_notifications', true), '');
    v_line text;
BEGIN
    PERFORM set_config('fifoq.held_notifications', '', false);
    -- Step 2. PostgreSQL flushes at commit only a transaction that has an xid
    -- and wrote WAL; this message gives it both at the cost of one tiny
    -- record (logical decoding consumers see it under the prefix 'fifoq').
    -- The commit then waits for the flush up to here, covering every commit
    -- before it, step 1's included. Held with the session's own
    -- synchronous_commit: off there means the caller chose no durability.
    PERFORM pg_logical_emit_message(true, 'fifoq', 'flush');
    COMMIT;
    -- Step 3. Only now may the owners hear of the changes.
    IF v_held <> '' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        FOREACH v_line IN ARRAY string_to_array(rtrim(v_held, E'\n'), E'\n') LOOP
            PERFORM pg_notify(split_part(v_line, ' ', 1), substr(v_line, strpos(v_line, ' ') + 1));
        END LOOP;
    END IF;
END
$$;
COMMENT ON PROCEDURE fifoq.flush_and_notify() IS
    'Steps 2 and 3 of deferred operations: waits until everything committed so far is on disk, then sends the '
    'owner notifications the session held back. Call outside a transaction block, after fifoq.*_deferred.';

-- The deferred forms of the operations a client runs on its own connection.
-- Each is the plain function in a transaction that fifoq.defer_flush() marks.

CREATE FUNCTION fifoq.enqueue_deferred(
    p_action  text,
    p_payload jsonb DEFAULT NULL,
    p_group   text DEFAULT NULL,
    p_owner   bigint DEFAULT NULL
) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN fifoq.enqueue(p_action, p_payload, p_group, p_owner);
END
$$;
COMMENT ON FUNCTION fifoq.enqueue_deferred(text, jsonb, text, bigint) IS
    'fifoq.enqueue committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.complete_deferred(p_id bigint, p_result jsonb DEFAULT NULL, p_error text DEFAULT NULL)
RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN fifoq.complete(p_id, p_result, p_error);
END
$$;
COMMENT ON FUNCTION fifoq.complete_deferred(bigint, jsonb, text) IS
    'fifoq.complete committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.cancel_deferred(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN fifoq.cancel(p_id);
END
$$;
COMMENT ON FUNCTION fifoq.cancel_deferred(bigint) IS
    'fifoq.cancel committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.time_out_deferred(p_id bigint) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN fifoq.time_out(p_id);
END
$$;
COMMENT ON FUNCTION fifoq.time_out_deferred(bigint) IS
    'fifoq.time_out committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.watch_deferred(p_id bigint, p_executor bigint) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN fifoq.watch(p_id, p_executor);
END
$$;
COMMENT ON FUNCTION fifoq.watch_deferred(bigint, bigint) IS
    'fifoq.watch committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.claim_deferred(p_executor bigint, p_actions text[], p_limit integer)
RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    RETURN QUERY SELECT * FROM fifoq.claim(p_executor, p_actions, p_limit);
END
$$;
COMMENT ON FUNCTION fifoq.claim_deferred(bigint, text[], integer) IS
    'fifoq.claim committed without waiting for the disk; follow with CALL fifoq.flush_and_notify().';
