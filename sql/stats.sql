-- Traffic counters and dead letters (see ext/stats.c, and chanlite_queue and
-- chanlite_counter in sql/schema.sql). `sent` is counted by the insert
-- trigger; what the C code counts here is what no trigger can tell apart: a
-- removal because the message expired (versus received), and a send refused
-- because the queue was full (which stores nothing).

-- Expired messages about to be removed, counted per queue. ?1 is now, ?2
-- the most removed (-1: all): the same rows, in the same order, as the
-- DELETE that follows (purge_some_expired, purge_expired_messages).
-- name: count_expired
INSERT INTO main.chanlite_counter(queue, expired)
SELECT queue, count(*) FROM
  (SELECT queue FROM main.chanlite_message WHERE expires_at <= ?1
    ORDER BY expires_at, id LIMIT ?2)
WHERE true GROUP BY queue
ON CONFLICT(queue) DO UPDATE SET expired = expired + excluded.expired

-- One expired message, found at the head of its queue by a receive.
-- name: count_expired_one
INSERT INTO main.chanlite_counter(queue, expired) VALUES (?1, 1)
ON CONFLICT(queue) DO UPDATE SET expired = expired + 1

-- A send refused because the queue was full: ?2 by channel_send, ?3 by
-- group_send (1 or 0); ?4 is now, when the queue was last seen active.
-- name: count_full
INSERT INTO main.chanlite_counter(queue, full_send, full_group_send, seen_at)
VALUES (?1, ?2, ?3, ?4)
ON CONFLICT(queue) DO UPDATE SET
  full_send = full_send + excluded.full_send,
  full_group_send = full_group_send + excluded.full_group_send,
  seen_at = excluded.seen_at

-- Every counter row has a chanlite_queue row (chanlite_stats lists those):
-- a queue that never stored anything (capacity 0) gets an empty one.
-- name: ensure_queue_row
INSERT OR IGNORE INTO main.chanlite_queue(queue, depth, sent) VALUES (?1, 0, 0)

-- A message channel_recv_batch put back was received by nobody, but the
-- insert trigger counted it as sent again: uncount_put_back takes that back.
-- The pop and the put-back are two transactions, and a fold may run between
-- them (the pop can leave the queue empty): the queue's row then went into
-- the totals with the message counted as sent and received, and the
-- put-back made the row anew, counting the message as sent there. Both
-- statements below run per message, this one first: when the queue's row
-- cannot give the send back (sent - 1 < depth + expired: it never counted
-- the message before this put-back), the totals row gives it back instead
-- (which also takes back its receipt there), so the totals stay exact. After
-- a flush there is no totals row, and nothing to give back.
-- name: uncount_put_back_folded
UPDATE main.chanlite_queue SET sent = max(sent - 1, coalesce(
  (SELECT expired FROM main.chanlite_counter WHERE queue = ''), 0))
WHERE queue = '' AND EXISTS (
  SELECT 1 FROM main.chanlite_queue AS q WHERE q.queue = ?1 AND q.sent - 1 < q.depth +
    coalesce((SELECT expired FROM main.chanlite_counter WHERE queue = ?1), 0))

-- Never below depth + expired, so that received (sent - depth - expired)
-- stays >= 0 (the case uncount_put_back_folded moved to the totals).
-- name: uncount_put_back
UPDATE main.chanlite_queue SET sent = max(sent - 1, depth + coalesce(
  (SELECT expired FROM main.chanlite_counter WHERE queue = ?1), 0))
WHERE queue = ?1

-- ---- folding the counters of idle queues into the totals ----
-- Run in this order, in one transaction, by a send once a minute per
-- connection and by channel_trim(). ?1 is now.

-- Note when each queue was last seen active: now, for every queue whose
-- `sent` changed since the last look.
-- name: note_active_queues
INSERT INTO main.chanlite_counter(queue, seen_sent, seen_at)
SELECT q.queue, q.sent, ?1 FROM main.chanlite_queue AS q
LEFT JOIN main.chanlite_counter AS c ON c.queue = q.queue
WHERE q.queue <> '' AND (c.queue IS NULL OR c.seen_sent <> q.sent)
ON CONFLICT(queue) DO UPDATE SET
  seen_sent = excluded.seen_sent, seen_at = excluded.seen_at

-- Mark (seen_at -1, never a time) up to ?2 (-1: all) queues that store
-- nothing and have not been active since ?1.
-- name: mark_idle_queues
UPDATE main.chanlite_counter SET seen_at = -1 WHERE queue IN
  (SELECT c.queue FROM main.chanlite_counter AS c
   JOIN main.chanlite_queue AS q ON q.queue = c.queue
   WHERE c.queue <> '' AND q.depth = 0 AND q.sent = c.seen_sent AND c.seen_at <= ?1
   ORDER BY c.queue LIMIT ?2)

-- name: fold_idle_sent
INSERT INTO main.chanlite_queue(queue, depth, sent)
SELECT '', 0, sent FROM
  (SELECT count(*) AS n, sum(q.sent) AS sent FROM main.chanlite_queue AS q
   JOIN main.chanlite_counter AS c ON c.queue = q.queue WHERE c.seen_at = -1)
