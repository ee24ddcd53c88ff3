/*
** bench_floor: chanlite against the bare SQLite floor.
**
**   bench_floor PATH/TO/chanlite.so [--quick] [--out FILE.md]
**               [--runs N] [--pairs N] [--case NAME] [--side chanlite|floor]
**               [--db FILE]
**
** On one database file, in one run, with the same PRAGMAs (journal_mode=WAL,
** synchronous=NORMAL, busy_timeout=5000), it times:
**
**   pair      one 100-byte message per transaction: `SELECT channel_send(
**             'bench', ?)` then `SELECT channel_recv('bench')`, each in
**             autocommit; against the floor, the same pair as bare SQL on the
**             same tables (triggers included): an INSERT into chanlite_message,
**             then a DELETE of that row by id;
**   pair10k   the same with 10 KB messages;
**   txn       N sends inside one BEGIN IMMEDIATE/COMMIT, then N receives
**             inside another; the floor does N INSERTs, then N DELETEs by id,
**             in the same two transactions;
**   recvbatch N sends in autocommit, then draining with
**             `channel_recv_batch('bench', 100)`; the floor does N autocommit
**             INSERTs, then DELETEs by id, 100 to a transaction.
**
** Each figure is the median of --runs timed runs (after one warm-up run) of
** --pairs messages, printed with its min and max as a markdown table. Runs of
** chanlite and of the floor alternate, so that drift in the machine's load
** touches both alike. --quick is a smoke run for CI: it checks that every
** case works (every message comes back, byte for byte and in order) and never
** judges speed.
**
** --case and --side restrict the run, for profiling one loop, e.g.
**   valgrind --tool=callgrind --collect-atstart=no \
**     --toggle-collect=timed_chanlite_pairs build/bench/bench_floor \
**     build/chanlite.so --case pair --side chanlite --runs 1 --pairs 2000
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

#define NOINLINE __attribute__((noinline))

#define SMALL 100
#define LARGE (10 * 1024)
#define BATCH 100
#define EXPIRY 60.0
#define MAX_RUNS 101

enum { CASE_PAIR, CASE_PAIR10K, CASE_TXN, CASE_RECVBATCH, N_CASES };
enum { SIDE_CHANLITE, SIDE_FLOOR, N_SIDES };

static const char *const case_names[N_CASES] = {"pair", "pair10k", "txn", "recvbatch"};
static const char *const side_names[N_SIDES] = {"chanlite", "floor"};

/* Everything one connection needs; every statement is prepared once. */
typedef struct Bench {
  sqlite3 *db;
  sqlite3_stmt *send;       /* SELECT channel_send('bench', ?1) */
  sqlite3_stmt *recv;       /* SELECT channel_recv('bench') */
  sqlite3_stmt *recv_batch; /* SELECT channel, message FROM channel_recv_batch('bench', 100) */
  sqlite3_stmt *insert;     /* the floor's INSERT */
  sqlite3_stmt *delete;     /* the floor's DELETE by id */
  sqlite3_stmt *begin;      /* BEGIN IMMEDIATE */
  sqlite3_stmt *commit;     /* COMMIT */
  sqlite3_stmt *count;      /* rows left in chanlite_message */
  unsigned char *msg;       /* the message sent, LARGE bytes */
  sqlite3_int64 *ids;       /* the floor's rowids, one per message */
  int n_ids;
} Bench;

/* Seconds taken by one run: its send and receive phases. The pair cases
** interleave them and count everything as the first. */
typedef struct Timing {
  double send, recv;
} Timing;

static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("bench_floor: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return -1;
}

