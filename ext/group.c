/*
** Groups of channels.
**
**   SELECT group_add('room.1', 'w.abc!x');      -- 1
**   SELECT group_send('room.1', 'hello all');   -- members delivered to
**   SELECT group_discard('room.1', 'w.abc!x');  -- 1 if it was a member
**
** A membership expires `group_expiry` seconds after the latest group_add of
** that channel. group_send never fails because a member is full: it skips
** that member and returns how many it delivered to.
*/
#include <math.h>
#include <string.h>
#include "chanlite.h"

static int membership_expiry(Chanlite *c, double *seconds) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_GROUP_EXPIRY);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_double(s, 1, chanlite_default("group_expiry"));
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    rc = chanlite_stored_setting(c, "group_expiry", sqlite3_column_value(s, 0), seconds);
  } else {
    chanlite_fail_sqlite(c, rc);
  }
  sqlite3_reset(s);
  return rc;
}

static int group_and_channel(Chanlite *c, sqlite3_value **argv, const char **group, int *n_group,
                             ChannelName *ch) {
  int rc = chanlite_group_arg(c, argv[0], group, n_group);
  if (rc == SQLITE_OK) rc = chanlite_channel_arg(c, argv[1], ch);
  return rc;
}

static void fn_group_add(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  const char *group = 0;
  int n_group = 0;
  ChannelName ch;
  double seconds = 0, now = chanlite_time(c);
  sqlite3_stmt *s;
  int rc = group_and_channel(c, argv, &group, &n_group, &ch);
  (void)argc;
  if (rc == SQLITE_OK) {
    rc = chanlite_begin(c);
    if (rc == SQLITE_OK) rc = membership_expiry(c, &seconds);
    if (rc == SQLITE_OK) {
      s = chanlite_stmt(c, CHANLITE_STMT_GROUP_ADD);
      if (!s) rc = c->err_code;
      else {
        sqlite3_bind_text(s, 1, group, n_group, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, ch.full, ch.n_full, SQLITE_STATIC);
        sqlite3_bind_double(s, 3, now + seconds);
        rc = chanlite_step_done(c, s);
      }
    }
    rc = chanlite_end(c, rc);
  }
  if (rc == SQLITE_OK) sqlite3_result_int(ctx, 1);
  else chanlite_report(c, ctx);
}

/* Run one of the two discard statements; *removed (if given) says whether
** it deleted a row. */
static int discard(Chanlite *c, int id, const char *group, int n_group, const ChannelName *ch,
                   double now, int *removed) {
  sqlite3_stmt *s = chanlite_stmt(c, id);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, group, n_group, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, ch->full, ch->n_full, SQLITE_STATIC);
  if (sqlite3_bind_parameter_count(s) >= 3) sqlite3_bind_double(s, 3, now);
  rc = chanlite_step_done(c, s);
  if (removed) *removed = rc == SQLITE_OK && sqlite3_changes(c->db) > 0;
  return rc;
}

static void fn_group_discard(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  const char *group = 0;
  int n_group = 0, removed = 0;
  ChannelName ch;
  double now = chanlite_time(c);
  int rc = group_and_channel(c, argv, &group, &n_group, &ch);
  (void)argc;
  if (rc == SQLITE_OK) {
    rc = chanlite_begin(c);
    if (rc == SQLITE_OK) {
      rc = discard(c, CHANLITE_STMT_GROUP_DISCARD_EXPIRED, group, n_group, &ch, now, 0);
    }
    if (rc == SQLITE_OK)
      rc = discard(c, CHANLITE_STMT_GROUP_DISCARD, group, n_group, &ch, now, &removed);
    rc = chanlite_end(c, rc);
  }
  if (rc == SQLITE_OK) sqlite3_result_int(ctx, removed);
  else chanlite_report(c, ctx);
}

/* What one group_send reads once instead of once per member: the settings
** send_settings would read (expiry, the capacity, the capacity patterns,
** matched here with sqlite3_strglob, the same matcher as SQL's GLOB), and
** the depth of the queue the members in hand share: members are read in
** name order, so the `prefix!local` members of one process, all in the
** queue `prefix!`, come one after another. Anything out of the ordinary (a
** setting not a plain number, a pattern not plain TEXT, many patterns) is
** left to send_settings, member by member, so that its errors and its
** choices stay the only ones.
**
** Capacity stays exact: a member is taken into the run when the queue's
** depth, read when the queue changes and counted up for each member taken,
** is under its capacity. One that looks full ends the run, which is stored
** (flush_run), and goes through chanlite_store_message as channel_send's
** message does (expired rows removed, the depth read again); so does the
** first member after it. A run is stored by one INSERT ... SELECT of the
** members from its first to its last: one statement, and one statement
** journal, per run rather than per member, which is most of the cost of a
** copy (bench/results/neighbours.md). */
#define FANOUT_MAX_PATTERNS 32
#define FANOUT_MAX_PATTERN_BYTES 1000 /* well under SQLite's GLOB pattern limit */

