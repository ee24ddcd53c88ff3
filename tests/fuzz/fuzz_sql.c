/*
** libFuzzer target: SQL text, run against a database with chanlite loaded.
**
** Reaches what fixed call shapes cannot: chanlite functions nested in
** other expressions, in triggers, views, CHECK constraints and generated
** columns (DIRECTONLY must refuse them there), inside INSERT ... SELECT
** (the misuse error), joins over the table-valued functions, and
** transactions and savepoints around them. The dictionary (chanlite.dict)
** holds the function names and keywords.
**
** Checked: no crash or sanitizer report, and integrity_check is ok after.
** (Depth counters are not checked here: the SQL may write the chanlite
** tables directly.) ATTACH and channel_wait are refused by an authorizer,
** so that an input can neither write files nor sleep; a progress handler
** bounds each statement's work.
*/
#include <stdlib.h>
#include <string.h>
#include "harness.h"

static int authorize(void *arg, int action, const char *a, const char *b, const char *c,
                     const char *d) {
  (void)arg;
  (void)b;
  (void)c;
  (void)d;
  if (action == SQLITE_ATTACH) return SQLITE_DENY;
  if (action == SQLITE_FUNCTION && a && sqlite3_stricmp(a, "channel_wait") == 0) {
    return SQLITE_DENY;
  }
  return SQLITE_OK;
}

static int progress(void *arg) {
  int *steps = arg;
  return ++*steps > 2000; /* interrupt: about 2 million VM steps */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sqlite3 *db;
  char *sql;
  int steps = 0;
  if (size > 4096) return 0;
  sql = malloc(size + 1);
  if (!sql) abort();
  memcpy(sql, data, size);
  sql[size] = 0;
  db = fuzz_open();
  sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, 0);
  sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
  sqlite3_limit(db, SQLITE_LIMIT_VDBE_OP, 25000);
  sqlite3_set_authorizer(db, authorize, 0);
  sqlite3_progress_handler(db, 1000, progress, &steps);
  sqlite3_exec(db, sql, 0, 0, 0);
  sqlite3_progress_handler(db, 0, 0, 0);
  if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", 0, 0, 0);
  if (sqlite3_get_autocommit(db)) check_consistent_integrity(db);
  fuzz_close(db);
  free(sql);
  return 0;
}
