/*
** Power loss, simulated: everything not yet synced is discarded at a random
** point, hundreds of times; the database always opens cleanly and passes
** PRAGMA integrity_check, and no acknowledged send or receive is lost where
** the setting promises it.
**
**   powerloss path/to/chanlite.so [cuts-per-mode]
**
** A VFS shim over the default unix VFS (the idea of SQLite's own "crash" VFS
** in src/test6.c, written afresh: instead of holding unsynced writes back, it
** lets every write through and keeps, per file, an undo record of what each
** write since that file's last xSync overwrote). At the chosen write-side
** call (xWrite, xTruncate, xSync or xDelete number N) the power goes: each
** file of the database (main file, WAL, rollback journal) is put back as it
** was at its last xSync, or, on a torn cut, each 512-byte piece of each
** unsynced write independently is either put back or kept (disks reorder and
** tear unsynced writes). Directory entries are modelled too: a file deleted
** without a directory sync (xDelete with syncDir 0, as SQLite commits a
** DELETE-mode transaction under synchronous=FULL) comes back, with its last
** synced content, until a directory sync (xDelete with syncDir 1, or the
** first xSync of a newly created journal or WAL, as the unix VFS does it)
** makes the deletion durable. From the cut on, every call of the shim fails,
** so the connections see an I/O error and are closed; then the files are
** opened again with the plain unix VFS, as after a reboot. The shim never
** calls fsync itself: durability is what it simulates, so the test runs at
** memory speed on any disk.
**
** The traffic, on two connections of one process (one sends, one receives):
** channel_send alone and 2 to 5 in a transaction, group_send alone and with a
** send in a transaction, channel_recv and channel_recv_batch in a transaction
** that also records what it got in an app table, `received` (chanlite's
** transactional receive: both commit or neither does), and both in autocommit
** (channel_recv_batch then pops through chanlite's second connection). A call
** is acknowledged when it, or its COMMIT, returned. After each cut the
** restarted app checks:
**   - integrity_check is ok and chanlite's queue counters match the rows;
**   - each transaction is all or nothing (every message of a send or
**     group_send, every row of a recorded receive);
**   - the transactions that survived are a prefix of the acknowledged ones
**     in commit order (plus, at most, the one the cut interrupted): only the
**     last ones can be lost, never one from the middle;
**   - what is queued (drained, byte for byte, in order) and what is in
**     `received` are exactly what the surviving transactions leave: nothing
**     forged, duplicated or resurrected (a receive undone puts its message
**     back, in order);
**   - with synchronous=FULL in WAL mode, and EXTRA in rollback-journal
**     (DELETE) mode, no acknowledged transaction is lost.
** synchronous=NORMAL in WAL mode, and FULL in DELETE mode (whose commit is
** the journal's deletion, which FULL does not make durable: SQLite's EXTRA
** does), may lose the last acknowledged transactions: how many, and how much
** time's worth of work at most, is printed for docs/operations/durability.md.
** (NORMAL in rollback-journal mode is not covered: SQLite documents that
** power loss can corrupt the database there.)
**
** Each mode keeps one database across its cuts: after a check the app
** drains the queues, empties `received` and goes on from there. The seed is
** printed; CHANLITE_POWERLOSS_SEED repeats a run. The cuts per mode come from
** the second argument or CHANLITE_POWERLOSS_CUTS (default 100; fewer under
** the sanitizers, in tests/sanitize.sh). Prints one line per check.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

#define SECTOR 512
#define CHANNELS 4
#define MAX_TXNS 32768
#define MAX_DELIVERIES 16
#define MAX_BODY 12000

/* ---------------------------------------------------------------------- */
/* Randomness: one seeded generator, so that a seed repeats a run. */

static uint64_t rng_state;

static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}

static int rnd_below(int n) {
  return (int)(rnd() % (uint32_t)n);
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "powerloss: out of memory\n");
    exit(2);
  }
  return p;
}

/* ---------------------------------------------------------------------- */
/* The shim VFS. */

/* What one write since the last sync overwrote, so that it can be put back. */
typedef struct Undo {
  sqlite3_int64 offset;
  int size;
  unsigned char *old;
  struct Undo *next; /* older */
} Undo;

/* One file of the database as the disk holds it: what it was at its last
** sync (its size, and the undo records of every write since). */
typedef struct Tracked {
  char *path;  /* where it is now */
  char *aside; /* deleted without a directory sync: moved here */
  int gone;    /* deleted durably */
  sqlite3_int64 synced_size;
  Undo *undo; /* newest first */
  struct Tracked *next;
} Tracked;

typedef struct PlFile {
  sqlite3_file base;
  Tracked *tracked; /* 0: a temporary file, not part of the database */
  int dir_sync_due; /* a new journal or WAL: its first xSync syncs the directory */
  sqlite3_file *real;
} PlFile;

static sqlite3_vfs *unix_vfs;
static Tracked *tracked_files; /* live files and files deleted but not durably */
static long ops, cut_at;       /* write-side calls so far, and the one that cuts */
static int dead, tear;
static double cut_time;
static unsigned aside_counter;

static Tracked *find_tracked(const char *path) {
  Tracked *t;
  for (t = tracked_files; t; t = t->next) {
    if (!t->aside && !t->gone && strcmp(t->path, path) == 0) return t;
  }
  return 0;
}

static sqlite3_int64 file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (sqlite3_int64)st.st_size : -1;
}

