-- A policy can be removed again: fifoq.delete_policy.
-- depends: 0019_bounded_scans
--
-- Why. Policies could be set and replaced, never removed: an action's own
-- policy, once set (or a name mistyped in `fifoq policy set`), shadowed its
-- pack's and the default for good, and stayed in `fifoq policy list`.
-- Operators expect to hand an action back to its pack's policy.
--
-- What. fifoq.delete_policy(name) deletes the row of an action, a pack
-- pattern ('pack.*') or the default ('*') and returns it (no row when none
-- was set; nothing changes then). What governs the affected queues from then
-- on is the lookup of fifoq.policy_for, unchanged: the pack's policy, the
-- default, or unlimited. As in set_policy, a limit that rises by it takes
-- effect at once: the function admits into every affected queue that has
-- waiters, under each queue's advisory lock, in queue id order (the order
-- every multi-queue statement locks in, so no deadlock with set_policy or
-- maintain). A limit that falls is not enforced on those already active:
-- they finish, and admission waits until the queue is under the new limit.
--
-- Queues that the policy governed are found by name (the action itself; the
-- pack's actions that have no own policy; for '*' every queue): admitting
-- into a queue it did not govern is harmless, as admit only fills free
-- slots. Invoker rights, like set_policy: it needs DELETE on
-- fifoq.policies, which the least-privilege role fifoq_executor does not
-- have (removing a policy is the operator's, like purge).

CREATE FUNCTION fifoq.delete_policy(p_action text) RETURNS fifoq.policies
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_policy   fifoq.policies;
    v_queue_id integer;
BEGIN
    IF NOT coalesce(fifoq.valid_name(p_action), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ400',
            MESSAGE = format('invalid policy: action name %L %s', p_action, fifoq.name_problem(p_action));
    END IF;

    -- The primary key finds the row; its row lock makes a concurrent
    -- set_policy of the same name wait for this transaction (then insert).
    DELETE FROM fifoq.policies WHERE action = p_action RETURNING * INTO v_policy;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    FOR v_queue_id IN
        SELECT q.id FROM fifoq.queues q
        WHERE q.queued_count > 0
          AND (p_action = '*'
               OR q.action = p_action
               OR fifoq.pack_pattern(q.action) = p_action)
        ORDER BY q.id
    LOOP
        PERFORM fifoq.lock_queue(v_queue_id);
        PERFORM fifoq.admit(v_queue_id);
    END LOOP;
    RETURN v_policy;
END
$$;
COMMENT ON FUNCTION fifoq.delete_policy(text) IS
    'Removes the policy of an action, a pack (''pack.*'') or the default (''*'') and returns it '
    '(no row if none was set). The queues fall back to fifoq.policy_for''s next policy; a raised '
    'limit admits waiting executions at once.';
