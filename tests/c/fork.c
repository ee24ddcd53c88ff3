/*
** fork(): a connection that crossed it is refused in the child with an error
** that names the fix, while the parent's goes on working; a connection opened
** in the child works, and its channel_wait() hears a ring of the parent
** (its own inotify watch, not the parent's inherited one).
**
**   tests/c/fork path/to/chanlite.so
*/
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"

static const char *ext;
static char dir[64], db_path[96];

static sqlite3 *open_db(void) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(db_path, &db) != SQLITE_OK ||
      sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK ||
      sqlite3_busy_timeout(db, 5000) != SQLITE_OK ||
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", 0, 0, &err) !=
        SQLITE_OK) {
    fprintf(stderr, "open %s: %s\n", db_path, err ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    sqlite3_close(db);
    return 0;
  }
  return db;
}

/* The integer result of sql, or -1 with the error in *msg (sqlite3_free it). */
static long long one(sqlite3 *db, const char *sql, char **msg) {
  sqlite3_stmt *s = 0;
  long long v = -1;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, 0);
  if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    v = sqlite3_column_int64(s, 0);
    rc = SQLITE_OK;
  }
  if (rc != SQLITE_OK && msg) *msg = sqlite3_mprintf("%s", sqlite3_errmsg(db));
  sqlite3_finalize(s);
  return v;
}

/* What the child found, as a bit each, sent to the parent as its exit code. */
enum {
  INHERITED_SEND_REFUSED = 1,
  INHERITED_RECV_REFUSED = 2,
  INHERITED_BATCH_REFUSED = 4,
  FRESH_RECEIVES_PARENTS_MESSAGE = 8,
  FRESH_WAIT_HEARS_PARENT = 16,
  INHERITED_VERSION_WORKS = 32,
};

static int child(sqlite3 *inherited, int ready_fd) {
  int found = 0;
  char *msg = 0;
  sqlite3 *fresh;
  char byte = 1;
  if (one(inherited, "SELECT channel_send('fork', 'from the child')", &msg) == -1 && msg &&
      strstr(msg, "chanlite: channel_send(): this connection was opened in process") &&
      strstr(msg, "open a new connection in this process")) {
    found |= INHERITED_SEND_REFUSED;
  }
  sqlite3_free(msg);
  msg = 0;
  if (one(inherited, "SELECT channel_recv('fork') IS NULL", &msg) == -1 && msg &&
      strstr(msg, "after fork()")) {
    found |= INHERITED_RECV_REFUSED;
  }
  sqlite3_free(msg);
  msg = 0;
  if (one(inherited, "SELECT count(*) FROM channel_recv_batch('fork', 10)", &msg) == -1 && msg &&
      strstr(msg, "after fork()")) {
    found |= INHERITED_BATCH_REFUSED;
  }
  sqlite3_free(msg);
  msg = 0;
  if (one(inherited, "SELECT length(chanlite_version()) > 0", 0) == 1) {
    found |= INHERITED_VERSION_WORKS;
  }
  /* Never sqlite3_close(inherited) here: that too would cross fork(). */
  fresh = open_db();
  if (!fresh) return 0;
  if (one(fresh, "SELECT channel_recv('fork') = 'before the fork'", 0) == 1) {
    found |= FRESH_RECEIVES_PARENTS_MESSAGE;
  }
  /* Arm the watch (a first wait that times out), tell the parent, then
  ** wait for the message it sends: the ring must reach this process. */
  one(fresh, "SELECT channel_wait('fork.wait', 0)", 0);
  if (write(ready_fd, &byte, 1) != 1) return found;
  if (one(fresh, "SELECT channel_wait('fork.wait', 10)", 0) == 1 &&
      one(fresh, "SELECT channel_recv('fork.wait') = 'ring'", 0) == 1) {
    found |= FRESH_WAIT_HEARS_PARENT;
  }
  sqlite3_close(fresh);
  return found;
}

int main(int argc, char **argv) {
  /* Static, so that valgrind finds the connection the child inherits and
  ** must not close still reachable when the child exits: a definite leak
  ** there would make valgrind's exit code 1, read as the child's findings. */
  static sqlite3 *db;
  int ready[2], status = 0, found;
  pid_t pid;
  char byte;
  if (argc < 2) {
    fprintf(stderr, "usage: %s path/to/chanlite.so\n", argv[0]);
    return 2;
  }
  ext = argv[1];
  snprintf(dir, sizeof dir, "/tmp/chanlite-fork-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(db_path, sizeof db_path, "%s/f.db", dir);
  db = open_db();
  if (!db || pipe(ready) != 0) return 1;
  /* Every kind of use before the fork: a send, a receive, a group, a wait
  ** (which opens the inotify watch), a batch (its second connection). */
  check(one(db, "SELECT channel_send('fork', 'before the fork') > 0", 0) == 1 &&
          one(db, "SELECT channel_send('fork.x', 'x') > 0", 0) == 1 &&
          one(db, "SELECT channel_recv('fork.x') = 'x'", 0) == 1 &&
          one(db, "SELECT group_add('g', 'fork.g')", 0) == 1 &&
          one(db, "SELECT channel_wait('fork.none', 0)", 0) == 0 &&
          one(db, "SELECT count(*) FROM channel_recv_batch('fork.none', 5)", 0) == 0,
        "the parent used every kind of call before fork()");
  fflush(stdout);
  pid = fork();
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  if (pid == 0) {
    close(ready[0]);
    _exit(child(db, ready[1]));
  }
  close(ready[1]);
  /* The parent goes on with its own connection meanwhile. */
  check(one(db, "SELECT group_send('g', 'still working')", 0) == 1 &&
          one(db, "SELECT channel_recv('fork.g') = 'still working'", 0) == 1,
        "the parent's connection works after fork()");
  if (read(ready[0], &byte, 1) == 1) {
    check(one(db, "SELECT channel_send('fork.wait', 'ring') > 0", 0) == 1,
          "the parent sends while the child waits");
  }
  waitpid(pid, &status, 0);
  found = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
  check(found & INHERITED_SEND_REFUSED,
        "channel_send() on a connection that crossed fork() is refused, naming the fix");
  check(found & INHERITED_RECV_REFUSED, "so is channel_recv()");
  check(found & INHERITED_BATCH_REFUSED, "so is channel_recv_batch()");
  check(found & INHERITED_VERSION_WORKS, "chanlite_version() still answers there");
  check(found & FRESH_RECEIVES_PARENTS_MESSAGE,
        "a connection opened in the child receives what the parent sent before fork()");
  check(found & FRESH_WAIT_HEARS_PARENT,
        "the child's channel_wait() wakes for the parent's send (its own watch)");
  check(one(db, "SELECT count(*) FROM chanlite_message", 0) == 0 &&
          one(db, "SELECT channel_wait('fork.none', 0)", 0) == 0,
        "nothing left queued, and the parent's wait still works");
  sqlite3_close(db);
  unlink(db_path);
  {
    char path[128];
    snprintf(path, sizeof path, "%s-chanlite", db_path);
    unlink(path);
    snprintf(path, sizeof path, "%s-wal", db_path);
    unlink(path);
    snprintf(path, sizeof path, "%s-shm", db_path);
    unlink(path);
  }
  rmdir(dir);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
