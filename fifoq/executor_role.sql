-- fifoq: a least-privilege role for executors, workers and producers.
--
-- Run it as the owner of schema fifoq (the role that runs `fifoq migrate`;
-- it also needs CREATEROLE, or run it as a superuser), in the application's
-- database, after migrating, and again after every migration that adds
-- tables or functions (it is idempotent). It ships inside the package:
--
--     fifoq migrate --executor-role             # migrates, then runs this file
--     fifoq migrate --executor-role --sql       # prints it, for review or psql
--
-- It creates the group role fifoq_executor (NOLOGIN) and grants it exactly
-- what fifoq's operations need. Give it to a login role per application:
--
--     CREATE ROLE billing_worker LOGIN PASSWORD '...' IN ROLE fifoq_executor;
--
-- What the role can do: every operation of the Python API and the command
-- line (enqueue, wait, complete, cancel, claim, set and read policies, live
-- and refreshed statistics), which are calls of the functions in schema
-- fifoq, plus reading the tables and views in psql.
--
-- What it cannot do: create, alter or drop anything in schema fifoq (no
-- CREATE on the schema, owns nothing), delete or truncate rows (history is
-- kept; only the owner prunes it, and only the owner removes a policy:
-- fifoq.delete_policy), touch yoyo's migration tables (nothing is
-- granted on them), or read any
-- other schema (nothing is granted there; the public schema of PostgreSQL 15+
-- has no CREATE for PUBLIC).
--
-- Why not SECURITY DEFINER everywhere: fifoq's functions run with the
-- caller's rights (SECURITY INVOKER), so this role needs SELECT, INSERT and
-- UPDATE on the four tables, and could in principle update a row by hand
-- around the functions. Definer functions would let it have EXECUTE only,
-- but every call would then switch user and search_path (a per-call cost on
-- the hot path) and every function would have to be written against
-- search_path attacks; fifoq keeps invoker rights and trusts its executors
-- not to write the tables directly. The one exception is
-- fifoq.refresh_stats(): only a materialized view's owner may refresh it, so
-- that function is SECURITY DEFINER with a fixed search_path
-- (sql/0005_refresh_stats_definer.sql).
--
-- One more thing the functions do with the caller's rights: when an executor
-- reconnects, fifoq.attach_executor ends a stale session of the same executor
-- with pg_terminate_backend, which PostgreSQL allows for sessions of the same
-- login role. Run all processes of one executor (one QueueManager) under one
-- login role, as they are anyway.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'fifoq_executor') THEN
        CREATE ROLE fifoq_executor NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE fifoq_executor IS
    'Runs fifoq operations (fifoq migrate --executor-role); grant it to login roles.';

-- Look up objects in the schema, nothing more (no CREATE).
GRANT USAGE ON SCHEMA fifoq TO fifoq_executor;

-- The operations: enqueue, complete, cancel, claim, heartbeat, maintain, ...
-- (EXECUTE is PUBLIC's by default; granted explicitly so that a database
-- whose owner revoked it from PUBLIC still works.)
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fifoq TO fifoq_executor;

-- What the invoker-rights functions read and write. No DELETE, no TRUNCATE.
GRANT SELECT, INSERT, UPDATE ON fifoq.executions, fifoq.queues, fifoq.executors,
    fifoq.policies TO fifoq_executor;
-- Identity columns take their ids from these sequences.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA fifoq TO fifoq_executor;

-- Reading: execution details and statistics.
GRANT SELECT ON fifoq.execution_details, fifoq.queue_stats_live, fifoq.queue_stats
    TO fifoq_executor;
