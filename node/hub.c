/*
** The wake hub: how receivers on other machines learn that a message was
** sent, without a bell file to watch and without polling.
**
** A line protocol over TCP (docs/cluster.md has the whole of it):
**
**   watch chat\n        ->  ok watch chat\n
**   unwatch chat\n      ->  ok unwatch chat\n
**   ring chat w.ab!\n       (no answer)
**   ping\n              ->  pong\n
**                       <-  chat\n          to every connection watching chat
**
** A sender rings after its COMMIT returned: on the leader, the commit is
** seen by SQLite before Raft has applied it, so a ring from inside the node
** could wake a reader that then finds nothing. Senders ring every node they
** know and receivers watch one, so a wake crosses at most one hop. `*`
** watches every queue. The answer to watch tells the receiver that rings
** from then on reach it: it looks at the queue only after that, and so
** never sleeps through a message.
**
** One thread, poll(), no timer: nothing runs while no one talks. Each
** connection has bounded buffers; one whose pending output outgrows its
** buffer (a reader that stopped reading) is dropped, never waited for. A
** receiver that loses its connection must look at its queues again after
** reconnecting, since rings meanwhile are lost.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include "node.h"

#define MAX_LINE 8192          /* a ring naming many queues fits */
#define OUT_BUFFER (64 * 1024) /* wakes a slow reader may owe before it is dropped */
#define MAX_WATCHES 4096       /* per connection */
#define MAX_QUEUE 255          /* chanlite's names are shorter than 100 */
#define ACCEPT_PAUSE_MS 100    /* after running out of descriptors */

typedef struct Client {
  int fd;
  char in[MAX_LINE];
  size_t n_in;
  char *out; /* OUT_BUFFER bytes */
  size_t n_out;
  int out_partial; /* out begins with the rest of a line partly sent */
  char **watches;
  int n_watches, cap_watches;
  int dropped; /* closed at the end of this round */
} Client;

struct Hub {
  int listen_fd;
  int stop_fd; /* eventfd: hub_stop() wakes the thread */
  pthread_t thread;
  Client **clients;
  int n_clients, cap_clients;
};

static void client_free(Client *c) {
  int i;
  close(c->fd);
  for (i = 0; i < c->n_watches; i++) free(c->watches[i]);
  free(c->watches);
  free(c->out);
  free(c);
}

static void flush_out(Client *c) {
  while (c->n_out > 0 && !c->dropped) {
    ssize_t w = send(c->fd, c->out, c->n_out, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (w <= 0) {
      c->dropped = 1;
      return;
    }
    c->out_partial = c->out[w - 1] != '\n';
    memmove(c->out, c->out + w, c->n_out - (size_t)w);
    c->n_out -= (size_t)w;
  }
}

/* Queues a line for the client. When its buffer is full, what the socket
** takes goes first; a client that still cannot take the line is dropped. */
static void send_line(Client *c, const char *a, size_t n_a, const char *b, size_t n_b) {
  size_t need = n_a + n_b + 1;
  if (c->dropped) return;
  if (c->n_out + need > OUT_BUFFER) flush_out(c);
  if (c->dropped) return;
  if (c->n_out + need > OUT_BUFFER) {
    c->dropped = 1;
    node_log("wake hub: a client stopped reading (%zu bytes owed): dropped", c->n_out);
    return;
  }
  memcpy(c->out + c->n_out, a, n_a);
  memcpy(c->out + c->n_out + n_a, b, n_b);
  c->out[c->n_out + need - 1] = '\n';
  c->n_out += need;
}

/* Whether the wake for q is queued already: one is enough, since a wake
** only says "look at q". So a client owes at most one line per queue it
** watches, and only one that watches many (or *) and stops reading can
** outgrow its buffer. */
static int wake_pending(const Client *c, const char *q, size_t n) {
  const char *p = c->out, *end = c->out + c->n_out;
  int first = 1;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) break;
    /* The tail of a line partly sent is not that line. */
    if (!(first && c->out_partial) && (size_t)(nl - p) == n && memcmp(p, q, n) == 0) return 1;
    first = 0;
    p = nl + 1;
  }
  return 0;
}

static int find_watch(const Client *c, const char *q, size_t n) {
  int i;
  for (i = 0; i < c->n_watches; i++) {
    if (strlen(c->watches[i]) == n && memcmp(c->watches[i], q, n) == 0) return i;
  }
  return -1;
}

