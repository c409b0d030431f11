//! The file format: our tables, the format marker, and how a file is recognised as ours.

use std::io;
use std::path::Path;

use redb::{
    Builder, Database, DatabaseError, MultimapTableHandle, ReadTransaction, ReadableDatabase,
    StorageError, TableDefinition, TableError, TableHandle,
};

use crate::error::Failure;

/// Format marker and other facts about the file, by name.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("ractor_persist.meta");
/// The latest snapshot envelope of each actor, by (namespace, key).
pub(crate) const SNAPSHOTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("ractor_persist.snapshots");
/// Pending operation envelopes, by (namespace, key, sequence number).
pub(crate) const OPS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("ractor_persist.ops");
/// The last writer epoch handed out for each actor, by (namespace, key).
pub(crate) const EPOCHS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("ractor_persist.epochs");

/// The sequence floor of each actor, by (namespace, key): no operation of the key takes a
/// number below it. Like the epoch, it outlives the record (delete and quarantine keep it).
/// Stores written before it existed get the table on their first write.
pub(crate) const FLOORS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("ractor_persist.floors");

/// Records moved aside because they could not be decoded, by (namespace, key, epoch): the
/// quarantine space. Created on the first quarantine.
pub(crate) const QUARANTINE: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("ractor_persist.quarantine");

/// Rows of every space without a table of its own, by (namespace, key, space, id). Created on
/// the first write to such a space; format 1 stores without it read as having none.
pub(crate) const ROWS: TableDefinition<(&str, &str, u8, u64), &[u8]> =
    TableDefinition::new("ractor_persist.rows");

/// The key of the format marker in [`META`].
const FORMAT_KEY: &str = "format";
/// The format marker this build writes and reads.
const FORMAT_MARKER: &str = "ractor-persist/redb/1";

/// Why a file was refused as a [`crate::RedbStore`]. Nothing was written to it.
///
/// Returned as the source of [`persist_core::StoreError::Backend`]; find it with
/// `source.downcast_ref::<FormatError>()`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file exists and is empty. A store file is never empty, not even after a crash
    /// during its creation (it is built aside and linked into place), so an empty file is
    /// taken for a store that lost its bytes rather than silently made a new, empty store.
    /// Remove it to create a store there.
    #[error("the file is empty: not a store, and not made one (remove it to create a store)")]
    EmptyFile,
    /// The file is not a redb database.
    #[error("not a redb database ({detail}), so not a ractor-persist store")]
    NotRedb {
        /// What redb said.
        detail: String,
    },
    /// A redb database of another program: it has tables, but not our meta table.
    #[error("a redb database without the ractor-persist meta table (tables: {tables:?})")]
    Foreign {
        /// The tables found.
        tables: Vec<String>,
    },
    /// Our meta table, with a format marker this build does not read: a newer format, or a
    /// damaged marker.
    #[error("store format {found:?} is not {expected:?}, the format this build reads")]
    UnknownFormat {
        /// The marker found, if any (lossy text).
        found: Option<String>,
        /// The marker this build reads.
        expected: &'static str,
    },
    /// Another process holds the file (redb's lock): a running application, or another
    /// admin tool. Stop it first.
    #[error("the file is open in another process (redb's lock); stop that process first")]
    InUse,
    /// [`crate::RedbStore::open_existing`] found no file at the path.
    #[error("no file at this path (open_existing creates none)")]
    NoFile,
    /// [`crate::RedbStore::open_existing`] found a redb database without any table: a file
    /// whose creation never committed, not a store.
    #[error("a redb database without tables, not a store (open_existing initialises none)")]
    NotAStore,
}

/// What a readable redb database holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One of our stores, in the format this build reads.
    Ours,
    /// No tables at all: a new file, or one whose creation never committed.
    Empty,
}

/// Recognises the database read by `txn`; anything but ours or empty is a [`FormatError`].
pub(crate) fn inspect(txn: &ReadTransaction) -> Result<Layout, Failure> {
    let mut tables: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
    tables.extend(txn.list_multimap_tables()?.map(|t| t.name().to_owned()));
    if tables.is_empty() {
        return Ok(Layout::Empty);
    }
    if !tables.iter().any(|t| t == META.name()) {
        return Err(FormatError::Foreign { tables }.into());
    }
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        // A table of our name but another type is someone else's.
        Err(
            TableError::TableTypeMismatch { .. }
            | TableError::TypeDefinitionChanged { .. }
            | TableError::TableIsMultimap(_),
        ) => return Err(FormatError::Foreign { tables }.into()),
        Err(e) => return Err(e.into()),
    };
    let found = meta.get(FORMAT_KEY)?.map(|m| m.value().to_vec());
    match found {
        Some(marker) if marker == FORMAT_MARKER.as_bytes() => Ok(Layout::Ours),
        found => Err(FormatError::UnknownFormat {
            found: found.map(|m| String::from_utf8_lossy(&m).into_owned()),
            expected: FORMAT_MARKER,
        }
        .into()),
    }
}

/// The redb settings of every store this crate opens.
///
/// Every writable open verifies the checksum of every page reachable from the last commit
/// (redb's `check_integrity`): redb does not verify pages when it reads them, and our
/// envelope's checksum covers a record's value but not the key it is stored under, so a flipped
/// bit in a key or a branch page could otherwise hand one actor's record to another, or hide
/// it (and `init` would build a fresh state over it). The cost is one read of the file per
/// open.
pub(crate) fn builder() -> Builder {
    let mut builder = Builder::new();
    builder.set_check_integrity_on_open(true);
    builder
}

/// Makes an empty database a store: writes the marker and creates the tables, durably.
pub(crate) fn initialize(db: &Database) -> Result<(), Failure> {
    let txn = db.begin_write()?;
    txn.open_table(META)?
        .insert(FORMAT_KEY, FORMAT_MARKER.as_bytes())?;
    txn.open_table(SNAPSHOTS)?;
    txn.open_table(OPS)?;
    txn.open_table(EPOCHS)?;
    txn.open_table(FLOORS)?;
    txn.commit()?;
    Ok(())
}

/// Checks an existing file through a read-only open before it is opened for writing.
///
/// A writable open alone would already change the file (redb marks its header on open and
/// writes on close), so a foreign file must be refused before that. A file that needs crash
/// recovery cannot be opened read-only; it is let through, and [`inspect`] checks it after the
/// writable open has repaired it.
pub(crate) fn probe(path: &Path) -> Result<(), Failure> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        Ok(_) => return Err(FormatError::EmptyFile.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(redb::Error::from(e).into()),
    }
    let db = match builder().open_read_only(path) {
        Ok(db) => db,
        Err(DatabaseError::RepairAborted) => return Ok(()),
        Err(e) => return Err(open_failure(e)),
    };
    let layout = inspect(&db.begin_read()?);
    db.close()?;
    layout.map(drop)
}

/// Classifies an error of opening a file: redb reports a file that is not a database as
/// invalid data.
pub(crate) fn open_failure(e: DatabaseError) -> Failure {
    match e {
        DatabaseError::DatabaseAlreadyOpen => FormatError::InUse.into(),
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            FormatError::NotRedb {
                detail: io.to_string(),
            }
            .into()
        }
        e => e.into(),
    }
}
