//! Adversarial tests of SqliteStore: other connections and processes on the same file, files
//! SQLite itself treats specially (UTF-16 encodings, hot journals, foreign write-ahead logs, URI
//! names), application schemas beside the store, and ids and keys at their edges.
//!
//! Some tests start this test binary again as a child process (`child_process` below, ignored
//! unless `ADVERSARIAL_CHILD` names what it should do); the parent waits for a line the child
//! prints after its work, then kills it with SIGKILL. No sleeps, no clocks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use persist_core::{ActorCommit, ActorKey, Marks, Row, RowWrite, Space, Store, StoreError};
use persist_sqlite::{FormatError, SqliteOptions, SqliteStore};
use rusqlite::Connection;

fn key(k: &str) -> ActorKey {
    ActorKey::new("test", k)
}

fn file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.sqlite")
}

/// Commits `c` at the key's next epoch; returns the epoch.
fn commit(s: &SqliteStore, k: &ActorKey, c: impl FnOnce(ActorCommit) -> ActorCommit) -> u64 {
    let epoch = s.open_actor(k, &[]).unwrap().epoch;
    s.commit(&[c(ActorCommit::new(k.clone(), epoch))]).unwrap();
    epoch
}

fn snapshot(s: &SqliteStore, k: &ActorKey) -> Option<Vec<u8>> {
    s.read(k, Some(Space::SNAPSHOT), 0..=u64::MAX)
        .unwrap()
        .into_iter()
        .next()
        .map(|r| r.bytes)
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
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

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "ADVERSARIAL_CHILD";
const PATH_ENV: &str = "ADVERSARIAL_PATH";

/// Starts this test binary as a child doing `mode` on `path` (in `cwd`, if given).
fn spawn_child(mode: &str, path: &Path, cwd: Option<&Path>) -> Child {
    spawn_child_in(
        Command::new(std::env::current_exe().unwrap()),
        mode,
        path,
        cwd,
    )
}

/// Starts this test binary as a child through `sh`, with files limited to `blocks` 512-byte
/// blocks (`ulimit -f`) and SIGXFSZ ignored: a write past the limit fails with EFBIG, as on a
/// full disk.
fn spawn_limited_child(mode: &str, path: &Path, blocks: u64) -> Child {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
        ))
        .arg(std::env::current_exe().unwrap());
    spawn_child_in(sh, mode, path, None)
}

fn spawn_child_in(mut cmd: Command, mode: &str, path: &Path, cwd: Option<&Path>) -> Child {
    cmd.args([
        "child_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env(PATH_ENV, path)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.spawn().unwrap()
}

/// Reads the child's output until a line with `READY` or `DONE`, and returns it from there
/// (panics if the child exits first).
fn wait_for(child: &mut Child) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            // libtest prints `test child_process ... ` before the child's first line.
            Some(Ok(line)) if line.contains("READY") || line.contains("DONE ") => {
                let at = line.find("READY").or_else(|| line.find("DONE ")).unwrap();
                return line[at..].to_owned();
            }
            Some(Ok(_)) => continue,
            other => panic!("the child ended without reporting: {other:?}"),
        }
    }
}

/// SIGKILL, then reap.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Blocks until the parent kills us (stdin never gets a line).
fn block_forever() -> ! {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    // The parent closed our stdin without killing us: end without cleanup all the same.
    std::process::abort()
}