static int fail_db(Bench *b, const char *what, int rc) {
  return fail("%s: %s (%d): %s", what, sqlite3_errstr(rc), rc, sqlite3_errmsg(b->db));
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double unix_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int prepare(Bench *b, const char *sql, sqlite3_stmt **out) {
  int rc = sqlite3_prepare_v3(b->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, 0);
  return rc == SQLITE_OK ? 0 : fail_db(b, sql, rc);
}

/* Run a statement to completion, ignoring its rows. */
static int step_all(Bench *b, sqlite3_stmt *s, const char *what) {
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {}
  if (rc != SQLITE_DONE) {
    fail_db(b, what, rc);
    sqlite3_reset(s);
    return -1;
  }
  rc = sqlite3_reset(s);
  return rc == SQLITE_OK ? 0 : fail_db(b, what, rc);
}

/* Run SQL whose first row's first column must be `want` (when not NULL). */
static int exec_expect(Bench *b, const char *sql, const char *want) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(b->db, sql, -1, &s, 0), ret = 0;
  if (rc != SQLITE_OK) return fail_db(b, sql, rc);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW && want) {
    const char *got = (const char *)sqlite3_column_text(s, 0);
    if (!got || sqlite3_stricmp(got, want) != 0) {
      ret = fail("%s: returned %s, expected %s", sql, got ? got : "NULL", want);
    }
  } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    ret = fail_db(b, sql, rc);
  } else if (rc == SQLITE_DONE && want) {
    ret = fail("%s: returned no row, expected %s", sql, want);
  }
  rc = sqlite3_finalize(s);
  if (ret == 0 && rc != SQLITE_OK) ret = fail_db(b, sql, rc);
  return ret;
}

/* Message number i: its first 8 bytes carry i, so that what comes back can
** be checked for order as well as content. */
static void stamp(Bench *b, sqlite3_int64 i) {
  memcpy(b->msg, &i, sizeof i);
}

static int check_body(Bench *b, const void *body, int n, int size, sqlite3_int64 i) {
  if (!body || n != size)
    return fail("message %lld came back with %d bytes, not %d", (long long)i, body ? n : -1, size);
  stamp(b, i);
  if (memcmp(body, b->msg, (size_t)size) != 0) {
    return fail("message %lld came back changed or out of order", (long long)i);
  }
  return 0;
}

/* ---- chanlite ---- */

static int chanlite_send(Bench *b, int size, sqlite3_int64 i) {
  int rc;
  stamp(b, i);
  rc = sqlite3_bind_blob(b->send, 1, b->msg, size, SQLITE_STATIC);
  if (rc != SQLITE_OK) return fail_db(b, "bind channel_send", rc);
  rc = sqlite3_step(b->send);
  if (rc != SQLITE_ROW) {
    fail_db(b, "channel_send", rc);
    sqlite3_reset(b->send);
    return -1;
  }
  rc = sqlite3_reset(b->send);
  return rc == SQLITE_OK ? 0 : fail_db(b, "channel_send", rc);
}

static int chanlite_recv(Bench *b, int size, sqlite3_int64 i) {
  int rc = sqlite3_step(b->recv), ret = 0;
  if (rc != SQLITE_ROW) {
    fail_db(b, "channel_recv", rc);
    sqlite3_reset(b->recv);
    return -1;
  }
  ret = check_body(b, sqlite3_column_blob(b->recv, 0), sqlite3_column_bytes(b->recv, 0), size, i);
  rc = sqlite3_reset(b->recv);
  if (ret == 0 && rc != SQLITE_OK) ret = fail_db(b, "channel_recv", rc);
  return ret;
}

NOINLINE static int timed_chanlite_pairs(Bench *b, int n, int size) {
  int i;
  for (i = 0; i < n; i++) {
    if (chanlite_send(b, size, i) || chanlite_recv(b, size, i)) return -1;
  }
  return 0;
}

NOINLINE static int timed_chanlite_txn_send(Bench *b, int n, int size) {
  int i;
  if (step_all(b, b->begin, "BEGIN IMMEDIATE")) return -1;
  for (i = 0; i < n; i++) {
    if (chanlite_send(b, size, i)) return -1;
  }
  return step_all(b, b->commit, "COMMIT");
}

NOINLINE static int timed_chanlite_txn_recv(Bench *b, int n, int size) {
  int i;
  if (step_all(b, b->begin, "BEGIN IMMEDIATE")) return -1;
  for (i = 0; i < n; i++) {
    if (chanlite_recv(b, size, i)) return -1;
  }
  return step_all(b, b->commit, "COMMIT");
}

NOINLINE static int timed_chanlite_autocommit_send(Bench *b, int n, int size) {
  int i;
  for (i = 0; i < n; i++) {
    if (chanlite_send(b, size, i)) return -1;
  }
  return 0;
}

