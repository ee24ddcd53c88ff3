/*
** cmocka unit tests of chanlite through the SQLite C API: what the SQL text
** tests (tests/sql/) cannot show well.
**
**   unit path/to/chanlite.so
**
** Each test gets a fresh temporary directory for its database files. Time
** never matters by the wall clock: where it does, chanlite_clock() pins it.
*/
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

static const char *ext_path;

typedef struct Fixture {
  char dir[64];
} Fixture;

/* ---- helpers ---- */

static int setup(void **state) {
  Fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/chanlite-unit-XXXXXX");
  if (!mkdtemp(f->dir)) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  Fixture *f = *state;
  DIR *d = opendir(f->dir);
  struct dirent *e;
  char path[512];
  if (d) {
    while ((e = readdir(d)) != 0) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      snprintf(path, sizeof path, "%s/%s", f->dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

/* A file in the test's directory. Returns a static buffer per slot. */
static const char *file_in(void **state, const char *name) {
  static char buf[4][512];
  static int slot;
  Fixture *f = *state;
  char *p = buf[slot++ % 4];
  snprintf(p, 512, "%s/%s", f->dir, name);
  return p;
}

static void load(sqlite3 *db) {
  char *err = 0;
  int rc = sqlite3_enable_load_extension(db, 1);
  assert_int_equal(rc, SQLITE_OK);
  rc = sqlite3_load_extension(db, ext_path, "sqlite3_chanlite_init", &err);
  if (rc != SQLITE_OK) fail_msg("load %s: %s", ext_path, err ? err : "?");
  sqlite3_free(err);
}

static sqlite3 *open_flags(const char *path, int flags) {
  sqlite3 *db = 0;
  int rc = sqlite3_open_v2(path, &db, flags, 0);
  if (rc != SQLITE_OK) fail_msg("open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
  load(db);
  return db;
}

static sqlite3 *open_db(const char *path) {
  return open_flags(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
}

static sqlite3 *open_wal(const char *path) {
  sqlite3 *db = open_db(path);
  char *err = 0;
  if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;", 0, 0, &err) !=
      SQLITE_OK) {
    fail_msg("WAL: %s", err);
  }
  return db;
}

static void close_ok(sqlite3 *db) {
  int rc = sqlite3_close(db);
  if (rc != SQLITE_OK) fail_msg("sqlite3_close: %d %s", rc, sqlite3_errmsg(db));
}

static void exec_ok(sqlite3 *db, const char *sql) {
  char *err = 0;
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) { fail_msg("%s: %s", sql, err ? err : "?"); }
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  if (rc != SQLITE_OK) fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
  return s;
}

/* The single value of a one-row query, as an integer. */
static sqlite3_int64 int_of(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = prepare(db, sql);
  sqlite3_int64 v;
  int rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) fail_msg("%s: %d %s", sql, rc, sqlite3_errmsg(db));
  v = sqlite3_column_int64(s, 0);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  return v;
}

/* The type of the single value of a one-row query. */
static int type_of(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = prepare(db, sql);
  int t, rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) fail_msg("%s: %d %s", sql, rc, sqlite3_errmsg(db));
  t = sqlite3_column_type(s, 0);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  return t;
}

/* The single TEXT value of a one-row query, compared. */
static void text_is(sqlite3 *db, const char *sql, const char *want) {
  sqlite3_stmt *s = prepare(db, sql);
  int rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) fail_msg("%s: %d %s", sql, rc, sqlite3_errmsg(db));
  assert_int_equal(sqlite3_column_type(s, 0), SQLITE_TEXT);
  assert_string_equal((const char *)sqlite3_column_text(s, 0), want);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
}

static int starts_with(const char *s, const char *prefix) {
  return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Run sql (one or more statements); it must fail with `code` (primary
** result code) and an error message starting with `prefix` and containing
** `contains` (either may be NULL). */
static void fails_with(sqlite3 *db, const char *sql, int code, const char *prefix,
                       const char *contains) {
  char *err = 0;
  int rc = sqlite3_exec(db, sql, 0, 0, &err);
  const char *msg = err ? err : "";
  if (rc == SQLITE_OK) fail_msg("%s: succeeded, expected error %d", sql, code);
  if (sqlite3_errcode(db) != code || (sqlite3_extended_errcode(db) & 0xff) != code) {
    fail_msg("%s: error code %d (extended %d), expected %d: %s", sql, sqlite3_errcode(db),
             sqlite3_extended_errcode(db), code, msg);
  }
  if (prefix && !starts_with(msg, prefix))
    fail_msg("%s: message '%s' does not start '%s'", sql, msg, prefix);
  if (contains && !strstr(msg, contains))
    fail_msg("%s: message '%s' lacks '%s'", sql, msg, contains);
  sqlite3_free(err);
}

/* Send one message bound as TEXT or BLOB (type), n bytes; returns its id. */
static sqlite3_int64 send_bytes(sqlite3 *db, const char *channel, int type, const void *p, int n) {
  sqlite3_stmt *s = prepare(db, "SELECT channel_send(?1, ?2)");
  sqlite3_int64 id;
  int rc;
  assert_int_equal(sqlite3_bind_text(s, 1, channel, -1, SQLITE_STATIC), SQLITE_OK);
  if (type == SQLITE_TEXT) rc = sqlite3_bind_text(s, 2, p, n, SQLITE_STATIC);
  else rc = sqlite3_bind_blob(s, 2, p ? p : "", n, SQLITE_STATIC);
  assert_int_equal(rc, SQLITE_OK);
  rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) fail_msg("channel_send: %d %s", rc, sqlite3_errmsg(db));
  assert_int_equal(sqlite3_column_type(s, 0), SQLITE_INTEGER);
  id = sqlite3_column_int64(s, 0);
  assert_int_equal(sqlite3_step(s), SQLITE_DONE);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  return id;
}

