/*
** Crash safety: senders and receivers killed with SIGKILL at random points
** while messages flow lose nothing acknowledged and deliver nothing twice.
**
**   crash path/to/chanlite.so
**
** Run twice on a fresh WAL database, once with synchronous=NORMAL and once
** with FULL. Two senders and three receivers, each its own process, all with
** the clock pinned so that nothing expires:
**   sender slot 0 -> 'crash.q'            received by slot 0 (channel_recv)
**                                          and slot 1 (channel_recv_batch)
**   sender slot 1 -> 'crash.p!a|b|c'      received by slot 2 (channel_recv and
**                                          channel_recv_batch of 'crash.p!')
** A sender sends numbered messages, alone or 2 to 5 in a transaction of its
** own, and reports each commit that returned (its acknowledgement) to the
** parent through a pipe. A receiver receives inside a transaction that also
** records what it got in an app table, `received`, of the same database:
** chanlite's transactional receive, so that delivery can be audited.
** The parent kills a random child every few milliseconds and starts a new
** one in its place (a sender under a new incarnation number, so that each
** (incarnation, seq) is sent at most once), until enough messages were
** acknowledged and enough processes killed; then it kills them all at once.
**
** After the storm it reopens the database, as a restarted app would, and
** checks: PRAGMA integrity_check is ok; chanlite_queue's depth counters
** match the rows; then it drains what is still queued into `received` and
** checks that every acknowledged message was received exactly once, no
** message twice, every incarnation's committed messages form an unbroken
** run 0..m (nothing committed lost) with m at most one unacknowledged
** transaction past its last acknowledgement, each incarnation's messages
** were received in the order sent, every body arrived intact and with its
** type, and no child failed an operation on its own.
**
** What is random (when each kill lands) varies from run to run; what is
** asserted does not. CHANLITE_CRASH_SEED repeats a run's schedule;
** CHANLITE_CRASH_MESSAGES (default 3000) and CHANLITE_CRASH_KILLS (default
** 100) set the minimum acknowledged messages and kills per mode, and
** CHANLITE_CRASH_GAP_MS (default 40) the longest pause between kills
** (tests/sanitize.sh changes them under valgrind, where a process takes a
** second to start). Prints one line per check
** and "N passed, N failed".
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

#define SENDERS 2
#define RECEIVERS 3
#define SLOTS (SENDERS + RECEIVERS)
#define MAX_TXN 5
#define MAX_INCARNATIONS 20000
#define PINNED_CLOCK "1700000000"
#define STORM_SECONDS_MAX 60

typedef struct Ack {
  int32_t incarnation, seq;
} Ack;

static const char *ext;
static char db_path[128];


static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v && atoi(v) > 0 ? atoi(v) : dflt;
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- in the children ---- */

static void die(const char *who, const char *what, sqlite3 *db) {
  fprintf(stderr, "crash: %s: %s: %s (code %d)\n", who, what, db ? sqlite3_errmsg(db) : "",
          db ? sqlite3_extended_errcode(db) : 0);
  _exit(1);
}

/* Generous: the test is about crashes, not lock waits, and a FULL commit on
** a slow CI disk can take a while. A killed process's locks go at once. */
static sqlite3 *open_db(const char *who, int synchronous) {
  sqlite3 *db = 0;
  char *err = 0, sql[160];
  if (sqlite3_open(db_path, &db) != SQLITE_OK) die(who, "open", db);
  if (sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "crash: %s: load: %s\n", who, err ? err : "");
    _exit(1);
  }
  snprintf(sql, sizeof sql,
           "PRAGMA journal_mode=WAL; PRAGMA synchronous=%d;"
           "SELECT chanlite_clock(" PINNED_CLOCK ");",
           synchronous);
  sqlite3_busy_timeout(db, 60000);
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) die(who, err ? err : sql, db);
  return db;
}

static void exec_or_die(sqlite3 *db, const char *who, const char *sql) {
  if (sqlite3_exec(db, sql, 0, 0, 0) != SQLITE_OK) die(who, sql, db);
}

/* The body of message `seq` of `incarnation`: its numbers, then padding the
** receiver checks byte for byte; sizes from a few bytes to two overflow
** pages; TEXT for even seq, BLOB for odd. */
static int make_body(char *buf, int incarnation, int seq) {
  int n = snprintf(buf, 64, "%d %d ", incarnation, seq);
  int pad = (seq % 50 == 49) ? 9000 : (seq * 7919) % 700;
  memset(buf + n, 'a' + (incarnation + seq) % 26, (size_t)pad);
  return n + pad;
}

