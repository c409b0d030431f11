//! Creating a store file atomically, for file backends: the new store is built in a temporary
//! file beside its path, synced, and linked into place, then the directory is synced. A crash
//! at any point leaves either no file at the path or a complete, synced store; never an empty
//! or half-made one (which an open must not take for a new, empty store).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether there is a file at `path`.
pub fn exists(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Builds a store with `build` in a temporary file beside `path` (`build` must leave it
/// complete and synced) and puts it at the absent `path`.
///
/// The file is placed with a hard link, which fails if another process created a file there
/// meanwhile (then that file is kept, never replaced). On a file system without hard links a
/// rename is used: atomic too, but it would replace a file created meanwhile, which is why the
/// link comes first. A crash leaves at most a temporary file `.<name>.create-*` behind, which
/// no open reads; it may be deleted.
pub fn create_aside<E: From<io::Error>>(
    path: &Path,
    build: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let temp = temp_path(path);
    let result = build(&temp).and_then(|()| place(&temp, path).map_err(E::from));
    // After a link, or a failure, the temporary name is removed (after a rename it is gone).
    let _ = fs::remove_file(&temp);
    result
}

fn place(temp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(temp, path) {
        Ok(()) => {}
        // Another opener won the race: use its file, never replace it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(_) => fs::rename(temp, path)?,
    }
    sync_dir(path)
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
