/*
** Making each call atomic, and joining the caller's transaction.
**
** Outside a transaction a call runs in one of its own, begun IMMEDIATE: it
** takes the write lock before it reads, so the busy handler can wait for
** it, and the capacity it reads is still true when it inserts. Inside the
** caller's transaction it runs in a savepoint: what it does commits or rolls
** back with the caller (a send is seen only on commit; a received message
** goes back to its queue on rollback), and a call that fails undoes only
** itself.
**
** SQLite cannot COMMIT, nor open a savepoint, while a statement that writes
** is running; so chanlite_*() write functions must be called from a
** statement of their own (`SELECT channel_send(?, ?)`), not from
** `INSERT ... SELECT` or `UPDATE`. That misuse is reported by name
** (errors.c). See docs/design.md, Transactions.
*/
#include <string.h>
#include "chanlite.h"

/* Run one of the cached transaction statements, keeping any error. */
static int run(Chanlite *c, int id) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  return s ? chanlite_step_done(c, s) : c->err_code;
}

/* Roll back without touching the error being reported.
**
** An out-of-memory error inside a statement that SQLite runs while another
** (here: the caller's SELECT chanlite_fn(...)) is running interrupts every
** statement of the connection until that outer one ends, and ROLLBACK then
** fails too. A statement that reads a table, stepped then, does end up
** rolling the whole transaction back: SQLite does that to any reading
** statement that fails with SQLITE_NOMEM and has no statement journal.
** The schema check is such a statement, prepared by every call that gets
** this far (unless the tables do not exist yet: then this does not work).
** So the call's changes are undone, and with them, inside the caller's
** transaction, the caller's: what SQLite does after SQLITE_NOMEM anyway. */
static void undo(Chanlite *c) {
  int saved = c->err_code, rolled_back;
  char *msg = c->err;
  c->err_code = SQLITE_OK;
  c->err = 0;
  if (c->own_txn) {
    rolled_back = run(c, CHANLITE_STMT_ROLLBACK) == SQLITE_OK || sqlite3_get_autocommit(c->db);
  } else {
    rolled_back = run(c, CHANLITE_STMT_ROLLBACK_TO) == SQLITE_OK &&
                  run(c, CHANLITE_STMT_RELEASE) == SQLITE_OK;
  }
  if (!rolled_back && !sqlite3_get_autocommit(c->db)) {
    sqlite3_stmt *reader = c->stmt[CHANLITE_STMT_SCHEMA_CHECK];
    if (reader) {
      sqlite3_step(reader);
      sqlite3_reset(reader);
    }
  }
  chanlite_clear_error(c);
  c->err_code = saved;
  c->err = msg;
}

/* An upgrade fails on tables that are not chanlite's (a view, say): the
** verification then says so better than the failed ALTER does. */
static int upgrade_schema(Chanlite *c) {
  int rc = chanlite_upgrade_schema(c), code;
  char *msg;
  if (rc == SQLITE_OK) return rc;
  code = c->err_code;
  msg = c->err;
  c->err = 0;
  c->err_code = SQLITE_OK;
  if (chanlite_schema_verify(c) != SQLITE_OK) {
    sqlite3_free(msg);
    return c->err_code;
  }
  c->err = msg;
  c->err_code = code;
  return rc;
}

/* Create the tables on first use, or bring those of an older chanlite up
** to date; then refuse tables chanlite did not make. When `blank` is given
** and this call runs its own transaction, a database with no tables at all
** is reported in it instead, untouched, so that it can be made incremental
** first (disk.c). */
static int ensure_schema(Chanlite *c, int *blank) {
  int rc = run(c, CHANLITE_STMT_SCHEMA_CHECK);
  if (rc != SQLITE_OK) {
    if (!chanlite_schema_missing(c)) return rc;
    if (blank && c->own_txn) {
      rc = chanlite_disk_is_blank(c, blank);
      if (rc != SQLITE_OK || *blank) return rc;
    }
    rc = sqlite3_exec(c->db, chanlite_schema_sql, 0, 0, 0);
    if (rc != SQLITE_OK) return chanlite_fail_sqlite(c, rc);
    /* IF NOT EXISTS skips a name already taken, by a view for instance:
    ** the verification below finds it. */
    rc = upgrade_schema(c);
    if (rc != SQLITE_OK) return rc;
  }
  return chanlite_schema_verify(c);
}

/* The statements that end a call, prepared before it changes anything: an
** out-of-memory error inside a statement that calls chanlite interrupts
** every statement of the connection until that outer one ends, so one
** that still had to be prepared then could not roll the call back. */
static int prepare_endings(Chanlite *c) {
  static const int ids[] = {CHANLITE_STMT_COMMIT, CHANLITE_STMT_ROLLBACK, CHANLITE_STMT_RELEASE,
                            CHANLITE_STMT_ROLLBACK_TO};
  int i;
  for (i = 0; i < (int)(sizeof ids / sizeof ids[0]); i++) {
    if (!chanlite_stmt(c, ids[i])) return c->err_code;
  }
  return SQLITE_OK;
}