typedef struct FanOut {
  const char *group;
  int n_group;
  sqlite3_value *msg;
  double now;
  int settings; /* 0: not read yet, 1: read, -1: send_settings per member */
  double expiry;
  sqlite3_int64 capacity; /* of a channel no pattern matches */
  int n_patterns;
  char *pattern[FANOUT_MAX_PATTERNS];
  sqlite3_int64 pattern_capacity[FANOUT_MAX_PATTERNS];
  char queue[CHANLITE_MAX_NAME + 1];                              /* whose depth is `depth` */
  int n_queue;                                                    /* 0: no queue in hand */
  int process_queue;                                              /* the queue is a `prefix!` */
  sqlite3_int64 depth;                                            /* counting the run's members */
  char first[CHANLITE_MAX_NAME + 1], last[CHANLITE_MAX_NAME + 1]; /* the run's */
  int n_first, n_last;
  int checked;                  /* the depth is as a full send left it: see fanout_send */
  int dead_letters;             /* 0: not read yet, 1: kept, -1: not kept */
  sqlite3_int64 full_uncounted; /* full members of the queue, not counted yet */
  sqlite3_int64 in_run;         /* members in the run, not stored yet */
  double run_expiry;            /* the run's members' expiry (all have the same) */
} FanOut;

static void fanout_free(FanOut *f) {
  int i;
  for (i = 0; i < f->n_patterns; i++) sqlite3_free(f->pattern[i]);
}

/* A stored count that send_settings would take as it is. */
static int plain_count(sqlite3_value *v, sqlite3_int64 *out) {
  int type = sqlite3_value_type(v);
  double d = sqlite3_value_double(v);
  if (type != SQLITE_INTEGER && type != SQLITE_FLOAT) return 0;
  if (!isfinite(d) || d < 0 || d != floor(d)) return 0;
  *out = (sqlite3_int64)d;
  return 1;
}

static int fanout_read_patterns(Chanlite *c, FanOut *f) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_GROUP_SEND_CAPACITIES);
  int rc;
  if (!s) return c->err_code;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const char *z = (const char *)sqlite3_column_text(s, 0);
    int n = sqlite3_column_bytes(s, 0);
    sqlite3_int64 capacity = 0;
    if (sqlite3_column_type(s, 0) != SQLITE_TEXT || n > FANOUT_MAX_PATTERN_BYTES ||
        (int)strlen(z ? z : "") != n || !plain_count(sqlite3_column_value(s, 1), &capacity) ||
        f->n_patterns == FANOUT_MAX_PATTERNS) {
      f->settings = -1;
      break;
    }
    f->pattern[f->n_patterns] = sqlite3_mprintf("%s", z);
    if (!f->pattern[f->n_patterns]) {
      sqlite3_reset(s);
      return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
    }
    f->pattern_capacity[f->n_patterns++] = capacity;
  }
  if (rc == SQLITE_DONE || rc == SQLITE_ROW) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

static int fanout_read_settings(Chanlite *c, FanOut *f) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_GROUP_SEND_DEFAULTS);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_double(s, 1, chanlite_default("expiry"));
  sqlite3_bind_double(s, 2, chanlite_default("capacity"));
  rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) {
    chanlite_fail_sqlite(c, rc);
    sqlite3_reset(s);
    return rc;
  }
  f->settings = 1;
  if (!plain_count(sqlite3_column_value(s, 1), &f->capacity) ||
      sqlite3_column_int64(s, 2) > FANOUT_MAX_PATTERNS) {
    f->settings = -1;
  }
  /* Its error, if any, is the one send_settings gives every member. */
  rc = chanlite_stored_setting(c, "expiry", sqlite3_column_value(s, 0), &f->expiry);
  sqlite3_reset(s);
  if (rc == SQLITE_OK && f->settings == 1) rc = fanout_read_patterns(c, f);
  return rc;
}