static Tracked *track(const char *path) {
  Tracked *t = find_tracked(path);
  size_t n = strlen(path) + 1;
  if (t) return t;
  t = xmalloc(sizeof *t);
  memset(t, 0, sizeof *t);
  t->path = xmalloc(n);
  memcpy(t->path, path, n);
  t->synced_size = file_size(path);
  if (t->synced_size < 0) t->synced_size = 0;
  t->next = tracked_files;
  tracked_files = t;
  return t;
}

static void forget_undo(Tracked *t) {
  while (t->undo) {
    Undo *u = t->undo;
    t->undo = u->next;
    free(u->old);
    free(u);
  }
}

static void forget_all(void) {
  while (tracked_files) {
    Tracked *t = tracked_files;
    tracked_files = t->next;
    forget_undo(t);
    free(t->path);
    free(t->aside);
    free(t);
  }
}

/* A directory sync: deletions so far are durable. (Kept in the list, gone,
** as a file handle may still point at one.) */
static void directory_synced(void) {
  Tracked *t;
  for (t = tracked_files; t; t = t->next) {
    if (t->aside && !t->gone) {
      unlink(t->aside);
      t->gone = 1;
      forget_undo(t);
    }
  }
}

static void put_back(Tracked *t) {
  const char *path = t->aside ? t->aside : t->path;
  int fd;
  sqlite3_int64 size = file_size(path);
  Undo *u;
  if (t->gone) return;
  fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    perror("powerloss: open to put back");
    exit(2);
  }
  for (u = t->undo; u; u = u->next) {
    int at;
    for (at = 0; at < u->size; at += SECTOR) {
      int n = u->size - at < SECTOR ? u->size - at : SECTOR;
      if (tear && rnd_below(2)) continue; /* this piece reached the disk */
      if (pwrite(fd, u->old + at, (size_t)n, (off_t)(u->offset + at)) != n) {
        perror("powerloss: pwrite");
        exit(2);
      }
    }
  }
  /* A torn cut may keep the new length (its unsynced tail then holds
  ** whatever pieces were kept, or the old bytes, or zeros). */
  if (!(tear && rnd_below(2)) || size < t->synced_size) size = t->synced_size;
  if (ftruncate(fd, (off_t)size) != 0) {
    perror("powerloss: ftruncate");
    exit(2);
  }
  close(fd);
}

/* The power goes: every file back to what the disk holds. Files deleted
** without a directory sync come back, over whatever took their name since
** (the first deletion of a name wins: that is the directory's synced state). */
static void cut_power(void) {
  Tracked *t;
  dead = 1;
  cut_time = monotonic();
  for (t = tracked_files; t; t = t->next) put_back(t);
  for (t = tracked_files; t; t = t->next) {
    Tracked *older;
    if (!t->aside || t->gone) continue;
    for (older = t->next; older; older = older->next) {
      if (older->aside && !older->gone && strcmp(older->path, t->path) == 0) break;
    }
    if (older) unlink(t->aside); /* an older deletion of this name wins */
    else if (rename(t->aside, t->path) != 0) {
      perror("powerloss: rename");
      exit(2);
    }
  }
}

/* Every write-side call counts; the chosen one finds the power gone. */
static int power_fails_now(void) {
  if (dead) return 1;
  if (cut_at > 0 && ++ops >= cut_at) {
    cut_power();
    return 1;
  }
  return 0;
}

static int pl_close(sqlite3_file *f) {
  PlFile *p = (PlFile *)f;
  int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
  return rc;
}

static int pl_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
  PlFile *p = (PlFile *)f;
  if (dead && p->tracked) return SQLITE_IOERR_READ;
  return p->real->pMethods->xRead(p->real, buf, n, off);
}

static int pl_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  PlFile *p = (PlFile *)f;
  if (p->tracked) {
    Undo *u;
    int rc;
    if (power_fails_now()) return SQLITE_IOERR_WRITE;
    u = xmalloc(sizeof *u);
    u->offset = off;
    u->size = n;
    u->old = xmalloc((size_t)n);
    rc = p->real->pMethods->xRead(p->real, u->old, n, off); /* short: zero-filled */
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
      free(u->old);
      free(u);
      return rc;
    }
    u->next = p->tracked->undo;
    p->tracked->undo = u;
  }
  return p->real->pMethods->xWrite(p->real, buf, n, off);
}

static int pl_truncate(sqlite3_file *f, sqlite3_int64 size) {
  PlFile *p = (PlFile *)f;
  if (p->tracked) {
    sqlite3_int64 now = 0;
    if (power_fails_now()) return SQLITE_IOERR_TRUNCATE;
    if (p->real->pMethods->xFileSize(p->real, &now) == SQLITE_OK && now > size) {
      /* The cut-off tail, as an undo record: a truncation not synced yet
      ** may not have happened. */
      Undo *u = xmalloc(sizeof *u);
      u->offset = size;
      u->size = (int)(now - size);
      u->old = xmalloc((size_t)u->size);
      if (p->real->pMethods->xRead(p->real, u->old, u->size, size) != SQLITE_OK) {
        memset(u->old, 0, (size_t)u->size);
      }
      u->next = p->tracked->undo;
      p->tracked->undo = u;
    }
  }
  return p->real->pMethods->xTruncate(p->real, size);
}

/* Durable from here: the undo records go. The real fsync is not needed. */
static int pl_sync(sqlite3_file *f, int flags) {
  PlFile *p = (PlFile *)f;
  sqlite3_int64 size = 0;
  (void)flags;
  if (!p->tracked) return SQLITE_OK;
  if (power_fails_now()) return SQLITE_IOERR_FSYNC;
  forget_undo(p->tracked);
  if (p->real->pMethods->xFileSize(p->real, &size) == SQLITE_OK) p->tracked->synced_size = size;
  if (p->dir_sync_due) {
    p->dir_sync_due = 0;
    directory_synced();
  }
  return SQLITE_OK;
}

