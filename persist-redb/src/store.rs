//! [`RedbStore`]: the [`Store`] seam on one redb database.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use std::ops::RangeInclusive;

use persist_core::{
    ActorCommit, ActorKey, Loaded, Marks, Row, Space, Store, StoreError, check_epochs, next_epoch,
};
use redb::backends::{FileBackend, InMemoryBackend};
use redb::{Database, Durability, ReadableDatabase, StorageBackend};

use crate::create;
use crate::error::{Failure, guarded};
use crate::format::{self, FormatError, Layout};
use crate::rows::{self, Writer};

/// A store in one redb database, normally one file.
///
/// Opening takes redb's file lock, so one process at a time holds the file; within the process,
/// actors are fenced by writer epochs.
#[derive(Debug)]
pub struct RedbStore {
    name: String,
    db: Database,
    /// The stored writer epoch of the keys this store opened or checked lately.
    ///
    /// This store is the only writer of its database (redb's lock keeps other processes
    /// out, and the database is owned here), and every epoch it writes goes through
    /// [`Store::open_actor`] or [`Store::commit`], which update this map only after their
    /// transaction committed. So an entry is always the stored epoch, and a commit's fence
    /// check needs no read of the epoch table. A key not in the map is read from the table;
    /// the map is emptied when it grows past [`EPOCH_CACHE`] keys, and after any failed
    /// transaction.
    epochs: Mutex<HashMap<ActorKey, u64>>,
}

/// Most keys whose epoch a [`RedbStore`] keeps in memory.
const EPOCH_CACHE: usize = 65_536;