NOINLINE static int timed_chanlite_drain(Bench *b, int n, int size) {
  sqlite3_int64 got = 0;
  int rc, rows;
  do {
    rows = 0;
    while ((rc = sqlite3_step(b->recv_batch)) == SQLITE_ROW) {
      const char *ch = (const char *)sqlite3_column_text(b->recv_batch, 0);
      if (!ch || strcmp(ch, "bench") != 0) {
        sqlite3_reset(b->recv_batch);
        return fail("channel_recv_batch returned channel %s", ch ? ch : "NULL");
      }
      if (check_body(b, sqlite3_column_blob(b->recv_batch, 1),
                     sqlite3_column_bytes(b->recv_batch, 1), size, got)) {
        sqlite3_reset(b->recv_batch);
        return -1;
      }
      got++;
      rows++;
    }
    if (rc != SQLITE_DONE) {
      fail_db(b, "channel_recv_batch", rc);
      sqlite3_reset(b->recv_batch);
      return -1;
    }
    rc = sqlite3_reset(b->recv_batch);
    if (rc != SQLITE_OK) return fail_db(b, "channel_recv_batch", rc);
  } while (rows > 0);
  if (got != n) return fail("channel_recv_batch drained %lld messages, not %d", (long long)got, n);
  return 0;
}

/* ---- the floor: bare SQL on the same tables ---- */

static int floor_insert(Bench *b, int size, sqlite3_int64 i, sqlite3_int64 *id) {
  double now = unix_now();
  int rc;
  stamp(b, i);
  rc = sqlite3_bind_double(b->insert, 1, now);
  if (rc == SQLITE_OK) rc = sqlite3_bind_double(b->insert, 2, now + EXPIRY);
  if (rc == SQLITE_OK) rc = sqlite3_bind_blob(b->insert, 3, b->msg, size, SQLITE_STATIC);
  if (rc != SQLITE_OK) return fail_db(b, "bind INSERT", rc);
  rc = sqlite3_step(b->insert);
  if (rc != SQLITE_DONE) {
    fail_db(b, "INSERT", rc);
    sqlite3_reset(b->insert);
    return -1;
  }
  *id = sqlite3_last_insert_rowid(b->db);
  rc = sqlite3_reset(b->insert);
  return rc == SQLITE_OK ? 0 : fail_db(b, "INSERT", rc);
}

static int floor_delete(Bench *b, sqlite3_int64 id) {
  int rc = sqlite3_bind_int64(b->delete, 1, id);
  if (rc != SQLITE_OK) return fail_db(b, "bind DELETE", rc);
  rc = sqlite3_step(b->delete);
  if (rc != SQLITE_DONE) {
    fail_db(b, "DELETE", rc);
    sqlite3_reset(b->delete);
    return -1;
  }
  if (sqlite3_changes(b->db) != 1) {
    sqlite3_reset(b->delete);
    return fail("DELETE of id %lld removed %d rows", (long long)id, sqlite3_changes(b->db));
  }
  rc = sqlite3_reset(b->delete);
  return rc == SQLITE_OK ? 0 : fail_db(b, "DELETE", rc);
}

NOINLINE static int timed_floor_pairs(Bench *b, int n, int size) {
  sqlite3_int64 id = 0;
  int i;
  for (i = 0; i < n; i++) {
    if (floor_insert(b, size, i, &id) || floor_delete(b, id)) return -1;
  }
  return 0;
}

NOINLINE static int timed_floor_txn_send(Bench *b, int n, int size) {
  int i;
  if (step_all(b, b->begin, "BEGIN IMMEDIATE")) return -1;
  for (i = 0; i < n; i++) {
    if (floor_insert(b, size, i, &b->ids[i])) return -1;
  }
  return step_all(b, b->commit, "COMMIT");
}

NOINLINE static int timed_floor_txn_recv(Bench *b, int n) {
  int i;
  if (step_all(b, b->begin, "BEGIN IMMEDIATE")) return -1;
  for (i = 0; i < n; i++) {
    if (floor_delete(b, b->ids[i])) return -1;
  }
  return step_all(b, b->commit, "COMMIT");
}

NOINLINE static int timed_floor_autocommit_send(Bench *b, int n, int size) {
  int i;
  for (i = 0; i < n; i++) {
    if (floor_insert(b, size, i, &b->ids[i])) return -1;
  }
  return 0;
}

