/* See harness.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"

int sqlite3_chanlite_init(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api);

uint8_t take_byte(Input *in) {
  uint8_t b;
  if (in->n == 0) return 0;
  b = *in->p;
  in->p++;
  in->n--;
  return b;
}

size_t take_bytes(Input *in, size_t max, const uint8_t **out) {
  size_t n = take_byte(in) % (max + 1);
  if (n > in->n) n = in->n;
  *out = in->p;
  in->p += n;
  in->n -= n;
  return n;
}

static void die(const char *what, const char *detail) {
  fprintf(stderr, "chanlite fuzz: %s: %s\n", what, detail ? detail : "");
  abort();
}

sqlite3 *fuzz_open(void) {
  return fuzz_open_file(":memory:");
}

sqlite3 *fuzz_open_file(const char *path) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(path, &db) != SQLITE_OK) die("open", sqlite3_errmsg(db));
  if (sqlite3_chanlite_init(db, &err, 0) != SQLITE_OK) die("chanlite_init", err);
  /* Bounded work per input: no statement runs for long. */
  sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 1 << 22);
  return db;
}

void fuzz_close(sqlite3 *db) {
  if (sqlite3_close(db) != SQLITE_OK) die("close", sqlite3_errmsg(db));
}

static int starts(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

void check_error(sqlite3 *db, int rc, const char *sql) {
  const char *msg = sqlite3_errmsg(db);
  char detail[600];
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
  if (starts(msg, "chanlite: ")) return;
  if ((rc & 0xff) == SQLITE_NOMEM || (rc & 0xff) == SQLITE_TOOBIG) return;
  /* SQLite's own checks of a table-valued function's arguments. */
  if (strstr(msg, "arguments on channel_recv_batch") || strstr(msg, "arguments on chanlite_") ||
      strstr(msg, "no query solution")) {
    return;
  }
  snprintf(detail, sizeof detail, "rc %d: %s (in %.300s)", rc, msg, sql);
  die("an error without the chanlite: prefix", detail);
}

static sqlite3_int64 one_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  sqlite3_int64 v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) != SQLITE_OK) die(sql, sqlite3_errmsg(db));
  if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return v;
}

void check_consistent_integrity(sqlite3 *db) {
  sqlite3_stmt *s = 0;
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, 0) != SQLITE_OK ||
      sqlite3_step(s) != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(s, 0), "ok") != 0) {
    die("integrity_check", s ? (const char *)sqlite3_column_text(s, 0) : sqlite3_errmsg(db));
  }
  sqlite3_finalize(s);
}

void check_consistent(sqlite3 *db) {
  if (one_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'chanlite_queue'") == 1 &&
      one_int(db, "SELECT count(*) FROM ("
                  " SELECT queue, count(*) FROM chanlite_message GROUP BY queue"
                  " EXCEPT SELECT queue, depth FROM chanlite_queue)") +
          one_int(db, "SELECT count(*) FROM ("
                      " SELECT queue, depth FROM chanlite_queue WHERE depth <> 0"
                      " EXCEPT SELECT queue, count(*) FROM chanlite_message GROUP BY queue)") !=
        0) {
    die("chanlite_queue depths do not match the messages", 0);
  }
  check_consistent_integrity(db);
}
