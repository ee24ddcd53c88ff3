/*
** Refusing chanlite tables that chanlite did not make.
**
** A database file can come from anyone, and its chanlite tables may have
** been altered: a trigger that puts each received message back (so it is
** delivered twice) or that ignores deletes, a view in place of a table, a
** column of another type or without its NOT NULL. So before its first write
** on a connection, and again after every change to the schema, chanlite
** compares the definitions of its tables and triggers in the file with the
** ones its own schema script (sql/schema.sql) makes in a private in-memory
** database, ignoring comments and spacing, and refuses to write on any
** difference:
**
**   chanlite: channel_send(): the chanlite tables of this database were
**   changed by something other than chanlite (trigger evil on
**   chanlite_message is not chanlite's): ...
**
** Indexes are not compared: a missing one only slows chanlite down, and one
** added can only make a write fail with a constraint error.
**
** Noticing a schema change costs nothing per call: every write runs the
** schema_check statement, which SQLite prepares again after any change to
** the schema (by this connection or another), and sqlite3_stmt_status()
** counts those re-preparations.
*/
#include <ctype.h>
#include <string.h>
#include "chanlite.h"

typedef struct Definition {
  char *type, *name, *table, *sql; /* sql: without comments, spaces collapsed */
} Definition;

typedef struct Definitions {
  Definition *d;
  int n, alloc;
} Definitions;

static void definitions_free(Definitions *defs) {
  int i;
  for (i = 0; i < defs->n; i++) {
    sqlite3_free(defs->d[i].type);
    sqlite3_free(defs->d[i].name);
    sqlite3_free(defs->d[i].table);
    sqlite3_free(defs->d[i].sql);
  }
  sqlite3_free(defs->d);
  memset(defs, 0, sizeof *defs);
}

/* Whether a space next to c can matter to the parser: between two words
** it separates them; next to punctuation it never does. */
static int word_char(char c) {
  return isalnum((unsigned char)c) || c == '_' || c == '$' || c == '\'' || c == '"' || c == '`' ||
         c == '[' || c == ']' || (unsigned char)c >= 0x80;
}

/* The statement as SQLite parses it: comments dropped, spaces kept only
** where they separate two words, so that `depth INTEGER\n, sent` (the text
** ALTER TABLE ADD COLUMN leaves) equals `depth INTEGER, sent`; quoted text
** kept as it is. Never NULL unless out of memory. */
static char *normalized(const char *sql) {
  sqlite3_str *s = sqlite3_str_new(0);
  const char *p;
  char quote = 0, last = 0;
  int space = 0;
  for (p = sql ? sql : ""; *p; p++) {
    if (quote) {
      sqlite3_str_appendchar(s, 1, *p);
      if (*p == quote) quote = 0;
      last = *p;
      continue;
    }
    if (p[0] == '-' && p[1] == '-') {
      while (p[1] && p[1] != '\n') p++;
      space = 1;
      continue;
    }
    if (p[0] == '/' && p[1] == '*') {
      const char *end = strstr(p + 2, "*/");
      if (!end) break;
      p = end + 1;
      space = 1;
      continue;
    }
    if (isspace((unsigned char)*p)) {
      space = 1;
      continue;
    }
    if (space && word_char(last) && word_char(*p)) sqlite3_str_appendchar(s, 1, ' ');
    space = 0;
    last = *p;
    if (*p == '\'' || *p == '"' || *p == '`') quote = *p;
    else if (*p == '[') quote = ']';
    sqlite3_str_appendchar(s, 1, *p);
  }
  if (sqlite3_str_errcode(s) != SQLITE_OK) {
    sqlite3_free(sqlite3_str_finish(s));
    return 0;
  }
  if (sqlite3_str_length(s) == 0) {
    sqlite3_free(sqlite3_str_finish(s));
    return sqlite3_mprintf("");
  }
  return sqlite3_str_finish(s);
}

static char *column_copy(sqlite3_stmt *s, int col) {
  const char *z = (const char *)sqlite3_column_text(s, col);
  return sqlite3_mprintf("%s", z ? z : "");
}

