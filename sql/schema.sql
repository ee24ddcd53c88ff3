-- chanlite schema. Created on first write, inside the caller's transaction,
-- so a rolled-back first send leaves the database untouched.
-- Every statement is idempotent: running this file twice changes nothing.

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

-- Rows per queue, kept by the triggers below, so a send checks capacity by
-- reading one row instead of counting the queue under the write lock.
-- It counts expired rows too until they are removed; a send that finds the
-- queue at capacity removes expired rows first, so capacity stays exact.
CREATE TABLE IF NOT EXISTS main.chanlite_queue(
  queue TEXT PRIMARY KEY,
  depth INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS main.chanlite_message_added
AFTER INSERT ON chanlite_message BEGIN
  INSERT INTO chanlite_queue(queue, depth) VALUES (new.queue, 1)
    ON CONFLICT(queue) DO UPDATE SET depth = depth + 1;
END;

-- Rows are removed at zero so that random channel names (one per consumer)
-- do not leave a row behind each.
CREATE TRIGGER IF NOT EXISTS main.chanlite_message_removed
AFTER DELETE ON chanlite_message BEGIN
  UPDATE chanlite_queue SET depth = depth - 1 WHERE queue = old.queue;
  DELETE FROM chanlite_queue WHERE queue = old.queue AND depth <= 0;
END;

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
-- capacity. A missing key means its default (kept in ext/config.c).
CREATE TABLE IF NOT EXISTS main.chanlite_config(
  key   TEXT PRIMARY KEY,
  value NOT NULL
) WITHOUT ROWID;

-- Keep this table last: the schema check (transaction.sql) looks for it.
-- Per-channel capacity by GLOB pattern. The first pattern added that matches
-- wins; `id` keeps that order, and an upsert keeps a pattern's `id`.
CREATE TABLE IF NOT EXISTS main.chanlite_capacity(
  id       INTEGER PRIMARY KEY,
  pattern  TEXT NOT NULL UNIQUE,
  capacity INTEGER NOT NULL
);