impl RedbStore {
    /// Opens the store in the file at `path`, creating it if there is no file.
    ///
    /// The first create is atomic: the store is built in a temporary file beside `path`,
    /// synced, and linked into place, so a crash during it leaves no file at `path`, never a
    /// half-made one that refuses to open. So a store file is never empty, and an empty file
    /// is refused ([`crate::FormatError::EmptyFile`]): it is a store that lost its bytes, or
    /// not a store at all.
    ///
    /// Every open verifies the checksum of every page of the file (one read of the file), so
    /// damage redb would not notice is a typed error here, not a wrong record later.
    ///
    /// A file that is not one of our stores is refused with a
    /// [`crate::FormatError`] (as the source of [`StoreError::Backend`]) and left unchanged; a
    /// file another opener holds gives [`StoreError::Backend`] naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        Self::open_wrapped(path, |backend| backend)
    }

    /// Opens the store in the file at `path` like [`RedbStore::open`], but only a store that
    /// exists: no file is created ([`crate::FormatError::NoFile`]), and a database without
    /// tables is refused ([`crate::FormatError::NotAStore`]) rather than made a store. For
    /// tools that inspect a store and must not leave a new one behind.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        guarded(&name, || {
            if !create::exists(path)? {
                return Err(FormatError::NoFile.into());
            }
            format::probe(path)?;
            let db = format::builder()
                .create(path)
                .map_err(format::open_failure)?;
            if format::inspect(&db.begin_read()?)? == Layout::Empty {
                return Err(FormatError::NotAStore.into());
            }
            Self::prepare(name.clone(), db)
        })
    }

    /// Opens like [`RedbStore::open`], passing each redb backend of the file (and of the
    /// temporary file a first create builds) through `wrap`.
    ///
    /// A test hook: `tests/crash_io_failure.rs` wraps the real file to fail its I/O at every
    /// step of a first create. Not needed otherwise.
    #[doc(hidden)]
    pub fn open_wrapped<B: StorageBackend>(
        path: impl AsRef<Path>,
        wrap: impl Fn(FileBackend) -> B,
    ) -> Result<RedbStore, StoreError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        guarded(&name, || {
            if !create::exists(path)? {
                create::create(path, &wrap)?;
            }
            format::probe(path)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(redb::Error::from)?;
            let db = format::builder()
                .create_with_backend(wrap(FileBackend::new(file)?))
                .map_err(format::open_failure)?;
            Self::prepare(name.clone(), db)
        })
    }

    /// A new, empty store in memory, named `:memory:`; everything is lost when it is dropped.
    pub fn in_memory() -> Result<RedbStore, StoreError> {
        Self::with_backend(":memory:", InMemoryBackend::new())
    }

    /// Opens the store on a redb storage backend, creating it if the backend is empty.
    ///
    /// For tests that wrap the real backend to inject faults or simulate crashes. Unlike
    /// [`RedbStore::open`], creating a store on a bare backend is not atomic: a crash during
    /// it can leave a backend that refuses to open.
    pub fn with_backend(
        name: impl Into<String>,
        backend: impl StorageBackend,
    ) -> Result<RedbStore, StoreError> {
        let name = name.into();
        guarded(&name, || {
            let db = format::builder()
                .create_with_backend(backend)
                .map_err(format::open_failure)?;
            Self::prepare(name.clone(), db)
        })
    }

    /// Uses an open redb database as the store, initialising it if it holds no tables.
    pub fn from_database(name: impl Into<String>, db: Database) -> Result<RedbStore, StoreError> {
        let name = name.into();
        guarded(&name, || Self::prepare(name.clone(), db))
    }

    /// Closes the database, reporting what dropping it would ignore.
    pub fn close(self) -> Result<(), StoreError> {
        let RedbStore { name, db, .. } = self;
        guarded(&name, || Ok(db.close()?))
    }

    /// Refuses a database that is not ours; makes an empty one a store.
    fn prepare(name: String, db: Database) -> Result<RedbStore, Failure> {
        let layout = format::inspect(&db.begin_read()?)?;
        if layout == Layout::Empty {
            format::initialize(&db)?;
        }
        Ok(RedbStore {
            name,
            db,
            epochs: Mutex::default(),
        })
    }

    /// The next writer epoch of `key`, its floor and the rows of `spaces`, in one write
    /// transaction.
    fn load(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, Failure> {
        let mut txn = self.db.begin_write()?;
        // The epoch claim alone is not synced. If the process dies before a durable commit, the
        // claim may be lost, but so is every instance that held an older epoch: no writer of
        // this file survives a crash. While the process lives, later transactions see the claim;
        // the next Immediate commit (of any actor) makes it durable with everything before it.
        txn.set_durability(Durability::None)?;
        let (epoch, floor) = {
            let mut w = Writer::new(&txn);
            let epoch = next_epoch(&self.name, key, w.epoch(key)?)?;
            w.set_epoch(key, epoch)?;
            (epoch, w.floor(key)?)
        };
        let mut spaces = spaces.to_vec();
        spaces.sort();
        spaces.dedup();
        let mut rows = Vec::new();
        for space in spaces {
            rows.extend(rows::read_space(&txn, key, space, 0..=u64::MAX)?);
        }
        txn.commit()?;
        self.remember(key, epoch);
        Ok(Loaded { epoch, floor, rows })
    }

    /// Writes `batch` in one durable transaction, or nothing if any commit is fenced.
    fn write(&self, batch: &[ActorCommit]) -> Result<(), Failure> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut w = Writer::new(&txn);
            let mut cache = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
            let fences = check_epochs(batch, |key| match cache.get(key) {
                Some(epoch) => Ok(*epoch),
                None => {
                    // The committed epoch (nothing of this batch is applied yet).
                    let epoch = w.epoch(key).map_err(|e| e.into_store_error(&self.name))?;
                    if cache.len() >= EPOCH_CACHE {
                        cache.clear();
                    }
                    cache.insert(key.clone(), epoch);
                    Ok(epoch)
                }
            })?;
            drop(cache);
            if !fences.is_empty() {
                // Dropping an uncommitted transaction aborts it; nothing of it was ever visible.
                return Err(StoreError::Fenced(fences).into());
            }
            for commit in batch {
                w.apply(&self.name, commit)?;
            }
        }
        txn.commit()?;
        // An import restores epochs: the map follows what was written.
        for commit in batch.iter().filter(|c| c.raise.epoch > 0) {
            let mut cache = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(epoch) = cache.get_mut(&*commit.key) {
                *epoch = (*epoch).max(commit.raise.epoch);
            }
        }
        Ok(())
    }

    /// Records `epoch` as the stored epoch of `key`, once written.
    fn remember(&self, key: &ActorKey, epoch: u64) {
        let mut cache = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = cache.get_mut(key) {
            *e = epoch;
        } else {
            if cache.len() >= EPOCH_CACHE {
                cache.clear();
            }
            cache.insert(key.clone(), epoch);
        }
    }

    /// Forgets every remembered epoch: after a transaction failed, what it changed is not
    /// known for certain.
    fn forget(&self) {
        self.epochs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Store for RedbStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        let loaded = guarded(&self.name, || self.load(key, spaces));
        if loaded.is_err() {
            self.forget();
        }
        loaded
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        // An empty batch changes nothing; it is not worth an fsync.
        if batch.is_empty() {
            return Ok(());
        }
        let written = guarded(&self.name, || self.write(batch));
        if matches!(written, Err(ref e) if !matches!(e, StoreError::Fenced(_))) {
            self.forget();
        }
        written
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        guarded(&self.name, || {
            let txn = self.db.begin_read()?;
            match space {
                Some(space) => rows::read_space(&txn, key, space, ids),
                None => rows::read_all(&txn, key, ids),
            }
        })
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        guarded(&self.name, || {
            rows::keys(&self.db.begin_read()?, namespace, space)
        })
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        guarded(&self.name, || rows::scan(&self.db.begin_read()?))
    }
}