NOINLINE static int timed_floor_drain(Bench *b, int n) {
  int i, j;
  for (i = 0; i < n; i += BATCH) {
    if (step_all(b, b->begin, "BEGIN IMMEDIATE")) return -1;
    for (j = i; j < n && j < i + BATCH; j++) {
      if (floor_delete(b, b->ids[j])) return -1;
    }
    if (step_all(b, b->commit, "COMMIT")) return -1;
  }
  return 0;
}

/* ---- one run ---- */

static int queue_is_empty(Bench *b) {
  int rc = sqlite3_step(b->count), ret = 0;
  if (rc != SQLITE_ROW) ret = fail_db(b, "count", rc);
  else if (sqlite3_column_int64(b->count, 0) != 0) {
    ret = fail("%lld messages left behind", (long long)sqlite3_column_int64(b->count, 0));
  }
  rc = sqlite3_reset(b->count);
  if (ret == 0 && rc != SQLITE_OK) ret = fail_db(b, "count", rc);
  return ret;
}

static int ensure_ids(Bench *b, int n) {
  sqlite3_int64 *ids;
  if (n <= b->n_ids) return 0;
  ids = realloc(b->ids, sizeof *ids * (size_t)n);
  if (!ids) return fail("out of memory");
  b->ids = ids;
  b->n_ids = n;
  return 0;
}

static int run_once(Bench *b, int which, int side, int n, Timing *t) {
  int size = which == CASE_PAIR10K ? LARGE : SMALL, rc;
  double t0, t1, t2;
  if (ensure_ids(b, n)) return -1;
  t0 = monotonic();
  switch (which) {
    case CASE_PAIR:
    case CASE_PAIR10K:
      rc = side == SIDE_CHANLITE ? timed_chanlite_pairs(b, n, size) : timed_floor_pairs(b, n, size);
      t1 = t2 = monotonic();
      break;
    case CASE_TXN:
      rc = side == SIDE_CHANLITE ? timed_chanlite_txn_send(b, n, size)
                                 : timed_floor_txn_send(b, n, size);
      t1 = monotonic();
      if (rc == 0) {
        rc = side == SIDE_CHANLITE ? timed_chanlite_txn_recv(b, n, size)
                                   : timed_floor_txn_recv(b, n);
      }
      t2 = monotonic();
      break;
    default:
      rc = side == SIDE_CHANLITE ? timed_chanlite_autocommit_send(b, n, size)
                                 : timed_floor_autocommit_send(b, n, size);
      t1 = monotonic();
      if (rc == 0) {
        rc = side == SIDE_CHANLITE ? timed_chanlite_drain(b, n, size) : timed_floor_drain(b, n);
      }
      t2 = monotonic();
      break;
  }
  if (rc != 0) {
    /* Leave no transaction open behind a failure. */
    if (!sqlite3_get_autocommit(b->db)) sqlite3_exec(b->db, "ROLLBACK", 0, 0, 0);
    return fail("%s %s failed", side_names[side], case_names[which]);
  }
  t->send = t1 - t0;
  t->recv = t2 - t1;
  return queue_is_empty(b);
}

/* ---- setup ---- */

