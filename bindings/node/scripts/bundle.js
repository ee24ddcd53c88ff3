'use strict';
// npm pack runs this first: it copies the chanlite extension built by meson
// (or the file CHANLITE_EXTENSION names) into prebuilt/<platform>-<arch>/, so
// that the tarball carries it and installs with no compiler.

const { copyFileSync, existsSync, mkdirSync } = require('node:fs');
const { join, resolve } = require('node:path');

const source = process.env.CHANLITE_EXTENSION || resolve(__dirname, '../../../build/chanlite.so');
if (!existsSync(source)) {
  console.error(`chanlite: no extension to bundle at ${source}: run meson setup build && meson compile -C build ` +
    'in the repository, or set CHANLITE_EXTENSION');
  process.exit(1);
}
const target = join(__dirname, '..', 'prebuilt', `${process.platform}-${process.arch}`);
mkdirSync(target, { recursive: true });
copyFileSync(source, join(target, 'chanlite.so'));
console.log(`bundled ${source} as prebuilt/${process.platform}-${process.arch}/chanlite.so`);
