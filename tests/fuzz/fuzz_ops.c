/*
** libFuzzer target: sequences of channel-layer operations, checked against
** a model.
**
** Each input byte pair is one operation on a small world: channels a, b,
** p!x, p!y, q!z (receivable also as the prefixes p! and q!), groups g0 and
** g1, a pinned clock, and capacity and expiry settings. Operations: send,
** receive, recv_batch (reading all rows, or one and dropping the rest),
** group_add, group_discard, group_send, flush, trim, moving the clock,
** changing capacity or expiry, BEGIN / COMMIT / ROLLBACK, listing
** chanlite_channels, and channel_wait with no timeout. The model knows which messages are queued, in what
** order, and when each expires, so every result is checked exactly:
**
**   - a receive returns the oldest unexpired message of its channel (or of
**     its whole prefix), byte for byte and with its type, or NULL when there
**     is none: no message is delivered twice, none out of order, none lost;
**   - a send fails with "channel full" exactly when the queue holds
**     capacity unexpired messages; group_send delivers to the members that
**     are not full and says how many;
**   - a rolled-back transaction undoes what it did (received messages come
**     back);
**   - at the end every acknowledged, unexpired, undelivered message is
**     received, and the depth counters match the rows.
** Any difference aborts, which libFuzzer reports as a crash.
*/
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"

#define MAX_MSGS 600
#define MAX_OPS 64
#define N_SEND 5
#define N_RECV 7
#define N_GROUPS 2

static const char *const names[N_RECV] = {"a", "b", "p!x", "p!y", "q!z", "p!", "q!"};
static const char *const queue_of[N_SEND] = {"a", "b", "p!", "p!", "q!"};
static const char *const groups[N_GROUPS] = {"g0", "g1"};

typedef struct Msg {
  int chan; /* index into names, < N_SEND */
  int no;   /* payload number */
  int blob; /* sent as BLOB (with a NUL inside), else TEXT */
  double expires_at;
  int queued;
} Msg;

typedef struct Model {
  Msg msgs[MAX_MSGS]; /* in send order, which is FIFO order */
  int n;
  int member[N_GROUPS][N_SEND];
  int capacity;
  double expiry;
} Model;

static Model model, snapshot;
static double now;
static int payload_counter;

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "chanlite fuzz_ops: %s %s\n", what, detail ? detail : "");
  abort();
}

/* A receive name takes a message sent to channel c. */
static int matches(int r, int c) {
  if (r < N_SEND) return r == c;
  return strcmp(queue_of[c], names[r]) == 0;
}

static int live(const Msg *m) {
  return m->queued && m->expires_at > now;
}

static int unexpired_in_queue(int c) {
  int i, count = 0;
  for (i = 0; i < model.n; i++) {
    if (live(&model.msgs[i]) && strcmp(queue_of[model.msgs[i].chan], queue_of[c]) == 0) count++;
  }
  return count;
}

/* The oldest message a receive by name r gets, or -1. */
static int expected_head(int r) {
  int i;
  for (i = 0; i < model.n; i++) {
    if (live(&model.msgs[i]) && matches(r, model.msgs[i].chan)) return i;
  }
  return -1;
}

static void bind_payload(sqlite3_stmt *s, int i, int no, int blob) {
  char text[32];
  unsigned char bytes[6];
  if (blob) {
    memcpy(bytes, &no, 4);
    bytes[4] = 0;
    bytes[5] = 0xff;
    sqlite3_bind_blob(s, i, bytes, sizeof bytes, SQLITE_TRANSIENT);
  } else {
    snprintf(text, sizeof text, "m%d", no);
    sqlite3_bind_text(s, i, text, -1, SQLITE_TRANSIENT);
  }
}

