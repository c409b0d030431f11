//! What SqliteStore promises beyond the conformance kit: a reopened file keeps everything,
//! table prefixes keep stores (and an application's tables) apart, every refusal leaves the
//! file as it was, and damage made behind the store's back is an error naming the key.

use std::path::{Path, PathBuf};

use persist_core::{ActorCommit, ActorKey, Marks, Row, Space, Store, StoreError};
use persist_sqlite::{FormatError, SqliteOptions, SqliteStore};
use rusqlite::Connection;

fn key(k: &str) -> ActorKey {
    ActorKey::new("test", k)
}

fn file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.sqlite")
}

/// The format error a refused open carries.
fn refusal(result: Result<SqliteStore, StoreError>) -> FormatError {
    match result {
        Err(StoreError::Backend { source, .. }) => match source.downcast::<FormatError>() {
            Ok(e) => *e,
            Err(other) => panic!("refused with another error: {other}"),
        },
        Err(other) => panic!("expected a format refusal, got {other}"),
        Ok(_) => panic!("expected a format refusal, the store opened"),
    }
}

/// The detail of a `Corrupt` error; anything else fails the test.
fn corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Corrupt { detail, .. }) => detail,
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

/// Commits `c` at the key's next epoch.
fn commit(s: &SqliteStore, c: impl FnOnce(ActorCommit) -> ActorCommit, k: &ActorKey) {
    let epoch = s.open_actor(k, &[]).unwrap().epoch;
    s.commit(&[c(ActorCommit::new(k.clone(), epoch))]).unwrap();
}

/// A store holding one actor with a snapshot and two pending operations.
fn one_actor(path: &Path) -> ActorKey {
    let s = SqliteStore::open(path).unwrap();
    let k = key("a");
    commit(
        &s,
        |c| {
            c.put(Space::SNAPSHOT, 0, b"state".to_vec())
                .put(Space::OPS, 1, b"op 1".to_vec())
                .put(Space::OPS, 2, b"op 2".to_vec())
        },
        &k,
    );
    s.close().unwrap();
    k
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

#[test]
fn a_reopened_file_keeps_every_row_mark_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let keys = [
        key("a"),
        ActorKey::new("", ""),
        ActorKey::new("n\0", "k\0é"),
    ];
    let ids = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX];
    let s = SqliteStore::open(&path).unwrap();
    for k in &keys {
        commit(
            &s,
            |mut c| {
                for id in ids {
                    c = c.put(Space::new(9), id, id.to_be_bytes().to_vec());
                }
                c.put(Space::SNAPSHOT, 0, b"snap".to_vec())
                    .raise_floor(u64::MAX - 1)
            },
            k,
        );
    }
    let before = s.scan().unwrap();
    s.close().unwrap();

    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.scan().unwrap(), before);
    for k in &keys {
        let mut want = vec![Row {
            space: Space::SNAPSHOT,
            id: 0,
            bytes: b"snap".to_vec(),
        }];
        want.extend(ids.iter().map(|id| Row {
            space: Space::new(9),
            id: *id,
            bytes: id.to_be_bytes().to_vec(),
        }));
        assert_eq!(s.read(k, None, 0..=u64::MAX).unwrap(), want, "{k}");
        assert_eq!(
            s.read(k, Some(Space::new(9)), (1 << 63)..=u64::MAX)
                .unwrap()
                .len(),
            2,
            "a range above 2^63"
        );
        let loaded = s.open_actor(k, &[Space::SNAPSHOT]).unwrap();
        assert_eq!((loaded.epoch, loaded.floor), (2, u64::MAX - 1), "{k}");
    }
}

#[test]
fn two_prefixes_in_one_file_keep_apart_and_leave_the_applications_table_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    {
        let app = raw(&path);
        app.execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL);
             INSERT INTO orders (item) VALUES ('tea'), ('cake');",
        )
        .unwrap();
    }
    let k = key("shared name");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open_with(&path, SqliteOptions::new().table_prefix("other_")).unwrap();
    commit(&a, |c| c.put(Space::SNAPSHOT, 0, b"in a".to_vec()), &k);
    commit(
        &b,
        |c| c.put(Space::OPS, 5, b"in b".to_vec()).raise_floor(9),
        &k,
    );
    assert_eq!(
        a.read(&k, None, 0..=u64::MAX).unwrap(),
        vec![Row {
            space: Space::SNAPSHOT,
            id: 0,
            bytes: b"in a".to_vec()
        }]
    );
    assert_eq!(
        b.read(&k, None, 0..=u64::MAX).unwrap(),
        vec![Row {
            space: Space::OPS,
            id: 5,
            bytes: b"in b".to_vec()
        }]
    );
    assert_eq!(
        a.scan().unwrap(),
        vec![(k.clone(), Marks { epoch: 1, floor: 0 })]
    );
    assert_eq!(
        b.scan().unwrap(),
        vec![(k.clone(), Marks { epoch: 1, floor: 9 })]
    );
    a.close().unwrap();
    b.close().unwrap();

    let app = raw(&path);
    let items: Vec<String> = app
        .prepare("SELECT item FROM orders ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, ["tea", "cake"]);
    let mut tables: Vec<String> = app
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "orders",
            "other_marks",
            "other_meta",
            "other_rows",
            "ractor_persist_marks",
            "ractor_persist_meta",
            "ractor_persist_rows",
        ]
    );
}

