//! Load [chanlite](https://github.com/chanlite/chanlite), a Django Channels
//! channel layer inside SQLite, into a [`rusqlite::Connection`].
//!
//! ```no_run
//! let conn = rusqlite::Connection::open("app.db")?;
//! chanlite::load(&conn)?;
//! let id: i64 = conn.query_row("SELECT channel_send('chat', 'hello')", [], |r| r.get(0))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate carries no compiled code: it finds the loadable `chanlite.so`
//! at the path in the `CHANLITE_EXTENSION` environment variable (the same
//! variable the Python package reads), and loads it with SQLite's
//! `load_extension`. Build the file with meson, or take the one the Python
//! package installs (`python3 -c 'import chanlite; print(chanlite.path())'`).

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, LoadExtensionGuard};

/// The extension's entry point, passed to `sqlite3_load_extension`.
pub const ENTRY_POINT: &str = "sqlite3_chanlite_init";

/// The environment variable that names the loadable file.
pub const PATH_VARIABLE: &str = "CHANLITE_EXTENSION";

/// Why chanlite could not be loaded.
#[derive(Debug)]
pub enum Error {
    /// `CHANLITE_EXTENSION` is unset or empty.
    PathUnset,
    /// The path given does not name a file.
    Missing(PathBuf),
    /// SQLite refused to load it (wrong architecture, an SQLite older than
    /// 3.31.0, load_extension compiled out, ...).
    Sqlite(rusqlite::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PathUnset => write!(
                f,
                "chanlite: {PATH_VARIABLE} is not set: set it to the path of chanlite.so \
                 (meson setup build && meson compile -C build gives build/chanlite.so)"
            ),
            Error::Missing(path) => write!(
                f,
                "chanlite: {PATH_VARIABLE} names {}, which is not a file",
                path.display()
            ),
            Error::Sqlite(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

/// The path of the loadable chanlite extension, from `CHANLITE_EXTENSION`.
pub fn loadable_path() -> Result<PathBuf, Error> {
    let path = std::env::var_os(PATH_VARIABLE)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .ok_or(Error::PathUnset)?;
    if !path.is_file() {
        return Err(Error::Missing(path));
    }
    Ok(path)
}

/// Load chanlite into `conn`, from [`loadable_path`].
pub fn load(conn: &Connection) -> Result<(), Error> {
    load_from(conn, loadable_path()?)
}

/// Load chanlite into `conn` from the file at `path`. Extension loading is
/// enabled only for this call, so SQL run later cannot load others.
pub fn load_from(conn: &Connection, path: impl AsRef<Path>) -> Result<(), Error> {
    // SAFETY: the guard disables extension loading again when dropped, and
    // the file loaded is the one the caller (or CHANLITE_EXTENSION) named.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn)?;
        conn.load_extension(path.as_ref(), Some(ENTRY_POINT))?;
    }
    Ok(())
}
