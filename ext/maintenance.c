/*
** Expiry clean-up and flush.
**
**   SELECT channel_trim();    -- expired messages and memberships removed
**   SELECT channel_flush();   -- every message and membership removed
**
** No separate job is needed: receives remove the expired messages at the
** head of their queue, every send removes a few expired messages anywhere,
** and a send to a full queue removes them all before it counts again.
** channel_trim() is for giving space back at a time of your choosing: it
** and channel_flush() also give every free page back to the file system
** (on a database with auto-vacuum, see disk.c); trim also folds idle
** channels' counters into the totals (ext/stats.c).
*/
#include "chanlite.h"

/* How many expired messages a send removes in passing: enough to keep up
** with any rate at which messages can expire (each send adds one), small
** enough to keep the send's hold on the write lock short. */
#define PURGE_PER_SEND 16

int chanlite_purge_some(Chanlite *c, double now) {
  sqlite3_stmt *probe = chanlite_stmt(c, CHANLITE_STMT_ANY_EXPIRED);
  sqlite3_stmt *s;
  int rc = chanlite_stats_upkeep(c, now), found = 0;
  if (rc != SQLITE_OK) return rc;
  if (!probe) return c->err_code;
  sqlite3_bind_double(probe, 1, now);
  rc = chanlite_step_exists(c, probe, &found);
  if (rc != SQLITE_OK || !found) return rc;
  rc = chanlite_count_expired(c, now, PURGE_PER_SEND);
  if (rc != SQLITE_OK) return rc;
  s = chanlite_stmt(c, CHANLITE_STMT_PURGE_SOME_EXPIRED);
  if (!s) return c->err_code;
  c->removed = 1;
  sqlite3_bind_double(s, 1, now);
  sqlite3_bind_int(s, 2, PURGE_PER_SEND);
  return chanlite_step_done(c, s);
}

/* Run a DELETE bound to `now` (or to nothing), adding what it removed. */
static int delete_rows(Chanlite *c, int id, double now, sqlite3_int64 *removed) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  int rc;
  if (!s) return c->err_code;
  if (sqlite3_bind_parameter_count(s) > 0) sqlite3_bind_double(s, 1, now);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK && removed) *removed += sqlite3_changes(c->db);
  return rc;
}

/* Expired messages are counted (and kept as dead letters) before they go. */
int chanlite_purge_expired(Chanlite *c, double now, sqlite3_int64 *removed) {
  int rc = chanlite_count_expired(c, now, -1);
  if (rc != SQLITE_OK) return rc;
  c->removed = 1;
  return delete_rows(c, CHANLITE_STMT_PURGE_EXPIRED_MESSAGES, now, removed);
}

/* The count it returns is of messages and memberships; counters, idle
** counter rows and dead letters are bookkeeping, not counted. */
static void trim_or_flush(Chanlite *c, sqlite3_context *ctx, int flush) {
  sqlite3_int64 removed = 0;
  double now = chanlite_time(c);
  int rc = chanlite_begin(c);
  if (flush) {
    if (rc == SQLITE_OK) rc = delete_rows(c, CHANLITE_STMT_FLUSH_MESSAGES, now, &removed);
    if (rc == SQLITE_OK) rc = delete_rows(c, CHANLITE_STMT_FLUSH_GROUPS, now, &removed);
    if (rc == SQLITE_OK) rc = chanlite_stats_flush(c);
  } else {
    if (rc == SQLITE_OK) rc = chanlite_purge_expired(c, now, &removed);
    if (rc == SQLITE_OK) rc = delete_rows(c, CHANLITE_STMT_PURGE_EXPIRED_GROUPS, now, &removed);
    if (rc == SQLITE_OK) rc = chanlite_stats_trim(c, now);
  }
  if (rc == SQLITE_OK) rc = chanlite_disk_reclaim_all(c);
  rc = chanlite_end(c, rc);
  if (rc == SQLITE_OK) sqlite3_result_int64(ctx, removed);
  else chanlite_report(c, ctx);
}

static void fn_trim(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  (void)argv;
  trim_or_flush(c, ctx, 0);
}

/* Flush empties everything, counters and dead letters too: it is how tests
** start from nothing, and what an operator asks for when they flush. */
static void fn_flush(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  (void)argv;
  trim_or_flush(c, ctx, 1);
}

const ChanliteFunction chanlite_maintenance_functions[] = {
  {"channel_trim", 0, 0, "channel_trim()", CHANLITE_WRITE, fn_trim},
  {"channel_flush", 0, 0, "channel_flush()", CHANLITE_WRITE, fn_flush},
};
const int chanlite_maintenance_function_count = (int)(sizeof chanlite_maintenance_functions /
                                                      sizeof chanlite_maintenance_functions[0]);
