/*
** chanlite-node: chanlite hosted in a dqlite node.
**
**   chanlite-node --id 1 --address 10.0.0.1:9001 --data /var/lib/chanlite
**   chanlite-node --id 2 --address 10.0.0.2:9001 --data /var/lib/chanlite \
**                 --join 10.0.0.1:9001
**
** dqlite (Canonical's Raft-replicated SQLite) serves its client protocol on
** --address; every connection it opens has chanlite loaded, in node mode
** (ext/chanlite_node.h): what dqlite cannot replicate, or what would block
** its event loop, is refused with an error instead of breaking the cluster.
** The node with --id 1 bootstraps a new cluster the first time it starts;
** any other joins, as a voter, the cluster that one of the --join addresses
** belongs to. Started again with the same --data, a node resumes where it
** was. The wake hub (node/hub.c) listens on --wake-address. SIGTERM or
** SIGINT stops the node gracefully, handing leadership over first.
** docs/cluster.md is the operator's page.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include <dqlite.h>
#include "../ext/chanlite_node.h"
#include "node.h"

#define MAX_JOIN 16
#define REQUEST_TIMEOUT_MS 5000
/* Promotion to voter waits until the new node has caught up with the log. */
#define JOIN_TIMEOUT_MS 60000
#define ROLE_POLL_MS 250
#define JOIN_RETRY_MS 1000

typedef struct Options {
  unsigned long long id;
  const char *address;
  const char *bind_address;
  const char *data;
  const char *join[MAX_JOIN];
  int n_join;
  const char *wake_address; /* NULL: none ("off") */
  char default_wake[300];
  unsigned latency_ms; /* 0: dqlite's default */
} Options;

int sqlite3_chanlite_init(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api);

static const char usage[] =
  "usage: chanlite-node --id N --address HOST:PORT --data DIR [--join HOST:PORT ...]\n"
  "                     [--bind-address HOST:PORT] [--wake-address HOST:PORT|off]\n"
  "                     [--latency-ms MS]\n"
  "  --id N              this node's id, positive, unique in the cluster; the node with\n"
  "                      id 1 bootstraps a new cluster the first time it starts\n"
  "  --address HOST:PORT where the other nodes and the clients reach this node\n"
  "  --bind-address A    where to listen, if not --address (behind a proxy or NAT)\n"
  "  --data DIR          the node's Raft log and snapshots (created if missing)\n"
  "  --join HOST:PORT    a member of the cluster to join (repeatable: any one will do)\n"
  "  --wake-address A    the wake hub's address (default: --address's host, port + 1),\n"
  "                      or off\n"
  "  --latency-ms MS     the network's one-way latency: elections time out after 15x it\n"
  "                      (default: dqlite's, a 3 s election timeout)\n";

static int fail_usage(const char *fmt, const char *arg) {
  fprintf(stderr, "chanlite-node: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", usage);
  return -1;
}

static int parse_number(const char *s, unsigned long long max, unsigned long long *out) {
  char *end;
  unsigned long long v;
  if (!s || !*s || *s == '-') return -1;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno || *end || v == 0 || v > max) return -1;
  *out = v;
  return 0;
}

/* --wake-address, or by default the node's listening host and the port
** above dqlite's. */
static int wake_address(Options *o) {
  char host[256], port[16];
  unsigned long long n;
  if (o->wake_address) {
    if (strcmp(o->wake_address, "off") == 0) o->wake_address = 0;
    else if (split_address(o->wake_address, host, sizeof host, port, sizeof port) != 0) {
      return fail_usage("--wake-address must be HOST:PORT or off, not '%s'", o->wake_address);
    }
    return 0;
  }
  split_address(o->bind_address ? o->bind_address : o->address, host, sizeof host, port,
                sizeof port);
  if (parse_number(port, 65534, &n) != 0) {
    return fail_usage("the wake hub's default port is --address's port + 1: give "
                      "--wake-address for port %s",
                      port);
  }
  snprintf(o->default_wake, sizeof o->default_wake, strchr(host, ':') ? "[%s]:%llu" : "%s:%llu",
           host, n + 1);
  o->wake_address = o->default_wake;
  return 0;
}

