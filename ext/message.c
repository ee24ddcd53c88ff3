/*
** Sending and receiving.
**
**   SELECT channel_send('chat', 'hello');   -- 1, the new message's id
**   SELECT channel_recv('chat');            -- 'hello', or NULL if none
**   SELECT channel_send('w.abc!x', 'hi');   -- a process-specific channel
**   SELECT channel_recv('w.abc!');          -- oldest of every w.abc!... channel
**
** A message is any non-NULL TEXT or BLOB and comes back byte for byte, with
** its type. It expires `expiry` seconds after it is sent (the expiry in force
** then) and is never delivered after that. A channel (for `prefix!local`, the
** whole `prefix!`) holds at most its capacity of unexpired messages; a send
** over it fails with "chanlite: channel full: NAME" and SQLITE_CONSTRAINT,
** and is counted as refused (ext/stats.c). Why capacity stays exact and a
** message is delivered at most once: docs/design.md, Sending, Receiving and
** Guarantees.
*/
#include "chanlite.h"

/* Expiry and capacity in force for one channel. */
int chanlite_send_settings(Chanlite *c, const ChannelName *ch, double *expiry,
                           sqlite3_int64 *capacity) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_SEND_SETTINGS);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, ch->full, ch->n_full, SQLITE_STATIC);
  sqlite3_bind_double(s, 2, chanlite_default("expiry"));
  sqlite3_bind_double(s, 3, chanlite_default("capacity"));
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    double n = 0;
    rc = chanlite_stored_setting(c, "expiry", sqlite3_column_value(s, 0), expiry);
    if (rc == SQLITE_OK)
      rc = chanlite_stored_setting(c, "capacity", sqlite3_column_value(s, 1), &n);
    *capacity = (sqlite3_int64)n;
  } else {
    chanlite_fail_sqlite(c, rc);
  }
  sqlite3_reset(s);
  return rc;
}

/* Rows stored for a queue, expired ones included (see chanlite_queue). */
int chanlite_queue_depth(Chanlite *c, const ChannelName *ch, sqlite3_int64 *depth) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_QUEUE_DEPTH);
  int rc;
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
  rc = sqlite3_step(s);
  *depth = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) rc = SQLITE_OK;
  else chanlite_fail_sqlite(c, rc);
  sqlite3_reset(s);
  return rc;
}

/* The depth counter is kept by triggers, but a database edited by hand or
** by another program can hold a wrong one. Two wrongs that matter are cheap
** to see where they matter: a count for an empty queue (every send refused
** as full, for ever) and a negative one (too many admitted). Either is
** counted again. Runs only for a queue that looks full or negative. */
static int check_depth(Chanlite *c, const ChannelName *ch, sqlite3_int64 *depth) {
  static const int recount[] = {CHANLITE_STMT_QUEUE_FORGET, CHANLITE_STMT_QUEUE_RECOUNT};
  sqlite3_stmt *s;
  int rc, found = 0, i;
  if (*depth >= 0) {
    s = chanlite_stmt(c, CHANLITE_STMT_PEEK_QUEUE);
    if (!s) return c->err_code;
    sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
    rc = chanlite_step_exists(c, s, &found);
    if (rc != SQLITE_OK || found) return rc;
  }
  for (i = 0; i < 2; i++) {
    s = chanlite_stmt(c, recount[i]);
    if (!s) return c->err_code;
    sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
    rc = chanlite_step_done(c, s);
    if (rc != SQLITE_OK) return rc;
  }
  return chanlite_queue_depth(c, ch, depth);
}

