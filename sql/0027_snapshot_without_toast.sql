-- The statistics snapshot keeps its names in the row: no TOAST table to
-- build on every refresh.
-- depends: 0026_sweep_until_released
--
-- Why. A plain REFRESH (what fifoq.refresh_stats(true) runs, sql/0023)
-- builds the view anew: a new heap, its unique index, and, because the
-- action and group columns are text (storage EXTENDED, no length bound), a
-- new TOAST table with a TOAST index of its own: a second relation, a
-- second B-tree build and its file sync, every time. It is not needed:
-- names are at most 255 characters (fifoq.valid_name, checked by the
-- queues_names_valid trigger), at most 1,020 bytes each in UTF-8, so a row
-- is at most about 2.2 kB, well within the 8 kB page that a row must fit
-- in when nothing can be moved out of line.
--
-- With both name columns stored PLAIN (inline, never compressed or moved
-- out of line), PostgreSQL decides the view needs no TOAST table
-- (needs_toast_table: no toastable column), and REFRESH no longer makes
-- one. Measured on the development server (PostgreSQL 15, 2 cores, 100
-- rows, 300 interleaved pairs of plain REFRESH on two views of this shape,
-- round trip with commit): 5.01 ms with the TOAST table, 3.23 ms without.
-- CONCURRENTLY gains as well: its temporary copy is made like the view.
--
-- The existing TOAST table goes at the first rebuild; the view is rebuilt
-- here when it holds data (an unpopulated one stays unpopulated, and loses
-- its TOAST table at its first refresh).

ALTER MATERIALIZED VIEW fifoq.queue_stats
    ALTER COLUMN action SET STORAGE PLAIN,
    ALTER COLUMN "group" SET STORAGE PLAIN;

DO $$
BEGIN
    IF (SELECT relispopulated FROM pg_catalog.pg_class WHERE oid = 'fifoq.queue_stats'::regclass) THEN
        REFRESH MATERIALIZED VIEW fifoq.queue_stats;
    END IF;
END
$$;
