/*
** chanlite internal header: the per-connection state and the helpers that
** the files of ext/ share. Nothing here is exported; the only public symbol
** of the extension is sqlite3_chanlite_init (ext/chanlite.c).
*/
#ifndef CHANLITE_H
#define CHANLITE_H

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#include "chanlite_sql.h"

/* "v" and meson.build's project(version:), passed by meson.build: the version
** has one home. */
#ifndef CHANLITE_VERSION
#error "CHANLITE_VERSION is defined by meson.build (-DCHANLITE_VERSION=\"v...\")"
#endif

/* 3.31.0 is Django 5.2's minimum too; it has SQLITE_DIRECTONLY (3.30),
** SQLITE_INNOCUOUS and sqlite3_vtab_config(SQLITE_VTAB_DIRECTONLY) (3.31). */
#define CHANLITE_MIN_SQLITE 3031000
#define CHANLITE_MIN_SQLITE_TEXT "3.31.0"

/* The WAL size that a connection chanlite opens itself truncates the WAL to
** after a checkpoint reset it, when the caller's connection sets none: just
** above what SQLite's default auto-checkpoint (1,000 pages of 4 KB) lets the
** WAL reach, so steady traffic does not truncate and regrow it. */
#define CHANLITE_JOURNAL_SIZE_LIMIT (4 * 1024 * 1024)
/* SQLite's default wal_autocheckpoint, for channel_recv_batch's second
** connection until the caller's is read (ext/vtab.c, ext/disk.c). */
#define SIDE_DEFAULT_AUTOCHECKPOINT 1000

/* Names are shorter than 100 characters, as in Channels. */
#define CHANLITE_MAX_NAME 99

typedef struct Chanlite Chanlite;
typedef struct ChannelName ChannelName;

/* One per connection, owned by the chanlite_statements module and freed
** when the connection closes (see ext/statements.c). */
struct Chanlite {
  sqlite3 *db;
  sqlite3_stmt *stmt[CHANLITE_STMT_COUNT]; /* prepared on first use */
  int anchored;                            /* chanlite_statements is connected: caching is safe */
  int orphaned;                /* its module is gone; freed when the table disconnects */
  int own_txn;                 /* this call began the transaction (vs. a savepoint) */
  int clock_pinned;            /* chanlite_clock(t) is in force */
  double clock;                /* the pinned time, Unix seconds */
  int err_code;                /* error of the call under way, SQLite result code */
  char *err;                   /* its message, without the "chanlite: " prefix */
  const char *fn;              /* name of the SQL function under way, for messages */
  Chanlite *side;              /* a second connection for channel_recv_batch (vtab.c) */
  int sent;                    /* this call stored a message: ring on commit (wake.c) */
  int ring_on_commit;          /* a send joined the caller's transaction (wake.c) */
  int wal_hooked;              /* our WAL hook was installed (wake.c) */
  int autocheckpoint;          /* what SQLite's own WAL hook would checkpoint at */
  int batch_side;              /* this is a Chanlite's `side`: keeps its own WAL hook */
  int next_restart;            /* WAL frames at which to try a restart again (disk.c) */
  int restart_failures;        /* restarts given up in a row, for the backoff (disk.c) */
  int wal_frames;              /* the WAL's size at this batch connection's last commit */
  double restart_deadline;     /* when a restart's wait ends (disk.c) */
  int bell_fd;                 /* the bell, open for ringing; -1 not yet, -2 cannot */
  int watch_fd;                /* inotify on the bell, for channel_wait; likewise */
  long pid;                    /* the process that loaded it: calls after a fork() are refused */
  int schema_verified;         /* the chanlite tables are chanlite's (schema.c) */
  int schema_reprepares;       /* schema_check's re-preparations when verified */
  double next_upkeep;          /* when a send next folds idle counters (stats.c) */
  int removed;                 /* this call removed messages: reclaim pages (disk.c) */
  sqlite3_int64 removed_bytes; /* their bodies' size, where known */
  int page_size;               /* the database's, read once; 0 not yet (disk.c) */
  int checkpoint_due;          /* a batch connection's checkpoint is unfinished (disk.c) */
  int busy_timeout_ms;         /* chanlite's busy handler: how long it waits (transaction.c) */
  sqlite3_int64 busy_slept_us; /* and how long it has slept for the current lock */
  sqlite3_int64 busy_since_us; /* when it began waiting for it (the VFS's clock), or -1 */
};

/* A validated channel name. For `prefix!local`, `queue` is `prefix!` and
** `local` what follows the `!` (possibly empty); otherwise `local` is NULL. */
struct ChannelName {
  const char *full;
  int n_full;
  int n_queue;
  const char *local;
  int n_local;
};

/* errors.c */
int chanlite_fail(Chanlite *c, int code, const char *fmt, ...);
int chanlite_fail_sqlite(Chanlite *c, int rc);
void chanlite_report(Chanlite *c, sqlite3_context *ctx);
void chanlite_clear_error(Chanlite *c);
const char *chanlite_type_name(int type);

/* names.c */
int chanlite_channel_arg(Chanlite *c, sqlite3_value *v, ChannelName *out);
int chanlite_channel_text(Chanlite *c, const char *z, int n, ChannelName *out);
int chanlite_group_arg(Chanlite *c, sqlite3_value *v, const char **z, int *n);
int chanlite_message_arg(Chanlite *c, sqlite3_value *v);

/* statements.c */
sqlite3_stmt *chanlite_stmt(Chanlite *c, int id);
int chanlite_step_done(Chanlite *c, sqlite3_stmt *s);
int chanlite_step_exists(Chanlite *c, sqlite3_stmt *s, int *found);
int chanlite_create_statements_module(sqlite3 *db, Chanlite *c, const char *name);

