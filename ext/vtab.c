/*
** Table-valued functions.
**
**   SELECT channel, message FROM channel_recv_batch('w.abc!', 100);
**
** pops up to 100 of the oldest unexpired messages of every `w.abc!...`
** channel (or of one channel, for any other name), in order, with the full
** channel name each was sent to: how one process drains its `prefix!` in a
** single call and hands each message to its consumer. It stops early once
** it holds BATCH_BYTES of messages, so a batch never needs more memory than
** that plus one message; fewer rows than asked does not mean the queue is
** empty. All rows are popped, in one transaction, before the first is
** returned: use it alone, not in a join (each scan would pop again). Rows
** the caller never reads go back to their queue. A hidden column,
** expires_at, tells when each message would have expired, for a process
** that holds messages before handing them on.
**
**   SELECT * FROM chanlite_channels;  -- channel, depth, oldest_age
**   SELECT * FROM chanlite_groups;    -- group_name, channel, expires_in
**   SELECT * FROM chanlite_stats;     -- counters per queue, then the totals
**
** list channels with unexpired messages, live memberships, and the traffic
** counters (ext/stats.c). How a batch pops, and why through a second
** connection: docs/design.md, Receiving.
*/
#include <string.h>
#include <limits.h>
#include "chanlite.h"

#define BATCH_MAX 10000
#define BATCH_BYTES (16 * 1024 * 1024)

/* Move the call's error into the vtab, where SQLite reports it from. */
static int vtab_error(Chanlite *c, sqlite3_vtab *vtab) {
  int rc = c->err_code;
  sqlite3_free(vtab->zErrMsg);
  vtab->zErrMsg = sqlite3_mprintf("chanlite: %s", c->err ? c->err : "error");
  chanlite_clear_error(c);
  return rc;
}

/* ---- channel_recv_batch ---- */

typedef struct BatchTab {
  sqlite3_vtab base;
  Chanlite *c;
} BatchTab;

/* A popped message, held until the caller reads it. */
typedef struct Popped {
  char *channel; /* full name */
  sqlite3_value *body;
  sqlite3_int64 id;
  double sent_at, expires_at;
  int read; /* the caller read its message column */
} Popped;

typedef struct BatchCursor {
  sqlite3_vtab_cursor base;
  Chanlite *worker; /* the connection it popped through */
  int n_queue;      /* bytes of each channel name that are its queue */
  int n, i, alloc;
  Popped *rows;
} BatchCursor;

#define BATCH_COL_CHANNEL 0
#define BATCH_COL_MESSAGE 1
#define BATCH_COL_FROM 2
#define BATCH_COL_MAX 3
#define BATCH_COL_EXPIRES_AT 4

/* idxNum values (see batch_best_index) */
#define BATCH_PLAN_NO_ARGS 0
#define BATCH_PLAN_OK 1
#define BATCH_PLAN_ORDER_BY 2
#define BATCH_PLAN_EXTRA_ARG 3

static int batch_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                         sqlite3_vtab **out, char **err) {
  BatchTab *t;
  int rc;
  (void)argc;
  (void)argv;
  (void)err;
  /* The hidden columns after the arguments: read them by name. */
  rc = sqlite3_declare_vtab(db, "CREATE TABLE x(channel TEXT, message BLOB, "
                                "from_channel HIDDEN, max HIDDEN, expires_at REAL HIDDEN)");
  if (rc != SQLITE_OK) return rc;
  t = sqlite3_malloc(sizeof *t);
  if (!t) return SQLITE_NOMEM;
  memset(t, 0, sizeof *t);
  t->c = aux;
  /* It writes: no trigger, view or generated column may use it. */
  sqlite3_vtab_config(db, SQLITE_VTAB_DIRECTONLY);
  *out = &t->base;
  return SQLITE_OK;
}

static int batch_disconnect(sqlite3_vtab *vtab) {
  sqlite3_free(vtab);
  return SQLITE_OK;
}