/* The tables, views and triggers of db's main schema. */
static int load(sqlite3 *db, Definitions *out) {
  sqlite3_stmt *s = 0;
  int rc = sqlite3_prepare_v2(db, chanlite_stmt_sql[CHANLITE_STMT_SCHEMA_DEFINITIONS], -1, &s, 0);
  while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    Definition *d;
    rc = SQLITE_OK;
    if (out->n == out->alloc) {
      int alloc = out->alloc ? out->alloc * 2 : 16;
      Definition *grown = sqlite3_realloc64(out->d, sizeof *grown * (sqlite3_uint64)alloc);
      if (!grown) {
        rc = SQLITE_NOMEM;
        break;
      }
      out->d = grown;
      out->alloc = alloc;
    }
    d = &out->d[out->n++];
    d->type = column_copy(s, 0);
    d->name = column_copy(s, 1);
    d->table = column_copy(s, 2);
    d->sql = normalized((const char *)sqlite3_column_text(s, 3));
    if (!d->type || !d->name || !d->table || !d->sql) rc = SQLITE_NOMEM;
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_finalize(s);
  return rc;
}

/* What chanlite's own schema script makes, in a database of its own. */
static int load_reference(Definitions *out) {
  sqlite3 *ref = 0;
  int rc = sqlite3_open_v2(":memory:", &ref, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, 0);
  if (rc == SQLITE_OK) rc = sqlite3_exec(ref, chanlite_schema_sql, 0, 0, 0);
  if (rc == SQLITE_OK) rc = load(ref, out);
  sqlite3_close(ref);
  return rc;
}

static const Definition *find(const Definitions *defs, const char *name) {
  int i;
  for (i = 0; i < defs->n; i++) {
    if (sqlite3_stricmp(defs->d[i].name, name) == 0) return &defs->d[i];
  }
  return 0;
}

/* The first difference between the file and the reference, or NULL. */
static char *first_difference(const Definitions *file, const Definitions *ref) {
  int i;
  for (i = 0; i < file->n; i++) {
    const Definition *f = &file->d[i], *r = find(ref, f->name), *t;
    if (r && strcmp(f->type, r->type) != 0) {
      return sqlite3_mprintf("%s is a %s, not a %s", f->name, f->type, r->type);
    }
    if (r && strcmp(f->sql, r->sql) != 0) {
      return sqlite3_mprintf("%s %s does not have chanlite's definition", f->type, f->name);
    }
    t = find(ref, f->table);
    if (!r && strcmp(f->type, "trigger") == 0 && t && strcmp(t->type, "table") == 0) {
      return sqlite3_mprintf("trigger %s on %s is not chanlite's", f->name, f->table);
    }
  }
  for (i = 0; i < ref->n; i++) {
    if (!find(file, ref->d[i].name)) {
      return sqlite3_mprintf("%s %s is missing", ref->d[i].type, ref->d[i].name);
    }
  }
  return sqlite3_mprintf("");
}

int chanlite_schema_verify(Chanlite *c) {
  sqlite3_stmt *check = c->stmt[CHANLITE_STMT_SCHEMA_CHECK];
  int reprepares = check ? sqlite3_stmt_status(check, SQLITE_STMTSTATUS_REPREPARE, 0) : -1;
  Definitions file = {0, 0, 0}, ref = {0, 0, 0};
  char *difference = 0;
  int rc;
  if (c->schema_verified && check && reprepares == c->schema_reprepares) return SQLITE_OK;
  rc = load_reference(&ref);
  if (rc != SQLITE_OK) {
    rc = chanlite_fail(c, rc, "%s(): cannot build chanlite's reference schema: %s", c->fn,
                       sqlite3_errstr(rc));
  } else if ((rc = load(c->db, &file)) != SQLITE_OK) {
    rc = rc == SQLITE_NOMEM ? chanlite_fail(c, rc, "out of memory") : chanlite_fail_sqlite(c, rc);
  } else if (!(difference = first_difference(&file, &ref))) {
    rc = chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  } else if (difference[0]) {
    rc = chanlite_fail(c, SQLITE_CORRUPT,
                       "%s(): the chanlite tables of this database were changed by something "
                       "other than chanlite (%s), so chanlite will not write to them: drop "
                       "the chanlite_* tables to start afresh, or restore the database",
                       c->fn, difference);
  }
  sqlite3_free(difference);
  definitions_free(&file);
  definitions_free(&ref);
  c->schema_verified = rc == SQLITE_OK;
  c->schema_reprepares = reprepares;
  return rc;
}
