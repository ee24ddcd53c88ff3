/*
** The database file stays small, and so does its WAL.
**
**   disk path/to/chanlite.so
**
** CHANLITE_DISK_MESSAGES (default 20000) scales every run below; the
** sanitizer script lowers it under valgrind, where each call is some 30
** times slower.
** Each check opens fresh database files in a temporary directory, as the
** Python package does (WAL, synchronous=NORMAL, a 5 s busy timeout, and
** journal_size_limit 4 MB), and prints one line; the last line is
** "N passed, N failed":
**   - a database chanlite creates gets incremental auto-vacuum, and stays in
**     WAL mode; one with tables of its own is left as it was, and
**     `PRAGMA auto_vacuum=INCREMENTAL; VACUUM;` turns it on, messages kept;
**   - a burst of 20,000 x 1 KB messages (the figure), all received (by channel_recv, and
**     by channel_recv_batch), then a checkpoint: the file is under 2 MB;
**     the WAL goes back under 4 MB at the next write;
**   - a receive on a database with a large freelist gives back a bounded
**     number of pages, and channel_trim() gives back all of them;
**   - steady traffic (sends inside transactions, which install chanlite's
**     WAL hook, received by channel_recv and by channel_recv_batch, with
**     bursts of 2 x 2,000 messages in one transaction): the WAL never grows
**     past 12 MB; with only a hooked sender checkpointing, past 5 MB.
*/
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>

#define MB (1024 * 1024)
#define BODY 1024

static const char *ext;
static char dir[64];
static int passed, failed, n_db;
static int burst_size = 20000;

static void check(int ok, const char *what, const char *fmt, ...) {
  va_list ap;
  printf("%s: %s", ok ? "ok" : "FAILED", what);
  va_start(ap, fmt);
  if (fmt) {
    printf(" (");
    vprintf(fmt, ap);
    printf(")");
  }
  va_end(ap);
  printf("\n");
  if (ok) passed++;
  else failed++;
}

static void die(sqlite3 *db, const char *what) {
  fprintf(stderr, "disk: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
  exit(2);
}

static void exec(sqlite3 *db, const char *sql) {
  char *err = 0;
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "disk: %s: %s\n", sql, err ? err : "");
    exit(2);
  }
}

static sqlite3_int64 value(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s = 0;
  sqlite3_int64 v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &s, 0) != SQLITE_OK) die(db, sql);
  if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
  else die(db, sql);
  sqlite3_finalize(s);
  return v;
}

static long long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static void new_path(char *path, size_t n) {
  snprintf(path, n, "%s/db%d.sqlite3", dir, ++n_db);
}

/* A connection set up as the Python package sets up its own. */
static sqlite3 *open_db(const char *path) {
  sqlite3 *db = 0;
  char *err = 0;
  if (sqlite3_open(path, &db) != SQLITE_OK) die(db, "open");
  if (sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK) {
    fprintf(stderr, "disk: load %s: %s\n", ext, err ? err : "");
    exit(2);
  }
  sqlite3_busy_timeout(db, 5000);
  exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
           "PRAGMA journal_size_limit=4194304;");
  return db;
}

static void send_n(sqlite3 *db, const char *channel, int n, int size) {
  sqlite3_stmt *s = 0;
  char *body = malloc((size_t)size);
  int i;
  if (!body) die(0, "malloc");
  memset(body, 'x', (size_t)size);
  if (sqlite3_prepare_v2(db, "SELECT channel_send(?, ?)", -1, &s, 0) != SQLITE_OK) {
    die(db, "prepare channel_send");
  }
  for (i = 0; i < n; i++) {
    sqlite3_bind_text(s, 1, channel, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, body, size, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) die(db, "channel_send");
    sqlite3_reset(s);
  }
  sqlite3_finalize(s);
  free(body);
}

/* Receives until the channel is empty; returns how many. */
static int recv_all(sqlite3 *db, const char *channel) {
  sqlite3_stmt *s = 0;
  int n = 0, got = 1;
  if (sqlite3_prepare_v2(db, "SELECT channel_recv(?)", -1, &s, 0) != SQLITE_OK) {
    die(db, "prepare channel_recv");
  }
  while (got) {
    sqlite3_bind_text(s, 1, channel, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) die(db, "channel_recv");
    got = sqlite3_column_type(s, 0) != SQLITE_NULL;
    n += got;
    sqlite3_reset(s);
  }
  sqlite3_finalize(s);
  return n;
}

/* One channel_recv_batch; returns how many rows it gave. */
static int recv_batch(sqlite3 *db, const char *channel, int max) {
  sqlite3_stmt *s = 0;
  int n = 0, rc;
  if (sqlite3_prepare_v2(db, "SELECT message FROM channel_recv_batch(?, ?)", -1, &s, 0)
      != SQLITE_OK) {
    die(db, "prepare channel_recv_batch");
  }
  sqlite3_bind_text(s, 1, channel, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 2, max);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) n++;
  if (rc != SQLITE_DONE) die(db, "channel_recv_batch");
  sqlite3_finalize(s);
  return n;
}