/// What the child processes do; ignored unless started by `spawn_child`.
#[test]
#[ignore = "started as a child process by other tests"]
fn child_process() {
    use std::io::Write;
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(std::env::var_os(PATH_ENV).unwrap());
    match mode.as_str() {
        // Commits 20 snapshots of one actor and two ops, reports, then waits to be killed with
        // the write-ahead log not yet checkpointed.
        "commit-then-die" => {
            let s = SqliteStore::open(&path).unwrap();
            let k = key("killed");
            let e = s.open_actor(&k, &[]).unwrap().epoch;
            for i in 0..20u64 {
                s.commit(&[ActorCommit::new(k.clone(), e)
                    .put(Space::SNAPSHOT, 0, format!("state {i}").into_bytes())
                    .put(Space::OPS, i, vec![i as u8])
                    .remove(Space::OPS, i.wrapping_sub(2))])
                    .unwrap();
            }
            println!("READY");
            std::io::stdout().flush().unwrap();
            // The store (and its connection) is never dropped.
            std::mem::forget(s);
            block_forever();
        }
        // An application that keeps its file in rollback-journal mode, killed in the middle of
        // a write transaction: it leaves a hot journal.
        "app-dies-mid-write" => {
            let app = Connection::open(&path).unwrap();
            let mode: String = app
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "delete");
            app.execute_batch(
                "PRAGMA cache_size = 1;
                 BEGIN IMMEDIATE;
                 INSERT INTO app_log (line) SELECT 'uncommitted ' || value FROM generate_series(1, 2000);",
            )
            .unwrap_or_else(|_| {
                // generate_series may be missing: a recursive CTE does the same.
                app.execute_batch(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                     INSERT INTO app_log (line) SELECT 'uncommitted ' || i FROM n;",
                )
                .unwrap()
            });
            assert!(!app.is_autocommit(), "inside the transaction");
            println!("READY");
            std::io::stdout().flush().unwrap();
            std::mem::forget(app);
            block_forever();
        }
        // Opens the store at the *relative* path given, from the working directory the parent
        // chose, and reports what it holds.
        "open-relative" => {
            let outcome = match SqliteStore::open(&path) {
                Ok(s) => {
                    let scan = s.scan().unwrap();
                    let k = key("written through the relative path");
                    commit(&s, &k, |c| c.put(Space::SNAPSHOT, 0, b"mine".to_vec()));
                    s.close().unwrap();
                    format!("opened, held {} key(s)", scan.len())
                }
                Err(e) => format!("refused: {e}"),
            };
            println!("DONE {outcome}");
            std::io::stdout().flush().unwrap();
        }
        // Commits 64 KiB ops under a file-size limit until a commit fails; then reads the actor
        // whole, tries one more small commit, and reports.
        "fill-the-disk" => {
            let s = SqliteStore::open(&path).unwrap();
            let k = key("filling");
            let e = s.open_actor(&k, &[]).unwrap().epoch;
            let mut acked = 0u64;
            let error = loop {
                let c = ActorCommit::new(k.clone(), e)
                    .put(Space::SNAPSHOT, 0, acked.to_be_bytes().to_vec())
                    .put(Space::OPS, acked, vec![acked as u8; 64 << 10]);
                match s.commit(&[c]) {
                    Ok(()) => acked += 1,
                    Err(e) => break e,
                }
                assert!(acked < 1000, "the file-size limit never bit");
            };
            let kind = match &error {
                StoreError::Backend { .. } => "backend",
                StoreError::Corrupt { .. } => "corrupt",
                _ => "other",
            };
            let read = match s.read(&k, None, 0..=u64::MAX) {
                Ok(rows) => format!("{}", rows.len()),
                Err(e) => format!("error: {e}"),
            };
            let again = s
                .commit(&[ActorCommit::new(k.clone(), e).put(Space::new(7), 0, vec![1])])
                .is_ok();
            let closed = s.close().is_ok();
            println!(
                "DONE acked={acked} kind={kind} read={read} again={again} closed={closed} ({error})"
            );
            std::io::stdout().flush().unwrap();
        }
        other => panic!("unknown child mode {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Encodings: SQLite's BINARY collation is memcmp of the *stored* encoding.
// ---------------------------------------------------------------------------------------------

/// An application's file created as UTF-16 (SQLite's `PRAGMA encoding`, fixed at creation): the
/// store moves in beside the application's table. SQLite then stores `TEXT` as UTF-16 and its
/// `BINARY` collation compares UTF-16 code units byte by byte, which is not Rust's `String`
/// order ("a" < "ā" in Rust; in UTF-16LE "ā" = 01 01 sorts before "a" = 61 00). The store relies
/// on SQLite's order for `keys`, and the whole check at open compares it with Rust's.
#[test]
fn a_utf16_application_file_is_refused_unchanged_not_taken_and_then_locked_out() {
    for encoding in ["UTF-16le", "UTF-16be"] {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        {
            let app = raw(&path);
            app.execute_batch(&format!(
                "PRAGMA encoding = '{encoding}'; CREATE TABLE app (x TEXT); INSERT INTO app VALUES ('x');"
            ))
            .unwrap();
            let got: String = app.query_row("PRAGMA encoding", [], |r| r.get(0)).unwrap();
            assert_eq!(got, encoding);
        }
        let before = std::fs::read(&path).unwrap();
        // SQLite would order keys by their UTF-16 bytes, not as Rust does, and the store's
        // ordering checks would take that for damage at the next open: refused up front.
        match refusal(SqliteStore::open(&path)) {
            FormatError::NotUtf8 { encoding: found } => assert_eq!(found, encoding),
            other => panic!("{encoding}: expected NotUtf8, got {other}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{encoding}: file changed"
        );
    }
}

/// Pinned: in the usual UTF-8 file, keys and scan come back in Rust's byte order for text
/// from every plane, NUL and the empty string included, and the file reopens.
#[test]
fn non_ascii_keys_list_and_scan_in_rust_order_in_a_utf8_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let mut texts = vec![
        "",
        "\0",
        "a",
        "a\0",
        "a\0b",
        "ab",
        "A",
        "z",
        "\u{7f}",
        "\u{80}",
        "é",
        "ā",
        "\u{7ff}",
        "\u{800}",
        "\u{FFFD}",
        "\u{FFFF}",
        "🦀",
        "\u{10FFFF}",
        "漢字",
    ];
    let s = SqliteStore::open(&path).unwrap();
    for t in &texts {
        commit(&s, &ActorKey::new("n", *t), |c| {
            c.put(Space::SNAPSHOT, 0, t.as_bytes().to_vec())
        });
        commit(&s, &ActorKey::new(*t, "k"), |c| c.raise_floor(1));
    }
    texts.sort();
    assert_eq!(s.keys("n", Space::SNAPSHOT).unwrap(), texts);
    let scanned: Vec<ActorKey> = s.scan().unwrap().into_iter().map(|(k, _)| k).collect();
    let mut want: Vec<ActorKey> = texts
        .iter()
        .flat_map(|t| [ActorKey::new("n", *t), ActorKey::new(*t, "k")])
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(scanned, want);
    s.close().unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.keys("n", Space::SNAPSHOT).unwrap(), texts);
}

// ---------------------------------------------------------------------------------------------
// The application's schema beside the store
// ---------------------------------------------------------------------------------------------

/// The bundled SQLite enforces foreign keys on every connection (`SQLITE_DEFAULT_FOREIGN_KEYS=1`).
/// An application that ties its own rows to an actor's marks row (`REFERENCES
/// ractor_persist_marks (ns, key) ON DELETE CASCADE`) must not lose them when the store merely
/// takes an epoch: a marks row is never deleted (marks outlive every row), but `INSERT OR
/// REPLACE` deletes and re-inserts it, which fires the cascade.
#[test]
fn an_epoch_claim_does_not_cascade_into_the_applications_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let s = SqliteStore::open(&path).unwrap();
    let k = key("customer 7");
    commit(&s, &k, |c| c.put(Space::SNAPSHOT, 0, b"state".to_vec()));
    let app = raw(&path);
    app.execute_batch(
        "CREATE TABLE app_orders (ns TEXT NOT NULL, key TEXT NOT NULL, item TEXT NOT NULL,
             FOREIGN KEY (ns, key) REFERENCES ractor_persist_marks (ns, key) ON DELETE CASCADE);
         INSERT INTO app_orders VALUES ('test', 'customer 7', 'tea');",
    )
    .unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM app_orders"), 1);
    // The store takes the next epoch and commits: its marks row is updated, never removed.
    commit(&s, &k, |c| {
        c.put(Space::SNAPSHOT, 0, b"state 2".to_vec())
            .raise_floor(5)
    });
    assert_eq!(
        count(&app, "SELECT count(*) FROM app_orders"),
        1,
        "the store's epoch claim deleted the application's rows (INSERT OR REPLACE on marks)"
    );
}