static int parse_args(int argc, char **argv, Options *o) {
  int i;
  char host[256], port[16];
  memset(o, 0, sizeof *o);
  for (i = 1; i < argc; i++) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : 0;
    unsigned long long n;
    if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
      fputs(usage, stdout);
      exit(0);
    }
    if (!val) return fail_usage("%s needs a value", opt);
    i++;
    if (strcmp(opt, "--id") == 0) {
      if (parse_number(val, ULLONG_MAX, &o->id) != 0) {
        return fail_usage("--id must be a positive integer, not '%s'", val);
      }
    } else if (strcmp(opt, "--address") == 0) {
      o->address = val;
    } else if (strcmp(opt, "--bind-address") == 0) {
      o->bind_address = val;
    } else if (strcmp(opt, "--data") == 0) {
      o->data = val;
    } else if (strcmp(opt, "--join") == 0) {
      if (o->n_join == MAX_JOIN) return fail_usage("more than 16 --join addresses%s", "");
      o->join[o->n_join++] = val;
    } else if (strcmp(opt, "--wake-address") == 0) {
      o->wake_address = val;
    } else if (strcmp(opt, "--latency-ms") == 0) {
      if (parse_number(val, 3600000, &n) != 0) {
        return fail_usage("--latency-ms must be from 1 to 3600000, not '%s'", val);
      }
      o->latency_ms = (unsigned)n;
    } else {
      return fail_usage("unknown option %s", opt);
    }
  }
  if (!o->id) return fail_usage("--id is required%s", "");
  if (!o->address) return fail_usage("--address is required%s", "");
  if (!o->data) return fail_usage("--data is required%s", "");
  if (split_address(o->address, host, sizeof host, port, sizeof port) != 0) {
    return fail_usage("--address must be HOST:PORT, not '%s'", o->address);
  }
  if (o->bind_address &&
      split_address(o->bind_address, host, sizeof host, port, sizeof port) != 0) {
    return fail_usage("--bind-address must be HOST:PORT, not '%s'", o->bind_address);
  }
  for (i = 0; i < o->n_join; i++) {
    if (split_address(o->join[i], host, sizeof host, port, sizeof port) != 0) {
      return fail_usage("--join must be HOST:PORT, not '%s'", o->join[i]);
    }
  }
  return wake_address(o);
}