static void test_new_database(void) {
  char path[128];
  sqlite3 *db;
  new_path(path, sizeof path);
  db = open_db(path);  /* WAL mode has already written the first page */
  check(value(db, "PRAGMA auto_vacuum") == 0, "a new file starts without auto-vacuum", 0);
  send_n(db, "a", 1, 10);
  check(value(db, "PRAGMA auto_vacuum") == 2,
        "chanlite's first write makes a database with no tables incremental",
        "auto_vacuum %lld", value(db, "PRAGMA auto_vacuum"));
  check(value(db, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'") == 1,
        "and it stays in WAL mode", 0);
  check(recv_all(db, "a") == 1, "and the message sent on the way is there", 0);
  sqlite3_close(db);
}

static void test_existing_database(void) {
  char path[128];
  sqlite3 *db;
  new_path(path, sizeof path);
  db = open_db(path);
  exec(db, "CREATE TABLE app_user(id INTEGER PRIMARY KEY, name TEXT)");
  send_n(db, "a", 3, 10);
  check(value(db, "PRAGMA auto_vacuum") == 0,
        "a database with tables of its own is left without auto-vacuum", 0);
  exec(db, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM;");
  check(value(db, "PRAGMA auto_vacuum") == 2,
        "PRAGMA auto_vacuum=INCREMENTAL; VACUUM; turns it on", 0);
  check(recv_all(db, "a") == 3, "and keeps the messages", 0);
  sqlite3_close(db);
}

/* The first write inside the caller's transaction cannot VACUUM: the tables
** are created, without auto-vacuum, and the call still works. */
static void test_first_write_in_transaction(void) {
  char path[128];
  sqlite3 *db;
  new_path(path, sizeof path);
  db = open_db(path);
  exec(db, "BEGIN IMMEDIATE");
  send_n(db, "a", 1, 10);
  exec(db, "COMMIT");
  check(value(db, "PRAGMA auto_vacuum") == 0 && recv_all(db, "a") == 1,
        "a first write inside a transaction works, and leaves auto-vacuum off", 0);
  sqlite3_close(db);
}

static void test_burst(int batch) {
  char path[128], wal[160];
  sqlite3 *db;
  long long peak, after_drain, after_ckpt, after_write;
  int n = 0, got;
  const char *how = batch ? "channel_recv_batch(100)" : "channel_recv";
  new_path(path, sizeof path);
  snprintf(wal, sizeof wal, "%s-wal", path);
  db = open_db(path);
  exec(db, "SELECT chanlite_config('capacity', 100000)");
  send_n(db, "burst", burst_size, BODY);
  peak = file_size(path);
  if (batch) {
    while ((got = recv_batch(db, "burst", 100)) > 0) n += got;
  } else {
    n = recv_all(db, "burst");
  }
  after_drain = file_size(path);
  exec(db, "PRAGMA wal_checkpoint");
  after_ckpt = file_size(path);
  send_n(db, "other", 1, 10);  /* the next write restarts the WAL */
  after_write = file_size(wal);
  check(n == burst_size && peak > (long long)burst_size * BODY && after_ckpt < 2 * MB,
        batch ? "a burst of 1 KB messages received by channel_recv_batch(100), then a "
                "checkpoint: the file is back under 2 MB"
              : "a burst of 1 KB messages received by channel_recv, then a checkpoint: "
                "the file is back under 2 MB",
        "%d sent, %d received by %s; %.1f MB at the peak, %.2f MB after", burst_size, n, how,
        (double)peak / MB, (double)after_ckpt / MB);
  if (batch) {
    /* The batch that found the queue empty finished the checkpoint that
    ** the batches' own commits could not (ext/disk.c). */
    check(after_drain < 2 * MB, "and already before that checkpoint",
          "%.2f MB", (double)after_drain / MB);
  }
  check(after_write <= 4 * MB, "and the next write cuts the WAL back to journal_size_limit",
        "WAL %.2f MB", (double)after_write / MB);
  sqlite3_close(db);
}

/* A freelist that chanlite did not make (a dropped table of the app's own):
** a receive gives back a bounded part of it, channel_trim() all of it. */
static void test_bounded_reclaim(void) {
  char path[128];
  sqlite3 *db;
  sqlite3_int64 before, after_recv, after_trim;
  new_path(path, sizeof path);
  db = open_db(path);
  send_n(db, "a", 1, 10);  /* chanlite makes the database: incremental */
  exec(db, "CREATE TABLE junk(x);"
           "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000)"
           " INSERT INTO junk SELECT randomblob(1000) FROM n;"
           "DROP TABLE junk;");
  before = value(db, "PRAGMA freelist_count");
  recv_all(db, "a");
  after_recv = value(db, "PRAGMA freelist_count");
  send_n(db, "a", 1, 10);
  check(value(db, "SELECT channel_trim()") == 0, "channel_trim() with nothing expired", 0);
  after_trim = value(db, "PRAGMA freelist_count");
  check(before > 1000 && after_recv < before && after_recv >= before - 40,
        "a receive gives back a bounded number of free pages",
        "%lld free pages before, %lld after", before, after_recv);
  check(after_trim == 0, "channel_trim() gives back every free page", "%lld left", after_trim);
  sqlite3_close(db);
}

/* Steady traffic through every path that commits: sends in transactions
** (chanlite's WAL hook replaces SQLite's auto-checkpoint), receives by
** channel_recv and by channel_recv_batch (its second connection), and a
** burst every so often. */
static void test_steady_wal(void) {
  char path[128], wal[160];
  sqlite3 *sender, *receiver, *batcher;
  long long size, peak_wal = 0, peak_db = 0;
  int round, i;
  new_path(path, sizeof path);
  snprintf(wal, sizeof wal, "%s-wal", path);
  sender = open_db(path);
  receiver = open_db(path);
  batcher = open_db(path);
  exec(sender, "SELECT chanlite_config('capacity', 100000)");
  for (round = 0; round < burst_size / 50; round++) {
    int burst = round % 100 == 50 ? 2000 : 30;
    exec(sender, "BEGIN IMMEDIATE");
    send_n(sender, "q", burst, BODY);
    send_n(sender, "p!x", burst, BODY);
    exec(sender, "COMMIT");
    for (i = 0; i < burst; i++) {
      if (recv_all(receiver, "q") == 0 && recv_batch(batcher, "p!", 100) == 0) break;
    }
    while (recv_batch(batcher, "p!", 100) > 0) {}
    recv_all(receiver, "q");
    size = file_size(wal);
    if (size > peak_wal) peak_wal = size;
    size = file_size(path);
    if (size > peak_db) peak_db = size;
  }
  /* SQLite's auto-checkpoint size (4 MB), plus the largest transaction
  ** (2 x 2,000 messages, some 5 MB), plus room. */
  check(peak_wal <= 12 * MB, "steady traffic with bursts: the WAL stays under 12 MB",
        "peak WAL %.2f MB, peak file %.2f MB, file at the end %.2f MB",
        (double)peak_wal / MB, (double)peak_db / MB, (double)file_size(path) / MB);
  sqlite3_close(batcher);
  sqlite3_close(receiver);
  sqlite3_close(sender);
}

/* chanlite's WAL hook (installed by a send inside a transaction, to ring
** the bell after the commit) replaces SQLite's auto-checkpoint: it must
** checkpoint as that would. Here it is the only one that does. */
static void test_hooked_sender_checkpoints(void) {
  char path[128], wal[160];
  sqlite3 *sender, *receiver;
  long long size, peak_wal = 0;
  int round;
  new_path(path, sizeof path);
  snprintf(wal, sizeof wal, "%s-wal", path);
  sender = open_db(path);
  receiver = open_db(path);
  exec(receiver, "PRAGMA wal_autocheckpoint=0");
  for (round = 0; round < burst_size / 10; round++) {
    exec(sender, "BEGIN IMMEDIATE");
    send_n(sender, "q", 10, BODY);
    exec(sender, "COMMIT");
    recv_all(receiver, "q");
    size = file_size(wal);
    if (size > peak_wal) peak_wal = size;
  }
  check(peak_wal <= 5 * MB,
        "sends inside transactions, whose WAL hook replaces SQLite's, still checkpoint",
        "peak WAL %.2f MB over %d messages", (double)peak_wal / MB, burst_size);
  sqlite3_close(receiver);
  sqlite3_close(sender);
}

static void remove_dir(void) {
  char path[192];
  int i;
  const char *suffix[] = {"", "-wal", "-shm", "-chanlite"};
  for (i = 1; i <= n_db; i++) {
    size_t k;
    for (k = 0; k < sizeof suffix / sizeof suffix[0]; k++) {
      snprintf(path, sizeof path, "%s/db%d.sqlite3%s", dir, i, suffix[k]);
      unlink(path);
    }
  }
  rmdir(dir);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: disk path/to/chanlite.so\n");
    return 2;
  }
  ext = argv[1];
  if (getenv("CHANLITE_DISK_MESSAGES") && atoi(getenv("CHANLITE_DISK_MESSAGES")) >= 1000) {
    burst_size = atoi(getenv("CHANLITE_DISK_MESSAGES"));
  }
  snprintf(dir, sizeof dir, "/tmp/chanlite-disk-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 2;
  }
  test_new_database();
  test_existing_database();
  test_first_write_in_transaction();
  test_burst(0);
  test_burst(1);
  test_bounded_reclaim();
  test_hooked_sender_checkpoints();
  test_steady_wal();
  remove_dir();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
