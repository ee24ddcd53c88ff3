/*
** Argument checks: channel and group names, and messages.
**
** Names follow Channels (`^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$` for channels,
** `^[a-zA-Z\d\-_.]+$` for groups, shorter than 100 characters), but strictly
** ASCII: Python's \d and \w accept any Unicode digit or letter, and its `$`
** accepts a trailing newline, both by accident. A name must be TEXT; an
** INTEGER is not a name.
*/
#include <string.h>
#include "chanlite.h"

static int name_char(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '-' || ch == '_' || ch == '.';
}

/* The name as it goes into an error message: printable ASCII as is, other
** bytes as \xNN, cut after 120 bytes. */
static char *render(const char *z, int n) {
  sqlite3_str *s = sqlite3_str_new(0);
  int i;
  for (i = 0; i < n && i < 120; i++) {
    unsigned char ch = (unsigned char)z[i];
    if (ch >= 0x20 && ch < 0x7f) sqlite3_str_appendchar(s, 1, (char)ch);
    else sqlite3_str_appendf(s, "\\x%02X", ch);
  }
  if (n > 120) sqlite3_str_appendall(s, "...");
  return sqlite3_str_finish(s);
}

/* Why z is not a valid name, or NULL if it is one. */
static const char *name_problem(const char *z, int n, int allow_bang, char *buf, int nbuf) {
  int i, bang = -1;
  if (n == 0) return "empty";
  if (n > CHANLITE_MAX_NAME) return "100 characters or longer";
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)z[i];
    if (ch == '!' && allow_bang) {
      if (bang >= 0) return "more than one '!'";
      if (i == 0) return "nothing before '!'";
      bang = i;
    } else if (!name_char(ch)) {
      if (ch >= 0x20 && ch < 0x7f) sqlite3_snprintf(nbuf, buf, "contains '%c'", ch);
      else sqlite3_snprintf(nbuf, buf, "contains byte \\x%02X", ch);
      return buf;
    }
  }
  return 0;
}

static int invalid_name(Chanlite *c, const char *kind, const char *z, int n, const char *why) {
  char *shown;
  int rc;
  if (n == 0) return chanlite_fail(c, SQLITE_ERROR, "invalid %s name: '' (empty)", kind);
  shown = render(z, n);
  if (!shown) return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  rc = chanlite_fail(c, SQLITE_ERROR, "invalid %s name: %s (%s)", kind, shown, why);
  sqlite3_free(shown);
  return rc;
}

int chanlite_channel_text(Chanlite *c, const char *z, int n, ChannelName *out) {
  char buf[40];
  const char *why = name_problem(z, n, 1, buf, sizeof buf);
  const char *bang;
  if (why) return invalid_name(c, "channel", z, n, why);
  out->full = z;
  out->n_full = n;
  bang = memchr(z, '!', (size_t)n);
  if (bang) {
    out->n_queue = (int)(bang - z) + 1;
    out->local = bang + 1;
    out->n_local = n - out->n_queue;
  } else {
    out->n_queue = n;
    out->local = 0;
    out->n_local = 0;
  }
  return SQLITE_OK;
}

int chanlite_channel_arg(Chanlite *c, sqlite3_value *v, ChannelName *out) {
  const char *z;
  if (sqlite3_value_type(v) != SQLITE_TEXT) {
    return chanlite_fail(c, SQLITE_MISMATCH, "channel name must be TEXT, not %s",
                         chanlite_type_name(sqlite3_value_type(v)));
  }
  z = (const char *)sqlite3_value_text(v);
  if (!z) return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  return chanlite_channel_text(c, z, sqlite3_value_bytes(v), out);
}

int chanlite_group_arg(Chanlite *c, sqlite3_value *v, const char **zOut, int *nOut) {
  char buf[40];
  const char *z, *why;
  int n;
  if (sqlite3_value_type(v) != SQLITE_TEXT) {
    return chanlite_fail(c, SQLITE_MISMATCH, "group name must be TEXT, not %s",
                         chanlite_type_name(sqlite3_value_type(v)));
  }
  z = (const char *)sqlite3_value_text(v);
  if (!z) return chanlite_fail(c, SQLITE_NOMEM, "out of memory");
  n = sqlite3_value_bytes(v);
  why = name_problem(z, n, 0, buf, sizeof buf);
  if (why) return invalid_name(c, "group", z, n, why);
  *zOut = z;
  *nOut = n;
  return SQLITE_OK;
}

int chanlite_message_arg(Chanlite *c, sqlite3_value *v) {
  int type = sqlite3_value_type(v);
  if (type != SQLITE_TEXT && type != SQLITE_BLOB) {
    return chanlite_fail(c, SQLITE_MISMATCH, "message must be TEXT or BLOB, not %s",
                         chanlite_type_name(type));
  }
  return SQLITE_OK;
}
