/*
** When the disk fills up, and when the write lock is held too long: a clear,
** retryable error, nothing committed lost, and work resumes.
**
**   exhaustion path/to/chanlite.so
**
** Disk full: the database lives on a real tmpfs of 512 KB, mounted in a
** mount namespace of this process's own (so it vanishes with the process,
** even if the test crashes; root, or an unprivileged user namespace, is
** needed: without either the test fails and says so). For WAL and for the
** rollback journal: messages are sent, the WAL is truncated, a filler file
** takes every free byte; then sends fail with SQLITE_FULL and "chanlite:
** channel_send(): database or disk is full (...)", a receive fails the same
** way and leaves its message queued, group_send and channel_recv_batch too;
** once the filler is gone every call works again and every message sent
** before or during the fill comes back exactly once, in order; the database
** passes integrity_check and its depth counters match its rows.
**
** Lock storm: a second connection holds the write lock (BEGIN IMMEDIATE)
** past the first's busy timeout (50 ms); every write call fails with
** SQLITE_BUSY and "database is locked (... retry, or raise the busy timeout
** ...)", changes nothing, and succeeds once the lock is released. Then a
** storm: the holder takes the lock for 80 ms at a time, again and again,
** 30 times, while sends and receives go on at a 50 ms timeout; every send that
** returned an id is received exactly once, every one that failed never.
**
** Prints one line per check and "N passed, N failed".
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

static const char *ext;


static sqlite3 *open_db(const char *path, const char *journal_mode, int busy_ms) {
  sqlite3 *db = 0;
  char *err = 0, sql[128];
  if (sqlite3_open(path, &db) != SQLITE_OK || sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "exhaustion: open %s: %s\n", path, err ? err : sqlite3_errmsg(db));
    exit(2);
  }
  snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s; PRAGMA synchronous=NORMAL;", journal_mode);
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "exhaustion: %s: %s\n", sql, err);
    exit(2);
  }
  sqlite3_busy_timeout(db, busy_ms);
  return db;
}

/* Runs a one-row statement with up to two text arguments. Returns the result
** code; *out (if given) receives the value as text, or the error message. */
static int call(sqlite3 *db, const char *sql, const char *a, const char *b, char *out, int n) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  if (rc == SQLITE_OK) {
    if (a) sqlite3_bind_text(s, 1, a, -1, SQLITE_TRANSIENT);
    if (b) sqlite3_bind_text(s, 2, b, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && out) {
      const char *t = (const char *)sqlite3_column_text(s, 0);
      snprintf(out, (size_t)n, "%s", t ? t : "NULL");
    }
    if (rc == SQLITE_ROW) rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
  }
  if (rc != SQLITE_OK && out) snprintf(out, (size_t)n, "%s", sqlite3_errmsg(db));
  sqlite3_finalize(s);
  return rc;
}

static long long count(sqlite3 *db, const char *sql) {
  char buf[64];
  return call(db, sql, 0, 0, buf, sizeof buf) == SQLITE_OK ? atoll(buf) : -1;
}

/* The database is sound: integrity_check, and counters that match rows. */
static void check_sound(sqlite3 *db, const char *what) {
  char buf[256];
  call(db, "PRAGMA integrity_check", 0, 0, buf, sizeof buf);
  check(strcmp(buf, "ok") == 0, "%s: integrity_check: %s", what, buf);
  check(count(db, "SELECT count(*) FROM (SELECT queue, count(*) AS n FROM chanlite_message "
                  "GROUP BY queue) LEFT JOIN chanlite_queue USING (queue) "
                  "WHERE n IS NOT depth") == 0 &&
          count(db, "SELECT count(*) FROM chanlite_queue AS q WHERE depth IS NOT "
                    "(SELECT count(*) FROM chanlite_message WHERE queue = q.queue)") == 0,
        "%s: chanlite_queue depths match the rows", what);
}

/* ---- disk full ---- */

static int write_file(const char *path, const char *text, char *why, int n) {
  int fd = open(path, O_WRONLY);
  int ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text);
  if (!ok) snprintf(why, (size_t)n, "%s: %s", path, strerror(errno));
  if (fd >= 0) close(fd);
  return ok ? 0 : -1;
}

/* A private mount namespace, so the tmpfs goes away with this process. */
static int private_mounts(char *why, int n) {
  uid_t uid = getuid();
  gid_t gid = getgid();
  if (unshare(CLONE_NEWNS) != 0) {
    /* Not root: an unprivileged user namespace may still mount a tmpfs. */
    char map[64];
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
      snprintf(why, (size_t)n,
               "unshare: %s (run as root, or enable unprivileged user "
               "namespaces)",
               strerror(errno));
      return -1;
    }
    write_file("/proc/self/setgroups", "deny", why, n); /* older kernels lack it */
    snprintf(map, sizeof map, "0 %u 1", (unsigned)uid);
    if (write_file("/proc/self/uid_map", map, why, n) != 0) return -1;
    snprintf(map, sizeof map, "0 %u 1", (unsigned)gid);
    if (write_file("/proc/self/gid_map", map, why, n) != 0) return -1;
  }
  if (mount("none", "/", "none", MS_REC | MS_PRIVATE, 0) != 0) {
    snprintf(why, (size_t)n, "make / private: %s", strerror(errno));
    return -1;
  }
  return 0;
}

