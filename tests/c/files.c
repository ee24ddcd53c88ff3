/*
** The files next to the database, and what another local user can do with
** the bell.
**
**   files path/to/chanlite.so [messages]
**
** (messages: passed in the tampering part; default 400, or
** CHANLITE_FILES_MESSAGES, which tests/sanitize.sh lowers under the sanitizers)
** Permissions. Under umask 022, 077 and 002 (each in a child process, as the
** umask is the process's), a database used through chanlite in WAL mode and
** one in rollback-journal mode: the database, its -wal, -shm and -journal and
** chanlite's bell (<database>-chanlite) have no permission bit the umask
** takes away, and the side files, the bell included, have exactly the
** database file's bits (SQLite's rule for -wal and -shm, which chanlite
** follows for the bell). A database made group-writable (chmod 0660 under
** umask 022) gets a group-writable bell, so that every user who may write
** the database may ring it.
**
** Files put where the bell goes: a symlink is never followed (its target is
** left untouched) and a FIFO never blocks a send; messages still arrive.
**
** Tampering. A sender and two receivers (each its own process, waiting with
** channel_wait) pass messages one at a time (the sender waits for each to be
** received, so each receiver learns of each message only through the bell,
** as in tests/wake_race.c), while a fourth process writes garbage into the
** bell, truncates it, deletes it and replaces it with another file, over and
** over. The sender and the receivers open new connections now and then (a
** new connection opens whatever file then has the bell's name). Checked:
** every message arrives exactly once, in order, byte for byte (nothing lost,
** nothing forged); no channel_wait times out (a receiver that slept through a
** message would, after 30 s); the queues end empty and integrity_check is ok.
** Prints one line per check.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "check.h"

#define WAIT_SECONDS 30
#define RECEIVERS 2

static const char *ext;

static sqlite3 *open_db(const char *path, const char *journal_mode) {
  sqlite3 *db = 0;
  char *err = 0, sql[100];
  snprintf(sql, sizeof sql, "PRAGMA busy_timeout=10000; PRAGMA journal_mode=%s;", journal_mode);
  if (sqlite3_open(path, &db) != SQLITE_OK || sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
      sqlite3_load_extension(db, ext, "sqlite3_chanlite_init", &err) != SQLITE_OK ||
      sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "files: open %s: %s\n", path, err ? err : sqlite3_errmsg(db));
    exit(2);
  }
  return db;
}

static void exec_or_die(sqlite3 *db, const char *sql) {
  char *err = 0;
  if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
    fprintf(stderr, "files: %s: %s\n", sql, err);
    exit(2);
  }
}

static int mode_of(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0 ? (int)(st.st_mode & 0777) : -1;
}

static void make_dir(char *dir) {
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    exit(2);
  }
}

static void remove_dir(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "files: could not remove %s\n", dir);
}

/* A side file has the database's bits, and none the umask takes away. */
static void check_side(const char *what, const char *path, int db_mode, int umask_bits) {
  int mode = mode_of(path);
  check(mode == db_mode && !(mode & umask_bits), "umask %03o: %s is %03o (the database %03o)",
        umask_bits, what, mode, db_mode);
}

/* In a child: the files of a WAL database and of a rollback-journal one. */
static int permissions_under(int umask_bits) {
  char dir[] = "/tmp/chanlite-files-XXXXXX", path[200], side[220];
  sqlite3 *db;
  int db_mode;
  umask((mode_t)umask_bits);
  make_dir(dir);

  snprintf(path, sizeof path, "%s/wal.db", dir);
  db = open_db(path, "WAL");
  exec_or_die(db, "SELECT channel_send('perm', 'x')");
  db_mode = mode_of(path);
  check(db_mode >= 0 && !(db_mode & umask_bits) && !(db_mode & 0111),
        "umask %03o: a WAL database SQLite created is %03o", umask_bits, db_mode);
  snprintf(side, sizeof side, "%s-wal", path);
  check_side("its -wal", side, db_mode, umask_bits);
  snprintf(side, sizeof side, "%s-shm", path);
  check_side("its -shm", side, db_mode, umask_bits);
  snprintf(side, sizeof side, "%s-chanlite", path);
  check_side("its bell", side, db_mode, umask_bits);
  sqlite3_close(db);

  snprintf(path, sizeof path, "%s/journal.db", dir);
  db = open_db(path, "DELETE");
  exec_or_die(db, "BEGIN IMMEDIATE; SELECT channel_send('perm', 'x');");
  db_mode = mode_of(path);
  check(db_mode >= 0 && !(db_mode & umask_bits), "umask %03o: a rollback-journal database is %03o",
        umask_bits, db_mode);
  snprintf(side, sizeof side, "%s-journal", path);
  check_side("its -journal", side, db_mode, umask_bits);
  exec_or_die(db, "COMMIT");
  /* Without WAL only a send committing on its own rings (and creates the bell). */
  exec_or_die(db, "SELECT channel_send('perm', 'y')");
  snprintf(side, sizeof side, "%s-chanlite", path);
  check_side("its bell", side, db_mode, umask_bits);
  sqlite3_close(db);
  remove_dir(dir);
  fflush(stdout);
  return failed ? 1 : 0;
}

