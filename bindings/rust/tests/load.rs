//! Run with CHANLITE_EXTENSION set to chanlite.so (tests/languages.sh does).

use rusqlite::Connection;

#[test]
fn load_gives_the_sql_api() {
    let conn = Connection::open_in_memory().unwrap();
    chanlite::load(&conn).unwrap();
    let version: String = conn
        .query_row("SELECT chanlite_version()", [], |r| r.get(0))
        .unwrap();
    assert!(version.starts_with('v'), "{version}");
    let sent: i64 = conn
        .query_row("SELECT channel_send('t', 'hello')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sent, 1);
    let got: String = conn
        .query_row("SELECT channel_recv('t')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, "hello");
}

#[test]
fn extension_loading_is_off_again_after_load() {
    let conn = Connection::open_in_memory().unwrap();
    chanlite::load(&conn).unwrap();
    let path = chanlite::loadable_path().unwrap();
    let err = conn
        .query_row("SELECT load_extension(?)", [path.to_str().unwrap()], |r| {
            r.get::<_, Option<String>>(0)
        })
        .unwrap_err();
    assert!(err.to_string().contains("not authorized"), "{err}");
}

#[test]
fn a_path_that_is_no_file_is_named_in_the_error() {
    let conn = Connection::open_in_memory().unwrap();
    let err = chanlite::load_from(&conn, "/nonexistent/chanlite.so").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/chanlite.so"),
        "{err}"
    );
}