static int open_bench(Bench *b, const char *path, const char *ext) {
  char *err = 0;
  int rc;
  memset(b, 0, sizeof *b);
  b->msg = malloc(LARGE);
  if (!b->msg) return fail("out of memory");
  for (rc = 0; rc < LARGE; rc++) b->msg[rc] = (unsigned char)('a' + rc % 26);
  rc = sqlite3_open_v2(path, &b->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, 0);
  if (rc != SQLITE_OK)
    return fail("cannot open %s: %s", path, b->db ? sqlite3_errmsg(b->db) : sqlite3_errstr(rc));
  rc = sqlite3_db_config(b->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, (int *)0);
  if (rc != SQLITE_OK) return fail_db(b, "enable load_extension", rc);
  rc = sqlite3_load_extension(b->db, ext, 0, &err);
  if (rc != SQLITE_OK) {
    fail("cannot load %s: %s", ext, err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return -1;
  }
  if (exec_expect(b, "PRAGMA journal_mode=WAL", "wal") ||
      exec_expect(b, "PRAGMA synchronous=NORMAL", 0) ||
      exec_expect(b, "PRAGMA busy_timeout=5000", "5000") ||
      exec_expect(b, "PRAGMA synchronous", "1")) {
    return -1;
  }
  /* The chanlite tables, created by the extension itself. The batch cases
  ** queue up to --pairs messages, over the default capacity of 100. */
  if (exec_expect(b, "SELECT channel_send('bench', 'x')", 0) ||
      exec_expect(b, "SELECT channel_flush()", "1") ||
      exec_expect(b, "SELECT chanlite_config('capacity', 100000000)", "100000000")) {
    return -1;
  }
  if (prepare(b, "SELECT channel_send('bench', ?1)", &b->send) ||
      prepare(b, "SELECT channel_recv('bench')", &b->recv) ||
      prepare(b, "SELECT channel, message FROM channel_recv_batch('bench', 100)", &b->recv_batch) ||
      prepare(b,
              "INSERT INTO chanlite_message(queue, local, sent_at, expires_at, body) "
              "VALUES ('bench', NULL, ?1, ?2, ?3)",
              &b->insert) ||
      prepare(b, "DELETE FROM chanlite_message WHERE id = ?1", &b->delete) ||
      prepare(b, "BEGIN IMMEDIATE", &b->begin) || prepare(b, "COMMIT", &b->commit) ||
      prepare(b, "SELECT count(*) FROM chanlite_message", &b->count)) {
    return -1;
  }
  return 0;
}

static int close_bench(Bench *b) {
  sqlite3_stmt **all[] = {&b->send,   &b->recv,  &b->recv_batch, &b->insert,
                          &b->delete, &b->begin, &b->commit,     &b->count};
  size_t i;
  int rc = SQLITE_OK, ret = 0;
  for (i = 0; i < sizeof all / sizeof all[0]; i++) {
    sqlite3_finalize(*all[i]);
    *all[i] = 0;
  }
  if (b->db) {
    rc = sqlite3_close(b->db);
    if (rc != SQLITE_OK) ret = fail("close: %s", sqlite3_errstr(rc));
  }
  b->db = 0;
  free(b->msg);
  free(b->ids);
  b->msg = 0;
  b->ids = 0;
  return ret;
}

/* ---- statistics and the report ---- */

typedef struct Stats {
  double med, min, max; /* operations per second */
} Stats;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Rates from seconds; the median of an even count is the mean of the two
** middle ones. */
static Stats stats(const double *secs, int runs, int n) {
  double rate[MAX_RUNS];
  Stats s;
  int i;
  for (i = 0; i < runs; i++) rate[i] = secs[i] > 0 ? n / secs[i] : 0;
  qsort(rate, (size_t)runs, sizeof rate[0], cmp_double);
  s.min = rate[0];
  s.max = rate[runs - 1];
  s.med = runs % 2 ? rate[runs / 2] : (rate[runs / 2 - 1] + rate[runs / 2]) / 2;
  return s;
}

typedef struct Report {
  char *text;
  size_t len, cap;
} Report;

static int emit(Report *r, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(0, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return fail("formatting failed");
  if (r->len + (size_t)n + 1 > r->cap) {
    size_t cap = (r->len + (size_t)n + 1) * 2;
    char *text = realloc(r->text, cap);
    if (!text) return fail("out of memory");
    r->text = text;
    r->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(r->text + r->len, r->cap - r->len, fmt, ap);
  va_end(ap);
  r->len += (size_t)n;
  return 0;
}

static int emit_row(Report *r, const char *label, const char *unit, const double *secs[N_SIDES],
                    const int *have, int runs, int n, double *ratio) {
  Stats s[N_SIDES];
  char cell[N_SIDES][80];
  int side;
  for (side = 0; side < N_SIDES; side++) {
    if (!have[side]) {
      snprintf(cell[side], sizeof cell[side], "–");
      continue;
    }
    s[side] = stats(secs[side], runs, n);
    snprintf(cell[side], sizeof cell[side], "%.0f (%.0f–%.0f)", s[side].med, s[side].min,
             s[side].max);
  }
  *ratio = have[0] && have[1] && s[1].med > 0 ? s[0].med / s[1].med : -1;
  if (*ratio >= 0) {
    return emit(r, "| %s | %s | %s | %s | %.2f |\n", label, unit, cell[0], cell[1], *ratio);
  }
  return emit(r, "| %s | %s | %s | %s | – |\n", label, unit, cell[0], cell[1]);
}

static const char *case_label[N_CASES] = {
  "send+recv, 1 msg per txn, 100 B",
  "send+recv, 1 msg per txn, 10 KB",
  "N sends in 1 txn + N recvs in 1 txn, 100 B",
  "N autocommit sends + recv_batch(100) drain, 100 B",
};

static double load_average(void) {
  double load = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &load) != 1) load = -1;
    fclose(f);
  }
  return load;
}

