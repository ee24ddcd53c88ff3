/*
** The prepared-statement cache, and the chanlite_statements table that makes
** it safe.
**
** Every chanlite call runs a handful of statements from sql/; preparing them
** each time would cost more than running them, so each connection keeps them
** prepared. But sqlite3_close() refuses to close a connection that has
** unfinalized statements. It does disconnect every virtual table before that
** check, though ("the v-table implementation may be storing some prepared
** statements internally", main.c). So the cache belongs to the eponymous
** virtual table chanlite_statements: nothing is cached until it is connected,
** and its xDisconnect finalizes everything.
**
** It also shows what is cached, for bug reports:
**
**   SELECT name, prepared FROM chanlite_statements;
*/
#include <string.h>
#include "chanlite.h"

static void finalize_all(Chanlite *c) {
  int i;
  for (i = 0; i < CHANLITE_STMT_COUNT; i++) {
    sqlite3_finalize(c->stmt[i]);
    c->stmt[i] = 0;
  }
  c->schema_verified = 0; /* counted on schema_check, just finalized */
}

/* Connect chanlite_statements by preparing a statement that names it. */
static int anchor(Chanlite *c) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(c->db, "SELECT 1 FROM chanlite_statements", -1, &s, 0);
  if (rc != SQLITE_OK) return chanlite_fail_sqlite(c, rc);
  sqlite3_finalize(s);
  if (!c->anchored) {
    return chanlite_fail(c, SQLITE_ERROR,
                         "%s(): cannot connect chanlite_statements "
                         "(is there a table of that name?)",
                         c->fn);
  }
  return SQLITE_OK;
}

sqlite3_stmt *chanlite_stmt(Chanlite *c, int id) {
  int rc;
  if (c->stmt[id]) return c->stmt[id];
  if (!c->anchored && anchor(c) != SQLITE_OK) return 0;
  rc = sqlite3_prepare_v3(c->db, chanlite_stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id],
                          0);
  if (rc != SQLITE_OK) {
    chanlite_fail_sqlite(c, rc);
    sqlite3_finalize(c->stmt[id]);
    c->stmt[id] = 0;
  }
  return c->stmt[id];
}

/* Run a statement that returns no rows; parameters are already bound. */
int chanlite_step_done(Chanlite *c, sqlite3_stmt *s) {
  int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

/* Run a query for whether it returns a row; parameters are already bound. */
int chanlite_step_exists(Chanlite *c, sqlite3_stmt *s, int *found) {
  int rc = sqlite3_step(s);
  *found = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

/* ---- the chanlite_statements virtual table ---- */

typedef struct StatementsTab {
  sqlite3_vtab base;
  Chanlite *c;
} StatementsTab;

typedef struct StatementsCursor {
  sqlite3_vtab_cursor base;
  int id;
} StatementsCursor;

static int stmts_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                         sqlite3_vtab **out, char **err) {
  StatementsTab *t;
  int rc;
  (void)argc;
  (void)argv;
  (void)err;
  rc = sqlite3_declare_vtab(db, "CREATE TABLE x(name TEXT, sql TEXT, prepared INTEGER)");
  if (rc != SQLITE_OK) return rc;
  t = sqlite3_malloc(sizeof *t);
  if (!t) return SQLITE_NOMEM;
  memset(t, 0, sizeof *t);
  t->c = aux;
  t->c->anchored = 1;
  sqlite3_vtab_config(db, SQLITE_VTAB_INNOCUOUS);
  *out = &t->base;
  return SQLITE_OK;
}

static void chanlite_free(void *p);

static int stmts_disconnect(sqlite3_vtab *vtab) {
  StatementsTab *t = (StatementsTab *)vtab;
  Chanlite *c = t->c;
  if (c->side) {
    sqlite3_close_v2(c->side->db); /* frees its state too */
    c->side = 0;
  }
  finalize_all(c);
  c->anchored = 0;
  sqlite3_free(t);
  if (c->orphaned) chanlite_free(c);
  return SQLITE_OK;
}

static int stmts_best_index(sqlite3_vtab *vtab, sqlite3_index_info *info) {
  (void)vtab;
  info->estimatedCost = CHANLITE_STMT_COUNT;
  info->estimatedRows = CHANLITE_STMT_COUNT;
  return SQLITE_OK;
}

static int stmts_open(sqlite3_vtab *vtab, sqlite3_vtab_cursor **out) {
  StatementsCursor *cur = sqlite3_malloc(sizeof *cur);
  (void)vtab;
  if (!cur) return SQLITE_NOMEM;
  memset(cur, 0, sizeof *cur);
  *out = &cur->base;
  return SQLITE_OK;
}

static int stmts_close(sqlite3_vtab_cursor *cur) {
  sqlite3_free(cur);
  return SQLITE_OK;
}

static int stmts_filter(sqlite3_vtab_cursor *cur, int idxNum, const char *idxStr, int argc,
                        sqlite3_value **argv) {
  (void)idxNum;
  (void)idxStr;
  (void)argc;
  (void)argv;
  ((StatementsCursor *)cur)->id = 0;
  return SQLITE_OK;
}

static int stmts_next(sqlite3_vtab_cursor *cur) {
  ((StatementsCursor *)cur)->id++;
  return SQLITE_OK;
}

static int stmts_eof(sqlite3_vtab_cursor *cur) {
  return ((StatementsCursor *)cur)->id >= CHANLITE_STMT_COUNT;
}

static int stmts_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col) {
  int id = ((StatementsCursor *)cur)->id;
  Chanlite *c = ((StatementsTab *)cur->pVtab)->c;
  switch (col) {
    case 0: sqlite3_result_text(ctx, chanlite_stmt_name[id], -1, SQLITE_STATIC); break;
    case 1: sqlite3_result_text(ctx, chanlite_stmt_sql[id], -1, SQLITE_STATIC); break;
    default: sqlite3_result_int(ctx, c->stmt[id] != 0); break;
  }
  return SQLITE_OK;
}

static int stmts_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
  *rowid = ((StatementsCursor *)cur)->id;
  return SQLITE_OK;
}

static const sqlite3_module statements_module = {
  .iVersion = 0,
  .xCreate = 0, /* eponymous only */
  .xConnect = stmts_connect,
  .xBestIndex = stmts_best_index,
  .xDisconnect = stmts_disconnect,
  .xDestroy = stmts_disconnect,
  .xOpen = stmts_open,
  .xClose = stmts_close,
  .xFilter = stmts_filter,
  .xNext = stmts_next,
  .xEof = stmts_eof,
  .xColumn = stmts_column,
  .xRowid = stmts_rowid,
};

/* Freed when the connection closes, after every table is disconnected. When
** the extension is loaded again into the same connection, the old module is
** destroyed first and its table disconnected later (SQLite defers that to
** the next prepare): then the state waits for the disconnect. */
static void chanlite_free(void *p) {
  Chanlite *c = p;
  if (c->anchored) {
    c->orphaned = 1;
    chanlite_unwatch_commits(c); /* the connection is open: it may still commit */
    return;
  }
  chanlite_wake_close(c);
  finalize_all(c);
  chanlite_clear_error(c);
  sqlite3_free(c);
}

/* Registered first (ext/chanlite.c), so that the module owns the state from
** the start and frees it even if a later registration fails. */
int chanlite_create_statements_module(sqlite3 *db, Chanlite *c, const char *name) {
  return sqlite3_create_module_v2(db, name, &statements_module, c, chanlite_free);
}