/* Check that column 0 of a stepped statement is exactly (type, p, n). */
static void column_is(sqlite3_stmt *s, int col, int type, const void *p, int n) {
  int got_type = sqlite3_column_type(s, col);
  const void *got;
  int got_n;
  if (got_type != type) fail_msg("type %d, expected %d", got_type, type);
  got = type == SQLITE_TEXT ? (const void *)sqlite3_column_text(s, col)
                            : sqlite3_column_blob(s, col);
  got_n = sqlite3_column_bytes(s, col);
  assert_int_equal(got_n, n);
  if (n > 0) {
    assert_non_null(got);
    assert_memory_equal(got, p, (size_t)n);
  }
}

/* Receive one message and check it is exactly (type, p, n). */
static void recv_is(sqlite3 *db, const char *channel, int type, const void *p, int n) {
  sqlite3_stmt *s = prepare(db, "SELECT channel_recv(?1)");
  int rc;
  assert_int_equal(sqlite3_bind_text(s, 1, channel, -1, SQLITE_STATIC), SQLITE_OK);
  rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) fail_msg("channel_recv: %d %s", rc, sqlite3_errmsg(db));
  column_is(s, 0, type, p, n);
  assert_int_equal(sqlite3_step(s), SQLITE_DONE);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
}

static int recv_is_null(sqlite3 *db, const char *channel) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT channel_recv('%s')", channel);
  return type_of(db, sql) == SQLITE_NULL;
}

static sqlite3_int64 table_count(sqlite3 *db) {
  return int_of(db, "SELECT count(*) FROM sqlite_master");
}

/* ---- sqlite3_close() after every function ---- */

/* Every function, table-valued function and error path once; then the
** statement cache and side connections must not keep sqlite3_close() from
** closing. */
static void use_everything(sqlite3 *db) {
  sqlite3_stmt *s;
  exec_ok(db, "SELECT chanlite_clock(1000)");
  text_is(db, "SELECT chanlite_version()", CHANLITE_VERSION); /* meson.build's */
  assert_int_equal(type_of(db, "SELECT chanlite_debug()"), SQLITE_TEXT);
  assert_int_equal(int_of(db, "SELECT chanlite_now()"), 1000);
  assert_int_equal(int_of(db, "SELECT chanlite_config('expiry')"), 60);
  assert_int_equal(int_of(db, "SELECT chanlite_config('capacity', 100)"), 100);
  assert_int_equal(int_of(db, "SELECT chanlite_config('group_expiry', 86400)"), 86400);
  assert_int_equal(int_of(db, "SELECT chanlite_capacity('tiny*', 1)"), 1);
  assert_true(int_of(db, "SELECT channel_send('chat', 'hello')") > 0);
  assert_true(int_of(db, "SELECT channel_send('p.x!a', x'00ff')") > 0);
  assert_true(int_of(db, "SELECT channel_send('p.x!b', 'two')") > 0);
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_channels"), 3);
  text_is(db, "SELECT channel_recv('chat')", "hello");
  assert_int_equal(type_of(db, "SELECT channel_recv('chat')"), SQLITE_NULL);
  assert_int_equal(int_of(db, "SELECT count(message) FROM channel_recv_batch('p.x!', 100)"), 2);
  assert_int_equal(int_of(db, "SELECT group_add('room', 'chat')"), 1);
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_groups"), 1);
  assert_int_equal(int_of(db, "SELECT group_send('room', 'hi')"), 1);
  assert_int_equal(int_of(db, "SELECT group_discard('room', 'chat')"), 1);
  assert_int_equal(int_of(db, "SELECT group_discard('room', 'chat')"), 0);
  assert_int_equal(int_of(db, "SELECT channel_trim()"), 0);
  assert_int_equal(int_of(db, "SELECT channel_wait('chat', 0)"), 1);
  assert_int_equal(int_of(db, "SELECT channel_flush()"), 1);
  assert_int_equal(int_of(db, "SELECT channel_wait('chat', 0)"), 0);
  s = prepare(db, "SELECT chanlite_bell_path()");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  assert_true(int_of(db, "SELECT count(*) FROM chanlite_statements WHERE prepared") > 0);
  /* error paths, some of them mid-call */
  assert_true(int_of(db, "SELECT channel_send('tiny', 'a')") > 0);
  fails_with(db, "SELECT channel_send('tiny', 'b')", SQLITE_CONSTRAINT, "chanlite: ", 0);
  fails_with(db, "SELECT channel_send('bad name', 'b')", SQLITE_ERROR, "chanlite: ", 0);
  fails_with(db, "SELECT channel_recv(1)", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT * FROM channel_recv_batch('chat', 0)", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT chanlite_config('nope')", SQLITE_ERROR, "chanlite: ", 0);
  assert_int_equal(int_of(db, "SELECT chanlite_capacity('tiny*', NULL) IS NULL"), 1);
  exec_ok(db, "SELECT chanlite_clock(NULL)");
}