static void sender(int slot, int incarnation, int ack_fd, int synchronous) {
  char who[48], ch[32], *body = malloc(16384);
  sqlite3 *db;
  sqlite3_stmt *send = 0;
  int seq = 0;
  unsigned rng = (unsigned)incarnation * 2654435761u;
  snprintf(who, sizeof who, "sender %d (incarnation %d)", slot, incarnation);
  if (!body) die(who, "malloc", 0);
  db = open_db(who, synchronous);
  if (sqlite3_prepare_v2(db, "SELECT channel_send(?1, ?2)", -1, &send, 0) != SQLITE_OK) {
    die(who, "prepare", db);
  }
  for (;;) {
    int k, i, txn;
    Ack ack;
    rng = rng * 1103515245u + 12345u;
    k = 1 + (int)((rng >> 16) % MAX_TXN);
    txn = k > 1 || (rng >> 8) % 2; /* a single send, alone or in a transaction */
    if (txn) exec_or_die(db, who, "BEGIN IMMEDIATE");
    for (i = 0; i < k; i++, seq++) {
      int len = make_body(body, incarnation, seq);
      if (slot == 0) snprintf(ch, sizeof ch, "crash.q");
      else snprintf(ch, sizeof ch, "crash.p!%c", "abc"[seq % 3]);
      sqlite3_bind_text(send, 1, ch, -1, SQLITE_STATIC);
      if (seq % 2 == 0) sqlite3_bind_text(send, 2, body, len, SQLITE_STATIC);
      else sqlite3_bind_blob(send, 2, body, len, SQLITE_STATIC);
      if (sqlite3_step(send) != SQLITE_ROW) die(who, "channel_send", db);
      sqlite3_reset(send);
    }
    if (txn) exec_or_die(db, who, "COMMIT");
    /* Acknowledged: the send (or the COMMIT) returned. 8 bytes: atomic. */
    ack.incarnation = incarnation;
    ack.seq = seq - 1;
    if (write(ack_fd, &ack, sizeof ack) != (ssize_t)sizeof ack) die(who, "write ack", 0);
  }
}

/* Checks a received body against what make_body sent; records it. */
static void record(sqlite3 *db, sqlite3_stmt *ins, const char *who, sqlite3_value *v,
                   int receiver) {
  static char want[16384];
  int inc = -1, seq = -1, len;
  const char *z = (const char *)sqlite3_value_blob(v);
  int n = sqlite3_value_bytes(v);
  char head[64];
  snprintf(head, sizeof head, "%.*s", n < 40 ? n : 40, z ? z : "");
  if (sscanf(head, "%d %d ", &inc, &seq) != 2 || inc < 0 || seq < 0) {
    fprintf(stderr, "crash: %s: malformed message '%s'\n", who, head);
    _exit(1);
  }
  len = make_body(want, inc, seq);
  if (len != n || memcmp(want, z, (size_t)n) != 0 ||
      sqlite3_value_type(v) != (seq % 2 == 0 ? SQLITE_TEXT : SQLITE_BLOB)) {
    fprintf(stderr, "crash: %s: message %d %d damaged (%d bytes, want %d, type %d)\n", who, inc,
            seq, n, len, sqlite3_value_type(v));
    _exit(1);
  }
  sqlite3_bind_int(ins, 1, inc);
  sqlite3_bind_int(ins, 2, seq);
  sqlite3_bind_int(ins, 3, receiver);
  if (sqlite3_step(ins) != SQLITE_DONE) die(who, "record", db);
  sqlite3_reset(ins);
}

/* Receive inside a transaction that records what was received: both commit
** or neither does. Returns how many were received. */
static int receive_some(sqlite3 *db, sqlite3_stmt *get, sqlite3_stmt *ins, const char *who,
                        int receiver) {
  int n = 0, rc;
  exec_or_die(db, who, "BEGIN IMMEDIATE");
  while ((rc = sqlite3_step(get)) == SQLITE_ROW) {
    sqlite3_value *v = sqlite3_column_value(get, 0);
    if (sqlite3_value_type(v) == SQLITE_NULL) break; /* channel_recv: none */
    record(db, ins, who, v, receiver);
    n++;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) die(who, "receive", db);
  sqlite3_reset(get);
  exec_or_die(db, who, "COMMIT");
  return n;
}

