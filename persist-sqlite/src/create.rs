//! The first create of a store file, made atomic: a crash at any point of it leaves either no
//! store file at all or a complete, synced, empty store.
//!
//! SQLite creates a database file empty and writes its first page only with the first
//! transaction, so a crash in between leaves an empty file. SQLite would take that for an
//! empty database; we refuse it ([`crate::FormatError::EmptyFile`]), because an empty file is
//! also what a store that lost its bytes looks like, and taking it for a new store would start
//! every actor afresh. So a new store is built in a temporary file beside the target, synced,
//! and linked into place; the directory is synced after. (The same steps as persist-redb's
//! first create, for the same reason.)

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::Failure;
use crate::format;
use crate::schema::Schema;

/// Whether there is a file at `path`.
pub(crate) fn exists(path: &Path) -> Result<bool, Failure> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Builds an empty store in a temporary file beside `path` and puts it at the absent `path`.
///
/// The store is placed with a hard link, which fails if another process created a file there
/// meanwhile (then that file is opened, not replaced). A crash leaves at most a temporary file
/// `.<name>.create-*` behind, which no open reads; it may be deleted.
pub(crate) fn create(path: &Path, schema: &Schema) -> Result<(), Failure> {
    let temp = temp_path(path);
    let result = build(&temp, schema).and_then(|()| place(&temp, path));
    // After a link, or a failure, the temporary name is removed (after a rename it is gone).
    let _ = fs::remove_file(&temp);
    result
}

/// The temporary store is written in rollback-journal mode, so that closing it leaves one
/// complete file and no write-ahead log beside it; the first open switches it to WAL.
fn build(temp: &Path, schema: &Schema) -> Result<(), Failure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(temp, flags)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    format::initialize(&txn, schema)?;
    txn.commit()?;
    conn.close().map_err(|(_, e)| e)?;
    // SQLite synced the commit; this also covers anything its close wrote.
    File::open(temp)?.sync_all()?;
    Ok(())
}

fn place(temp: &Path, path: &Path) -> Result<(), Failure> {
    match fs::hard_link(temp, path) {
        Ok(()) => {}
        // Another opener won the race: use its file, never replace it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        // A file system without hard links: a rename is atomic too, but would replace a store
        // created meanwhile, which is why the link comes first.
        Err(_) => fs::rename(temp, path)?,
    }
    sync_dir(path)?;
    Ok(())
}

/// Makes the new directory entry durable (a no-op where directories cannot be synced).
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let unique = format!(
        ".{name}.create-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}
