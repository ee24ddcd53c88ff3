/*
** Traffic counters and dead letters.
**
**   SELECT * FROM chanlite_stats;   -- channel, sent, received, expired,
**                                   -- full_send, full_group_send, depth,
**                                   -- oldest_age; the totals have channel NULL
**   SELECT chanlite_config('dead_letters', 1000);  -- keep the newest 1000
**   SELECT channel, reason, body FROM chanlite_dead;
**
** What a send+receive pair must pay for is kept where it already writes:
** the insert trigger counts `sent` in the chanlite_queue row it updates
** anyway, and received is derived (sent - depth - expired). What no trigger
** can tell apart is counted here, on the paths that are rare: a removal
** because the message expired (a receive removes messages too), a send
** refused because the queue was full (which stores nothing), and a put-back
** by channel_recv_batch (which the trigger counts as a send). Those go to
** chanlite_counter, a table of their own, so that the row every send writes
** stays narrow.
**
** Storage stays bounded: a queue's rows outlive its messages, for their
** counters, until the queue has been idle (nothing stored, nothing sent or
** refused) for `stats_retention` seconds (default 3600); then its counters
** are folded into the totals (the '' rows) and its rows go. Sends do that in
** passing, once a minute per connection and at most FOLD_PER_UPKEEP queues
** at a time; channel_trim() does all of it. Dead letters are off by
** default: `dead_letters` (the most rows kept) turns them on, and
** `dead_letter_retention` (seconds) ages them out. channel_flush() resets the
** counters and removes the dead letters.
*/
#include <stddef.h>
#include "chanlite.h"

/* Sends look for idle counters to fold at most this often, per connection
** (seconds of its clock): the look scans chanlite_queue. */
#define UPKEEP_INTERVAL 60.0
/* Bounds the write lock's hold time of one look. */
#define FOLD_PER_UPKEEP 2000

int chanlite_dead_letters_kept(Chanlite *c, sqlite3_int64 *kept) {
  double value = 0;
  int rc = chanlite_setting(c, "dead_letters", &value);
  *kept = (sqlite3_int64)value;
  return rc;
}

static int keep_newest_dead(Chanlite *c, sqlite3_int64 kept) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_DEAD_KEEP_NEWEST);
  if (!s) return c->err_code;
  sqlite3_bind_int64(s, 1, kept);
  return chanlite_step_done(c, s);
}

/* Run a statement bound to nothing, or to ?1 (and ?2), keeping any error. */
static int run_bound(Chanlite *c, int id, double t, sqlite3_int64 limit) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  int n;
  if (!s) return c->err_code;
  n = sqlite3_bind_parameter_count(s);
  if (n >= 1) sqlite3_bind_double(s, 1, t);
  if (n >= 2) sqlite3_bind_int64(s, 2, limit);
  return chanlite_step_done(c, s);
}

int chanlite_count_expired(Chanlite *c, double now, int limit) {
  sqlite3_int64 kept = 0;
  int rc = run_bound(c, CHANLITE_STMT_COUNT_EXPIRED, now, limit);
  if (rc == SQLITE_OK) rc = chanlite_dead_letters_kept(c, &kept);
  if (rc == SQLITE_OK && kept > 0) {
    rc = run_bound(c, CHANLITE_STMT_DEAD_EXPIRED, now, limit);
    if (rc == SQLITE_OK) rc = keep_newest_dead(c, kept);
  }
  return rc;
}

/* Keep one dead letter, then only the newest `kept`. Its channel is `name`
** followed by `local` (what follows the `!`; NULL when `name` is the full
** name); it was sent at `sent_at`, or when NULL at `now`. */
static int keep_dead(Chanlite *c, const char *name, int n_name, sqlite3_value *local,
                     const char *reason, sqlite3_value *sent_at, double now, double dead_at,
                     sqlite3_value *body, sqlite3_int64 kept) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_DEAD_ONE);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, name, n_name, SQLITE_STATIC);
  if (local) sqlite3_bind_value(s, 2, local);
  else sqlite3_bind_null(s, 2);
  sqlite3_bind_text(s, 3, reason, -1, SQLITE_STATIC);
  if (sent_at) sqlite3_bind_value(s, 4, sent_at);
  else sqlite3_bind_double(s, 4, now);
  sqlite3_bind_double(s, 5, dead_at);
  sqlite3_bind_value(s, 6, body);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK) rc = keep_newest_dead(c, kept);
  return rc;
}

int chanlite_count_expired_head(Chanlite *c, const ChannelName *ch, sqlite3_stmt *head) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_COUNT_EXPIRED_ONE);
  sqlite3_int64 kept = 0;
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK) rc = chanlite_dead_letters_kept(c, &kept);
  if (rc == SQLITE_OK && kept > 0) {
    /* head: id, local, expires_at, body, sent_at */
    rc = keep_dead(c, ch->full, ch->n_queue, sqlite3_column_value(head, 1), "expired",
                   sqlite3_column_value(head, 4), 0, sqlite3_column_double(head, 2),
                   sqlite3_column_value(head, 3), kept);
  }
  return rc;
}