static int begin_once(Chanlite *c, int *blank) {
  int rc = prepare_endings(c);
  if (rc != SQLITE_OK) return rc;
  c->own_txn = sqlite3_get_autocommit(c->db);
  rc = run(c, c->own_txn ? CHANLITE_STMT_BEGIN_WRITE : CHANLITE_STMT_SAVEPOINT);
  if (rc != SQLITE_OK) return rc;
  rc = ensure_schema(c, blank);
  if (rc != SQLITE_OK) undo(c);
  return rc;
}

int chanlite_begin(Chanlite *c) {
  int blank = 0;
  int rc = chanlite_node_guard(c);
  if (rc != SQLITE_OK) return rc;
  rc = begin_once(c, &blank);
  if (rc == SQLITE_OK && blank) {
    /* Nothing is written yet: give the transaction up, turn on incremental
    ** auto-vacuum (which needs no transaction open), and begin again. */
    rc = run(c, CHANLITE_STMT_ROLLBACK);
    if (rc == SQLITE_OK) {
      chanlite_disk_make_incremental(c);
      rc = begin_once(c, 0);
    }
  }
  return rc;
}

int chanlite_end(Chanlite *c, int rc) {
  /* Before the commit, while this call still holds the write lock. */
  if (rc == SQLITE_OK && c->removed) rc = chanlite_disk_reclaim(c);
  c->removed = 0;
  c->removed_bytes = 0;
  if (rc == SQLITE_OK) {
    chanlite_watch_commit(c);
    rc = run(c, c->own_txn ? CHANLITE_STMT_COMMIT : CHANLITE_STMT_RELEASE);
  }
  if (rc != SQLITE_OK) {
    if (c->own_txn) c->ring_on_commit = 0;
    undo(c);
  } else if (c->sent) {
    chanlite_after_commit(c, c->own_txn);
  }
  c->sent = 0;
  return rc;
}

/* Whether the error just recorded means "no chanlite tables yet": reads
** treat that as empty rather than creating tables (loading and reading
** write nothing). */
int chanlite_schema_missing(Chanlite *c) {
  if (c->err && strstr(c->err, "no such table: main.chanlite_")) {
    chanlite_clear_error(c);
    return 1;
  }
  return 0;
}

/* Whether this database has chanlite tables at all, of any version. */
int chanlite_has_tables(Chanlite *c) {
  if (run(c, CHANLITE_STMT_MESSAGES_TABLE) == SQLITE_OK) return 1;
  chanlite_clear_error(c);
  return 0;
}

/* The busy handler of the connections chanlite opens itself. SQLite's own
** sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries, so a writer that
** finds the lock held for the millisecond a pop or a send takes sleeps long
** past its release: when the four processes of a fan-out all pop at once,
** the last waited 20 ms for 3 ms of others' work. This one tries again after
** 0.1 ms, doubling to 1 ms (2 ms once it has waited 100 ms: a lock held
** for seconds is polled 500 times a second, not a thousand; not more than
** 2 ms, or it sleeps through the gaps between a long writer's transactions,
** bench/results/neighbours.md), each sleep drawn from its upper half so
** that waiters do not come back together. Time is counted as the longer
** of the sum of the sleeps (SQLite's way) and the clock: on a loaded
** machine each short sleep overruns, and summed they fell a third short
** (a 3 s timeout waited 4 s). chanlite_busy_timeout() installs it on any
** connection (ext/config.c). */
#define BUSY_FIRST_US 100
#define BUSY_CAP_US 1000
#define BUSY_SLOW_CAP_US 2000
#define BUSY_SLOW_AFTER_US 100000

/* The VFS's clock in microseconds, or -1 if it has none to give. */
static sqlite3_int64 busy_clock_us(sqlite3_vfs *vfs) {
  sqlite3_int64 ms = 0;
  if (vfs->iVersion < 2 || !vfs->xCurrentTimeInt64 || vfs->xCurrentTimeInt64(vfs, &ms) != 0)
    return -1;
  return ms * 1000;
}

static int busy_handler(void *arg, int count) {
  Chanlite *c = arg;
  sqlite3_vfs *vfs = sqlite3_vfs_find(0);
  sqlite3_int64 step, left, waited, now;
  unsigned int jitter = 0;
  if (!vfs) return 0;
  now = busy_clock_us(vfs);
  if (count == 0) {
    c->busy_slept_us = 0;
    c->busy_since_us = now;
  }
  waited = c->busy_slept_us;
  if (now >= 0 && c->busy_since_us >= 0 && now - c->busy_since_us > waited)
    waited = now - c->busy_since_us;
  left = (sqlite3_int64)c->busy_timeout_ms * 1000 - waited;
  if (left <= 0) return 0;
  if (waited >= BUSY_SLOW_AFTER_US) step = BUSY_SLOW_CAP_US;
  else step = count < 4 ? (sqlite3_int64)BUSY_FIRST_US << count : BUSY_CAP_US;
  sqlite3_randomness(sizeof jitter, &jitter);
  step = step / 2 + (sqlite3_int64)(jitter % (unsigned int)(step / 2 + 1));
  if (step > left) step = left;
  c->busy_slept_us += step;
  vfs->xSleep(vfs, (int)step);
  return 1;
}

void chanlite_busy_wait(Chanlite *c, int timeout_ms) {
  c->busy_timeout_ms = timeout_ms;
  if (timeout_ms > 0) sqlite3_busy_handler(c->db, busy_handler, c);
  else sqlite3_busy_handler(c->db, 0, 0);
}