static int fanout_settings(Chanlite *c, FanOut *f, const ChannelName *ch, double *expiry,
                           sqlite3_int64 *capacity) {
  int rc = SQLITE_OK, i;
  if (f->settings == 0) rc = fanout_read_settings(c, f);
  if (rc != SQLITE_OK) return rc;
  if (f->settings < 0) return chanlite_send_settings(c, ch, expiry, capacity);
  *expiry = f->expiry;
  *capacity = f->capacity;
  for (i = 0; i < f->n_patterns; i++) {
    if (sqlite3_strglob(f->pattern[i], ch->full) == 0) {
      *capacity = f->pattern_capacity[i];
      break;
    }
  }
  return SQLITE_OK;
}

/* Store the run's copies. Every member from its first to its last was
** taken, so the statement must store exactly that many. */
static int flush_run(Chanlite *c, FanOut *f) {
  sqlite3_stmt *s;
  int rc;
  if (f->in_run == 0) return SQLITE_OK;
  s = chanlite_stmt(c, CHANLITE_STMT_GROUP_SEND_RUN);
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, f->group, f->n_group, SQLITE_STATIC);
  sqlite3_bind_double(s, 2, f->now);
  sqlite3_bind_text(s, 3, f->first, f->n_first, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, f->last, f->n_last, SQLITE_STATIC);
  sqlite3_bind_text(s, 5, f->queue, f->n_queue, SQLITE_STATIC);
  sqlite3_bind_int(s, 6, f->process_queue);
  sqlite3_bind_double(s, 7, f->now + f->run_expiry);
  sqlite3_bind_value(s, 8, f->msg);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK && sqlite3_changes(c->db) != f->in_run) {
    rc = chanlite_fail(c, SQLITE_CORRUPT, "group %.*s: %lld members to copy to, %d copies stored",
                       f->n_group, f->group, f->in_run, sqlite3_changes(c->db));
  }
  if (rc == SQLITE_OK) c->sent = 1;
  f->in_run = 0;
  return rc;
}

/* Count the queue's full members at once. With dead letters kept each one
** is counted with its copy instead (fanout_count_full). */
static int flush_full(Chanlite *c, FanOut *f) {
  int rc;
  if (f->full_uncounted == 0) return SQLITE_OK;
  rc = chanlite_count_refused(c, f->queue, f->n_queue, f->now, 0, f->full_uncounted);
  f->full_uncounted = 0;
  return rc;
}

static int fanout_count_full(Chanlite *c, FanOut *f, const ChannelName *ch) {
  if (f->dead_letters == 0) {
    sqlite3_int64 kept = 0;
    int rc = chanlite_dead_letters_kept(c, &kept);
    if (rc != SQLITE_OK) return rc;
    f->dead_letters = kept > 0 ? 1 : -1;
  }
  if (f->dead_letters > 0) return chanlite_count_full(c, ch, f->msg, f->now, 1);
  f->full_uncounted++;
  return SQLITE_OK;
}

/* Deliver one copy to ch, or find it full. */
static int fanout_send(Chanlite *c, FanOut *f, const ChannelName *ch, int *full) {
  double expiry = 0;
  sqlite3_int64 capacity = 0, id = 0;
  int rc = fanout_settings(c, f, ch, &expiry, &capacity), same_queue;
  if (rc != SQLITE_OK) return rc;
  same_queue = f->n_queue == ch->n_queue && memcmp(f->queue, ch->full, ch->n_queue) == 0;
  if (!same_queue) {
    rc = flush_run(c, f);
    if (rc == SQLITE_OK) rc = flush_full(c, f);
    f->n_queue = 0;
    f->checked = 0;
    if (rc == SQLITE_OK) rc = chanlite_queue_depth(c, ch, &f->depth);
    if (rc != SQLITE_OK) return rc;
    memcpy(f->queue, ch->full, ch->n_queue);
    f->n_queue = ch->n_queue;
    f->process_queue = ch->local != 0;
  }
  *full = 0;
  if (f->depth < capacity && f->depth >= 0) {
    if (f->in_run == 0) {
      memcpy(f->first, ch->full, ch->n_full);
      f->n_first = ch->n_full;
    }
    memcpy(f->last, ch->full, ch->n_full);
    f->n_last = ch->n_full;
    f->in_run++;
    f->depth++;
    f->run_expiry = expiry;
    f->checked = 0;
    return SQLITE_OK;
  }
  /* Once a full send has removed what had expired by `now` and counted the
  ** queue again, nothing stored since, doing it again for this member would
  ** find the same depth: it is full. */
  if (f->checked && f->depth >= capacity) {
    *full = 1;
    return SQLITE_OK;
  }
  rc = flush_run(c, f);
  if (rc == SQLITE_OK) rc = flush_full(c, f);
  if (rc == SQLITE_OK)
    rc = chanlite_store_message(c, ch, f->msg, f->now, expiry, capacity, &f->depth, &id, full);
  f->checked = rc == SQLITE_OK && *full;
  return rc;
}