/* Store one message unless its queue is full, given the channel's settings
** and its queue's depth, which it keeps up to date (the insert's trigger
** adds one), so that a caller sending to many channels of one queue reads
** the depth once. Runs inside a transaction. */
int chanlite_store_message(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                           double expiry, sqlite3_int64 capacity, sqlite3_int64 *depth,
                           sqlite3_int64 *id, int *full) {
  sqlite3_stmt *s;
  int rc = SQLITE_OK;
  if (*depth >= capacity || *depth < 0) {
    /* The count includes expired rows: remove them, then count again. */
    rc = chanlite_purge_expired(c, now, 0);
    if (rc == SQLITE_OK) rc = chanlite_queue_depth(c, ch, depth);
    if (rc == SQLITE_OK && (*depth >= capacity || *depth < 0)) rc = check_depth(c, ch, depth);
  }
  *full = *depth >= capacity;
  if (rc != SQLITE_OK || *full) return rc;

  s = chanlite_stmt(c, CHANLITE_STMT_INSERT_MESSAGE);
  if (!s) return c->err_code;
  sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
  if (ch->local) sqlite3_bind_text(s, 2, ch->local, ch->n_local, SQLITE_STATIC);
  else sqlite3_bind_null(s, 2);
  sqlite3_bind_double(s, 3, now);
  sqlite3_bind_double(s, 4, now + expiry);
  sqlite3_bind_value(s, 5, msg);
  rc = chanlite_step_done(c, s);
  if (rc == SQLITE_OK) {
    *id = sqlite3_last_insert_rowid(c->db);
    (*depth)++;
    c->sent = 1;
  }
  return rc;
}

/* Store one message unless its queue is full. Runs inside a transaction. */
int chanlite_send_one(Chanlite *c, const ChannelName *ch, sqlite3_value *msg, double now,
                      sqlite3_int64 *id, int *full) {
  double expiry = 0;
  sqlite3_int64 capacity = 0, depth = 0;
  int rc = chanlite_send_settings(c, ch, &expiry, &capacity);
  if (rc == SQLITE_OK) rc = chanlite_queue_depth(c, ch, &depth);
  if (rc == SQLITE_OK)
    rc = chanlite_store_message(c, ch, msg, now, expiry, capacity, &depth, id, full);
  return rc;
}

/* A name ending in `!` receives from its whole prefix. */
static int whole_queue(const ChannelName *ch) {
  return ch->local == 0 || ch->n_local == 0;
}

static sqlite3_stmt *bind_queue(Chanlite *c, const ChannelName *ch, int queue_id, int local_id) {
  int whole = whole_queue(ch);
  sqlite3_stmt *s = chanlite_stmt(c, whole ? queue_id : local_id);
  if (!s) return 0;
  sqlite3_bind_text(s, 1, ch->full, ch->n_queue, SQLITE_STATIC);
  if (!whole) sqlite3_bind_text(s, 2, ch->local, ch->n_local, SQLITE_STATIC);
  return s;
}

/* Is anything (even expired) queued? Takes no write lock. No chanlite
** tables yet means nothing is. */
int chanlite_peek(Chanlite *c, const ChannelName *ch, int *found) {
  sqlite3_stmt *s = bind_queue(c, ch, CHANLITE_STMT_PEEK_QUEUE, CHANLITE_STMT_PEEK_LOCAL);
  int rc = s ? chanlite_step_exists(c, s, found) : c->err_code;
  if (!s) *found = 0;
  if (rc != SQLITE_OK && chanlite_schema_missing(c)) rc = SQLITE_OK;
  return rc;
}

/* Find the oldest unexpired message, removing expired ones ahead of it.
** On success *row is the head statement positioned on it (columns: id,
** local, expires_at, body, sent_at), or NULL if there is none; the caller reads it
** and then calls chanlite_pop_done(). Runs inside a transaction. */
int chanlite_pop(Chanlite *c, const ChannelName *ch, double now, sqlite3_stmt **row) {
  sqlite3_stmt *s;
  int rc;
  *row = 0;
  for (;;) {
    s = bind_queue(c, ch, CHANLITE_STMT_HEAD_OF_QUEUE, CHANLITE_STMT_HEAD_OF_LOCAL);
    if (!s) return c->err_code;
    rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      sqlite3_reset(s);
      return SQLITE_OK;
    }
    if (rc != SQLITE_ROW) {
      chanlite_fail_sqlite(c, rc);
      sqlite3_reset(s);
      return rc;
    }
    if (sqlite3_column_double(s, 2) > now) {
      int type = sqlite3_column_type(s, 3);
      if (type != SQLITE_TEXT && type != SQLITE_BLOB) {
        /* Not stored by chanlite: refused, not delivered (a NULL would
        ** read as "no message"), and left for whoever put it there. */
        rc = chanlite_fail(c, SQLITE_CORRUPT,
                           "%s(): message %lld in chanlite_message is %s, "
                           "not TEXT or BLOB, so chanlite did not store it; delete it with "
                           "DELETE FROM chanlite_message WHERE id = %lld",
                           c->fn, sqlite3_column_int64(s, 0), chanlite_type_name(type),
                           sqlite3_column_int64(s, 0));
        sqlite3_reset(s);
        return rc;
      }
      *row = s;
      return SQLITE_OK;
    }
    rc = chanlite_count_expired_head(c, ch, s); /* expired: never delivered */
    if (rc == SQLITE_OK) rc = chanlite_pop_done(c, s);
    else sqlite3_reset(s);
    if (rc != SQLITE_OK) return rc;
  }
}

