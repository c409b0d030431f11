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

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

use crate::error::Failure;
use crate::format;

/// Whether there is a file at `path`.
pub(crate) fn exists(path: &Path) -> Result<bool, Failure> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(redb::Error::from(e).into()),
    }
}

/// Builds an empty store in a temporary file beside `path` and puts it at the absent `path`.
///
/// The store is placed with a hard link, which fails if another process created the store
/// meanwhile (then that store is used, not replaced). A crash leaves at most a temporary file
/// `.<name>.create-*` behind, which no open reads; it may be deleted.
pub(crate) fn create<B: StorageBackend>(
    path: &Path,
    wrap: &impl Fn(FileBackend) -> B,
) -> Result<(), Failure> {
    let temp = temp_path(path);
    let result = build(&temp, wrap).and_then(|()| place(&temp, path));
    // After a link, or a failure, the temporary name is removed (after a rename it is gone).
    let _ = fs::remove_file(&temp);
    result
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

fn place(temp: &Path, path: &Path) -> Result<(), Failure> {
    match fs::hard_link(temp, path) {
        Ok(()) => {}
        // Another opener won the race: use its store, never replace it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        // A file system without hard links: a rename is atomic too, but would replace a store
        // created meanwhile (whose opener then writes to a file no longer at `path`), which is
        // why the link comes first.
        Err(_) => fs::rename(temp, path).map_err(redb::Error::from)?,
    }
    sync_dir(path).map_err(redb::Error::from)?;
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
