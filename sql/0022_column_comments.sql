-- Every column of fifoq's tables and views, and every sequence, explains itself in psql.
-- depends: 0021_request_token
--
-- Why. SPEC §5 asks that `\d+` in psql explain the schema. Tables, views
-- and functions had comments from the start, but only the columns whose
-- meaning was not obvious did; an operator reading `\d+ fifoq.queue_stats`
-- saw an empty Description column. Comments only: no data, lock or plan
-- changes (COMMENT takes a brief lock on the relation, like any DDL).
--
-- The two statistics relations have the same columns with the same
-- meaning; one list below serves both, so they cannot drift apart.

COMMENT ON COLUMN fifoq.executions.id IS 'Execution id (what fifoq.enqueue returns and the other calls take).';
COMMENT ON COLUMN fifoq.executions.enqueued_at IS 'When it was enqueued (clock_timestamp() at the enqueue).';
COMMENT ON COLUMN fifoq.executions.started_at IS 'When it became active (took a slot); NULL if it never started.';
COMMENT ON COLUMN fifoq.executions.finished_at IS 'When it reached its terminal status; NULL while queued or active.';
COMMENT ON COLUMN fifoq.executions.queue_id IS 'Its queue: fifoq.queues.id, one per (action, group).';
COMMENT ON COLUMN fifoq.executions.status IS
    'queued -> active -> succeeded | failed; queued -> cancelled | timed_out | abandoned; '
    'active -> cancelled | abandoned. Terminal statuses never change.';
COMMENT ON COLUMN fifoq.executions.payload IS 'JSON given at enqueue; NULL for none.';
COMMENT ON COLUMN fifoq.executions.result IS 'JSON given when it was completed; NULL for none.';
COMMENT ON COLUMN fifoq.executions.error IS 'Error text given when it was completed: set exactly when it failed.';

COMMENT ON COLUMN fifoq.queues.id IS 'Queue id (fifoq.executions.queue_id); also the key of its advisory lock.';
COMMENT ON COLUMN fifoq.queues.action IS 'Action of this queue.';
COMMENT ON COLUMN fifoq.queues.total_enqueued IS 'Executions ever enqueued into this queue.';
COMMENT ON COLUMN fifoq.queues.total_succeeded IS 'Executions that ended succeeded.';
COMMENT ON COLUMN fifoq.queues.total_failed IS 'Executions that ended failed.';
COMMENT ON COLUMN fifoq.queues.total_cancelled IS 'Executions that ended cancelled.';
COMMENT ON COLUMN fifoq.queues.total_timed_out IS 'Executions that ended timed_out (waited past the policy''s queue_timeout).';
COMMENT ON COLUMN fifoq.queues.total_abandoned IS 'Executions that ended abandoned (their executor died or closed).';
COMMENT ON COLUMN fifoq.queues.created_at IS 'When its first execution was enqueued.';

COMMENT ON COLUMN fifoq.policies.action IS 'An action name, a pack pattern ''pack.*'', or ''*'' for the default.';
COMMENT ON COLUMN fifoq.policies.updated_at IS 'When it was last set.';

COMMENT ON COLUMN fifoq.executors.id IS 'Executor id: fifoq.executions.owner of what it waits on or runs.';
COMMENT ON COLUMN fifoq.executors.name IS 'Its name (QueueManager.connect(name=...); default host:pid:n).';
COMMENT ON COLUMN fifoq.executors.hostname IS 'Host its process runs on.';
COMMENT ON COLUMN fifoq.executors.pid IS 'Its client process id on that host.';
COMMENT ON COLUMN fifoq.executors.started_at IS 'When it registered.';
COMMENT ON COLUMN fifoq.executors.heartbeat_at IS 'Its last heartbeat; older than lease seconds means it is reaped.';
COMMENT ON COLUMN fifoq.executors.end_reason IS 'closed, or lease expired (reaped by the others); NULL while alive.';

COMMENT ON SEQUENCE fifoq.executions_id_seq IS 'Execution ids (identity of fifoq.executions.id).';
COMMENT ON SEQUENCE fifoq.queues_id_seq IS 'Queue ids (identity of fifoq.queues.id).';
COMMENT ON SEQUENCE fifoq.executors_id_seq IS 'Executor ids (identity of fifoq.executors.id).';

COMMENT ON COLUMN fifoq.execution_details.id IS 'Execution id.';
COMMENT ON COLUMN fifoq.execution_details.action IS 'Action of its queue.';
COMMENT ON COLUMN fifoq.execution_details."group" IS 'Group of its queue; NULL for the default group.';
COMMENT ON COLUMN fifoq.execution_details.seq IS 'Position in its queue; strictly increasing in enqueue commit order.';
COMMENT ON COLUMN fifoq.execution_details.status IS 'See fifoq.executions.status.';
COMMENT ON COLUMN fifoq.execution_details.payload IS 'JSON given at enqueue.';
COMMENT ON COLUMN fifoq.execution_details.result IS 'JSON given when it was completed.';
COMMENT ON COLUMN fifoq.execution_details.error IS 'Error text given when it failed.';
COMMENT ON COLUMN fifoq.execution_details.enqueued_at IS 'When it was enqueued.';
COMMENT ON COLUMN fifoq.execution_details.started_at IS 'When it became active.';
COMMENT ON COLUMN fifoq.execution_details.finished_at IS 'When it reached its terminal status.';
COMMENT ON COLUMN fifoq.execution_details.owner IS 'fifoq.executors.id of the executor waiting on or running it.';
COMMENT ON COLUMN fifoq.execution_details.queue_id IS 'fifoq.queues.id of its queue.';
COMMENT ON COLUMN fifoq.execution_details.deadline IS 'When it times out if still queued; NULL: never.';

DO $$
DECLARE
    v_relation text;
    v_column   record;
BEGIN
    FOREACH v_relation IN ARRAY ARRAY['fifoq.queue_stats', 'fifoq.queue_stats_live'] LOOP
        FOR v_column IN
            SELECT * FROM (VALUES
                ('action',             'Action of the queue.'),
                ('group',              'Group of the queue; NULL for the default group.'),
                ('queue_length',       'Executions waiting (not counting active ones).'),
                ('active_count',       'Executions holding a slot.'),
                ('max_concurrent',     'Limit of the policy in force; NULL: unlimited.'),
                ('oldest_enqueued_at', 'Enqueue time of the head of the line; NULL when nobody waits.'),
                ('total_enqueued',     'Executions ever enqueued.'),
                ('total_completed',    'Succeeded plus failed.'),
                ('total_failed',       'Executions that ended failed.'),
                ('total_cancelled',    'Executions that ended cancelled.'),
                ('total_timed_out',    'Executions that ended timed_out.'),
                ('total_abandoned',    'Executions that ended abandoned (their executor died or closed).'),
                ('last_updated',       'When these figures were read (live view) or refreshed (snapshot).')
            ) AS c(name, comment)
        LOOP
            -- Identifiers and text quoted by format(): the names are the
            -- fixed list above, never input.
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', v_relation, v_column.name, v_column.comment);
        END LOOP;
    END LOOP;
END
$$;
