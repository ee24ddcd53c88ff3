/*
** Waking receivers when a message is committed, without polling.
**
**   SELECT channel_wait('chat', 5.0);  -- 1 as soon as a message may be in
**                                      -- 'chat' (or already is), 0 after 5 s
**   SELECT chanlite_bell_path();       -- the file to watch yourself
**
** The bell is a file next to the database, `<database>-chanlite`. Whoever
** stores a message rings it after the commit is visible, by writing one byte
** to it. A waiter watches it (inotify on Linux: a file descriptor that an
** event loop can poll, so one descriptor serves every receiver of a process)
** and looks at the queue each time it rings.
**
** Never before the commit: a send outside a transaction rings right after its
** own COMMIT; a send inside the caller's transaction rings from a WAL hook,
** which SQLite calls once the caller's commit is in the WAL and visible. (SQLite keeps one WAL hook per connection and uses it for
** auto-checkpoints: ours checkpoints at the same size the replaced one
** would have, and keeps the WAL bounded when checkpoints starve: ext/disk.c.)
** Never sleeping through one: a waiter arms its watch, drains it, then looks,
** then waits; a commit between the look and the wait leaves an event behind.
**
** Where this cannot work (not Linux, an in-memory database, a bell that
** cannot be created) channel_wait falls back to looking with a backoff from
** 1 to 50 ms. Sends inside a transaction ring only in WAL mode. chanlite_debug()
** says which method is in use. See docs/design.md, Waking.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif
#include "chanlite.h"

/* glibc 2.33 made stat(), lstat() and fstat() symbols of their own
** (GLIBC_2.33); asking the kernel directly keeps chanlite.so loadable on
** glibc 2.17, as its manylinux2014 wheel promises (tests/dist). On x86-64
** and arm64 the kernel's struct stat is glibc's. */
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__)) && \
  defined(SYS_newfstatat) && defined(SYS_fstat)
static int stat_path(const char *path, struct stat *st, int flags) {
  return (int)syscall(SYS_newfstatat, AT_FDCWD, path, st, flags);
}
static int stat_fd(int fd, struct stat *st) {
  return (int)syscall(SYS_fstat, fd, st);
}
#else
static int stat_path(const char *path, struct stat *st, int flags) {
  return fstatat(AT_FDCWD, path, st, flags);
}
static int stat_fd(int fd, struct stat *st) {
  return fstat(fd, st);
}
#endif

static char *bell_path(Chanlite *c) {
  const char *db = sqlite3_db_filename(c->db, "main");
  if (!db || !db[0]) return 0;
  return sqlite3_mprintf("%s-chanlite", db);
}