static int pl_file_size(sqlite3_file *f, sqlite3_int64 *size) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xFileSize(p->real, size);
}

static int pl_lock(sqlite3_file *f, int level) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xLock(p->real, level);
}

static int pl_unlock(sqlite3_file *f, int level) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xUnlock(p->real, level);
}

static int pl_check_reserved(sqlite3_file *f, int *out) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int pl_file_control(sqlite3_file *f, int op, void *arg) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int pl_sector_size(sqlite3_file *f) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xSectorSize(p->real);
}

static int pl_device_characteristics(sqlite3_file *f) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xDeviceCharacteristics(p->real);
}

/* The wal-index lives in shared memory, rebuilt from the WAL by the first
** connection after a restart: passed through. */
static int pl_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xShmMap(p->real, page, size, extend, out);
}

static int pl_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void pl_shm_barrier(sqlite3_file *f) {
  PlFile *p = (PlFile *)f;
  p->real->pMethods->xShmBarrier(p->real);
}

static int pl_shm_unmap(sqlite3_file *f, int delete_flag) {
  PlFile *p = (PlFile *)f;
  return p->real->pMethods->xShmUnmap(p->real, delete_flag);
}

/* Version 2: no xFetch, so SQLite never reads through mmap behind our back. */
static const sqlite3_io_methods pl_methods = {
  2,
  pl_close,
  pl_read,
  pl_write,
  pl_truncate,
  pl_sync,
  pl_file_size,
  pl_lock,
  pl_unlock,
  pl_check_reserved,
  pl_file_control,
  pl_sector_size,
  pl_device_characteristics,
  pl_shm_map,
  pl_shm_lock,
  pl_shm_barrier,
  pl_shm_unmap,
  0,
  0,
};

static int pl_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out) {
  PlFile *p = (PlFile *)f;
  int type = flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL |
                      SQLITE_OPEN_SUPER_JOURNAL);
  int rc;
  (void)vfs;
  memset(p, 0, sizeof *p);
  p->real = (sqlite3_file *)(p + 1);
  if (dead && name && type) return SQLITE_CANTOPEN;
  rc = unix_vfs->xOpen(unix_vfs, name, p->real, flags, out);
  if (rc != SQLITE_OK) return rc;
  p->base.pMethods = &pl_methods;
  if (name && type) {
    p->tracked = track(name);
    p->dir_sync_due = (flags & SQLITE_OPEN_CREATE) && !(flags & SQLITE_OPEN_MAIN_DB);
  }
  return SQLITE_OK;
}

static int pl_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
  Tracked *t;
  char aside[600];
  (void)vfs;
  if (power_fails_now()) return SQLITE_IOERR_DELETE;
  if (sync_dir || file_size(name) < 0) {
    int rc = unix_vfs->xDelete(unix_vfs, name, 0); /* the directory sync is simulated */
    t = find_tracked(name);
    if (t) t->gone = 1; /* a file created later under this name is new */
    if (sync_dir) directory_synced();
    return rc;
  }
  /* Not durable until a directory sync: set aside, to come back at a cut. */
  t = track(name);
  snprintf(aside, sizeof aside, "%s-aside%u", name, ++aside_counter);
  if (rename(name, aside) != 0) return SQLITE_IOERR_DELETE;
  t->aside = xmalloc(strlen(aside) + 1);
  memcpy(t->aside, aside, strlen(aside) + 1);
  return SQLITE_OK;
}

static int pl_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
  (void)vfs;
  return unix_vfs->xAccess(unix_vfs, name, flags, out);
}

static int pl_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
  (void)vfs;
  return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}

/* sqlite3_load_extension goes through the VFS. */
static void *pl_dlopen(sqlite3_vfs *vfs, const char *name) {
  (void)vfs;
  return unix_vfs->xDlOpen(unix_vfs, name);
}

static void pl_dlerror(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  unix_vfs->xDlError(unix_vfs, n, out);
}

static void (*pl_dlsym(sqlite3_vfs *vfs, void *handle, const char *name))(void) {
  (void)vfs;
  return unix_vfs->xDlSym(unix_vfs, handle, name);
}

static void pl_dlclose(sqlite3_vfs *vfs, void *handle) {
  (void)vfs;
  unix_vfs->xDlClose(unix_vfs, handle);
}

static int pl_randomness(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return unix_vfs->xRandomness(unix_vfs, n, out);
}

static int pl_sleep(sqlite3_vfs *vfs, int us) {
  (void)vfs;
  return unix_vfs->xSleep(unix_vfs, us);
}

static int pl_current_time(sqlite3_vfs *vfs, double *out) {
  (void)vfs;
  return unix_vfs->xCurrentTime(unix_vfs, out);
}

static int pl_last_error(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return unix_vfs->xGetLastError(unix_vfs, n, out);
}

static int pl_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
  (void)vfs;
  return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}

static sqlite3_vfs pl_vfs = {
  2,
  0,
  1024,
  0,
  "powerloss",
  0,
  pl_open,
  pl_delete,
  pl_access,
  pl_full_pathname,
  pl_dlopen,
  pl_dlerror,
  pl_dlsym,
  pl_dlclose,
  pl_randomness,
  pl_sleep,
  pl_current_time,
  pl_last_error,
  pl_current_time_int64,
  0,
  0,
  0,
};