static void receiver(int slot, int synchronous) {
  char who[32];
  sqlite3 *db;
  sqlite3_stmt *recv = 0, *batch = 0, *ins = 0, *wait = 0;
  const char *queue = slot == 2 ? "crash.p!" : "crash.q";
  unsigned turn = (unsigned)getpid();
  snprintf(who, sizeof who, "receiver %d", slot);
  db = open_db(who, synchronous);
  if (sqlite3_prepare_v2(db, "SELECT channel_recv(?1)", -1, &recv, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT message FROM channel_recv_batch(?1, ?2)", -1, &batch, 0) !=
        SQLITE_OK ||
      sqlite3_prepare_v2(db,
                         "INSERT INTO received(incarnation, seq, receiver) "
                         "VALUES (?1, ?2, ?3)",
                         -1, &ins, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT channel_wait(?1, 0.05)", -1, &wait, 0) != SQLITE_OK) {
    die(who, "prepare", db);
  }
  sqlite3_bind_text(recv, 1, queue, -1, SQLITE_STATIC);
  sqlite3_bind_text(batch, 1, queue, -1, SQLITE_STATIC);
  sqlite3_bind_text(wait, 1, queue, -1, SQLITE_STATIC);
  for (;;) {
    int use_batch = slot == 1 || (slot == 2 && turn % 2);
    turn++;
    sqlite3_bind_int(batch, 2, 1 + (int)(turn % 16));
    if (receive_some(db, use_batch ? batch : recv, ins, who, slot) == 0) {
      if (sqlite3_step(wait) != SQLITE_ROW) die(who, "channel_wait", db);
      sqlite3_reset(wait);
    }
  }
}

/* ---- in the parent ---- */

typedef struct Child {
  pid_t pid;
  int is_sender;
  int slot;
} Child;

static int next_incarnation;
static int max_acked[MAX_INCARNATIONS];
static long acked;
static int child_errors;

static pid_t start(int slot, int ack_read, int ack_write, int synchronous) {
  int incarnation = slot < SENDERS ? next_incarnation++ : -1;
  pid_t pid;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    close(ack_read);
    if (slot < SENDERS) sender(slot, incarnation, ack_write, synchronous);
    close(ack_write);
    receiver(slot - SENDERS, synchronous);
  }
  return pid;
}

static void read_acks(int fd) {
  Ack a[256];
  ssize_t n;
  int i;
  while ((n = read(fd, a, sizeof a)) > 0) {
    for (i = 0; i < (int)(n / (ssize_t)sizeof a[0]); i++) {
      if (a[i].incarnation >= 0 && a[i].incarnation < MAX_INCARNATIONS &&
          a[i].seq > max_acked[a[i].incarnation]) {
        acked += a[i].seq - max_acked[a[i].incarnation];
        max_acked[a[i].incarnation] = a[i].seq;
      }
    }
  }
}

/* A child that died of anything but our SIGKILL failed on its own. */
static void reap(pid_t pid, int killed) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    perror("waitpid");
    exit(2);
  }
  if (!(killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) child_errors++;
}

static sqlite3 *parent_db(int synchronous) {
  sqlite3 *db = 0;
  char *err = 0, sql[128];
  if (sqlite3_open(db_path, &db) != SQLITE_OK ||
      sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "crash: parent: open: %s\n", err ? err : sqlite3_errmsg(db));
    exit(2);
  }
  snprintf(sql, sizeof sql,
           "PRAGMA journal_mode=WAL; PRAGMA synchronous=%d;"
           "SELECT chanlite_clock(" PINNED_CLOCK ");",
           synchronous);
  sqlite3_busy_timeout(db, 60000);
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "crash: parent: %s\n", err);
    exit(2);
  }
  return db;
}

static sqlite3_int64 query_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  sqlite3_int64 v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    v = sqlite3_column_int64(s, 0);
  } else {
    fprintf(stderr, "crash: parent: %s: %s\n", sql, sqlite3_errmsg(db));
  }
  sqlite3_finalize(s);
  return v;
}

static const char *query_text(sqlite3 *db, const char *sql, char *buf, int n) {
  sqlite3_stmt *s = 0;
  snprintf(buf, (size_t)n, "(%s)", "no row");
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    snprintf(buf, (size_t)n, "%s", (const char *)sqlite3_column_text(s, 0));
  } else {
    snprintf(buf, (size_t)n, "error: %s", sqlite3_errmsg(db));
  }
  sqlite3_finalize(s);
  return buf;
}

