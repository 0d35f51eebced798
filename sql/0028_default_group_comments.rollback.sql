-- Reverts 0028_default_group_comments.sql: 0022's comments.

COMMENT ON COLUMN fifoq.execution_details."group" IS 'Group of its queue; NULL for the default group.';
COMMENT ON COLUMN fifoq.queue_stats_live."group" IS 'Group of the queue; NULL for the default group.';
COMMENT ON COLUMN fifoq.queue_stats."group" IS 'Group of the queue; NULL for the default group.';