/// Makes an application file whose schema names something only the application registers on
/// its own connections (a collation, a function). `PRAGMA writable_schema` stands in for an
/// application that created these with `create_collation` / `create_scalar_function` (features
/// this workspace's rusqlite does not enable); the file is the same.
fn application_file_with(path: &Path, table: &str, fake: &str, real: &str) {
    let app = raw(path);
    app.execute_batch(table).unwrap();
    app.execute_batch("PRAGMA writable_schema = ON").unwrap();
    let changed = app
        .execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE sql = ?2",
            [real, fake],
        )
        .unwrap();
    assert_eq!(changed, 1);
    app.execute_batch("PRAGMA writable_schema = OFF").unwrap();
    drop(app);
    // Plain reads of the application's file still work without the collation or function.
    let app = raw(path);
    assert!(count(&app, "SELECT count(*) FROM sqlite_schema") >= 1);
}

/// The open runs `PRAGMA quick_check` over the *whole* file, the application's tables
/// included, on a connection that knows none of the application's collations or functions.
/// An application index with its own collation then makes every open of the store fail
/// ("no such collation sequence"), though nothing of the store is wrong. (A CHECK calling the
/// application's own function is the second case; `quick_check` does not need it today, so
/// that case pins it.)
#[test]
fn an_application_collation_or_function_does_not_keep_the_store_out_of_its_file() {
    let cases = [
        (
            "CREATE TABLE app_names (name TEXT); INSERT INTO app_names VALUES ('x');
             CREATE INDEX app_names_by_name ON app_names (name);",
            "CREATE INDEX app_names_by_name ON app_names (name)",
            "CREATE INDEX app_names_by_name ON app_names (name COLLATE app_natural)",
        ),
        (
            "CREATE TABLE app_checked (x INTEGER CHECK (x > 0)); INSERT INTO app_checked VALUES (1);",
            "CREATE TABLE app_checked (x INTEGER CHECK (x > 0))",
            "CREATE TABLE app_checked (x INTEGER CHECK (app_valid(x)))",
        ),
    ];
    let mut broken = Vec::new();
    for (table, fake, real) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        application_file_with(&path, table, fake, real);
        match SqliteStore::open(&path) {
            Ok(s) => s.close().unwrap(),
            Err(e) => broken.push(format!("a store could not move in beside `{real}`: {e}")),
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Pinned: an application that VACUUMs the shared file, and one that asks for another journal
/// mode, while the store is open, change nothing the store holds; the store goes on
/// committing, and the file reopens.
#[test]
fn vacuum_and_journal_mode_changes_by_the_application_leave_the_store_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let s = SqliteStore::open(&path).unwrap();
    let k = key("a");
    let app = raw(&path);
    app.execute_batch("CREATE TABLE app (x BLOB); INSERT INTO app VALUES (zeroblob(100000));")
        .unwrap();
    commit(&s, &k, |c| {
        c.put(Space::SNAPSHOT, 0, b"one".to_vec())
            .put(Space::OPS, 1, vec![1; 5000])
    });
    app.execute_batch("DELETE FROM app; VACUUM;").unwrap();
    commit(&s, &k, |c| {
        c.put(Space::SNAPSHOT, 0, b"two".to_vec())
            .put(Space::OPS, 2, vec![2; 5000])
    });
    // Leaving WAL needs the file to itself; with the store's connection open it either
    // refuses or keeps WAL. Either way the store goes on.
    let mode = app.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    });
    eprintln!("the application's `journal_mode = DELETE` gave {mode:?}");
    commit(&s, &k, |c| c.put(Space::SNAPSHOT, 0, b"three".to_vec()));
    assert_eq!(snapshot(&s, &k).as_deref(), Some(&b"three"[..]));
    drop(app);
    s.close().unwrap();
    let s = SqliteStore::open(&path).unwrap();
    let loaded = s.open_actor(&k, &[Space::SNAPSHOT, Space::OPS]).unwrap();
    assert_eq!(loaded.snapshot(), Some(&b"three"[..]));
    assert_eq!(loaded.ops().len(), 2);
    assert_eq!(loaded.epoch, 4);
}

