-- Executions may only be owned by a live executor.
-- depends: 0003_stats
--
-- The reaper (fifoq.maintain) and fifoq.unregister_executor abandon what an
-- executor owns exactly once, when it ends. An execution given to an executor
-- that has already ended -- an enqueue_and_wait or wait_started from a
-- process whose lease ran out while it was paused, racing its own
-- re-registration -- would therefore never be abandoned: its slot would leak
-- for good. This trigger refuses such an owner with FQ410 (ExecutorGone), so
-- nothing is stored and the caller learns that its executor id is stale.
--
-- It reads the executor row without locking it: a row lock here would be
-- taken on every owned enqueue. A reaper that has set ended_at but not yet
-- committed is still seen as alive for those few microseconds.

CREATE FUNCTION fifoq.check_owner_alive() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM fifoq.executors x WHERE x.id = NEW.owner AND x.ended_at IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'FQ410',
            MESSAGE = format('executor %s is gone: it was reaped or closed', NEW.owner);
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION fifoq.check_owner_alive() IS
    'Trigger function: refuses (FQ410) an execution owner that is not a live executor.';

-- Only inserts and updates that set an owner fire it: bare enqueues and the
-- status changes of owned executions cost nothing.
CREATE TRIGGER executions_owner_alive
    BEFORE INSERT OR UPDATE OF owner ON fifoq.executions
    FOR EACH ROW
    WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION fifoq.check_owner_alive();
COMMENT ON TRIGGER executions_owner_alive ON fifoq.executions IS
    'An execution can only be given to a live executor, so the reaper never misses it.';