/* ---------------------------------------------------------------------- */
/* The traffic and what the app was told. */

enum { SEND, RECV_RECORDED, RECV_AUTO };

typedef struct Delivery {
  int msg, ch;
} Delivery;

/* One transaction of the app, in commit order; acknowledged once its call
** or COMMIT returned. The last may be the one the cut interrupted. */
typedef struct Txn {
  int kind, acked, pops_unknown;
  int ch, want; /* an autocommit receive: where, and at most how many */
  double acked_at;
  int n;
  Delivery d[MAX_DELIVERIES];
} Txn;

typedef struct Mode {
  const char *name, *journal;
  int synchronous, durable;
} Mode;

static const char *channel_names[CHANNELS] = {"pl.a", "pl.b", "pl.g1", "pl.g2"};
static const char *ext;
static char db_path[256];
static Txn txns[MAX_TXNS];
static int n_txns;
static int first_msg, next_msg;
/* The queues as the acknowledged transactions left them: message numbers. */
static int *queue[CHANNELS], queue_head[CHANNELS], queue_tail[CHANNELS], queue_cap;
static int *msg_txn; /* the send transaction of each message this round */
static char *body_buf;
static int autocheckpoint;

static int make_body(char *buf, int msg) {
  int n = snprintf(buf, 32, "%d ", msg);
  int pad = msg % 37 == 36 ? 9000 : (msg * 7919) % 1500;
  memset(buf + n, 'a' + msg % 26, (size_t)pad);
  return n + pad;
}

static sqlite3 *open_conn(const char *vfs, int synchronous) {
  sqlite3 *db = 0;
  char *err = 0, sql[200];
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs) != SQLITE_OK ||
      sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "powerloss: open %s: %s\n", db_path, err ? err : sqlite3_errmsg(db));
    exit(2);
  }
  sqlite3_busy_timeout(db, 5000);
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%d; PRAGMA wal_autocheckpoint=%d", synchronous,
           autocheckpoint);
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "powerloss: %s: %s\n", sql, err);
    exit(2);
  }
  return db;
}

/* Fails the run when a call fails with the power still on. */
static void unexpected(sqlite3 *db, const char *what) {
  fprintf(stderr, "powerloss: %s failed with the power on: %s (%d)\n", what, sqlite3_errmsg(db),
          sqlite3_extended_errcode(db));
  exit(1);
}

static int run(sqlite3 *db, const char *sql) {
  if (sqlite3_exec(db, sql, 0, 0, 0) == SQLITE_OK) return 0;
  if (!dead) unexpected(db, sql);
  return -1;
}

static Txn *new_txn(int kind) {
  Txn *t = &txns[n_txns];
  if (n_txns >= MAX_TXNS - 1) {
    fprintf(stderr, "powerloss: more than %d transactions in a round\n", MAX_TXNS);
    exit(2);
  }
  memset(t, 0, sizeof *t);
  t->kind = kind;
  return t;
}

static void acknowledge(Txn *t) {
  int i;
  t->acked = 1;
  t->acked_at = monotonic();
  for (i = 0; i < t->n; i++) {
    int ch = t->d[i].ch;
    if (t->kind == SEND) {
      msg_txn[t->d[i].msg - first_msg] = n_txns;
      queue[ch][queue_tail[ch]++] = t->d[i].msg;
    } else {
      queue_head[ch]++;
    }
  }
  n_txns++;
}

/* The interrupted transaction stays last in the log, unacknowledged. */
static void interrupted(Txn *t, sqlite3 *db, int explicit_txn) {
  int i;
  if (explicit_txn) sqlite3_exec(db, "ROLLBACK", 0, 0, 0);
  if (t->kind == SEND) {
    for (i = 0; i < t->n; i++) msg_txn[t->d[i].msg - first_msg] = n_txns;
  }
  if (t->n > 0 || t->pops_unknown) n_txns++;
}

static int send_op(sqlite3 *db, sqlite3_stmt *send, sqlite3_stmt *gsend) {
  int r = rnd_below(100);
  int explicit_txn = r >= 50, group = r < 25 || r >= 85;
  int sends = r < 25 ? 0 : r < 50 ? 1 : r < 85 ? 2 + rnd_below(4) : 1;
  Txn *t = new_txn(SEND);
  int i, len;
  if (explicit_txn && run(db, "BEGIN IMMEDIATE") != 0) goto fail;
  for (i = 0; i < sends + group; i++) {
    int msg = next_msg++;
    sqlite3_stmt *s = i < sends ? send : gsend;
    len = make_body(body_buf, msg);
    if (i < sends) {
      t->d[t->n].msg = msg;
      t->d[t->n++].ch = rnd_below(2);
      sqlite3_bind_text(s, 1, channel_names[t->d[t->n - 1].ch], -1, SQLITE_STATIC);
    } else { /* the group's members: pl.g1 and pl.g2 */
      t->d[t->n].msg = msg;
      t->d[t->n++].ch = 2;
      t->d[t->n].msg = msg;
      t->d[t->n++].ch = 3;
    }
    sqlite3_bind_text(s, 2, body_buf, len, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) {
      sqlite3_reset(s);
      if (!dead) unexpected(db, i < sends ? "channel_send" : "group_send");
      goto fail;
    }
    if (s == gsend && sqlite3_column_int(s, 0) != 2) {
      fprintf(stderr, "powerloss: group_send reached %d members, not 2\n",
              sqlite3_column_int(s, 0));
      exit(1);
    }
    sqlite3_reset(s);
  }
  if (explicit_txn && run(db, "COMMIT") != 0) goto fail;
  acknowledge(t);
  return 0;
fail:
  interrupted(t, db, explicit_txn);
  return -1;
}