// ---------------------------------------------------------------------------------------------
// Journals and logs left behind
// ---------------------------------------------------------------------------------------------

/// An application keeps the shared file in rollback-journal mode (`journal_mode = DELETE`, as
/// its own connections ask at every start) and is killed in the middle of a write, leaving a
/// hot journal. Any read-write connection rolls it back on its first read; the store's first
/// look at the file is through a read-only connection, which SQLite refuses to let read a file
/// with a hot journal (SQLITE_READONLY_ROLLBACK), so the store cannot open its own file.
#[test]
fn a_hot_journal_left_by_the_application_does_not_keep_the_store_shut() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let k = key("a");
    {
        let s = SqliteStore::open(&path).unwrap();
        commit(&s, &k, |c| c.put(Space::SNAPSHOT, 0, b"kept".to_vec()));
        s.close().unwrap();
        let app = raw(&path);
        app.execute_batch(
            "CREATE TABLE app_log (line TEXT NOT NULL); INSERT INTO app_log VALUES ('committed');",
        )
        .unwrap();
    }
    let mut child = spawn_child("app-dies-mid-write", &path, None);
    wait_for(&mut child);
    kill(child);
    let journal = PathBuf::from(format!("{}-journal", path.display()));
    assert!(journal.exists(), "the killed application left its journal");

    let s = SqliteStore::open(&path)
        .unwrap_or_else(|e| panic!("the store cannot open after the application's crash: {e}"));
    assert_eq!(snapshot(&s, &k).as_deref(), Some(&b"kept"[..]));
    s.close().unwrap();
    let app = raw(&path);
    assert_eq!(
        count(&app, "SELECT count(*) FROM app_log"),
        1,
        "the uncommitted lines are rolled back"
    );
}

