-- Groups of channels.

-- name: group_add
INSERT INTO main.chanlite_group(group_name, channel, expires_at)
VALUES (?1, ?2, ?3)
ON CONFLICT(group_name, channel) DO UPDATE SET expires_at = excluded.expires_at

-- An expired membership is removed too, but does not count as one (?3 is now).
-- name: group_discard_expired
DELETE FROM main.chanlite_group
WHERE group_name = ?1 AND channel = ?2 AND expires_at <= ?3

-- name: group_discard
DELETE FROM main.chanlite_group WHERE group_name = ?1 AND channel = ?2

-- name: group_expiry
SELECT coalesce((SELECT value FROM main.chanlite_config
                  WHERE key = 'group_expiry'), ?1)

-- name: group_purge_expired
DELETE FROM main.chanlite_group WHERE group_name = ?1 AND expires_at <= ?2

-- name: group_members
SELECT channel FROM main.chanlite_group
WHERE group_name = ?1 AND expires_at > ?2 ORDER BY channel

-- What group_send reads once rather than once per member (ext/group.c,
-- FanOut): the settings send_settings (sql/message.sql) reads, ?1 and ?2
-- being the defaults of expiry and capacity, ...
-- name: group_send_defaults
SELECT
  coalesce((SELECT value FROM main.chanlite_config WHERE key = 'expiry'), ?1),
  coalesce((SELECT value FROM main.chanlite_config WHERE key = 'capacity'), ?2),
  (SELECT count(*) FROM main.chanlite_capacity)

-- ... and the capacity patterns, in the order send_settings tries them.
-- name: group_send_capacities
SELECT pattern, capacity FROM main.chanlite_capacity ORDER BY id

-- One run of members, in name order, that share a queue and that group_send
-- found room for: one statement, so one statement journal, for them all
-- (ext/group.c, flush_run). ?1 group, ?2 now, ?3 and ?4 the run's first and
-- last member, ?5 the queue, ?6 1 if it is a `prefix!` (the local part is
-- stored), ?7 when the copies expire, ?8 the message.
-- name: group_send_run
INSERT INTO main.chanlite_message(queue, local, sent_at, expires_at, body)
SELECT ?5, CASE WHEN ?6 THEN substr(channel, length(?5) + 1) END, ?2, ?7, ?8
FROM main.chanlite_group
WHERE group_name = ?1 AND channel >= ?3 AND channel <= ?4 AND expires_at > ?2
ORDER BY channel