/* Plans, in idxNum: BATCH_PLAN_OK when both arguments are given as `=`
** constraints (passed to xFilter in order); BATCH_PLAN_NO_ARGS when they are
** missing, and BATCH_PLAN_ORDER_BY for an ORDER BY (which would read every
** popped row into a sorter before a LIMIT drops some): xFilter reports both
** as errors, so the caller learns what is wrong instead of losing messages;
** likewise BATCH_PLAN_EXTRA_ARG, for a constraint on expires_at (a third
** argument lands there).
** An argument that depends on another table of a join makes the plan
** impossible. */
static int batch_best_index(sqlite3_vtab *vtab, sqlite3_index_info *info) {
  int i, from = -1, max = -1, unusable = 0;
  (void)vtab;
  for (i = 0; i < info->nConstraint; i++) {
    const struct sqlite3_index_constraint *k = &info->aConstraint[i];
    if (k->iColumn == BATCH_COL_EXPIRES_AT) {
      /* A third argument lands here (or a WHERE on expires_at): refuse. */
      info->idxNum = BATCH_PLAN_EXTRA_ARG;
      info->estimatedCost = 1;
      return SQLITE_OK;
    }
    if (k->iColumn != BATCH_COL_FROM && k->iColumn != BATCH_COL_MAX) continue;
    if (!k->usable || k->op != SQLITE_INDEX_CONSTRAINT_EQ) {
      unusable = 1;
      continue;
    }
    if (k->iColumn == BATCH_COL_FROM) from = i;
    else max = i;
  }
  if (from >= 0 && max >= 0) {
    info->aConstraintUsage[from].argvIndex = 1;
    info->aConstraintUsage[from].omit = 1;
    info->aConstraintUsage[max].argvIndex = 2;
    info->aConstraintUsage[max].omit = 1;
    info->idxNum = info->nOrderBy > 0 ? BATCH_PLAN_ORDER_BY : BATCH_PLAN_OK;
    info->estimatedCost = 10;
    return SQLITE_OK;
  }
  if (unusable) return SQLITE_CONSTRAINT;
  info->idxNum = BATCH_PLAN_NO_ARGS;
  info->estimatedCost = 1e12;
  return SQLITE_OK;
}

/* Messages popped but never read go back to their queue. Best effort in
** xClose, which cannot fail: a put-back that fails is logged. */
static int put_back_once(BatchCursor *cur) {
  Chanlite *w = cur->worker;
  sqlite3_stmt *s;
  int i, rc;
  w->fn = "channel_recv_batch";
  rc = chanlite_begin(w);
  for (i = 0; i < cur->n && rc == SQLITE_OK; i++) {
    Popped *p = &cur->rows[i];
    if (p->read) continue;
    s = chanlite_stmt(w, CHANLITE_STMT_PUT_BACK);
    if (!s) {
      rc = w->err_code;
      break;
    }
    sqlite3_bind_int64(s, 1, p->id);
    sqlite3_bind_text(s, 2, p->channel, cur->n_queue, SQLITE_STATIC);
    if (p->channel[cur->n_queue - 1] == '!') {
      sqlite3_bind_text(s, 3, p->channel + cur->n_queue, -1, SQLITE_STATIC);
    } else {
      sqlite3_bind_null(s, 3);
    }
    sqlite3_bind_double(s, 4, p->sent_at);
    sqlite3_bind_double(s, 5, p->expires_at);
    sqlite3_bind_value(s, 6, p->body);
    rc = chanlite_step_done(w, s);
    if (rc == SQLITE_OK) rc = chanlite_uncount_put_back(w, p->channel, cur->n_queue);
  }
  w->sent = rc == SQLITE_OK; /* ring: they are back */
  return chanlite_end(w, rc);
}