/* Takes every free byte of the filesystem; returns the bytes written. */
static long fill(const char *path) {
  static char block[4096];
  long total = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ssize_t w;
  if (fd < 0) return -1;
  while ((w = write(fd, block, sizeof block)) > 0) total += w;
  while ((w = write(fd, block, 1)) > 0) total += w; /* the last partial block */
  close(fd);
  return total;
}

static void expect_full(int rc, const char *got, const char *call_name, const char *what) {
  char want[128];
  snprintf(want, sizeof want, "chanlite: %s(): database or disk is full (no space left", call_name);
  check(rc == SQLITE_FULL && strncmp(got, want, strlen(want)) == 0,
        "%s: %s fails with SQLITE_FULL: code %d, \"%.110s...\"", what, call_name, rc, got);
}

static void disk_full(const char *mnt, const char *journal_mode) {
  char path[256], filler[256], buf[512], body[64], what[64];
  static char big[8192];
  sqlite3 *db;
  int i, rc, sent = 0, refused_at = -1, next = 0, in_order = 1;
  long freed;
  snprintf(path, sizeof path, "%s/full-%s.db", mnt, journal_mode);
  snprintf(filler, sizeof filler, "%s/filler", mnt);
  snprintf(what, sizeof what, "disk full, journal_mode=%s", journal_mode);
  db = open_db(path, journal_mode, 1000);

  for (i = 0; i < 20; i++, sent++) {
    snprintf(body, sizeof body, "m%04d", sent);
    if (call(db, "SELECT channel_send('q', ?1)", body, 0, buf, sizeof buf) != SQLITE_OK) {
      check(0, "%s: send before the fill: %s", what, buf);
    }
  }
  call(db, "SELECT group_add('g', 'q')", 0, 0, 0, 0);
  /* The WAL keeps its size after a checkpoint, and the next writes reuse it:
  ** truncate it, so that the next write needs new space. */
  call(db, "PRAGMA wal_checkpoint(TRUNCATE)", 0, 0, 0, 0);
  freed = fill(filler);

  /* Sends until one is refused; the ones that returned are acknowledged. */
  memset(big, 'x', sizeof big - 1);
  for (i = 0; i < 200 && refused_at < 0; i++) {
    snprintf(body, sizeof body, "m%04d", sent);
    memcpy(big, body, 5);
    rc = call(db, "SELECT channel_send('q', ?1)", big, 0, buf, sizeof buf);
    if (rc == SQLITE_OK) sent++;
    else {
      refused_at = sent;
      expect_full(rc, buf, "channel_send", what);
    }
  }
  printf("   %s: filler took %ld bytes; %d sends succeeded before the refusal\n", what, freed,
         sent - 20);
  check(refused_at >= 0, "%s: a send is refused once the disk is full", what);

  rc = call(db, "SELECT channel_recv('q')", 0, 0, buf, sizeof buf);
  expect_full(rc, buf, "channel_recv", what);
  rc = call(db, "SELECT group_send('g', 'to the group')", 0, 0, buf, sizeof buf);
  expect_full(rc, buf, "group_send", what);
  rc = call(db, "SELECT count(*) FROM channel_recv_batch('q', 5)", 0, 0, buf, sizeof buf);
  check(rc == SQLITE_FULL && strstr(buf, "chanlite: channel_recv_batch(): database or disk "
                                         "is full") != 0,
        "%s: channel_recv_batch fails with SQLITE_FULL: code %d, \"%.90s...\"", what, rc, buf);
  check(count(db, "SELECT count(*) FROM chanlite_message") == sent,
        "%s: while full, every acknowledged message is still queued (%d)", what, sent);
  /* Reading needs no space. */
  check(count(db, "SELECT depth FROM chanlite_channels WHERE channel = 'q'") == sent,
        "%s: chanlite_channels still reads while full", what);

  unlink(filler);
  snprintf(body, sizeof body, "m%04d", sent);
  rc = call(db, "SELECT channel_send('q', ?1)", body, 0, buf, sizeof buf);
  check(rc == SQLITE_OK, "%s: once space returns, a send works: %s", what, buf);
  if (rc == SQLITE_OK) sent++;
  for (;;) {
    rc = call(db, "SELECT channel_recv('q')", 0, 0, buf, sizeof buf);
    if (rc != SQLITE_OK || strcmp(buf, "NULL") == 0) break;
    snprintf(body, sizeof body, "m%04d", next);
    if (strncmp(buf, body, 5) != 0) in_order = 0;
    next++;
  }
  check(rc == SQLITE_OK && next == sent && in_order,
        "%s: every acknowledged message received once, in order, after (%d of %d; %s)", what, next,
        sent, rc == SQLITE_OK ? "no error" : buf);
  check_sound(db, what);
  check(sqlite3_close(db) == SQLITE_OK, "%s: the connection closes", what);
  unlink(path);
  snprintf(path, sizeof path, "%s/full-%s.db-chanlite", mnt, journal_mode);
  unlink(path);
}