static void error_line(Client *c, const char *msg) {
  send_line(c, "error ", 6, msg, strlen(msg));
}

static void watch(Client *c, const char *q, size_t n) {
  if (find_watch(c, q, n) < 0) {
    char *copy;
    if (c->n_watches == MAX_WATCHES) {
      error_line(c, "too many watches on one connection");
      return;
    }
    if (c->n_watches == c->cap_watches) {
      int cap = c->cap_watches ? c->cap_watches * 2 : 8;
      char **w = realloc(c->watches, (size_t)cap * sizeof *w);
      if (!w) {
        error_line(c, "out of memory");
        return;
      }
      c->watches = w;
      c->cap_watches = cap;
    }
    copy = strndup(q, n);
    if (!copy) {
      error_line(c, "out of memory");
      return;
    }
    c->watches[c->n_watches++] = copy;
  }
  send_line(c, "ok watch ", 9, q, n);
}

static void unwatch(Client *c, const char *q, size_t n) {
  int i = find_watch(c, q, n);
  if (i >= 0) {
    free(c->watches[i]);
    c->watches[i] = c->watches[--c->n_watches];
  }
  send_line(c, "ok unwatch ", 11, q, n);
}

static void ring(Hub *h, const char *q, size_t n) {
  int i;
  for (i = 0; i < h->n_clients; i++) {
    Client *c = h->clients[i];
    if ((find_watch(c, q, n) >= 0 || find_watch(c, "*", 1) >= 0) && !wake_pending(c, q, n)) {
      send_line(c, q, n, "", 0);
    }
  }
}

/* The next space-separated word of [*p, end), advancing *p. */
static int next_word(const char **p, const char *end, const char **w, size_t *n) {
  while (*p < end && **p == ' ') (*p)++;
  *w = *p;
  while (*p < end && **p != ' ') (*p)++;
  *n = (size_t)(*p - *w);
  return *n > 0;
}

static int valid_queue(const char *q, size_t n) {
  size_t i;
  if (n == 0 || n > MAX_QUEUE) return 0;
  for (i = 0; i < n; i++) {
    if ((unsigned char)q[i] <= ' ' || q[i] == 0x7f) return 0;
  }
  return 1;
}

static void command(Hub *h, Client *c, const char *line, size_t len) {
  const char *p = line, *end = line + len, *verb, *q;
  size_t n_verb, n;
  if (len > 0 && line[len - 1] == '\r') end--;
  if (!next_word(&p, end, &verb, &n_verb)) return; /* an empty line: nothing to do */
  if (n_verb == 4 && memcmp(verb, "ping", 4) == 0) {
    send_line(c, "pong", 4, "", 0);
    return;
  }
  if (!(n_verb == 4 && memcmp(verb, "ring", 4) == 0) &&
      !(n_verb == 5 && memcmp(verb, "watch", 5) == 0) &&
      !(n_verb == 7 && memcmp(verb, "unwatch", 7) == 0)) {
    error_line(c, "unknown command: the commands are watch, unwatch, ring and ping");
    return;
  }
  while (next_word(&p, end, &q, &n)) {
    if (!valid_queue(q, n)) {
      error_line(c, "a queue name is 1 to 255 printable characters without spaces");
      continue;
    }
    if (verb[0] == 'r') ring(h, q, n);
    else if (verb[0] == 'w') watch(c, q, n);
    else unwatch(c, q, n);
  }
}

static void read_client(Hub *h, Client *c) {
  for (;;) {
    ssize_t r = recv(c->fd, c->in + c->n_in, sizeof c->in - c->n_in, MSG_DONTWAIT);
    char *nl;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (r <= 0) {
      c->dropped = 1; /* closed, or reset */
      return;
    }
    c->n_in += (size_t)r;
    while (!c->dropped && (nl = memchr(c->in, '\n', c->n_in))) {
      size_t len = (size_t)(nl - c->in);
      command(h, c, c->in, len);
      memmove(c->in, nl + 1, c->n_in - len - 1);
      c->n_in -= len + 1;
    }
    if (c->n_in == sizeof c->in) {
      error_line(c, "line too long");
      flush_out(c);
      c->dropped = 1;
    }
    if (c->dropped) return;
  }
}