/* Column col of s holds exactly message m's payload. */
static void check_payload(sqlite3_stmt *s, int col, const Msg *m) {
  char text[32];
  const void *p = sqlite3_column_blob(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (m->blob) {
    unsigned char bytes[6];
    memcpy(bytes, &m->no, 4);
    bytes[4] = 0;
    bytes[5] = 0xff;
    if (sqlite3_column_type(s, col) != SQLITE_BLOB || n != 6 || memcmp(p, bytes, 6) != 0) {
      fail("received the wrong message (expected a BLOB)", 0);
    }
  } else {
    snprintf(text, sizeof text, "m%d", m->no);
    if (sqlite3_column_type(s, col) != SQLITE_TEXT || n != (int)strlen(text) ||
        memcmp(p, text, (size_t)n) != 0) {
      fail("received the wrong message, expected", text);
    }
  }
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) != SQLITE_OK) fail(sql, sqlite3_errmsg(db));
  return s;
}

/* Step a one-row statement; its integer result. */
static sqlite3_int64 step_int(sqlite3 *db, sqlite3_stmt *s, const char *what) {
  sqlite3_int64 v;
  if (sqlite3_step(s) != SQLITE_ROW) fail(what, sqlite3_errmsg(db));
  v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return v;
}

static void exec_ok(sqlite3 *db, const char *sql) {
  if (sqlite3_exec(db, sql, 0, 0, 0) != SQLITE_OK) fail(sql, sqlite3_errmsg(db));
}

static void add_message(int c, int no, int blob) {
  Msg *m;
  if (model.n == MAX_MSGS) fail("model full", 0);
  m = &model.msgs[model.n++];
  m->chan = c;
  m->no = no;
  m->blob = blob;
  m->expires_at = now + model.expiry;
  m->queued = 1;
}

static void op_send(sqlite3 *db, uint8_t arg) {
  int c = arg % N_SEND, blob = (arg >> 4) & 1, no = payload_counter++;
  int full = unexpired_in_queue(c) >= model.capacity;
  sqlite3_stmt *s = prepare(db, "SELECT channel_send(?1, ?2)");
  int rc;
  sqlite3_bind_text(s, 1, names[c], -1, SQLITE_STATIC);
  bind_payload(s, 2, no, blob);
  rc = sqlite3_step(s);
  if (full) {
    if (rc == SQLITE_ROW || !strstr(sqlite3_errmsg(db), "chanlite: channel full")) {
      fail("a send to a full channel did not fail with 'channel full':", sqlite3_errmsg(db));
    }
  } else {
    if (rc != SQLITE_ROW) fail("send failed:", sqlite3_errmsg(db));
    add_message(c, no, blob);
  }
  sqlite3_finalize(s);
}

static void op_recv(sqlite3 *db, uint8_t arg) {
  int r = arg % N_RECV, head = expected_head(r);
  sqlite3_stmt *s = prepare(db, "SELECT channel_recv(?1)");
  sqlite3_bind_text(s, 1, names[r], -1, SQLITE_STATIC);
  if (sqlite3_step(s) != SQLITE_ROW) fail("recv failed:", sqlite3_errmsg(db));
  if (head < 0) {
    if (sqlite3_column_type(s, 0) != SQLITE_NULL) fail("received a message from", names[r]);
  } else {
    if (sqlite3_column_type(s, 0) == SQLITE_NULL) fail("received nothing from", names[r]);
    check_payload(s, 0, &model.msgs[head]);
    model.msgs[head].queued = 0;
  }
  sqlite3_finalize(s);
}

