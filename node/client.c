/*
** The few requests of dqlite's client protocol that a node sends itself.
**
** libdqlite 1.11's C API can bootstrap a cluster but has no call to join
** one: a node joins when the leader adds it (request ADD) and promotes it
** to voter (ASSIGN), which is what go-dqlite's client.Add sends too. The
** node also asks itself who leads (LEADER), to log its role changes, and
** asks the leader to hand over (TRANSFER) before a graceful stop.
**
** The protocol (dqlite's docs/protocol.md): after connecting, the client
** sends its version, a little-endian uint64 (1). Each message then is an
** 8-byte header (uint32 body length in 8-byte words, uint8 type, uint8
** schema, uint16 unused) and a body of little-endian uint64s and
** NUL-terminated texts padded to 8 bytes.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include "node.h"

#define PROTOCOL_VERSION 1
#define REQUEST_LEADER 0
#define REQUEST_ADD 12
#define REQUEST_ASSIGN 13
#define REQUEST_CLUSTER 16
#define REQUEST_TRANSFER 17
#define RESPONSE_FAILURE 0
#define RESPONSE_SERVER 1
#define RESPONSE_SERVERS 3
#define RESPONSE_EMPTY 8
#define CLUSTER_FORMAT_WITH_ROLES 1

/* Responses the node reads are small: a failure's message, a member list. */
#define MAX_BODY 65536

int split_address(const char *address, char *host, int n_host, char *port, int n_port) {
  const char *colon;
  size_t n;
  if (address[0] == '[') {
    const char *end = strchr(address, ']');
    if (!end || end[1] != ':') return -1;
    n = (size_t)(end - address - 1);
    colon = end + 1;
    address++;
  } else {
    colon = strrchr(address, ':');
    if (!colon) return -1;
    n = (size_t)(colon - address);
  }
  if (n == 0 || n >= (size_t)n_host || strlen(colon + 1) == 0 ||
      strlen(colon + 1) >= (size_t)n_port) {
    return -1;
  }
  memcpy(host, address, n);
  host[n] = 0;
  strcpy(port, colon + 1);
  return 0;
}

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

void client_set_timeout(int fd, int timeout_ms) {
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Connects with a timeout, which also bounds every later read and write,
** and sends the protocol version. */
int client_connect(const char *address, int timeout_ms) {
  char host[256], port[16];
  struct addrinfo hints, *res = 0, *ai;
  unsigned char version[8] = {PROTOCOL_VERSION};
  int fd = -1, one = 1;
  if (split_address(address, host, sizeof host, port, sizeof port) != 0) return -1;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    client_set_timeout(fd, timeout_ms);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd >= 0 && write_all(fd, version, sizeof version) != 0) {
    close(fd);
    fd = -1;
  }
  return fd;
}

