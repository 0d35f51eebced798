-- The views' "group" columns say what they hold for the default group.
-- depends: 0027_snapshot_without_toast
--
-- Why. 0022 described the "group" column of fifoq.execution_details,
-- fifoq.queue_stats_live and fifoq.queue_stats as "NULL for the default
-- group", but all three show fifoq.queues.group_key as it is: '' (empty)
-- for the default group (a black-box audit: `WHERE "group" IS NULL`, as the
-- comment suggests, finds nothing). The views are right as they are: the
-- snapshot's unique index over (action, "group"), which REFRESH ...
-- CONCURRENTLY needs, would not tell NULLs apart. The comments change; the
-- Python API goes on reporting the default group as None.
-- Comments only: no data, lock or plan changes.

COMMENT ON COLUMN fifoq.execution_details."group" IS
    'Group of its queue; '''' (empty) for the action''s default group (the Python API reports None).';
COMMENT ON COLUMN fifoq.queue_stats_live."group" IS
    'Group of the queue; '''' (empty) for the action''s default group (the Python API reports None).';
COMMENT ON COLUMN fifoq.queue_stats."group" IS
    'Group of the queue; '''' (empty) for the action''s default group (the Python API reports None).';
