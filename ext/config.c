/*
** Settings and time.
**
**   SELECT chanlite_config('expiry');           -- 60, or what was set
**   SELECT chanlite_config('capacity', 500);     -- every connection sees 500
**   SELECT chanlite_config('dead_letters', 1000); -- keys: see config_keys
**   SELECT chanlite_capacity('http.response!*', 10);  -- per-channel, by GLOB
**   SELECT chanlite_capacity('http.response!*', NULL); -- remove the pattern
**   SELECT chanlite_clock(1700000000);           -- pin this connection's now
**   SELECT chanlite_clock(NULL);                 -- back to the real clock
**
** Settings live in the database (chanlite_config, chanlite_capacity) so that
** every connection and process agrees; a key never set has its default,
** below. The clock belongs to the connection: tests pin it instead of
** sleeping, and a host that replicates statements pins it so that every node
** computes the same expiries.
*/
#include <limits.h>
#include <math.h>
#include <string.h>
#include "chanlite.h"

typedef struct ConfigKey {
  const char *key;
  double dflt;
  int integer; /* a count, not seconds */
} ConfigKey;

static const ConfigKey config_keys[] = {
  {"expiry", 60, 0},
  {"group_expiry", 86400, 0},
  {"capacity", 100, 1},
  /* Dead letters (ext/stats.c): the most kept (0: none, the default), and
  ** for how long (0: until newer ones push them out). */
  {"dead_letters", 0, 1},
  {"dead_letter_retention", 0, 0},
  /* How long the counters of an idle channel are kept apart before they
  ** are folded into the totals (ext/stats.c). */
  {"stats_retention", 3600, 0},
};
#define N_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

static const ConfigKey *find_key(const char *key) {
  int i;
  for (i = 0; i < N_KEYS; i++) {
    if (strcmp(config_keys[i].key, key) == 0) return &config_keys[i];
  }
  return 0;
}

double chanlite_default(const char *key) {
  const ConfigKey *k = find_key(key);
  return k ? k->dflt : 0;
}

/* The setting in force for `key`: the stored value, else its default. */
int chanlite_setting(Chanlite *c, const char *key, double *value) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_CONFIG_GET);
  int rc;
  *value = chanlite_default(key);
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) *value = sqlite3_column_double(s, 0);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

/* "expiry, group_expiry, ...", for the unknown-key error. */
static char *key_list(void) {
  sqlite3_str *out = sqlite3_str_new(0);
  int i;
  for (i = 0; i < N_KEYS; i++) {
    sqlite3_str_appendf(out, "%s%s", i ? ", " : "", config_keys[i].key);
  }
  return sqlite3_str_finish(out);
}

/* Unix seconds, from the VFS like SQLite's own date functions. */
double chanlite_time(Chanlite *c) {
  sqlite3_vfs *vfs;
  if (c->clock_pinned) return c->clock;
  vfs = sqlite3_vfs_find(0);
  if (vfs && vfs->iVersion >= 2 && vfs->xCurrentTimeInt64) {
    sqlite3_int64 ms = 0;
    vfs->xCurrentTimeInt64(vfs, &ms);
    return (double)(ms - 210866760000000LL) / 1000.0;
  }
  if (vfs) {
    double jd = 0;
    vfs->xCurrentTime(vfs, &jd);
    return (jd - 2440587.5) * 86400.0;
  }
  return 0;
}

/* The value as it goes into an error message. */
static char *describe(sqlite3_value *v) {
  switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER: return sqlite3_mprintf("%lld", sqlite3_value_int64(v));
    case SQLITE_FLOAT: return sqlite3_mprintf("%!.15g", sqlite3_value_double(v));
    case SQLITE_TEXT: return sqlite3_mprintf("TEXT %.40Q", sqlite3_value_text(v));
    case SQLITE_BLOB: return sqlite3_mprintf("a BLOB");
    default: return sqlite3_mprintf("NULL");
  }
}

static int bad_value(Chanlite *c, const char *what, const char *rule, sqlite3_value *v) {
  char *shown = describe(v);
  int rc = chanlite_fail(c, SQLITE_MISMATCH, "%s must be %s, not %s", what, rule,
                         shown ? shown : "?");
  sqlite3_free(shown);
  return rc;
}

/* A count: an INTEGER, or a REAL with no fraction, 0 or more. */
static int count_arg(Chanlite *c, const char *what, sqlite3_value *v, sqlite3_int64 *out) {
  int type = sqlite3_value_type(v);
  double d = sqlite3_value_double(v);
  if (type == SQLITE_INTEGER && sqlite3_value_int64(v) >= 0) {
    *out = sqlite3_value_int64(v);
    return SQLITE_OK;
  }
  if (type == SQLITE_FLOAT && d >= 0 && d < 9.0e18 && d == floor(d)) {
    *out = (sqlite3_int64)d;
    return SQLITE_OK;
  }
  return bad_value(c, what, "a non-negative integer", v);
}