/* transaction.c */
int chanlite_begin(Chanlite *c);
int chanlite_end(Chanlite *c, int rc);
int chanlite_schema_missing(Chanlite *c);
int chanlite_has_tables(Chanlite *c);
void chanlite_busy_wait(Chanlite *c, int timeout_ms);

/* schema.c */
int chanlite_schema_verify(Chanlite *c);

/* config.c */
double chanlite_time(Chanlite *c);
double chanlite_default(const char *key);
int chanlite_stored_setting(Chanlite *c, const char *key, sqlite3_value *v, double *out);
int chanlite_setting(Chanlite *c, const char *key, double *value);

/* message.c */
int chanlite_send_settings(Chanlite *c, const ChannelName *ch, double *expiry,
                           sqlite3_int64 *capacity);
int chanlite_queue_depth(Chanlite *c, const ChannelName *ch, sqlite3_int64 *depth);
int chanlite_store_message(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                           double expiry, sqlite3_int64 capacity, sqlite3_int64 *depth,
                           sqlite3_int64 *id, int *full);
int chanlite_send_one(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                      sqlite3_int64 *id, int *full);
int chanlite_peek(Chanlite *c, const ChannelName *ch, int *found);
int chanlite_pop(Chanlite *c, const ChannelName *ch, double now, sqlite3_stmt **row);
int chanlite_pop_done(Chanlite *c, sqlite3_stmt *row);

/* maintenance.c */
int chanlite_purge_some(Chanlite *c, double now);
int chanlite_purge_expired(Chanlite *c, double now, sqlite3_int64 *removed);

/* stats.c: counters and dead letters, on the paths no trigger tells apart */
int chanlite_count_expired(Chanlite *c, double now, int limit);
int chanlite_count_expired_head(Chanlite *c, const ChannelName *ch, sqlite3_stmt *head);
int chanlite_count_full(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                        int by_group);
int chanlite_count_refused(Chanlite *c, const char *queue, int n_queue, double now,
                           sqlite3_int64 by_send, sqlite3_int64 by_group);
int chanlite_dead_letters_kept(Chanlite *c, sqlite3_int64 *kept);
int chanlite_uncount_put_back(Chanlite *c, const char *queue, int n_queue);
int chanlite_stats_upkeep(Chanlite *c, double now);
int chanlite_stats_trim(Chanlite *c, double now);
int chanlite_stats_flush(Chanlite *c);
int chanlite_upgrade_schema(Chanlite *c);

/* disk.c */
int chanlite_disk_is_blank(Chanlite *c, int *blank);
void chanlite_disk_make_incremental(Chanlite *c);
int chanlite_disk_reclaim(Chanlite *c);
int chanlite_disk_reclaim_all(Chanlite *c);
void chanlite_disk_watch_side(Chanlite *side);
void chanlite_disk_finish_checkpoint(Chanlite *side);
void chanlite_disk_checkpoint(Chanlite *c, sqlite3 *db, const char *zDb, int frames);
void chanlite_disk_between_batches(Chanlite *c);

/* node.c: chanlite inside a dqlite node */
int chanlite_in_node(void);
int chanlite_node_guard(Chanlite *c);

/* wake.c */
void chanlite_watch_commit(Chanlite *c);
void chanlite_after_commit(Chanlite *c, int own_txn);
void chanlite_unwatch_commits(Chanlite *c);
double chanlite_monotonic(void);
void chanlite_wake_close(Chanlite *c);
void chanlite_wake_open(Chanlite *c);
int chanlite_check_process(Chanlite *c);
/* Registration: each concern registers its own SQL functions and modules. */
typedef void (*chanlite_fn)(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv);
typedef struct ChanliteFunction {
  const char *name;
  int min_args, max_args;
  const char *usage; /* for wrong-argument-count errors */
  int flags;
  chanlite_fn fn;
} ChanliteFunction;
int chanlite_register(sqlite3 *db, Chanlite *c, const ChanliteFunction *fns, int n, char **errmsg);

extern const ChanliteFunction chanlite_message_functions[];
extern const int chanlite_message_function_count;
extern const ChanliteFunction chanlite_group_functions[];
extern const int chanlite_group_function_count;
extern const ChanliteFunction chanlite_maintenance_functions[];
extern const int chanlite_maintenance_function_count;
extern const ChanliteFunction chanlite_config_functions[];
extern const int chanlite_config_function_count;
extern const ChanliteFunction chanlite_wake_functions[];
extern const int chanlite_wake_function_count;
/* Each registers one virtual table module as `name` (ext/chanlite.c's list
** of modules names them all). */
typedef int (*chanlite_module_create)(sqlite3 *db, Chanlite *c, const char *name);
int chanlite_create_batch_module(sqlite3 *db, Chanlite *c, const char *name);
int chanlite_create_channels_module(sqlite3 *db, Chanlite *c, const char *name);
int chanlite_create_groups_module(sqlite3 *db, Chanlite *c, const char *name);
int chanlite_create_stats_module(sqlite3 *db, Chanlite *c, const char *name);

/* chanlite.c: register everything on a connection; *out is its state. */
int chanlite_attach(sqlite3 *db, Chanlite **out, char **errmsg);

/* Flags. Write functions are DIRECTONLY so that a trigger, view or generated
** column in a database file cannot call them; none is DETERMINISTIC, since
** each reads or changes the database. */
#define CHANLITE_WRITE (SQLITE_UTF8 | SQLITE_DIRECTONLY)

#endif