static void test_close_memory(void **state) {
  sqlite3 *db = open_db(":memory:");
  (void)state;
  use_everything(db);
  close_ok(db);
}

static void test_close_file(void **state) {
  sqlite3 *db = open_db(file_in(state, "rollback.db"));
  use_everything(db);
  close_ok(db);
}

/* WAL: channel_recv_batch pops through a second connection, and the bell
** and its watch are open files. */
static void test_close_wal(void **state) {
  sqlite3 *db = open_wal(file_in(state, "wal.db"));
  use_everything(db);
  close_ok(db);
}

/* A connection closed inside a transaction that chanlite joined: it closes,
** and the transaction is rolled back. */
static void test_close_in_transaction(void **state) {
  const char *path = file_in(state, "txn.db");
  sqlite3 *db = open_wal(path);
  exec_ok(db, "SELECT channel_send('keep', 'k')");
  exec_ok(db, "BEGIN; SELECT channel_send('chat', 'lost'); SELECT channel_recv('keep');");
  close_ok(db);
  db = open_wal(path);
  assert_true(recv_is_null(db, "chat"));
  text_is(db, "SELECT channel_recv('keep')", "k");
  close_ok(db);
}

/* Only loading: nothing prepared, nothing to finalize. */
static void test_close_unused(void **state) {
  sqlite3 *db = open_db(file_in(state, "unused.db"));
  close_ok(db);
}

/* ---- messages byte for byte ---- */

static void test_bytes_small(void **state) {
  static const char blob[] = {'a', 0, 'b', 0, 0, (char)0xff, (char)0x80, 'z'};
  static const char text[] = "before\0after \xc3\xa9\xe2\x82\xac"; /* NUL, é, € */
  const int text_n = (int)sizeof text - 1;
  sqlite3 *db = open_db(file_in(state, "bytes.db"));

  send_bytes(db, "c", SQLITE_BLOB, blob, (int)sizeof blob);
  send_bytes(db, "c", SQLITE_TEXT, text, text_n);
  send_bytes(db, "c", SQLITE_TEXT, "123", 3); /* stays TEXT, not INTEGER */
  send_bytes(db, "c", SQLITE_BLOB, "123", 3); /* stays BLOB */
  send_bytes(db, "c", SQLITE_TEXT, "", 0);    /* empty TEXT is not NULL */
  send_bytes(db, "c", SQLITE_BLOB, 0, 0);     /* empty BLOB is not NULL */
  send_bytes(db, "c", SQLITE_TEXT, " 4.5 ", 5);

  recv_is(db, "c", SQLITE_BLOB, blob, (int)sizeof blob);
  recv_is(db, "c", SQLITE_TEXT, text, text_n);
  recv_is(db, "c", SQLITE_TEXT, "123", 3);
  recv_is(db, "c", SQLITE_BLOB, "123", 3);
  recv_is(db, "c", SQLITE_TEXT, "", 0);
  recv_is(db, "c", SQLITE_BLOB, "", 0);
  recv_is(db, "c", SQLITE_TEXT, " 4.5 ", 5);
  assert_true(recv_is_null(db, "c"));
  close_ok(db);
}

/* 1 MB messages, sent with bind and received with channel_recv,
** channel_recv_batch and through group_send. */
static void test_bytes_1mb(void **state) {
  const int n = 1 << 20;
  unsigned char *blob = malloc((size_t)n), *text = malloc((size_t)n);
  unsigned x = 12345;
  int i;
  sqlite3 *db;
  sqlite3_stmt *s;
  assert_non_null(blob);
  assert_non_null(text);
  for (i = 0; i < n; i++) {
    x = x * 1103515245u + 12345u;
    blob[i] = (unsigned char)(x >> 16); /* every byte value, NULs included */
    text[i] = (unsigned char)(i % 4099 == 7 ? 0 : 'a' + (x >> 16) % 26);
  }
  db = open_wal(file_in(state, "big.db"));

  send_bytes(db, "big", SQLITE_BLOB, blob, n);
  send_bytes(db, "big", SQLITE_TEXT, text, n);
  recv_is(db, "big", SQLITE_BLOB, blob, n);
  recv_is(db, "big", SQLITE_TEXT, text, n);

  send_bytes(db, "w.abc!one", SQLITE_TEXT, text, n);
  send_bytes(db, "w.abc!two", SQLITE_BLOB, blob, n);
  s = prepare(db, "SELECT channel, message FROM channel_recv_batch('w.abc!', 10)");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  column_is(s, 0, SQLITE_TEXT, "w.abc!one", 9);
  column_is(s, 1, SQLITE_TEXT, text, n);
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  column_is(s, 0, SQLITE_TEXT, "w.abc!two", 9);
  column_is(s, 1, SQLITE_BLOB, blob, n);
  assert_int_equal(sqlite3_step(s), SQLITE_DONE);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);

  exec_ok(db, "SELECT group_add('g', 'm1'); SELECT group_add('g', 'm2');");
  s = prepare(db, "SELECT group_send('g', ?1)");
  assert_int_equal(sqlite3_bind_blob(s, 1, blob, n, SQLITE_STATIC), SQLITE_OK);
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(s, 0), 2);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  recv_is(db, "m1", SQLITE_BLOB, blob, n);
  recv_is(db, "m2", SQLITE_BLOB, blob, n);
  assert_true(recv_is_null(db, "m1"));
  close_ok(db);
  free(blob);
  free(text);
}

