/*
** Keeping the database file small.
**
** SQLite never gives the pages of deleted rows back to the file system on
** its own: after a burst of 20,000 queued 1 KB messages is received, the
** file stays some 27 MB, all of it free pages. So:
**
** - A database with no tables yet gets incremental auto-vacuum when chanlite
**   creates its tables (the first write call, outside a transaction). One
**   that already has tables (a Django app's own) is left alone: turning it
**   on there means rewriting the whole file (PRAGMA auto_vacuum =
**   INCREMENTAL; VACUUM;), which is the operator's call, not a send's.
** - A call that removed messages looks at the free-page count before it
**   commits and gives back, in the same transaction, what is over
**   FREE_BYTES_KEPT, but no more than RECLAIM_MIN_PAGES or twice the pages
**   its own messages filled, whichever is more: a drain gives the pages back
**   as fast as it frees them, and no call pays for more than its own work.
** - channel_trim() and channel_flush() give back every free page.
**
**   PRAGMA auto_vacuum;            -- 2 (incremental) on a database chanlite made
**   PRAGMA freelist_count;         -- stays under 1 MB worth of pages
**
** The file shrinks when the WAL is checkpointed (SQLite's auto-checkpoint
** does it): until then the WAL holds the smaller database.
*/
#include "chanlite.h"

/* Free space kept for the next burst, so that steady traffic neither
** shrinks the file nor grows it back all the time. */
#define FREE_BYTES_KEPT (1024 * 1024)

/* What a reclaiming call may give back even if it freed little itself:
** enough to win back, over time, free space that others left (a dropped
** table, a drain of large messages); few enough to stay cheap. */
#define RECLAIM_MIN_PAGES 16

/* A PRAGMA's single integer value. */
static int pragma_int(Chanlite *c, int id, sqlite3_int64 *value) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  int rc;
  if (!s) return c->err_code;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *value = sqlite3_column_int64(s, 0);
    rc = SQLITE_OK;
  } else {
    chanlite_fail_sqlite(c, rc);
  }
  sqlite3_reset(s);
  return rc;
}

int chanlite_disk_is_blank(Chanlite *c, int *blank) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_ANY_TABLE);
  sqlite3_int64 mode = 0;
  int rc, found = 0;
  *blank = 0;
  if (!s) return c->err_code;
  rc = chanlite_step_exists(c, s, &found);
  if (rc == SQLITE_OK && !found) rc = pragma_int(c, CHANLITE_STMT_AUTO_VACUUM, &mode);
  if (rc == SQLITE_OK) *blank = !found && mode == 0;
  return rc;
}

/* VACUUM on a connection of its own to the same file. */
static int vacuum_elsewhere(Chanlite *c) {
  const char *file = sqlite3_db_filename(c->db, "main");
  sqlite3_vfs *vfs = 0;
  sqlite3 *db = 0;
  sqlite3_int64 timeout = 0;
  int rc;
  if (!file || !file[0]) return SQLITE_CANTOPEN; /* in memory: no second connection */
  if (pragma_int(c, CHANLITE_STMT_BUSY_TIMEOUT, &timeout) != SQLITE_OK) {
    chanlite_clear_error(c);
    timeout = 0;
  }
  sqlite3_file_control(c->db, "main", SQLITE_FCNTL_VFS_POINTER, &vfs);
  rc = sqlite3_open_v2(file, &db, SQLITE_OPEN_READWRITE, vfs ? vfs->zName : 0);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(db, timeout > 0 && timeout < 0x7fffffff ? (int)timeout : 0);
    rc = sqlite3_exec(db, chanlite_stmt_sql[CHANLITE_STMT_SET_INCREMENTAL_VACUUM], 0, 0, 0);
  }
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, chanlite_stmt_sql[CHANLITE_STMT_VACUUM], 0, 0, 0);
  if (rc != SQLITE_OK && db) {
    sqlite3_log(rc, "chanlite: could not turn on incremental auto-vacuum for %s: %s",
                file, sqlite3_errmsg(db));
  }
  sqlite3_close_v2(db);
  return rc;
}

/* Best effort: a database left without auto-vacuum still works, it only
** keeps its free pages, as every SQLite database does by default. */
void chanlite_disk_make_incremental(Chanlite *c) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_SET_INCREMENTAL_VACUUM);
  sqlite3_int64 mode = 0;
  if (s) chanlite_step_done(c, s);
  if (pragma_int(c, CHANLITE_STMT_AUTO_VACUUM, &mode) == SQLITE_OK && mode == 0) {
    vacuum_elsewhere(c);
  }
  chanlite_clear_error(c);
}

/* Give back up to `pages` free pages (all of them if negative). */
static int give_back(Chanlite *c, sqlite3_int64 pages) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_INCREMENTAL_VACUUM);
  int rc = SQLITE_ROW;
  if (!s) return c->err_code;
  while (pages != 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (pages > 0) pages--;
  }
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

int chanlite_disk_reclaim_all(Chanlite *c) {
  return give_back(c, -1);
}

int chanlite_disk_reclaim(Chanlite *c) {
  sqlite3_int64 free_pages = 0, kept, pages;
  int rc;
  if (c->page_size <= 0) {
    sqlite3_int64 size = 0;
    rc = pragma_int(c, CHANLITE_STMT_PAGE_SIZE, &size);
    if (rc != SQLITE_OK) return rc;
    c->page_size = size > 0 ? (int)size : 4096;
  }
  rc = pragma_int(c, CHANLITE_STMT_FREELIST_COUNT, &free_pages);
  kept = FREE_BYTES_KEPT / c->page_size;
  if (rc != SQLITE_OK || free_pages <= kept) return rc;
  pages = 2 * (c->removed_bytes / c->page_size + 1);
  if (pages < RECLAIM_MIN_PAGES) pages = RECLAIM_MIN_PAGES;
  if (pages > free_pages - kept) pages = free_pages - kept;
  return give_back(c, pages);
}

/* channel_recv_batch pops through a second connection while the caller's
** statement holds a snapshot from before the pop (ext/vtab.c). So the
** second connection's own checkpoints, right after its commits, can never
** copy its last commit back, and a long drain through batches alone grows
** the WAL by all it writes. Its WAL hook notes a checkpoint left unfinished
** (checkpointing as SQLite's default hook does, at the same size), and the
** next batch that finds its queue empty finishes it: that batch's statement
** began after the last pop, so its snapshot holds it back no more. The file
** then shrinks, and the next write anywhere restarts the WAL (and truncates
** it to journal_size_limit). */
static int side_wal_hook(void *arg, sqlite3 *db, const char *zDb, int frames) {
  Chanlite *c = arg;
  int log = 0, copied = 0;
  /* c->autocheckpoint: the caller's wal_autocheckpoint (ext/vtab.c). */
  if (c->autocheckpoint > 0 && frames >= c->autocheckpoint) {
    sqlite3_wal_checkpoint_v2(db, zDb, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    c->checkpoint_due = copied < log;
  }
  return SQLITE_OK;
}

void chanlite_disk_watch_side(Chanlite *side) {
  sqlite3_wal_hook(side->db, side_wal_hook, side);
}

void chanlite_disk_finish_checkpoint(Chanlite *side) {
  int log = 0, copied = 0;
  if (!side->checkpoint_due) return;
  sqlite3_wal_checkpoint_v2(side->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
  side->checkpoint_due = copied < log;
}