/* Tried twice: a transient failure (out of memory, say) must not lose them. */
static void batch_put_back(BatchCursor *cur) {
  Chanlite *w = cur->worker;
  int i, unread = 0, rc;
  for (i = 0; i < cur->n; i++) unread += !cur->rows[i].read;
  if (!w || unread == 0) return;
  rc = put_back_once(cur);
  if (rc != SQLITE_OK) {
    chanlite_clear_error(w);
    rc = put_back_once(cur);
  }
  if (rc != SQLITE_OK) {
    sqlite3_log(rc,
                "chanlite: channel_recv_batch could not put back %d unread "
                "messages: %s",
                unread, w->err ? w->err : "error");
  }
  chanlite_clear_error(w);
}

static void batch_clear(BatchCursor *cur) {
  int i;
  batch_put_back(cur);
  for (i = 0; i < cur->n; i++) {
    sqlite3_free(cur->rows[i].channel);
    sqlite3_value_free(cur->rows[i].body);
  }
  sqlite3_free(cur->rows);
  cur->rows = 0;
  cur->n = cur->i = cur->alloc = 0;
  cur->worker = 0;
}

static int batch_open(sqlite3_vtab *vtab, sqlite3_vtab_cursor **out) {
  BatchCursor *cur = sqlite3_malloc(sizeof *cur);
  (void)vtab;
  if (!cur) return SQLITE_NOMEM;
  memset(cur, 0, sizeof *cur);
  *out = &cur->base;
  return SQLITE_OK;
}

static int batch_close(sqlite3_vtab_cursor *cur) {
  batch_clear((BatchCursor *)cur);
  sqlite3_free(cur);
  return SQLITE_OK;
}

/* Keep the row the head statement is on. */
static int batch_keep(Chanlite *c, BatchCursor *cur, const ChannelName *ch, sqlite3_stmt *row) {
  const char *local = (const char *)sqlite3_column_text(row, 1);
  Popped *p;
  if (cur->n == cur->alloc) {
    int alloc = cur->alloc ? cur->alloc * 2 : 16;
    Popped *rows = sqlite3_realloc64(cur->rows, sizeof(Popped) * (sqlite3_uint64)alloc);
    if (!rows) return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
    cur->rows = rows;
    cur->alloc = alloc;
  }
  p = &cur->rows[cur->n];
  memset(p, 0, sizeof *p);
  p->channel = sqlite3_mprintf("%.*s%s", ch->n_queue, ch->full, local ? local : "");
  p->body = sqlite3_value_dup(sqlite3_column_value(row, 3));
  if (!p->channel || !p->body) {
    sqlite3_free(p->channel);
    sqlite3_value_free(p->body);
    return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  }
  p->id = sqlite3_column_int64(row, 0);
  p->expires_at = sqlite3_column_double(row, 2);
  p->sent_at = sqlite3_column_double(row, 4);
  cur->n++;
  return SQLITE_OK;
}

static int batch_max_arg(Chanlite *c, sqlite3_value *v, int *max) {
  if (sqlite3_value_type(v) == SQLITE_INTEGER && sqlite3_value_int64(v) >= 1 &&
      sqlite3_value_int64(v) <= BATCH_MAX) {
    *max = sqlite3_value_int(v);
    return SQLITE_OK;
  }
  return chanlite_fail(
    c, SQLITE_MISMATCH, "channel_recv_batch() max must be an INTEGER from 1 to %d, not %s",
    BATCH_MAX,
    sqlite3_value_type(v) == SQLITE_INTEGER ? "one outside that range"
                                            : chanlite_type_name(sqlite3_value_type(v)));
}

/* A pragma's single value (and its text, if asked). Its failure fails the
** batch: after running out of memory inside the caller's statement, every
** later statement of this connection fails too, and carrying on would pop
** messages that could then not be rolled back. */
static int pragma_value(Chanlite *c, int id, sqlite3_int64 *v, char *text, int n) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  int rc;
  if (!s) return c->err_code;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *v = sqlite3_column_int64(s, 0);
    if (text) sqlite3_snprintf(n, text, "%s", (const char *)sqlite3_column_text(s, 0));
    rc = SQLITE_OK;
  } else {
    chanlite_fail_sqlite(c, rc);
  }
  sqlite3_reset(s);
  return rc;
}