int chanlite_pop_done(Chanlite *c, sqlite3_stmt *row) {
  sqlite3_int64 id = sqlite3_column_int64(row, 0);
  sqlite3_stmt *del;
  c->removed = 1;
  c->removed_bytes += sqlite3_column_bytes(row, 3);
  sqlite3_reset(row);
  del = chanlite_stmt(c, CHANLITE_STMT_DELETE_MESSAGE);
  if (!del) return c->err_code;
  sqlite3_bind_int64(del, 1, id);
  return chanlite_step_done(c, del);
}

static void fn_send(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  ChannelName ch;
  sqlite3_int64 id = 0;
  int full = 0;
  double now = chanlite_time(c);
  int rc = chanlite_channel_arg(c, argv[0], &ch);
  (void)argc;
  if (rc == SQLITE_OK) rc = chanlite_message_arg(c, argv[1]);
  if (rc == SQLITE_OK) {
    rc = chanlite_begin(c);
    if (rc == SQLITE_OK) rc = chanlite_purge_some(c, now);
    if (rc == SQLITE_OK) rc = chanlite_send_one(c, &ch, argv[1], now, &id, &full);
    /* The refusal is counted, and committed, although the call fails. */
    if (rc == SQLITE_OK && full) rc = chanlite_count_full(c, &ch, argv[1], now, 0);
    rc = chanlite_end(c, rc);
    if (rc == SQLITE_OK && full) {
      rc = chanlite_fail(c, SQLITE_CONSTRAINT, "channel full: %.*s", ch.n_full, ch.full);
    }
  }
  if (rc == SQLITE_OK) sqlite3_result_int64(ctx, id);
  else chanlite_report(c, ctx);
}

static void fn_recv(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  ChannelName ch;
  sqlite3_stmt *row = 0;
  int found = 0;
  double now = chanlite_time(c);
  int rc = chanlite_channel_arg(c, argv[0], &ch);
  (void)argc;
  /* Refused in a node even when the queue is empty: a client must not find
  ** its mistake only once a message arrives. */
  if (rc == SQLITE_OK) rc = chanlite_node_guard(c);
  if (rc == SQLITE_OK) rc = chanlite_peek(c, &ch, &found);
  if (rc == SQLITE_OK && found) {
    rc = chanlite_begin(c);
    if (rc == SQLITE_OK) rc = chanlite_pop(c, &ch, now, &row);
    if (rc == SQLITE_OK && row) {
      sqlite3_result_value(ctx, sqlite3_column_value(row, 3));
      rc = chanlite_pop_done(c, row);
    }
    rc = chanlite_end(c, rc);
  }
  if (rc != SQLITE_OK) chanlite_report(c, ctx);
  else if (!row) sqlite3_result_null(ctx);
}

const ChanliteFunction chanlite_message_functions[] = {
  {"channel_send", 2, 2, "channel_send(channel, message)", CHANLITE_WRITE, fn_send},
  {"channel_recv", 1, 1, "channel_recv(channel)", CHANLITE_WRITE, fn_recv},
};
const int chanlite_message_function_count = (int)(sizeof chanlite_message_functions /
                                                  sizeof chanlite_message_functions[0]);