/* A received message must be the oldest acknowledged one of its channel not
** received yet (after the ones this transaction already took), intact. */
static void expect_next(Txn *t, int ch, sqlite3_value *v) {
  const char *z = (const char *)sqlite3_value_blob(v);
  int n = sqlite3_value_bytes(v), msg = -1, len, taken = 0, i;
  char head[32];
  snprintf(head, sizeof head, "%.*s", n < 20 ? n : 20, z ? z : "");
  for (i = 0; i < t->n; i++) taken += t->d[i].ch == ch;
  if (sscanf(head, "%d ", &msg) != 1 || queue_head[ch] + taken >= queue_tail[ch] ||
      queue[ch][queue_head[ch] + taken] != msg) {
    fprintf(stderr, "powerloss: %s gave message '%s', expected %d\n", channel_names[ch], head,
            queue_head[ch] + taken < queue_tail[ch] ? queue[ch][queue_head[ch] + taken] : -1);
    exit(1);
  }
  len = make_body(body_buf, msg);
  if (len != n || memcmp(body_buf, z, (size_t)n) != 0) {
    fprintf(stderr, "powerloss: message %d damaged in %s\n", msg, channel_names[ch]);
    exit(1);
  }
  if (t->n >= MAX_DELIVERIES) {
    fprintf(stderr, "powerloss: too many messages in one receive\n");
    exit(2);
  }
  t->d[t->n].msg = msg;
  t->d[t->n++].ch = ch;
}

typedef struct RecvStmts {
  sqlite3_stmt *recv[CHANNELS], *batch[CHANNELS], *record;
} RecvStmts;

static int recv_op(sqlite3 *db, RecvStmts *st) {
  int r = rnd_below(100), ch = rnd_below(CHANNELS), rc = SQLITE_OK, i;
  int explicit_txn = r < 70, use_batch = r < 35 || r >= 85;
  int want = use_batch ? 1 + rnd_below(MAX_DELIVERIES) : explicit_txn ? 1 + rnd_below(3) : 1;
  sqlite3_stmt *get = use_batch ? st->batch[ch] : st->recv[ch];
  Txn *t = new_txn(explicit_txn ? RECV_RECORDED : RECV_AUTO);
  t->ch = ch;
  t->want = want;
  if (explicit_txn && run(db, "BEGIN IMMEDIATE") != 0) goto fail;
  t->pops_unknown = !explicit_txn; /* until the call returns */
  for (i = 0; i < want; i++) {
    if (use_batch) sqlite3_bind_int(get, 2, want);
    while ((rc = sqlite3_step(get)) == SQLITE_ROW) {
      sqlite3_value *v = sqlite3_column_value(get, 0);
      if (sqlite3_value_type(v) == SQLITE_NULL) break; /* channel_recv: nothing */
      expect_next(t, ch, v);
      if (explicit_txn) {
        sqlite3_bind_int(st->record, 1, n_txns);
        sqlite3_bind_int(st->record, 2, t->d[t->n - 1].msg);
        sqlite3_bind_int(st->record, 3, ch);
        if (sqlite3_step(st->record) != SQLITE_DONE) {
          sqlite3_reset(st->record);
          sqlite3_reset(get);
          if (!dead) unexpected(db, "INSERT INTO received");
          goto fail;
        }
        sqlite3_reset(st->record);
      }
    }
    sqlite3_reset(get);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      if (!dead) unexpected(db, use_batch ? "channel_recv_batch" : "channel_recv");
      goto fail;
    }
    if (use_batch || t->n <= i) break; /* one batch; or the channel is empty */
  }
  t->pops_unknown = 0;
  if (explicit_txn && run(db, "COMMIT") != 0) goto fail;
  if (t->n > 0) acknowledge(t);
  return 0;
fail:
  interrupted(t, db, explicit_txn);
  return -1;
}

/* ---------------------------------------------------------------------- */
/* After the cut: what the restarted app finds. */

typedef struct Stats {
  int cuts, torn, failures, max_lost_txns, max_lost_messages, cuts_with_loss;
  long acked, popped_unacked;
  double max_lost_ms;
} Stats;

static sqlite3_int64 query_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  sqlite3_int64 v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    v = sqlite3_column_int64(s, 0);
  } else {
    fprintf(stderr, "powerloss: %s: %s\n", sql, sqlite3_errmsg(db));
  }
  sqlite3_finalize(s);
  return v;
}

/* One finding of one cut: printed with the cut, counted against the mode. */
static int cut_failed(Stats *st, const Mode *m, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static int cut_failed(Stats *st, const Mode *m, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "powerloss: %s, cut %d (%s, at write-side call %ld): ", m->name, st->cuts,
          tear ? "torn" : "clean", cut_at);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  st->failures++;
  return 1;
}