/// Pinned: a process killed (SIGKILL) after its commits returned, before any checkpoint, loses
/// none of them; a `-shm` file overwritten with another database's bytes (or garbage) does not
/// matter, because the first connection rebuilds it from the log.
#[test]
fn a_killed_process_loses_no_commit_and_a_foreign_shm_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    SqliteStore::open(&path).unwrap().close().unwrap();
    let mut child = spawn_child("commit-then-die", &path, None);
    wait_for(&mut child);
    kill(child);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let shm = PathBuf::from(format!("{}-shm", path.display()));
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the log was not checkpointed"
    );
    std::fs::write(&shm, vec![0xA5; 32768]).unwrap();
    let s = SqliteStore::open(&path).unwrap();
    let k = key("killed");
    let loaded = s.open_actor(&k, &[Space::SNAPSHOT, Space::OPS]).unwrap();
    assert_eq!(loaded.snapshot(), Some(&b"state 19"[..]));
    assert_eq!(
        loaded.ops().iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![18, 19]
    );
    assert_eq!(loaded.epoch, 2);
    s.close().unwrap();
    assert!(!wal.exists() && !shm.exists(), "close leaves only the file");
}

/// Pinned: commits that fail because the file cannot grow (EFBIG under `ulimit -f`, as on a full
/// disk) are `Backend` errors that leave nothing behind: the store still reads the actor whole,
/// and the file reopens with exactly the acknowledged commits and consistent row counts.
#[test]
fn a_commit_that_cannot_grow_the_file_leaves_nothing_and_the_counts_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    SqliteStore::open(&path).unwrap().close().unwrap();
    // 2 MiB: the store file is a few pages; the log grows by about 64 KiB per commit.
    let mut child = spawn_limited_child("fill-the-disk", &path, 4096);
    let report = wait_for(&mut child);
    assert!(child.wait().unwrap().success(), "{report}");
    let field = |name: &str| -> String {
        let at = report.find(&format!("{name}=")).unwrap() + name.len() + 1;
        report[at..].split(' ').next().unwrap().to_owned()
    };
    let acked: u64 = field("acked").parse().unwrap();
    assert!(acked > 0, "{report}");
    assert_eq!(field("kind"), "backend", "{report}");
    // Read before the small commit: the acknowledged ops and the snapshot.
    assert_eq!(
        field("read"),
        format!("{}", acked + 1),
        "the failed commit left rows: {report}"
    );
    let again = field("again") == "true";
    let s = SqliteStore::open(&path).unwrap();
    let k = key("filling");
    let loaded = s.open_actor(&k, &[Space::SNAPSHOT, Space::OPS]).unwrap();
    assert_eq!(loaded.ops().len() as u64, acked, "{report}");
    assert_eq!(
        loaded.snapshot(),
        Some(&(acked - 1).to_be_bytes()[..]),
        "{report}"
    );
    assert_eq!(
        s.read(&k, Some(Space::new(7)), 0..=u64::MAX).unwrap().len(),
        usize::from(again),
        "the small commit after the failure is there exactly when it was acknowledged: {report}"
    );
    eprintln!("{report}");
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The bundled SQLite is built with `SQLITE_USE_URI`, so a file name starting with `file:` is
/// a URI to it, while the store's own file operations (the existence check, the first create,
/// the empty-file and header checks) take the path literally. `SqliteStore::open("file:a.sqlite")`
/// then checks and creates `./file:a.sqlite` but has SQLite open `./a.sqlite`: here another
/// store, whose actors the "new" store then holds and writes.
#[test]
fn a_relative_path_is_the_file_of_that_name_even_if_it_starts_with_file_colon() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("a.sqlite");
    {
        let s = SqliteStore::open(&other).unwrap();
        commit(&s, &key("someone else's"), |c| {
            c.put(Space::SNAPSHOT, 0, b"theirs".to_vec())
        });
        s.close().unwrap();
    }
    let mut child = spawn_child(
        "open-relative",
        Path::new("file:a.sqlite"),
        Some(dir.path()),
    );
    let outcome = wait_for(&mut child);
    assert!(child.wait().unwrap().success());
    let s = SqliteStore::open(&other).unwrap();
    let in_other: Vec<ActorKey> = s.scan().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        in_other,
        vec![key("someone else's")],
        "a store opened at `file:a.sqlite` wrote into `a.sqlite` ({outcome})"
    );
    assert_eq!(
        outcome, "DONE opened, held 0 key(s)",
        "a new store at `file:a.sqlite`"
    );
}

