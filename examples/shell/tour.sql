-- A tour of chanlite in the sqlite3 shell. Run it with examples/shell/tour.sh.
.load ./build/chanlite
.timeout 5000
.headers on
.mode box
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
.echo on

-- Channels are FIFO queues. A send returns the message's id.
SELECT channel_send('chat', 'hello') AS id;
SELECT channel_send('chat', X'68690A') AS id;       -- a BLOB stays a BLOB
SELECT channel_recv('chat') AS message;
SELECT typeof(channel_recv('chat')) AS type;
SELECT channel_recv('chat') AS message;             -- NULL: nothing left

-- Groups: group_send delivers to every live member.
SELECT group_add('room.lobby', 'alice') AS added, group_add('room.lobby', 'bob') AS added;
SELECT group_send('room.lobby', 'welcome!') AS delivered_to;
SELECT * FROM chanlite_channels;
SELECT channel_recv('alice') AS alice, channel_recv('bob') AS bob;

-- Process-specific channels: one process drains everything sent to its
-- prefix, in order, and learns which channel each message was for.
SELECT channel_send('worker.7!conn-a', 'for a'), channel_send('worker.7!conn-b', 'for b');
SELECT channel, message FROM channel_recv_batch('worker.7!', 100);

-- Capacity: 100 per channel by default, settable per GLOB pattern.
SELECT chanlite_capacity('tiny.*', 1) AS capacity;
SELECT channel_send('tiny.queue', 'first') AS id;
SELECT channel_send('tiny.queue', 'second');         -- fails: channel full

-- Expiry: messages expire 60 s after they are sent. Pin the clock to see it.
SELECT chanlite_clock(chanlite_now() + 61) AS pinned_clock;
SELECT channel_recv('tiny.queue') AS expired;        -- NULL: never delivered
SELECT chanlite_clock(NULL) IS NOT NULL AS real_clock_again;

-- Transactions: inside yours, a call joins it.
BEGIN IMMEDIATE;
SELECT channel_send('orders', 'order 42 paid') AS id;
ROLLBACK;
SELECT channel_recv('orders') AS after_rollback;     -- NULL: never sent

-- Bad input gets an error that names it.
SELECT channel_send('no spaces allowed', 'x');
SELECT channel_flush() AS removed;
