-- Reverts 0020_delete_policy.sql.

DROP FUNCTION fifoq.delete_policy(text);
