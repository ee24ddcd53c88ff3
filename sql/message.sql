-- Sending and receiving.

-- Expiry and the capacity in force for one full channel name (?1).
-- ?2 and ?3 are the defaults of expiry and capacity.
-- name: send_settings
SELECT
  coalesce((SELECT value FROM main.chanlite_config WHERE key = 'expiry'), ?2),
  coalesce((SELECT capacity FROM main.chanlite_capacity
             WHERE ?1 GLOB pattern ORDER BY id LIMIT 1),
           (SELECT value FROM main.chanlite_config WHERE key = 'capacity'),
           ?3)

-- name: queue_depth
SELECT depth FROM main.chanlite_queue WHERE queue = ?1

-- Setting a wrong depth counter right (ext/message.c, check_depth).
-- name: queue_forget
DELETE FROM main.chanlite_queue WHERE queue = ?1

-- name: queue_recount
INSERT INTO main.chanlite_queue(queue, depth)
SELECT ?1, count(*) FROM main.chanlite_message WHERE queue = ?1 HAVING count(*) > 0

-- name: insert_message
INSERT INTO main.chanlite_message(queue, local, sent_at, expires_at, body)
VALUES (?1, ?2, ?3, ?4, ?5)

-- Is there anything to receive? Run without the write lock, so receivers of
-- empty channels do not queue behind writers or each other.
-- name: peek_queue
SELECT 1 FROM main.chanlite_message WHERE queue = ?1 LIMIT 1

-- name: peek_local
SELECT 1 FROM main.chanlite_message WHERE queue = ?1 AND local = ?2 LIMIT 1

-- The oldest message of a channel, or of every channel of a `prefix!`.
-- name: head_of_queue
SELECT id, local, expires_at, body, sent_at FROM main.chanlite_message
WHERE queue = ?1 ORDER BY id LIMIT 1

-- The oldest message of one `prefix!local` channel.
-- name: head_of_local
SELECT id, local, expires_at, body, sent_at FROM main.chanlite_message
WHERE queue = ?1 AND local = ?2 ORDER BY id LIMIT 1

-- name: delete_message
DELETE FROM main.chanlite_message WHERE id = ?1

-- A message channel_recv_batch removed but its caller never read (a LIMIT,
-- a WHERE on its rows) goes back where it was: under its old id if that is
-- still free, so FIFO order holds, else at the end.
-- name: put_back
INSERT INTO main.chanlite_message(id, queue, local, sent_at, expires_at, body)
VALUES (CASE WHEN EXISTS (SELECT 1 FROM main.chanlite_message WHERE id = ?1)
             THEN NULL ELSE ?1 END, ?2, ?3, ?4, ?5, ?6)