/* Receives everything queued in `ch` (autocommit batches, as a restarted
** worker would), checking each body; returns how many, their numbers in *out. */
static int drain(sqlite3 *db, int ch, int **out, int *cap, Stats *st, const Mode *m) {
  sqlite3_stmt *s = 0;
  int n = 0, got;
  if (sqlite3_prepare_v2(db, "SELECT message FROM channel_recv_batch(?1, 500)", -1, &s, 0) !=
      SQLITE_OK) {
    unexpected(db, "prepare drain");
  }
  sqlite3_bind_text(s, 1, channel_names[ch], -1, SQLITE_STATIC);
  do {
    int rc;
    got = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      const char *z = (const char *)sqlite3_column_blob(s, 0);
      int bytes = sqlite3_column_bytes(s, 0), msg = -1;
      char head[32];
      snprintf(head, sizeof head, "%.*s", bytes < 20 ? bytes : 20, z ? z : "");
      if (sscanf(head, "%d ", &msg) != 1 || msg < first_msg || msg >= next_msg ||
          make_body(body_buf, msg) != bytes || memcmp(body_buf, z, (size_t)bytes) != 0) {
        cut_failed(st, m, "%s holds a message never sent or damaged: '%s'", channel_names[ch],
                   head);
        continue;
      }
      if (n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *out = realloc(*out, (size_t)*cap * sizeof **out);
        if (!*out) exit(2);
      }
      (*out)[n++] = msg;
      got++;
    }
    if (rc != SQLITE_DONE) unexpected(db, "drain");
    sqlite3_reset(s);
  } while (got > 0);
  sqlite3_finalize(s);
  return n;
}

/* Whether the disk holds exactly what transactions 0..j-1 leave: their
** received rows, all of each and no others, and in each channel the
** messages their sends queued minus those their receives took, in order.
** An autocommit receive the cut interrupted (last, if among them) may have
** taken the first few of its channel for good, a receive whose call never
** returned: *skipped says how many. */
static int holds_prefix(int j, int **drained, const int *drained_n, const int *rows_of,
                        int max_row_txn, int *expect, int *skipped) {
  int i, k, ch;
  if (max_row_txn >= j) return 0;
  for (i = 0; i < j; i++) {
    if (txns[i].kind == RECV_RECORDED && rows_of[i] != txns[i].n) return 0;
  }
  *skipped = 0;
  for (ch = 0; ch < CHANNELS; ch++) {
    int head = 0, tail = 0, skip_max = 0, skip;
    for (i = 0; i < j; i++) {
      const Txn *t = &txns[i];
      if (t->pops_unknown) {
        if (t->ch == ch) skip_max = t->want;
        continue;
      }
      for (k = 0; k < t->n; k++) {
        if (t->d[k].ch != ch) continue;
        if (t->kind == SEND) expect[tail++] = t->d[k].msg;
        else if (head < tail && expect[head] == t->d[k].msg) head++;
        else return 0; /* it took a message that, in this prefix, was never sent */
      }
    }
    for (skip = 0; skip <= skip_max && skip <= tail - head; skip++) {
      if (tail - head - skip == drained_n[ch] &&
          (drained_n[ch] == 0 ||
           memcmp(expect + head + skip, drained[ch], (size_t)drained_n[ch] * sizeof(int)) == 0)) {
        break;
      }
    }
    if (skip > skip_max || skip > tail - head) return 0;
    *skipped += skip;
  }
  return 1;
}

