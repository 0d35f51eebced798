-- Reverts 0022_column_comments.sql: the columns it described have no comment again,
-- and the three stats columns that had one before get it back.

COMMENT ON COLUMN fifoq.executions.id IS NULL;
COMMENT ON COLUMN fifoq.executions.enqueued_at IS NULL;
COMMENT ON COLUMN fifoq.executions.started_at IS NULL;
COMMENT ON COLUMN fifoq.executions.finished_at IS NULL;
COMMENT ON COLUMN fifoq.executions.queue_id IS NULL;
COMMENT ON COLUMN fifoq.executions.status IS NULL;
COMMENT ON COLUMN fifoq.executions.payload IS NULL;
COMMENT ON COLUMN fifoq.executions.result IS NULL;
COMMENT ON COLUMN fifoq.executions.error IS NULL;
COMMENT ON COLUMN fifoq.queues.id IS NULL;
COMMENT ON COLUMN fifoq.queues.action IS NULL;
COMMENT ON COLUMN fifoq.queues.total_enqueued IS NULL;
COMMENT ON COLUMN fifoq.queues.total_succeeded IS NULL;
COMMENT ON COLUMN fifoq.queues.total_failed IS NULL;
COMMENT ON COLUMN fifoq.queues.total_cancelled IS NULL;
COMMENT ON COLUMN fifoq.queues.total_timed_out IS NULL;
COMMENT ON COLUMN fifoq.queues.total_abandoned IS NULL;
COMMENT ON COLUMN fifoq.queues.created_at IS NULL;
COMMENT ON COLUMN fifoq.policies.action IS NULL;
COMMENT ON COLUMN fifoq.policies.updated_at IS NULL;
COMMENT ON COLUMN fifoq.executors.id IS NULL;
COMMENT ON COLUMN fifoq.executors.name IS NULL;
COMMENT ON COLUMN fifoq.executors.hostname IS NULL;
COMMENT ON COLUMN fifoq.executors.pid IS NULL;
COMMENT ON COLUMN fifoq.executors.started_at IS NULL;
COMMENT ON COLUMN fifoq.executors.heartbeat_at IS NULL;
COMMENT ON COLUMN fifoq.executors.end_reason IS NULL;
COMMENT ON COLUMN fifoq.execution_details.id IS NULL;
COMMENT ON COLUMN fifoq.execution_details.action IS NULL;
COMMENT ON COLUMN fifoq.execution_details."group" IS NULL;
COMMENT ON COLUMN fifoq.execution_details.seq IS NULL;
COMMENT ON COLUMN fifoq.execution_details.status IS NULL;
COMMENT ON COLUMN fifoq.execution_details.payload IS NULL;
COMMENT ON COLUMN fifoq.execution_details.result IS NULL;
COMMENT ON COLUMN fifoq.execution_details.error IS NULL;
COMMENT ON COLUMN fifoq.execution_details.enqueued_at IS NULL;
COMMENT ON COLUMN fifoq.execution_details.started_at IS NULL;
COMMENT ON COLUMN fifoq.execution_details.finished_at IS NULL;
COMMENT ON COLUMN fifoq.execution_details.owner IS NULL;
COMMENT ON COLUMN fifoq.execution_details.queue_id IS NULL;
COMMENT ON COLUMN fifoq.execution_details.deadline IS NULL;
COMMENT ON SEQUENCE fifoq.executions_id_seq IS NULL;
COMMENT ON SEQUENCE fifoq.queues_id_seq IS NULL;
COMMENT ON SEQUENCE fifoq.executors_id_seq IS NULL;

-- The statistics relations' columns, as 0022 listed them: no comment again,
-- except the three of the live view that had one before.
DO $$
DECLARE
    v_relation text;
    v_column   text;
BEGIN
    FOREACH v_relation IN ARRAY ARRAY['fifoq.queue_stats', 'fifoq.queue_stats_live'] LOOP
        FOREACH v_column IN ARRAY ARRAY['action', 'group', 'queue_length', 'active_count',
                                        'max_concurrent', 'oldest_enqueued_at', 'total_enqueued',
                                        'total_completed', 'total_failed', 'total_cancelled',
                                        'total_timed_out', 'total_abandoned', 'last_updated'] LOOP
            -- Fixed names from the list above, never input.
            EXECUTE format('COMMENT ON COLUMN %s.%I IS NULL', v_relation, v_column);
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON COLUMN fifoq.queue_stats_live.queue_length IS 'Executions waiting (not counting active ones).';
COMMENT ON COLUMN fifoq.queue_stats_live.max_concurrent IS 'Limit of the policy in force; NULL: unlimited.';
COMMENT ON COLUMN fifoq.queue_stats_live.total_completed IS 'Succeeded plus failed.';