/* ---- error codes and messages ---- */

static void test_error_codes(void **state) {
  sqlite3 *db = open_db(file_in(state, "errors.db"));
  sqlite3_stmt *s;
  exec_ok(db, "SELECT chanlite_clock(1000)");

  /* channel full: SQLITE_CONSTRAINT, names the channel, changes nothing */
  assert_int_equal(int_of(db, "SELECT chanlite_capacity('full*', 1)"), 1);
  exec_ok(db, "SELECT channel_send('full', 'one')");
  fails_with(db, "SELECT channel_send('full', 'two')", SQLITE_CONSTRAINT,
             "chanlite: channel full: full", 0);
  fails_with(db, "SELECT group_send('nobody', 1)", SQLITE_MISMATCH, "chanlite: ", "message");
  /* capacity of a process-specific channel is the whole prefix's */
  exec_ok(db, "SELECT channel_send('full.p!a', 'one')");
  fails_with(db, "SELECT channel_send('full.p!b', 'two')", SQLITE_CONSTRAINT,
             "chanlite: channel full: full.p!b", 0);
  text_is(db, "SELECT channel_recv('full.p!')", "one");
  /* inside a transaction, the failed call undoes only itself */
  exec_ok(db, "BEGIN");
  exec_ok(db, "SELECT channel_send('other', 'kept')");
  fails_with(db, "SELECT channel_send('full', 'three')", SQLITE_CONSTRAINT,
             "chanlite: channel full: full", 0);
  assert_int_equal(sqlite3_get_autocommit(db), 0);
  exec_ok(db, "COMMIT");
  text_is(db, "SELECT channel_recv('other')", "kept");
  text_is(db, "SELECT channel_recv('full')", "one");
  assert_true(recv_is_null(db, "full"));

  /* wrong types: SQLITE_MISMATCH */
  fails_with(db, "SELECT channel_send(1, 'x')", SQLITE_MISMATCH, "chanlite: ", "INTEGER");
  fails_with(db, "SELECT channel_send(x'41', 'x')", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT channel_send('c', NULL)", SQLITE_MISMATCH,
             "chanlite: message must be TEXT or BLOB", 0);
  fails_with(db, "SELECT channel_send('c', 1)", SQLITE_MISMATCH,
             "chanlite: message must be TEXT or BLOB", 0);
  fails_with(db, "SELECT channel_send('c', 1.5)", SQLITE_MISMATCH,
             "chanlite: message must be TEXT or BLOB", 0);
  fails_with(db, "SELECT channel_recv(NULL)", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT group_add(1, 'c')", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT group_add('g', 2)", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT chanlite_config(1)", SQLITE_MISMATCH, "chanlite: ", 0);
  fails_with(db, "SELECT chanlite_config('expiry', 'soon')", SQLITE_MISMATCH,
             "chanlite: ", "expiry");
  fails_with(db, "SELECT chanlite_config('capacity', -1)", SQLITE_MISMATCH,
             "chanlite: ", "capacity");
  fails_with(db, "SELECT * FROM channel_recv_batch('c', 'ten')", SQLITE_MISMATCH, "chanlite: ", 0);

  /* bad values */
  fails_with(db, "SELECT channel_send('bad name', 'x')", SQLITE_ERROR,
             "chanlite: invalid channel name: bad name", 0);
  fails_with(db, "SELECT group_add('bad!group', 'c')", SQLITE_ERROR,
             "chanlite: invalid group name: bad!group", 0);
  fails_with(db, "SELECT chanlite_config('nope')", SQLITE_ERROR,
             "chanlite: unknown config key: nope", 0);
  fails_with(db, "SELECT channel_send('c')", SQLITE_ERROR,
             "chanlite: wrong number of arguments to channel_send", 0);
  fails_with(db, "SELECT * FROM channel_recv_batch('c')", SQLITE_ERROR, "chanlite: ", 0);

  /* a name bound as TEXT with an embedded NUL is not valid */
  s = prepare(db, "SELECT channel_send(?1, 'x')");
  assert_int_equal(sqlite3_bind_text(s, 1, "ch\0x", 4, SQLITE_STATIC), SQLITE_OK);
  assert_int_equal(sqlite3_step(s), SQLITE_ERROR);
  assert_true(starts_with(sqlite3_errmsg(db), "chanlite: invalid channel name: "));
  assert_int_equal(sqlite3_finalize(s), SQLITE_ERROR);
  assert_true(recv_is_null(db, "ch"));

  /* nothing of the above left a message or a transaction behind */
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_channels"), 0);
  assert_int_equal(sqlite3_get_autocommit(db), 1);
  close_ok(db);
}

/* A write function inside INSERT ... SELECT: a clear error, nothing done,
** no transaction left open. */
static void test_error_inside_insert(void **state) {
  sqlite3 *db = open_db(file_in(state, "insert.db"));
  char *err = 0;
  int rc, code;
  exec_ok(db, "CREATE TABLE t(x)");
  exec_ok(db, "SELECT channel_send('warm', 'up')"); /* tables exist */
  rc = sqlite3_exec(db, "INSERT INTO t SELECT channel_send('c', 'x')", 0, 0, &err);
  assert_int_not_equal(rc, SQLITE_OK);
  if (!starts_with(err, "chanlite: ") || !strstr(err, "statement of its own")) {
    fail_msg("unclear error: %s", err ? err : "(none)");
  }
  sqlite3_free(err);
  code = sqlite3_errcode(db);
  assert_int_equal(sqlite3_get_autocommit(db), 1);
  assert_int_equal(int_of(db, "SELECT count(*) FROM t"), 0);
  assert_true(recv_is_null(db, "c"));
  text_is(db, "SELECT channel_recv('warm')", "up");
  close_ok(db);
  /* A misuse that no retry can fix must not look like SQLITE_BUSY, which
  ** callers retry (and Python's sqlite3 reports as "database is locked"). */
  if (code == SQLITE_BUSY) fail_msg("misuse reported as SQLITE_BUSY, not a code callers retry");
}

/* ---- DIRECTONLY: triggers, views and generated columns ---- */

static void test_schema_cannot_call(void **state) {
  const char *path = file_in(state, "direct.db");
  sqlite3 *db = open_db(path);
  char *err = 0;
  int rc;
  exec_ok(db, "SELECT channel_send('queued', 'still here')");
  exec_ok(db, "CREATE TABLE t(x)");
  exec_ok(db, "CREATE TRIGGER t_send AFTER INSERT ON t BEGIN "
              "SELECT channel_send('c', new.x); END");
  fails_with(db, "INSERT INTO t VALUES ('from trigger')", SQLITE_ERROR, 0, "channel_send");
  exec_ok(db, "DROP TRIGGER t_send");
  exec_ok(db, "CREATE TRIGGER t_recv AFTER INSERT ON t BEGIN "
              "SELECT channel_recv('queued'); END");
  fails_with(db, "INSERT INTO t VALUES (1)", SQLITE_ERROR, 0, "channel_recv");
  exec_ok(db, "DROP TRIGGER t_recv");
  exec_ok(db, "CREATE TRIGGER t_batch AFTER INSERT ON t BEGIN "
              "SELECT * FROM channel_recv_batch('queued', 10); END");
  fails_with(db, "INSERT INTO t VALUES (1)", SQLITE_ERROR, 0, "channel_recv_batch");
  exec_ok(db, "DROP TRIGGER t_batch");

  exec_ok(db, "CREATE VIEW v_send AS SELECT channel_send('c', 'from view') AS id");
  fails_with(db, "SELECT * FROM v_send", SQLITE_ERROR, 0, "channel_send");
  exec_ok(db, "CREATE VIEW v_recv AS SELECT channel_recv('queued') AS m");
  fails_with(db, "SELECT * FROM v_recv", SQLITE_ERROR, 0, "channel_recv");
  exec_ok(db, "CREATE VIEW v_batch AS SELECT * FROM channel_recv_batch('queued', 10)");
  fails_with(db, "SELECT * FROM v_batch", SQLITE_ERROR, 0, "channel_recv_batch");

  /* A generated column: refused when created, or when computed. */
  rc = sqlite3_exec(db, "CREATE TABLE g1(a, b AS (channel_send('c', a)) STORED)", 0, 0, &err);
  sqlite3_free(err);
  err = 0;
  if (rc == SQLITE_OK) {
    fails_with(db, "INSERT INTO g1(a) VALUES ('from column')", SQLITE_ERROR, 0, "channel_send");
  }
  rc = sqlite3_exec(db, "CREATE TABLE g2(a, b AS (channel_recv(a)))", 0, 0, &err);
  sqlite3_free(err);
  err = 0;
  if (rc == SQLITE_OK) {
    /* a VIRTUAL column is computed when read */
    rc = sqlite3_exec(db, "INSERT INTO g2(a) VALUES ('queued')", 0, 0, 0);
    if (rc == SQLITE_OK) fails_with(db, "SELECT b FROM g2", SQLITE_ERROR, 0, "channel_recv");
  }
  close_ok(db);

  /* Reopened: the schema is read from the file, still refused. */
  db = open_db(path);
  fails_with(db, "SELECT * FROM v_send", SQLITE_ERROR, 0, "channel_send");
  fails_with(db, "SELECT * FROM v_recv", SQLITE_ERROR, 0, "channel_recv");
  /* none of it ran: nothing sent, nothing received */
  assert_true(recv_is_null(db, "c"));
  text_is(db, "SELECT channel_recv('queued')", "still here");
  close_ok(db);
}

/* ---- transactions ---- */

/* A received message goes back to its queue when the caller rolls back. */
static void test_rollback_returns_message(void **state) {
  sqlite3 *db = open_wal(file_in(state, "rollback.db"));
  exec_ok(db, "SELECT chanlite_clock(1000)");
  exec_ok(db, "SELECT channel_send('c', 'a'); SELECT channel_send('c', 'b');");
  exec_ok(db, "SELECT channel_send('p.q!x', 'px'); SELECT channel_send('p.q!y', 'py');");

  exec_ok(db, "BEGIN");
  text_is(db, "SELECT channel_recv('c')", "a");
  text_is(db, "SELECT channel_recv('c')", "b");
  assert_true(recv_is_null(db, "c"));
  exec_ok(db, "ROLLBACK");
  text_is(db, "SELECT channel_recv('c')", "a");

  /* a savepoint rolled back to */
  exec_ok(db, "BEGIN; SAVEPOINT sp;");
  text_is(db, "SELECT channel_recv('c')", "b");
  exec_ok(db, "ROLLBACK TO sp; RELEASE sp; COMMIT;");
  text_is(db, "SELECT channel_recv('c')", "b");
  assert_true(recv_is_null(db, "c"));

  /* a batch joins the transaction too */
  exec_ok(db, "BEGIN");
  assert_int_equal(int_of(db, "SELECT count(message) FROM channel_recv_batch('p.q!', 10)"), 2);
  assert_true(recv_is_null(db, "p.q!"));
  exec_ok(db, "ROLLBACK");
  text_is(db, "SELECT channel_recv('p.q!x')", "px");
  text_is(db, "SELECT channel_recv('p.q!')", "py");

  /* commit keeps the receive */
  exec_ok(db, "SELECT channel_send('c', 'z'); BEGIN;");
  text_is(db, "SELECT channel_recv('c')", "z");
  exec_ok(db, "COMMIT");
  assert_true(recv_is_null(db, "c"));
  close_ok(db);
}

/* A send in a transaction is invisible to a second connection until commit,
** and gone if rolled back; the second connection's empty receives neither
** block nor fail meanwhile (a receive that finds nothing takes no lock). */
static void test_send_visible_on_commit(void **state) {
  const char *path = file_in(state, "visible.db");
  sqlite3 *a = open_wal(path), *b = open_wal(path);
  exec_ok(b, "PRAGMA busy_timeout=0");

  /* the first send ever, rolled back: the database is left untouched */
  exec_ok(a, "BEGIN IMMEDIATE; SELECT channel_send('c', 'ghost');");
  assert_true(recv_is_null(b, "c"));
  exec_ok(a, "ROLLBACK");
  assert_true(recv_is_null(b, "c"));
  assert_int_equal(table_count(b), 0);
  assert_int_equal(table_count(a), 0);

  exec_ok(a, "BEGIN IMMEDIATE");
  exec_ok(a, "SELECT channel_send('c', 'one'); SELECT channel_send('c', 'two');");
  exec_ok(a, "SELECT channel_send('p.r!x', 'three')");
  /* a holds the write lock; b sees nothing and is not kept waiting */
  assert_true(recv_is_null(b, "c"));
  assert_true(recv_is_null(b, "p.r!"));
  assert_int_equal(int_of(b, "SELECT count(message) FROM channel_recv_batch('p.r!', 10)"), 0);
  assert_int_equal(int_of(b, "SELECT count(*) FROM chanlite_channels"), 0);
  assert_int_equal(int_of(b, "SELECT channel_wait('c', 0)"), 0);
  exec_ok(a, "COMMIT");

  text_is(b, "SELECT channel_recv('c')", "one");
  text_is(b, "SELECT channel_recv('c')", "two");
  text_is(b, "SELECT message FROM channel_recv_batch('p.r!', 10)", "three");
  assert_true(recv_is_null(a, "c"));

  /* and a rolled-back send never arrives */
  exec_ok(a, "BEGIN; SELECT channel_send('c', 'ghost'); ROLLBACK;");
  assert_true(recv_is_null(b, "c"));
  close_ok(a);
  close_ok(b);
}

/* Settings are in the database; the clock is per connection; expiry is
** fixed into a message when it is sent. */
static void test_expiry_with_clock(void **state) {
  const char *path = file_in(state, "expiry.db");
  sqlite3 *a = open_wal(path), *b = open_wal(path);
  exec_ok(a, "SELECT chanlite_clock(1000)");
  exec_ok(b, "SELECT chanlite_clock(5000)");
  assert_int_equal(int_of(a, "SELECT chanlite_now()"), 1000);
  assert_int_equal(int_of(b, "SELECT chanlite_now()"), 5000);
  assert_int_equal(int_of(a, "SELECT chanlite_config('expiry', 10)"), 10);
  assert_int_equal(int_of(b, "SELECT chanlite_config('expiry')"), 10);
  exec_ok(a, "SELECT channel_send('c', 'first')"); /* expires at 1010 */
  assert_int_equal(int_of(b, "SELECT chanlite_config('expiry', 100)"), 100);
  exec_ok(a, "SELECT channel_send('c', 'second')"); /* expires at 1100 */
  exec_ok(a, "SELECT channel_send('c', 'third')");  /* expires at 1100 */

  exec_ok(b, "SELECT chanlite_clock(1009.999)");
  text_is(b, "SELECT channel_recv('c')", "first");
  exec_ok(b, "SELECT chanlite_clock(1100)"); /* now >= sent + expiry */
  assert_int_equal(int_of(b, "SELECT count(*) FROM chanlite_channels"), 0);
  assert_true(recv_is_null(b, "c"));
  /* a sees them unexpired at its own clock, but b's receive removed them */
  assert_true(recv_is_null(a, "c"));

  /* capacity counts only unexpired messages */
  assert_int_equal(int_of(a, "SELECT chanlite_config('capacity', 2)"), 2);
  exec_ok(a, "SELECT channel_send('d', '1'); SELECT channel_send('d', '2');");
  fails_with(a, "SELECT channel_send('d', '3')", SQLITE_CONSTRAINT, "chanlite: channel full: d", 0);
  exec_ok(a, "SELECT chanlite_clock(1100)");
  exec_ok(a, "SELECT channel_send('d', '3')");
  text_is(a, "SELECT channel_recv('d')", "3");
  exec_ok(a, "SELECT chanlite_clock(NULL)");
  assert_true(int_of(a, "SELECT chanlite_now() > 1600000000"));
  close_ok(a);
  close_ok(b);
}

/* A batch statement stepped only part way: the rows it never returned go
** back to their queue, in their order; and a query that never reads the
** message column (count(*), SELECT channel) takes nothing. */
static void test_batch_partly_read(void **state) {
  sqlite3 *db = open_wal(file_in(state, "partly.db"));
  sqlite3_stmt *s;
  exec_ok(db, "SELECT channel_send('u', 'm0'); SELECT channel_send('u', 'm1');"
              "SELECT channel_send('u', 'm2'); SELECT channel_send('u', 'm3');");
  s = prepare(db, "SELECT channel, message FROM channel_recv_batch('u', 10)");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  column_is(s, 0, SQLITE_TEXT, "u", 1);
  column_is(s, 1, SQLITE_TEXT, "m0", 2);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  text_is(db, "SELECT channel_recv('u')", "m1");

  s = prepare(db, "SELECT channel FROM channel_recv_batch('u', 10)");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  assert_int_equal(sqlite3_step(s), SQLITE_DONE);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  assert_int_equal(int_of(db, "SELECT count(*) FROM channel_recv_batch('u', 10)"), 2);

  s = prepare(db, "SELECT message FROM channel_recv_batch('u', 10)");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  column_is(s, 0, SQLITE_TEXT, "m2", 2);
  assert_int_equal(sqlite3_reset(s), SQLITE_OK); /* reset, not finalized */
  text_is(db, "SELECT channel_recv('u')", "m3");
  assert_true(recv_is_null(db, "u"));
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK);
  close_ok(db);
}

