/*
** Out-of-memory fault injection.
**
**   oom path/to/chanlite.so [scenario]
**
** SQLite's allocator is wrapped (SQLITE_CONFIG_MALLOC, before
** sqlite3_initialize) so that the Nth allocation fails: once ("transient"),
** or that one and every later one ("persistent"). For each scenario below,
** for each mode, outside and inside the caller's transaction, N goes from 1
** upward until the call completes without reaching its Nth allocation. Each
** time, on a fresh database:
**
**   - the call either fails with an error, or succeeds and returns exactly
**     what it returns with no fault injected (a reference run) and leaves
**     the same state; a call whose reference run fails must fail too;
**   - a failed call leaves the database as it was before (a failed send
**     stored nothing, a failed receive left its message in place); only
**     channel_recv_batch may have delivered some rows before it failed, and
**     then exactly those are gone;
**   - PRAGMA integrity_check is ok, chanlite_queue's depths match the rows,
**     and a call made outside a transaction leaves none open;
**   - after the connection closes, every allocation is freed.
**
** The extension allocates only through sqlite3_malloc (nothing in ext/
** calls malloc), so the wrapper sees every allocation it makes.
** CHANLITE_OOM_STRIDE=k tries every kth N only (valgrind runs use it);
** CHANLITE_OOM_FIRST=n starts at N=n (with a breakpoint on fault_injected,
** a debugger then stops at the fault).
** Exits 1 if any check failed.
*/
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

/* ---- the failing allocator ---- */

static sqlite3_mem_methods real;
static int armed;      /* count allocations towards the fault */
static int persistent; /* keep failing after the first fault */
static long countdown; /* allocations left before the fault */
static int fired;      /* the fault was injected */
static long live;      /* allocations not yet freed */

/* A place for a debugger's breakpoint: the injected fault. */
static void __attribute__((noinline)) fault_injected(void) {
  __asm__ volatile("");
}

static int fail_now(void) {
  if (!armed) return 0;
  if (fired) return persistent;
  if (--countdown > 0) return 0;
  fired = 1;
  fault_injected();
  return 1;
}

static void *oom_malloc(int n) {
  void *p = fail_now() ? 0 : real.xMalloc(n);
  if (p) live++;
  return p;
}

static void oom_free(void *p) {
  if (p) live--;
  real.xFree(p);
}

static void *oom_realloc(void *p, int n) {
  return fail_now() ? 0 : real.xRealloc(p, n);
}

static int oom_size(void *p) {
  return real.xSize(p);
}
static int oom_roundup(int n) {
  return real.xRoundup(n);
}
static int oom_init(void *app) {
  (void)app;
  return real.xInit(real.pAppData);
}
static void oom_shutdown(void *app) {
  (void)app;
  real.xShutdown(real.pAppData);
}

static void install_allocator(void) {
  static sqlite3_mem_methods wrapped;
  if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real) != SQLITE_OK) {
    fprintf(stderr, "oom: SQLITE_CONFIG_GETMALLOC failed\n");
    exit(2);
  }
  wrapped = real;
  wrapped.xMalloc = oom_malloc;
  wrapped.xFree = oom_free;
  wrapped.xRealloc = oom_realloc;
  wrapped.xSize = oom_size;
  wrapped.xRoundup = oom_roundup;
  wrapped.xInit = oom_init;
  wrapped.xShutdown = oom_shutdown;
  if (sqlite3_config(SQLITE_CONFIG_MALLOC, &wrapped) != SQLITE_OK ||
      sqlite3_initialize() != SQLITE_OK) {
    fprintf(stderr, "oom: cannot install the allocator\n");
    exit(2);
  }
}

static void arm(long n, int keep_failing) {
  countdown = n;
  persistent = keep_failing;
  fired = 0;
  armed = 1;
}

/* ---- text buffers (plain malloc: the test's own memory is not counted) ---- */

typedef struct Text {
  char *z;
  size_t n, cap;
} Text;