/* The bell's file: a regular file, never followed through a symlink nor
** opened on a FIFO (where open() would block), for whoever can write next
** to the database could put one there. A new bell gets the database
** file's permission bits (and, under root, its owner), as SQLite gives its
** -wal and -shm files: whoever may write the database may ring, and no one
** who may not read it can watch. */
static int open_bell(Chanlite *c, const char *path) {
  const int flags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  const char *file = sqlite3_db_filename(c->db, "main");
  struct stat db, st;
  int have_db = file && stat_path(file, &db, 0) == 0, created = 1;
  mode_t mode = have_db ? db.st_mode & 0777 : 0600;
  int fd = -1, tries;
  /* Another process may delete the bell between the two: a few tries. */
  for (tries = 0; fd < 0 && tries < 8; tries++) {
    created = 1;
    fd = open(path, flags | O_CREAT | O_EXCL, mode);
    if (fd >= 0 || errno != EEXIST) break;
    created = 0;
    fd = open(path, flags);
    if (fd < 0 && errno != ENOENT) break;
  }
  if (fd < 0) return -1;
  if (stat_fd(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return -1;
  }
  /* Best effort, as SQLite's own: the umask may have taken bits that the
  ** database has, and root's bell would be closed to the database's owner. */
  if (created && (st.st_mode & 0777) != mode && fchmod(fd, mode) != 0) {}
  if (created && have_db && geteuid() == 0 && fchown(fd, db.st_uid, db.st_gid) != 0) {}
  return fd;
}

/* The bell, created if need be, open for ringing; negative if it cannot
** be (-1: not tried yet, -2: tried and failed, so not tried on every send). */
static int bell(Chanlite *c) {
  char *path;
  if (c->bell_fd != -1) return c->bell_fd;
  if (chanlite_in_node()) return c->bell_fd = -2; /* chanlite-node's wake hub rings instead */
  path = bell_path(c);
  c->bell_fd = path ? open_bell(c, path) : -1;
  if (c->bell_fd < 0) c->bell_fd = -2;
  sqlite3_free(path);
  return c->bell_fd;
}

/* Best effort: a waiter that hears nothing still looks again at its
** timeout, so a bell that cannot ring delays delivery, never loses it.
** A bell deleted or replaced since it was opened (no name left: a waiter
** watching the new one would not hear it) is opened again first. */
static void ring(Chanlite *c) {
  int fd = bell(c);
  char byte = 0;
  struct stat st;
  if (fd >= 0 && stat_fd(fd, &st) == 0 && st.st_nlink == 0) {
    close(fd);
    c->bell_fd = -1;
    fd = bell(c);
  }
  if (fd >= 0 && pwrite(fd, &byte, 1, 0) < 0) return; /* nothing more to do */
}

static int wal_hook(void *arg, sqlite3 *db, const char *zDb, int frames) {
  Chanlite *c = arg;
  if (c->ring_on_commit) {
    c->ring_on_commit = 0;
    ring(c);
  }
  /* After the ring: a checkpoint that waits must not delay the wake-up. */
  chanlite_disk_checkpoint(c, db, zDb, frames);
  return SQLITE_OK;
}

/* Before a call commits. Our WAL hook sees every commit of the connection
** from then on (the call's own, or the caller's for a call inside the
** caller's transaction): it rings for a send, and it checkpoints (ext/disk.c).
** Installed again by every write call, since PRAGMA wal_autocheckpoint
** replaces it. What it replaces is SQLite's default hook, whose argument is
** the auto-checkpoint size, or none (size 0). The second connection of
** channel_recv_batch keeps a hook of its own (ext/disk.c) and rings after
** its commits. */
void chanlite_watch_commit(Chanlite *c) {
  void *prev;
  if (c->sent && !c->own_txn) c->ring_on_commit = 1;
  if (c->batch_side || chanlite_in_node()) return; /* dqlite checkpoints */
  prev = sqlite3_wal_hook(c->db, wal_hook, c);
  if (prev != c) {
    c->autocheckpoint = (uintptr_t)prev <= 1000000000u ? (int)(uintptr_t)prev : 0;
    c->wal_hooked = 1;
  }
}

/* A send that committed on its own rings here, once its COMMIT has
** returned; a send inside the caller's transaction rings from the WAL hook,
** at the caller's commit (in WAL mode). Ringing from the hook for a call's
** own commit too, one step earlier, cut layer throughput from about 7,000
** to 2,000 messages/s (bench/peers --quick, 100 B), with the queue kept
** nearly empty (p50 latency 0.45 ms instead of 6 ms): more, smaller pops
** contending for the write lock. */
void chanlite_after_commit(Chanlite *c, int own_txn) {
  if (own_txn) ring(c);
}

/* Before the state is freed while the connection stays open (the extension
** loaded again into it): a hook left behind would call into freed memory.
** Puts back the auto-checkpoint that ours stood in for. */
void chanlite_unwatch_commits(Chanlite *c) {
  void *prev;
  if (!c->wal_hooked) return;
  c->wal_hooked = 0;
  prev = sqlite3_wal_hook(c->db, 0, 0);
  if (prev == c) {
    sqlite3_wal_autocheckpoint(c->db, c->autocheckpoint);
  } else if ((uintptr_t)prev <= 1000000000u) {
    sqlite3_wal_autocheckpoint(c->db, (int)(uintptr_t)prev); /* SQLite's own: keep it */
  } else {
    /* Someone else's hook, whose function is unknown here: it is lost. */
    sqlite3_log(SQLITE_WARNING, "chanlite: a WAL hook installed after chanlite's was removed "
                                "when chanlite was loaded again");
  }
}

void chanlite_wake_open(Chanlite *c) {
  c->bell_fd = c->watch_fd = -1;
  c->pid = (long)getpid();
}

/* SQLite's rule is that a connection must not cross fork(): the child would
** share the parent's locks as SQLite's memory records them, not as the
** kernel holds them (so another process could, say, delete a WAL the child
** is still writing), and the inherited inotify descriptor is the parent's
** too, so the two would steal each other's rings. A call on such a
** connection is refused, naming the fix, rather than risk a lost message.
** (The Python package never carries a connection across fork: it closes
** its connections before fork() and opens new ones in the child.) */
int chanlite_check_process(Chanlite *c) {
  long now = (long)getpid();
  if (now == c->pid) return SQLITE_OK;
  return chanlite_fail(c, SQLITE_MISUSE,
                       "%s(): this connection was opened in process %ld and is used in "
                       "process %ld, after fork(): SQLite connections must not cross "
                       "fork(); open a new connection in this process",
                       c->fn, c->pid, now);
}

void chanlite_wake_close(Chanlite *c) {
  if (c->bell_fd >= 0) close(c->bell_fd);
  if (c->watch_fd >= 0) close(c->watch_fd);
  c->bell_fd = c->watch_fd = -1;
}

#ifdef __linux__
/* A ring, and anything that may leave the watch on a file that is no
** longer the bell (deleted, replaced, moved; IN_ATTRIB comes with the
** unlink itself, while an open descriptor delays IN_DELETE_SELF), or events
** dropped (IN_Q_OVERFLOW, one of them may have been that). */
#define BELL_EVENTS (IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
#define BELL_GONE (IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_Q_OVERFLOW)
#endif

/* An inotify descriptor watching the bell, or negative where there is none.
** The watch goes on the very file the bell descriptor holds (through
** /proc/self/fd: a watch added by name may land on a file deleted between
** the name's lookup and the watch, which then never hears a ring), and
** only counts if that file still has the bell's name afterwards: from then
** on its deletion or replacement shows as an event (BELL_GONE). */
static int watch(Chanlite *c) {
#ifdef __linux__
  char *path, held_path[40];
  int fd, tries;
  struct stat held, named;
  if (c->watch_fd != -1) return c->watch_fd; /* -2: tried and failed */
  c->watch_fd = -2;
  if (!(path = bell_path(c))) return -2;
  for (tries = 0; tries < 8 && bell(c) >= 0; tries++) {
    fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) break;
    sqlite3_snprintf(sizeof held_path, held_path, "/proc/self/fd/%d", c->bell_fd);
    if (inotify_add_watch(fd, held_path, BELL_EVENTS) < 0 &&
        inotify_add_watch(fd, path, BELL_EVENTS | IN_DONT_FOLLOW) < 0) {
      close(fd);
      break;
    }
    if (stat_fd(c->bell_fd, &held) == 0 && held.st_nlink > 0 &&
        stat_path(path, &named, AT_SYMLINK_NOFOLLOW) == 0 && named.st_ino == held.st_ino &&
        named.st_dev == held.st_dev) {
      c->watch_fd = fd;
      break;
    }
    close(fd); /* the bell changed meanwhile: open whatever has its name now */
    close(c->bell_fd);
    c->bell_fd = -1;
  }
  sqlite3_free(path);
  return c->watch_fd;
#else
  (void)c;
  return -2;
#endif
}