// ---------------------------------------------------------------------------------------------
// Prefixes
// ---------------------------------------------------------------------------------------------

/// Pinned: a prefix that differs from a store's only in ASCII case names the same tables in
/// SQLite; it is refused (not taken for a new store, not used), and the file is unchanged. A
/// prefix that is a prefix of another (`rp_` and `rp_x_`, `rp` and `rp_`) is a store of its own.
#[test]
fn prefixes_differing_in_case_are_refused_and_nested_prefixes_keep_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let opts = |p: &str| SqliteOptions::new().table_prefix(p);
    let k = key("a");
    for (i, p) in ["rp_", "rp_x_", "rp", "rp_rows", "rp_metarp_"]
        .iter()
        .enumerate()
    {
        let s = SqliteStore::open_with(&path, opts(p)).unwrap();
        commit(&s, &k, |c| {
            c.put(Space::SNAPSHOT, 0, p.as_bytes().to_vec())
                .raise_floor(i as u64 + 1)
        });
        s.close().unwrap();
    }
    for (i, p) in ["rp_", "rp_x_", "rp", "rp_rows", "rp_metarp_"]
        .iter()
        .enumerate()
    {
        let s = SqliteStore::open_with(&path, opts(p)).unwrap();
        assert_eq!(snapshot(&s, &k).as_deref(), Some(p.as_bytes()), "{p}");
        assert_eq!(
            s.scan().unwrap(),
            vec![(
                k.clone(),
                Marks {
                    epoch: 1,
                    floor: i as u64 + 1
                }
            )]
        );
        s.close().unwrap();
    }
    for p in ["RP_", "Rp_X_", "RP"] {
        let before = std::fs::read(&path).unwrap();
        let e = refusal(SqliteStore::open_with(&path, opts(p)));
        assert!(matches!(e, FormatError::PrefixTaken { .. }), "{p}: {e}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{p}: file unchanged");
    }
}

