-- fifoq admission protocol: every state change as a plpgsql function, so
-- Python runs one `SELECT fifoq.fn(...)` per operation (one round trip) and
-- SQL callers (triggers, other languages) get exactly the same behaviour.
-- depends: 0001_tables
--
-- Error codes (SQLSTATE class FQ), mapped to Python exceptions by fifoq.errors:
--   FQ400 invalid policy   FQ403 policy rejected   FQ404 unknown execution
--   FQ409 invalid transition   FQ410 executor gone   FQ422 invalid input
--   FQ429 queue full

CREATE VIEW fifoq.execution_details AS
SELECT e.id,
       q.action,
       q.group_key AS "group",
       e.seq,
       e.status,
       e.payload,
       e.result,
       e.error,
       e.enqueued_at,
       e.started_at,
       e.finished_at,
       e.owner,
       e.queue_id,
       e.deadline
FROM fifoq.executions e
JOIN fifoq.queues q ON q.id = e.queue_id;
COMMENT ON VIEW fifoq.execution_details IS
    'Executions with their action and group names: the row every fifoq function returns.';

CREATE FUNCTION fifoq.details(e fifoq.executions, action text, "group" text)
RETURNS fifoq.execution_details
LANGUAGE sql IMMUTABLE
AS $$
    -- Builds the fifoq.execution_details row of an execution whose action and
    -- group the caller already knows, sparing a second lookup. Inlined.
    SELECT ROW(e.id, action, "group", e.seq, e.status, e.payload, e.result, e.error, e.enqueued_at,
               e.started_at, e.finished_at, e.owner, e.queue_id, e.deadline)::fifoq.execution_details
$$;
COMMENT ON FUNCTION fifoq.details(fifoq.executions, text, text) IS
    'The fifoq.execution_details row of an execution, given its action and group.';

-- Lock keys. Advisory locks use the two-integer form with a fixed first key,
-- so they never collide with an application's own single-bigint advisory locks.
CREATE FUNCTION fifoq.lock_queue(queue_id integer) RETURNS void
LANGUAGE sql VOLATILE
AS $$ SELECT pg_advisory_xact_lock(1718183537, queue_id) $$;
COMMENT ON FUNCTION fifoq.lock_queue(integer) IS
    'Takes the queue''s advisory transaction lock (key 1718183537, queue id), held to commit. '
    'Every change to a queue or its executions happens under it.';

CREATE FUNCTION fifoq.try_lock_queue(queue_id integer) RETURNS boolean
LANGUAGE sql VOLATILE
AS $$ SELECT pg_try_advisory_xact_lock(1718183537, queue_id) $$;
COMMENT ON FUNCTION fifoq.try_lock_queue(integer) IS
    'Like fifoq.lock_queue but returns false instead of waiting.';

-- plpgsql rather than SQL: PostgreSQL re-plans a non-inlined SQL function on
-- every call, while plpgsql caches the plan. This runs on every enqueue.
CREATE FUNCTION fifoq.policy_for(p_action text) RETURNS fifoq.policies
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_policy fifoq.policies;
BEGIN
    -- One primary-key index scan with three keys: the action itself, its
    -- pack pattern (text before the first dot, plus '.*') and the default.
    SELECT p.* INTO v_policy
    FROM fifoq.policies p
    WHERE p.action IN (p_action, split_part(p_action, '.', 1) || '.*', '*')
    ORDER BY CASE p.action WHEN p_action THEN 0 WHEN '*' THEN 2 ELSE 1 END
    LIMIT 1;
    RETURN v_policy;
END
$$;
COMMENT ON FUNCTION fifoq.policy_for(text) IS
    'The policy in force for an action: its own, else its pack''s (''pack.*''), else the default (''*''); '
    'NULL fields when none is set, meaning unlimited.';