/* Seconds: an INTEGER or a finite REAL, 0 or more. */
static int seconds_arg(Chanlite *c, const char *what, sqlite3_value *v) {
  int type = sqlite3_value_type(v);
  double d = sqlite3_value_double(v);
  if ((type == SQLITE_INTEGER || type == SQLITE_FLOAT) && isfinite(d) && d >= 0) {
    return SQLITE_OK;
  }
  return bad_value(c, what, "a non-negative number of seconds", v);
}

/* A setting read back from the database, where anyone may have written it:
** checked like the argument that set it, so that an expiry of 'abc' (read as
** 0, which would expire every message at once) is an error, not a loss. */
int chanlite_stored_setting(Chanlite *c, const char *key, sqlite3_value *v, double *out) {
  const ConfigKey *k = find_key(key);
  int type = sqlite3_value_type(v);
  double d = sqlite3_value_double(v);
  sqlite3_int64 n = 0;
  char *what;
  int rc;
  /* The common case first, without building the error's wording. */
  if (k && (type == SQLITE_INTEGER || type == SQLITE_FLOAT) && isfinite(d) && d >= 0 &&
      (!k->integer || d == floor(d))) {
    *out = d;
    return SQLITE_OK;
  }
  what = sqlite3_mprintf("%s(): the %s stored in the database", c->fn, key);
  if (!what || !k) {
    sqlite3_free(what);
    return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  }
  rc = k->integer ? count_arg(c, what, v, &n) : seconds_arg(c, what, v);
  sqlite3_free(what);
  if (rc == SQLITE_OK) *out = k->integer ? (double)n : sqlite3_value_double(v);
  return rc;
}

static void result_default(sqlite3_context *ctx, const ConfigKey *k) {
  if (k->dflt == floor(k->dflt)) sqlite3_result_int64(ctx, (sqlite3_int64)k->dflt);
  else sqlite3_result_double(ctx, k->dflt);
}

/* No chanlite tables yet means nothing was set: the default is in force. */
static int read_config(Chanlite *c, sqlite3_context *ctx, const ConfigKey *k) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_CONFIG_GET);
  int rc = s ? SQLITE_OK : c->err_code;
  if (s) {
    sqlite3_bind_text(s, 1, k->key, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) sqlite3_result_value(ctx, sqlite3_column_value(s, 0));
    else if (rc == SQLITE_DONE) result_default(ctx, k);
    else chanlite_fail_sqlite(c, rc);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
    sqlite3_reset(s);
  }
  if (rc != SQLITE_OK && chanlite_schema_missing(c)) {
    result_default(ctx, k);
    rc = SQLITE_OK;
  }
  return rc;
}

static void fn_config(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  const ConfigKey *k = 0;
  sqlite3_stmt *s;
  int rc = SQLITE_OK;
  sqlite3_int64 count = 0;

  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    rc = chanlite_fail(c, SQLITE_MISMATCH, "config key must be TEXT, not %s",
                       chanlite_type_name(sqlite3_value_type(argv[0])));
  } else if (!(k = find_key((const char *)sqlite3_value_text(argv[0])))) {
    char *keys = key_list();
    rc = keys ? chanlite_fail(c, SQLITE_ERROR, "unknown config key: %.40s (keys: %s)",
                              sqlite3_value_text(argv[0]), keys)
              : chanlite_fail(c, SQLITE_NOMEM, "out of memory");
    sqlite3_free(keys);
  } else if (argc == 1) {
    rc = read_config(c, ctx, k);
  } else {
    rc = k->integer ? count_arg(c, k->key, argv[1], &count) : seconds_arg(c, k->key, argv[1]);
    if (rc == SQLITE_OK) rc = chanlite_begin(c);
    if (rc == SQLITE_OK) {
      s = chanlite_stmt(c, CHANLITE_STMT_CONFIG_SET);
      if (!s) rc = c->err_code;
      else {
        sqlite3_bind_text(s, 1, k->key, -1, SQLITE_STATIC);
        if (k->integer) sqlite3_bind_int64(s, 2, count);
        else sqlite3_bind_value(s, 2, argv[1]);
        rc = chanlite_step_done(c, s);
      }
      rc = chanlite_end(c, rc);
    }
    if (rc == SQLITE_OK) {
      if (k->integer) sqlite3_result_int64(ctx, count);
      else sqlite3_result_value(ctx, argv[1]);
    }
  }
  if (rc != SQLITE_OK) chanlite_report(c, ctx);
}

