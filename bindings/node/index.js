'use strict';
// chanlite for Node: the path of the loadable extension this package carries,
// and load(db) for better-sqlite3 (or any client with loadExtension(file, entryPoint)).

const { existsSync } = require('node:fs');
const { join } = require('node:path');

const ENTRY_POINT = 'sqlite3_chanlite_init';
// The same variable the Python package reads, so one setting serves both.
const PATH_VARIABLE = 'CHANLITE_EXTENSION';
const SUFFIX = { darwin: 'dylib', win32: 'dll' };

/** The loadable chanlite extension: CHANLITE_EXTENSION if set, else the
 * prebuilt file this package carries for this platform. */
function getLoadablePath() {
  const override = process.env[PATH_VARIABLE];
  if (override) {
    if (!existsSync(override)) {
      throw new Error(`chanlite: ${PATH_VARIABLE} names ${override}, which does not exist`);
    }
    return override;
  }
  const platform = `${process.platform}-${process.arch}`;
  const bundled = join(__dirname, 'prebuilt', platform, `chanlite.${SUFFIX[process.platform] || 'so'}`);
  if (!existsSync(bundled)) {
    throw new Error(
      `chanlite: this package has no prebuilt extension for ${platform}: ` +
        `build chanlite (meson setup build && meson compile -C build) and set ${PATH_VARIABLE} to the file`,
    );
  }
  return bundled;
}

/** Load chanlite into an open database (better-sqlite3's Database). */
function load(db) {
  db.loadExtension(getLoadablePath(), ENTRY_POINT);
}

module.exports = { getLoadablePath, load, ENTRY_POINT, PATH_VARIABLE };
