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