static void fn_capacity(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  sqlite3_stmt *s;
  sqlite3_int64 n = 0;
  int removing = sqlite3_value_type(argv[1]) == SQLITE_NULL;
  int rc = SQLITE_OK;
  (void)argc;
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    rc = chanlite_fail(c, SQLITE_MISMATCH, "capacity pattern must be TEXT, not %s",
                       chanlite_type_name(sqlite3_value_type(argv[0])));
  } else if (sqlite3_value_bytes(argv[0]) == 0) {
    rc = chanlite_fail(c, SQLITE_ERROR, "capacity pattern must not be empty");
  } else if (!removing) {
    rc = count_arg(c, "capacity", argv[1], &n);
  }
  if (rc == SQLITE_OK) rc = chanlite_begin(c);
  if (rc == SQLITE_OK) {
    s = chanlite_stmt(c, removing ? CHANLITE_STMT_CAPACITY_REMOVE : CHANLITE_STMT_CAPACITY_SET);
    if (!s) rc = c->err_code;
    else {
      sqlite3_bind_value(s, 1, argv[0]);
      if (!removing) sqlite3_bind_int64(s, 2, n);
      rc = chanlite_step_done(c, s);
    }
    rc = chanlite_end(c, rc);
  }
  if (rc != SQLITE_OK) chanlite_report(c, ctx);
  else if (removing) sqlite3_result_null(ctx);
  else sqlite3_result_int64(ctx, n);
}

/* Whether a statement that writes is running: then chanlite_clock is being
** called from it, e.g. from a CHECK constraint, where SQLite (3.40 at least)
** does not enforce DIRECTONLY. Write functions need no such check: they
** cannot commit or open a savepoint there (transaction.c). */
static int inside_write(sqlite3 *db) {
  sqlite3_stmt *s;
  for (s = sqlite3_next_stmt(db, 0); s; s = sqlite3_next_stmt(db, s)) {
    if (sqlite3_stmt_busy(s) && !sqlite3_stmt_readonly(s)) return 1;
  }
  return 0;
}

static void fn_clock(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  int type = sqlite3_value_type(argv[0]);
  double t = sqlite3_value_double(argv[0]);
  (void)argc;
  if (inside_write(c->db)) {
    chanlite_fail(c, SQLITE_MISUSE,
                  "chanlite_clock() must run from a statement of its own, "
                  "not from inside INSERT, UPDATE or DELETE");
    chanlite_report(c, ctx);
    return;
  }
  if (type == SQLITE_NULL) {
    c->clock_pinned = 0;
  } else if ((type == SQLITE_INTEGER || type == SQLITE_FLOAT) && isfinite(t) && t >= 0) {
    c->clock_pinned = 1;
    c->clock = t;
  } else {
    bad_value(c, "clock", "Unix seconds (a non-negative number) or NULL", argv[0]);
    chanlite_report(c, ctx);
    return;
  }
  sqlite3_result_double(ctx, chanlite_time(c));
}

/* SQLite's own busy handler sleeps in steps growing to 100 ms, so a waiter
** for the write lock held by a long writer (a group_send to thousands) keeps
** sleeping through the short gaps between that writer's transactions. This
** one, the handler of the connections chanlite opens itself
** (ext/transaction.c), polls every 0.1 to 2 ms instead. It replaces the
** connection's busy handler, as PRAGMA busy_timeout does (and a later PRAGMA
** busy_timeout replaces it); 0 removes it. */
static void fn_busy_timeout(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  sqlite3_int64 ms = 0;
  (void)argc;
  if (count_arg(c, "chanlite_busy_timeout(ms)", argv[0], &ms) != SQLITE_OK) {
    chanlite_report(c, ctx);
    return;
  }
  if (ms > INT_MAX) ms = INT_MAX;
  chanlite_busy_wait(c, (int)ms);
  sqlite3_result_int64(ctx, ms);
}

static void fn_now(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  (void)argv;
  sqlite3_result_double(ctx, chanlite_time(c));
}

/* chanlite_config writes with two arguments, so it is DIRECTONLY like every
** write. chanlite_clock changes no data, but a view that pinned the clock
** would change what every later call on the connection does: DIRECTONLY too.
** chanlite_now is harmless anywhere, but not DETERMINISTIC. */
const ChanliteFunction chanlite_config_functions[] = {
  {"chanlite_config", 1, 2, "chanlite_config(key) or chanlite_config(key, value)", CHANLITE_WRITE,
   fn_config},
  {"chanlite_capacity", 2, 2, "chanlite_capacity(glob, n)", CHANLITE_WRITE, fn_capacity},
  {"chanlite_clock", 1, 1, "chanlite_clock(unix_seconds_or_null)", CHANLITE_WRITE, fn_clock},
  /* DIRECTONLY: a view or trigger must not change how a connection waits. */
  {"chanlite_busy_timeout", 1, 1, "chanlite_busy_timeout(ms)", CHANLITE_WRITE, fn_busy_timeout},
  {"chanlite_now", 0, 0, "chanlite_now()", SQLITE_UTF8 | SQLITE_INNOCUOUS, fn_now},
};
const int chanlite_config_function_count = (int)(sizeof chanlite_config_functions /
                                                 sizeof chanlite_config_functions[0]);