/* The pop and the put-back of a batch are two transactions. A fold in
** between (the pop left the queue empty, and with stats_retention 0 it is
** idle at once) moved the queue's counters into the totals, with the
** popped rows counted as received; putting them back must take that back,
** or the totals count each of them as sent and received twice. */
static void test_batch_put_back_after_fold(void **state) {
  sqlite3 *db = open_wal(file_in(state, "fold.db"));
  sqlite3 *other = open_wal(file_in(state, "fold.db")); /* db's read is open */
  sqlite3_stmt *s;
  exec_ok(db, "SELECT chanlite_config('stats_retention', 0);"
              "SELECT channel_send('u', 'm0'); SELECT channel_send('u', 'm1');"
              "SELECT channel_send('u', 'm2');");
  s = prepare(db, "SELECT message FROM channel_recv_batch('u', 10)");
  assert_int_equal(sqlite3_step(s), SQLITE_ROW); /* popped all three, read m0 */
  column_is(s, 0, SQLITE_TEXT, "m0", 2);
  exec_ok(other, "SELECT channel_trim()");
  assert_int_equal(int_of(other, "SELECT count(*) FROM chanlite_stats WHERE channel = 'u'"), 0);
  assert_int_equal(sqlite3_finalize(s), SQLITE_OK); /* m1 and m2 go back */
  close_ok(other);
  assert_int_equal(int_of(db, "SELECT sent FROM chanlite_stats WHERE channel IS NULL"), 3);
  assert_int_equal(int_of(db, "SELECT received FROM chanlite_stats WHERE channel IS NULL"), 1);
  assert_int_equal(int_of(db, "SELECT depth FROM chanlite_stats WHERE channel IS NULL"), 2);
  text_is(db, "SELECT channel_recv('u')", "m1");
  text_is(db, "SELECT channel_recv('u')", "m2");
  exec_ok(db, "SELECT channel_trim()");
  assert_int_equal(int_of(db, "SELECT sent FROM chanlite_stats WHERE channel IS NULL"), 3);
  assert_int_equal(int_of(db, "SELECT received FROM chanlite_stats WHERE channel IS NULL"), 3);
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_stats"), 1);
  close_ok(db);
}

