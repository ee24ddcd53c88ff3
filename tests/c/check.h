/*
** The checks of the C tests that print as they go: one line per check,
** "ok: ..." or "FAILED: ...", counted in `passed` and `failed`.
*/
#ifndef CHANLITE_TEST_CHECK_H
#define CHANLITE_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  va_list ap;
  printf("%s: ", ok ? "ok" : "FAILED");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
  if (ok) passed++;
  else failed++;
}

#endif
