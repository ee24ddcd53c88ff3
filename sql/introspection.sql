-- The read-only virtual tables. ?1 is now.

-- name: list_channels
SELECT queue || coalesce(local, ''), count(*), ?1 - min(sent_at)
FROM main.chanlite_message WHERE expires_at > ?1
GROUP BY queue, local ORDER BY 1

-- name: list_groups
SELECT group_name, channel, expires_at - ?1
FROM main.chanlite_group WHERE expires_at > ?1
ORDER BY group_name, channel