/// Opens `path` with `options`, expects a refusal, and checks the file's bytes did not change.
fn refused_unchanged(path: &Path, options: SqliteOptions) -> FormatError {
    let before = std::fs::read(path).ok();
    let e = refusal(SqliteStore::open_with(path, options));
    assert_eq!(
        std::fs::read(path).ok(),
        before,
        "the refusal changed the file"
    );
    e
}

#[test]
fn an_empty_file_is_refused_and_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    std::fs::write(&path, b"").unwrap();
    let e = refused_unchanged(&path, SqliteOptions::new());
    assert!(matches!(e, FormatError::EmptyFile), "{e}");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    for bytes in [
        &b"hello, this is a text file and not a database at all\n"[..],
        &b"SQLite"[..],
        &[0u8; 8192][..],
    ] {
        std::fs::write(&path, bytes).unwrap();
        let e = refused_unchanged(&path, SqliteOptions::new());
        assert!(matches!(e, FormatError::NotSqlite { .. }), "{e}");
    }
}

#[test]
fn an_invalid_prefix_is_refused_before_the_file_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let bad = SqliteOptions::new().table_prefix("x\"; DROP TABLE orders; --");
    let e = refused_unchanged(&path, bad.clone());
    assert!(matches!(e, FormatError::InvalidPrefix { .. }), "{e}");
    assert!(!path.exists(), "no file is created for an invalid prefix");
    one_actor(&path);
    let e = refused_unchanged(&path, bad);
    assert!(matches!(e, FormatError::InvalidPrefix { .. }), "{e}");
}

#[test]
fn tables_of_the_prefix_that_are_not_a_store_are_refused_unchanged() {
    let cases = [
        (
            "a table named like ours, with other columns",
            "CREATE TABLE ractor_persist_rows (a, b)",
        ),
        (
            "the same name in another case",
            "CREATE TABLE RACTOR_PERSIST_MARKS (x INTEGER)",
        ),
        (
            "a view of our name",
            "CREATE VIEW ractor_persist_meta AS SELECT 1",
        ),
    ];
    for (what, sql) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        raw(&path).execute_batch(sql).unwrap();
        let e = refused_unchanged(&path, SqliteOptions::new());
        assert!(
            matches!(&e, FormatError::PrefixTaken { objects, .. } if objects.len() == 1),
            "{what}: {e}"
        );
        // Another prefix in the same file is free.
        let s = SqliteStore::open_with(&path, SqliteOptions::new().table_prefix("mine_"));
        s.expect("another prefix opens").close().unwrap();
    }
}

#[test]
fn a_store_missing_a_table_or_with_an_index_of_someone_else_is_refused_unchanged() {
    for (what, sql) in [
        ("a lost table", "DROP TABLE ractor_persist_rows"),
        (
            "an index on our table",
            "CREATE INDEX app_index ON ractor_persist_rows (bytes)",
        ),
        (
            "a trigger on our table",
            "CREATE TRIGGER app_trigger AFTER INSERT ON ractor_persist_marks BEGIN SELECT 1; END",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        one_actor(&path);
        raw(&path).execute_batch(sql).unwrap();
        let e = refused_unchanged(&path, SqliteOptions::new());
        assert!(matches!(e, FormatError::PrefixTaken { .. }), "{what}: {e}");
    }
}

#[test]
fn an_unknown_format_marker_is_refused_unchanged() {
    for (marker, found) in [
        (
            Some(&b"ractor-persist/sqlite/2"[..]),
            Some("ractor-persist/sqlite/2"),
        ),
        (None, None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        one_actor(&path);
        let conn = raw(&path);
        match marker {
            Some(m) => conn.execute("UPDATE ractor_persist_meta SET value = ?1", [m]),
            None => conn.execute("DELETE FROM ractor_persist_meta", []),
        }
        .unwrap();
        conn.close().unwrap();
        let e = refused_unchanged(&path, SqliteOptions::new());
        match e {
            FormatError::UnknownFormat { found: f, expected } => {
                assert_eq!(f.as_deref(), found);
                assert_eq!(expected, "ractor-persist/sqlite/1");
            }
            e => panic!("expected an unknown format, got {e}"),
        }
    }
}

#[test]
fn a_file_sqlite_can_only_read_is_refused_at_open_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    one_actor(&path);
    // Byte 18 of the header is the format version a writer needs; above 2, SQLite reads only.
    // (The tests may run as root, whom file permissions do not stop.)
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[18] = 3;
    std::fs::write(&path, &bytes).unwrap();
    let e = refused_unchanged(&path, SqliteOptions::new());
    assert!(matches!(e, FormatError::ReadOnly), "{e}");
}

#[test]
fn a_key_changed_behind_the_store_is_found_on_open_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    one_actor(&path);
    raw(&path)
        .execute(
            "UPDATE ractor_persist_rows SET key = 'b' WHERE space = 1 AND key = 'a'",
            [],
        )
        .unwrap();
    let detail = corrupt(SqliteStore::open(&path));
    assert!(detail.contains("test/b"), "{detail}");
}

