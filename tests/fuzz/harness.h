/*
** What the chanlite fuzz targets share: a fresh in-memory database with
** chanlite registered (the ext/ sources are compiled into each target with
** -DSQLITE_CORE, so the sanitizers and coverage reach them), running one
** statement with bound values, and the invariants every target checks.
*/
#ifndef CHANLITE_FUZZ_HARNESS_H
#define CHANLITE_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

/* Bytes of fuzz input, read front to back; reads past the end give 0. */
typedef struct Input {
  const uint8_t *p;
  size_t n;
} Input;

uint8_t take_byte(Input *in);
/* Up to max bytes, length first (one byte, taken modulo max + 1). */
size_t take_bytes(Input *in, size_t max, const uint8_t **out);

/* A fresh :memory: database with chanlite loaded (aborts if it cannot). */
sqlite3 *fuzz_open(void);
sqlite3 *fuzz_open_file(const char *path); /* the same, on a file */
void fuzz_close(sqlite3 *db);

/* The invariants, aborting (so libFuzzer reports a crash) when broken:
** an error of a chanlite function starts with "chanlite: " (or is SQLite's
** out-of-memory, too-big or argument-count error for table-valued ones); the
** depth counters match the rows; integrity_check is ok. */
void check_error(sqlite3 *db, int rc, const char *sql);
void check_consistent(sqlite3 *db);
void check_consistent_integrity(sqlite3 *db); /* integrity_check only */

#endif
