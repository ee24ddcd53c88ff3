/*
** Many processes, one WAL database: every message is delivered exactly once.
**
**   multiprocess path/to/chanlite.so [messages]
**
** The message count defaults to 20000; the CHANLITE_MP_MESSAGES environment
** variable or the second argument changes it (tests/sanitize.sh lowers it
** under valgrind, where every process runs some 30 times slower).
** CHANLITE_MP_TIMEOUT (seconds, default 300) is the watchdog: past it every
** process is killed and the test fails.
**
** Four senders and four receivers, each its own process with its own
** connection (busy_timeout 5000, as Python's default; see busy_timeout_ms), all with the clock
** pinned by chanlite_clock so that nothing expires however slow the run:
**   sender 0, 1   -> 'mp.q'                  received by 0 and 1 (channel_recv)
**   sender 2      -> 'mp.p!a' and 'mp.p!b'   received by 2 (channel_recv_batch
**   sender 3      -> 'mp.p!c'                  of 'mp.p!', 100) and by 3
**                                             (channel_recv('mp.p!c'))
** Senders send some messages in transactions of their own, and roll back
** some 'ghost' sends that must never arrive; even-numbered messages are TEXT
** and odd-numbered ones BLOB. A receiver that finds nothing waits with
** channel_wait; it stops once every sender has exited (the parent closes a
** pipe) and a receive after that found nothing.
**
** Each receiver writes what it got to a file; the parent then checks: every
** message received exactly once, on the channel it was sent to, with its
** type; nothing else received; each receiver got each sender's messages in
** order; the queues are empty at the end; and no call in any process
** returned an error (no "database is locked", no "channel full":
** chanlite_config('capacity', 1000000) is set first).
** Prints one line per check and a closing "N passed, N failed".
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

#define SENDERS 4
#define RECEIVERS 4
#define PINNED_CLOCK "1700000000"

static const char *ext;
static char dir[64];
static char db_path[128];
static int total;
static int per_sender[SENDERS];
static pid_t pids[SENDERS + RECEIVERS];
static int n_pids;

/* ---- in every process ---- */

static int errors; /* in this process */

/* For error reports only (how long a failed call waited): never asserted. */
static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void step_error(const char *who, const char *what, sqlite3 *db, double started) {
  errors++;
  fprintf(stderr, "%s: %s: %s (code %d, after %.0f ms)\n", who, what, sqlite3_errmsg(db),
          sqlite3_extended_errcode(db), (monotonic() - started) * 1000);
}

static void error(const char *who, const char *what, sqlite3 *db) {
  errors++;
  fprintf(stderr, "%s: %s: %s (code %d)\n", who, what, db ? sqlite3_errmsg(db) : "",
          db ? sqlite3_extended_errcode(db) : 0);
}

/* 5000 ms, as Python's default: what docs/design.md (Guarantees) promises
** no caller sees
** "database is locked" at. CHANLITE_MP_BUSY_MS overrides it for the
** sanitizer and valgrind runs only (tests/sanitize.sh), where every lock is
** held tens of times longer and SQLite's unfair lock can starve a process
** past 5 s on a loaded machine; those runs look for memory errors. */
static int busy_timeout_ms(void) {
  const char *env = getenv("CHANLITE_MP_BUSY_MS");
  return env && atoi(env) > 0 ? atoi(env) : 5000;
}

static sqlite3 *open_db(const char *who) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(db_path, &db) != SQLITE_OK) {
    error(who, "open", db);
    sqlite3_close(db);
    return 0;
  }
  if (sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "%s: load %s: %s\n", who, ext, err ? err : "");
    errors++;
    sqlite3_free(err);
    sqlite3_close(db);
    return 0;
  }
  if (sqlite3_busy_timeout(db, busy_timeout_ms()) != SQLITE_OK ||
      sqlite3_exec(db,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                   "SELECT chanlite_clock(" PINNED_CLOCK ");",
                   0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "%s: settings: %s\n", who, err ? err : "");
    errors++;
    sqlite3_free(err);
    sqlite3_close(db);
    return 0;
  }
  return db;
}

static int exec(sqlite3 *db, const char *who, const char *sql) {
  char *err = 0;
  double t0 = monotonic();
  int rc = sqlite3_exec(db, sql, 0, 0, &err);
  if (rc != SQLITE_OK) {
    errors++;
    fprintf(stderr, "%s: %s: %s (code %d, after %.0f ms)\n", who, sql, err ? err : "",
            sqlite3_extended_errcode(db), (monotonic() - t0) * 1000);
  }
  sqlite3_free(err);
  return rc;
}