static void audit(const Mode *m, Stats *st) {
  /* The model takes the disk as synced when a round starts: no need to. */
  sqlite3 *db = open_conn("unix", 0);
  sqlite3_stmt *s = 0;
  int msgs = next_msg - first_msg, ch, i, j, k, lost_at = -1, lost_txns = 0, lost_messages = 0;
  int max_row_txn = -1, acked_now = 0, skipped = 0;
  int *rows_of = xmalloc((size_t)(n_txns + 1) * sizeof(int));
  int *drained[CHANNELS] = {0}, drained_n[CHANNELS], caps[CHANNELS] = {0};
  int *expect = xmalloc((size_t)(msgs + 1) * 2 * sizeof(int));
  const unsigned char *ok;

  memset(rows_of, 0, (size_t)(n_txns + 1) * sizeof(int));
  for (i = 0; i < n_txns; i++) acked_now += txns[i].acked;
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, 0) != SQLITE_OK ||
      sqlite3_step(s) != SQLITE_ROW) {
    cut_failed(st, m, "integrity_check could not run: %s", sqlite3_errmsg(db));
  } else if (!(ok = sqlite3_column_text(s, 0)) || strcmp((const char *)ok, "ok") != 0) {
    cut_failed(st, m, "integrity_check: %s", ok ? (const char *)ok : "(null)");
  }
  sqlite3_finalize(s);
  if (query_int(db, "SELECT (SELECT count(*) FROM (SELECT queue, count(*) AS n "
                    "FROM chanlite_message GROUP BY queue) LEFT JOIN chanlite_queue "
                    "USING (queue) WHERE n IS NOT depth) + (SELECT count(*) FROM "
                    "chanlite_queue AS q WHERE depth IS NOT (SELECT count(*) FROM "
                    "chanlite_message WHERE queue = q.queue))") != 0) {
    cut_failed(st, m, "chanlite_queue's depths do not match the queued rows");
  }

  /* What the disk holds: the received rows, then the queues. */
  if (sqlite3_prepare_v2(db, "SELECT txn, msg, ch FROM received", -1, &s, 0) != SQLITE_OK) {
    unexpected(db, "read received");
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    int txn = sqlite3_column_int(s, 0), msg = sqlite3_column_int(s, 1);
    ch = sqlite3_column_int(s, 2);
    if (txn < 0 || txn >= n_txns || txns[txn].kind != RECV_RECORDED || msg < first_msg ||
        msg >= next_msg || ch < 0 || ch >= CHANNELS) {
      cut_failed(st, m, "a received row no transaction wrote: %d %d %d", txn, msg, ch);
      continue;
    }
    for (k = 0; k < txns[txn].n; k++) {
      if (txns[txn].d[k].msg == msg && txns[txn].d[k].ch == ch) break;
    }
    if (k == txns[txn].n) {
      cut_failed(st, m, "transaction %d recorded message %d it did not receive", txn, msg);
      continue;
    }
    rows_of[txn]++;
    if (txn > max_row_txn) max_row_txn = txn;
  }
  sqlite3_finalize(s);
  for (ch = 0; ch < CHANNELS; ch++) {
    drained_n[ch] = drain(db, ch, &drained[ch], &caps[ch], st, m);
  }

  /* The disk must hold what the first j transactions leave, for some j:
  ** each all or nothing, and only the last lost. The largest such j is
  ** taken (a send and the receive of its message, lost together, leave
  ** the same state as both kept). */
  for (j = n_txns; j >= 0; j--) {
    if (holds_prefix(j, drained, drained_n, rows_of, max_row_txn, expect, &skipped)) break;
  }
  if (j < 0) {
    cut_failed(st, m,
               "the disk holds no prefix of the %d transactions (%d acknowledged): queues "
               "%d/%d/%d/%d, received rows up to transaction %d",
               n_txns, acked_now, drained_n[0], drained_n[1], drained_n[2], drained_n[3],
               max_row_txn);
  } else {
    st->popped_unacked += skipped;
    for (i = j; i < n_txns; i++) {
      if (!txns[i].acked) continue;
      if (lost_at < 0) lost_at = i;
      lost_txns++;
      if (txns[i].kind == SEND) lost_messages += txns[i].n;
    }
  }

  if (lost_txns > 0) {
    double ms = (cut_time - txns[lost_at].acked_at) * 1000;
    st->cuts_with_loss++;
    if (lost_txns > st->max_lost_txns) st->max_lost_txns = lost_txns;
    if (lost_messages > st->max_lost_messages) st->max_lost_messages = lost_messages;
    if (ms > st->max_lost_ms) st->max_lost_ms = ms;
    if (m->durable) {
      cut_failed(st, m, "%d acknowledged transactions lost (the first: %d of %d)", lost_txns,
                 lost_at, n_txns);
    }
  }
  st->acked += acked_now;

  if (sqlite3_exec(db, "DELETE FROM received", 0, 0, 0) != SQLITE_OK) unexpected(db, "DELETE");
  if (query_int(db, "SELECT count(*) FROM chanlite_message") != 0) {
    cut_failed(st, m, "messages left after the drain");
  }
  if (sqlite3_close(db) != SQLITE_OK) unexpected(db, "close");
  for (ch = 0; ch < CHANNELS; ch++) free(drained[ch]);
  free(rows_of);
  free(expect);
}

/* ---------------------------------------------------------------------- */
/* Rounds: traffic until the power goes, then the restart and the check. */