/* A database shared by a group: its bell must be writable by the group too,
** although the umask takes the group's write bit from new files. */
static void group_shared(void) {
  char dir[] = "/tmp/chanlite-files-XXXXXX", path[200], side[220];
  sqlite3 *db;
  mode_t old = umask(022);
  make_dir(dir);
  snprintf(path, sizeof path, "%s/group.db", dir);
  db = open_db(path, "WAL");
  sqlite3_close(db);
  if (chmod(path, 0660) != 0) {
    perror("chmod");
    exit(2);
  }
  db = open_db(path, "WAL");
  exec_or_die(db, "SELECT channel_send('perm', 'x')");
  snprintf(side, sizeof side, "%s-wal", path);
  check(mode_of(side) == 0660, "umask 022, database 660: its -wal is %03o", mode_of(side));
  snprintf(side, sizeof side, "%s-chanlite", path);
  check(mode_of(side) == 0660, "umask 022, database 660: its bell is %03o (group may ring)",
        mode_of(side));
  sqlite3_close(db);
  umask(old);
  remove_dir(dir);
}

/* What another user may put where the bell goes, if they can write to the
** database's directory: neither is written through nor blocks a send. */
static void foreign_bells(void) {
  char dir[] = "/tmp/chanlite-files-XXXXXX", path[200], bell[220], decoy[220], buf[32];
  sqlite3 *db;
  sqlite3_stmt *s = 0;
  int fd, got;
  make_dir(dir);
  snprintf(path, sizeof path, "%s/foreign.db", dir);
  snprintf(bell, sizeof bell, "%s-chanlite", path);
  snprintf(decoy, sizeof decoy, "%s/precious", dir);
  fd = open(decoy, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || write(fd, "precious", 8) != 8 || close(fd) != 0 || symlink(decoy, bell) != 0) {
    perror("files: setting up the symlink");
    exit(2);
  }
  db = open_db(path, "WAL");
  exec_or_die(db, "SELECT channel_send('foreign', 'through a symlinked bell')");
  fd = open(decoy, O_RDONLY);
  got = fd >= 0 ? (int)read(fd, buf, sizeof buf) : -1;
  if (fd >= 0) close(fd);
  check(got == 8 && memcmp(buf, "precious", 8) == 0,
        "a symlink where the bell goes is not written through (its target is intact)");
  if (sqlite3_prepare_v2(db,
                         "SELECT channel_wait('foreign', 5) AND channel_recv('foreign') = "
                         "'through a symlinked bell'",
                         -1, &s, 0) != SQLITE_OK) {
    exec_or_die(db, "SELECT 'prepare'");
  }
  check(sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int(s, 0) == 1,
        "with a symlink there, the message is sent and received");
  sqlite3_finalize(s);
  sqlite3_close(db);

  /* A FIFO: open(O_WRONLY) would wait for a reader forever. */
  if (unlink(bell) != 0 || mkfifo(bell, 0600) != 0) {
    perror("files: mkfifo");
    exit(2);
  }
  db = open_db(path, "WAL");
  exec_or_die(db, "SELECT channel_send('foreign', 'past a FIFO')");
  if (sqlite3_prepare_v2(db,
                         "SELECT channel_wait('foreign', 5) AND channel_recv('foreign') = "
                         "'past a FIFO'",
                         -1, &s, 0) != SQLITE_OK) {
    exec_or_die(db, "SELECT 'prepare'");
  }
  check(sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int(s, 0) == 1,
        "with a FIFO there, a send does not block and the message is received");
  sqlite3_finalize(s);
  sqlite3_close(db);
  remove_dir(dir);
}

/* ---- tampering ---- */

static char db_path[200], bell_path[220];

static void make_body(char *buf, size_t n, int i) {
  snprintf(buf, n, "message %d of the tampering test %*s", i, i % 300, "");
}