/* What the restarted app does first: receive what is left, recording it. */
static long drain(sqlite3 *db) {
  sqlite3_stmt *batch = 0, *ins = 0;
  long total = 0;
  int n, q;
  const char *queues[] = {"crash.q", "crash.p!"};
  if (sqlite3_prepare_v2(db, "SELECT message FROM channel_recv_batch(?1, 1000)", -1, &batch, 0) !=
        SQLITE_OK ||
      sqlite3_prepare_v2(db,
                         "INSERT INTO received(incarnation, seq, receiver) "
                         "VALUES (?1, ?2, ?3)",
                         -1, &ins, 0) != SQLITE_OK) {
    die("parent", "prepare drain", db);
  }
  for (q = 0; q < 2; q++) {
    sqlite3_bind_text(batch, 1, queues[q], -1, SQLITE_STATIC);
    do {
      n = receive_some(db, batch, ins, "parent drain", 99);
      total += n;
    } while (n > 0);
  }
  sqlite3_finalize(batch);
  sqlite3_finalize(ins);
  return total;
}

static void audit(sqlite3 *db, const char *mode) {
  sqlite3_stmt *s = 0;
  char buf[256];
  int lost = 0, overshoot = 0, gaps = 0, unknown = 0, inc;
  static int found[MAX_INCARNATIONS];

  check(strcmp(query_text(db, "PRAGMA integrity_check", buf, sizeof buf), "ok") == 0,
        "%s: integrity_check after the storm: %s", mode, buf);
  check(query_int(db, "SELECT (SELECT count(*) FROM (SELECT queue, count(*) AS n "
                      "FROM chanlite_message GROUP BY queue) LEFT JOIN chanlite_queue "
                      "USING (queue) WHERE n IS NOT depth) + (SELECT count(*) FROM "
                      "chanlite_queue AS q WHERE depth IS NOT (SELECT count(*) FROM "
                      "chanlite_message WHERE queue = q.queue))") == 0,
        "%s: chanlite_queue depths match the queued rows (%lld queued)", mode,
        query_int(db, "SELECT count(*) FROM chanlite_message"));
  check(query_int(db, "SELECT coalesce(sum(depth), 0) FROM chanlite_channels") ==
          query_int(db, "SELECT count(*) FROM chanlite_message"),
        "%s: chanlite_channels shows every queued message", mode);
  printf("   %s: drained %ld messages left queued after the restart\n", mode, drain(db));
  check(query_int(db, "SELECT count(*) FROM chanlite_message") == 0 &&
          query_int(db, "SELECT count(*) FROM chanlite_queue WHERE depth <> 0") == 0,
        "%s: the queues are empty after the drain, counters included", mode);

  check(query_int(db, "SELECT count(*) FROM (SELECT 1 FROM received GROUP BY incarnation, seq "
                      "HAVING count(*) > 1)") == 0,
        "%s: no message received twice (%lld received in all)", mode,
        query_int(db, "SELECT count(*) FROM received"));
  check(query_int(db, "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY "
                      "incarnation ORDER BY id) AS prev FROM received) WHERE prev >= seq") == 0,
        "%s: each sender's messages received in the order sent", mode);

  memset(found, 0, sizeof found);
  if (sqlite3_prepare_v2(db,
                         "SELECT incarnation, count(*), min(seq), max(seq) FROM received "
                         "GROUP BY incarnation",
                         -1, &s, 0) != SQLITE_OK) {
    die("parent", "prepare audit", db);
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    int i = sqlite3_column_int(s, 0), count = sqlite3_column_int(s, 1);
    int lo = sqlite3_column_int(s, 2), hi = sqlite3_column_int(s, 3);
    if (i < 0 || i >= next_incarnation) {
      unknown++;
      continue;
    }
    found[i] = 1;
    if (lo != 0 || count != hi + 1) gaps++;       /* a committed message lost */
    if (hi < max_acked[i]) lost++;                /* an acknowledged one lost */
    if (hi > max_acked[i] + MAX_TXN) overshoot++; /* more than one unacked txn */
  }
  sqlite3_finalize(s);
  for (inc = 0; inc < next_incarnation; inc++) {
    if (!found[inc] && max_acked[inc] >= 0) lost++;
  }
  check(lost == 0,
        "%s: every acknowledged message received (%ld acknowledged, %d sender "
        "incarnations; %d lost)",
        mode, acked, next_incarnation, lost);
  check(gaps == 0, "%s: each incarnation's messages are an unbroken run from 0 (%d broken)", mode,
        gaps);
  check(overshoot == 0 && unknown == 0,
        "%s: nothing received beyond one unacknowledged transaction per sender, nothing "
        "never sent (%d, %d)",
        mode, overshoot, unknown);
  check(strcmp(query_text(db, "PRAGMA integrity_check", buf, sizeof buf), "ok") == 0,
        "%s: integrity_check after the drain: %s", mode, buf);
}

