/*
** libFuzzer target: every SQL entry point of chanlite with fuzzed arguments.
**
** An input is up to 8 calls. Each call picks a function or table-valued
** function, an argument count (0 to 4, so wrong counts too) and, for each
** argument, a type (NULL, INTEGER, REAL, TEXT, BLOB, or a large TEXT or
** BLOB up to 1 MB) and its bytes: names, payloads with NULs, config values,
** capacity globs, recv_batch arguments. A flag byte may wrap the calls in a
** transaction that commits or rolls back, and a table-valued call may read
** only one row (so unread rows are put back).
**
** Checked: no crash or sanitizer report; every error of a chanlite
** function starts with "chanlite: "; afterwards the queue depths match the
** rows and integrity_check is ok.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"

typedef struct Entry {
  const char *name;
  int table; /* table-valued: SELECT * FROM name(...) */
} Entry;

static const Entry entries[] = {
  {"channel_send", 0},        {"channel_recv", 0},      {"group_add", 0},
  {"group_discard", 0},       {"group_send", 0},        {"channel_flush", 0},
  {"channel_trim", 0},        {"chanlite_config", 0},   {"chanlite_capacity", 0},
  {"chanlite_clock", 0},      {"chanlite_now", 0},      {"chanlite_version", 0},
  {"chanlite_debug", 0},      {"channel_wait", 0},      {"chanlite_bell_path", 0},
  {"channel_recv_batch", 1},  {"chanlite_channels", 1}, {"chanlite_groups", 1},
  {"chanlite_statements", 1},
};
#define N_ENTRIES ((int)(sizeof entries / sizeof entries[0]))

/* Names and keys the extension knows, so that calls reach past validation
** often: a TEXT argument may be one of these instead of raw bytes. */
static const char *const words[] = {
  "chat",         "p!",       "p!x", "p!y", "q!",    "room", "expiry",
  "group_expiry", "capacity", "p!*", "*",   "chat*", "",
};
#define N_WORDS ((int)(sizeof words / sizeof words[0]))

static void bind_arg(sqlite3_stmt *s, int i, Input *in, int is_wait_timeout) {
  const uint8_t *p;
  size_t n;
  uint8_t type = take_byte(in) % 8;
  if (is_wait_timeout && (type == 1 || type == 2)) {
    sqlite3_bind_int(s, i, 0); /* channel_wait must not sleep */
    return;
  }
  switch (type) {
    case 0: sqlite3_bind_null(s, i); break;
    case 1: {
      sqlite3_int64 v = 0;
      n = take_bytes(in, 8, &p);
      memcpy(&v, p, n);
      if (n <= 1) v = (sqlite3_int64)(int8_t)(n ? p[0] : 0); /* small ones often */
      sqlite3_bind_int64(s, i, v);
      break;
    }
    case 2: {
      double v = 0;
      n = take_bytes(in, 8, &p);
      memcpy(&v, p, n);
      if (n <= 1) v = (n ? p[0] : 0) / 4.0;
      sqlite3_bind_double(s, i, v);
      break;
    }
    case 3:
      n = take_bytes(in, 255, &p);
      sqlite3_bind_text(s, i, (const char *)p, (int)n, SQLITE_TRANSIENT);
      break;
    case 4:
      n = take_bytes(in, 255, &p);
      sqlite3_bind_blob(s, i, n ? p : (const void *)"", (int)n, SQLITE_TRANSIENT);
      break;
    case 5: sqlite3_bind_text(s, i, words[take_byte(in) % N_WORDS], -1, SQLITE_STATIC); break;
    default: {
      /* Large: up to 1 MB (and just past it), TEXT or BLOB, one byte repeated. */
      size_t size = (size_t)take_byte(in) * 4112;
      uint8_t fill = take_byte(in);
      char *big = malloc(size + 1);
      if (!big) abort();
      memset(big, fill ? fill : 'x', size);
      big[size] = 0;
      if (type == 6) sqlite3_bind_text(s, i, big, (int)size, free);
      else sqlite3_bind_blob(s, i, big, (int)size, free);
    }
  }
}

static void one_call(sqlite3 *db, Input *in) {
  const Entry *e = &entries[take_byte(in) % N_ENTRIES];
  int argc = take_byte(in) % 5, one_row = 0, i, rc;
  char sql[160];
  sqlite3_stmt *s = 0;
  size_t len;
  if (e->table) {
    one_row = take_byte(in) & 1;
    len = (size_t)snprintf(sql, sizeof sql, "SELECT * FROM %s(", e->name);
  } else {
    len = (size_t)snprintf(sql, sizeof sql, "SELECT %s(", e->name);
  }
  for (i = 0; i < argc; i++)
    len += (size_t)snprintf(sql + len, sizeof sql - len, "%s?", i ? "," : "");
  snprintf(sql + len, sizeof sql - len, ")%s", one_row ? " LIMIT 1" : "");
  rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  if (rc != SQLITE_OK) {
    check_error(db, rc, sql);
    return;
  }
  for (i = 0; i < argc; i++) {
    bind_arg(s, i + 1, in, i == 1 && strcmp(e->name, "channel_wait") == 0);
  }
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    for (i = 0; i < sqlite3_column_count(s); i++) {
      (void)sqlite3_column_blob(s, i);
      (void)sqlite3_column_bytes(s, i);
    }
  }
  check_error(db, rc, sql);
  sqlite3_finalize(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Input in = {data, size};
  sqlite3 *db = fuzz_open();
  uint8_t flags = take_byte(&in);
  int calls = 0;
  if (flags & 1) sqlite3_exec(db, "BEGIN", 0, 0, 0);
  while (in.n > 0 && calls++ < 8) one_call(db, &in);
  if (!sqlite3_get_autocommit(db)) {
    sqlite3_exec(db, (flags & 2) ? "ROLLBACK" : "COMMIT", 0, 0, 0);
  }
  check_consistent(db);
  fuzz_close(db);
  return 0;
}
