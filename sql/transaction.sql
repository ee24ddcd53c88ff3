-- How each chanlite call becomes atomic (see ext/transaction.c).

-- Outside a transaction: take the write lock up front, so the busy handler
-- waits for it. A deferred transaction that has read cannot wait for the
-- write lock: SQLite fails it at once with SQLITE_BUSY.
-- name: begin_write
BEGIN IMMEDIATE

-- name: commit
COMMIT

-- name: rollback
ROLLBACK

-- Inside the caller's transaction: a savepoint, so a failed call undoes only
-- itself and a successful one commits or rolls back with the caller.
-- name: savepoint
SAVEPOINT chanlite

-- name: release
RELEASE chanlite

-- name: rollback_to
ROLLBACK TO chanlite

-- Do the chanlite tables exist? Fails to prepare ("no such table") if not.
-- It also reads a table, which undo() in ext/transaction.c relies on.
-- Run inside the transaction, it also checks the schema cookie, so tables
-- another connection created or dropped are seen. chanlite_dead is the
-- newest table: a database made by an older chanlite lacks it, and is
-- upgraded (ext/stats.c). It is also the table schema.sql creates last, so
-- tables half made (the first call ran out of memory inside the caller's
-- transaction, and the caller committed) are completed by running
-- schema.sql again.
-- name: schema_check
SELECT 1 FROM main.chanlite_message, main.chanlite_dead WHERE 0

-- Are there chanlite tables of any version? (Reads cannot upgrade.)
-- name: messages_table
SELECT 1 FROM main.chanlite_message WHERE 0

-- Every table, view and trigger, for comparing chanlite's with what its
-- schema script makes (ext/schema.c).
-- name: schema_definitions
SELECT type, name, tbl_name, sql FROM main.sqlite_schema
WHERE type IN ('table', 'view', 'trigger')

-- What channel_recv_batch needs to open its second connection (ext/vtab.c).
-- name: journal_mode
PRAGMA main.journal_mode

-- name: busy_timeout
PRAGMA busy_timeout

-- name: synchronous
PRAGMA main.synchronous

-- name: secure_delete
PRAGMA main.secure_delete

-- name: wal_autocheckpoint
PRAGMA wal_autocheckpoint

-- Does nothing; stepping it reports an sqlite3_interrupt() (channel_wait).
-- name: noop
SELECT 1
