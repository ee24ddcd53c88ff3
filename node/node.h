/*
** chanlite-node's internal header: the pieces of node/ that main.c ties
** together. node/client.c speaks dqlite's client protocol (to join a
** cluster, to ask who leads, to hand leadership over); node/hub.c is the
** wake hub; node/log.c timestamps what the node says on stderr.
*/
#ifndef CHANLITE_NODE_H
#define CHANLITE_NODE_H

#include <stdint.h>

/* log.c */
void node_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* client.c: one connection to a dqlite node, blocking, with timeouts. */
typedef struct DqliteServer {
  uint64_t id;
  char address[256];
  uint64_t role; /* 0 voter, 1 stand-by, 2 spare */
} DqliteServer;

#define DQLITE_ROLE_VOTER 0
#define CLIENT_MAX_SERVERS 64

int client_connect(const char *address, int timeout_ms);
void client_set_timeout(int fd, int timeout_ms);
/* Each returns 0 on success, or -1 with the reason in err. */
int client_leader(int fd, uint64_t *id, char *address, int n_address, char *err, int n_err);
int client_cluster(int fd, DqliteServer *servers, int max, int *n, char *err, int n_err);
int client_add(int fd, uint64_t id, const char *address, char *err, int n_err);
int client_assign(int fd, uint64_t id, uint64_t role, char *err, int n_err);
int client_transfer(int fd, uint64_t id, char *err, int n_err);
/* Split "host:port" or "[v6]:port"; 0 on success. */
int split_address(const char *address, char *host, int n_host, char *port, int n_port);


/* hub.c: the wake hub, on a thread of its own; node_listen is a
** non-blocking listening socket on HOST:PORT, or -1 with errno set. */
int node_listen(const char *address);
typedef struct Hub Hub;
int hub_start(const char *address, Hub **out);
void hub_stop(Hub *hub);

#endif