CREATE FUNCTION fifoq.group_key(group_by text[], payload jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    -- Values of the group_by keys, in order, joined by ','. A missing key or
    -- a non-object payload contributes an empty string.
    IF cardinality(group_by) = 0 THEN
        RETURN '';
    END IF;
    RETURN (SELECT string_agg(
                       coalesce(CASE WHEN jsonb_typeof(payload) = 'object' THEN payload ->> k END, ''),
                       ',' ORDER BY ord)
            FROM unnest(group_by) WITH ORDINALITY AS g(k, ord));
END
$$;
COMMENT ON FUNCTION fifoq.group_key(text[], jsonb) IS
    'Group of an execution from its policy''s group_by keys and its payload.';

CREATE FUNCTION fifoq.notify_owner(owner bigint, execution_id bigint, status fifoq.execution_status,
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
COMMENT ON FUNCTION fifoq.notify_owner(bigint, bigint, fifoq.execution_status, timestamptz) IS
    'Tells the owning executor of a status change: channel fifoq_executor_<id>, '
    'payload ''<execution id> <status> <epoch seconds of the change>''.';

-- ---------------------------------------------------------------------------
-- fifoq.admit: hand free slots of one queue to its head, in seq order.
--
-- Locks, in this order:
--   1. The caller already holds the queue's advisory transaction lock
--      (fifoq.lock_queue). It is the single arbiter of the queue: counting
--      the active executions and claiming the head happen under it, so two
--      executors can never both see the same free slot (the race of
--      "count, then SKIP LOCKED" designs, where each claims a different row
--      and the limit is exceeded). It is held until commit, so the next
--      admitter of this queue sees our committed counters.
--   2. Row locks on the head with FOR UPDATE SKIP LOCKED, ORDER BY seq.
--      Every fifoq writer holds the queue lock first, so no fifoq session
--      holds a row lock on a waiting execution here. An outside session
--      might (an operator's SELECT ... FOR UPDATE in psql): SKIP LOCKED keeps
--      us from blocking on it, and the gap check below stops admission at
--      the first skipped row rather than start a later one first: FIFO wins
--      over progress, and the next completion or maintenance pass retries.
--
-- Why seq order is commit order: fifoq.enqueue takes seq from
-- queues.last_seq under the same queue lock, held to commit. An enqueue that
-- took seq n has committed (or rolled back) before anyone can take n + 1, so
-- a later number is never visible while an earlier one is still in flight.
--
-- Queues are isolated: the lock key is the queue id, so different queues
-- never wait for each other. Functions that lock several queues do it in
-- ascending id order so they cannot deadlock each other.
--
-- started_at is clock_timestamp() taken under the lock, so within a queue it
-- never decreases as seq grows.
-- ---------------------------------------------------------------------------
CREATE FUNCTION fifoq.admit(p_queue_id integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue    fifoq.queues;
    v_policy   fifoq.policies;
    v_free     integer;
    v_prev_seq bigint;
    v_admitted integer := 0;
    v_at       timestamptz;
    r          record;
BEGIN
    SELECT * INTO v_queue FROM fifoq.queues WHERE id = p_queue_id;
    IF v_queue.queued_count = 0 THEN
        RETURN 0;
    END IF;
    v_policy := fifoq.policy_for(v_queue.action);
    v_free := v_policy.max_concurrent - v_queue.active_count;  -- NULL: unlimited
    IF v_free <= 0 THEN
        RETURN 0;
    END IF;

    FOR r IN
        SELECT e.id, e.seq, e.owner
        FROM fifoq.executions e
        WHERE e.queue_id = p_queue_id AND e.status = 'queued'
        ORDER BY e.seq
        LIMIT v_free               -- LIMIT NULL is LIMIT ALL
        FOR UPDATE SKIP LOCKED
    LOOP
        -- Gap check: a waiting row before this one that SKIP LOCKED passed over.
        IF EXISTS (
            SELECT 1 FROM fifoq.executions g
            WHERE g.queue_id = p_queue_id AND g.status = 'queued'
              AND g.seq < r.seq AND (v_prev_seq IS NULL OR g.seq > v_prev_seq)
        ) THEN
            EXIT;
        END IF;
        UPDATE fifoq.executions
        SET status = 'active', started_at = clock_timestamp(), deadline = NULL
        WHERE id = r.id
        RETURNING started_at INTO v_at;
        IF r.owner IS NULL THEN
            -- Nobody waits on it: wake the workers that run this action.
            PERFORM pg_notify('fifoq_work', v_queue.action);
        ELSE
            PERFORM fifoq.notify_owner(r.owner, r.id, 'active', v_at);
        END IF;
        v_prev_seq := r.seq;
        v_admitted := v_admitted + 1;
    END LOOP;

    IF v_admitted > 0 THEN
        UPDATE fifoq.queues
        SET queued_count = queued_count - v_admitted,
            active_count = active_count + v_admitted
        WHERE id = p_queue_id;
    END IF;
    RETURN v_admitted;
END
$$;
COMMENT ON FUNCTION fifoq.admit(integer) IS
    'Admits the head of a queue into its free slots in seq order and notifies. '
    'The caller must hold the queue lock. Returns how many were admitted.';

CREATE FUNCTION fifoq.ensure_queue(p_action text, p_group text) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_id integer;
BEGIN
    SELECT id INTO v_id FROM fifoq.queues WHERE action = p_action AND group_key = p_group;
    IF NOT FOUND THEN
        -- Two first enqueues may race here; ON CONFLICT makes one insert win.
        INSERT INTO fifoq.queues (action, group_key) VALUES (p_action, p_group)
        ON CONFLICT (action, group_key) DO NOTHING;
        SELECT id INTO v_id FROM fifoq.queues WHERE action = p_action AND group_key = p_group;
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION fifoq.ensure_queue(text, text) IS 'Id of the queue of (action, group), created on first use.';

CREATE FUNCTION fifoq.enqueue(
    p_action  text,
    p_payload jsonb DEFAULT NULL,
    p_group   text DEFAULT NULL,
    p_owner   bigint DEFAULT NULL
) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_policy   fifoq.policies;
    v_group    text;
    v_queue_id integer;
    v_queued   integer;
    v_active   integer;
    v_seq      bigint;
    v_wait     boolean;
    v_where    text;
    v_row      fifoq.executions;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid action name %L: must be 1-255 characters without control characters', p_action);
    END IF;
    v_policy := fifoq.policy_for(p_action);
    v_group := coalesce(p_group, '');
    IF v_group = '' AND cardinality(v_policy.group_by) > 0 THEN
        v_group := fifoq.group_key(v_policy.group_by, p_payload);
    END IF;
    IF v_group <> '' AND NOT fifoq.valid_name(v_group) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ422',
            MESSAGE = format('invalid group name %L for action %L: must be 1-255 characters without control characters',
                             v_group, p_action);
    END IF;

    -- The queue lock, held to commit: it orders seq with commit order (see
    -- fifoq.admit) and makes the counter checks below exact.
    v_queue_id := fifoq.ensure_queue(p_action, v_group);
    PERFORM fifoq.lock_queue(v_queue_id);

    -- Take a seq and count the newcomer in, in one statement. SET sees the
    -- counters as they were: a newcomer waits whenever anyone waits, even if
    -- a slot is free at this instant (it never jumps ahead of the line), or
    -- when all slots are taken. If a check below refuses it, the RAISE
    -- rolls this update back with everything else.
    UPDATE fifoq.queues
    SET last_seq = last_seq + 1,
        total_enqueued = total_enqueued + 1,
        queued_count = queued_count
            + CASE WHEN queued_count > 0 OR active_count >= v_policy.max_concurrent THEN 1 ELSE 0 END,
        active_count = active_count
            + CASE WHEN queued_count > 0 OR active_count >= v_policy.max_concurrent THEN 0 ELSE 1 END
    WHERE id = v_queue_id
    RETURNING last_seq, queued_count, active_count INTO v_seq, v_queued, v_active;
    -- Admission needs an empty line, so a positive count means it waits.
    v_wait := v_queued > 0;

    IF v_wait THEN
        v_where := CASE WHEN v_group = '' THEN '' ELSE format(' (group %L)', v_group) END;
        IF v_policy.on_limit = 'reject' THEN
            RAISE EXCEPTION USING ERRCODE = 'FQ403',
                MESSAGE = format('action %L%s is at its limit: %s of %s active, %s waiting (on_limit=reject)',
                                 p_action, v_where, v_active, v_policy.max_concurrent, v_queued - 1);
        END IF;
        IF v_queued - 1 >= v_policy.max_queue_length THEN
            RAISE EXCEPTION USING ERRCODE = 'FQ429',
                MESSAGE = format('queue full for action %L%s: %s of %s waiting',
                                 p_action, v_where, v_queued - 1, v_policy.max_queue_length);
        END IF;
    END IF;

    -- Free slot and nobody waiting: the execution is admitted by this same
    -- insert instead of a separate fifoq.admit call.
    INSERT INTO fifoq.executions (queue_id, seq, status, owner, enqueued_at, deadline, started_at, payload)
    VALUES (v_queue_id, v_seq,
            CASE WHEN v_wait THEN 'queued' ELSE 'active' END::fifoq.execution_status,
            p_owner,
            clock_timestamp(),
            CASE WHEN v_wait THEN clock_timestamp() + v_policy.queue_timeout * interval '1 second' END,
            CASE WHEN v_wait THEN NULL ELSE clock_timestamp() END,
            p_payload)
    RETURNING * INTO v_row;
    IF NOT v_wait AND p_owner IS NULL THEN
        PERFORM pg_notify('fifoq_work', p_action);
    END IF;

    RETURN fifoq.details(v_row, p_action, v_group);
END
$$;
COMMENT ON FUNCTION fifoq.enqueue(text, jsonb, text, bigint) IS
    'Appends an execution to the queue of its action and group (from p_group, else the policy''s group_by keys '
    'of the payload) and admits it at once when a slot is free and nobody waits. Raises FQ429 when the queue is '
    'full and FQ403 when on_limit=reject and it cannot start at once; in both cases nothing is stored.';

-- Reads an execution's queue and takes that queue's lock, raising FQ404 for
-- an unknown id. Shared by every function that changes one execution.
CREATE FUNCTION fifoq.lock_execution(p_id bigint) RETURNS fifoq.executions
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue_id integer;
    v_row      fifoq.executions;
BEGIN
    SELECT queue_id INTO v_queue_id FROM fifoq.executions WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ404', MESSAGE = format('unknown execution %s', p_id);
    END IF;
    PERFORM fifoq.lock_queue(v_queue_id);
    -- Re-read under the lock (a new statement sees what the previous lock
    -- holder committed).
    SELECT * INTO v_row FROM fifoq.executions WHERE id = p_id;
    RETURN v_row;
END
$$;
COMMENT ON FUNCTION fifoq.lock_execution(bigint) IS
    'Takes the lock of the execution''s queue and returns the row as it is under that lock; FQ404 if unknown.';

CREATE FUNCTION fifoq.complete(p_id bigint, p_result jsonb DEFAULT NULL, p_error text DEFAULT NULL)
RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue_id integer;
    v_row      fifoq.executions;
    v_queue    fifoq.queues;
    v_status   fifoq.execution_status := CASE WHEN p_error IS NULL THEN 'succeeded' ELSE 'failed' END;
BEGIN
    SELECT queue_id INTO v_queue_id FROM fifoq.executions WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ404', MESSAGE = format('unknown execution %s', p_id);
    END IF;
    PERFORM fifoq.lock_queue(v_queue_id);
    -- Only an active execution completes (checked under the lock), so a
    -- second completion can never free a second slot.
    UPDATE fifoq.executions
    SET status = v_status, result = p_result, error = p_error, finished_at = clock_timestamp()
    WHERE id = p_id AND status = 'active'
    RETURNING * INTO v_row;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ409',
            MESSAGE = format('cannot complete execution %s: it is %s, not active', p_id,
                             (SELECT status FROM fifoq.executions WHERE id = p_id));
    END IF;
    UPDATE fifoq.queues
    SET active_count = active_count - 1,
        total_succeeded = total_succeeded + CASE WHEN p_error IS NULL THEN 1 ELSE 0 END,
        total_failed = total_failed + CASE WHEN p_error IS NULL THEN 0 ELSE 1 END
    WHERE id = v_queue_id
    RETURNING * INTO v_queue;
    -- The freed slot goes to the head in this same transaction: no extra
    -- round trip, and no committed instant with a free slot and a waiter.
    IF v_queue.queued_count > 0 THEN
        PERFORM fifoq.admit(v_queue_id);
    END IF;
    PERFORM fifoq.notify_owner(v_row.owner, p_id, v_status, v_row.finished_at);
    RETURN fifoq.details(v_row, v_queue.action, v_queue.group_key);
END
$$;
COMMENT ON FUNCTION fifoq.complete(bigint, jsonb, text) IS
    'Finishes an active execution (succeeded, or failed when p_error is given), frees its slot and admits the next. '
    'FQ409 unless active, so a second completion never frees a second slot.';

CREATE FUNCTION fifoq.cancel(p_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_row fifoq.executions;
BEGIN
    v_row := fifoq.lock_execution(p_id);
    IF v_row.status NOT IN ('queued', 'active') THEN
        RETURN false;
    END IF;
    UPDATE fifoq.executions
    SET status = 'cancelled', finished_at = clock_timestamp(), deadline = NULL
    WHERE id = p_id;
    UPDATE fifoq.queues
    SET queued_count = queued_count - CASE WHEN v_row.status = 'queued' THEN 1 ELSE 0 END,
        active_count = active_count - CASE WHEN v_row.status = 'active' THEN 1 ELSE 0 END,
        total_cancelled = total_cancelled + 1
    WHERE id = v_row.queue_id;
    IF v_row.status = 'active' THEN
        PERFORM fifoq.admit(v_row.queue_id);
    END IF;
    PERFORM fifoq.notify_owner(v_row.owner, p_id, 'cancelled');
    RETURN true;
END
$$;
COMMENT ON FUNCTION fifoq.cancel(bigint) IS
    'Cancels a queued or active execution (freeing its slot) and tells its owner; false if it had already finished.';

CREATE FUNCTION fifoq.time_out(p_id bigint) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_row    fifoq.executions;
    v_result fifoq.execution_details;
BEGIN
    v_row := fifoq.lock_execution(p_id);
    IF v_row.status = 'queued' THEN
        UPDATE fifoq.executions
        SET status = 'timed_out', finished_at = clock_timestamp(), deadline = NULL
        WHERE id = p_id;
        UPDATE fifoq.queues
        SET queued_count = queued_count - 1, total_timed_out = total_timed_out + 1
        WHERE id = v_row.queue_id;
        PERFORM fifoq.notify_owner(v_row.owner, p_id, 'timed_out');
    END IF;
    SELECT * INTO v_result FROM fifoq.execution_details WHERE id = p_id;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION fifoq.time_out(bigint) IS
    'Marks a waiting execution timed_out (a waiter gave up); returns the row, unchanged if it was no longer queued.';

CREATE FUNCTION fifoq.watch(p_id bigint, p_executor bigint) RETURNS fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_row    fifoq.executions;
    v_result fifoq.execution_details;
BEGIN
    v_row := fifoq.lock_execution(p_id);
    IF v_row.status IN ('queued', 'active') THEN
        IF v_row.owner IS NOT NULL AND v_row.owner <> p_executor THEN
            RAISE EXCEPTION USING ERRCODE = 'FQ409',
                MESSAGE = format('execution %s is owned by executor %s', p_id, v_row.owner);
        END IF;
        IF v_row.owner IS NULL THEN
            UPDATE fifoq.executions SET owner = p_executor WHERE id = p_id;
        END IF;
    END IF;
    SELECT * INTO v_result FROM fifoq.execution_details WHERE id = p_id;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION fifoq.watch(bigint, bigint) IS
    'Makes an executor the owner of a queued or active execution it is going to wait on or run; '
    'returns the row so the caller sees whether it already started or finished.';

CREATE FUNCTION fifoq.claim(p_executor bigint, p_actions text[], p_limit integer)
RETURNS SETOF fifoq.execution_details
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue record;
    v_taken integer := 0;
    v_id    bigint;
BEGIN
    -- Workers take admitted, unowned executions of their actions, oldest
    -- admission first. Queues whose lock is busy are skipped, not waited for;
    -- the notification of the next admission brings the worker back.
    FOR v_queue IN
        SELECT DISTINCT e.queue_id
        FROM fifoq.executions e
        JOIN fifoq.queues q ON q.id = e.queue_id
        WHERE e.status = 'active' AND e.owner IS NULL
          AND (p_actions IS NULL OR q.action = ANY (p_actions))
        ORDER BY e.queue_id
    LOOP
        EXIT WHEN v_taken >= p_limit;
        CONTINUE WHEN NOT fifoq.try_lock_queue(v_queue.queue_id);
        -- One row at a time in seq order (executions_unclaimed), so the
        -- result lists each queue's executions in the order they were admitted.
        FOR v_id IN
            SELECT u.id FROM fifoq.executions u
            WHERE u.queue_id = v_queue.queue_id AND u.status = 'active' AND u.owner IS NULL
            ORDER BY u.seq
            LIMIT p_limit - v_taken
        LOOP
            UPDATE fifoq.executions SET owner = p_executor WHERE id = v_id;
            v_taken := v_taken + 1;
            RETURN QUERY SELECT * FROM fifoq.execution_details WHERE id = v_id;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION fifoq.claim(bigint, text[], integer) IS
    'Gives a worker up to p_limit admitted executions nobody owns, of the given actions (NULL: any), in seq order.';

-- ---------------------------------------------------------------------------
-- Executors: registration, heartbeat, reaping.
-- ---------------------------------------------------------------------------
CREATE FUNCTION fifoq.register_executor(p_name text, p_hostname text, p_pid integer, p_lease double precision)
RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO fifoq.executors (name, hostname, pid, lease)
    VALUES (p_name, coalesce(p_hostname, ''), p_pid, p_lease)
    RETURNING id
$$;
COMMENT ON FUNCTION fifoq.register_executor(text, text, integer, double precision) IS
    'Registers a connected QueueManager and returns its executor id.';

CREATE FUNCTION fifoq.attach_executor(p_executor bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_key integer := (p_executor % 2147483647)::integer;
BEGIN
    -- The executor's listener session holds this session-level lock while it
    -- is connected, so pg_locks shows which backend is which executor. A
    -- session that still holds it after the executor reconnected is a stale
    -- one (a half-open connection the server has not noticed yet): end it
    -- instead of waiting for it, so the reconnect never blocks.
    IF NOT pg_try_advisory_lock(1718183538, v_key) THEN
        PERFORM pg_terminate_backend(l.pid)
        FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.classid = 1718183538 AND l.objid = v_key::oid
          AND l.objsubid = 2 AND l.granted AND l.pid <> pg_backend_pid()
          -- pg_locks covers every database, and executor ids restart at 1 in
          -- each: only this database's sessions hold our lock.
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    END IF;
    UPDATE fifoq.executors SET heartbeat_at = clock_timestamp()
    WHERE id = p_executor AND ended_at IS NULL;
    IF NOT FOUND THEN
        PERFORM pg_advisory_unlock(1718183538, v_key);
        RAISE EXCEPTION USING ERRCODE = 'FQ410',
            MESSAGE = format('executor %s is gone: it was reaped or closed', p_executor);
    END IF;
END
$$;
COMMENT ON FUNCTION fifoq.attach_executor(bigint) IS
    'Binds the calling session to an executor (session advisory lock 1718183538, id) after (re)connecting; FQ410 if it was reaped.';

CREATE FUNCTION fifoq.heartbeat(p_executor bigint, p_watching bigint[] DEFAULT '{}')
RETURNS TABLE (execution_id bigint, status fifoq.execution_status)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    UPDATE fifoq.executors SET heartbeat_at = clock_timestamp()
    WHERE id = p_executor AND ended_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ410',
            MESSAGE = format('executor %s is gone: it was reaped or closed', p_executor);
    END IF;
    -- The poll that backs NOTIFY up: the watched executions that are no
    -- longer waiting, so a lost notification delays a waiter, never strands it.
    RETURN QUERY
        SELECT e.id, e.status FROM fifoq.executions e
        WHERE e.id = ANY (p_watching) AND e.status <> 'queued';
END
$$;
COMMENT ON FUNCTION fifoq.heartbeat(bigint, bigint[]) IS
    'Renews an executor''s lease and returns the watched executions that are no longer queued; FQ410 if reaped.';

CREATE FUNCTION fifoq.abandon_owned(p_executor bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE
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
COMMENT ON FUNCTION fifoq.abandon_owned(bigint) IS
    'Marks every queued or active execution of an executor abandoned, frees the slots and admits the next.';

CREATE FUNCTION fifoq.unregister_executor(p_executor bigint) RETURNS integer
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
COMMENT ON FUNCTION fifoq.unregister_executor(bigint) IS
    'Ends an executor that closes: what it still waits on or runs becomes abandoned. Returns how many.';

CREATE FUNCTION fifoq.maintain() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_queue_id  integer;
    v_executor  bigint;
    v_timed_out integer := 0;
    v_reaped    integer := 0;
    v_abandoned integer := 0;
    v_admitted  integer := 0;
    v_n         integer;
BEGIN
    -- Every connected executor calls this about twice a second; one at a
    -- time does the work, the others return at once.
    IF NOT pg_try_advisory_xact_lock(1718183539, 0) THEN
        RETURN NULL;
    END IF;
    -- Never wait long behind a busy queue (for example a client transaction
    -- that enqueued and has not committed yet): skip it, retry next pass.
    PERFORM set_config('lock_timeout', '200ms', true);

    -- 1. Queue timeouts, enforced here whether or not anyone waits.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.status = 'queued' AND e.deadline <= clock_timestamp()
        ORDER BY e.queue_id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            WITH expired AS (
                UPDATE fifoq.executions e
                SET status = 'timed_out', finished_at = clock_timestamp(), deadline = NULL
                WHERE e.queue_id = v_queue_id AND e.status = 'queued' AND e.deadline <= clock_timestamp()
                RETURNING e.id, e.owner
            ), told AS (
                SELECT fifoq.notify_owner(owner, id, 'timed_out') FROM expired
            )
            SELECT count(*) INTO v_n FROM told;
            UPDATE fifoq.queues
            SET queued_count = queued_count - v_n, total_timed_out = total_timed_out + v_n
            WHERE id = v_queue_id;
            v_timed_out := v_timed_out + v_n;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 2. Reap executors whose lease ran out: their executions are abandoned.
    --    Not in the first lease after a server start: executors that lived
    --    through a restart get one lease to reconnect and keep their work.
    FOR v_executor IN
        SELECT x.id FROM fifoq.executors x
        WHERE x.ended_at IS NULL
          AND x.heartbeat_at + x.lease * interval '1 second' < clock_timestamp()
          AND pg_postmaster_start_time() + x.lease * interval '1 second' < clock_timestamp()
        ORDER BY x.id
    LOOP
        BEGIN
            UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'lease expired'
            WHERE id = v_executor;
            v_abandoned := v_abandoned + fifoq.abandon_owned(v_executor);
            v_reaped := v_reaped + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 2b. Sweep: anything still queued or active under an executor that
    --     ended in the last ten minutes is abandoned too. It catches an
    --     execution given to an executor in the instant it was being reaped
    --     or closed (the owner check of executions_owner_alive reads the
    --     executor row without a lock, so such an insert can commit just
    --     after the reaper looked), and a reaping cut short by lock_timeout.
    FOR v_executor IN
        SELECT x.id FROM fifoq.executors x
        WHERE x.ended_at > clock_timestamp() - interval '10 minutes'
          AND EXISTS (SELECT 1 FROM fifoq.executions e
                      WHERE e.owner = x.id AND e.status IN ('queued', 'active'))
        ORDER BY x.id
    LOOP
        BEGIN
            v_abandoned := v_abandoned + fifoq.abandon_owned(v_executor);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 3. Work conservation: admit wherever a queue has waiters and a free
    --    slot. Normally nothing is found; this repairs what an aborted
    --    transaction or a policy change left behind.
    FOR v_queue_id IN
        SELECT q.id FROM fifoq.queues q
        CROSS JOIN LATERAL fifoq.policy_for(q.action) p
        WHERE q.queued_count > 0
          AND (p.max_concurrent IS NULL OR q.active_count < p.max_concurrent)
        ORDER BY q.id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            v_admitted := v_admitted + fifoq.admit(v_queue_id);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    RETURN jsonb_build_object('timed_out', v_timed_out, 'reaped', v_reaped,
                              'abandoned', v_abandoned, 'admitted', v_admitted);
END
$$;
COMMENT ON FUNCTION fifoq.maintain() IS
    'Periodic pass run by connected executors: times out expired waiters, reaps executors past their lease, '
    'and admits into any free slot with waiters. Returns counts, or NULL when another pass is running.';

-- ---------------------------------------------------------------------------
-- Policies.
-- ---------------------------------------------------------------------------
CREATE FUNCTION fifoq.set_policy(
    p_action           text,
    p_max_concurrent   integer,
    p_max_queue_length integer DEFAULT 10000,
    p_queue_timeout    double precision DEFAULT 3600.0,
    p_on_limit         text DEFAULT 'enqueue',
    p_group_by         text[] DEFAULT '{}'
) RETURNS fifoq.policies
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_policy   fifoq.policies;
    v_queue_id integer;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy: action name %L must be 1-255 characters without control characters', p_action);
    ELSIF p_max_concurrent IS NULL OR p_max_concurrent < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: max_concurrent must be at least 1, got %s', p_action, coalesce(p_max_concurrent::text, 'NULL'));
    ELSIF p_max_queue_length IS NULL OR p_max_queue_length < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: max_queue_length must be at least 0, got %s', p_action, coalesce(p_max_queue_length::text, 'NULL'));
    ELSIF p_queue_timeout IS NOT NULL AND NOT (p_queue_timeout > 0 AND p_queue_timeout < 'infinity') THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: queue_timeout must be a positive number of seconds, got %s', p_action, p_queue_timeout);
    ELSIF p_queue_timeout > 1e9 THEN
        -- Deadlines are clock_timestamp() + queue_timeout seconds: far beyond
        -- this the interval or the timestamp overflows and every enqueue fails.
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: queue_timeout must be at most 1000000000 seconds (NULL waits forever), got %s', p_action, p_queue_timeout);
    ELSIF p_on_limit IS NULL OR p_on_limit NOT IN ('enqueue', 'reject') THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: on_limit must be ''enqueue'' or ''reject'', got %L', p_action, p_on_limit);
    ELSIF EXISTS (SELECT 1 FROM unnest(coalesce(p_group_by, '{}')) k WHERE NOT coalesce(fifoq.valid_name(k), false)) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy for action %L: group_by keys must be 1-255 characters without control characters', p_action);
    END IF;

    INSERT INTO fifoq.policies AS p (action, max_concurrent, max_queue_length, queue_timeout, on_limit, group_by)
    VALUES (p_action, p_max_concurrent, p_max_queue_length, p_queue_timeout, p_on_limit, coalesce(p_group_by, '{}'))
    ON CONFLICT (action) DO UPDATE
    SET max_concurrent = excluded.max_concurrent,
        max_queue_length = excluded.max_queue_length,
        queue_timeout = excluded.queue_timeout,
        on_limit = excluded.on_limit,
        group_by = excluded.group_by,
        updated_at = clock_timestamp()
    RETURNING * INTO v_policy;

    -- A raised limit takes effect at once: admit into the new free slots of
    -- every queue this policy governs, locking queues in id order.
    FOR v_queue_id IN
        SELECT q.id FROM fifoq.queues q
        WHERE q.queued_count > 0 AND (fifoq.policy_for(q.action)).action = p_action
        ORDER BY q.id
    LOOP
        PERFORM fifoq.lock_queue(v_queue_id);
        PERFORM fifoq.admit(v_queue_id);
    END LOOP;
    RETURN v_policy;
END
$$;
COMMENT ON FUNCTION fifoq.set_policy(text, integer, integer, double precision, text, text[]) IS
    'Creates or replaces the policy of an action, a pack (''pack.*'') or the default (''*''), '
    'and admits into slots a raised limit opened. FQ400 on invalid values.';
