-- An action without a dot has no pack: a 'pk.*' policy is not its policy.
-- depends: 0014_fresh_policy_escaped_groups
--
-- SPEC: an action's pack is "the part of the name before the first '.'",
-- set with set_policy("pack.*", ...). The four places that resolve the
-- policy in force (fifoq.policy_for, fifoq.admit_to, fifoq.maintain and the
-- live stats view) computed the pack pattern as split_part(action, '.', 1)
-- || '.*', and split_part returns the whole name when there is no dot: the
-- action 'deploy' was governed by a 'deploy.*' policy, meant for
-- 'deploy.web', 'deploy.db', ... Found by an audit; the API, the CLI's
-- `policy get` and admission all agreed on the wrong answer.
--
-- The pattern is now computed in one place, fifoq.pack_pattern, NULL for a
-- name without a dot (so it matches no policy row). It is an IMMUTABLE SQL
-- function of one expression, which the planner inlines: the joins on it
-- plan as the joins on the bare expression did (hash joins; checked with
-- EXPLAIN of the stats view). The four definitions are restated with the
-- call instead of the expression, otherwise unchanged; admit_to and maintain
-- restate 0011's enable_seqscan setting, which CREATE OR REPLACE would drop.

CREATE FUNCTION fifoq.pack_pattern(p_action text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN strpos(p_action, '.') > 0 THEN split_part(p_action, '.', 1) || '.*' END
$$;
COMMENT ON FUNCTION fifoq.pack_pattern(text) IS
    'The policy name of an action''s pack: the part before the first ''.'', plus ''.*''; NULL (no pack) '
    'for a name without a dot.';

CREATE OR REPLACE FUNCTION fifoq.policy_for(p_action text) RETURNS fifoq.policies
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_policy fifoq.policies;
BEGIN
    -- One primary-key index scan with up to three keys: the action itself,
    -- its pack's pattern (fifoq.pack_pattern: NULL, so no key, for a name
    -- without a dot) and the default.
    SELECT p.* INTO v_policy
    FROM fifoq.policies p
    WHERE p.action IN (p_action, fifoq.pack_pattern(p_action), '*')
    ORDER BY CASE p.action WHEN p_action THEN 0 WHEN '*' THEN 2 ELSE 1 END
    LIMIT 1;
    RETURN v_policy;
END
$$;
-- The comment of fifoq.policy_for is kept by CREATE OR REPLACE.

CREATE OR REPLACE FUNCTION fifoq.admit_to(
    p_queue_id    integer,
    p_claimer     bigint,
    p_claim_limit integer,
    OUT admitted  integer,
    OUT claimed   bigint[]
)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_action    text;
    v_queued    integer;
    v_free      integer;
    v_after     bigint;
    v_ids       bigint[];
    v_seqs      bigint[];
    v_owners    bigint[];
    v_head      bigint[];
    v_take      bigint[] := '{}';
    v_at        timestamptz;
    v_notify    boolean := false;
    i           integer;
