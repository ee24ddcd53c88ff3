// chanlite from Node, with better-sqlite3 and the chanlite npm package.
//
//   node example.mjs                          the tour: checks each step, exits 1 on a failure
//   node example.mjs send DB CHANNEL TEXT...  sends each TEXT, in order
//   node example.mjs upload DB GROUP FILE     group_send a file's bytes to Django consumers (msgpack)
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, watch } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { encode } from '@msgpack/msgpack';
import Database from 'better-sqlite3';
import * as chanlite from 'chanlite';

function open(path) {
  const db = new Database(path);
  chanlite.load(db);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  return db;
}

// One value from one statement: chanlite's calls are each a SELECT of their own.
const value = (db, sql, ...args) => db.prepare(sql).pluck().get(...args);

// Waits for a message without polling: watches the bell, the file every
// committed send writes a byte to, and looks at the queue each time it rings.
// The watch is armed before the first look, and JavaScript attaches the
// listener in the same tick as each look, so no ring is slept through.
async function receive(db, channel, timeoutMs) {
  const bell = value(db, 'SELECT chanlite_bell_path()');
  closeSync(openSync(bell, 'a')); // the first send creates it; watching needs it now
  const watcher = watch(bell);
  const deadline = AbortSignal.timeout(timeoutMs);
  try {
    for (;;) {
      const message = value(db, 'SELECT channel_recv(?)', channel);
      if (message !== null) return message;
      await once(watcher, 'change', { signal: deadline });
    }
  } finally {
    watcher.close();
  }
}

async function tour() {
  const dir = mkdtempSync(join(tmpdir(), 'chanlite-node-'));
  const db = open(join(dir, 'app.db'));
  try {
    console.log('chanlite', value(db, 'SELECT chanlite_version()'), 'on SQLite', value(db, 'SELECT sqlite_version()'),
      'from', chanlite.getLoadablePath());

    for (const text of ['first', 'second', 'third']) value(db, 'SELECT channel_send(?, ?)', 'jobs', text);
    const got = [1, 2, 3].map(() => value(db, "SELECT channel_recv('jobs')"));
    assert.deepEqual(got, ['first', 'second', 'third']);
    assert.equal(value(db, "SELECT channel_recv('jobs')"), null);
    console.log('in order:', got.join(', '));

    value(db, "SELECT group_add('room', 'alice')");
    value(db, "SELECT group_add('room', 'bob')");
    const event = JSON.stringify({ type: 'chat.message', text: 'hi all' });
    assert.equal(value(db, "SELECT group_send('room', ?)", event), 2);
    assert.equal(value(db, "SELECT channel_recv('alice')"), event);
    assert.equal(value(db, "SELECT channel_recv('bob')"), event);
    console.log('group_send reached 2 members:', event);

    // Process-specific channels worker!a, worker!b: one batch drains both, in send order.
    // better-sqlite3 binds a JavaScript number as REAL: an INTEGER argument is a BigInt (100n).
    for (const [channel, text] of [['worker!a', 'a1'], ['worker!b', 'b1'], ['worker!a', 'a2']]) {
      value(db, 'SELECT channel_send(?, ?)', channel, text);
    }
    const batch = db.prepare('SELECT channel, message FROM channel_recv_batch(?, ?)').all('worker!', 100n);
    assert.deepEqual(batch.map((row) => `${row.channel}=${row.message}`), ['worker!a=a1', 'worker!b=b1', 'worker!a=a2']);
    console.log('channel_recv_batch drained:', batch.map((row) => `${row.channel}=${row.message}`).join(' '));

    // The send joins the caller's transaction: an error rolls both back.
    db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, paid INTEGER)');
    const pay = db.transaction((id, fail) => {
      db.prepare('INSERT INTO orders VALUES (?, 1)').run(id);
      value(db, 'SELECT channel_send(?, ?)', 'billing', JSON.stringify({ type: 'order.paid', id }));
      if (fail) throw new Error('card declined');
    });
    assert.throws(() => pay.immediate(1, true), /card declined/);
    assert.equal(value(db, "SELECT channel_recv('billing')"), null);
    pay.immediate(2, false);
    assert.equal(value(db, "SELECT channel_recv('billing')"), '{"type":"order.paid","id":2}');
    assert.equal(value(db, 'SELECT count(*) FROM orders'), 1);
    console.log('a rolled-back transaction sent nothing; the committed one sent order 2');

    // Another connection sends in a moment; this one waits for it without polling.
    const other = open(join(dir, 'app.db'));
    setTimeout(() => value(other, "SELECT channel_send('inbox', 'wake up')"), 100);
    assert.equal(await receive(db, 'inbox', 10_000), 'wake up');
    other.close();
    console.log('waited on the bell and received: wake up');
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log('node example: all checks passed');
}

const [command, ...args] = process.argv.slice(2);
if (command === undefined) {
  await tour();
} else if (command === 'send' && args.length >= 3) {
  const [path, channel, ...texts] = args;
  const db = open(path);
  for (const text of texts) value(db, 'SELECT channel_send(?, ?)', channel, text);
  db.close();
} else if (command === 'upload' && args.length === 3) {
  // Bytes need msgpack: a BLOB body is read by the Django layer as msgpack,
  // and its bin values arrive as Python bytes.
  const [path, group, file] = args;
  const db = open(path);
  const message = encode({ type: 'file.uploaded', name: basename(file), data: readFileSync(file) });
  console.log('delivered to', value(db, 'SELECT group_send(?, ?)', group, Buffer.from(message)));
  db.close();
} else {
  console.error('usage: node example.mjs [send DB CHANNEL TEXT... | upload DB GROUP FILE]');
  process.exit(2);
}