static void usage(void) {
  fprintf(stderr, "usage: bench_floor PATH/TO/chanlite.so [--quick] [--out FILE.md] [--runs N]\n"
                  "                   [--pairs N] [--case pair|pair10k|txn|recvbatch]\n"
                  "                   [--side chanlite|floor] [--db FILE]\n");
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  long v;
  errno = 0;
  v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

static void remove_db(const char *path) {
  static const char *const suffix[] = {"", "-wal", "-shm", "-journal", "-chanlite"};
  char name[4096];
  size_t i;
  for (i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
    snprintf(name, sizeof name, "%s%s", path, suffix[i]);
    unlink(name);
  }
}

int main(int argc, char **argv) {
  const char *ext = 0, *out = 0, *db_arg = 0;
  int quick = 0, runs = 5, pairs = 20000, only_case = -1, only_side = -1;
  int runs_set = 0, pairs_set = 0, i, which, side, r, ret = 1;
  char dir[] = "/tmp/chanlite-bench-XXXXXX", path[4200];
  int made_dir = 0;
  Bench b;
  Report rep = {0, 0, 0};
  double *secs[N_CASES][N_SIDES][2] = {{{0}}};
  double t_start, ratio_pair = -1;

  memset(&b, 0, sizeof b);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : 0;
    if (strcmp(a, "--quick") == 0) quick = 1;
    else if (strcmp(a, "--out") == 0 && v) out = argv[++i];
    else if (strcmp(a, "--db") == 0 && v) db_arg = argv[++i];
    else if (strcmp(a, "--runs") == 0 && v && !parse_int(argv[++i], 1, MAX_RUNS, &runs))
      runs_set = 1;
    else if (strcmp(a, "--pairs") == 0 && v && !parse_int(argv[++i], 1, 10000000, &pairs))
      pairs_set = 1;
    else if (strcmp(a, "--case") == 0 && v) {
      for (only_case = N_CASES - 1; only_case >= 0; only_case--) {
        if (strcmp(v, case_names[only_case]) == 0) break;
      }
      i++;
      if (only_case < 0) {
        usage();
        return 2;
      }
    } else if (strcmp(a, "--side") == 0 && v) {
      for (only_side = N_SIDES - 1; only_side >= 0; only_side--) {
        if (strcmp(v, side_names[only_side]) == 0) break;
      }
      i++;
      if (only_side < 0) {
        usage();
        return 2;
      }
    } else if (a[0] != '-' && !ext) ext = a;
    else {
      usage();
      return 2;
    }
  }
  if (!ext) {
    usage();
    return 2;
  }
  if (quick) {
    if (!runs_set) runs = 1;
    if (!pairs_set) pairs = 200;
  }

  for (which = 0; which < N_CASES; which++) {
    for (side = 0; side < N_SIDES; side++) {
      for (r = 0; r < 2; r++) {
        secs[which][side][r] = calloc((size_t)runs, sizeof(double));
        if (!secs[which][side][r]) {
          fail("out of memory");
          goto done;
        }
      }
    }
  }

  if (db_arg) {
    snprintf(path, sizeof path, "%s", db_arg);
    remove_db(path);
  } else {
    if (!mkdtemp(dir)) {
      fail("mkdtemp: %s", strerror(errno));
      goto done;
    }
    made_dir = 1;
    snprintf(path, sizeof path, "%s/bench.db", dir);
  }
  if (open_bench(&b, path, ext)) goto done;

  t_start = monotonic();
  for (which = 0; which < N_CASES; which++) {
    int warm = pairs / 10 > 100 ? pairs / 10 : (pairs < 100 ? pairs : 100);
    Timing t;
    if (only_case >= 0 && which != only_case) continue;
    for (side = 0; side < N_SIDES; side++) {
      if (only_side >= 0 && side != only_side) continue;
      if (run_once(&b, which, side, warm, &t)) goto done;
    }
    for (r = 0; r < runs; r++) {
      /* Alternate which side goes first, so neither always follows the other. */
      for (i = 0; i < N_SIDES; i++) {
        side = (r % 2) ? N_SIDES - 1 - i : i;
        if (only_side >= 0 && side != only_side) continue;
        if (run_once(&b, which, side, pairs, &t)) goto done;
        secs[which][side][0][r] = t.send + t.recv; /* both phases */
        secs[which][side][1][r] = t.send;          /* the send phase */
      }
    }
  }

  {
    double load = load_average();
    int have[N_SIDES];
    emit(&rep, "## chanlite vs the bare SQLite floor\n\n");
    emit(&rep,
         "SQLite %s, %s; journal_mode=WAL, synchronous=NORMAL, busy_timeout=5000; "
         "%d pairs per run, median of %d runs (min–max) after a warm-up; "
         "load average at the end %.2f; %.0f s%s.\n\n",
         sqlite3_libversion(), "one database file", pairs, runs, load, monotonic() - t_start,
         quick ? "; --quick smoke run: speed not judged" : "");
    emit(&rep, "| case | unit | chanlite | floor | chanlite/floor |\n");
    emit(&rep, "|---|---|---|---|---|\n");
    for (which = 0; which < N_CASES; which++) {
      const double *tot[N_SIDES], *snd[N_SIDES], *rcv[N_SIDES];
      double ratio, *recv_secs[N_SIDES] = {0, 0};
      char label[160];
      if (only_case >= 0 && which != only_case) continue;
      for (side = 0; side < N_SIDES; side++) {
        have[side] = only_side < 0 || side == only_side;
        tot[side] = secs[which][side][0];
        snd[side] = secs[which][side][1];
      }
      if (emit_row(&rep, case_label[which], "pairs/s", tot, have, runs, pairs, &ratio)) goto done;
      if (which == CASE_PAIR) ratio_pair = ratio;
      if (which <= CASE_PAIR10K) continue;
      for (side = 0; side < N_SIDES; side++) {
        recv_secs[side] = calloc((size_t)runs, sizeof(double));
        if (!recv_secs[side]) {
          free(recv_secs[0]);
          fail("out of memory");
          goto done;
        }
        for (r = 0; r < runs; r++) recv_secs[side][r] = tot[side][r] - snd[side][r];
        rcv[side] = recv_secs[side];
      }
      snprintf(label, sizeof label, "↳ send phase");
      r = emit_row(&rep, label, "msgs/s", snd, have, runs, pairs, &ratio);
      snprintf(label, sizeof label, "↳ receive phase");
      if (r == 0) r = emit_row(&rep, label, "msgs/s", rcv, have, runs, pairs, &ratio);
      free(recv_secs[0]);
      free(recv_secs[1]);
      if (r) goto done;
    }
    emit(&rep, "\n");
    if (ratio_pair >= 0) {
      emit(&rep, "ratio chanlite/floor, send+recv 1 msg per txn, 100 B: %.2f (target >= 0.70)%s\n",
           ratio_pair, quick ? " — smoke run, not judged" : "");
    }
  }
  if (!rep.text) goto done;
  fputs(rep.text, stdout);
  if (out) {
    FILE *f = fopen(out, "w");
    if (!f || fputs(rep.text, f) < 0) {
      fail("cannot write %s: %s", out, strerror(errno));
      if (f) fclose(f);
      goto done;
    }
    if (fclose(f) != 0) {
      fail("cannot write %s: %s", out, strerror(errno));
      goto done;
    }
  }
  ret = 0;

done:
  if (close_bench(&b)) ret = 1;
  if (made_dir || db_arg) remove_db(path);
  if (made_dir) rmdir(dir);
  for (which = 0; which < N_CASES; which++) {
    for (side = 0; side < N_SIDES; side++) {
      for (r = 0; r < 2; r++) free(secs[which][side][r]);
    }
  }
  free(rep.text);
  return ret;
}
