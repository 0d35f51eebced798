-- Reverts 0017_names_checked_on_insert.sql: the CHECK constraints of 0001.
--
-- A constraint is added validated when every existing name passes (the
-- schema is then exactly as 0016 left it); a database that still holds a
-- name refused since 0013 gets it NOT VALID instead, so the rollback does
-- not fail on old data (new rows are checked either way).

DROP TRIGGER queues_names_valid ON fifoq.queues;
DROP TRIGGER policies_names_valid ON fifoq.policies;
DROP FUNCTION fifoq.check_names();

ALTER TABLE fifoq.queues
    ADD CONSTRAINT queues_action_valid CHECK (fifoq.valid_name(action)) NOT VALID,
    ADD CONSTRAINT queues_group_valid CHECK (group_key = '' OR fifoq.valid_name(group_key)) NOT VALID;
ALTER TABLE fifoq.policies
    ADD CONSTRAINT policies_action_valid CHECK (fifoq.valid_name(action)) NOT VALID;

DO $$
DECLARE
    v_constraint record;
BEGIN
    FOR v_constraint IN
        SELECT conrelid::regclass AS tbl, conname
        FROM pg_constraint
        WHERE conname IN ('queues_action_valid', 'queues_group_valid', 'policies_action_valid')
          AND connamespace = 'fifoq'::regnamespace
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', v_constraint.tbl, v_constraint.conname);
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'constraint % left NOT VALID: some existing names predate 0013', v_constraint.conname;
        END;
    END LOOP;
END
$$;
