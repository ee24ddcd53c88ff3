#define _POSIX_C_SOURCE 200809L
/*
** sqltest: runs a .test file of SQL against chanlite and checks each result.
**
**   sqltest path/to/chanlite.so file.test
**
** A .test file is SQL that reads as documentation. After a statement, the
** lines starting with `-->` are its expected rows (columns joined by " | ",
** values as SQL literals: 1, 2.5, 'text', X'00FF', NULL), or the error it
** must fail with (`--> error: chanlite: ...`). A statement with no `-->`
** lines must succeed and return no rows. A line `-- @connection NAME`
** switches to another connection to the same database file (opened, with
** chanlite loaded, on first use), so that transactions can be shown side by
** side. `-- @plain_connection NAME` does the same without loading chanlite,
** to show what a connection has before a load (tests/sql/registry.test).
** Every connection starts in WAL mode with a 5 s busy timeout.
** `-- @limit_length N` lowers the current connection's SQLITE_LIMIT_LENGTH
** (the longest string or BLOB it will handle) to N bytes.
**
** It prints each mismatch and ends with "N passed, N failed".
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#define MAX_CONNECTIONS 8

static const char *ext_path;
static char db_path[256];
static struct {
  char name[32];
  sqlite3 *db;
} conns[MAX_CONNECTIONS];
static int n_conns;

static sqlite3 *connection(const char *name, int load) {
  int i;
  sqlite3 *db = 0;
  char *err = 0;
  for (i = 0; i < n_conns; i++) {
    if (strcmp(conns[i].name, name) == 0) return conns[i].db;
  }
  if (n_conns == MAX_CONNECTIONS || sqlite3_open(db_path, &db) != SQLITE_OK ||
      (load &&
       (sqlite3_enable_load_extension(db, 1) != SQLITE_OK ||
        sqlite3_load_extension(db, ext_path, "sqlite3_chanlite_init", &err) != SQLITE_OK)) ||
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;", 0, 0, 0) !=
        SQLITE_OK) {
    fprintf(stderr, "sqltest: cannot open connection %s: %s\n", name,
            err ? err : (db ? sqlite3_errmsg(db) : "out of memory"));
    exit(2);
  }
  snprintf(conns[n_conns].name, sizeof conns[n_conns].name, "%s", name);
  conns[n_conns].db = db;
  return conns[n_conns++].db;
}

static void append_value(sqlite3_str *out, sqlite3_stmt *s, int col) {
  int i, n;
  const unsigned char *b;
  switch (sqlite3_column_type(s, col)) {
    case SQLITE_INTEGER: sqlite3_str_appendf(out, "%lld", sqlite3_column_int64(s, col)); break;
    case SQLITE_FLOAT: sqlite3_str_appendf(out, "%!.15g", sqlite3_column_double(s, col)); break;
    case SQLITE_TEXT: sqlite3_str_appendf(out, "%Q", sqlite3_column_text(s, col)); break;
    case SQLITE_BLOB:
      b = sqlite3_column_blob(s, col);
      n = sqlite3_column_bytes(s, col);
      sqlite3_str_appendall(out, "X'");
      for (i = 0; i < n; i++) sqlite3_str_appendf(out, "%02X", b[i]);
      sqlite3_str_appendall(out, "'");
      break;
    default: sqlite3_str_appendall(out, "NULL");
  }
}

/* Run one statement; its rows or its error, one line each. */
static char *run(sqlite3 *db, sqlite3_stmt *s) {
  sqlite3_str *out = sqlite3_str_new(db);
  int rc, i;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    for (i = 0; i < sqlite3_column_count(s); i++) {
      if (i) sqlite3_str_appendall(out, " | ");
      append_value(out, s, i);
    }
    sqlite3_str_appendall(out, "\n");
  }
  if (rc != SQLITE_DONE) {
    sqlite3_str_reset(out);
    sqlite3_str_appendf(out, "error: %s\n", sqlite3_errmsg(db));
  }
  return sqlite3_str_finish(out);
}

static int line_of(const char *text, const char *at) {
  int line = 1;
  for (; text < at; text++) line += *text == '\n';
  return line;
}