static void close_db(sqlite3 *db, const char *who) {
  if (db && sqlite3_close(db) != SQLITE_OK) error(who, "sqlite3_close", db);
}

/* The channel sender `sid` sends its message `seq` to. */
static const char *channel_of(int sid, int seq) {
  switch (sid) {
    case 0:
    case 1: return "mp.q";
    case 2: return seq % 2 ? "mp.p!b" : "mp.p!a";
    default: return "mp.p!c";
  }
}

static int sender(int sid) {
  char who[32], body[64];
  sqlite3 *db;
  sqlite3_stmt *s = 0;
  int seq, n = per_sender[sid], in_txn = 0;
  double t0;
  snprintf(who, sizeof who, "sender %d", sid);
  db = open_db(who);
  if (!db) return 1;
  if (sqlite3_prepare_v2(db, "SELECT channel_send(?1, ?2)", -1, &s, 0) != SQLITE_OK) {
    error(who, "prepare", db);
    close_db(db, who);
    return 1;
  }
  for (seq = 0; seq < n; seq++) {
    const char *ch = channel_of(sid, seq);
    int len = snprintf(body, sizeof body, "%d %d %s", sid, seq, ch), rc;
    /* Every 100 messages, a rolled-back ghost; every 50, the next 5 sends
    ** in one transaction of the sender's own. */
    if (seq % 100 == 17) {
      exec(db, who,
           "BEGIN IMMEDIATE; SELECT channel_send('mp.q', 'ghost');"
           "SELECT channel_send('mp.p!a', 'ghost'); ROLLBACK;");
    }
    if (seq % 50 == 0 && !in_txn) { in_txn = exec(db, who, "BEGIN IMMEDIATE") == SQLITE_OK; }
    sqlite3_bind_text(s, 1, ch, -1, SQLITE_STATIC);
    if (seq % 2 == 0) sqlite3_bind_text(s, 2, body, len, SQLITE_STATIC);
    else sqlite3_bind_blob(s, 2, body, len, SQLITE_STATIC);
    t0 = monotonic();
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) step_error(who, "channel_send", db, t0);
    sqlite3_reset(s);
    if (in_txn && (seq % 50 == 4 || seq == n - 1)) {
      exec(db, who, "COMMIT");
      in_txn = 0;
    }
  }
  if (sqlite3_finalize(s) != SQLITE_OK) error(who, "finalize", db);
  close_db(db, who);
  return errors ? 1 : 0;
}

/* Whether the parent has closed the pipe: every sender has exited. */
static int senders_done(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  char c;
  if (poll(&p, 1, 0) <= 0) return 0;
  return read(fd, &c, 1) == 0;
}

static const char *receiver_channel(int rid) {
  switch (rid) {
    case 0:
    case 1: return "mp.q";
    case 2: return "mp.p!";
    default: return "mp.p!c";
  }
}