static void storm(int synchronous, unsigned seed) {
  const char *mode = synchronous == 2 ? "synchronous=FULL" : "synchronous=NORMAL";
  int min_acked = env_int("CHANLITE_CRASH_MESSAGES", 3000);
  int min_kills = env_int("CHANLITE_CRASH_KILLS", 100);
  int gap_ms = env_int("CHANLITE_CRASH_GAP_MS", 40);
  int ack[2], slot, kills = 0, i;
  char dir[] = "/tmp/chanlite-crash-XXXXXX", path[200];
  Child kids[SLOTS];
  sqlite3 *db;
  double t0 = monotonic();

  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    exit(2);
  }
  snprintf(db_path, sizeof db_path, "%s/crash.db", dir);
  next_incarnation = 0;
  acked = 0;
  child_errors = 0;
  for (i = 0; i < MAX_INCARNATIONS; i++) max_acked[i] = -1;
  srand(seed);

  db = parent_db(synchronous);
  if (sqlite3_exec(db,
                   "CREATE TABLE received(id INTEGER PRIMARY KEY, incarnation INTEGER "
                   "NOT NULL, seq INTEGER NOT NULL, receiver INTEGER NOT NULL);"
                   "SELECT chanlite_config('capacity', 1000000);",
                   0, 0, 0) != SQLITE_OK) {
    die("parent", "setup", db);
  }
  sqlite3_close(db);

  if (pipe2(ack, O_CLOEXEC) != 0) {
    perror("pipe2");
    exit(2);
  }
  fcntl(ack[0], F_SETFL, O_NONBLOCK);
  for (slot = 0; slot < SLOTS; slot++) {
    kids[slot].slot = slot;
    kids[slot].pid = start(slot, ack[0], ack[1], synchronous);
  }
  /* Kills first; then, if fewer messages than asked for were acknowledged
  ** meanwhile (a slow build, where processes take long to start), the storm
  ** goes on without kills until they are. */
  while ((acked < min_acked || kills < min_kills) && monotonic() - t0 < STORM_SECONDS_MAX &&
         next_incarnation < MAX_INCARNATIONS - 1) {
    struct pollfd p = {ack[0], POLLIN, 0};
    double until = monotonic() + (rand() % gap_ms) / 1000.0;
    while (monotonic() < until) {
      int wait_ms = (int)((until - monotonic()) * 1000) + 1;
      if (poll(&p, 1, wait_ms) > 0) read_acks(ack[0]);
    }
    read_acks(ack[0]);
    if (kills >= min_kills) continue;
    slot = rand() % SLOTS;
    kill(kids[slot].pid, SIGKILL);
    reap(kids[slot].pid, 1);
    kills++;
    kids[slot].pid = start(slot, ack[0], ack[1], synchronous);
  }
  /* The whole app crashes: everyone at once, wherever they are. */
  for (slot = 0; slot < SLOTS; slot++) kill(kids[slot].pid, SIGKILL);
  for (slot = 0; slot < SLOTS; slot++) reap(kids[slot].pid, 1);
  close(ack[1]);
  fcntl(ack[0], F_SETFL, 0);
  read_acks(ack[0]);
  close(ack[0]);

  printf("   %s: %d kills, %ld messages acknowledged, %.1f s\n", mode, kills, acked,
         monotonic() - t0);
  check(acked >= min_acked && kills >= min_kills,
        "%s: the storm reached %d acknowledged messages and %d kills within %d s", mode, min_acked,
        min_kills, STORM_SECONDS_MAX);
  check(child_errors == 0, "%s: no child failed an operation (%d did)", mode, child_errors);

  db = parent_db(synchronous);
  audit(db, mode);
  if (sqlite3_close(db) != SQLITE_OK) check(0, "%s: parent connection closes", mode);

  snprintf(path, sizeof path, "%s", db_path);
  unlink(path);
  snprintf(path, sizeof path, "%s-wal", db_path);
  unlink(path);
  snprintf(path, sizeof path, "%s-shm", db_path);
  unlink(path);
  snprintf(path, sizeof path, "%s-chanlite", db_path);
  unlink(path);
  rmdir(dir);
}

int main(int argc, char **argv) {
  unsigned seed = (unsigned)env_int("CHANLITE_CRASH_SEED", (int)(time(0) & 0x7fffffff));
  if (argc != 2) {
    fprintf(stderr, "usage: crash path/to/chanlite.so\n");
    return 2;
  }
  ext = argv[1];
  printf("   seed %u (CHANLITE_CRASH_SEED=%u repeats this schedule)\n", seed, seed);
  storm(1, seed);
  storm(2, seed + 1);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
