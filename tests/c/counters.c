/*
** Counters exact under concurrent processes: chanlite_stats and chanlite_dead
** against what every process saw happen.
**
**   counters path/to/chanlite.so [iterations]
**
** Four processes share one WAL database (busy_timeout 5000 ms, or
** CHANLITE_MP_BUSY_MS as in multiprocess.c). Capacity is 3 for every ct.*
** channel and expiry 1 s, so sends are often refused and messages often
** expire. Each process pins its clock and moves it 0.05 s an iteration;
** each iteration it
**   sends to ct.0, ct.1 or ct.2 (sent, or refused: full_send);
**   every 2nd, sends to its own ct.p!N (all count against 'ct.p!');
**   every 3rd, receives from ct.0, ct.1 or ct.2 (received if not NULL);
**   every 5th, reads 2 rows of channel_recv_batch('ct.p!', 5), which puts
**     the rest back (received: the rows read);
**   every 7th, group_sends to ct.g0 or ct.g1, one member each (ct.0, ct.1):
**     delivered (sent) or skipped (full_group_send);
**   every 50th, sends inside a transaction it rolls back (counts nothing),
**     and 20 later, inside one it commits (counts as usual).
** and tallies what happened per channel. When all have exited, the parent
** moves its clock past every expiry and calls channel_trim(), so every
** message has been received or has expired, then checks per channel and in
** total: sent, received, full_send and full_group_send equal the processes'
** tallies, expired = sent - received, nothing queued; and chanlite_dead holds
** one 'full' row per refusal and one 'expired' row per expired message.
**
** It runs twice: with the default stats_retention (nothing is folded during
** the run, so every channel's row is there to check), and with
** stats_retention 0, where sends fold idle channels into the totals while
** others send to them: the totals must still be exact, and at the end every
** channel is folded away (storage stays bounded).
** Prints one line per check and "N passed, N failed".
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

#define PROCS 4
#define N_CH 4 /* ct.0, ct.1, ct.2, and the queue ct.p! */
#define BASE_CLOCK 1700000000.0

static const char *const channel_names[N_CH] = {"ct.0", "ct.1", "ct.2", "ct.p!"};

typedef struct Tally {
  long sent[N_CH], received[N_CH], full_send[N_CH], full_group_send[N_CH];
  long errors;
} Tally;

static const char *ext;
static char dir[64], db_path[128];
static int iterations;

static int busy_timeout_ms(void) {
  const char *env = getenv("CHANLITE_MP_BUSY_MS");
  return env && atoi(env) > 0 ? atoi(env) : 5000;
}

static sqlite3 *open_db(void) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(db_path, &db) != SQLITE_OK ||
      sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK ||
      sqlite3_busy_timeout(db, busy_timeout_ms()) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", 0, 0, &err) !=
        SQLITE_OK) {
    fprintf(stderr, "open %s: %s\n", db_path, err ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    sqlite3_close(db);
    return 0;
  }
  return db;
}

/* Run SQL that returns at most one value; *out gets it (if asked for).
** Returns the result code of the step. */
static int one(sqlite3 *db, const char *sql, sqlite3_int64 *out, Tally *t) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && out) *out = sqlite3_column_int64(s, 0);
    if (rc == SQLITE_ROW) rc = SQLITE_OK;
    else if (rc == SQLITE_DONE) rc = SQLITE_OK;
    else rc = sqlite3_extended_errcode(db);
  }
  if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_CONSTRAINT && t) {
    t->errors++;
    fprintf(stderr, "%s: %s (%d)\n", sql, sqlite3_errmsg(db), rc);
  }
  sqlite3_finalize(s);
  return rc;
}

/* A send to channel index `ch` (name `name`), tallied. */
static void tally_send(sqlite3 *db, int ch, const char *name, Tally *t) {
  char sql[128];
  int rc;
  snprintf(sql, sizeof sql, "SELECT channel_send('%s', 'm')", name);
  rc = one(db, sql, 0, t);
  if (rc == SQLITE_OK) t->sent[ch]++;
  else if ((rc & 0xff) == SQLITE_CONSTRAINT) t->full_send[ch]++;
}