static void text_add(Text *t, const char *fmt, ...) {
  va_list ap;
  int need;
  va_start(ap, fmt);
  need = vsnprintf(0, 0, fmt, ap);
  va_end(ap);
  if (t->n + (size_t)need + 1 > t->cap) {
    t->cap = (t->n + (size_t)need + 1) * 2;
    t->z = realloc(t->z, t->cap);
    if (!t->z) {
      perror("oom");
      exit(2);
    }
  }
  va_start(ap, fmt);
  vsnprintf(t->z + t->n, t->cap - t->n, fmt, ap);
  va_end(ap);
  t->n += (size_t)need;
}

static const char *text_of(const Text *t) {
  return t->z ? t->z : "";
}

static void text_free(Text *t) {
  free(t->z);
  memset(t, 0, sizeof *t);
}

/* One column as a line fragment: '..' or X'..', integers and reals as is.
** Reads the bytes without conversions, so it allocates nothing. */
static void add_value(Text *t, sqlite3_stmt *s, int col) {
  const unsigned char *p;
  int i, n;
  switch (sqlite3_column_type(s, col)) {
    case SQLITE_INTEGER: text_add(t, "%lld", (long long)sqlite3_column_int64(s, col)); break;
    case SQLITE_FLOAT: text_add(t, "%.17g", sqlite3_column_double(s, col)); break;
    case SQLITE_NULL: text_add(t, "NULL"); break;
    case SQLITE_TEXT:
      p = sqlite3_column_blob(s, col);
      n = sqlite3_column_bytes(s, col);
      text_add(t, "'");
      for (i = 0; i < n; i++) {
        text_add(t, p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\' ? "%c" : "\\x%02x", p[i]);
      }
      text_add(t, "'");
      break;
    default:
      p = sqlite3_column_blob(s, col);
      n = sqlite3_column_bytes(s, col);
      text_add(t, "X'");
      for (i = 0; i < n; i++) text_add(t, "%02x", p[i]);
      text_add(t, "'");
  }
}

/* Run every statement of sql, adding each row to rows as one line. */
static int run_sql(sqlite3 *db, const char *sql, Text *rows) {
  sqlite3_stmt *s = 0;
  const char *tail = sql;
  int rc = SQLITE_OK, i;
  while (rc == SQLITE_OK && tail && *tail) {
    rc = sqlite3_prepare_v2(db, tail, -1, &s, &tail);
    if (rc != SQLITE_OK || !s) break;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      for (i = 0; rows && i < sqlite3_column_count(s); i++) {
        if (i) text_add(rows, "|");
        add_value(rows, s, i);
      }
      if (rows) text_add(rows, "\n");
    }
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    if (sqlite3_finalize(s) != SQLITE_OK && rc == SQLITE_OK) rc = sqlite3_errcode(db);
    s = 0;
  }
  return rc;
}

/* ---- checks ---- */

static int failures, known_failures;
static const char *where; /* scenario, mode and N, for messages */
static const char *known; /* why failures here are known and not counted */

static void fail(const char *fmt, ...) {
  va_list ap;
  if (known) {
    known_failures++;
    fprintf(stderr, "KNOWN (%s) %s: ", known, where);
  } else {
    fprintf(stderr, "FAIL %s: ", where);
  }
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  if (!known) failures++;
}

static int has_schema(sqlite3 *db) {
  Text t = {0};
  int yes;
  run_sql(db, "SELECT 1 FROM sqlite_schema WHERE name = 'chanlite_message'", &t);
  yes = t.n > 0;
  text_free(&t);
  return yes;
}

/* Everything a call may change, as text: messages in order (as
** channel_recv_batch returns them: channel|message|expires_at), memberships,
** settings, capacity patterns, and this connection's clock. */
static void state_of(sqlite3 *db, Text *state) {
  int rc = SQLITE_OK;
  if (!has_schema(db)) {
    text_add(state, "(no chanlite tables)\n");
  } else {
    rc = run_sql(db,
                 "SELECT queue || coalesce(local, ''), body, expires_at "
                 "  FROM chanlite_message ORDER BY id;"
                 "SELECT 'member', group_name, channel, expires_at FROM chanlite_group "
                 "  ORDER BY group_name, channel;"
                 "SELECT 'config', key, value FROM chanlite_config ORDER BY key;"
                 "SELECT 'capacity', pattern, capacity FROM chanlite_capacity ORDER BY id;",
                 state);
  }
  if (rc == SQLITE_OK) rc = run_sql(db, "SELECT 'clock', chanlite_now()", state);
  if (rc != SQLITE_OK) fail("reading the state: %s", sqlite3_errmsg(db));
}