WHERE n > 0
ON CONFLICT(queue) DO UPDATE SET sent = sent + excluded.sent

-- name: fold_idle_counters
INSERT INTO main.chanlite_counter(queue, expired, full_send, full_group_send)
SELECT '', expired, full_send, full_group_send FROM
  (SELECT count(*) AS n, sum(expired) AS expired, sum(full_send) AS full_send,
          sum(full_group_send) AS full_group_send
   FROM main.chanlite_counter WHERE seen_at = -1)
WHERE n > 0
ON CONFLICT(queue) DO UPDATE SET
  expired = expired + excluded.expired,
  full_send = full_send + excluded.full_send,
  full_group_send = full_group_send + excluded.full_group_send

-- name: remove_idle_queues
DELETE FROM main.chanlite_queue WHERE queue IN
  (SELECT queue FROM main.chanlite_counter WHERE seen_at = -1)

-- name: remove_idle_counters
DELETE FROM main.chanlite_counter WHERE seen_at = -1

-- ---- channel_flush() ----

-- name: flush_queues
DELETE FROM main.chanlite_queue

-- name: flush_counters
DELETE FROM main.chanlite_counter

-- name: flush_dead
DELETE FROM main.chanlite_dead

-- ---- dead letters ----

-- Expired messages about to be removed, kept; the same rows as
-- count_expired.
-- name: dead_expired
INSERT INTO main.chanlite_dead(channel, reason, sent_at, dead_at, body)
SELECT queue || coalesce(local, ''), 'expired', sent_at, expires_at, body
FROM main.chanlite_message WHERE expires_at <= ?1
ORDER BY expires_at, id LIMIT ?2

-- One dead letter: ?1 the queue (or the full name) and ?2 what follows its
-- `!` (or NULL), ?3 reason, ?4 sent_at, ?5 dead_at, ?6 body.
-- name: dead_one
INSERT INTO main.chanlite_dead(channel, reason, sent_at, dead_at, body)
VALUES (?1 || coalesce(?2, ''), ?3, ?4, ?5, ?6)

-- Keep the newest ?1. Ids only grow (rows go from the oldest end), so this
-- is a range delete on the primary key.
-- name: dead_keep_newest
DELETE FROM main.chanlite_dead
WHERE id <= (SELECT max(id) FROM main.chanlite_dead) - ?1

-- name: dead_older_than
DELETE FROM main.chanlite_dead WHERE dead_at < ?1

-- ---- reading ----

-- chanlite_stats: one row per queue with counters (process-specific
-- channels are counted per `prefix!`, as capacity is), by name, then the
-- totals (channel NULL), which include the counters of queues folded away.
-- depth and oldest_age count unexpired messages only. ?1 is now.
-- name: list_stats
WITH live AS (
  SELECT queue, count(*) AS depth, ?1 - min(sent_at) AS oldest_age
  FROM main.chanlite_message WHERE expires_at > ?1 GROUP BY queue
)
SELECT * FROM (
  SELECT q.queue AS channel, q.sent,
         q.sent - q.depth - coalesce(c.expired, 0) AS received,
         coalesce(c.expired, 0) AS expired, coalesce(c.full_send, 0) AS full_send,
         coalesce(c.full_group_send, 0) AS full_group_send,
         coalesce(live.depth, 0) AS depth, live.oldest_age
  FROM main.chanlite_queue AS q
  LEFT JOIN main.chanlite_counter AS c ON c.queue = q.queue
  LEFT JOIN live ON live.queue = q.queue
  WHERE q.queue <> ''
  UNION ALL
  SELECT NULL, sent, sent - stored - expired, expired, full_send, full_group_send,
         (SELECT coalesce(sum(depth), 0) FROM live), (SELECT max(oldest_age) FROM live)
  FROM (SELECT coalesce(sum(sent), 0) AS sent, coalesce(sum(depth), 0) AS stored
        FROM main.chanlite_queue),
       (SELECT coalesce(sum(expired), 0) AS expired, coalesce(sum(full_send), 0) AS full_send,
               coalesce(sum(full_group_send), 0) AS full_group_send
        FROM main.chanlite_counter))
ORDER BY channel IS NULL, channel

-- Before the first write there are no tables: only the totals, all zero.
-- name: list_stats_empty
SELECT NULL, 0, 0, 0, 0, 0, 0, NULL

-- ---- upgrading a database made by a chanlite without counters ----

-- Does chanlite_queue have the `sent` column?
-- name: queue_has_sent
SELECT 1 FROM pragma_table_info('chanlite_queue', 'main') WHERE name = 'sent'

-- A script, run with sqlite3_exec (ext/stats.c), then sql/schema.sql again
-- to create the new triggers. The messages already stored count as sent.
-- name: upgrade_queue_sent
ALTER TABLE main.chanlite_queue ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
UPDATE main.chanlite_queue SET sent = depth;
DROP TRIGGER IF EXISTS main.chanlite_message_added;
DROP TRIGGER IF EXISTS main.chanlite_message_removed
