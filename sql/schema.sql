-- chanlite schema. Created on first write, inside the caller's transaction,
-- so a rolled-back first send leaves the database untouched.
-- Every statement is idempotent: running this file twice changes nothing.
-- What each table is for, in one place: docs/design.md, Tables.

-- One row per queued message. `queue` is what a receive and the capacity
-- count look at: the channel name, or for a process-specific name
-- `prefix!local` its `prefix!` part, with `local` holding what follows the `!`
-- (NULL for ordinary channels). FIFO order is `id` order.
CREATE TABLE IF NOT EXISTS main.chanlite_message(
  id         INTEGER PRIMARY KEY,
  queue      TEXT NOT NULL,
  local      TEXT,
  sent_at    REAL NOT NULL,
  expires_at REAL NOT NULL,
  body       BLOB NOT NULL  -- BLOB means no affinity: TEXT stays TEXT, '123' stays '123'
);

-- Pop the oldest message of a channel or of a whole `prefix!`.
CREATE INDEX IF NOT EXISTS main.chanlite_message_queue
  ON chanlite_message(queue, id);

-- Pop the oldest message of one `prefix!local` channel. Partial, so ordinary
-- channels pay nothing for it.
CREATE INDEX IF NOT EXISTS main.chanlite_message_local
  ON chanlite_message(queue, local, id) WHERE local IS NOT NULL;

-- Find expired messages without scanning the queues: trim, and the small
-- clean-up every send does.
CREATE INDEX IF NOT EXISTS main.chanlite_message_expiry
  ON chanlite_message(expires_at);

-- One row per queue, kept by the triggers below: how many rows it stores, so
-- a send checks capacity by reading one row instead of counting the queue
-- under the write lock, and how many were ever stored (`sent`, a counter of
-- chanlite_stats). `depth` counts expired rows too until they are removed; a
-- send that finds the queue at capacity removes expired rows first, so
-- capacity stays exact. The row outlives its messages, for its counter, until
-- the queue has been idle for `stats_retention` seconds (ext/stats.c). Every
-- send writes this row: it holds nothing else, since each column makes that
-- write dearer; the other counters live in chanlite_counter.
CREATE TABLE IF NOT EXISTS main.chanlite_queue(
  queue TEXT PRIMARY KEY,
  depth INTEGER NOT NULL,
  sent  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- An UPDATE, then an INSERT only if it found no row: cheaper than an upsert
-- on the common path, where the row exists. Inside a trigger, changes() is
-- the count of the trigger's own latest statement.
CREATE TRIGGER IF NOT EXISTS main.chanlite_message_added
AFTER INSERT ON chanlite_message BEGIN
  UPDATE chanlite_queue SET depth = depth + 1, sent = sent + 1
    WHERE queue = new.queue;
  INSERT INTO chanlite_queue(queue, depth, sent)
    SELECT new.queue, 1, 1 WHERE changes() = 0;
END;

CREATE TRIGGER IF NOT EXISTS main.chanlite_message_removed
AFTER DELETE ON chanlite_message BEGIN
  UPDATE chanlite_queue SET depth = depth - 1 WHERE queue = old.queue;
END;

-- The counters no trigger can keep, per queue, written by the C code on the
-- paths where they happen (ext/stats.c): messages that expired unread, and
-- sends refused because the queue was full. Received is never stored: a
-- message that left its queue without expiring was received, so it is
-- sent - depth - expired. `seen_sent` and `seen_at` say when the queue was
-- last seen active (its `sent` changed, or a send was refused), for folding
-- the counters of idle queues into the totals: the '' rows of both tables
-- (no channel name is empty) hold what was folded.
CREATE TABLE IF NOT EXISTS main.chanlite_counter(
  queue           TEXT PRIMARY KEY,
  expired         INTEGER NOT NULL DEFAULT 0,
  full_send       INTEGER NOT NULL DEFAULT 0,
  full_group_send INTEGER NOT NULL DEFAULT 0,
  seen_sent       INTEGER NOT NULL DEFAULT -1,
  seen_at         REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Group memberships; `expires_at` is refreshed by every group_add.
CREATE TABLE IF NOT EXISTS main.chanlite_group(
  group_name TEXT NOT NULL,
  channel    TEXT NOT NULL,
  expires_at REAL NOT NULL,
  PRIMARY KEY (group_name, channel)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS main.chanlite_group_expiry
  ON chanlite_group(expires_at);

-- Settings shared by every connection and process: expiry, group_expiry,
-- capacity, dead_letters, dead_letter_retention, stats_retention. A missing
-- key means its default (kept in ext/config.c).
CREATE TABLE IF NOT EXISTS main.chanlite_config(
  key   TEXT PRIMARY KEY,
  value NOT NULL
) WITHOUT ROWID;

-- Per-channel capacity by GLOB pattern. The first pattern added that matches
-- wins; `id` keeps that order, and an upsert keeps a pattern's `id`.
CREATE TABLE IF NOT EXISTS main.chanlite_capacity(
  id       INTEGER PRIMARY KEY,
  pattern  TEXT NOT NULL UNIQUE,
  capacity INTEGER NOT NULL
);

-- Cluster clients (python/chanlite/cluster.py): one row per write
-- transaction whose outcome its client may not learn (the connection lost
-- during COMMIT). The client writes a random `id` in the same transaction and,
-- after reconnecting, looks it up: found, the transaction committed. A client
-- deletes its ids in its next transaction; `done_at` (Unix seconds) lets any
-- client trim those of clients that never came back. chanlite never reads it.
CREATE TABLE IF NOT EXISTS main.chanlite_outcome(
  id      TEXT PRIMARY KEY,
  done_at REAL NOT NULL
) WITHOUT ROWID;

-- Keep this table last: the schema check (transaction.sql) looks for it.
-- Dead letters: messages that expired unread or that a full channel refused
-- (reason 'expired' or 'full'), kept only while the `dead_letters` setting
-- (the most rows kept) is above 0. `channel` is the full channel name;
-- `dead_at` is when the message expired, or when it was refused.
CREATE TABLE IF NOT EXISTS main.chanlite_dead(
  id      INTEGER PRIMARY KEY,
  channel TEXT NOT NULL,
  reason  TEXT NOT NULL,
  sent_at REAL NOT NULL,
  dead_at REAL NOT NULL,
  body    BLOB NOT NULL
);

-- Drop dead letters past `dead_letter_retention` without a scan.
CREATE INDEX IF NOT EXISTS main.chanlite_dead_time ON chanlite_dead(dead_at);