static void check_consistent(sqlite3 *db) {
  Text t = {0};
  if (run_sql(db, "PRAGMA integrity_check", &t) != SQLITE_OK ||
      strcmp(text_of(&t), "'ok'\n") != 0) {
    fail("integrity_check: %s %s", text_of(&t), sqlite3_errmsg(db));
  }
  text_free(&t);
  if (!has_schema(db)) return;
  if (run_sql(db,
              "SELECT queue, count(*) FROM chanlite_message GROUP BY queue "
              "EXCEPT SELECT queue, depth FROM chanlite_queue;"
              "SELECT queue, depth FROM chanlite_queue WHERE depth <> 0 "
              "EXCEPT SELECT queue, count(*) FROM chanlite_message GROUP BY queue;",
              &t) != SQLITE_OK ||
      t.n > 0) {
    fail("chanlite_queue depths do not match the messages: %s %s", text_of(&t), sqlite3_errmsg(db));
  }
  text_free(&t);
}

/* Lines of `before` minus the lines of `taken` (each at most once). */
static void subtract_lines(const char *before, const char *taken, Text *out) {
  const char *line = before;
  char *used = calloc(strlen(taken) + 1, 1);
  if (!used) {
    perror("oom");
    exit(2);
  }
  while (*line) {
    const char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) + 1 : strlen(line), m;
    const char *p;
    int hit = 0;
    for (p = taken; *p; p += m) {
      const char *e = strchr(p, '\n');
      m = e ? (size_t)(e - p) + 1 : strlen(p);
      if (!used[p - taken] && m == n && memcmp(p, line, n) == 0) {
        used[p - taken] = 1;
        hit = 1;
        break;
      }
    }
    if (!hit) text_add(out, "%.*s", (int)n, line);
    line += n;
  }
  free(used);
}

/* ---- scenarios ---- */

enum { IN_AUTOCOMMIT, IN_TRANSACTION };

/* Known limits, reported as KNOWN and not counted as failures. */
#define PUT_BACK_NEEDS_MEMORY                                                   \
  "rows channel_recv_batch popped but never handed out are put back after its " \
  "commit; when every allocation fails from then on, the put-back fails and is logged"
#define SCHEMA_NEEDS_MEMORY                                                     \
  "out of memory while creating the tables interrupts the connection, and the " \
  "statements that would roll back DDL must be prepared again, which then fails"

typedef struct Scenario {
  const char *name;
  const char *setup;            /* run without faults after loading; clock pinned first */
  const char *call;             /* the call under test; NULL: loading the extension */
  int partial;                  /* rows returned before a failure are delivered */
  const char *known_persistent; /* a known limit with persistent faults */
  const char *known;            /* a known limit in every mode */
} Scenario;

#define CLOCK "SELECT chanlite_clock(1000);"
#define TWO_SENT CLOCK "SELECT channel_send('chat', 'm1'); SELECT channel_send('chat', X'00ff');"
#define PREFIXED                                                              \
  CLOCK "SELECT channel_send('p!a', 'a1'); SELECT channel_send('p!b', 'b1');" \
        "SELECT channel_send('p!a', 'a2'); SELECT channel_send('q', 'q1');"
#define MEMBERS                                                                  \
  CLOCK "SELECT group_add('room', 'chat'); SELECT group_add('room', 'p!x');"     \
        "SELECT chanlite_capacity('full', 1); SELECT channel_send('full', 'f');" \
        "SELECT group_add('room', 'full'); SELECT group_add('other', 'q');"
#define AGED                                                              \
  CLOCK "SELECT channel_send('old', 'o1'); SELECT group_add('g', 'old');" \
        "SELECT chanlite_clock(1100); SELECT channel_send('new', 'n1');"  \
        "SELECT group_add('g', 'new');"