/* The connection a batch pops through.
**
** Outside a transaction, the statement reading channel_recv_batch already
** holds a read snapshot of this connection (its Transaction opcode runs
** before xFilter), and SQLite never lets a connection that holds a snapshot
** wait for the write lock: it fails at once with SQLITE_BUSY. So in WAL mode
** the pop runs on a second connection to the same file, where BEGIN
** IMMEDIATE starts from no snapshot and waits like any other call. Inside the
** caller's transaction it runs here, to join it; and without WAL (or without
** a file) here too, since a second connection could not commit past this
** one's read lock. */
static int batch_connection(Chanlite *c, Chanlite **out) {
  char mode[16] = "";
  const char *file;
  sqlite3_vfs *vfs = 0;
  sqlite3 *db = 0;
  char *err = 0, *sql;
  sqlite3_int64 timeout = 0, level = -1, limit = -1, pages = -1;
  int rc;
  *out = c;
  rc = chanlite_node_guard(c); /* a node pops in the client's transaction, or not at all */
  if (rc != SQLITE_OK || !sqlite3_get_autocommit(c->db)) return rc;
  if (!c->side) {
    file = sqlite3_db_filename(c->db, "main");
    rc = pragma_value(c, CHANLITE_STMT_JOURNAL_MODE, &level, mode, sizeof mode);
    if (rc != SQLITE_OK) return rc;
    if (!file || !file[0] || sqlite3_stricmp(mode, "wal") != 0) return SQLITE_OK;
    rc = pragma_value(c, CHANLITE_STMT_SYNCHRONOUS, &level, 0, 0);
    if (rc != SQLITE_OK) return rc;
    sqlite3_file_control(c->db, "main", SQLITE_FCNTL_VFS_POINTER, &vfs);
    if (sqlite3_open_v2(file, &db, SQLITE_OPEN_READWRITE, vfs ? vfs->zName : 0) != SQLITE_OK ||
        chanlite_attach(db, &c->side, &err) != SQLITE_OK) {
      sqlite3_free(err);
      sqlite3_close_v2(db);
      c->side = 0;
      return SQLITE_OK;
    }
    /* Commit as durably as the caller's connection does, no more: SQLite's
    ** default (FULL) would fsync the WAL on every batch. */
    sql = sqlite3_mprintf("PRAGMA main.synchronous=%lld", level);
    if (sql) sqlite3_exec(db, sql, 0, 0, 0);
    sqlite3_free(sql);
    /* Erase what a pop deletes as the caller's connection would: where
    ** SQLite is built with SECURE_DELETE (Debian's is), ON would also write
    ** zeros over every overflow page of a large message, doubling what a
    ** pop writes; a caller that chose FAST or OFF chose otherwise. */
    rc = pragma_value(c, CHANLITE_STMT_SECURE_DELETE, &level, 0, 0);
    if (rc != SQLITE_OK) return rc;
    sql = level >= 0 ? sqlite3_mprintf("PRAGMA main.secure_delete=%s", level == 2 ? "FAST"
                                                                       : level    ? "ON"
                                                                                  : "OFF")
                     : 0;
    if (sql) sqlite3_exec(db, sql, 0, 0, 0);
    sqlite3_free(sql);
    /* Batches write much of the WAL, so this connection is often the one
    ** that restarts it: let it truncate the file then (ext/disk.c). */
    rc = pragma_value(c, CHANLITE_STMT_JOURNAL_SIZE_LIMIT, &limit, 0, 0);
    if (rc != SQLITE_OK) return rc;
    sql = sqlite3_mprintf("PRAGMA main.journal_size_limit=%lld",
                          limit >= 0 ? limit : (sqlite3_int64)CHANLITE_JOURNAL_SIZE_LIMIT);
    if (sql) sqlite3_exec(db, sql, 0, 0, 0);
    sqlite3_free(sql);
    c->side->autocheckpoint = SIDE_DEFAULT_AUTOCHECKPOINT;
    chanlite_disk_watch_side(c->side);
  }
  rc = pragma_value(c, CHANLITE_STMT_BUSY_TIMEOUT, &timeout, 0, 0);
  if (rc != SQLITE_OK) return rc;
  /* chanlite_busy_timeout() leaves the pragma at 0 (SQLite's handler is
  ** replaced): the second connection waits as the caller's does. */
  if (timeout <= 0 && c->busy_timeout_ms > 0) timeout = c->busy_timeout_ms;
  chanlite_busy_wait(c->side, timeout > 0 && timeout < INT_MAX ? (int)timeout : 0);
  /* Checkpoint when the caller's connection would: a caller that leaves
  ** checkpoints to another thread (wal_autocheckpoint=0) must not have them
  ** run on its own thread by the batch's commit. The second connection's
  ** WAL hook (ext/disk.c) reads this; sqlite3_wal_autocheckpoint() would
  ** replace that hook. */
  rc = pragma_value(c, CHANLITE_STMT_WAL_AUTOCHECKPOINT, &pages, 0, 0);
  if (rc != SQLITE_OK) return rc;
  /* The pragma says 0 while chanlite's own WAL hook stands in for SQLite's
  ** (ext/wake.c); that hook checkpoints at what the pragma said before. */
  if (pages == 0 && c->wal_hooked) pages = c->autocheckpoint;
  if (pages >= 0) c->side->autocheckpoint = pages > INT_MAX ? INT_MAX : (int)pages;
  c->side->clock_pinned = c->clock_pinned;
  c->side->clock = c->clock;
  c->side->fn = c->fn;
  *out = c->side;
  return SQLITE_OK;
}

