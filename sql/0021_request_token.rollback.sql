-- Reverts 0021_request_token.sql: the deferred enqueues of 0006 and 0008, no token column.

DROP FUNCTION fifoq.enqueue_deferred(text, jsonb, text, bigint, bigint);
DROP FUNCTION fifoq.enqueue_many_deferred(text, jsonb[], text, bigint, bigint);

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

ALTER TABLE fifoq.executions DROP COLUMN request;
