/*
** chanlite: a Django Channels channel layer inside SQLite.
**
** Load it into any connection and every channel-layer operation is one SQL
** call: per-channel FIFO queues, groups, expiry, capacity, flush.
**
**   .load ./chanlite
**   SELECT channel_send('chat', 'hello');    -- 1
**   SELECT channel_recv('chat');             -- 'hello'
**   SELECT group_add('room', 'chat');        -- 1
**   SELECT group_send('room', 'hi all');     -- 1
**   SELECT * FROM chanlite_channels;
**
** Each call is atomic: outside a transaction it commits on its own, inside
** one it joins it. Call write functions from a statement of their own
** (SELECT channel_send(?, ?)), not from INSERT ... SELECT or UPDATE.
** Loading writes nothing; the chanlite_* tables are created on first use.
** See docs/sql/index.md for the whole API, and docs/design.md for how it works and
** why its guarantees hold.
**
** Files: chanlite.c (this: loading), names.c (argument checks), message.c,
** group.c, maintenance.c (the operations), config.c (settings and clock),
** transaction.c (atomicity), schema.c (refusing chanlite tables that
** chanlite did not make), statements.c (the statement cache), vtab.c
** (table-valued functions), disk.c (keeping the file small), stats.c
** (counters and dead letters), errors.c. The SQL they run is in sql/.
*/
#include <string.h>
#include "chanlite.h"

SQLITE_EXTENSION_INIT1

typedef struct Binding {
  Chanlite *c;
  const ChanliteFunction *def;
} Binding;

static void fn_version(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void fn_debug(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv);

/* Every function goes through here: argument counts are checked once, with
** an error that names the function and its arguments. */
static void call(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  Binding *b = sqlite3_user_data(ctx);
  const ChanliteFunction *d = b->def;
  if (argc < d->min_args || argc > d->max_args) {
    char *msg = sqlite3_mprintf("chanlite: wrong number of arguments to %s: "
                                "got %d, usage: %s",
                                d->name, argc, d->usage);
    if (msg) sqlite3_result_error(ctx, msg, -1);
    else sqlite3_result_error_nomem(ctx);
    sqlite3_free(msg);
    return;
  }
  b->c->fn = d->name;
  if (d->fn != fn_version && d->fn != fn_debug && chanlite_check_process(b->c) != SQLITE_OK) {
    chanlite_report(b->c, ctx);
    return;
  }
  d->fn(b->c, ctx, argc, argv);
}

int chanlite_register(sqlite3 *db, Chanlite *c, const ChanliteFunction *fns, int n, char **errmsg) {
  int i, rc = SQLITE_OK;
  for (i = 0; i < n && rc == SQLITE_OK; i++) {
    Binding *b = sqlite3_malloc(sizeof *b);
    if (!b) return SQLITE_NOMEM;
    b->c = c;
    b->def = &fns[i];
    /* Registered with nArg -1 so that `call` can explain a wrong count;
    ** sqlite3_free runs when the function is replaced or the connection
    ** closes, and also if registration fails. */
    rc = sqlite3_create_function_v2(db, fns[i].name, -1, fns[i].flags, b, call, 0, 0, sqlite3_free);
    if (rc != SQLITE_OK) {
      *errmsg = sqlite3_mprintf("chanlite: cannot register %s: %s", fns[i].name,
                                sqlite3_errmsg(db));
    }
  }
  return rc;
}

static void fn_version(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)c;
  (void)argc;
  (void)argv;
  sqlite3_result_text(ctx, CHANLITE_VERSION, -1, SQLITE_STATIC);
}

/* How this build was made, for chanlite_debug(). */
#if defined(__clang__)
#define BUILT_BY "clang " __clang_version__
#elif defined(__GNUC__)
#define BUILT_BY "gcc " __VERSION__
#else
#define BUILT_BY "unknown"
#endif
#ifdef __linux__
#define WAKE_METHOD "inotify on <database>-chanlite, polling where there is no file"
#else
#define WAKE_METHOD "polling (no inotify on this system)"
#endif

/* What a bug report needs: versions and how this build was made. */
static void fn_debug(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  char *s;
  (void)argc;
  (void)argv;
  s = sqlite3_mprintf("chanlite %s\nsqlite %s (built against %s)\ncompiler %s\n"
                      "clock %s\nstatements cached %s\nwake %s",
                      CHANLITE_VERSION, sqlite3_libversion(), SQLITE_VERSION, BUILT_BY,
                      c->clock_pinned ? "pinned" : "real", c->anchored ? "yes" : "no", WAKE_METHOD);
  if (s) sqlite3_result_text(ctx, s, -1, sqlite3_free);
  else sqlite3_result_error_nomem(ctx);
}