/* Deliver to every live member, skipping full ones. Runs in a transaction. */
static int send_to_members(Chanlite *c, const char *group, int n_group, sqlite3_value *msg,
                           double now, sqlite3_int64 *delivered) {
  sqlite3_stmt *purge = chanlite_stmt(c, CHANLITE_STMT_GROUP_PURGE_EXPIRED);
  sqlite3_stmt *members;
  FanOut f;
  int rc;
  if (!purge) return c->err_code;
  sqlite3_bind_text(purge, 1, group, n_group, SQLITE_STATIC);
  sqlite3_bind_double(purge, 2, now);
  rc = chanlite_step_done(c, purge);
  if (rc != SQLITE_OK) return rc;

  members = chanlite_stmt(c, CHANLITE_STMT_GROUP_MEMBERS);
  if (!members) return c->err_code;
  memset(&f, 0, sizeof f);
  f.group = group;
  f.n_group = n_group;
  f.msg = msg;
  f.now = now;
  sqlite3_bind_text(members, 1, group, n_group, SQLITE_STATIC);
  sqlite3_bind_double(members, 2, now);
  for (;;) {
    ChannelName ch;
    int full = 0;
    const char *z;
    rc = sqlite3_step(members);
    if (rc == SQLITE_DONE) {
      rc = SQLITE_OK;
      break;
    }
    if (rc != SQLITE_ROW) {
      chanlite_fail_sqlite(c, rc);
      break;
    }
    if (sqlite3_column_type(members, 0) != SQLITE_TEXT) {
      rc = chanlite_fail(c, SQLITE_CORRUPT, "group %.*s has a member that is not TEXT", n_group,
                         group);
      break;
    }
    z = (const char *)sqlite3_column_text(members, 0);
    if (!z) {
      rc = chanlite_fail(c, SQLITE_NOMEM, "out of memory");
      break;
    }
    /* Names were checked by group_add; a row written some other way is
    ** checked again rather than trusted. */
    rc = chanlite_channel_text(c, z, sqlite3_column_bytes(members, 0), &ch);
    if (rc == SQLITE_OK) rc = fanout_send(c, &f, &ch, &full);
    if (rc == SQLITE_OK && full) rc = fanout_count_full(c, &f, &ch);
    if (rc != SQLITE_OK) break;
    if (!full) (*delivered)++;
  }
  sqlite3_reset(members);
  if (rc == SQLITE_OK) rc = flush_run(c, &f);
  if (rc == SQLITE_OK) rc = flush_full(c, &f);
  fanout_free(&f);
  return rc;
}

static void fn_group_send(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  const char *group = 0;
  int n_group = 0;
  sqlite3_int64 delivered = 0;
  double now = chanlite_time(c);
  int rc = chanlite_group_arg(c, argv[0], &group, &n_group);
  (void)argc;
  if (rc == SQLITE_OK) rc = chanlite_message_arg(c, argv[1]);
  if (rc == SQLITE_OK) {
    rc = chanlite_begin(c);
    if (rc == SQLITE_OK) rc = chanlite_purge_some(c, now);
    if (rc == SQLITE_OK) rc = send_to_members(c, group, n_group, argv[1], now, &delivered);
    rc = chanlite_end(c, rc);
  }
  if (rc == SQLITE_OK) sqlite3_result_int64(ctx, delivered);
  else chanlite_report(c, ctx);
}

const ChanliteFunction chanlite_group_functions[] = {
  {"group_add", 2, 2, "group_add(group, channel)", CHANLITE_WRITE, fn_group_add},
  {"group_discard", 2, 2, "group_discard(group, channel)", CHANLITE_WRITE, fn_group_discard},
  {"group_send", 2, 2, "group_send(group, message)", CHANLITE_WRITE, fn_group_send},
};
const int chanlite_group_function_count = (int)(sizeof chanlite_group_functions /
                                                sizeof chanlite_group_functions[0]);
