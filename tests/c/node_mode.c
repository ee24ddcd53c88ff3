/*
** Node mode (ext/node.c) without dqlite: chanlite compiled into this
** program, as chanlite-node compiles it, registered with
** sqlite3_auto_extension() after chanlite_set_node_mode(), on a plain WAL
** file. Every write function refuses to run in autocommit, naming the fix,
** even on an empty queue; channel_wait refuses everywhere; inside the
** caller's transaction everything works; no bell file is made and no WAL
** hook replaces SQLite's. tests/cluster/test_node.py does the same against
** real dqlite nodes.
**
**   tests/c/node_mode
*/
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../ext/chanlite_node.h"
#include "check.h"

int sqlite3_chanlite_init(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api);

/* Runs sql; returns its first column as text (sqlite3_free it), or NULL
** with the error in *err (sqlite3_free it too). */
static char *run(sqlite3 *db, const char *sql, char **err) {
  sqlite3_stmt *s = 0;
  char *out = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  *err = 0;
  while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (!out)
      out = sqlite3_mprintf(
        "%s", sqlite3_column_text(s, 0) ? (const char *)sqlite3_column_text(s, 0) : "NULL");
    rc = SQLITE_OK;
  }
  if (rc != SQLITE_DONE) {
    *err = sqlite3_mprintf("%s", sqlite3_errmsg(db));
    sqlite3_free(out);
    out = 0;
  } else if (!out) {
    out = sqlite3_mprintf("(no row)");
  }
  sqlite3_finalize(s);
  return out;
}

static void expect_refused(sqlite3 *db, const char *sql, const char *fn) {
  char *err, *out = run(db, sql, &err);
  char *want = sqlite3_mprintf("chanlite: %s() in a dqlite node must run inside the client's "
                               "transaction: committed on its own it would not be replicated; "
                               "send EXEC 'BEGIN IMMEDIATE', then this statement, then EXEC "
                               "'COMMIT'",
                               fn);
  check(!out && err && want && strcmp(err, want) == 0, "autocommit %s: %s", sql, err ? err : out);
  sqlite3_free(out);
  sqlite3_free(err);
  sqlite3_free(want);
}

static void expect_wait_refused(sqlite3 *db, const char *where) {
  char *err, *out = run(db, "SELECT channel_wait('a', 0)", &err);
  check(!out && err && strstr(err, "chanlite: channel_wait() cannot run in a dqlite node"),
        "channel_wait refused %s: %s", where, err ? err : out);
  sqlite3_free(out);
  sqlite3_free(err);
}

static void expect_result(sqlite3 *db, const char *sql, const char *want) {
  char *err, *out = run(db, sql, &err);
  check(out && strcmp(out, want) == 0, "%s -> %s (want %s)", sql, out ? out : err, want);
  sqlite3_free(out);
  sqlite3_free(err);
}

int main(void) {
  char dir[] = "/tmp/chanlite-node-mode-XXXXXX", path[96], bell[128];
  sqlite3 *db = 0;
  char *err = 0;
  void *prev_hook;
  static const char *const refused[][2] = {
    {"SELECT channel_send('a', 'x')", "channel_send"},
    {"SELECT channel_recv('a')", "channel_recv"}, /* the queue is empty */
    {"SELECT channel, message FROM channel_recv_batch('a', 5)", "channel_recv_batch"},
    {"SELECT group_add('g', 'a')", "group_add"},
    {"SELECT group_discard('g', 'a')", "group_discard"},
    {"SELECT group_send('g', 'x')", "group_send"},
    {"SELECT channel_flush()", "channel_flush"},
    {"SELECT channel_trim()", "channel_trim"},
    {"SELECT chanlite_config('expiry', 30)", "chanlite_config"},
    {"SELECT chanlite_capacity('a*', 5)", "chanlite_capacity"},
  };
  int i;
  if (!mkdtemp(dir)) return 2;
  snprintf(path, sizeof path, "%s/node.db", dir);
  snprintf(bell, sizeof bell, "%s-chanlite", path);
  chanlite_set_node_mode();
  if (sqlite3_auto_extension((void (*)(void))sqlite3_chanlite_init) != SQLITE_OK ||
      sqlite3_open(path, &db) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA journal_mode=WAL", 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "open: %s\n", err ? err : sqlite3_errmsg(db));
    return 2;
  }

  for (i = 0; i < (int)(sizeof refused / sizeof refused[0]); i++) {
    expect_refused(db, refused[i][0], refused[i][1]);
  }
  expect_wait_refused(db, "in autocommit");
  expect_result(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'chanlite%'", "0");
  expect_result(db, "SELECT chanlite_config('expiry')", "60");
  expect_result(db, "SELECT chanlite_bell_path()", "NULL");

  /* The client's transaction, as EXEC BEGIN / QUERY / EXEC COMMIT. */
  expect_result(db, "BEGIN IMMEDIATE", "(no row)");
  expect_result(db, "SELECT channel_send('a', 'one')", "1");
  expect_result(db, "SELECT channel_send('a', 'two')", "2");
  expect_result(db, "SELECT group_add('g', 'a')", "1");
  expect_result(db, "SELECT group_send('g', 'three')", "1");
  expect_wait_refused(db, "in a transaction");
  expect_result(db, "COMMIT", "(no row)");
  check(access(bell, F_OK) != 0, "no bell file next to the database after a send");
  prev_hook = sqlite3_wal_hook(db, 0, 0);
  check((uintptr_t)prev_hook == 1000, "SQLite's own WAL hook is still in place (arg %p)",
        prev_hook);
  expect_result(db, "SELECT depth FROM chanlite_channels WHERE channel = 'a'", "3");

  expect_result(db, "BEGIN IMMEDIATE", "(no row)");
  expect_result(db, "SELECT channel_recv('a')", "one");
  expect_result(db, "SELECT group_concat(message, ',') FROM channel_recv_batch('a', 5)",
                "two,three");
  expect_result(db, "SELECT channel_recv('a')", "NULL");
  expect_result(db, "COMMIT", "(no row)");
  expect_refused(db, "SELECT channel_recv('a')", "channel_recv");

  sqlite3_close(db);
  unlink(path);
  snprintf(bell, sizeof bell, "%s-wal", path);
  unlink(bell);
  snprintf(bell, sizeof bell, "%s-shm", path);
  unlink(bell);
  rmdir(dir);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