static const ChanliteFunction info_functions[] = {
  {"chanlite_version", 0, 0, "chanlite_version()",
   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, fn_version},
  {"chanlite_debug", 0, 0, "chanlite_debug()", SQLITE_UTF8 | SQLITE_INNOCUOUS, fn_debug},
};
static const int info_function_count = (int)(sizeof info_functions / sizeof info_functions[0]);

/* The two lists below are everything a load registers: chanlite_attach
** registers from them and unregister_all deletes from them, so neither can
** forget a name the other knows. tests/sql/registry.test pins what a load
** leaves in pragma_function_list and pragma_module_list. */

/* Every SQL function, by concern. */
static const struct {
  const ChanliteFunction *fns;
  const int *n;
} function_groups[] = {
  {info_functions, &info_function_count},
  {chanlite_message_functions, &chanlite_message_function_count},
  {chanlite_group_functions, &chanlite_group_function_count},
  {chanlite_maintenance_functions, &chanlite_maintenance_function_count},
  {chanlite_config_functions, &chanlite_config_function_count},
  {chanlite_wake_functions, &chanlite_wake_function_count},
};

/* Every virtual table module. chanlite_statements comes first: from then on
** it owns the connection's state and frees it when it goes, even if a later
** registration fails (ext/statements.c). */
static const struct {
  const char *name;
  chanlite_module_create create;
} modules[] = {
  {"chanlite_statements", chanlite_create_statements_module},
  {"channel_recv_batch", chanlite_create_batch_module},
  {"chanlite_channels", chanlite_create_channels_module},
  {"chanlite_groups", chanlite_create_groups_module},
  {"chanlite_stats", chanlite_create_stats_module},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Undo a load that failed part way (out of memory, say): SQLite unloads the
** library then, so nothing registered may stay behind pointing into it. A
** function or module given no callbacks is deleted; the modules go in
** reverse order, so that the state goes last, with chanlite_statements. */
static void unregister_all(sqlite3 *db) {
  int i, j;
  for (i = 0; i < COUNT(function_groups); i++) {
    for (j = 0; j < *function_groups[i].n; j++) {
      sqlite3_create_function_v2(db, function_groups[i].fns[j].name, -1, SQLITE_UTF8, 0, 0, 0, 0,
                                 0);
    }
  }
  for (i = COUNT(modules) - 1; i >= 0; i--) {
    sqlite3_create_module_v2(db, modules[i].name, 0, 0, 0);
  }
}

#ifdef _WIN32
__declspec(dllexport)
#else
__attribute__((visibility("default")))
#endif
  int sqlite3_chanlite_init(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api) {
  Chanlite *c = 0;
  int rc;
  SQLITE_EXTENSION_INIT2(api);
  if (sqlite3_libversion_number() < CHANLITE_MIN_SQLITE) {
    *errmsg = sqlite3_mprintf("chanlite: needs SQLite %s or newer, this is %s",
                              CHANLITE_MIN_SQLITE_TEXT, sqlite3_libversion());
    return SQLITE_ERROR;
  }
  rc = chanlite_attach(db, &c, errmsg);
  if (rc != SQLITE_OK) unregister_all(db);
  return rc;
}

int chanlite_attach(sqlite3 *db, Chanlite **out, char **errmsg) {
  Chanlite *c;
  int i, rc = SQLITE_OK;
  c = sqlite3_malloc(sizeof *c);
  if (!c) return SQLITE_NOMEM;
  memset(c, 0, sizeof *c);
  c->db = db;
  chanlite_wake_open(c);
  c->fn = "chanlite";
  for (i = 0; i < COUNT(modules) && rc == SQLITE_OK; i++) {
    rc = modules[i].create(db, c, modules[i].name);
    if (rc != SQLITE_OK) {
      *errmsg = sqlite3_mprintf("chanlite: cannot register %s: %s", modules[i].name,
                                sqlite3_errmsg(db));
      if (i == 0) return rc; /* chanlite_statements freed c: nothing owns it now */
    }
  }
  for (i = 0; i < COUNT(function_groups) && rc == SQLITE_OK; i++) {
    rc = chanlite_register(db, c, function_groups[i].fns, *function_groups[i].n, errmsg);
  }
  *out = c;
  return rc;
}
