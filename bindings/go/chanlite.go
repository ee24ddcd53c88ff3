// Package chanlite loads chanlite, a Django Channels channel layer inside
// SQLite, into github.com/mattn/go-sqlite3 connections.
//
// Importing the package registers the database/sql driver "sqlite3_chanlite":
// go-sqlite3 with chanlite loaded into every connection it opens.
//
//	db, err := sql.Open(chanlite.DriverName, "app.db?_journal_mode=WAL&_busy_timeout=5000")
//	var id int64
//	err = db.QueryRow("SELECT channel_send('chat', 'hello')").Scan(&id)
//
// The module carries no compiled code: it loads the file named by the
// CHANLITE_EXTENSION environment variable (the variable the Python package
// reads too) with SQLite's load_extension. Build with `-tags libsqlite3` to
// link the system's SQLite instead of compiling go-sqlite3's copy.
package chanlite

import (
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/mattn/go-sqlite3"
)

// DriverName is the database/sql driver this package registers.
const DriverName = "sqlite3_chanlite"

// EntryPoint is the extension's entry point, passed to sqlite3_load_extension.
const EntryPoint = "sqlite3_chanlite_init"

// PathVariable is the environment variable that names the loadable file.
const PathVariable = "CHANLITE_EXTENSION"

// ErrPathUnset is returned when CHANLITE_EXTENSION is unset or empty.
var ErrPathUnset = errors.New("chanlite: " + PathVariable + " is not set: set it to the path of " +
	"chanlite.so (meson setup build && meson compile -C build gives build/chanlite.so)")

func init() {
	sql.Register(DriverName, &sqlite3.SQLiteDriver{ConnectHook: Load})
}

// Path is the loadable chanlite extension's path, from CHANLITE_EXTENSION.
func Path() (string, error) {
	path := os.Getenv(PathVariable)
	if path == "" {
		return "", ErrPathUnset
	}
	if info, err := os.Stat(path); err != nil || info.IsDir() {
		return "", fmt.Errorf("chanlite: %s names %s, which is not a file", PathVariable, path)
	}
	return path, nil
}

// Load loads chanlite into one go-sqlite3 connection, from Path. It fits
// SQLiteDriver.ConnectHook, for a driver of your own with other hooks.
func Load(conn *sqlite3.SQLiteConn) error {
	path, err := Path()
	if err != nil {
		return err
	}
	return LoadFrom(conn, path)
}

// LoadFrom loads chanlite into one go-sqlite3 connection from the file at path.
func LoadFrom(conn *sqlite3.SQLiteConn, path string) error {
	if err := conn.LoadExtension(path, EntryPoint); err != nil {
		return fmt.Errorf("chanlite: cannot load %s: %w", path, err)
	}
	return nil
}
