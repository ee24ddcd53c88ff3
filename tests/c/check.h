/*
** The checks of the multi-process C tests: each prints one line, "ok: ..."
** or "FAIL: ...", and is tallied for the closing "N passed, N failed".
*/
#ifndef CHANLITE_TEST_CHECK_H
#define CHANLITE_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  va_list ap;
  printf("%s: ", ok ? "ok" : "FAIL");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  if (ok) passed++;
  else failed++;
}

#endif
