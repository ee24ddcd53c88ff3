/*
** The wake-up race test: a receiver woken by the bell must see the message
** (never woken before the commit is visible) and must never sleep through a
** committed message.
**
**   wake_race path/to/chanlite.so [messages]
**
** A sender process and a receiver process share one WAL database. The sender
** stores one message, then waits until the receiver says it has it, so the
** only way the receiver can learn of each message is the bell: if it slept
** through one, its channel_wait would time out, which fails the test. Half
** the sends run in the caller's transaction (the bell rings from the WAL
** hook), half on their own (it rings after chanlite's own COMMIT); some
** transactions that roll back ring nothing useful and must deliver nothing.
*/
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

static const char *ext;

static sqlite3 *open_db(const char *path) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(path, &db) != SQLITE_OK || sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;", 0, 0, &err) !=
        SQLITE_OK) {
    fprintf(stderr, "open %s: %s\n", path, err ? err : sqlite3_errmsg(db));
    exit(2);
  }
  return db;
}

static void exec_or_die(sqlite3 *db, const char *sql) {
  char *err = 0;
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, err);
    exit(2);
  }
}

static void jitter(unsigned *seed) {
  struct timespec ts = {0, (long)(rand_r(seed) % 500) * 1000}; /* 0-0.5 ms */
  nanosleep(&ts, 0);
}

static int sender(const char *path, int n, int ack_fd) {
  sqlite3 *db = open_db(path);
  unsigned seed = 42;
  int i;
  char sql[128], ack;
  for (i = 0; i < n; i++) {
    if (i % 10 == 5) { /* a rolled-back send: must never arrive */
      exec_or_die(db, "BEGIN IMMEDIATE; SELECT channel_send('race', 'ghost'); ROLLBACK;");
    }
    jitter(&seed);
    snprintf(sql, sizeof sql, "%sSELECT channel_send('race', 'm%d');%s",
             i % 2 ? "BEGIN IMMEDIATE; " : "", i, i % 2 ? " COMMIT;" : "");
    exec_or_die(db, sql);
    if (read(ack_fd, &ack, 1) != 1) {
      fprintf(stderr, "sender: receiver went away\n");
      return 1;
    }
  }
  sqlite3_close(db);
  return 0;
}

int main(int argc, char **argv) {
  char dir[] = "/tmp/chanlite-wake-XXXXXX", path[256], want[32], cmd[300];
  int n = argc > 2 ? atoi(argv[2]) : 300;
  int acks[2], i, failures = 0, status = 0;
  sqlite3 *db;
  sqlite3_stmt *wait_stmt, *recv_stmt;
  pid_t pid;
  if (argc < 2) {
    fprintf(stderr, "usage: wake_race chanlite.so [messages]\n");
    return 2;
  }
  ext = argv[1];
  if (!mkdtemp(dir) || pipe(acks) != 0) {
    perror("setup");
    return 2;
  }
  snprintf(path, sizeof path, "%s/race.db", dir);
  db = open_db(path);
  exec_or_die(db, "SELECT chanlite_config('capacity', 100)"); /* creates the tables */
  if (sqlite3_prepare_v2(db, "SELECT channel_wait('race', 10)", -1, &wait_stmt, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT channel_recv('race')", -1, &recv_stmt, 0) != SQLITE_OK) {
    fprintf(stderr, "prepare: %s\n", sqlite3_errmsg(db));
    return 2;
  }
  pid = fork();
  if (pid == 0) {
    close(acks[1]);
    _exit(sender(path, n, acks[0]));
  }
  close(acks[0]);
  for (i = 0; i < n && failures == 0; i++) {
    const unsigned char *got;
    if (sqlite3_step(wait_stmt) != SQLITE_ROW) {
      printf("FAIL message %d: channel_wait: %s\n", i, sqlite3_errmsg(db));
      failures++;
      break;
    }
    if (sqlite3_column_int(wait_stmt, 0) != 1) {
      printf("FAIL message %d: slept through it (channel_wait timed out)\n", i);
      failures++;
    }
    sqlite3_reset(wait_stmt);
    if (sqlite3_step(recv_stmt) != SQLITE_ROW) {
      printf("FAIL message %d: channel_recv: %s\n", i, sqlite3_errmsg(db));
      failures++;
      break;
    }
    got = sqlite3_column_text(recv_stmt, 0);
    snprintf(want, sizeof want, "m%d", i);
    if (!got || strcmp((const char *)got, want) != 0) {
      printf("FAIL message %d: woken, then received %s instead of %s\n", i,
             got ? (const char *)got : "nothing (woken before the commit was visible?)", want);
      failures++;
    }
    sqlite3_reset(recv_stmt);
    if (write(acks[1], "k", 1) != 1) {
      perror("ack");
      failures++;
    }
  }
  close(acks[1]);
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    printf("FAIL sender exited with status %d\n", status);
    failures++;
  }
  sqlite3_finalize(wait_stmt);
  sqlite3_finalize(recv_stmt);
  if (sqlite3_close(db) != SQLITE_OK) {
    printf("FAIL close: %s\n", sqlite3_errmsg(db));
    failures++;
  }
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  printf("wake_race: %d passed, %d failed\n", failures ? i - 1 : n, failures);
  return failures ? 1 : 0;
}