static int receiver(int rid, int done_fd) {
  char who[32], path[256];
  const char *ch = receiver_channel(rid);
  int batch = rid == 2, rc, got, done, stop = 0;
  double t0;
  sqlite3 *db;
  sqlite3_stmt *s = 0, *wait = 0;
  FILE *out;
  snprintf(who, sizeof who, "receiver %d", rid);
  snprintf(path, sizeof path, "%s/received.%d", dir, rid);
  out = fopen(path, "w");
  if (!out) {
    perror(path);
    return 1;
  }
  db = open_db(who);
  if (!db) {
    fclose(out);
    return 1;
  }
  if (sqlite3_prepare_v2(db,
                         batch ? "SELECT channel, message FROM channel_recv_batch(?1, 100)"
                               : "SELECT ?1, channel_recv(?1)",
                         -1, &s, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT channel_wait(?1, 0.2)", -1, &wait, 0) != SQLITE_OK) {
    error(who, "prepare", db);
    stop = 1;
  }
  while (!stop && errors < 20) {
    done = senders_done(done_fd);
    got = 0;
    t0 = monotonic();
    sqlite3_bind_text(s, 1, ch, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      int type = sqlite3_column_type(s, 1);
      if (type == SQLITE_NULL) break;
      fprintf(out, "%c %s ",
              type == SQLITE_TEXT   ? 'T'
              : type == SQLITE_BLOB ? 'B'
                                    : '?',
              (const char *)sqlite3_column_text(s, 0));
      fwrite(sqlite3_column_blob(s, 1), 1, (size_t)sqlite3_column_bytes(s, 1), out);
      fputc('\n', out);
      got++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      step_error(who, batch ? "channel_recv_batch" : "channel_recv", db, t0);
    }
    sqlite3_reset(s);
    if (got) continue;
    if (done) break; /* nothing left, and nothing more will come */
    sqlite3_bind_text(wait, 1, ch, -1, SQLITE_STATIC);
    t0 = monotonic();
    if (sqlite3_step(wait) != SQLITE_ROW) step_error(who, "channel_wait", db, t0);
    sqlite3_reset(wait);
  }
  sqlite3_finalize(s);
  sqlite3_finalize(wait);
  close_db(db, who);
  if (fclose(out) != 0) errors++;
  return errors ? 1 : 0;
}

/* ---- the parent ---- */

static void watchdog(int sig) {
  static const char msg[] = "multiprocess: watchdog: timed out, killing every process\n";
  int i;
  (void)sig;
  for (i = 0; i < n_pids; i++) kill(pids[i], SIGKILL);
  if (write(2, msg, sizeof msg - 1) < 0) _exit(1); /* nothing more to say */
  _exit(1);
}

static pid_t spawn(int (*fn)(int, int), int arg, int fd, int close_fd) {
  pid_t pid;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) {
    if (close_fd >= 0) close(close_fd);
    exit(fn(arg, fd)); /* exit, not _exit: LeakSanitizer checks at exit */
  }
  pids[n_pids++] = pid;
  return pid;
}

static int run_sender(int sid, int fd) {
  (void)fd;
  return sender(sid);
}
static int run_receiver(int rid, int fd) {
  return receiver(rid, fd);
}

/* Wait for one child; whether it exited 0. */
static int reap(pid_t pid, const char *what, int id) {
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      perror("waitpid");
      return 0;
    }
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 1;
  if (WIFSIGNALED(status))
    fprintf(stderr, "%s %d killed by signal %d\n", what, id, WTERMSIG(status));
  else fprintf(stderr, "%s %d exited with %d\n", what, id, WEXITSTATUS(status));
  return 0;
}

