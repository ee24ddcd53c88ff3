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
** does it): until then the WAL holds the smaller database. See
** docs/design.md, Disk.
*/
#define _POSIX_C_SOURCE 200809L
#include <time.h>
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
    sqlite3_log(rc, "chanlite: could not turn on incremental auto-vacuum for %s: %s", file,
                sqlite3_errmsg(db));
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
  c->wal_frames = frames;
  /* c->autocheckpoint: the caller's wal_autocheckpoint (ext/vtab.c). */
  if (c->autocheckpoint > 0 && frames >= c->autocheckpoint) {
    sqlite3_wal_checkpoint_v2(db, zDb, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    c->checkpoint_due = copied < log;
  }
  return SQLITE_OK;
}

void chanlite_disk_watch_side(Chanlite *side) {
  side->batch_side = 1;
  sqlite3_wal_hook(side->db, side_wal_hook, side);
}

void chanlite_disk_finish_checkpoint(Chanlite *side) {
  int log = 0, copied = 0;
  if (!side->checkpoint_due) return;
  sqlite3_wal_checkpoint_v2(side->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
  side->checkpoint_due = copied < log;
}

/* Checkpoint starvation. A checkpoint copies the WAL back only up to the
** oldest snapshot in use, and the WAL starts over only when a writer begins
** while all of it is copied and no reader uses it. Under constantly
** overlapping short readers and writers (a burst, with receivers waiting on
** it) that moment never comes, and SQLite's passive auto-checkpoints let the
** WAL grow by all that is written (630 MB in bench/disk/run.py's burst).
**
** So once the WAL is RESTART_FACTOR times the auto-checkpoint size, the
** connection whose commit finds it so (in its WAL hook, ext/wake.c, right
** after that commit) runs a RESTART checkpoint instead of a passive one: it
** takes the write lock, copies the rest, and waits for the readers of older
** snapshots to finish (new ones read the database file), so that the next
** write starts the WAL over. It waits RESTART_WAIT_MS at most, and never
** longer than the connection's own busy timeout: its busy handler is
** swapped for one with that deadline, and put back after. Best effort:
**
** - a checkpoint already running elsewhere (which no busy handler waits
**   for) is not waited for; the next commit tries again;
** - one that cannot finish in time (a long read transaction somewhere) is
**   given up, and this connection tries again once the WAL has grown by
**   another auto-checkpoint size, then twice, then four times that
**   (RESTART_MAX_BACKOFF doublings): each attempt holds the write lock
**   while it waits, and attempts that kept failing every 4 MB took a
**   quarter of the write lock's time in bench/disk/run.py, starving
**   receivers past their 5 s busy timeout; at most one attempt per call;
** - never on the batch connection (its caller's statement holds a snapshot
**   that the checkpoint would wait for in vain: chanlite_disk_between_batches
**   tries from the caller's connection instead), nor on a connection whose
**   busy handler chanlite cannot put back: one without a busy timeout may
**   have a handler of its own, which SQLite gives no way to read.
*/
#define RESTART_FACTOR 4
#define RESTART_MAX_BACKOFF 2
#define RESTART_WAIT_MS 5
#define RESTART_POLL_NS 100000L /* readers in a burst hold a snapshot well under 1 ms */

enum { RESTARTED, CHECKPOINT_ELSEWHERE, RESTART_GAVE_UP };

/* The busy handler while a restart waits: short sleeps until the deadline. */
static int restart_busy(void *arg, int count) {
  Chanlite *c = arg;
  struct timespec ts = {0, RESTART_POLL_NS};
  (void)count;
  if (chanlite_monotonic() >= c->restart_deadline) return 0;
  nanosleep(&ts, 0);
  return 1;
}

static int restart_wal(Chanlite *c, sqlite3 *db, const char *zDb) {
  sqlite3_int64 timeout = 0;
  int wait_ms, rc, log = -1, copied = -1;
  if (pragma_int(c, CHANLITE_STMT_BUSY_TIMEOUT, &timeout) != SQLITE_OK || timeout <= 0 ||
      timeout > 0x7fffffff) {
    chanlite_clear_error(c);
    return RESTART_GAVE_UP;
  }
  wait_ms = timeout < RESTART_WAIT_MS ? (int)timeout : RESTART_WAIT_MS;
  c->restart_deadline = chanlite_monotonic() + wait_ms / 1000.0;
  sqlite3_busy_handler(db, restart_busy, c);
  rc = sqlite3_wal_checkpoint_v2(db, zDb, SQLITE_CHECKPOINT_RESTART, &log, &copied);
  sqlite3_busy_timeout(db, (int)timeout);
  if (rc == SQLITE_OK) return RESTARTED;
  /* No log size: it never began, for want of the checkpoint lock. */
  return rc == SQLITE_BUSY && log < 0 ? CHECKPOINT_ELSEWHERE : RESTART_GAVE_UP;
}

/* Whether the WAL is large enough for a restart, and this connection due to
** try one; if so, tries. */
static int restart_if_due(Chanlite *c, sqlite3 *db, const char *zDb, int frames, int every) {
  int outcome;
  if (frames < RESTART_FACTOR * every) {
    c->next_restart = 0;
    c->restart_failures = 0;
    return 0;
  }
  if (frames < c->next_restart) return 0;
  outcome = restart_wal(c, db, zDb);
  if (outcome == RESTARTED) {
    c->next_restart = 0;
    c->restart_failures = 0;
  } else if (outcome == CHECKPOINT_ELSEWHERE) {
    c->next_restart = frames + 1;
  } else {
    c->next_restart = frames + (every << c->restart_failures);
    if (c->restart_failures < RESTART_MAX_BACKOFF) c->restart_failures++;
  }
  return 1;
}

void chanlite_disk_checkpoint(Chanlite *c, sqlite3 *db, const char *zDb, int frames) {
  int every = c->autocheckpoint;
  if (every <= 0 || frames < every) return;
  if (!restart_if_due(c, db, zDb, frames, every)) {
    sqlite3_wal_checkpoint(db, zDb); /* what SQLite's default hook does */
  }
}

/* A receiver that drains by batches holds a snapshot through each batch, so
** while a burst keeps it busy, every restart waits for it in vain (and the
** batch connection waits for the write lock that the restart holds). Its
** own connection, between batches, holds none: channel_wait, which a
** receiver calls between batches, tries the restart that the batch
** connection's last commit found due. */
void chanlite_disk_between_batches(Chanlite *c) {
  int frames, every;
  if (!c->side) return;
  every = c->side->autocheckpoint; /* the caller's, as the batch last saw it */
  if (every <= 0 || c->side->wal_frames < RESTART_FACTOR * every) return;
  frames = c->side->wal_frames;
  c->side->wal_frames = 0;
  restart_if_due(c, c->db, "main", frames, every);
}
