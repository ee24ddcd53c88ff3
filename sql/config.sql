-- Settings.

-- name: config_get
SELECT value FROM main.chanlite_config WHERE key = ?1

-- name: config_set
INSERT INTO main.chanlite_config(key, value) VALUES (?1, ?2)
ON CONFLICT(key) DO UPDATE SET value = excluded.value

-- name: capacity_set
INSERT INTO main.chanlite_capacity(pattern, capacity) VALUES (?1, ?2)
ON CONFLICT(pattern) DO UPDATE SET capacity = excluded.capacity

-- name: capacity_remove
DELETE FROM main.chanlite_capacity WHERE pattern = ?1
