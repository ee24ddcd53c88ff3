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

/* Deliver to every live member, skipping full ones. Runs in a transaction. */
static int send_to_members(Chanlite *c, const char *group, int n_group, sqlite3_value *msg,
                           double now, sqlite3_int64 *delivered) {
  sqlite3_stmt *purge = chanlite_stmt(c, CHANLITE_STMT_GROUP_PURGE_EXPIRED);
  sqlite3_stmt *members;
  int rc;
  if (!purge) return c->err_code;
  sqlite3_bind_text(purge, 1, group, n_group, SQLITE_STATIC);
  sqlite3_bind_double(purge, 2, now);
  rc = chanlite_step_done(c, purge);
  if (rc != SQLITE_OK) return rc;

  members = chanlite_stmt(c, CHANLITE_STMT_GROUP_MEMBERS);
  if (!members) return c->err_code;
  sqlite3_bind_text(members, 1, group, n_group, SQLITE_STATIC);
  sqlite3_bind_double(members, 2, now);
  for (;;) {
    ChannelName ch;
    sqlite3_int64 id = 0;
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
    if (rc == SQLITE_OK) rc = chanlite_send_one(c, &ch, msg, now, &id, &full);
    if (rc == SQLITE_OK && full) rc = chanlite_count_full(c, &ch, msg, now, 1);
    if (rc != SQLITE_OK) break;
    if (!full) (*delivered)++;
  }
  sqlite3_reset(members);
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