static int worker(int id, int out_fd) {
  Tally t;
  sqlite3 *db = open_db();
  char sql[160], own[32];
  int k;
  memset(&t, 0, sizeof t);
  if (!db) return 1;
  snprintf(own, sizeof own, "ct.p!%d", id);
  for (k = 0; k < iterations && t.errors < 20; k++) {
    sqlite3_int64 got = 0;
    snprintf(sql, sizeof sql, "SELECT chanlite_clock(%.2f)", BASE_CLOCK + k * 0.05);
    one(db, sql, 0, &t);
    tally_send(db, (id + k) % 3, channel_names[(id + k) % 3], &t);
    if (k % 2 == 1) tally_send(db, 3, own, &t);
    if (k % 3 == 0) {
      int ch = (k / 3 + id) % 3;
      snprintf(sql, sizeof sql, "SELECT channel_recv('%s') IS NOT NULL", channel_names[ch]);
      if (one(db, sql, &got, &t) == SQLITE_OK && got) t.received[ch]++;
    }
    if (k % 5 == 2) {
      /* Counts the rows it reads: the other popped rows go back. */
      if (one(db,
              "SELECT count(*) FROM (SELECT message FROM "
              "channel_recv_batch('ct.p!', 5) LIMIT 2)",
              &got, &t) == SQLITE_OK) {
        t.received[3] += got;
      }
    }
    if (k % 7 == 3) {
      int ch = k % 2;
      snprintf(sql, sizeof sql, "SELECT group_send('ct.g%d', 'g')", ch);
      if (one(db, sql, &got, &t) == SQLITE_OK) {
        if (got == 1) t.sent[ch]++;
        else t.full_group_send[ch]++;
      }
    }
    if (k % 50 == 10) {
      /* Rolled back: a send, a refusal or both, none of them counted. */
      Tally ghost;
      memset(&ghost, 0, sizeof ghost);
      if (one(db, "BEGIN IMMEDIATE", 0, &t) == SQLITE_OK) {
        tally_send(db, 0, "ct.0", &ghost);
        tally_send(db, 3, own, &ghost);
        one(db, "ROLLBACK", 0, &t);
      }
      t.errors += ghost.errors;
    }
    if (k % 50 == 30 && one(db, "BEGIN IMMEDIATE", 0, &t) == SQLITE_OK) {
      Tally committed;
      int ch;
      memset(&committed, 0, sizeof committed);
      tally_send(db, 2, "ct.2", &committed);
      tally_send(db, 3, own, &committed);
      if (one(db, "COMMIT", 0, &t) == SQLITE_OK) {
        for (ch = 0; ch < N_CH; ch++) {
          t.sent[ch] += committed.sent[ch];
          t.full_send[ch] += committed.full_send[ch];
        }
      }
      t.errors += committed.errors;
    }
  }
  if (sqlite3_close(db) != SQLITE_OK) t.errors++;
  if (write(out_fd, &t, sizeof t) != (ssize_t)sizeof t) return 1;
  return t.errors ? 1 : 0;
}