static void op_batch(sqlite3 *db, uint8_t arg) {
  int r = arg % N_RECV, max = 1 + (arg >> 3) % 4, read_one = (arg >> 5) & 1, got = 0;
  sqlite3_stmt *s = prepare(db, "SELECT channel, message FROM channel_recv_batch(?1, ?2)");
  int rc;
  sqlite3_bind_text(s, 1, names[r], -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 2, max);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int head = expected_head(r);
    if (head < 0 || got == max) fail("recv_batch returned a row too many from", names[r]);
    if (strcmp((const char *)sqlite3_column_text(s, 0), names[model.msgs[head].chan]) != 0) {
      fail("recv_batch named the wrong channel:", (const char *)sqlite3_column_text(s, 0));
    }
    check_payload(s, 1, &model.msgs[head]);
    model.msgs[head].queued = 0;
    got++;
    if (read_one) break; /* the rest must go back */
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail("recv_batch failed:", sqlite3_errmsg(db));
  sqlite3_finalize(s);
  /* Fewer rows than max only when none is left (all are small here). */
  if (!read_one && got < max && expected_head(r) >= 0)
    fail("recv_batch left messages in", names[r]);
}

static void op_group(sqlite3 *db, uint8_t kind, uint8_t arg) {
  int g = arg % N_GROUPS, c = (arg >> 1) % N_SEND, i;
  sqlite3_stmt *s;
  sqlite3_int64 got;
  if (kind == 0) {
    s = prepare(db, "SELECT group_add(?1, ?2)");
    sqlite3_bind_text(s, 1, groups[g], -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, names[c], -1, SQLITE_STATIC);
    if (step_int(db, s, "group_add") != 1) fail("group_add did not return 1", 0);
    model.member[g][c] = 1;
  } else if (kind == 1) {
    s = prepare(db, "SELECT group_discard(?1, ?2)");
    sqlite3_bind_text(s, 1, groups[g], -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, names[c], -1, SQLITE_STATIC);
    if (step_int(db, s, "group_discard") != model.member[g][c]) fail("group_discard count", 0);
    model.member[g][c] = 0;
  } else {
    int no = payload_counter++, blob = (arg >> 4) & 1, expected = 0;
    s = prepare(db, "SELECT group_send(?1, ?2)");
    sqlite3_bind_text(s, 1, groups[g], -1, SQLITE_STATIC);
    bind_payload(s, 2, no, blob);
    /* Members in name order, which is index order here. */
    for (i = 0; i < N_SEND; i++) {
      if (model.member[g][i] && unexpired_in_queue(i) < model.capacity) {
        add_message(i, no, blob);
        expected++;
      }
    }
    got = step_int(db, s, "group_send");
    if (got != expected) fail("group_send delivered to the wrong number of members", 0);
  }
}

static void op_channels(sqlite3 *db) {
  sqlite3_stmt *s = prepare(db, "SELECT channel, depth FROM chanlite_channels");
  int c, rc = SQLITE_ROW;
  for (c = 0; c < N_SEND; c++) {
    int i, depth = 0;
    for (i = 0; i < model.n; i++) depth += live(&model.msgs[i]) && model.msgs[i].chan == c;
    if (depth == 0) continue;
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(s, 0), names[c]) != 0 ||
        sqlite3_column_int(s, 1) != depth) {
      fail("chanlite_channels does not list", names[c]);
    }
  }
  if (sqlite3_step(s) != SQLITE_DONE) fail("chanlite_channels lists too much", 0);
  sqlite3_finalize(s);
}

/* channel_wait with no timeout: 1 whenever a message can be received (it
** may also say 1 for expired rows not yet removed). */
static void op_wait(sqlite3 *db, uint8_t arg) {
  int r = arg % N_RECV;
  sqlite3_stmt *s;
  if (!sqlite3_get_autocommit(db)) return; /* refused inside a transaction */
  s = prepare(db, "SELECT channel_wait(?1, 0)");
  sqlite3_bind_text(s, 1, names[r], -1, SQLITE_STATIC);
  if (step_int(db, s, "channel_wait") != 1 && expected_head(r) >= 0) {
    fail("channel_wait says nothing is queued in", names[r]);
  }
}

static void set_clock(sqlite3 *db) {
  char sql[64];
  snprintf(sql, sizeof sql, "SELECT chanlite_clock(%.0f)", now);
  exec_ok(db, sql);
}