int main(int argc, char **argv) {
  FILE *f;
  long size;
  char *text, *p;
  sqlite3 *db;
  int passed = 0, failed = 0, fd, i;
  if (argc != 3) {
    fprintf(stderr, "usage: sqltest chanlite.so file.test\n");
    return 2;
  }
  ext_path = argv[1];
  f = fopen(argv[2], "rb");
  if (!f) {
    perror(argv[2]);
    return 2;
  }
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, 0, SEEK_SET);
  text = calloc(1, (size_t)size + 1);
  if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
    perror(argv[2]);
    return 2;
  }
  fclose(f);

  snprintf(db_path, sizeof db_path, "/tmp/chanlite-sqltest-XXXXXX");
  fd = mkstemp(db_path);
  if (fd < 0) {
    perror("mkstemp");
    return 2;
  }
  close(fd);
  db = connection("main", 1);

  for (p = text; *p;) {
    sqlite3_stmt *s = 0;
    const char *tail = 0, *stmt_at;
    sqlite3_str *want;
    char *got, *expected;

    /* Directives and prose before the next statement. */
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || (p[0] == '-' && p[1] == '-')) {
      if (p[0] == '-' && p[1] == '-') {
        char name[32];
        int limit;
        if (sscanf(p, "-- @connection %31s", name) == 1) db = connection(name, 1);
        if (sscanf(p, "-- @plain_connection %31s", name) == 1) db = connection(name, 0);
        if (sscanf(p, "-- @limit_length %d", &limit) == 1) {
          sqlite3_limit(db, SQLITE_LIMIT_LENGTH, limit);
        }
        p += strcspn(p, "\n");
      } else {
        p++;
      }
    }
    if (!*p) break;
    stmt_at = p;
    if (sqlite3_prepare_v2(db, p, -1, &s, &tail) != SQLITE_OK) {
      got = sqlite3_mprintf("error: %s\n", sqlite3_errmsg(db));
      /* A statement that does not prepare still ends at its semicolon. */
      tail = p + strcspn(p, ";");
      if (*tail) tail++;
    } else {
      got = run(db, s);
      sqlite3_finalize(s);
    }
    p = (char *)tail;
    p += strcspn(p, "\n"); /* the rest of the statement's last line */
    want = sqlite3_str_new(0);
    for (;;) {
      char *line = p + (*p == '\n');
      while (*line == ' ' || *line == '\t') line++;
      if (strncmp(line, "-->", 3) != 0) break;
      line += 3;
      if (*line == ' ') line++;
      p = line + strcspn(line, "\n");
      sqlite3_str_appendf(want, "%.*s\n", (int)(p - line), line);
    }
    expected = sqlite3_str_finish(want);
    /* sqlite3_str_finish() gives NULL for an empty string. */
    if (!expected) expected = sqlite3_mprintf("");
    if (!got) got = sqlite3_mprintf("");
    if (!expected || !got) {
      fprintf(stderr, "sqltest: out of memory\n");
      return 2;
    }
    if (strcmp(expected, got) == 0) {
      passed++;
    } else {
      failed++;
      printf("%s:%d: %.*s\n  expected:\n%s  got:\n%s", argv[2], line_of(text, stmt_at),
             (int)strcspn(stmt_at, "\n"), stmt_at, expected, got);
    }
    sqlite3_free(expected);
    sqlite3_free(got);
  }
  for (i = 0; i < n_conns; i++) {
    if (sqlite3_close(conns[i].db) != SQLITE_OK) {
      printf("%s: connection %s does not close: %s\n", argv[2], conns[i].name,
             sqlite3_errmsg(conns[i].db));
      failed++;
    }
  }
  unlink(db_path);
  {
    char extra[300];
    snprintf(extra, sizeof extra, "%s-wal", db_path);
    unlink(extra);
    snprintf(extra, sizeof extra, "%s-shm", db_path);
    unlink(extra);
    snprintf(extra, sizeof extra, "%s-chanlite", db_path);
    unlink(extra);
  }
  free(text);
  printf("%s: %d passed, %d failed\n", argv[2], passed, failed);
  return failed ? 1 : 0;
}