static const Scenario scenarios[] = {
  {"load", 0, 0, 0, 0, 0},
  {"send_first_use", CLOCK, "SELECT channel_send('chat', 'hello')", 0, 0, SCHEMA_NEEDS_MEMORY},
  {"send_text", TWO_SENT, "SELECT channel_send('chat', 'hello')", 0, 0, 0},
  {"send_blob", TWO_SENT, "SELECT channel_send('p!x', X'0001ff')", 0, 0, 0},
  {"send_full", TWO_SENT "SELECT chanlite_config('capacity', 2);",
   "SELECT channel_send('chat', 'over')", 0, 0, 0},
  {"send_purges", AGED "SELECT chanlite_clock(5000);", "SELECT channel_send('x', 'y')", 0, 0, 0},
  {"recv", TWO_SENT, "SELECT channel_recv('chat')", 0, 0, 0},
  {"recv_prefix", PREFIXED, "SELECT channel_recv('p!')", 0, 0, 0},
  {"recv_local", PREFIXED, "SELECT channel_recv('p!b')", 0, 0, 0},
  {"recv_expired_head",
   AGED "SELECT channel_send('old', 'o2');"
        "SELECT chanlite_clock(1070);",
   "SELECT channel_recv('old')", 0, 0, 0},
  {"recv_empty", TWO_SENT, "SELECT channel_recv('nothing')", 0, 0, 0},
  {"recv_no_tables", CLOCK, "SELECT channel_recv('chat')", 0, 0, 0},
  {"group_add", MEMBERS, "SELECT group_add('room', 'new')", 0, 0, 0},
  {"group_add_again", MEMBERS "SELECT chanlite_clock(2000);", "SELECT group_add('room', 'chat')", 0,
   0, 0},
  {"group_discard", MEMBERS, "SELECT group_discard('room', 'chat')", 0, 0, 0},
  {"group_discard_none", MEMBERS, "SELECT group_discard('room', 'stranger')", 0, 0, 0},
  {"group_send", MEMBERS, "SELECT group_send('room', 'to all')", 0, 0, 0},
  {"channel_flush", MEMBERS, "SELECT channel_flush()", 0, 0, 0},
  {"channel_trim", AGED "SELECT chanlite_clock(1070);", "SELECT channel_trim()", 0, 0, 0},
  {"config_set", TWO_SENT, "SELECT chanlite_config('expiry', 30)", 0, 0, 0},
  {"config_get", TWO_SENT "SELECT chanlite_config('capacity', 7);",
   "SELECT chanlite_config('capacity')", 0, 0, 0},
  {"config_get_no_tables", CLOCK, "SELECT chanlite_config('group_expiry')", 0, 0, 0},
  {"capacity_set", TWO_SENT, "SELECT chanlite_capacity('chat*', 5)", 0, 0, 0},
  {"capacity_remove", TWO_SENT "SELECT chanlite_capacity('chat*', 5);",
   "SELECT chanlite_capacity('chat*', NULL)", 0, 0, 0},
  {"clock", TWO_SENT, "SELECT chanlite_clock(5000)", 0, 0, 0},
  {"recv_batch", PREFIXED, "SELECT channel, message, expires_at FROM channel_recv_batch('p!', 10)",
   1, PUT_BACK_NEEDS_MEMORY, 0},
  {"recv_batch_local", PREFIXED,
   "SELECT channel, message, expires_at FROM channel_recv_batch('p!a', 10)", 1,
   PUT_BACK_NEEDS_MEMORY, 0},
  {"recv_batch_put_back", PREFIXED,
   "SELECT channel, message, expires_at FROM channel_recv_batch('p!', 10) LIMIT 1", 1,
   PUT_BACK_NEEDS_MEMORY, 0},
  {"chanlite_channels", PREFIXED, "SELECT * FROM chanlite_channels", 0, 0, 0},
  {"chanlite_groups", MEMBERS, "SELECT * FROM chanlite_groups", 0, 0, 0},
};
#define N_SCENARIOS ((int)(sizeof scenarios / sizeof scenarios[0]))

static const char *ext_path;
static char db_path[256];
static long first_n = 1;

static int load(sqlite3 *db, char **err) {
  sqlite3_enable_load_extension(db, 1);
  return sqlite3_load_extension(db, ext_path, "sqlite3_chanlite_init", err);
}

