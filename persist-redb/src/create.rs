//! The first create of a store file, made atomic: a crash at any point of it leaves either no
//! store file at all or a complete, synced, empty store.
//!
//! redb initialises a new file in place: it grows the file, then writes its header in two
//! steps. A crash in between leaves a file of zeros, which every later open refuses as "not a
//! redb database", so a plain `create` could turn a crash into a store that refuses to open
//! while appearing to hold data. Instead the store is built in a temporary file beside the
//! target, synced, and linked into place; the directory is synced after.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

use crate::error::Failure;
use crate::format;

/// What is at the store's path before it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file: it must be created.
    Absent,
    /// An empty file (say, made by `touch` or a temp-file helper): it must be replaced.
    Empty,
    /// A file with bytes in it: open it as it is.
    Present,
}

/// Looks at what `path` holds.
pub(crate) fn inspect(path: &Path) -> Result<Found, Failure> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => Ok(Found::Empty),
        Ok(_) => Ok(Found::Present),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Absent),
        Err(e) => Err(redb::Error::from(e).into()),
    }
}

/// Builds an empty store in a temporary file beside `path` and puts it at `path`.
///
/// An absent `path` is filled with a hard link, which fails if another process created the
/// store meanwhile (then that store is used, not replaced). An empty file is replaced by a
/// rename. A crash leaves at most a temporary file `.<name>.create-*` behind, which no open
/// reads; it may be deleted.
pub(crate) fn create<B: StorageBackend>(
    path: &Path,
    found: Found,
    wrap: &impl Fn(FileBackend) -> B,
) -> Result<(), Failure> {
    let temp = temp_path(path);
    let result = build(&temp, wrap).and_then(|()| place(&temp, path, found));
    // The temporary name is gone after a rename; after a link or a failure it is removed.
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

fn place(temp: &Path, path: &Path, found: Found) -> Result<(), Failure> {
    let placed = match found {
        Found::Absent => match fs::hard_link(temp, path) {
            Ok(()) => Ok(()),
            // Another opener won the race: use its store, never replace it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            // A file system without hard links: a rename is atomic too, but may replace a
            // store created meanwhile; redb's lock then keeps the two openers apart only if
            // they opened the same file, which is why the link comes first.
            Err(_) => fs::rename(temp, path),
        },
        Found::Empty => fs::rename(temp, path),
        Found::Present => unreachable!("an existing store is opened, never created"),
    };
    placed.map_err(redb::Error::from)?;
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
