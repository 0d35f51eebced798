-- Names are checked when a queue or policy is named, not on every update.
-- depends: 0016_name_messages
--
-- Why. The CHECK constraints queues_action_valid, queues_group_valid and
-- policies_action_valid called fifoq.valid_name, and PostgreSQL checks
-- every CHECK constraint on every UPDATE of a row, whichever columns
-- change. 0013 made valid_name stricter (it refuses format and separator
-- characters, U+00A0 or U+200B say, that 0001 accepted), so after an
-- upgrade a queue named before 0013 with such a character (an action, or a
-- group taken from a payload value through group_by) failed every counter
-- update: its executions could not be completed or cancelled, and, since
-- fifoq.maintain() updates counters for every queue in one statement, one
-- such queue stopped timeouts, reaping and admission for all (found by an
-- audit of upgrades with work in flight). It also cost every state change
-- two valid_name calls on the hot path, for columns that never change.
--
-- What. The constraints go; a BEFORE trigger runs the same test when a row
-- is inserted or its name columns are set (UPDATE OF action, group_key:
-- counter updates do not fire it), with the same SQLSTATE (check_violation)
-- and fifoq.name_problem's words. Rows named before 0013 stay readable,
-- completable and cancellable, so their queues drain; new executions
-- cannot join them (fifoq.enqueue refuses the name), and new names are held
-- to the rule as before, whoever inserts them.

CREATE FUNCTION fifoq.check_names() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT coalesce(fifoq.valid_name(NEW.action), false) THEN
        RAISE EXCEPTION 'invalid action name %: %', quote_literal(NEW.action), fifoq.name_problem(NEW.action)
            USING ERRCODE = 'check_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    -- Only queues have a group ('' is the action's one default group). Two
    -- IFs: plpgsql would resolve NEW.group_key on a policy row in one.
    IF TG_TABLE_NAME = 'queues' THEN
        IF NEW.group_key <> '' AND NOT fifoq.valid_name(NEW.group_key) THEN
            RAISE EXCEPTION 'invalid group name %: %', quote_literal(NEW.group_key), fifoq.name_problem(NEW.group_key)
                USING ERRCODE = 'check_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION fifoq.check_names() IS
    'Trigger: refuses an action or group name that fifoq.valid_name refuses, when a queue or policy is named '
    '(not on counter updates, so names accepted by an older rule stay usable until their queues drain).';

ALTER TABLE fifoq.queues DROP CONSTRAINT queues_action_valid, DROP CONSTRAINT queues_group_valid;
CREATE TRIGGER queues_names_valid BEFORE INSERT OR UPDATE OF action, group_key ON fifoq.queues
    FOR EACH ROW EXECUTE FUNCTION fifoq.check_names();
COMMENT ON TRIGGER queues_names_valid ON fifoq.queues IS
    'Action and group names are valid (fifoq.valid_name) when a queue is made or renamed.';

ALTER TABLE fifoq.policies DROP CONSTRAINT policies_action_valid;
CREATE TRIGGER policies_names_valid BEFORE INSERT OR UPDATE OF action ON fifoq.policies
    FOR EACH ROW EXECUTE FUNCTION fifoq.check_names();
COMMENT ON TRIGGER policies_names_valid ON fifoq.policies IS
    'The action name or pattern is valid (fifoq.valid_name) when a policy is made or renamed.';
