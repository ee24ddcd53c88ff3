-- Keeping the database file small (see ext/disk.c).

-- A database with no tables at all gets incremental auto-vacuum before
-- chanlite creates its tables; one that has tables is left as it is.
-- name: any_table
SELECT 1 FROM main.sqlite_master LIMIT 1

-- 0 none, 1 full, 2 incremental.
-- name: auto_vacuum
PRAGMA main.auto_vacuum

-- Takes effect at once on a file with no pages yet; on one whose first page
-- is written (setting WAL mode writes it) only through the VACUUM below.
-- name: set_incremental_vacuum
PRAGMA main.auto_vacuum = INCREMENTAL

-- Run on a connection of its own: VACUUM fails on a connection with a
-- statement in progress, and a chanlite call always runs inside one.
-- name: vacuum
VACUUM main

-- name: freelist_count
PRAGMA main.freelist_count

-- name: page_size
PRAGMA main.page_size

-- Each step returns one row per free page given back to the file system,
-- so stepping it k times and resetting it gives back k pages; stepping it to
-- the end gives back every free page. A no-op without auto-vacuum.
-- name: incremental_vacuum
PRAGMA main.incremental_vacuum

-- What channel_recv_batch's second connection copies (ext/vtab.c).
-- name: journal_size_limit
PRAGMA main.journal_size_limit
