-- Reverts 0027_snapshot_without_toast.sql: the name columns' default
-- storage (EXTENDED). ALTER ... SET STORAGE makes the TOAST table again.

ALTER MATERIALIZED VIEW fifoq.queue_stats
    ALTER COLUMN action SET STORAGE EXTENDED,
    ALTER COLUMN "group" SET STORAGE EXTENDED;