static int batch_filter(sqlite3_vtab_cursor *base, int idxNum, const char *idxStr, int argc,
                        sqlite3_value **argv) {
  BatchCursor *cur = (BatchCursor *)base;
  Chanlite *c = ((BatchTab *)base->pVtab)->c;
  Chanlite *w;
  ChannelName ch;
  sqlite3_stmt *row = 0;
  sqlite3_int64 bytes = 0;
  int max = 0, found = 0, rc;
  double now = chanlite_time(c);
  (void)idxStr;
  (void)argc;
  batch_clear(cur);
  c->fn = "channel_recv_batch";
  if (idxNum == BATCH_PLAN_NO_ARGS) {
    chanlite_fail(c, SQLITE_ERROR, "channel_recv_batch(channel, max) needs both arguments");
    return vtab_error(c, base->pVtab);
  }
  if (idxNum == BATCH_PLAN_EXTRA_ARG) {
    chanlite_fail(c, SQLITE_ERROR,
                  "channel_recv_batch() takes 2 arguments (channel, max), "
                  "and its expires_at column cannot be filtered");
    return vtab_error(c, base->pVtab);
  }
  if (idxNum == BATCH_PLAN_ORDER_BY) {
    chanlite_fail(c, SQLITE_ERROR,
                  "channel_recv_batch() rows come in FIFO order: "
                  "ORDER BY is not allowed");
    return vtab_error(c, base->pVtab);
  }
  rc = chanlite_check_process(c);
  if (rc == SQLITE_OK) rc = chanlite_channel_arg(c, argv[0], &ch);
  if (rc == SQLITE_OK) rc = batch_max_arg(c, argv[1], &max);
  if (rc != SQLITE_OK) return vtab_error(c, base->pVtab);
  rc = batch_connection(c, &w);
  if (rc != SQLITE_OK) return vtab_error(c, base->pVtab);
  cur->worker = w;
  cur->n_queue = ch.n_queue;
  rc = chanlite_peek(w, &ch, &found);
  if (rc == SQLITE_OK && !found && w != c) chanlite_disk_finish_checkpoint(w);
  if (rc == SQLITE_OK && found) {
    rc = chanlite_begin(w);
    while (rc == SQLITE_OK && cur->n < max && bytes < BATCH_BYTES) {
      rc = chanlite_pop(w, &ch, now, &row);
      if (rc != SQLITE_OK || !row) break;
      bytes += sqlite3_column_bytes(row, 3);
      rc = batch_keep(w, cur, &ch, row);
      if (rc == SQLITE_OK) rc = chanlite_pop_done(w, row);
      else sqlite3_reset(row);
    }
    rc = chanlite_end(w, rc);
  }
  if (rc != SQLITE_OK) {
    cur->worker = 0; /* rolled back: nothing to put back */
    batch_clear(cur);
    return vtab_error(w, base->pVtab);
  }
  return SQLITE_OK;
}