static void op_setting(sqlite3 *db, int expiry, uint8_t arg) {
  static const int capacities[] = {0, 1, 2, 3, 100};
  char sql[80];
  if (expiry) {
    model.expiry = 1 + arg % 60;
    snprintf(sql, sizeof sql, "SELECT chanlite_config('expiry', %.0f)", model.expiry);
  } else {
    model.capacity = capacities[arg % 5];
    snprintf(sql, sizeof sql, "SELECT chanlite_config('capacity', %d)", model.capacity);
  }
  exec_ok(db, sql);
}

static void op_transaction(sqlite3 *db, uint8_t arg) {
  if (sqlite3_get_autocommit(db)) {
    exec_ok(db, (arg & 1) ? "BEGIN IMMEDIATE" : "BEGIN");
    snapshot = model;
  } else if (arg & 2) {
    exec_ok(db, "COMMIT");
  } else {
    exec_ok(db, "ROLLBACK");
    model = snapshot;
  }
}

static char db_path[64];

static void remove_files(void) {
  static const char *const suffix[] = {"", "-wal", "-shm", "-chanlite"};
  char path[80];
  int i;
  for (i = 0; i < 4; i++) {
    snprintf(path, sizeof path, "%s%s", db_path, suffix[i]);
    unlink(path);
  }
}

/* One connection for every input (opening one and creating the tables
** each time would take most of the time): each input starts from empty
** tables and default settings. A WAL database file, as in production, so
** that recv_batch pops through its second connection and sends ring the
** bell next to the file. */
static sqlite3 *reset_db(void) {
  static sqlite3 *db;
  if (!db) {
    snprintf(db_path, sizeof db_path, "%s/chanlite-fuzz-ops-%d.db",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    remove_files();
    atexit(remove_files);
    db = fuzz_open_file(db_path);
    exec_ok(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF");
    exec_ok(db, "SELECT channel_flush()"); /* creates the tables */
  }
  if (!sqlite3_get_autocommit(db)) exec_ok(db, "ROLLBACK");
  exec_ok(db, "DELETE FROM chanlite_message; DELETE FROM chanlite_group;"
              "DELETE FROM chanlite_config; DELETE FROM chanlite_capacity;");
  return db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Input in = {data, size};
  sqlite3 *db = reset_db();
  int ops = 0, r, head;
  memset(&model, 0, sizeof model);
  model.capacity = 100;
  model.expiry = 60;
  now = 1000;
  payload_counter = 0;
  set_clock(db);
  while (in.n > 0 && ops++ < MAX_OPS) {
    uint8_t op = take_byte(&in), arg = take_byte(&in);
    switch (op % 15) {
      case 0:
      case 1: op_send(db, arg); break;
      case 2: op_recv(db, arg); break;
      case 3: op_batch(db, arg); break;
      case 4: op_group(db, 0, arg); break;
      case 5: op_group(db, 1, arg); break;
      case 6: op_group(db, 2, arg); break;
      case 7:
        exec_ok(db, "SELECT channel_flush()");
        memset(model.msgs, 0, sizeof model.msgs);
        model.n = 0;
        memset(model.member, 0, sizeof model.member);
        break;
      case 8: exec_ok(db, "SELECT channel_trim()"); break;
      case 9:
        now += (arg & 0x80) ? 1000 : arg % 40;
        set_clock(db);
        break;
      case 10: op_setting(db, 0, arg); break;
      case 11: op_setting(db, 1, arg); break;
      case 12: op_transaction(db, arg); break;
      case 13: op_channels(db); break;
      default: op_wait(db, arg); break;
    }
  }
  if (!sqlite3_get_autocommit(db)) exec_ok(db, "COMMIT");
  /* Nothing acknowledged is lost: drain every channel. */
  for (r = 0; r < N_SEND; r++) {
    while ((head = expected_head(r)) >= 0) op_recv(db, (uint8_t)r);
    op_recv(db, (uint8_t)r); /* and then it is empty */
  }
  check_consistent(db);
  return 0;
}