/* ---- loading ---- */

static void test_load_twice(void **state) {
  sqlite3 *db = open_wal(file_in(state, "twice.db"));
  exec_ok(db, "SELECT channel_send('c', 'before')");
  assert_int_equal(int_of(db, "SELECT count(message) FROM channel_recv_batch('none', 1)"), 0);
  load(db);
  text_is(db, "SELECT channel_recv('c')", "before");
  exec_ok(db, "SELECT channel_send('c', 'after')");
  load(db);
  text_is(db, "SELECT message FROM channel_recv_batch('c', 5)", "after");
  exec_ok(db, "SELECT channel_send('c', 'last')");
  close_ok(db);
}

/* channel_recv and the other reads on a database without chanlite tables:
** NULL or nothing, and no table is created. */
static void test_recv_creates_nothing(void **state) {
  const char *path = file_in(state, "empty.db");
  sqlite3 *db = open_db(path);
  assert_true(recv_is_null(db, "chat"));
  assert_true(recv_is_null(db, "p.q!"));
  assert_true(recv_is_null(db, "p.q!x"));
  assert_int_equal(int_of(db, "SELECT count(message) FROM channel_recv_batch('chat', 10)"), 0);
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_channels"), 0);
  assert_int_equal(int_of(db, "SELECT count(*) FROM chanlite_groups"), 0);
  assert_int_equal(int_of(db, "SELECT chanlite_config('capacity')"), 100);
  assert_int_equal(int_of(db, "SELECT channel_wait('chat', 0)"), 0);
  assert_int_equal(table_count(db), 0);
  assert_int_equal(int_of(db, "PRAGMA schema_version"), 0);
  close_ok(db);
  db = open_wal(path);
  assert_true(recv_is_null(db, "chat"));
  assert_int_equal(int_of(db, "SELECT count(message) FROM channel_recv_batch('chat', 10)"), 0);
  assert_int_equal(table_count(db), 0);
  close_ok(db);
}

