/* What the node says, on stderr, one line each, with a UTC timestamp. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include "node.h"

void node_log(const char *fmt, ...) {
  struct timespec ts;
  struct tm tm;
  char stamp[32];
  va_list ap;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  /* One fprintf per line: lines of the node's threads do not interleave. */
  va_start(ap, fmt);
  {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "%s.%03ldZ chanlite-node: %s\n", stamp, ts.tv_nsec / 1000000, msg);
  }
  va_end(ap);
}
