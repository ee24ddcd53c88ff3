-- Expiry clean-up and flush.

-- A few expired messages, removed by every send so that channels nobody
-- reads do not keep their messages until someone calls channel_trim().
-- The probe comes first: the DELETE builds a temporary table for its IN
-- list even when nothing has expired, which is most of the time. The order
-- is total (ties broken by id) so that count_expired and dead_expired
-- (sql/stats.sql) pick exactly the rows it removes.
-- name: any_expired
SELECT 1 FROM main.chanlite_message WHERE expires_at <= ?1 LIMIT 1

-- name: purge_some_expired
DELETE FROM main.chanlite_message WHERE id IN
  (SELECT id FROM main.chanlite_message WHERE expires_at <= ?1
    ORDER BY expires_at, id LIMIT ?2)

-- name: purge_expired_messages
DELETE FROM main.chanlite_message WHERE expires_at <= ?1

-- name: purge_expired_groups
DELETE FROM main.chanlite_group WHERE expires_at <= ?1

-- name: flush_messages
DELETE FROM main.chanlite_message

-- name: flush_groups
DELETE FROM main.chanlite_group
