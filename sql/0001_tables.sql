-- fifoq tables: policies, queues (one arbiter row per action and group),
-- executions and executors.
--
-- The queue row is the single source of truth for a queue's counters and
-- its sequence numbers. Every change to a queue or to one of its executions
-- happens while holding that queue's advisory lock (see fifoq.lock_queue in
-- 0002_protocol.sql), so the counters never race and statistics can be read
-- from the small queues table instead of counting the execution history.

CREATE TYPE fifoq.execution_status AS ENUM (
    'queued', 'active', 'succeeded', 'failed', 'cancelled', 'timed_out', 'abandoned'
);
COMMENT ON TYPE fifoq.execution_status IS
    'Lifecycle of an execution: queued -> active -> succeeded | failed; '
    'queued -> cancelled | timed_out | abandoned; active -> cancelled | abandoned. '
    'Terminal statuses never change.';

-- Names are validated here as well as in Python, so that SQL callers
-- (triggers, other languages) get the same rules.
--
-- plpgsql, not SQL: the CHECK constraints of fifoq.queues call it on every
-- counter update (several per execution), and PostgreSQL inlines a SQL
-- function there by parsing its body again each time the statement starts;
-- that was about a sixth of the server's CPU on the hot path.
CREATE FUNCTION fifoq.valid_name(name text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN name IS NOT NULL
       AND char_length(name) BETWEEN 1 AND 255
       AND name !~ '[\x01-\x1f\x7f-\x9f]';
END
$$;
COMMENT ON FUNCTION fifoq.valid_name(text) IS
    'True when the text is a valid action or group name: 1-255 characters, none of them a control character.';

CREATE TABLE fifoq.policies (
    action           text PRIMARY KEY
                     CONSTRAINT policies_action_valid CHECK (fifoq.valid_name(action)),
    max_concurrent   integer NOT NULL
                     CONSTRAINT policies_max_concurrent_positive CHECK (max_concurrent >= 1),
    max_queue_length integer NOT NULL
                     CONSTRAINT policies_max_queue_length_not_negative CHECK (max_queue_length >= 0),
    queue_timeout    double precision
                     CONSTRAINT policies_queue_timeout_positive
                     CHECK (queue_timeout > 0 AND queue_timeout < 'infinity'),
    on_limit         text NOT NULL DEFAULT 'enqueue'
                     CONSTRAINT policies_on_limit_known CHECK (on_limit IN ('enqueue', 'reject')),
    group_by         text[] NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE fifoq.policies IS
    'Concurrency policy per action. The key is an action name, a pack pattern '
    '''pack.*'' or ''*'' for the default; lookup order is action, pack, default '
    '(fifoq.policy_for). Without any row an action is unlimited.';
COMMENT ON COLUMN fifoq.policies.max_concurrent IS 'At most this many executions of one queue are active at once.';
COMMENT ON COLUMN fifoq.policies.max_queue_length IS 'At most this many executions of one queue wait (active ones not counted).';
COMMENT ON COLUMN fifoq.policies.queue_timeout IS 'Seconds an execution may wait before it is timed_out; NULL: forever.';
COMMENT ON COLUMN fifoq.policies.on_limit IS 'enqueue: wait in line; reject: refuse an execution that cannot start at once.';
COMMENT ON COLUMN fifoq.policies.group_by IS 'Payload keys whose values form the group, so the limit applies per group.';

-- fillfactor leaves room on each page so that the frequent counter updates
-- stay HOT (no indexed column changes).
CREATE TABLE fifoq.queues (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action          text NOT NULL CONSTRAINT queues_action_valid CHECK (fifoq.valid_name(action)),
    group_key       text NOT NULL DEFAULT ''
                    CONSTRAINT queues_group_valid CHECK (group_key = '' OR fifoq.valid_name(group_key)),
    last_seq        bigint NOT NULL DEFAULT 0,
    queued_count    integer NOT NULL DEFAULT 0 CONSTRAINT queues_queued_count_not_negative CHECK (queued_count >= 0),
    active_count    integer NOT NULL DEFAULT 0 CONSTRAINT queues_active_count_not_negative CHECK (active_count >= 0),
    total_enqueued  bigint NOT NULL DEFAULT 0,
    total_succeeded bigint NOT NULL DEFAULT 0,
    total_failed    bigint NOT NULL DEFAULT 0,
    total_cancelled bigint NOT NULL DEFAULT 0,
    total_timed_out bigint NOT NULL DEFAULT 0,
    total_abandoned bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT queues_action_group_key UNIQUE (action, group_key)
) WITH (fillfactor = 50);
COMMENT ON TABLE fifoq.queues IS
    'One row per (action, group): the arbiter of that queue. Its counters and last_seq '
    'change only under the queue''s advisory lock, so they are exact.';
COMMENT ON COLUMN fifoq.queues.group_key IS 'Group inside the action; '''' is the default group.';
COMMENT ON COLUMN fifoq.queues.last_seq IS 'Last sequence number handed out; taken under the queue lock, so seq order is commit order.';
COMMENT ON COLUMN fifoq.queues.queued_count IS 'Executions waiting (status queued).';
COMMENT ON COLUMN fifoq.queues.active_count IS 'Executions holding a slot (status active).';

CREATE TABLE fifoq.executions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq         bigint NOT NULL,
    owner       bigint,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deadline    timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    queue_id    integer NOT NULL REFERENCES fifoq.queues (id),
    status      fifoq.execution_status NOT NULL DEFAULT 'queued',
    payload     jsonb,
    result      jsonb,
    error       text
);
COMMENT ON TABLE fifoq.executions IS
    'One row per request to run an action. Columns are ordered for compact rows; '
    'read it through fifoq.execution_details for action and group names.';
COMMENT ON COLUMN fifoq.executions.seq IS 'Position in its queue; strictly increasing in enqueue commit order.';
COMMENT ON COLUMN fifoq.executions.owner IS 'fifoq.executors.id of the executor waiting on or running it; NULL after a bare enqueue.';
COMMENT ON COLUMN fifoq.executions.deadline IS 'When a queued execution times out (policy queue_timeout); cleared once it leaves the queue.';

-- The queue head: admission reads the lowest seq of one queue. Partial, so it
-- holds only waiting executions and stays small however long the history.
-- Unique: two waiting executions of one queue never share a seq.
CREATE UNIQUE INDEX executions_queue_head ON fifoq.executions (queue_id, seq)
    WHERE status = 'queued';
COMMENT ON INDEX fifoq.executions_queue_head IS 'Waiting executions in FIFO order per queue (admission, stats).';

-- Active executions nobody has claimed yet (bare enqueue, admitted): workers
-- claim them in seq order.
CREATE INDEX executions_unclaimed ON fifoq.executions (queue_id, seq)
    WHERE status = 'active' AND owner IS NULL;
COMMENT ON INDEX fifoq.executions_unclaimed IS 'Admitted executions waiting for a worker to claim them.';

-- Executions an executor holds, for reaping a dead executor.
CREATE INDEX executions_owned ON fifoq.executions (owner)
    WHERE status IN ('queued', 'active') AND owner IS NOT NULL;
COMMENT ON INDEX fifoq.executions_owned IS 'Live executions per owner (reaping).';

-- Queue timeouts: the maintenance pass scans the earliest deadlines.
CREATE INDEX executions_deadline ON fifoq.executions (deadline)
    WHERE status = 'queued' AND deadline IS NOT NULL;
COMMENT ON INDEX fifoq.executions_deadline IS 'Waiting executions by deadline (queue timeouts).';

CREATE TABLE fifoq.executors (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    hostname     text NOT NULL DEFAULT '',
    pid          integer,
    lease        double precision NOT NULL CONSTRAINT executors_lease_positive CHECK (lease > 0),
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at     timestamptz,
    end_reason   text
);
COMMENT ON TABLE fifoq.executors IS
    'Connected QueueManagers. An executor whose heartbeat is older than its lease is reaped: '
    'its queued and active executions become abandoned and their slots are freed.';
COMMENT ON COLUMN fifoq.executors.lease IS 'Seconds without a heartbeat after which the executor counts as dead.';
COMMENT ON COLUMN fifoq.executors.ended_at IS 'When it closed or was reaped; NULL while alive.';

CREATE INDEX executors_alive ON fifoq.executors (heartbeat_at) WHERE ended_at IS NULL;
COMMENT ON INDEX fifoq.executors_alive IS 'Live executors by last heartbeat (reaping).';

CREATE INDEX executors_ended ON fifoq.executors (ended_at) WHERE ended_at IS NOT NULL;
COMMENT ON INDEX fifoq.executors_ended IS 'Recently ended executors (the maintenance sweep of what they still own).';
