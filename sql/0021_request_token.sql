-- A request token on executions, so that a client can find out whether an
-- enqueue whose answer it never got was stored.
-- depends: 0020_delete_policy
--
-- Why. A client that loses its connection with no SQLSTATE (a network
-- drop, a reset from a proxy) after sending a statement cannot tell
-- whether it committed: the server may have committed and the reply been
-- lost. Running the enqueue again would then store the execution twice
-- (a bare enqueue), or leave the first one owned by an executor that
-- nobody waits on it for (enqueue_and_wait), holding a slot until the
-- executor closes. The client draws a random token per call and sends it
-- along; after such a loss it looks the token up (fifoq/queries.sql
-- `find_request`) and uses what it finds instead of enqueueing again.
--
-- How, at no cost to the enqueue path beyond a parameter. The deferred
-- enqueues (the ones fifoq's own connections run, outside any caller
-- transaction) put the token in the transaction-local setting
-- fifoq.request; the column's default reads it. So fifoq.enqueue and
-- fifoq.enqueue_many are unchanged: their INSERT does not name the column.
-- Executions enqueued any other way (enqueue(conn=...), triggers, psql)
-- have no token (NULL, no storage). The column is not indexed: the lookup
-- reads only the executions created since the lost call began (a range of
-- the primary key), which is rare and short.
--
-- The default is STABLE (current_setting), so ADD COLUMN does not rewrite
-- the table: existing rows read NULL.

ALTER TABLE fifoq.executions
    ADD COLUMN request bigint DEFAULT nullif(current_setting('fifoq.request', true), '')::bigint;
COMMENT ON COLUMN fifoq.executions.request IS
    'Token of the client call that enqueued it (deferred enqueues only), to find it after a lost reply.';

-- The deferred enqueues take the token. A new parameter changes the
-- function's identity, so the old ones go (an old client's four arguments
-- still call the new one: the token defaults to NULL).
DROP FUNCTION fifoq.enqueue_deferred(text, jsonb, text, bigint);
DROP FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint);

CREATE FUNCTION fifoq.enqueue_deferred(
    p_action  text,
    p_payload jsonb DEFAULT NULL,
    p_group   text DEFAULT NULL,
    p_owner   bigint DEFAULT NULL,
    p_request bigint DEFAULT NULL
) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    -- Transaction-local: read by the column default of the row inserted below.
    PERFORM set_config('fifoq.request', coalesce(p_request::text, ''), true);
    RETURN fifoq.enqueue(p_action, p_payload, p_group, p_owner);
END
$$;
COMMENT ON FUNCTION fifoq.enqueue_deferred(text, jsonb, text, bigint, bigint) IS
    'fifoq.enqueue committed without waiting for the disk, the execution tagged with the client''s request '
    'token; follow with CALL fifoq.flush_and_notify().';

CREATE FUNCTION fifoq.enqueue_many_deferred(
    p_action   text,
    p_payloads jsonb[],
    p_group    text DEFAULT NULL,
    p_owner    bigint DEFAULT NULL,
    p_request  bigint DEFAULT NULL
) RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM fifoq.defer_flush();
    PERFORM set_config('fifoq.request', coalesce(p_request::text, ''), true);
    RETURN QUERY SELECT * FROM fifoq.enqueue_many(p_action, p_payloads, p_group, p_owner);
END
$$;
COMMENT ON FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint, bigint) IS
    'fifoq.enqueue_many committed without waiting for the disk, every execution tagged with the client''s '
    'request token; follow with CALL fifoq.flush_and_notify().';
