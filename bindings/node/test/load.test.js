'use strict';
// node --test test/ (npm test). Needs better-sqlite3, and the prebuilt file
// (npm pack puts it there) or CHANLITE_EXTENSION.
const assert = require('node:assert/strict');
const { statSync } = require('node:fs');
const { join } = require('node:path');
const { test } = require('node:test');
const Database = require('better-sqlite3');
const chanlite = require('..');

test('load gives the SQL API', () => {
  const db = new Database(':memory:');
  chanlite.load(db);
  assert.match(db.prepare('SELECT chanlite_version()').pluck().get(), /^v\d/);
  assert.equal(db.prepare("SELECT channel_send('t', 'hello')").pluck().get(), 1);
  assert.equal(db.prepare("SELECT channel_recv('t')").pluck().get(), 'hello');
  db.close();
});

test('without CHANLITE_EXTENSION, the prebuilt file the package carries', () => {
  const saved = process.env.CHANLITE_EXTENSION;
  delete process.env.CHANLITE_EXTENSION;
  try {
    const expected = join(__dirname, '..', 'prebuilt', `${process.platform}-${process.arch}`, 'chanlite.so');
    assert.equal(chanlite.getLoadablePath(), expected);
    assert.ok(statSync(expected).size > 0);
  } finally {
    if (saved !== undefined) process.env.CHANLITE_EXTENSION = saved;
  }
});

test('a CHANLITE_EXTENSION that names no file is refused by name', () => {
  const saved = process.env.CHANLITE_EXTENSION;
  process.env.CHANLITE_EXTENSION = '/nonexistent/chanlite.so';
  try {
    assert.throws(() => chanlite.getLoadablePath(), /CHANLITE_EXTENSION names \/nonexistent\/chanlite\.so/);
  } finally {
    if (saved === undefined) delete process.env.CHANLITE_EXTENSION;
    else process.env.CHANLITE_EXTENSION = saved;
  }
});
