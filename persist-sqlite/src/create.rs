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

use std::fs::File;
use std::path::Path;

use persist_core::atomic_file;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::Failure;
use crate::format;
use crate::schema::Schema;

/// Whether there is a file at `path`.
pub(crate) fn exists(path: &Path) -> Result<bool, Failure> {
    Ok(atomic_file::exists(path)?)
}

/// Builds an empty store beside `path` and puts it at the absent `path`
/// ([`atomic_file::create_aside`]).
pub(crate) fn create(path: &Path, schema: &Schema) -> Result<(), Failure> {
    atomic_file::create_aside(path, |temp| build(temp, schema))
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