/* mkdir -p */
static int make_dirs(const char *path) {
  char buf[PATH_MAX];
  char *p;
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
  for (p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

/* Whether the data directory holds a node's Raft state already (libraft
** keeps its term and vote in metadata1 and metadata2). */
static int has_raft_state(const char *dir) {
  char path[PATH_MAX];
  struct stat st;
  int i;
  for (i = 1; i <= 2; i++) {
    snprintf(path, sizeof path, "%s/metadata%d", dir, i);
    if (stat(path, &st) == 0) return 1;
  }
  return 0;
}

/* Waits up to ms for SIGTERM/SIGINT; returns the signal, or 0. */
static int wait_signal(const sigset_t *signals, int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  int sig;
  do sig = sigtimedwait(signals, 0, &ts);
  while (sig < 0 && errno == EINTR);
  return sig > 0 ? sig : 0;
}

/* The leader as one of the --join addresses sees it, connected to; -1 if
** none knows one yet. */
static int connect_leader(const Options *o, char *err, int n_err) {
  int i;
  for (i = 0; i < o->n_join; i++) {
    char leader[256];
    uint64_t leader_id = 0;
    int fd = client_connect(o->join[i], REQUEST_TIMEOUT_MS);
    if (fd < 0) {
      snprintf(err, (size_t)n_err, "cannot connect to %s", o->join[i]);
      continue;
    }
    if (client_leader(fd, &leader_id, leader, sizeof leader, err, n_err) != 0) {
      close(fd);
      continue;
    }
    if (!leader_id || !leader[0]) {
      snprintf(err, (size_t)n_err, "%s knows no leader yet", o->join[i]);
      close(fd);
      continue;
    }
    if (strcmp(leader, o->join[i]) != 0) {
      close(fd);
      fd = client_connect(leader, REQUEST_TIMEOUT_MS);
    }
    if (fd >= 0) {
      client_set_timeout(fd, JOIN_TIMEOUT_MS);
      return fd;
    }
    snprintf(err, (size_t)n_err, "cannot connect to the leader at %s", leader);
  }
  return -1;
}

/* One attempt at becoming a voter of the cluster: 1 done, 0 try again
** later, -1 never (an id or address that another member holds). */
static int try_join(const Options *o) {
  DqliteServer servers[CLIENT_MAX_SERVERS];
  char err[300] = "no --join address answered";
  int n = 0, i, fd, found = -1, rc = 0;
  fd = connect_leader(o, err, sizeof err);
  if (fd < 0) {
    node_log("join: %s; trying again", err);
    return 0;
  }
  if (client_cluster(fd, servers, CLIENT_MAX_SERVERS, &n, err, sizeof err) != 0) goto retry;
  for (i = 0; i < n; i++) {
    if (servers[i].id == o->id) found = i;
    else if (strcmp(servers[i].address, o->address) == 0) {
      node_log("join: address %s belongs to node %llu of the cluster already: give this node "
               "that id, or remove that node first",
               o->address, (unsigned long long)servers[i].id);
      close(fd);
      return -1;
    }
  }
  if (found >= 0 && strcmp(servers[found].address, o->address) != 0) {
    node_log("join: id %llu belongs to the node at %s already: give this node another id", o->id,
             servers[found].address);
    close(fd);
    return -1;
  }
  if (found >= 0 && servers[found].role == DQLITE_ROLE_VOTER) {
    node_log("join: already a voter of the cluster");
    close(fd);
    return 1;
  }
  if (found < 0) {
    if (client_add(fd, o->id, o->address, err, sizeof err) != 0) goto retry;
    node_log("join: added to the cluster; catching up to become a voter");
  }
  if (client_assign(fd, o->id, DQLITE_ROLE_VOTER, err, sizeof err) != 0) goto retry;
  node_log("join: joined the cluster as a voter");
  close(fd);
  return 1;
retry:
  node_log("join: %s; trying again", err);
  close(fd);
  return rc;
}

/* Where the node itself asks its own node: where it listens, which is
** local even when --address is a proxy's or NAT's. */
static const char *self_address(const Options *o) {
  return o->bind_address ? o->bind_address : o->address;
}

/* The role as this node sees it, for the log. */
typedef struct RoleWatch {
  int fd;
  int known;
  uint64_t leader_id;
  char leader[256];
} RoleWatch;

static void watch_role(RoleWatch *w, const Options *o) {
  char leader[256] = "", err[300];
  uint64_t leader_id = 0;
  if (w->fd < 0) w->fd = client_connect(self_address(o), REQUEST_TIMEOUT_MS);
  if (w->fd < 0) return;
  if (client_leader(w->fd, &leader_id, leader, sizeof leader, err, sizeof err) != 0) {
    close(w->fd);
    w->fd = -1;
    return;
  }
  if (w->known && leader_id == w->leader_id && strcmp(leader, w->leader) == 0) return;
  if (leader_id == o->id) node_log("role: leader");
  else if (leader_id) {
    node_log("role: follower (leader: node %llu at %s)", (unsigned long long)leader_id, leader);
  } else node_log("role: no leader known (an election is under way, or not a voter yet)");
  w->known = 1;
  w->leader_id = leader_id;
  snprintf(w->leader, sizeof w->leader, "%s", leader);
}

/* A leader that stops hands leadership to the most up-to-date voter first:
** the cluster then serves again without waiting out an election timeout. */
static void hand_over(const Options *o) {
  DqliteServer servers[CLIENT_MAX_SERVERS];
  char err[300], leader[256];
  uint64_t leader_id = 0;
  int fd, n = 0, i, voters = 0;
  fd = client_connect(self_address(o), REQUEST_TIMEOUT_MS);
  if (fd < 0) return;
  /* Asked now: the role last logged may be a poll old. */
  if (client_leader(fd, &leader_id, leader, sizeof leader, err, sizeof err) != 0 ||
      leader_id != o->id ||
      client_cluster(fd, servers, CLIENT_MAX_SERVERS, &n, err, sizeof err) != 0) {
    close(fd);
    return;
  }
  for (i = 0; i < n; i++) voters += servers[i].role == DQLITE_ROLE_VOTER && servers[i].id != o->id;
  if (voters == 0) {
    close(fd);
    return; /* alone: no one to hand over to */
  }
  if (client_transfer(fd, 0, err, sizeof err) == 0) node_log("stop: leadership handed over");
  else node_log("stop: leadership not handed over: %s", err);
  close(fd);
}

static int create_node(const Options *o, dqlite_node **node) {
  const char *bind = self_address(o);
  /* libdqlite says nothing when it cannot listen (and leaks the node it
  ** then destroys): try first, to name the reason. */
  int rc, fd = node_listen(bind);
  if (fd < 0) {
    node_log("cannot start the node on %s: %s", bind, strerror(errno));
    return -1;
  }
  close(fd);
  rc = dqlite_node_create(o->id, o->address, o->data, node);
  if (rc != 0) {
    node_log("cannot create the node: %s", *node ? dqlite_node_errmsg(*node) : "out of memory");
    return -1;
  }
  rc = dqlite_node_set_bind_address(*node, bind);
  if (rc == 0 && o->latency_ms) rc = dqlite_node_set_network_latency_ms(*node, o->latency_ms);
  if (rc == 0) rc = dqlite_node_start(*node);
  if (rc != 0) {
    node_log("cannot start the node on %s: %s", bind, dqlite_node_errmsg(*node));
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  Options o;
  dqlite_node *node = 0;
  sigset_t signals;
  RoleWatch role = {-1, 0, 0, ""};
  Hub *hub = 0;
  int joined, sig = 0, rc;
  struct timespec next_join = {0, 0};
  if (parse_args(argc, argv, &o) != 0) return 2;
  if (make_dirs(o.data) != 0) {
    node_log("cannot create the data directory %s: %s", o.data, strerror(errno));
    return 1;
  }
  joined = has_raft_state(o.data) && o.n_join == 0;
  if (!has_raft_state(o.data)) {
    if (o.id == 1 && o.n_join > 0) {
      node_log("--id 1 bootstraps a new cluster: a node that joins one needs another id");
      return 2;
    }
    if (o.id != 1 && o.n_join == 0) {
      node_log("%s holds no cluster state and no --join was given: only --id 1 bootstraps a "
               "new cluster; give the others --join HOST:PORT of a member",
               o.data);
      return 2;
    }
    joined = o.id == 1;
  }
  /* A peer that dies mid-write must not kill the node (dqlite writes to
  ** sockets without MSG_NOSIGNAL): with SIGPIPE, killing the leader killed
  ** both followers. The stop signals go to sigtimedwait below, in every
  ** thread, so they are blocked before any thread starts. */
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, 0);

  chanlite_set_node_mode();
  rc = sqlite3_auto_extension((void (*)(void))sqlite3_chanlite_init);
  if (rc != SQLITE_OK) {
    node_log("cannot register chanlite: %s", sqlite3_errstr(rc));
    return 1;
  }
  if (o.wake_address && hub_start(o.wake_address, &hub) != 0) {
    node_log("cannot start the wake hub on %s: %s", o.wake_address, strerror(errno));
    return 1;
  }
  if (create_node(&o, &node) != 0) {
    if (node) dqlite_node_destroy(node);
    hub_stop(hub);
    return 1;
  }
  node_log("node %llu serving on %s (data %s), wake hub on %s", o.id, o.address, o.data,
           o.wake_address ? o.wake_address : "none (off)");
  while (!sig) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!joined && (now.tv_sec > next_join.tv_sec ||
                    (now.tv_sec == next_join.tv_sec && now.tv_nsec >= next_join.tv_nsec))) {
      rc = try_join(&o);
      if (rc < 0) break;
      joined = rc;
      next_join = now;
      next_join.tv_sec += JOIN_RETRY_MS / 1000;
    }
    watch_role(&role, &o);
    sig = wait_signal(&signals, ROLE_POLL_MS);
  }
  if (sig) node_log("stop: %s received", strsignal(sig));
  hand_over(&o);
  if (role.fd >= 0) close(role.fd);
  hub_stop(hub);
  rc = dqlite_node_stop(node);
  dqlite_node_destroy(node);
  node_log("stopped");
  return sig ? (rc == 0 ? 0 : 1) : 1;
}