static int batch_next(sqlite3_vtab_cursor *cur) {
  ((BatchCursor *)cur)->i++;
  return SQLITE_OK;
}

static int batch_eof(sqlite3_vtab_cursor *cur) {
  return ((BatchCursor *)cur)->i >= ((BatchCursor *)cur)->n;
}

/* Hand ctx its own copy of a value. Allocated here, and then given away
** (no copy by SQLite), so that running out of memory is seen: the row is
** then not marked read, and goes back to its queue. sqlite3_result_value()
** would fail silently as far as this code can tell. */
static int result_copy(sqlite3_context *ctx, int type, const void *z, int n) {
  char *copy;
  if (n == 0) {
    if (type == SQLITE_TEXT) sqlite3_result_text(ctx, "", 0, SQLITE_STATIC);
    else sqlite3_result_zeroblob(ctx, 0);
    return SQLITE_OK;
  }
  copy = sqlite3_malloc(n + 1);
  if (!copy) return SQLITE_NOMEM;
  memcpy(copy, z, (size_t)n);
  copy[n] = 0;
  if (type == SQLITE_TEXT) sqlite3_result_text(ctx, copy, n, sqlite3_free);
  else sqlite3_result_blob(ctx, copy, n, sqlite3_free);
  return SQLITE_OK;
}

static int batch_column(sqlite3_vtab_cursor *base, sqlite3_context *ctx, int col) {
  BatchCursor *cur = (BatchCursor *)base;
  Popped *p = &cur->rows[cur->i];
  int rc = SQLITE_OK;
  if (col == BATCH_COL_CHANNEL) {
    rc = result_copy(ctx, SQLITE_TEXT, p->channel, (int)strlen(p->channel));
  } else if (col == BATCH_COL_MESSAGE) {
    /* Popped through the other connection, it may be longer than this one
    ** takes: SQLite would refuse it after it counted as read, and lose it. */
    int limit = sqlite3_limit(sqlite3_context_db_handle(ctx), SQLITE_LIMIT_LENGTH, -1);
    int type = sqlite3_value_type(p->body);
    if (sqlite3_value_bytes(p->body) > limit) {
      sqlite3_free(base->pVtab->zErrMsg);
      base->pVtab->zErrMsg = sqlite3_mprintf(
        "chanlite: channel_recv_batch(): a message of %d bytes is longer than this "
        "connection's length limit (SQLITE_LIMIT_LENGTH, %d bytes): it stays queued",
        sqlite3_value_bytes(p->body), limit);
      rc = SQLITE_TOOBIG;
    } else {
      rc = result_copy(ctx, type, sqlite3_value_blob(p->body), sqlite3_value_bytes(p->body));
      if (rc == SQLITE_OK) p->read = 1;
    }
  } else if (col == BATCH_COL_EXPIRES_AT) {
    sqlite3_result_double(ctx, p->expires_at);
  }
  /* A failed column fails the statement before this row reaches the
  ** caller, even if its message column was read already. */
  if (rc != SQLITE_OK) p->read = 0;
  return rc;
}