/* Passes messages one at a time: receiver i % 2 gets message i. */
static int sender(int n, int acks[RECEIVERS]) {
  sqlite3 *db = 0;
  sqlite3_stmt *s = 0;
  char body[400], ack;
  int i;
  for (i = 0; i < n; i++) {
    if (i % 7 == 0) { /* a new connection opens the bell anew */
      sqlite3_finalize(s);
      if (db) sqlite3_close(db);
      db = open_db(db_path, "WAL");
      if (sqlite3_prepare_v2(db, "SELECT channel_send(?1, ?2)", -1, &s, 0) != SQLITE_OK) return 2;
    }
    make_body(body, sizeof body, i);
    sqlite3_bind_text(s, 1, i % 2 ? "tamper.b" : "tamper.a", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, body, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) {
      fprintf(stderr, "files: sender: %s\n", sqlite3_errmsg(db));
      return 1;
    }
    sqlite3_reset(s);
    if (read(acks[i % 2], &ack, 1) != 1) {
      fprintf(stderr, "files: sender: receiver %d gone at message %d\n", i % 2, i);
      return 1;
    }
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return 0;
}

static int receiver(int r, int n, int ack) {
  sqlite3 *db = 0;
  sqlite3_stmt *wait = 0, *recv = 0;
  const char *channel = r ? "tamper.b" : "tamper.a";
  char want[400];
  int i, got = 0;
  for (i = r; i < n; i += RECEIVERS, got++) {
    const char *z;
    if (got % 11 == 0) {
      sqlite3_finalize(wait);
      sqlite3_finalize(recv);
      if (db) sqlite3_close(db);
      db = open_db(db_path, "WAL");
      if (sqlite3_prepare_v2(db, "SELECT channel_wait(?1, 30)", -1, &wait, 0) != SQLITE_OK ||
          sqlite3_prepare_v2(db, "SELECT channel_recv(?1)", -1, &recv, 0) != SQLITE_OK) {
        return 2;
      }
      sqlite3_bind_text(wait, 1, channel, -1, SQLITE_STATIC);
      sqlite3_bind_text(recv, 1, channel, -1, SQLITE_STATIC);
    }
    for (;;) {
      if (sqlite3_step(wait) != SQLITE_ROW) {
        fprintf(stderr, "files: receiver %d: channel_wait: %s\n", r, sqlite3_errmsg(db));
        return 1;
      }
      if (sqlite3_column_int(wait, 0) == 0) {
        fprintf(stderr, "files: receiver %d slept through message %d (%d s)\n", r, i, WAIT_SECONDS);
        return 1;
      }
      sqlite3_reset(wait);
      if (sqlite3_step(recv) != SQLITE_ROW) {
        fprintf(stderr, "files: receiver %d: channel_recv: %s\n", r, sqlite3_errmsg(db));
        return 1;
      }
      z = (const char *)sqlite3_column_text(recv, 0);
      if (z) break;
      sqlite3_reset(recv); /* woken with nothing there yet: wait again */
    }
    make_body(want, sizeof want, i);
    if (strcmp(z, want) != 0) {
      fprintf(stderr, "files: receiver %d: got '%.40s', expected message %d\n", r, z, i);
      return 1;
    }
    sqlite3_reset(recv);
    if (write(ack, "k", 1) != 1) return 1;
  }
  sqlite3_finalize(wait);
  sqlite3_finalize(recv);
  sqlite3_close(db);
  return 0;
}

/* Another user with write access to the bell (and to its directory). */
static void tamperer(unsigned seed) {
  char tmp[240], junk[256];
  snprintf(tmp, sizeof tmp, "%s.tmp", bell_path);
  for (;;) {
    struct timespec pause = {0, (long)(rand_r(&seed) % 1000) * 1000};
    int fd, i;
    for (i = 0; i < (int)sizeof junk; i++) junk[i] = (char)rand_r(&seed);
    switch (rand_r(&seed) % 5) {
      case 0: /* garbage, anywhere */
      case 1:
        fd = open(bell_path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
          if (pwrite(fd, junk, 1 + rand_r(&seed) % sizeof junk, rand_r(&seed) % 8192) < 0) {}
          close(fd);
        }
        break;
      case 2:
        if (truncate(bell_path, 0) != 0) {}
        break;
      case 3: unlink(bell_path); break;
      default: /* replaced by another file */
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
          if (write(fd, junk, sizeof junk) < 0) {}
          close(fd);
          if (rename(tmp, bell_path) != 0) {}
        }
    }
    nanosleep(&pause, 0);
  }
}

static pid_t spawn(int (*body)(void *), void *arg) {
  pid_t pid;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) _exit(body(arg));
  return pid;
}