BEGIN
    admitted := 0;
    claimed := '{}';
    -- The free slots, with the limit in force found as the stats view finds
    -- it (joins, not a plpgsql call).
    SELECT q.action, q.queued_count,
           coalesce(own.max_concurrent, pack.max_concurrent, dflt.max_concurrent) - q.active_count,
           q.admitted_seq
    INTO v_action, v_queued, v_free, v_after
    FROM fifoq.queues q
    LEFT JOIN fifoq.policies own ON own.action = q.action
    LEFT JOIN fifoq.policies pack ON pack.action = fifoq.pack_pattern(q.action)
    LEFT JOIN fifoq.policies dflt ON dflt.action = '*'
    WHERE q.id = p_queue_id;
    IF v_queued = 0 OR v_free <= 0 THEN   -- v_free NULL: unlimited
        RETURN;
    END IF;

    -- The first v_free waiting executions that nobody else holds a row lock
    -- on (FOR UPDATE SKIP LOCKED over executions_queue_head, in seq order:
    -- under the queue lock no fifoq session holds one, but an operator's
    -- SELECT ... FOR UPDATE may). The scan starts after admitted_seq, past
    -- the index entries of earlier admissions that vacuum has not removed.
    SELECT array_agg(h.id ORDER BY h.seq), array_agg(h.seq ORDER BY h.seq), array_agg(h.owner ORDER BY h.seq)
    INTO v_ids, v_seqs, v_owners
    FROM (SELECT e.id, e.seq, e.owner FROM fifoq.executions e
          WHERE e.queue_id = p_queue_id AND e.status = 'queued' AND e.seq > v_after
          ORDER BY e.seq
          LIMIT v_free                     -- LIMIT NULL is LIMIT ALL
          FOR UPDATE SKIP LOCKED) AS h;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- Gap rule (0002's, as one prefix test): admission stops before the
    -- first waiting execution that SKIP LOCKED passed over, rather than
    -- start a later one first; the next completion or maintenance pass
    -- retries. v_head is the line as it stands, locked rows included.
    SELECT array_agg(g.seq ORDER BY g.seq) INTO v_head
    FROM (SELECT e.seq FROM fifoq.executions e
          WHERE e.queue_id = p_queue_id AND e.status = 'queued' AND e.seq > v_after
          ORDER BY e.seq
          LIMIT cardinality(v_ids)) AS g;
    -- Which to admit, and which of those go to p_claimer: up to
    -- p_claim_limit that nobody owns, in seq order. Array work only.
    FOR i IN 1 .. cardinality(v_ids) LOOP
        EXIT WHEN v_seqs[i] <> v_head[i];
        v_take := v_take || v_ids[i];
        IF v_owners[i] IS NULL THEN
            IF p_claimer IS NOT NULL AND cardinality(claimed) < p_claim_limit THEN
                claimed := claimed || v_ids[i];
            ELSE
                v_notify := true;  -- nobody waits on it: wake the workers of this action
            END IF;
        END IF;
    END LOOP;
    admitted := cardinality(v_take);
    IF admitted = 0 THEN
        RETURN;
    END IF;

    -- One update for all of them, found by primary key (= ANY plans as an
    -- index scan however long the history; a join with an unnested array
    -- can be planned as a scan of the table). One start time, taken under
    -- the queue lock, so started_at still never decreases as seq grows.
    v_at := clock_timestamp();
    UPDATE fifoq.executions e
    SET status = 'active', started_at = v_at, deadline = NULL,
        owner = CASE WHEN e.id = ANY (claimed) THEN p_claimer ELSE e.owner END
    WHERE e.id = ANY (v_take);
    -- The admitted are the line's first `admitted` rows (the gap rule), so
    -- every execution up to the last of them has left it.
    UPDATE fifoq.queues
    SET queued_count = queued_count - admitted,
        active_count = active_count + admitted,
        admitted_seq = v_seqs[admitted]
    WHERE id = p_queue_id;

    -- The waiters of the admitted executions they own hear of it.
    FOR i IN 1 .. admitted LOOP
        IF v_owners[i] IS NOT NULL THEN
            PERFORM fifoq.notify_owner(v_owners[i], v_ids[i], 'active', v_at);
        END IF;
    END LOOP;
    IF v_notify THEN
        PERFORM pg_notify('fifoq_work', v_action);
    END IF;
END
$$;
-- The comment of fifoq.admit_to is kept by CREATE OR REPLACE.

CREATE OR REPLACE FUNCTION fifoq.maintain() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off   -- 0011's setting: CREATE OR REPLACE would drop it otherwise
AS $$
DECLARE
    v_queue_id  integer;
    v_executor  bigint;
    v_timed_out integer := 0;
    v_reaped    integer := 0;
    v_abandoned integer := 0;
    v_admitted  integer := 0;
    v_n         integer;
    v_now       timestamptz;
BEGIN
    -- Every connected executor calls this about twice a second; one at a
    -- time does the work, the others return at once.
    IF NOT pg_try_advisory_xact_lock(1718183539, 0) THEN
        RETURN NULL;
    END IF;
    -- Never wait long behind a busy queue (for example a client transaction
    -- that enqueued and has not committed yet): skip it, retry next pass.
    PERFORM set_config('lock_timeout', '200ms', true);
    -- The pass's one "now". Compared with a variable, deadline <= v_now is a
    -- range condition of executions_deadline; with clock_timestamp()
    -- (volatile, so no index condition) every waiting row was read and
    -- filtered: 4.4 ms per pass with 6,000 waiting, linear in the backlog.
    v_now := clock_timestamp();

    -- 1. Queue timeouts, enforced here whether or not anyone waits.
    FOR v_queue_id IN
        SELECT DISTINCT e.queue_id FROM fifoq.executions e
        WHERE e.status = 'queued' AND e.deadline <= v_now
        ORDER BY e.queue_id
    LOOP
        BEGIN
            PERFORM fifoq.lock_queue(v_queue_id);
            WITH expired AS (
                UPDATE fifoq.executions e
                SET status = 'timed_out', finished_at = clock_timestamp(), deadline = NULL
                WHERE e.queue_id = v_queue_id AND e.status = 'queued' AND e.deadline <= v_now
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
        -- The policy in force, as fifoq.queue_stats_live finds it (joins,
        -- not a plpgsql call per queue), for the queues with waiters only.
        SELECT q.id FROM fifoq.queues q
        LEFT JOIN fifoq.policies own ON own.action = q.action
        LEFT JOIN fifoq.policies pack ON pack.action = fifoq.pack_pattern(q.action)
        LEFT JOIN fifoq.policies dflt ON dflt.action = '*'
        WHERE q.queued_count > 0
          AND q.active_count < coalesce(own.max_concurrent, pack.max_concurrent,
                                        dflt.max_concurrent, q.active_count + 1)
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
-- The comment of fifoq.maintain is kept by CREATE OR REPLACE.

CREATE OR REPLACE VIEW fifoq.queue_stats_live AS
SELECT q.action,
       q.group_key AS "group",
       q.queued_count AS queue_length,
       q.active_count,
       -- fifoq.policy_for written as joins: the action's own policy, else
       -- its pack's, else the default (max_concurrent is never NULL in a
       -- policy row, so the first row found wins).
       coalesce(own.max_concurrent, pack.max_concurrent, dflt.max_concurrent) AS max_concurrent,
       (SELECT e.enqueued_at FROM fifoq.executions e
         WHERE e.queue_id = q.id AND e.status = 'queued' AND e.seq > q.admitted_seq
         ORDER BY e.seq LIMIT 1) AS oldest_enqueued_at,   -- executions_queue_head, from the line's start
       q.total_enqueued,
       q.total_succeeded + q.total_failed AS total_completed,
       q.total_failed,
       q.total_cancelled,
       q.total_timed_out,
       q.total_abandoned,
       clock_timestamp() AS last_updated
FROM fifoq.queues q
LEFT JOIN fifoq.policies own ON own.action = q.action
LEFT JOIN fifoq.policies pack ON pack.action = fifoq.pack_pattern(q.action)
LEFT JOIN fifoq.policies dflt ON dflt.action = '*';
-- The view's and its columns' comments are kept by CREATE OR REPLACE.