#[test]
fn changed_bytes_are_an_error_on_open_and_on_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = one_actor(&path);
    let s = SqliteStore::open(&path).unwrap();
    raw(&path)
        .execute(
            "UPDATE ractor_persist_rows SET bytes = x'00' WHERE space = 0",
            [],
        )
        .unwrap();
    assert!(corrupt(s.open_actor(&k, &Space::RECORD)).contains("checksum"));
    assert!(corrupt(s.read(&k, Some(Space::SNAPSHOT), 0..=0)).contains("checksum"));
    drop(s);
    assert!(corrupt(SqliteStore::open(&path)).contains("checksum"));
}

#[test]
fn changed_marks_are_an_error_not_a_lower_floor() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = key("a");
    let s = SqliteStore::open(&path).unwrap();
    commit(&s, |c| c.raise_floor(5000), &k);
    // The floor as stored is mapped (0 is i64::MIN): this sets it to 0.
    raw(&path)
        .execute("UPDATE ractor_persist_marks SET floor = ?1", [i64::MIN])
        .unwrap();
    let detail = corrupt(s.open_actor(&k, &Space::RECORD));
    assert!(
        detail.contains("test/a") && detail.contains("checksum"),
        "{detail}"
    );
    corrupt(s.scan());
    drop(s);
    corrupt(SqliteStore::open(&path));
}

#[test]
fn a_lost_snapshot_is_an_error_not_a_fresh_actor() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = one_actor(&path);
    let s = SqliteStore::open(&path).unwrap();
    raw(&path)
        .execute("DELETE FROM ractor_persist_rows WHERE space = 0", [])
        .unwrap();
    let detail = corrupt(s.open_actor(&k, &Space::RECORD));
    assert!(
        detail.contains("`test/a`") && detail.contains("snapshot"),
        "{detail}"
    );
    corrupt(s.read(&k, None, 0..=u64::MAX));
    let detail = corrupt(s.open_actor(&k, &[Space::SNAPSHOT]));
    assert!(detail.contains("snapshot"), "{detail}");
    // The failed loads took no epoch.
    assert_eq!(s.read(&k, Some(Space::OPS), 0..=u64::MAX).unwrap().len(), 2);
    drop(s);
    corrupt(SqliteStore::open(&path));
}

#[test]
fn lost_marks_are_an_error_not_a_fresh_actor() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = one_actor(&path);
    let s = SqliteStore::open(&path).unwrap();
    raw(&path)
        .execute("DELETE FROM ractor_persist_marks", [])
        .unwrap();
    let detail = corrupt(s.open_actor(&k, &[]));
    assert!(detail.contains("no marks"), "{detail}");
    corrupt(s.read(&k, None, 0..=u64::MAX));
    corrupt(s.scan());
    drop(s);
    corrupt(SqliteStore::open(&path));
}

#[test]
fn epochs_fence_across_two_connections_to_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = key("a");
    let first = SqliteStore::open(&path).unwrap();
    let second = SqliteStore::open(&path).unwrap();
    let old = first.open_actor(&k, &[]).unwrap().epoch;
    let new = second.open_actor(&k, &[]).unwrap().epoch;
    assert_eq!(new, old + 1);
    let stale = ActorCommit::new(k.clone(), old).put(Space::SNAPSHOT, 0, b"old".to_vec());
    match first.commit(&[stale]) {
        Err(StoreError::Fenced(fences)) => {
            assert_eq!((fences[0].epoch, fences[0].current), (old, new));
        }
        other => panic!("expected a fence, got {other:?}"),
    }
    second
        .commit(&[ActorCommit::new(k.clone(), new).put(Space::SNAPSHOT, 0, b"new".to_vec())])
        .unwrap();
    assert_eq!(
        first.read(&k, Some(Space::SNAPSHOT), 0..=0).unwrap()[0].bytes,
        b"new"
    );
}

#[test]
fn a_new_store_file_is_complete_and_nothing_else_is_left_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    SqliteStore::open(&path).unwrap().close().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["store.sqlite"], "no temporary file, no log");
    let mode: String = raw(&path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