static void accept_clients(Hub *h) {
  for (;;) {
    int fd = accept4(h->listen_fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
    Client *c;
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        node_log("wake hub: cannot accept a connection: %s", strerror(errno));
        poll(0, 0, ACCEPT_PAUSE_MS); /* the listener stays readable: do not spin */
      }
      return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A receiver's machine that vanishes without closing is noticed. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (h->n_clients == h->cap_clients) {
      int cap = h->cap_clients ? h->cap_clients * 2 : 16;
      Client **cs = realloc(h->clients, (size_t)cap * sizeof *cs);
      if (!cs) {
        close(fd);
        return;
      }
      h->clients = cs;
      h->cap_clients = cap;
    }
    c = calloc(1, sizeof *c);
    if (c) c->out = malloc(OUT_BUFFER);
    if (!c || !c->out) {
      free(c);
      close(fd);
      return;
    }
    c->fd = fd;
    h->clients[h->n_clients++] = c;
  }
}

static void *hub_main(void *arg) {
  Hub *h = arg;
  struct pollfd *fds = 0;
  int cap = 0;
  for (;;) {
    int i, n = h->n_clients + 2, got;
    if (n > cap) {
      struct pollfd *f = realloc(fds, (size_t)n * sizeof *f);
      if (!f) {
        poll(0, 0, ACCEPT_PAUSE_MS);
        continue;
      }
      fds = f;
      cap = n;
    }
    fds[0] = (struct pollfd){h->stop_fd, POLLIN, 0};
    fds[1] = (struct pollfd){h->listen_fd, POLLIN, 0};
    for (i = 0; i < h->n_clients; i++) {
      Client *c = h->clients[i];
      fds[i + 2] = (struct pollfd){c->fd, (short)(POLLIN | (c->n_out ? POLLOUT : 0)), 0};
    }
    got = poll(fds, (nfds_t)n, -1);
    if (got < 0) {
      if (errno == EINTR) continue;
      node_log("wake hub: poll failed: %s", strerror(errno));
      break;
    }
    if (fds[0].revents) break;
    /* Clients first, then new ones: indexes of fds match h->clients. */
    for (i = 0; i < n - 2; i++) {
      Client *c = h->clients[i];
      if (fds[i + 2].revents & (POLLIN | POLLHUP | POLLERR)) read_client(h, c);
    }
    for (i = 0; i < h->n_clients; i++) flush_out(h->clients[i]);
    for (i = 0; i < h->n_clients;) {
      if (h->clients[i]->dropped) {
        client_free(h->clients[i]);
        h->clients[i] = h->clients[--h->n_clients];
      } else i++;
    }
    if (fds[1].revents) accept_clients(h);
  }
  free(fds);
  return 0;
}

int node_listen(const char *address) {
  char host[256], port[16];
  struct addrinfo hints, *res = 0, *ai;
  int fd = -1, one = 1;
  if (split_address(address, host, sizeof host, port, sizeof port) != 0) return -1;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(host, port, &hints, &res) != 0) {
    errno = EINVAL;
    return -1;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

int hub_start(const char *address, Hub **out) {
  Hub *h = calloc(1, sizeof *h);
  int err;
  *out = 0;
  if (!h) return -1;
  h->listen_fd = node_listen(address);
  h->stop_fd = eventfd(0, EFD_CLOEXEC);
  if (h->listen_fd < 0 || h->stop_fd < 0) {
    err = errno;
    if (h->listen_fd >= 0) close(h->listen_fd);
    if (h->stop_fd >= 0) close(h->stop_fd);
    free(h);
    errno = err;
    return -1;
  }
  err = pthread_create(&h->thread, 0, hub_main, h);
  if (!err) pthread_setname_np(h->thread, "wake-hub"); /* for top -H and the tests */
  if (err) {
    close(h->listen_fd);
    close(h->stop_fd);
    free(h);
    errno = err;
    return -1;
  }
  *out = h;
  return 0;
}

/* Stops the thread and closes every connection: receivers see the end of
** their stream and reconnect elsewhere. */
void hub_stop(Hub *h) {
  uint64_t one = 1;
  int i;
  if (!h) return;
  if (write(h->stop_fd, &one, sizeof one) < 0) node_log("wake hub: cannot stop the thread");
  pthread_join(h->thread, 0);
  for (i = 0; i < h->n_clients; i++) client_free(h->clients[i]);
  free(h->clients);
  close(h->listen_fd);
  close(h->stop_fd);
  free(h);
}
