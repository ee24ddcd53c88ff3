//! chanlite from Rust, with rusqlite and the chanlite crate.
//!
//!     cargo run                          the tour: checks each step, exits non-zero on a failure
//!     cargo run -- chat DB ROOM TEXT     tells the Django chat room ROOM: group_send to chat_ROOM
//!
//! CHANLITE_EXTENSION names chanlite.so.

use std::error::Error;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    chanlite::load(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn recv(conn: &Connection, channel: &str) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT channel_recv(?)", [channel], |row| row.get(0))?)
}

/// The next message of `channel`, waited for without polling: channel_wait
/// blocks until a send commits (it watches the bell file), so it needs a
/// connection of its own, outside any transaction.
fn receive(conn: &Connection, channel: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(message) = recv(conn, channel)? {
            return Ok(message);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no message in {channel} after {timeout:?}").into());
        }
        conn.query_row(
            "SELECT channel_wait(?, ?)",
            params![channel, left.as_secs_f64()],
            |row| row.get::<_, i64>(0),
        )?;
    }
}

/// A group_send the Django chat demo's consumers understand: the JSON
/// object's "type" names their handler (chat.message -> chat_message).
fn chat(path: &Path, room: &str, text: &str) -> Result<()> {
    let conn = open(path)?;
    let event = json!({"type": "chat.message", "message": text}).to_string();
    let delivered: i64 = conn.query_row(
        "SELECT group_send(?, ?)",
        params![format!("chat_{room}"), event],
        |row| row.get(0),
    )?;
    println!("delivered to {delivered}");
    Ok(())
}

fn tour() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("chanlite-rust-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = tour_in(&dir.join("app.db"));
    std::fs::remove_dir_all(&dir)?;
    result
}

fn tour_in(path: &Path) -> Result<()> {
    let mut conn = open(path)?;
    let (version, sqlite): (String, String) =
        conn.query_row("SELECT chanlite_version(), sqlite_version()", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    println!("chanlite {version} on SQLite {sqlite}");

    for text in ["first", "second", "third"] {
        conn.query_row("SELECT channel_send('jobs', ?)", [text], |r| {
            r.get::<_, i64>(0)
        })?;
    }
    let got = (0..3)
        .map(|_| recv(&conn, "jobs"))
        .collect::<Result<Vec<_>>>()?;
    assert_eq!(
        got,
        [
            Some("first".into()),
            Some("second".into()),
            Some("third".into())
        ]
    );
    assert_eq!(recv(&conn, "jobs")?, None);
    println!("in order: {got:?}");

    conn.query_row("SELECT group_add('room', 'alice')", [], |r| {
        r.get::<_, i64>(0)
    })?;
    conn.query_row("SELECT group_add('room', 'bob')", [], |r| {
        r.get::<_, i64>(0)
    })?;
    let event = json!({"type": "chat.message", "text": "hi all"}).to_string();
    let delivered: i64 = conn.query_row("SELECT group_send('room', ?)", [&event], |r| r.get(0))?;
    assert_eq!(delivered, 2);
    for member in ["alice", "bob"] {
        assert_eq!(recv(&conn, member)?.as_deref(), Some(event.as_str()));
    }
    println!("group_send reached 2 members: {event}");

    // Process-specific channels worker!a, worker!b: one batch drains both, in send order.
    for (channel, text) in [("worker!a", "a1"), ("worker!b", "b1"), ("worker!a", "a2")] {
        conn.query_row("SELECT channel_send(?, ?)", [channel, text], |r| {
            r.get::<_, i64>(0)
        })?;
    }
    let batch = conn
        .prepare("SELECT channel, message FROM channel_recv_batch(?, ?)")?
        .query_map(params!["worker!", 100], |r| {
            Ok(format!(
                "{}={}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    assert_eq!(batch, ["worker!a=a1", "worker!b=b1", "worker!a=a2"]);
    println!("channel_recv_batch drained: {batch:?}");

    // The send joins the caller's transaction: a rollback (here, dropping it) un-sends it.
    conn.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, paid INTEGER)",
        [],
    )?;
    for (id, commit) in [(1, false), (2, true)] {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO orders VALUES (?, 1)", [id])?;
        let message = json!({"type": "order.paid", "id": id}).to_string();
        tx.query_row("SELECT channel_send('billing', ?)", [message], |r| {
            r.get::<_, i64>(0)
        })?;
        if commit {
            tx.commit()?;
        }
    }
    assert_eq!(
        recv(&conn, "billing")?.as_deref(),
        Some(r#"{"id":2,"type":"order.paid"}"#)
    );
    assert_eq!(recv(&conn, "billing")?, None);
    assert_eq!(
        conn.query_row("SELECT count(*) FROM orders", [], |r| r.get::<_, i64>(0))?,
        1
    );
    println!("a rolled-back transaction sent nothing; the committed one sent order 2");

    // A thread sends in a moment; this connection waits for it without polling.
    let sender_path = path.to_owned();
    let sender = thread::spawn(move || -> std::result::Result<(), String> {
        thread::sleep(Duration::from_millis(100));
        let other = open(&sender_path).map_err(|e| e.to_string())?;
        other
            .query_row("SELECT channel_send('inbox', 'wake up')", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    let message = receive(&conn, "inbox", Duration::from_secs(10))?;
    sender.join().expect("sender thread panicked")?;
    assert_eq!(message, "wake up");
    println!("waited with channel_wait and received: {message}");
    println!("rust example: all checks passed");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => tour(),
        [cmd, db, room, text] if cmd == "chat" => chat(Path::new(db), room, text),
        _ => Err("usage: chanlite-example [chat DB ROOM TEXT]".into()),
    }
}