static void remove_dir(void) {
  char path[256];
  static const char *files[] = {"mp.db",         "mp.db-wal",      "mp.db-shm",
                                "mp.db-journal", "mp.db-chanlite", "received.0",
                                "received.1",    "received.2",     "received.3"};
  size_t i;
  for (i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
  if (rmdir(dir) != 0) fprintf(stderr, "note: %s not removed\n", dir);
}

int main(int argc, char **argv) {
  const char *env = getenv("CHANLITE_MP_MESSAGES");
  const char *tenv = getenv("CHANLITE_MP_TIMEOUT");
  int timeout = tenv ? atoi(tenv) : 300;
  int pipefd[2], i, ok_children = 1;
  pid_t senders[SENDERS], receivers[RECEIVERS];
  unsigned char *seen[SENDERS];
  long received = 0, unexpected = 0, dup = 0, wrong_channel = 0, wrong_type = 0, out_of_order = 0,
       missing = 0;
  sqlite3 *db;

  if (argc < 2) {
    fprintf(stderr, "usage: %s path/to/chanlite.so [messages]\n", argv[0]);
    return 2;
  }
  ext = argv[1];
  total = argc > 2 ? atoi(argv[2]) : env ? atoi(env) : 20000;
  if (total < 40 || timeout <= 0) {
    fprintf(stderr, "messages must be 40 or more, the timeout positive\n");
    return 2;
  }
  /* 70% to 'mp.q' from senders 0 and 1, the rest to 'mp.p!…' from 2 and 3 */
  per_sender[0] = total * 7 / 20;
  per_sender[1] = total * 7 / 10 - per_sender[0];
  per_sender[2] = (total - total * 7 / 10) / 2;
  per_sender[3] = total - per_sender[0] - per_sender[1] - per_sender[2];

  snprintf(dir, sizeof dir, "/tmp/chanlite-mp-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(db_path, sizeof db_path, "%s/mp.db", dir);
  signal(SIGALRM, watchdog);
  alarm((unsigned)timeout);

  db = open_db("parent");
  if (!db) return 1;
  exec(db, "parent", "SELECT chanlite_config('capacity', 1000000)");
  check(errors == 0, "set up %s: capacity 1000000, %d messages, watchdog %d s", db_path, total,
        timeout);
  close_db(db, "parent"); /* no connection crosses a fork */

  if (pipe(pipefd) != 0) {
    perror("pipe");
    return 1;
  }
  for (i = 0; i < RECEIVERS; i++) receivers[i] = spawn(run_receiver, i, pipefd[0], pipefd[1]);
  for (i = 0; i < SENDERS; i++) senders[i] = spawn(run_sender, i, -1, pipefd[1]);
  close(pipefd[0]);
  /* Children inherit the alarm's handler but not the alarm; the parent's
  ** watchdog kills them all. */
  for (i = 0; i < SENDERS; i++) ok_children &= reap(senders[i], "sender", i);
  close(pipefd[1]); /* the receivers see EOF: no more messages will come */
  for (i = 0; i < RECEIVERS; i++) ok_children &= reap(receivers[i], "receiver", i);
  check(ok_children, "every process exited 0: no call returned an error");

  /* What was received. */
  for (i = 0; i < SENDERS; i++) {
    seen[i] = calloc((size_t)per_sender[i], 1);
    if (!seen[i]) return 1;
  }
  for (i = 0; i < RECEIVERS; i++) {
    char path[256], line[256], type, channel[64], body_channel[64];
    int last[SENDERS], sid, seq, k;
    FILE *in;
    for (sid = 0; sid < SENDERS; sid++) last[sid] = -1;
    snprintf(path, sizeof path, "%s/received.%d", dir, i);
    in = fopen(path, "r");
    if (!in) {
      check(0, "receiver %d wrote %s", i, path);
      continue;
    }
    k = 0;
    while (fgets(line, sizeof line, in)) {
      received++;
      k++;
      if (sscanf(line, "%c %63s %d %d %63s", &type, channel, &sid, &seq, body_channel) != 5 ||
          sid < 0 || sid >= SENDERS || seq < 0 || seq >= per_sender[sid]) {
        if (unexpected++ < 5) fprintf(stderr, "receiver %d got unexpected: %s", i, line);
        continue;
      }
      if (seen[sid][seq]++ && dup++ < 5) fprintf(stderr, "duplicate: %s", line);
      if ((strcmp(channel, channel_of(sid, seq)) != 0 || strcmp(body_channel, channel) != 0) &&
          wrong_channel++ < 5) {
        fprintf(stderr, "receiver %d: wrong channel: %s", i, line);
      }
      if (type != (seq % 2 ? 'B' : 'T') && wrong_type++ < 5) {
        fprintf(stderr, "receiver %d: wrong type: %s", i, line);
      }
      if (seq <= last[sid] && out_of_order++ < 5) {
        fprintf(stderr, "receiver %d: sender %d's %d after %d\n", i, sid, seq, last[sid]);
      }
      last[sid] = seq;
    }
    fclose(in);
    printf("receiver %d (%s): %d messages\n", i, receiver_channel(i), k);
  }
  for (i = 0; i < SENDERS; i++) {
    int seq;
    for (seq = 0; seq < per_sender[i]; seq++) {
      if (!seen[i][seq] && missing++ < 5) fprintf(stderr, "lost: sender %d's %d\n", i, seq);
    }
    free(seen[i]);
  }
  check(received == total, "%ld messages received, %d sent", received, total);
  check(missing == 0, "none lost (%ld missing)", missing);
  check(dup == 0, "none received twice (%ld duplicates)", dup);
  check(unexpected == 0, "nothing else received, no rolled-back ghost (%ld unexpected)",
        unexpected);
  check(wrong_channel == 0, "each on the channel it was sent to (%ld wrong)", wrong_channel);
  check(wrong_type == 0, "TEXT stays TEXT, BLOB stays BLOB (%ld wrong)", wrong_type);
  check(out_of_order == 0, "each receiver got each sender's messages in order (%ld not)",
        out_of_order);

  errors = 0;
  db = open_db("parent");
  if (!db) return 1;
  {
    sqlite3_stmt *s = 0;
    int left = -1;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM chanlite_channels", -1, &s, 0) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
      left = sqlite3_column_int(s, 0);
    } else {
      error("parent", "chanlite_channels", db);
    }
    sqlite3_finalize(s);
    check(left == 0, "every queue is empty at the end (%d channels left)", left);
  }
  close_db(db, "parent");
  check(errors == 0, "the parent's connection closed");
  alarm(0);
  remove_dir();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