/* A read-only connection: reading an empty queue works, writing fails with
** a clear error. */
static void test_readonly(void **state) {
  const char *path = file_in(state, "ro.db");
  sqlite3 *rw, *ro;

  /* no chanlite tables at all */
  rw = open_db(path);
  exec_ok(rw, "CREATE TABLE app(x)");
  close_ok(rw);
  ro = open_flags(path, SQLITE_OPEN_READONLY);
  assert_true(recv_is_null(ro, "chat"));
  assert_int_equal(int_of(ro, "SELECT count(*) FROM chanlite_channels"), 0);
  assert_int_equal(int_of(ro, "SELECT count(message) FROM channel_recv_batch('chat', 10)"), 0);
  fails_with(ro, "SELECT channel_send('chat', 'x')", SQLITE_READONLY, "chanlite: ", "readonly");
  close_ok(ro);

  /* tables exist, the queue is empty, another holds a message */
  rw = open_db(path);
  exec_ok(rw, "SELECT channel_send('chat', 'x'); SELECT channel_recv('chat');");
  exec_ok(rw, "SELECT channel_send('full', 'y')");
  close_ok(rw);
  ro = open_flags(path, SQLITE_OPEN_READONLY);
  assert_true(recv_is_null(ro, "chat"));
  assert_int_equal(int_of(ro, "SELECT count(message) FROM channel_recv_batch('chat', 10)"), 0);
  assert_int_equal(int_of(ro, "SELECT count(*) FROM chanlite_channels"), 1);
  fails_with(ro, "SELECT channel_send('chat', 'x')", SQLITE_READONLY, "chanlite: ", "readonly");
  fails_with(ro, "SELECT group_add('g', 'chat')", SQLITE_READONLY, "chanlite: ", "readonly");
  fails_with(ro, "SELECT channel_recv('full')", SQLITE_READONLY, "chanlite: ", "readonly");
  assert_int_equal(int_of(ro, "SELECT count(*) FROM chanlite_channels"), 1);
  close_ok(ro);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_close_memory, setup, teardown),
    cmocka_unit_test_setup_teardown(test_close_file, setup, teardown),
    cmocka_unit_test_setup_teardown(test_close_wal, setup, teardown),
    cmocka_unit_test_setup_teardown(test_close_in_transaction, setup, teardown),
    cmocka_unit_test_setup_teardown(test_close_unused, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bytes_small, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bytes_1mb, setup, teardown),
    cmocka_unit_test_setup_teardown(test_error_codes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_error_inside_insert, setup, teardown),
    cmocka_unit_test_setup_teardown(test_schema_cannot_call, setup, teardown),
    cmocka_unit_test_setup_teardown(test_rollback_returns_message, setup, teardown),
    cmocka_unit_test_setup_teardown(test_send_visible_on_commit, setup, teardown),
    cmocka_unit_test_setup_teardown(test_expiry_with_clock, setup, teardown),
    cmocka_unit_test_setup_teardown(test_batch_partly_read, setup, teardown),
    cmocka_unit_test_setup_teardown(test_batch_put_back_after_fold, setup, teardown),
    cmocka_unit_test_setup_teardown(test_load_twice, setup, teardown),
    cmocka_unit_test_setup_teardown(test_recv_creates_nothing, setup, teardown),
    cmocka_unit_test_setup_teardown(test_readonly, setup, teardown),
  };
  if (argc < 2) {
    fprintf(stderr, "usage: %s path/to/chanlite.so [test-name-glob]\n", argv[0]);
    return 2;
  }
  ext_path = argv[1];
  if (argc > 2) cmocka_set_test_filter(argv[2]);
  return cmocka_run_group_tests_name("chanlite", tests, 0, 0);
}