typedef struct Role {
  int n, r, fd, fds[RECEIVERS];
} Role;

/* Each child keeps only its own ends of the pipes, so that a process that
** dies shows as end-of-file to the other side, not as a wait forever. */
static int pipes[RECEIVERS][2];

static int run_sender(void *arg) {
  Role *role = arg;
  int r;
  for (r = 0; r < RECEIVERS; r++) close(pipes[r][1]);
  return sender(role->n, role->fds);
}

static int run_receiver(void *arg) {
  Role *role = arg;
  int r;
  for (r = 0; r < RECEIVERS; r++) {
    close(pipes[r][0]);
    if (r != role->r) close(pipes[r][1]);
  }
  return receiver(role->r, role->n, role->fd);
}

static int run_tamperer(void *arg) {
  int r;
  for (r = 0; r < RECEIVERS; r++) close(pipes[r][0]), close(pipes[r][1]);
  tamperer(*(unsigned *)arg);
  return 0;
}

static int exit_status(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void tampering(int n, unsigned seed) {
  char dir[] = "/tmp/chanlite-files-XXXXXX";
  int r, sender_rc, receiver_rc[RECEIVERS], status = 0;
  pid_t sender_pid, receiver_pid[RECEIVERS], tamper_pid;
  Role send_role, recv_role[RECEIVERS];
  sqlite3 *db;
  sqlite3_stmt *s = 0;

  make_dir(dir);
  snprintf(db_path, sizeof db_path, "%s/tamper.db", dir);
  snprintf(bell_path, sizeof bell_path, "%s-chanlite", db_path);
  db = open_db(db_path, "WAL");
  exec_or_die(db, "SELECT chanlite_config('capacity', 1000)");
  sqlite3_close(db);

  memset(&send_role, 0, sizeof send_role);
  send_role.n = n;
  for (r = 0; r < RECEIVERS; r++) {
    if (pipe(pipes[r]) != 0) exit(2);
    send_role.fds[r] = pipes[r][0];
    recv_role[r].n = n;
    recv_role[r].r = r;
    recv_role[r].fd = pipes[r][1];
  }
  tamper_pid = spawn(run_tamperer, &seed);
  for (r = 0; r < RECEIVERS; r++) receiver_pid[r] = spawn(run_receiver, &recv_role[r]);
  sender_pid = spawn(run_sender, &send_role);
  for (r = 0; r < RECEIVERS; r++) close(pipes[r][1]);
  sender_rc = exit_status(sender_pid);
  for (r = 0; r < RECEIVERS; r++) receiver_rc[r] = exit_status(receiver_pid[r]);
  kill(tamper_pid, SIGKILL);
  waitpid(tamper_pid, &status, 0);
  for (r = 0; r < RECEIVERS; r++) close(pipes[r][0]);

  check(sender_rc == 0 && receiver_rc[0] == 0 && receiver_rc[1] == 0,
        "with the bell written over, truncated, deleted and replaced throughout, %d messages "
        "each arrived once, in order and intact, and no receiver slept through one (sender %d, "
        "receivers %d %d)",
        n, sender_rc, receiver_rc[0], receiver_rc[1]);
  db = open_db(db_path, "WAL");
  check(sqlite3_prepare_v2(db,
                           "SELECT (SELECT count(*) FROM chanlite_message) = 0 AND "
                           "(SELECT integrity_check FROM pragma_integrity_check) = 'ok'",
                           -1, &s, 0) == SQLITE_OK &&
          sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int(s, 0) == 1,
        "afterwards nothing is left queued and integrity_check is ok");
  sqlite3_finalize(s);
  sqlite3_close(db);
  remove_dir(dir);
}

int main(int argc, char **argv) {
  static const int umasks[] = {022, 077, 002};
  unsigned seed = (unsigned)time(0);
  const char *env = getenv("CHANLITE_FILES_MESSAGES");
  int n = argc > 2 ? atoi(argv[2]) : env ? atoi(env) : 400, i;
  if (argc < 2 || argc > 3 || n < 2) {
    fprintf(stderr, "usage: files path/to/chanlite.so [messages]\n");
    return 2;
  }
  ext = argv[1];
  for (i = 0; i < (int)(sizeof umasks / sizeof umasks[0]); i++) {
    int rc;
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) _exit(permissions_under(umasks[i]));
    rc = exit_status(pid);
    check(rc == 0, "umask %03o: the checks above passed in their process (exit %d)", umasks[i], rc);
  }
  group_shared();
  foreign_bells();
  printf("   tampering seed %u\n", seed);
  tampering(n, seed);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