/* One run of the workload; `retention` is stats_retention for it. */
static void run(const char *retention) {
  int pipes[PROCS][2], i, ch, ok = 1;
  pid_t pids[PROCS];
  Tally sum, t;
  long expired_total = 0, full_total = 0, sent_total = 0, received_total = 0;
  sqlite3_int64 dead_full = -1, dead_expired = -1, rows_left = -1;
  sqlite3 *db = open_db();
  char sql[512];
  memset(&sum, 0, sizeof sum);
  if (!db) {
    check(0, "open the database");
    return;
  }
  snprintf(sql, sizeof sql,
           "SELECT channel_flush(); SELECT chanlite_config('expiry', 1);"
           "SELECT chanlite_capacity('ct.*', 3); SELECT chanlite_config('dead_letters', 100000000);"
           "SELECT chanlite_config('stats_retention', %s);"
           "SELECT chanlite_clock(%.0f);"
           "SELECT group_add('ct.g0', 'ct.0'); SELECT group_add('ct.g1', 'ct.1');",
           retention, BASE_CLOCK);
  check(sqlite3_exec(db, sql, 0, 0, 0) == SQLITE_OK, "set up, stats_retention %s: %s", retention,
        sqlite3_errmsg(db));
  sqlite3_close(db);

  for (i = 0; i < PROCS; i++) {
    if (pipe(pipes[i]) != 0) {
      perror("pipe");
      exit(1);
    }
    fflush(stdout);
    fflush(stderr);
    pids[i] = fork();
    if (pids[i] < 0) {
      perror("fork");
      exit(1);
    }
    if (pids[i] == 0) {
      close(pipes[i][0]);
      exit(worker(i, pipes[i][1]));
    }
    close(pipes[i][1]);
  }
  for (i = 0; i < PROCS; i++) {
    int status;
    if (read(pipes[i][0], &t, sizeof t) != (ssize_t)sizeof t) {
      ok = 0;
      memset(&t, 0, sizeof t);
    }
    close(pipes[i][0]);
    while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = 0;
    for (ch = 0; ch < N_CH; ch++) {
      sum.sent[ch] += t.sent[ch];
      sum.received[ch] += t.received[ch];
      sum.full_send[ch] += t.full_send[ch];
      sum.full_group_send[ch] += t.full_group_send[ch];
    }
  }
  check(ok, "%d processes, %d iterations each, exited 0 with no unexpected error", PROCS,
        iterations);

  /* Everything left expires now, and is counted as it goes. */
  db = open_db();
  if (!db) {
    check(0, "reopen the database");
    return;
  }
  snprintf(sql, sizeof sql, "SELECT chanlite_clock(%.0f)", BASE_CLOCK + 1000);
  one(db, sql, 0, 0);
  check(one(db, "SELECT channel_trim()", 0, 0) == SQLITE_OK, "channel_trim()");

  for (ch = 0; ch < N_CH; ch++) {
    sqlite3_stmt *s = 0;
    long sent = sum.sent[ch], received = sum.received[ch];
    sent_total += sent;
    received_total += received;
    expired_total += sent - received;
    full_total += sum.full_send[ch] + sum.full_group_send[ch];
    if (retention[0] == '0') continue; /* folded away: only the totals count */
    sqlite3_prepare_v2(db,
                       "SELECT sent, received, expired, full_send, full_group_send, depth "
                       "FROM chanlite_stats WHERE channel = ?1",
                       -1, &s, 0);
    sqlite3_bind_text(s, 1, channel_names[ch], -1, SQLITE_STATIC);
    if (s && sqlite3_step(s) == SQLITE_ROW) {
      check(
        sqlite3_column_int64(s, 0) == sent && sqlite3_column_int64(s, 1) == received &&
          sqlite3_column_int64(s, 2) == sent - received &&
          sqlite3_column_int64(s, 3) == sum.full_send[ch] &&
          sqlite3_column_int64(s, 4) == sum.full_group_send[ch] && sqlite3_column_int64(s, 5) == 0,
        "%s: sent %lld/%ld received %lld/%ld expired %lld/%ld full_send %lld/%ld "
        "full_group_send %lld/%ld depth %lld/0 (counted/seen)",
        channel_names[ch], sqlite3_column_int64(s, 0), sent, sqlite3_column_int64(s, 1), received,
        sqlite3_column_int64(s, 2), sent - received, sqlite3_column_int64(s, 3), sum.full_send[ch],
        sqlite3_column_int64(s, 4), sum.full_group_send[ch], sqlite3_column_int64(s, 5));
    } else {
      check(0, "%s has a row in chanlite_stats", channel_names[ch]);
    }
    sqlite3_finalize(s);
  }
  {
    sqlite3_stmt *s = 0;
    long fs = 0, fg = 0;
    for (ch = 0; ch < N_CH; ch++) {
      fs += sum.full_send[ch];
      fg += sum.full_group_send[ch];
    }
    sqlite3_prepare_v2(db,
                       "SELECT sent, received, expired, full_send, full_group_send, depth "
                       "FROM chanlite_stats WHERE channel IS NULL",
                       -1, &s, 0);
    if (s && sqlite3_step(s) == SQLITE_ROW) {
      check(sqlite3_column_int64(s, 0) == sent_total &&
              sqlite3_column_int64(s, 1) == received_total &&
              sqlite3_column_int64(s, 2) == expired_total && sqlite3_column_int64(s, 3) == fs &&
              sqlite3_column_int64(s, 4) == fg && sqlite3_column_int64(s, 5) == 0,
            "totals: sent %lld/%ld received %lld/%ld expired %lld/%ld full_send %lld/%ld "
            "full_group_send %lld/%ld depth %lld/0 (counted/seen)",
            sqlite3_column_int64(s, 0), sent_total, sqlite3_column_int64(s, 1), received_total,
            sqlite3_column_int64(s, 2), expired_total, sqlite3_column_int64(s, 3), fs,
            sqlite3_column_int64(s, 4), fg, sqlite3_column_int64(s, 5));
    } else {
      check(0, "chanlite_stats has a totals row");
    }
    sqlite3_finalize(s);
  }
  one(db, "SELECT count(*) FROM chanlite_dead WHERE reason = 'full'", &dead_full, 0);
  one(db, "SELECT count(*) FROM chanlite_dead WHERE reason = 'expired'", &dead_expired, 0);
  check(dead_full == full_total && dead_expired == expired_total,
        "dead letters: %lld full (%ld refused), %lld expired (%ld expired)", dead_full, full_total,
        dead_expired, expired_total);
  if (retention[0] == '0') {
    one(db,
        "SELECT (SELECT count(*) FROM chanlite_queue WHERE queue <> '') + "
        "(SELECT count(*) FROM chanlite_counter WHERE queue <> '')",
        &rows_left, 0);
    check(rows_left == 0, "every idle channel folded into the totals (%lld rows left)", rows_left);
  }
  sqlite3_close(db);
}

static void remove_files(void) {
  static const char *const files[] = {"c.db", "c.db-wal", "c.db-shm", "c.db-chanlite"};
  char path[256];
  size_t i;
  for (i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s path/to/chanlite.so [iterations]\n", argv[0]);
    return 2;
  }
  ext = argv[1];
  iterations = argc > 2 ? atoi(argv[2]) : 600;
  if (iterations < 60) {
    fprintf(stderr, "iterations must be 60 or more\n");
    return 2;
  }
  snprintf(dir, sizeof dir, "/tmp/chanlite-counters-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(db_path, sizeof db_path, "%s/c.db", dir);
  run("3600");
  run("0");
  remove_files();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