/* Count sends refused because the queue was full: by_send by channel_send,
** by_group by group_send. No dead letters: see chanlite_count_full. */
int chanlite_count_refused(Chanlite *c, const char *queue, int n_queue, double now,
                           sqlite3_int64 by_send, sqlite3_int64 by_group) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_COUNT_FULL);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, queue, n_queue, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, by_send);
  sqlite3_bind_int64(s, 3, by_group);
  sqlite3_bind_double(s, 4, now);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK) {
    s = chanlite_stmt(c, CHANLITE_STMT_ENSURE_QUEUE_ROW);
    if (!s) return c->err_code;
    sqlite3_bind_text(s, 1, queue, n_queue, SQLITE_STATIC);
    rc = chanlite_step_done(c, s);
  }
  return rc;
}

int chanlite_count_full(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                        int by_group) {
  sqlite3_int64 kept = 0;
  int rc = chanlite_count_refused(c, ch->full, ch->n_queue, now, !by_group, by_group);
  if (rc == SQLITE_OK) rc = chanlite_dead_letters_kept(c, &kept);
  if (rc == SQLITE_OK && kept > 0) {
    rc = keep_dead(c, ch->full, ch->n_full, 0, "full", 0, now, now, msg, kept);
  }
  return rc;
}

/* See uncount_put_back_folded in sql/stats.sql for why two statements. */
int chanlite_uncount_put_back(Chanlite *c, const char *queue, int n_queue) {
  static const int uncount[] = {CHANLITE_STMT_UNCOUNT_PUT_BACK_FOLDED,
                                CHANLITE_STMT_UNCOUNT_PUT_BACK};
  size_t i;
  int rc = SQLITE_OK;
  for (i = 0; i < sizeof uncount / sizeof uncount[0] && rc == SQLITE_OK; i++) {
    sqlite3_stmt *s = chanlite_stmt(c, uncount[i]);
    if (!s) return c->err_code;
    sqlite3_bind_text(s, 1, queue, n_queue, SQLITE_STATIC);
    rc = chanlite_step_done(c, s);
  }
  return rc;
}

/* Fold the counters of idle queues into the totals, and drop dead letters
** past their retention. `limit` bounds the queues folded (-1: all). */
static int upkeep(Chanlite *c, double now, sqlite3_int64 limit) {
  static const int fold[] = {
    CHANLITE_STMT_MARK_IDLE_QUEUES,     CHANLITE_STMT_FOLD_IDLE_SENT,
    CHANLITE_STMT_FOLD_IDLE_COUNTERS,   CHANLITE_STMT_REMOVE_IDLE_QUEUES,
    CHANLITE_STMT_REMOVE_IDLE_COUNTERS,
  };
  double retention = 0, dead_retention = 0;
  size_t i;
  int rc = chanlite_setting(c, "stats_retention", &retention);
  if (rc == SQLITE_OK) rc = run_bound(c, CHANLITE_STMT_NOTE_ACTIVE_QUEUES, now, 0);
  for (i = 0; i < sizeof fold / sizeof fold[0] && rc == SQLITE_OK; i++) {
    rc = run_bound(c, fold[i], now - retention, limit);
  }
  if (rc == SQLITE_OK) rc = chanlite_setting(c, "dead_letter_retention", &dead_retention);
  if (rc == SQLITE_OK && dead_retention > 0) {
    rc = run_bound(c, CHANLITE_STMT_DEAD_OLDER_THAN, now - dead_retention, 0);
  }
  return rc;
}

int chanlite_stats_upkeep(Chanlite *c, double now) {
  /* A pinned clock may go back: start over from it. */
  if (now < c->next_upkeep && now >= c->next_upkeep - UPKEEP_INTERVAL) return SQLITE_OK;
  c->next_upkeep = now + UPKEEP_INTERVAL;
  return upkeep(c, now, FOLD_PER_UPKEEP);
}

int chanlite_stats_trim(Chanlite *c, double now) {
  return upkeep(c, now, -1);
}

int chanlite_stats_flush(Chanlite *c) {
  int rc = run_bound(c, CHANLITE_STMT_FLUSH_QUEUES, 0, 0);
  if (rc == SQLITE_OK) rc = run_bound(c, CHANLITE_STMT_FLUSH_COUNTERS, 0, 0);
  if (rc == SQLITE_OK) rc = run_bound(c, CHANLITE_STMT_FLUSH_DEAD, 0, 0);
  return rc;
}

/* A database made by a chanlite without counters has the old chanlite_queue
** and triggers (sql/schema.sql, just run, added the new tables): add the
** column, replace the triggers. Runs in the transaction of the call that
** found the schema out of date, so it happens once, whoever comes first. */
int chanlite_upgrade_schema(Chanlite *c) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_QUEUE_HAS_SENT);
  int found = 0, rc;
  if (!s) return c->err_code;
  rc = chanlite_step_exists(c, s, &found);
  if (rc != SQLITE_OK || found) return rc;
  rc = sqlite3_exec(c->db, chanlite_stmt_sql[CHANLITE_STMT_UPGRADE_QUEUE_SENT], 0, 0, 0);
  if (rc == SQLITE_OK) rc = sqlite3_exec(c->db, chanlite_schema_sql, 0, 0, 0);
  return rc == SQLITE_OK ? SQLITE_OK : chanlite_fail_sqlite(c, rc);
}
