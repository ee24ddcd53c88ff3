/*
** For programs that host chanlite in a dqlite node (node/main.c), and
** nothing else: called once, before sqlite3_auto_extension() registers
** chanlite, it puts every connection of the process in node mode
** (ext/node.c). No SQL can set it: a client of the node must not be able to
** turn the guards off.
*/
#ifndef CHANLITE_NODE_MODE_H
#define CHANLITE_NODE_MODE_H

void chanlite_set_node_mode(void);

#endif
