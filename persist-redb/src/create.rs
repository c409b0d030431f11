//! The first create of a store file, made atomic: a crash at any point of it leaves either no
//! store file at all or a complete, synced, empty store.
//!
//! redb initialises a new file in place: it grows the file, then writes its header in two
//! steps. A crash in between leaves a file of zeros, which every later open refuses as "not a
//! redb database", so a plain `create` could turn a crash into a store that refuses to open
//! while appearing to hold data. Instead the store is built in a temporary file beside the
//! target, synced, and linked into place; the directory is synced after. So a store file is
//! never empty, and an empty file at a store's path is refused
//! ([`crate::FormatError::EmptyFile`]) rather than taken for a new store: it is a store that
//! lost its bytes, or not a store at all.

use std::fs::{File, OpenOptions};
use std::path::Path;

use persist_core::atomic_file;
use redb::StorageBackend;
use redb::backends::FileBackend;

use crate::error::Failure;
use crate::format;

/// Whether there is a file at `path`.
pub(crate) fn exists(path: &Path) -> Result<bool, Failure> {
    atomic_file::exists(path).map_err(|e| redb::Error::from(e).into())
}

/// Builds an empty store beside `path` and puts it at the absent `path`
/// ([`atomic_file::create_aside`]).
pub(crate) fn create<B: StorageBackend>(
    path: &Path,
    wrap: &impl Fn(FileBackend) -> B,
) -> Result<(), Failure> {
    atomic_file::create_aside(path, |temp| build(temp, wrap))
}

fn build<B: StorageBackend>(temp: &Path, wrap: &impl Fn(FileBackend) -> B) -> Result<(), Failure> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(redb::Error::from)?;
    let backend = FileBackend::new(file)?;
    let db = format::builder()
        .create_with_backend(wrap(backend))
        .map_err(format::open_failure)?;
    format::initialize(&db)?;
    db.close()?;
    // redb syncs each durable commit; this also covers what its close wrote after the last one.
    File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(redb::Error::from)?;
    Ok(())
}