// ---------------------------------------------------------------------------------------------
// Two connections on one file
// ---------------------------------------------------------------------------------------------

/// Pinned: two stores and a plain connection with a long read on one file, interleaving:
/// epochs fence across stores, each store's row counts stay right whichever store wrote last,
/// the reader keeps its snapshot, and the file reopens whole.
#[test]
fn two_stores_and_a_reader_interleave_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let reader = raw(&path);
    let (k1, k2) = (key("one"), key("two"));
    let ea = a.open_actor(&k1, &[]).unwrap().epoch;
    a.commit(&[ActorCommit::new(k1.clone(), ea)
        .put(Space::SNAPSHOT, 0, b"a1".to_vec())
        .put(Space::OPS, 1, b"op".to_vec())])
        .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(
        count(&reader, "SELECT count(*) FROM ractor_persist_rows"),
        2
    );
    // b takes k1 over and writes; a's instance is fenced, and writes nothing of its batch.
    let eb = b.open_actor(&k1, &[Space::SNAPSHOT, Space::OPS]).unwrap();
    assert_eq!(eb.ops().len(), 1);
    b.commit(&[ActorCommit::new(k1.clone(), eb.epoch)
        .remove(Space::OPS, 1)
        .put(Space::OPS, 2, b"op2".to_vec())
        .put(Space::OPS, 3, b"op3".to_vec())])
        .unwrap();
    let e2 = a.open_actor(&k2, &[]).unwrap().epoch;
    match a.commit(&[
        ActorCommit::new(k2.clone(), e2).put(Space::SNAPSHOT, 0, b"k2".to_vec()),
        ActorCommit::new(k1.clone(), ea).put(Space::OPS, 9, b"stale".to_vec()),
    ]) {
        Err(StoreError::Fenced(f)) => assert_eq!((f.len(), f[0].index), (1, 1)),
        other => panic!("expected a fence, got {other:?}"),
    }
    a.commit(&[ActorCommit::new(k2.clone(), e2).put(Space::SNAPSHOT, 0, b"k2".to_vec())])
        .unwrap();
    assert_eq!(
        count(&reader, "SELECT count(*) FROM ractor_persist_rows"),
        2,
        "the reader keeps its snapshot"
    );
    reader.execute_batch("COMMIT").unwrap();
    // Each store sees the other's writes, and whole spaces match their counts.
    for s in [&a, &b] {
        let ids: Vec<u64> = s
            .read(&k1, Some(Space::OPS), 0..=u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(snapshot(s, &k2).as_deref(), Some(&b"k2"[..]));
    }
    a.close().unwrap();
    b.close().unwrap();
    drop(reader);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.scan().unwrap(),
        vec![
            (k1.clone(), Marks { epoch: 2, floor: 0 }),
            (k2.clone(), Marks { epoch: 1, floor: 0 })
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Ids and the row-count guard
// ---------------------------------------------------------------------------------------------

/// Pinned: ids at 0, 2^63 - 1, 2^63 and u64::MAX, read and deleted by ranges that cross 2^63;
/// deletes of absent ids and reversed ranges, puts that replace, and a delete then a put of the
/// same id keep the row counts right (the whole check at reopen and the full reads agree).
#[test]
fn ranges_across_2_pow_63_and_odd_deletes_keep_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let s = SqliteStore::open(&path).unwrap();
    let k = key("ids");
    let half = 1u64 << 63;
    let ids = [
        0,
        1,
        half - 2,
        half - 1,
        half,
        half + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    let e = commit(&s, &k, |mut c| {
        for id in ids {
            c = c.put(Space::OPS, id, id.to_be_bytes().to_vec());
        }
        c
    });
    let range = |lo: u64, hi: u64| -> Vec<u64> {
        s.read(&k, Some(Space::OPS), lo..=hi)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(range(half - 1, half), vec![half - 1, half]);
    assert_eq!(range(1, u64::MAX - 1), ids[1..7].to_vec());
    assert_eq!(range(half, half - 1), Vec::<u64>::new(), "reversed");
    assert_eq!(range(u64::MAX, u64::MAX), vec![u64::MAX]);
    let del = |first: u64, last: u64| RowWrite::Delete {
        space: Space::OPS,
        first,
        last,
    };
    let mut c = ActorCommit::new(k.clone(), e);
    c.writes = vec![
        del(half - 1, half), // two, across 2^63
        del(half, half - 1), // reversed: none
        del(2, 3),           // absent: none
        del(half + 1, half + 1),
        del(half + 1, half + 1), // already gone
        RowWrite::Put {
            space: Space::OPS,
            id: half + 1,
            bytes: b"again".to_vec(),
        },
        RowWrite::Put {
            space: Space::OPS,
            id: 0,
            bytes: b"replaced".to_vec(),
        },
        del(0, 0),
        del(u64::MAX, u64::MAX),
        del(u64::MAX, u64::MAX),
        RowWrite::Put {
            space: Space::SNAPSHOT,
            id: 0,
            bytes: b"s".to_vec(),
        },
        RowWrite::Put {
            space: Space::SNAPSHOT,
            id: 0,
            bytes: b"s2".to_vec(),
        },
    ];
    // The same key twice in one batch: the second sees the first's counts.
    s.commit(&[
        c,
        ActorCommit::new(k.clone(), e)
            .remove(Space::OPS, 1)
            .put(Space::OPS, 1, b"one".to_vec()),
    ])
    .unwrap();
    let want = vec![1, half - 2, half + 1, u64::MAX - 1];
    assert_eq!(range(0, u64::MAX), want);
    s.close().unwrap();
    let s = SqliteStore::open(&path).unwrap();
    let loaded = s.open_actor(&k, &[Space::OPS, Space::SNAPSHOT]).unwrap();
    assert_eq!(
        loaded.ops().iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        want
    );
    assert_eq!(loaded.snapshot(), Some(&b"s2"[..]));
    // Clearing over the full range removes exactly what is counted.
    s.commit(&[ActorCommit::new(k.clone(), loaded.epoch).clear(Space::OPS)])
        .unwrap();
    assert_eq!(s.read(&k, Some(Space::OPS), 0..=u64::MAX).unwrap(), vec![]);
    s.close().unwrap();
    SqliteStore::open(&path).unwrap();
}

/// Pinned: a 4 MiB key and a 1 MiB namespace, with NULs inside, round-trip and survive the
/// whole check at reopen.
#[test]
fn very_long_keys_with_nul_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let long = ActorKey::new(
        format!("{}\0ns", "n".repeat(1 << 20)),
        format!("{}\0{}", "k".repeat(2 << 20), "é".repeat(1 << 20)),
    );
    let near = ActorKey::new(long.namespace(), format!("{}\0", long.key()));
    let s = SqliteStore::open(&path).unwrap();
    commit(&s, &long, |c| c.put(Space::SNAPSHOT, 0, b"long".to_vec()));
    commit(&s, &near, |c| c.put(Space::SNAPSHOT, 0, b"near".to_vec()));
    s.close().unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(snapshot(&s, &long).as_deref(), Some(&b"long"[..]));
    assert_eq!(snapshot(&s, &near).as_deref(), Some(&b"near"[..]));
    assert_eq!(
        s.keys(long.namespace(), Space::SNAPSHOT).unwrap(),
        vec![long.key().to_owned(), near.key().to_owned()]
    );
    let all: Vec<Row> = s.read(&long, None, 0..=u64::MAX).unwrap();
    assert_eq!(all.len(), 1);
}