static void put_u64(unsigned char *p, uint64_t v) {
  int i;
  for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  int i;
  for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* A request body being built: uint64s and texts, in 8-byte words. */
typedef struct Body {
  unsigned char data[512];
  size_t n;
} Body;

static int body_u64(Body *b, uint64_t v) {
  if (b->n + 8 > sizeof b->data) return -1;
  put_u64(b->data + b->n, v);
  b->n += 8;
  return 0;
}

static int body_text(Body *b, const char *s) {
  size_t len = strlen(s) + 1, padded = (len + 7) / 8 * 8;
  if (b->n + padded > sizeof b->data) return -1;
  memset(b->data + b->n, 0, padded);
  memcpy(b->data + b->n, s, len);
  b->n += padded;
  return 0;
}

/* A response: its type and body. */
typedef struct Response {
  int type;
  unsigned char *body;
  size_t n;
  size_t at; /* read position */
} Response;

static int reply_u64(Response *r, uint64_t *v) {
  if (r->at + 8 > r->n) return -1;
  *v = get_u64(r->body + r->at);
  r->at += 8;
  return 0;
}

static int reply_text(Response *r, char *out, int n_out) {
  const unsigned char *start = r->body + r->at;
  const unsigned char *nul = memchr(start, 0, r->n - r->at);
  size_t len;
  if (!nul) return -1;
  len = (size_t)(nul - start);
  r->at += (len + 1 + 7) / 8 * 8;
  if (r->at > r->n) return -1;
  if (out) snprintf(out, (size_t)n_out, "%.*s", (int)len, (const char *)start);
  return 0;
}

static int roundtrip(int fd, int type, const Body *b, Response *r, unsigned char *buf, char *err,
                     int n_err) {
  unsigned char header[8] = {0};
  uint64_t words;
  put_u64(header, b->n / 8); /* words, then type at byte 4 */
  header[4] = (unsigned char)type;
  header[5] = header[6] = header[7] = 0;
  if (write_all(fd, header, 8) != 0 || write_all(fd, b->data, b->n) != 0 ||
      read_all(fd, header, 8) != 0) {
    snprintf(err, (size_t)n_err, "connection lost: %s", errno ? strerror(errno) : "closed");
    return -1;
  }
  words = header[0] | (uint64_t)header[1] << 8 | (uint64_t)header[2] << 16 |
          (uint64_t)header[3] << 24;
  if (words * 8 > MAX_BODY) {
    snprintf(err, (size_t)n_err, "response of %llu bytes is too large",
             (unsigned long long)(words * 8));
    return -1;
  }
  r->type = header[4];
  r->body = buf;
  r->n = (size_t)words * 8;
  r->at = 0;
  if (read_all(fd, buf, r->n) != 0) {
    snprintf(err, (size_t)n_err, "connection lost: %s", errno ? strerror(errno) : "closed");
    return -1;
  }
  if (r->type == RESPONSE_FAILURE) {
    uint64_t code = 0;
    char msg[200] = "";
    reply_u64(r, &code);
    reply_text(r, msg, sizeof msg);
    snprintf(err, (size_t)n_err, "%s (code %llu)", msg[0] ? msg : "failure",
             (unsigned long long)code);
    return -1;
  }
  return 0;
}

static int expect(const Response *r, int type, char *err, int n_err) {
  if (r->type == type) return 0;
  snprintf(err, (size_t)n_err, "unexpected response type %d (wanted %d)", r->type, type);
  return -1;
}

static int simple_request(int fd, int type, const Body *b, char *err, int n_err) {
  unsigned char buf[MAX_BODY];
  Response r;
  if (roundtrip(fd, type, b, &r, buf, err, n_err) != 0) return -1;
  return expect(&r, RESPONSE_EMPTY, err, n_err);
}

int client_leader(int fd, uint64_t *id, char *address, int n_address, char *err, int n_err) {
  unsigned char buf[MAX_BODY];
  Body b = {{0}, 0};
  Response r;
  body_u64(&b, 0);
  if (roundtrip(fd, REQUEST_LEADER, &b, &r, buf, err, n_err) != 0 ||
      expect(&r, RESPONSE_SERVER, err, n_err) != 0) {
    return -1;
  }
  if (reply_u64(&r, id) != 0 || reply_text(&r, address, n_address) != 0) {
    snprintf(err, (size_t)n_err, "malformed LEADER response");
    return -1;
  }
  return 0;
}

int client_cluster(int fd, DqliteServer *servers, int max, int *n, char *err, int n_err) {
  unsigned char buf[MAX_BODY];
  Body b = {{0}, 0};
  Response r;
  uint64_t count, i;
  body_u64(&b, CLUSTER_FORMAT_WITH_ROLES);
  if (roundtrip(fd, REQUEST_CLUSTER, &b, &r, buf, err, n_err) != 0 ||
      expect(&r, RESPONSE_SERVERS, err, n_err) != 0) {
    return -1;
  }
  if (reply_u64(&r, &count) != 0 || count > (uint64_t)max) {
    snprintf(err, (size_t)n_err, "malformed CLUSTER response");
    return -1;
  }
  for (i = 0; i < count; i++) {
    DqliteServer *s = &servers[i];
    if (reply_u64(&r, &s->id) != 0 || reply_text(&r, s->address, sizeof s->address) != 0 ||
        reply_u64(&r, &s->role) != 0) {
      snprintf(err, (size_t)n_err, "malformed CLUSTER response");
      return -1;
    }
  }
  *n = (int)count;
  return 0;
}

int client_add(int fd, uint64_t id, const char *address, char *err, int n_err) {
  Body b = {{0}, 0};
  if (body_u64(&b, id) != 0 || body_text(&b, address) != 0) {
    snprintf(err, (size_t)n_err, "address too long");
    return -1;
  }
  return simple_request(fd, REQUEST_ADD, &b, err, n_err);
}

int client_assign(int fd, uint64_t id, uint64_t role, char *err, int n_err) {
  Body b = {{0}, 0};
  body_u64(&b, id);
  body_u64(&b, role);
  return simple_request(fd, REQUEST_ASSIGN, &b, err, n_err);
}

int client_transfer(int fd, uint64_t id, char *err, int n_err) {
  Body b = {{0}, 0};
  body_u64(&b, id);
  return simple_request(fd, REQUEST_TRANSFER, &b, err, n_err);
}
