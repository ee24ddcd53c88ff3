/*
** Node mode: chanlite inside a dqlite node (node/main.c, chanlite-node).
**
** dqlite replicates the WAL frames that a client's EXEC request commits;
** a statement sent as a QUERY that commits on its own (a bare
** `SELECT channel_send(...)` in autocommit) writes frames that are never
** replicated, and the node's next write then aborts it. So in a node every
** call that writes refuses to run outside the client's transaction, naming
** the fix: EXEC `BEGIN IMMEDIATE`, the SELECT, EXEC `COMMIT`. Inside it, the
** call joins it (a savepoint, ext/transaction.c) and dqlite replicates the
** whole at COMMIT.
**
** Nothing may block the node's one event loop either (channel_wait refuses:
** ext/wake.c), nor work beside dqlite's VFS: no bell file (the database is
** not a file here), no WAL hook or checkpoint (dqlite checkpoints itself,
** on every node alike), no second connection (channel_recv_batch pops in
** the client's transaction: ext/vtab.c).
**
** Only the hosting program can turn node mode on (ext/chanlite_node.h),
** before any connection opens: a process-wide flag, which no SQL reaches.
*/
#include "chanlite.h"
#include "chanlite_node.h"

static int node_mode;

void chanlite_set_node_mode(void) {
  node_mode = 1;
}

int chanlite_in_node(void) {
  return node_mode;
}

int chanlite_node_guard(Chanlite *c) {
  if (!node_mode || !sqlite3_get_autocommit(c->db)) return SQLITE_OK;
  return chanlite_fail(c, SQLITE_MISUSE,
                       "%s() in a dqlite node must run inside the client's transaction: "
                       "committed on its own it would not be replicated; send EXEC "
                       "'BEGIN IMMEDIATE', then this statement, then EXEC 'COMMIT'",
                       c->fn);
}
