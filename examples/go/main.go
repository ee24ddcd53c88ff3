// chanlite from Go, with github.com/mattn/go-sqlite3 and the chanlite module.
//
//	go run -tags libsqlite3 .                            the tour: checks each step, exits 1 on a failure
//	go run -tags libsqlite3 . receive DB CHANNEL COUNT   waits for COUNT messages, prints each on a line
//
// CHANLITE_EXTENSION names chanlite.so. -tags libsqlite3 links the system's
// SQLite instead of compiling go-sqlite3's own copy (minutes on a small machine).
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"time"

	chanlite "github.com/chanlite/chanlite/bindings/go"
)

// open gives a pool whose connections all have chanlite loaded, in WAL mode,
// with BEGIN IMMEDIATE for transactions (a deferred one that has read cannot
// wait for the write lock).
func open(path string) *sql.DB {
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000&_txlock=immediate"
	db, err := sql.Open(chanlite.DriverName, dsn)
	if err != nil {
		log.Fatal(err)
	}
	return db
}

// receive returns the next message of channel, waiting for it without
// polling: channel_wait blocks until a send commits (it watches the bell
// file), so it needs a connection of its own, outside any transaction.
// waiting, if not nil, is called each time it finds the channel empty.
func receive(ctx context.Context, conn *sql.Conn, channel string, timeout time.Duration, waiting func()) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		var message sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT channel_recv(?)", channel).Scan(&message); err != nil {
			return "", err
		}
		if message.Valid {
			return message.String, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return "", fmt.Errorf("no message in %s after %s", channel, timeout)
		}
		if waiting != nil {
			waiting()
		}
		var rang int
		if err := conn.QueryRowContext(ctx, "SELECT channel_wait(?, ?)", channel, left.Seconds()).Scan(&rang); err != nil {
			return "", err
		}
	}
}

func scalar[T any](db *sql.DB, query string, args ...any) T {
	var value T
	if err := db.QueryRow(query, args...).Scan(&value); err != nil {
		log.Fatalf("%s: %v", query, err)
	}
	return value
}

func check(ok bool, format string, args ...any) {
	if !ok {
		log.Fatalf("check failed: "+format, args...)
	}
}

func tour() {
	dir, err := os.MkdirTemp("", "chanlite-go-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db := open(filepath.Join(dir, "app.db"))
	defer db.Close()
	fmt.Println("chanlite", scalar[string](db, "SELECT chanlite_version()"), "on SQLite", scalar[string](db, "SELECT sqlite_version()"))

	for _, text := range []string{"first", "second", "third"} {
		scalar[int64](db, "SELECT channel_send('jobs', ?)", text)
	}
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, scalar[string](db, "SELECT channel_recv('jobs')"))
	}
	check(reflect.DeepEqual(got, []string{"first", "second", "third"}), "received %q", got)
	check(!scalar[sql.NullString](db, "SELECT channel_recv('jobs')").Valid, "jobs not empty")
	fmt.Println("in order:", got)

	scalar[int](db, "SELECT group_add('room', 'alice')")
	scalar[int](db, "SELECT group_add('room', 'bob')")
	event, _ := json.Marshal(map[string]string{"type": "chat.message", "text": "hi all"})
	check(scalar[int](db, "SELECT group_send('room', ?)", string(event)) == 2, "group_send did not reach 2")
	for _, member := range []string{"alice", "bob"} {
		check(scalar[string](db, "SELECT channel_recv(?)", member) == string(event), "%s missed the event", member)
	}
	fmt.Println("group_send reached 2 members:", string(event))

	// Process-specific channels worker!a, worker!b: one batch drains both, in send order.
	for _, m := range [][2]string{{"worker!a", "a1"}, {"worker!b", "b1"}, {"worker!a", "a2"}} {
		scalar[int64](db, "SELECT channel_send(?, ?)", m[0], m[1])
	}
	rows, err := db.Query("SELECT channel, message FROM channel_recv_batch(?, ?)", "worker!", 100)
	if err != nil {
		log.Fatal(err)
	}
	var batch []string
	for rows.Next() {
		var channel, message string
		if err := rows.Scan(&channel, &message); err != nil {
			log.Fatal(err)
		}
		batch = append(batch, channel+"="+message)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	check(reflect.DeepEqual(batch, []string{"worker!a=a1", "worker!b=b1", "worker!a=a2"}), "batch %q", batch)
	fmt.Println("channel_recv_batch drained:", batch)

	// The send joins the caller's transaction: a rollback un-sends it.
	if _, err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, paid INTEGER)"); err != nil {
		log.Fatal(err)
	}
	pay := func(id int, commit bool) {
		tx, err := db.Begin()
		if err != nil {
			log.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO orders VALUES (?, 1)", id); err != nil {
			log.Fatal(err)
		}
		var messageID int64
		message := fmt.Sprintf(`{"type":"order.paid","id":%d}`, id)
		if err := tx.QueryRow("SELECT channel_send('billing', ?)", message).Scan(&messageID); err != nil {
			log.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			log.Fatal(err)
		}
	}
	pay(1, false)
	check(!scalar[sql.NullString](db, "SELECT channel_recv('billing')").Valid, "a rolled-back send arrived")
	pay(2, true)
	check(scalar[string](db, "SELECT channel_recv('billing')") == `{"type":"order.paid","id":2}`, "order 2 missing")
	check(scalar[int](db, "SELECT count(*) FROM orders") == 1, "orders")
	fmt.Println("a rolled-back transaction sent nothing; the committed one sent order 2")

	// A goroutine sends in a moment; this connection waits for it without polling.
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	go func() {
		time.Sleep(100 * time.Millisecond)
		scalar[int64](db, "SELECT channel_send('inbox', 'wake up')")
	}()
	message, err := receive(ctx, conn, "inbox", 10*time.Second, nil)
	if err != nil {
		log.Fatal(err)
	}
	check(message == "wake up", "waited for %q", message)
	fmt.Println("waited with channel_wait and received:", message)
	fmt.Println("go example: all checks passed")
}

func main() {
	log.SetFlags(0)
	args := os.Args[1:]
	switch {
	case len(args) == 0:
		tour()
	case len(args) == 4 && args[0] == "receive":
		count, err := strconv.Atoi(args[3])
		if err != nil {
			log.Fatal(err)
		}
		db := open(args[1])
		defer db.Close()
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		if err != nil {
			log.Fatal(err)
		}
		defer conn.Close()
		// Said on stderr the first time the channel is empty, so that a test
		// can start its sender once this process waits.
		var once sync.Once
		waiting := func() { once.Do(func() { fmt.Fprintln(os.Stderr, "waiting in", args[2]) }) }
		for i := 0; i < count; i++ {
			message, err := receive(ctx, conn, args[2], 60*time.Second, waiting)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Println(message)
		}
	default:
		log.Fatal(errors.New("usage: example [receive DB CHANNEL COUNT]"))
	}
}