/* Reads every pending event; nonzero if the bell may have been replaced. */
static int drain(int fd) {
  int gone = 0;
#ifdef __linux__
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t n, at;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    for (at = 0; at + (ssize_t)sizeof(struct inotify_event) <= n;) {
      const struct inotify_event *e = (const struct inotify_event *)(buf + at);
      gone |= (e->mask & BELL_GONE) != 0;
      at += (ssize_t)sizeof *e + e->len;
    }
  }
#else
  (void)fd;
#endif
  return gone;
}

/* After the bell was deleted or replaced: watch (and ring) whatever file
** has its name now, creating it if none; the caller looks at the queue
** after, so a ring that went to the old file is not slept through. */
static int watch_again(Chanlite *c) {
  if (c->watch_fd >= 0) close(c->watch_fd);
  if (c->bell_fd >= 0) close(c->bell_fd);
  c->watch_fd = c->bell_fd = -1;
  return watch(c);
}

double chanlite_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_seconds(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* SQLite reports an interrupt to the next statement stepped. */
static int interrupted(Chanlite *c) {
  sqlite3_stmt *s = chanlite_stmt(c, CHANLITE_STMT_NOOP);
  int found;
  return s ? chanlite_step_exists(c, s, &found) : c->err_code;
}

static int in_transaction(Chanlite *c) {
  if (!sqlite3_get_autocommit(c->db)) return 1;
#if SQLITE_VERSION_NUMBER >= 3034000
  /* A statement that reads tables and calls channel_wait holds a snapshot
  ** too; only 3.34+ can tell. */
  if (sqlite3_libversion_number() >= 3034000 &&
      sqlite3_txn_state(c->db, "main") != SQLITE_TXN_NONE) {
    return 1;
  }
#endif
  return 0;
}

static void fn_wait(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  ChannelName ch;
  int type = sqlite3_value_type(argv[1]);
  double timeout = sqlite3_value_double(argv[1]), deadline, left = 0, backoff = 0.001;
  int found = 0, fd;
  int rc = chanlite_channel_arg(c, argv[0], &ch);
  (void)argc;
  if (rc == SQLITE_OK && chanlite_in_node()) {
    rc = chanlite_fail(c, SQLITE_MISUSE,
                       "channel_wait() cannot run in a dqlite node: it would block the node's "
                       "event loop, and every client with it; wait on the node's wake hub "
                       "(docs/cluster.md)");
  }
  if (rc == SQLITE_OK &&
      !((type == SQLITE_INTEGER || type == SQLITE_FLOAT) && isfinite(timeout) && timeout >= 0)) {
    rc = chanlite_fail(c, SQLITE_MISMATCH,
                       "channel_wait() timeout must be a non-negative number of seconds, not %s",
                       chanlite_type_name(type));
  }
  if (rc == SQLITE_OK && in_transaction(c)) {
    rc = chanlite_fail(c, SQLITE_MISUSE,
                       "channel_wait() cannot wait inside a transaction or a statement that "
                       "reads tables: its snapshot would never show a new message");
  }
  if (rc != SQLITE_OK) {
    chanlite_report(c, ctx);
    return;
  }
  chanlite_disk_between_batches(c);
  /* Looks at the queue first, then only when the bell rings: a ring that
  ** never comes shows as a timeout, not as a late delivery that hides it. */
  deadline = chanlite_monotonic() + timeout;
  fd = watch(c);
  if (fd >= 0 && drain(fd)) fd = watch_again(c);
  rc = chanlite_peek(c, &ch, &found);
  while (rc == SQLITE_OK && !found && (left = deadline - chanlite_monotonic()) > 0) {
    if (fd >= 0) {
      /* A second at a time, to notice sqlite3_interrupt(). */
      struct pollfd p = {fd, POLLIN, 0};
      if (poll(&p, 1, (int)ceil((left < 1.0 ? left : 1.0) * 1000)) > 0) {
        if (drain(fd)) fd = watch_again(c);
        rc = chanlite_peek(c, &ch, &found);
      } else {
        rc = interrupted(c);
      }
    } else {
      sleep_seconds(left < backoff ? left : backoff);
      backoff = backoff * 2 < 0.05 ? backoff * 2 : 0.05;
      rc = chanlite_peek(c, &ch, &found);
    }
  }
  if (rc != SQLITE_OK) chanlite_report(c, ctx);
  else sqlite3_result_int(ctx, found);
}

static void fn_bell_path(Chanlite *c, sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  char *path;
  (void)argc;
  (void)argv;
  if (bell(c) < 0 || !(path = bell_path(c))) {
    sqlite3_result_null(ctx);
    return;
  }
  sqlite3_result_text(ctx, path, -1, sqlite3_free);
}

/* Neither writes to the database; both touch the file system next to it,
** which a view or trigger has no business doing: DIRECTONLY. */
const ChanliteFunction chanlite_wake_functions[] = {
  {"channel_wait", 2, 2, "channel_wait(channel, timeout_seconds)", CHANLITE_WRITE, fn_wait},
  {"chanlite_bell_path", 0, 0, "chanlite_bell_path()", CHANLITE_WRITE, fn_bell_path},
};
const int chanlite_wake_function_count = (int)(sizeof chanlite_wake_functions /
                                               sizeof chanlite_wake_functions[0]);
