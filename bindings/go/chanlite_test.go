// Run with CHANLITE_EXTENSION set to chanlite.so (tests/languages.sh does).
package chanlite_test

import (
	"database/sql"
	"strings"
	"testing"

	chanlite "github.com/chanlite/chanlite/bindings/go"
)

func open(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open(chanlite.DriverName, ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1) // one :memory: database
	t.Cleanup(func() { db.Close() })
	return db
}

func TestDriverLoadsChanlite(t *testing.T) {
	db := open(t)
	var version string
	if err := db.QueryRow("SELECT chanlite_version()").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(version, "v") {
		t.Fatalf("chanlite_version() = %q", version)
	}
	var id int64
	if err := db.QueryRow("SELECT channel_send('t', 'hello')").Scan(&id); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := db.QueryRow("SELECT channel_recv('t')").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if id != 1 || got != "hello" {
		t.Fatalf("sent id %d, received %q", id, got)
	}
}

func TestUnsetPathSaysWhatToSet(t *testing.T) {
	t.Setenv(chanlite.PathVariable, "")
	if _, err := chanlite.Path(); err != chanlite.ErrPathUnset {
		t.Fatalf("Path() error = %v", err)
	}
	db, err := sql.Open(chanlite.DriverName, ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Ping(); err == nil || !strings.Contains(err.Error(), chanlite.PathVariable) {
		t.Fatalf("Ping() error = %v", err)
	}
}

func TestMissingFileIsNamed(t *testing.T) {
	t.Setenv(chanlite.PathVariable, "/nonexistent/chanlite.so")
	if _, err := chanlite.Path(); err == nil || !strings.Contains(err.Error(), "/nonexistent/chanlite.so") {
		t.Fatalf("Path() error = %v", err)
	}
}