static int batch_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
  *rowid = ((BatchCursor *)cur)->i;
  return SQLITE_OK;
}

static const sqlite3_module batch_module = {
  .xConnect = batch_connect,
  .xBestIndex = batch_best_index,
  .xDisconnect = batch_disconnect,
  .xDestroy = batch_disconnect,
  .xOpen = batch_open,
  .xClose = batch_close,
  .xFilter = batch_filter,
  .xNext = batch_next,
  .xEof = batch_eof,
  .xColumn = batch_column,
  .xRowid = batch_rowid,
};

/* ---- chanlite_channels and chanlite_groups: one SQL query each ---- */

typedef struct QueryModule {
  Chanlite *c;
  const char *name;    /* the table's, for error messages */
  int stmt_id;         /* from sql/introspection.sql or stats.sql; ?1 is now */
  int empty_id;        /* its rows before there are tables; -1: none */
  const char *columns; /* the table declaration */
} QueryModule;

typedef struct QueryTab {
  sqlite3_vtab base;
  QueryModule *q;
} QueryTab;

typedef struct QueryCursor {
  sqlite3_vtab_cursor base;
  sqlite3_stmt *stmt; /* its own, not cached: cursors may nest */
  int eof;
  sqlite3_int64 rowid;
} QueryCursor;

static int query_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                         sqlite3_vtab **out, char **err) {
  QueryModule *q = aux;
  QueryTab *t;
  int rc;
  (void)argc;
  (void)argv;
  (void)err;
  rc = sqlite3_declare_vtab(db, q->columns);
  if (rc != SQLITE_OK) return rc;
  t = sqlite3_malloc(sizeof *t);
  if (!t) return SQLITE_NOMEM;
  memset(t, 0, sizeof *t);
  t->q = q;
  /* Read-only and harmless: a view may use them. */
  sqlite3_vtab_config(db, SQLITE_VTAB_INNOCUOUS);
  *out = &t->base;
  return SQLITE_OK;
}

static int query_best_index(sqlite3_vtab *vtab, sqlite3_index_info *info) {
  (void)vtab;
  info->estimatedCost = 1e6;
  return SQLITE_OK;
}

static int query_open(sqlite3_vtab *vtab, sqlite3_vtab_cursor **out) {
  QueryCursor *cur = sqlite3_malloc(sizeof *cur);
  (void)vtab;
  if (!cur) return SQLITE_NOMEM;
  memset(cur, 0, sizeof *cur);
  *out = &cur->base;
  return SQLITE_OK;
}

static int query_close(sqlite3_vtab_cursor *base) {
  sqlite3_finalize(((QueryCursor *)base)->stmt);
  sqlite3_free(base);
  return SQLITE_OK;
}

static int query_next(sqlite3_vtab_cursor *base) {
  QueryCursor *cur = (QueryCursor *)base;
  QueryModule *q = ((QueryTab *)base->pVtab)->q;
  int rc = sqlite3_step(cur->stmt);
  cur->rowid++;
  cur->eof = rc != SQLITE_ROW;
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) return SQLITE_OK;
  chanlite_fail_sqlite(q->c, rc);
  return vtab_error(q->c, base->pVtab);
}

