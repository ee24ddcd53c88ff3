/*
** Errors. Every error a chanlite function reports starts with "chanlite: "
** and names the problem and the value; it carries SQLite's result code
** (SQLITE_BUSY stays SQLITE_BUSY) so callers can tell what to retry.
** A call records its error in the Chanlite state while it unwinds, and the
** SQL function reports it once, at the end.
*/
#include <string.h>
#include "chanlite.h"

const char *chanlite_type_name(int type) {
  switch (type) {
    case SQLITE_INTEGER: return "INTEGER";
    case SQLITE_FLOAT: return "REAL";
    case SQLITE_TEXT: return "TEXT";
    case SQLITE_BLOB: return "BLOB";
    default: return "NULL";
  }
}

void chanlite_clear_error(Chanlite *c) {
  sqlite3_free(c->err);
  c->err = 0;
  c->err_code = SQLITE_OK;
}

/* Keeps the first error: what went wrong first is what the caller needs,
** not the failures of the clean-up that followed. */
int chanlite_fail(Chanlite *c, int code, const char *fmt, ...) {
  if (c->err_code == SQLITE_OK) {
    va_list ap;
    va_start(ap, fmt);
    c->err = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    c->err_code = c->err ? code : SQLITE_NOMEM;
  }
  return c->err_code;
}

int chanlite_fail_sqlite(Chanlite *c, int rc) {
  const char *msg = sqlite3_errmsg(c->db);
  if (strstr(msg, "SQL statements in progress")) {
    /* Not SQLITE_BUSY, which callers retry: no retry can fix this. */
    return chanlite_fail(c, SQLITE_MISUSE,
                         "%s() must run from a statement of its own, not from inside "
                         "INSERT, UPDATE or DELETE: use SELECT %s(...)",
                         c->fn, c->fn);
  }
  if (sqlite3_extended_errcode(c->db) == SQLITE_BUSY_SNAPSHOT) {
    return chanlite_fail(c, rc,
                         "%s(): %s (this transaction read before another connection wrote, so "
                         "it can no longer write: roll it back and run it again, and begin "
                         "transactions that use chanlite with BEGIN IMMEDIATE)",
                         c->fn, msg);
  }
  if ((rc & 0xff) == SQLITE_BUSY) {
    return chanlite_fail(c, rc,
                         "%s(): %s (another connection held the write lock past the busy "
                         "timeout: retry, or raise the busy timeout; or this call runs in a "
                         "statement or transaction that has already read and so cannot wait: "
                         "call it from a statement of its own, and begin transactions that use "
                         "chanlite with BEGIN IMMEDIATE)",
                         c->fn, msg);
  }
  if ((rc & 0xff) == SQLITE_FULL) {
    /* SQLite says the same for a full disk and for max_page_count. */
    return chanlite_fail(c, rc,
                         "%s(): %s (no space left for the database file, its -wal or its "
                         "journal, or PRAGMA max_page_count reached: this call changed nothing; "
                         "free space, then retry)",
                         c->fn, msg);
  }
  if ((rc & 0xff) == SQLITE_TOOBIG) {
    return chanlite_fail(c, rc,
                         "%s(): %s (a message is longer than this connection's length limit, "
                         "SQLITE_LIMIT_LENGTH: this call changed nothing)",
                         c->fn, msg);
  }
  return chanlite_fail(c, rc, "%s(): %s", c->fn, msg);
}

void chanlite_report(Chanlite *c, sqlite3_context *ctx) {
  if (c->err_code == SQLITE_NOMEM) {
    sqlite3_result_error_nomem(ctx);
  } else {
    char *msg = sqlite3_mprintf("chanlite: %s", c->err ? c->err : "error");
    if (msg) {
      sqlite3_result_error(ctx, msg, -1);
      sqlite3_result_error_code(ctx, c->err_code);
    } else {
      sqlite3_result_error_nomem(ctx);
    }
    sqlite3_free(msg);
  }
  chanlite_clear_error(c);
}