static void prepare(sqlite3 *db, RecvStmts *st, sqlite3_stmt **send, sqlite3_stmt **gsend,
                    sqlite3 *rdb) {
  int ch;
  if (sqlite3_prepare_v2(db, "SELECT channel_send(?1, ?2)", -1, send, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT group_send('plg', ?2)", -1, gsend, 0) != SQLITE_OK ||
      sqlite3_prepare_v2(rdb, "INSERT INTO received(txn, msg, ch) VALUES (?1, ?2, ?3)", -1,
                         &st->record, 0) != SQLITE_OK) {
    unexpected(db, "prepare");
  }
  for (ch = 0; ch < CHANNELS; ch++) {
    if (sqlite3_prepare_v2(rdb, "SELECT channel_recv(?1)", -1, &st->recv[ch], 0) != SQLITE_OK ||
        sqlite3_prepare_v2(rdb, "SELECT message FROM channel_recv_batch(?1, ?2)", -1,
                           &st->batch[ch], 0) != SQLITE_OK) {
      unexpected(rdb, "prepare");
    }
    sqlite3_bind_text(st->recv[ch], 1, channel_names[ch], -1, SQLITE_STATIC);
    sqlite3_bind_text(st->batch[ch], 1, channel_names[ch], -1, SQLITE_STATIC);
  }
}

static void finalize(RecvStmts *st, sqlite3_stmt *send, sqlite3_stmt *gsend) {
  int ch;
  sqlite3_finalize(send);
  sqlite3_finalize(gsend);
  sqlite3_finalize(st->record);
  for (ch = 0; ch < CHANNELS; ch++) {
    sqlite3_finalize(st->recv[ch]);
    sqlite3_finalize(st->batch[ch]);
  }
}

static void round_of(const Mode *m, Stats *st, long max_ops) {
  sqlite3 *sdb, *rdb;
  sqlite3_stmt *send = 0, *gsend = 0;
  RecvStmts rs;
  int ch, steps = 0;

  dead = 0;
  cut_at = 0;
  sdb = open_conn("powerloss", m->synchronous);
  rdb = open_conn("powerloss", m->synchronous);
  memset(&rs, 0, sizeof rs);
  prepare(sdb, &rs, &send, &gsend, rdb);
  n_txns = 0;
  first_msg = next_msg;
  for (ch = 0; ch < CHANNELS; ch++) queue_head[ch] = queue_tail[ch] = 0;
  for (ch = 0; ch < queue_cap; ch++) msg_txn[ch] = -1;
  ops = 0;
  tear = rnd_below(2);
  cut_at = 1 + rnd_below((int)max_ops);
  /* Sends a little more often than receives, so that queues build up. */
  while (!dead) {
    if (++steps > MAX_TXNS - 16 || next_msg - first_msg > queue_cap - 16) {
      fprintf(stderr, "powerloss: no cut after %d steps (cut_at %ld, ops %ld)\n", steps, cut_at,
              ops);
      exit(2);
    }
    if (rnd_below(100) < 55) send_op(sdb, send, gsend);
    else recv_op(rdb, &rs);
  }
  finalize(&rs, send, gsend);
  if (sqlite3_close(sdb) != SQLITE_OK || sqlite3_close(rdb) != SQLITE_OK) {
    fprintf(stderr, "powerloss: a connection would not close after the cut\n");
    exit(1);
  }
  forget_all();
  st->cuts++;
  st->torn += tear;
  audit(m, st);
}

static void run_mode(const Mode *m, int cuts, long max_ops) {
  char dir[] = "/tmp/chanlite-powerloss-XXXXXX", sql[300];
  sqlite3 *db;
  Stats st;
  double t0 = monotonic();
  int i;

  memset(&st, 0, sizeof st);
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    exit(2);
  }
  snprintf(db_path, sizeof db_path, "%s/pl.db", dir);
  db = open_conn("unix", 0);
  snprintf(sql, sizeof sql,
           "PRAGMA journal_mode=%s;"
           "CREATE TABLE received(txn INTEGER NOT NULL, msg INTEGER NOT NULL, "
           "ch INTEGER NOT NULL);"
           "SELECT chanlite_config('capacity', 1000000);"
           "SELECT chanlite_config('expiry', 86400);"
           "SELECT group_add('plg', 'pl.g1'); SELECT group_add('plg', 'pl.g2');",
           m->journal);
  if (sqlite3_exec(db, sql, 0, 0, 0) != SQLITE_OK) unexpected(db, "setup");
  if (sqlite3_close(db) != SQLITE_OK) exit(2);

  for (i = 0; i < cuts; i++) round_of(m, &st, max_ops);

  printf("   %s: %d cuts (%d torn), %ld acknowledged transactions, %.1f s\n", m->name, st.cuts,
         st.torn, st.acked, monotonic() - t0);
  printf("   %s: acknowledged transactions lost: at most %d in one cut (%d messages sent, "
         "%.1f ms of work), in %d of %d cuts; %ld messages popped by an interrupted "
         "autocommit receive\n",
         m->name, st.max_lost_txns, st.max_lost_messages, st.max_lost_ms, st.cuts_with_loss,
         st.cuts, st.popped_unacked);
  check(st.failures == 0,
        "%s: after each of %d cuts the database opens, integrity_check is ok, every transaction "
        "is all or nothing, the survivors are a prefix of the acknowledged ones and the queues "
        "and received rows are exactly theirs (%d findings)",
        m->name, st.cuts, st.failures);
  if (m->durable) {
    check(st.cuts_with_loss == 0, "%s: no acknowledged send or receive lost in %d cuts", m->name,
          st.cuts);
  }
  snprintf(sql, sizeof sql, "rm -rf '%s'", dir);
  if (system(sql) != 0) fprintf(stderr, "powerloss: could not remove %s\n", dir);
}

static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v && atoi(v) > 0 ? atoi(v) : dflt;
}

int main(int argc, char **argv) {
  static const Mode modes[] = {
    {"WAL, synchronous=FULL", "wal", 2, 1},
    {"WAL, synchronous=NORMAL", "wal", 1, 0},
    {"DELETE journal, synchronous=EXTRA", "delete", 3, 1},
    {"DELETE journal, synchronous=FULL", "delete", 2, 0},
  };
  unsigned seed = (unsigned)env_int("CHANLITE_POWERLOSS_SEED", (int)(time(0) & 0x7fffffff));
  int cuts = env_int("CHANLITE_POWERLOSS_CUTS", 60), i, ch;
  long max_ops = env_int("CHANLITE_POWERLOSS_MAX_OPS", 1500);
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: powerloss path/to/chanlite.so [cuts-per-mode]\n");
    return 2;
  }
  ext = argv[1];
  autocheckpoint = env_int("CHANLITE_POWERLOSS_AUTOCHECKPOINT", 100);
  if (argc == 3) cuts = atoi(argv[2]);
  printf("   seed %u (CHANLITE_POWERLOSS_SEED=%u repeats this run); %d cuts per mode, each "
         "after at most %ld write-side calls; wal_autocheckpoint=%d\n",
         seed, seed, cuts, max_ops, autocheckpoint);
  rng_state = 0x9E3779B97F4A7C15ull ^ seed;
  unix_vfs = sqlite3_vfs_find("unix");
  if (!unix_vfs) return 2;
  pl_vfs.szOsFile = (int)sizeof(PlFile) + unix_vfs->szOsFile;
  pl_vfs.mxPathname = unix_vfs->mxPathname;
  if (sqlite3_vfs_register(&pl_vfs, 0) != SQLITE_OK) return 2;
  body_buf = xmalloc(MAX_BODY);
  queue_cap = MAX_TXNS * 8;
  msg_txn = xmalloc((size_t)queue_cap * sizeof(int));
  for (ch = 0; ch < CHANNELS; ch++) queue[ch] = xmalloc((size_t)queue_cap * sizeof(int));
  for (i = 0; i < (int)(sizeof modes / sizeof modes[0]); i++) run_mode(&modes[i], cuts, max_ops);
  for (ch = 0; ch < CHANNELS; ch++) free(queue[ch]);
  free(msg_txn);
  free(body_buf);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
