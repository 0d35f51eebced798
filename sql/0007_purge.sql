-- Retention: remove finished executions and ended executors after a while.
-- depends: 0006_flush_outside_lock
--
-- Nothing here is needed for correctness: a finished execution never changes
-- again and the queue counters (fifoq.queues.total_*) already hold the
-- history's totals, so deleting old rows changes no statistic and no
-- admission. It keeps fifoq.executions from growing without end.

CREATE FUNCTION fifoq.purge(p_older_than interval, p_limit integer DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_cutoff    timestamptz;
    v_purged    bigint;
    v_executors bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid retention %s: must be a duration of zero or more', coalesce(p_older_than::text, 'NULL'));
    END IF;
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid purge limit %s: must be at least 1', coalesce(p_limit::text, 'NULL'));
    END IF;
    -- Capped: a cutoff before 4713 BC is out of timestamp range, and nothing
    -- finished a thousand years ago anyway.
    v_cutoff := clock_timestamp() - least(p_older_than, interval '1000 years');

    -- No queue lock: terminal rows are never written again, and no fifoq
    -- function reads them to decide anything. Walks executions_pkey from the
    -- oldest id (ids grow with enqueue time, so old finished rows come
    -- first) and stops after p_limit matches: no index on finished_at is
    -- kept for this, which would cost every completion an index insertion.
    -- SKIP LOCKED: a row an operator holds is left for the next call.
    WITH doomed AS (
        SELECT e.id FROM fifoq.executions e
        WHERE e.status NOT IN ('queued', 'active') AND e.finished_at < v_cutoff
        ORDER BY e.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM fifoq.executions e USING doomed WHERE e.id = doomed.id;
    GET DIAGNOSTICS v_purged = ROW_COUNT;

    -- Ended executors owning nothing live. The maintenance sweep looks at
    -- executors ended in the last ten minutes, so never purge those.
    DELETE FROM fifoq.executors x
    WHERE x.ended_at < least(v_cutoff, clock_timestamp() - interval '10 minutes')
      AND NOT EXISTS (SELECT 1 FROM fifoq.executions e
                      WHERE e.owner = x.id AND e.status IN ('queued', 'active'));
    GET DIAGNOSTICS v_executors = ROW_COUNT;

    RETURN jsonb_build_object('executions', v_purged, 'executors', v_executors);
END
$$;
COMMENT ON FUNCTION fifoq.purge(interval, integer) IS
    'Deletes up to p_limit executions that finished more than p_older_than ago (oldest first) and ended executors '
    'older than that which own nothing live. Call it until it returns fewer than p_limit executions.';
