/** A database that can load an extension: better-sqlite3's Database fits. */
export interface Db {
  loadExtension(file: string, entryPoint?: string): unknown;
}

/** The loadable chanlite extension: CHANLITE_EXTENSION if set, else the
 * prebuilt file this package carries for this platform. Throws if neither. */
export declare function getLoadablePath(): string;

/** Load chanlite into an open database. */
export declare function load(db: Db): void;

/** The extension's entry point, "sqlite3_chanlite_init". */
export declare const ENTRY_POINT: string;

/** "CHANLITE_EXTENSION", the environment variable that overrides the path. */
export declare const PATH_VARIABLE: string;