static int query_filter(sqlite3_vtab_cursor *base, int idxNum, const char *idxStr, int argc,
                        sqlite3_value **argv) {
  QueryCursor *cur = (QueryCursor *)base;
  QueryModule *q = ((QueryTab *)base->pVtab)->q;
  Chanlite *c = q->c;
  int rc;
  (void)idxNum;
  (void)idxStr;
  (void)argc;
  (void)argv;
  c->fn = q->name;
  sqlite3_finalize(cur->stmt);
  cur->stmt = 0;
  cur->eof = 1;
  cur->rowid = 0;
  rc = sqlite3_prepare_v2(c->db, chanlite_stmt_sql[q->stmt_id], -1, &cur->stmt, 0);
  if (rc != SQLITE_OK) {
    int outdated;
    chanlite_fail_sqlite(c, rc);
    outdated = c->err && strstr(c->err, "no such column");
    if (chanlite_schema_missing(c)) {
      if (q->empty_id < 0) return SQLITE_OK; /* no tables: no rows */
      outdated = chanlite_has_tables(c);     /* a table newer than the rest is missing */
      if (!outdated) {
        rc = sqlite3_prepare_v2(c->db, chanlite_stmt_sql[q->empty_id], -1, &cur->stmt, 0);
        if (rc == SQLITE_OK) return query_next(base);
        chanlite_fail_sqlite(c, rc);
      }
    }
    if (outdated) {
      /* Reading writes nothing, so it cannot upgrade the tables itself. */
      chanlite_clear_error(c);
      chanlite_fail(c, SQLITE_ERROR,
                    "%s: this database's chanlite tables were made by an "
                    "older chanlite; any write upgrades them (SELECT channel_trim())",
                    c->fn);
    }
    return vtab_error(c, base->pVtab);
  }
  sqlite3_bind_double(cur->stmt, 1, chanlite_time(c));
  return query_next(base);
}

static int query_eof(sqlite3_vtab_cursor *base) {
  return ((QueryCursor *)base)->eof;
}

static int query_column(sqlite3_vtab_cursor *base, sqlite3_context *ctx, int col) {
  sqlite3_result_value(ctx, sqlite3_column_value(((QueryCursor *)base)->stmt, col));
  return SQLITE_OK;
}

static int query_rowid(sqlite3_vtab_cursor *base, sqlite3_int64 *rowid) {
  *rowid = ((QueryCursor *)base)->rowid;
  return SQLITE_OK;
}

static const sqlite3_module query_module = {
  .xConnect = query_connect,
  .xBestIndex = query_best_index,
  .xDisconnect = batch_disconnect,
  .xDestroy = batch_disconnect,
  .xOpen = query_open,
  .xClose = query_close,
  .xFilter = query_filter,
  .xNext = query_next,
  .xEof = query_eof,
  .xColumn = query_column,
  .xRowid = query_rowid,
};

static int register_query(sqlite3 *db, Chanlite *c, const char *name, int stmt_id, int empty_id,
                          const char *columns) {
  QueryModule *q = sqlite3_malloc(sizeof *q);
  if (!q) return SQLITE_NOMEM;
  q->c = c;
  q->name = name;
  q->stmt_id = stmt_id;
  q->empty_id = empty_id;
  q->columns = columns;
  return sqlite3_create_module_v2(db, name, &query_module, q, sqlite3_free);
}

int chanlite_create_batch_module(sqlite3 *db, Chanlite *c, const char *name) {
  return sqlite3_create_module_v2(db, name, &batch_module, c, 0);
}

int chanlite_create_channels_module(sqlite3 *db, Chanlite *c, const char *name) {
  return register_query(db, c, name, CHANLITE_STMT_LIST_CHANNELS, -1,
                        "CREATE TABLE x(channel TEXT, depth INTEGER, oldest_age REAL)");
}

int chanlite_create_groups_module(sqlite3 *db, Chanlite *c, const char *name) {
  return register_query(db, c, name, CHANLITE_STMT_LIST_GROUPS, -1,
                        "CREATE TABLE x(group_name TEXT, channel TEXT, expires_in REAL)");
}

int chanlite_create_stats_module(sqlite3 *db, Chanlite *c, const char *name) {
  return register_query(db, c, name, CHANLITE_STMT_LIST_STATS, CHANLITE_STMT_LIST_STATS_EMPTY,
                        "CREATE TABLE x(channel TEXT, sent INTEGER, received INTEGER, "
                        "expired INTEGER, full_send INTEGER, full_group_send INTEGER, "
                        "depth INTEGER, oldest_age REAL)");
}