static void remove_db_files(void) {
  static const char *const suffix[] = {"", "-wal", "-shm", "-journal", "-chanlite"};
  char path[300];
  int i;
  for (i = 0; i < 5; i++) {
    snprintf(path, sizeof path, "%s%s", db_path, suffix[i]);
    unlink(path);
  }
}

/* A fresh WAL database with chanlite loaded and the setup run, all without
** faults. NULL if that failed (reported). */
static sqlite3 *fresh(const Scenario *sc, int load_it) {
  sqlite3 *db = 0;
  char *err = 0;
  remove_db_files();
  if (sqlite3_open(db_path, &db) != SQLITE_OK ||
      run_sql(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", 0) != SQLITE_OK ||
      (load_it && load(db, &err) != SQLITE_OK) ||
      (load_it && sc->setup && run_sql(db, sc->setup, 0) != SQLITE_OK)) {
    fail("setup: %s %s", err ? err : "", sqlite3_errmsg(db));
    sqlite3_free(err);
    sqlite3_close(db);
    return 0;
  }
  return db;
}

typedef struct Run {
  int rc;
  Text rows;       /* what the call returned */
  Text state;      /* the state it left, once committed */
  int reached;     /* the fault was injected */
  int rolled_back; /* SQLite rolled back the caller's whole transaction */
  char err[200];   /* the error it failed with */
} Run;

/* Run the call once; n 0 means no fault. */
static void run_call(const Scenario *sc, int txn, long n, int keep_failing, Run *out) {
  sqlite3 *db;
  long live_before = live;
  char *err = 0;
  int rc;
  memset(out, 0, sizeof *out);
  db = fresh(sc, sc->call != 0);
  if (!db) {
    out->rc = -1;
    return;
  }
  if (txn == IN_TRANSACTION) run_sql(db, "BEGIN", 0);
  if (n > 0) arm(n, keep_failing);
  if (sc->call) {
    rc = run_sql(db, sc->call, &out->rows);
  } else {
    rc = load(db, &err);
    sqlite3_free(err);
  }
  armed = 0;
  out->rc = rc;
  snprintf(out->err, sizeof out->err, "%s", rc == SQLITE_OK ? "" : sqlite3_errmsg(db));
  out->reached = fired;
  if (txn == IN_TRANSACTION) {
    /* SQLite itself rolls the whole transaction back after some errors
    ** (SQLITE_NOMEM in a statement without a statement journal). */
    out->rolled_back = sqlite3_get_autocommit(db);
    if (!out->rolled_back && run_sql(db, "COMMIT", 0) != SQLITE_OK) {
      fail("COMMIT after the call: %s", sqlite3_errmsg(db));
    }
  } else if (!sqlite3_get_autocommit(db)) {
    fail("the call (rc %d: %s) left a transaction open", rc, out->err);
    run_sql(db, "ROLLBACK", 0);
  }
  if (!sc->call) {
    /* Loaded: it works. Not loaded: nothing of it is left to call (its
    ** library is unloaded again) and nothing was written. */
    int works = run_sql(db, "SELECT chanlite_version()", 0) == SQLITE_OK;
    /* (A load can fail and still work: SQLite runs out of memory
    ** recording a library whose init succeeded, and keeps it loaded.) */
    if (rc == SQLITE_OK && !works) fail("loaded, but chanlite_version() fails");
    if (works) {
      if (run_sql(db, CLOCK "SELECT channel_send('chat', 'after load')", 0) != SQLITE_OK) {
        fail("send after load: %s", sqlite3_errmsg(db));
      }
      state_of(db, &out->state);
    } else if (!works && has_schema(db)) {
      fail("a failed load created tables");
    }
  } else {
    state_of(db, &out->state);
  }
  check_consistent(db);
  rc = sqlite3_close(db);
  if (rc != SQLITE_OK) fail("sqlite3_close: %d", rc);
  if (live != live_before) fail("%ld allocations leaked", live - live_before);
}

static void check_scenario(const Scenario *sc, int txn, int keep_failing, long stride) {
  Run ref, before, got;
  Scenario setup_only = *sc;
  const char *mode = keep_failing ? "persistent" : "transient";
  const char *in = txn == IN_TRANSACTION ? "in a transaction" : "autocommit";
  char here[240];
  long n, tried = 0, failed_calls = 0;
  int before_failures = failures, before_known = known_failures;

  snprintf(here, sizeof here, "%s (%s, %s, reference)", sc->name, in, mode);
  where = here;
  known = 0;
  run_call(sc, txn, 0, 0, &ref);
  /* The state before the call: the setup alone. */
  setup_only.call = "SELECT 1 WHERE 0";
  if (sc->call) run_call(&setup_only, txn, 0, 0, &before);
  else memset(&before, 0, sizeof before);

  known = sc->known ? sc->known : keep_failing ? sc->known_persistent : 0;
  for (n = first_n;; n += stride) {
    snprintf(here, sizeof here, "%s (%s, %s, N=%ld)", sc->name, in, mode, n);
    run_call(sc, txn, n, keep_failing, &got);
    tried++;
    if (got.rc == -1) break;
    if (got.rc == SQLITE_OK) {
      if (ref.rc != SQLITE_OK) fail("succeeded, but fails without faults");
      if (strcmp(text_of(&got.rows), text_of(&ref.rows)) != 0) {
        fail("succeeded returning\n%s\ninstead of\n%s", text_of(&got.rows), text_of(&ref.rows));
      }
      if (strcmp(text_of(&got.state), text_of(&ref.state)) != 0) {
        fail("succeeded leaving\n%s\ninstead of\n%s", text_of(&got.state), text_of(&ref.state));
      }
    } else if (sc->call) {
      Text expect = {0};
      failed_calls++;
      if (sc->partial && !got.rolled_back) {
        subtract_lines(text_of(&before.state), text_of(&got.rows), &expect);
      } else {
        text_add(&expect, "%s", text_of(&before.state));
      }
      if (strcmp(text_of(&got.state), text_of(&expect)) != 0) {
        fail("failed (%d: %s) but left\n%s\ninstead of\n%s", got.rc, got.err, text_of(&got.state),
             text_of(&expect));
      }
      text_free(&expect);
    } else {
      failed_calls++;
    }
    text_free(&got.rows);
    text_free(&got.state);
    if (!got.reached) break; /* ran to the end without a fault */
    /* Enough to go on. */
    if (failures - before_failures + known_failures - before_known > 5) break;
  }
  printf("%s %s: %s, %s: N up to %ld, %ld runs, %ld failed calls\n",
         failures != before_failures      ? "FAILED"
         : known_failures != before_known ? "ok (known limit hit)"
                                          : "ok",
         sc->name, in, mode, n, tried, failed_calls);
  fflush(stdout);
  text_free(&ref.rows);
  text_free(&ref.state);
  text_free(&before.rows);
  text_free(&before.state);
  known = 0;
}

int main(int argc, char **argv) {
  /* On tmpfs where there is one: thousands of small databases. */
  char dir[64];
  const char *stride_env = getenv("CHANLITE_OOM_STRIDE");
  long stride = stride_env ? atol(stride_env) : 1;
  int i, txn, keep_failing;
  if (argc < 2) {
    fprintf(stderr, "usage: oom path/to/chanlite.so [scenario]\n");
    return 2;
  }
  ext_path = argv[1];
  if (stride < 1) stride = 1;
  if (getenv("CHANLITE_OOM_FIRST")) first_n = atol(getenv("CHANLITE_OOM_FIRST"));
  snprintf(dir, sizeof dir, "%s/chanlite-oom-XXXXXX",
           access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 2;
  }
  snprintf(db_path, sizeof db_path, "%s/oom.db", dir);
  install_allocator();
  for (i = 0; i < N_SCENARIOS; i++) {
    if (argc > 2 && strcmp(argv[2], scenarios[i].name) != 0) continue;
    for (keep_failing = 0; keep_failing <= 1; keep_failing++) {
      for (txn = IN_AUTOCOMMIT; txn <= IN_TRANSACTION; txn++) {
        check_scenario(&scenarios[i], txn, keep_failing, stride);
      }
    }
  }
  remove_db_files();
  rmdir(dir);
  printf("%s; %d known-limit failures (KNOWN lines above)\n", failures ? "FAILED" : "all passed",
         known_failures);
  return failures ? 1 : 0;
}