static void disk_full_tests(void) {
  char why[200], mnt[] = "/tmp/chanlite-full-XXXXXX";
  pid_t pid;
  int status = 0;
  fflush(stdout);
  /* In a child, so that the parent's mounts stay as they were. */
  pid = fork();
  if (pid == 0) {
    if (!mkdtemp(mnt)) {
      perror("mkdtemp");
      _exit(2);
    }
    if (private_mounts(why, sizeof why) != 0 ||
        (mount("chanlite-full", mnt, "tmpfs", 0, "size=512k") != 0 &&
         snprintf(why, sizeof why, "mount tmpfs: %s", strerror(errno)) > 0)) {
      check(0, "disk full: a 512 KB tmpfs can be mounted: %s", why);
      rmdir(mnt);
      _exit(1);
    }
    disk_full(mnt, "WAL");
    disk_full(mnt, "DELETE");
    umount(mnt);
    rmdir(mnt);
    printf("disk full: %d passed, %d failed\n", passed, failed);
    _exit(failed ? 1 : 0);
  }
  if (pid < 0 || waitpid(pid, &status, 0) != pid) {
    perror("fork");
    exit(2);
  }
  check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "disk full: every check above passed");
  rmdir(mnt);
}

/* ---- lock storm ---- */

static void expect_busy(int rc, const char *got, const char *call_name) {
  char want[256];
  snprintf(want, sizeof want,
           "chanlite: %s(): database is locked (another connection held "
           "the write lock past the busy timeout: retry, or raise the busy timeout;",
           call_name);
  check(rc == SQLITE_BUSY && strncmp(got, want, strlen(want)) == 0,
        "lock held: %s fails with SQLITE_BUSY: code %d, \"%.100s...\"", call_name, rc, got);
}

/* A message received in the storm: sent (1), and not received before (2). */
static void take(char *seen, const char *body, int *got, int *dup) {
  int k = atoi(body);
  if (k < 0 || k >= 20000 || seen[k] != 1) (*dup)++;
  else {
    seen[k] = 2;
    (*got)++;
  }
}

static void lock_storm(void) {
  char path[] = "/tmp/chanlite-locked-XXXXXX", buf[512], body[32], side[300];
  sqlite3 *db, *holder;
  int fd = mkstemp(path), rc, i, sent = 0, refused = 0, got = 0, got_busy = 0, dup = 0;
  int status = 0, other = 0, go[2];
  char first_other[512] = "";
  pid_t pid, reaped = 0;
  static char seen[20000];
  struct timespec t0, t1;
  double waited_ms;
  if (fd < 0) {
    perror("mkstemp");
    exit(2);
  }
  close(fd);

  /* The storm's lock holder, forked before this process opens anything
  ** (connections must not cross a fork): it takes the lock for 80 ms, lets
  ** go for 20 ms, 30 times, once told to start. */
  if (pipe(go) != 0) {
    perror("pipe");
    exit(2);
  }
  fflush(stdout);
  pid = fork();
  if (pid == 0) {
    struct timespec hold = {0, 80 * 1000000L}, gap = {0, 20 * 1000000L};
    sqlite3 *h;
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(1);
    h = open_db(path, "WAL", 5000);
    for (i = 0; i < 30; i++) {
      if (call(h, "BEGIN IMMEDIATE", 0, 0, 0, 0) != SQLITE_OK) break;
      nanosleep(&hold, 0);
      call(h, "COMMIT", 0, 0, 0, 0);
      nanosleep(&gap, 0);
    }
    sqlite3_close(h);
    _exit(i == 30 ? 0 : 1);
  }
  close(go[0]);
  db = open_db(path, "WAL", 50);
  holder = open_db(path, "WAL", 5000);
  call(db, "SELECT channel_send('q', 'before')", 0, 0, 0, 0);
  call(db, "SELECT group_add('g', 'q')", 0, 0, 0, 0);

  /* One write lock held past db's 50 ms busy timeout. */
  call(holder, "BEGIN IMMEDIATE", 0, 0, 0, 0);
  rc = call(db, "SELECT channel_send('q', 'during')", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "channel_send");
  rc = call(db, "SELECT channel_recv('q')", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "channel_recv");
  clock_gettime(CLOCK_MONOTONIC, &t0);
  rc = call(db, "SELECT count(*) FROM channel_recv_batch('q', 10)", 0, 0, buf, sizeof buf);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  check(rc == SQLITE_BUSY && strstr(buf, "chanlite: channel_recv_batch(): database is locked"),
        "lock held: channel_recv_batch fails with SQLITE_BUSY: code %d, \"%.80s...\"", rc, buf);
  /* Its second connection has chanlite's busy handler (short sleeps), which
  ** must still wait out the caller's whole busy timeout before giving up. */
  waited_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  check(waited_ms >= 50, "lock held: channel_recv_batch waited the 50 ms busy timeout: %.1f ms",
        waited_ms);
  rc = call(db, "SELECT group_send('g', 'during')", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "group_send");
  rc = call(db, "SELECT group_add('g', 'r')", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "group_add");
  rc = call(db, "SELECT channel_trim()", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "channel_trim");
  rc = call(db, "SELECT chanlite_config('capacity', 7)", 0, 0, buf, sizeof buf);
  expect_busy(rc, buf, "chanlite_config");
  /* Reading needs no lock. */
  check(count(db, "SELECT depth FROM chanlite_channels WHERE channel = 'q'") == 1,
        "lock held: chanlite_channels reads, and shows the one message");
  call(holder, "COMMIT", 0, 0, 0, 0);
  rc = call(db, "SELECT channel_recv('q')", 0, 0, buf, sizeof buf);
  check(rc == SQLITE_OK && strcmp(buf, "before") == 0,
        "lock released: the queued message is received: %s", buf);
  rc = call(db, "SELECT channel_recv('q')", 0, 0, buf, sizeof buf);
  check(rc == SQLITE_OK && strcmp(buf, "NULL") == 0,
        "lock released: nothing the failed calls tried arrived: %s", buf);
  check(count(db, "SELECT chanlite_config('capacity')") == 100,
        "lock released: the failed chanlite_config changed nothing");

  /* The storm, while this process sends and receives, in turn, at a 50 ms
  ** busy timeout. */
  if (write(go[1], "x", 1) != 1) {
    perror("write");
    exit(2);
  }
  close(go[1]);
  for (i = 0; i < (int)sizeof seen && (reaped = waitpid(pid, &status, WNOHANG)) == 0; i++) {
    snprintf(body, sizeof body, "%d", i);
    rc = call(db, "SELECT channel_send('storm', ?1)", body, 0, buf, sizeof buf);
    if (rc == SQLITE_OK) {
      seen[i] = 1;
      sent++;
    } else if (rc == SQLITE_BUSY) refused++;
    else if (other++ == 0) snprintf(first_other, sizeof first_other, "%s", buf);
    rc = call(db, "SELECT channel_recv('storm')", 0, 0, buf, sizeof buf);
    if (rc == SQLITE_BUSY) got_busy++;
    else if (rc != SQLITE_OK && other++ == 0) snprintf(first_other, sizeof first_other, "%s", buf);
    else if (rc == SQLITE_OK && strcmp(buf, "NULL") != 0) take(seen, buf, &got, &dup);
  }
  check(other == 0, "storm: no call failed with anything but SQLITE_BUSY (%d did; first: %s)",
        other, other ? first_other : "none");
  if (reaped == 0) reaped = waitpid(pid, &status, 0);
  check(reaped == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "storm: the lock holder did its 30 holds");
  for (;;) {
    rc = call(db, "SELECT channel_recv('storm')", 0, 0, buf, sizeof buf);
    if (rc != SQLITE_OK || strcmp(buf, "NULL") == 0) break;
    take(seen, buf, &got, &dup);
  }
  printf("   storm: %d sends returned an id, %d were refused with SQLITE_BUSY; %d receives "
         "refused\n",
         sent, refused, got_busy);
  check(refused > 0 && sent > 0, "storm: some sends were refused, some went through");
  check(got == sent && dup == 0,
        "storm: every send that returned was received once, no refused one ever (%d of %d, "
        "%d unexpected)",
        got, sent, dup);
  check_sound(db, "storm");
  check(sqlite3_close(db) == SQLITE_OK && sqlite3_close(holder) == SQLITE_OK,
        "storm: the connections close");
  unlink(path);
  snprintf(side, sizeof side, "%s-wal", path);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", path);
  unlink(side);
  snprintf(side, sizeof side, "%s-chanlite", path);
  unlink(side);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: exhaustion path/to/chanlite.so\n");
    return 2;
  }
  ext = argv[1];
  disk_full_tests();
  lock_storm();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
