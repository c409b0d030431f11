//! [`SqliteStore`]: the [`Store`] seam on one SQLite connection.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use persist_core::{
    ActorCommit, ActorKey, Loaded, Marks, Row, RowWrite, Space, Store, StoreError, check_epochs,
    next_epoch,
};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::check;
use crate::create;
use crate::error::Failure;
use crate::format::{self, FormatError, Layout};
use crate::options::{DEFAULT_TABLE_PREFIX, SqliteOptions};
use crate::rows::{self, MarksRow};
use crate::schema::Schema;

/// How long a transaction waits for another connection's write to the same file.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A store in an SQLite database: its own file, or tables beside an application's in the
/// application's file.
///
/// The store owns one connection. Every commit is one `BEGIN IMMEDIATE` transaction in WAL
/// mode with `synchronous=FULL`, so it is on disk when [`Store::commit`] returns. Every open of
/// a file checks it whole first (SQLite's `quick_check` of our tables, then every row's checksum), so damage
/// is a typed error then, not a wrong record later. `docs/sqlite.md` describes the tables.
#[derive(Debug)]
pub struct SqliteStore {
    name: String,
    schema: Schema,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// Whether the connection runs with `synchronous=FULL` now (see [`Inner::synchronous`]).
    full: bool,
}

impl Inner {
    /// Sets the connection's `synchronous` for the next transaction: FULL for commits, which
    /// must be on disk when they return; NORMAL for the epoch a load takes, which need not be.
    ///
    /// If the process dies before a durable commit, the epoch claim may be lost, but so is
    /// every instance that held an older epoch: no writer of this process survives it. While
    /// the process lives, later transactions see the claim, and the next commit (of any actor)
    /// syncs the log, and the claim with it.
    fn synchronous(&mut self, full: bool) -> Result<(), Failure> {
        if self.full != full {
            let mode = if full { "FULL" } else { "NORMAL" };
            self.conn
                .execute_batch(&format!("PRAGMA synchronous = {mode}"))?;
            self.full = full;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Opens the store in the SQLite file at `path`, with the default
    /// [`SqliteOptions`] (tables prefixed `ractor_persist_`), creating the file if there is
    /// none.
    ///
    /// See [`SqliteStore::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the store whose tables start with `options`' prefix in the SQLite file at `path`.
    ///
    /// - No file: a new store file is built beside `path`, synced and linked into place, so a
    ///   crash during the first create leaves no file, never a half-made one.
    /// - An empty file is refused ([`FormatError::EmptyFile`]): a store file is never empty.
    /// - Every existing file gets SQLite's `quick_check` of the store's tables before it is
    ///   used.
    /// - A database without the store's tables (an application's file) gets them, in one
    ///   transaction; the application's own tables are left alone.
    /// - A database with the store's tables is checked whole: every row's and every mark's
    ///   checksum and the row count of every key, so damage is [`StoreError::Corrupt`] naming
    ///   what was found, not a wrong record later.
    ///
    /// A file that is not a store, or tables of the prefix that are not one, are refused with
    /// a [`FormatError`] (as the source of [`StoreError::Backend`]) and the file is left
    /// unchanged: nothing is written to a file before it is known to be a store, or to hold
    /// nothing of the prefix. Once accepted, the file is put in WAL mode (which it keeps).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        // SQLite (built with URI file names) reads `file:x` or `:memory:` as something else
        // than the file of that name, which every other step here uses: `./` makes it a file.
        let joined;
        let path = if path.is_relative() {
            joined = Path::new(".").join(path);
            joined.as_path()
        } else {
            path
        };
        run(&name, || {
            let prefix = options.checked_prefix()?;
            let schema = Schema::new(prefix);
            if !create::exists(path)? {
                if options.is_existing_only() {
                    return Err(FormatError::NoFile.into());
                }
                create::create(path, &schema)?;
            }
            let layout = format::probe(path, &schema, prefix)?;
            if options.is_existing_only() && layout == Layout::Empty {
                return Err(FormatError::NotAStore {
                    prefix: prefix.to_owned(),
                }
                .into());
            }
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            // Known only once SQLite has read the file's header, which the pragma did.
            if conn.is_readonly(rusqlite::MAIN_DB)? {
                return Err(FormatError::ReadOnly.into());
            }
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(FormatError::NoWal { mode }.into());
            }
            Self::prepare(name.clone(), conn, schema, prefix)
        })
    }

    /// A new, empty store in memory, named `:memory:`; everything is lost when it is dropped.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let name = ":memory:".to_owned();
        run(&name, || {
            let schema = Schema::new(DEFAULT_TABLE_PREFIX);
            let conn = Connection::open_in_memory()?;
            Self::prepare(name.clone(), conn, schema, DEFAULT_TABLE_PREFIX)
        })
    }

    /// Closes the connection, reporting what dropping it would ignore. The last connection to
    /// close moves the write-ahead log into the file and removes it.
    pub fn close(self) -> Result<(), StoreError> {
        let SqliteStore { name, inner, .. } = self;
        let inner = inner.into_inner().unwrap_or_else(|p| p.into_inner());
        inner
            .conn
            .close()
            .map_err(|(_, e)| Failure::from(e).into_store_error(&name))
    }

    /// Makes a database with nothing of the prefix a store; checks that one that has is ours.
    fn prepare(
        name: String,
        mut conn: Connection,
        schema: Schema,
        prefix: &str,
    ) -> Result<SqliteStore, Failure> {
        conn.set_prepared_statement_cache_capacity(Schema::STATEMENTS);
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if format::inspect(&txn, &schema, prefix)? == Layout::Empty {
            format::initialize(&txn, &schema)?;
        }
        txn.commit()?;
        Ok(SqliteStore {
            name,
            schema,
            inner: Mutex::new(Inner { conn, full: true }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic inside a transaction unwinds through its drop, which rolls it back.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next writer epoch of `key`, its floor and the rows of `spaces`, in one transaction.
    fn load(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, Failure> {
        let mut inner = self.inner();
        inner.synchronous(false)?;
        let txn = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored = rows::marks(&txn, &self.schema, key)?;
        if stored.is_none() && rows::any_row(&txn, &self.schema, key)? {
            return Err(Failure::Corrupt(format!(
                "`{key}` has rows but no marks row: its marks were lost"
            )));
        }
        let mut marks = stored.clone().unwrap_or_default();
        marks.epoch = next_epoch(&self.name, key, marks.epoch)?;
        let mut spaces = spaces.to_vec();
        spaces.sort();
        spaces.dedup();
        let mut found = Vec::new();
        for space in &spaces {
            found.extend(rows::rows(
                &txn,
                &self.schema,
                key,
                Some(*space),
                &(0..=u64::MAX),
            )?);
        }
        rows::check_counts(key, stored.as_ref(), &spaces, &found)?;
        rows::put_marks(&txn, &self.schema, key, &marks)?;
        txn.commit()?;
        Ok(Loaded {
            epoch: marks.epoch,
            floor: marks.floor,
            rows: found,
        })
    }

    /// Writes `batch` in one durable transaction, or nothing if any commit is fenced.
    fn write(&self, batch: &[ActorCommit]) -> Result<(), Failure> {
        let mut inner = self.inner();
        inner.synchronous(true)?;
        let txn = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Each key's marks row as stored, and as the batch leaves it.
        let mut marks: BTreeMap<&ActorKey, (MarksRow, MarksRow)> = BTreeMap::new();
        for c in batch {
            if !marks.contains_key(&*c.key) {
                let m = rows::marks(&txn, &self.schema, &c.key)?.unwrap_or_default();
                marks.insert(&c.key, (m.clone(), m));
            }
        }
        let fences = check_epochs(batch, |key| Ok(marks[key].0.epoch))?;
        if !fences.is_empty() {
            // Dropping the transaction rolls it back; nothing of it was ever visible.
            return Err(StoreError::Fenced(fences).into());
        }
        // The snapshot space holds one row, id 0, on every backend.
        let odd_snapshot = batch
            .iter()
            .flat_map(|c| &c.writes)
            .any(|w| matches!(w, RowWrite::Put { space: Space::SNAPSHOT, id, .. } if *id != 0));
        if odd_snapshot {
            return Err(StoreError::Unsupported {
                store: self.name().to_owned(),
                operation: "a snapshot row with an id other than 0",
            }
            .into());
        }
        for c in batch {
            let (_, m) = marks.get_mut(&*c.key).expect("loaded above");
            self.apply(&txn, c, m)?;
        }
        for (key, (before, after)) in &marks {
            if before != after {
                rows::put_marks(&txn, &self.schema, key, after)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Applies one commit (its epoch already checked), counting the rows it adds and removes.
    fn apply(&self, conn: &Connection, c: &ActorCommit, m: &mut MarksRow) -> Result<(), Failure> {
        for w in &c.writes {
            match w {
                RowWrite::Put { space, id, bytes } => {
                    if rows::put_row(conn, &self.schema, &c.key, *space, *id, bytes)? {
                        *m.counts.entry(space.id()).or_default() += 1;
                    }
                }
                RowWrite::Delete { space, first, last } => {
                    let gone =
                        rows::delete_rows(conn, &self.schema, &c.key, *space, *first, *last)?;
                    if gone > 0 {
                        let left = m.count(*space).checked_sub(gone).ok_or_else(|| {
                            Failure::Corrupt(format!(
                                "a delete removed {gone} row(s) of {space} of `{}`, more than its \
                                 marks count",
                                c.key
                            ))
                        })?;
                        if left == 0 {
                            m.counts.remove(&space.id());
                        } else {
                            m.counts.insert(space.id(), left);
                        }
                    }
                }
            }
        }
        m.epoch = m.epoch.max(c.raise.epoch);
        m.floor = m.floor.max(c.raise.floor);
        Ok(())
    }

    /// Rows of `key` by range, checked; a read of whole spaces also checks their counts.
    fn read_rows(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, Failure> {
        let mut inner = self.inner();
        let txn = inner.conn.transaction()?;
        let marks = rows::marks(&txn, &self.schema, key)?;
        let found = rows::rows(&txn, &self.schema, key, space, &ids)?;
        if marks.is_none() && !found.is_empty() {
            return Err(Failure::Corrupt(format!(
                "`{key}` has rows but no marks row: its marks were lost"
            )));
        }
        if ids == (0..=u64::MAX) {
            let spaces: Vec<Space> = match space {
                Some(space) => vec![space],
                None => {
                    let mut all: Vec<Space> = found.iter().map(|r| r.space).collect();
                    all.extend(
                        marks
                            .iter()
                            .flat_map(|m| m.counts.keys().map(|s| Space::new(*s))),
                    );
                    all.sort();
                    all.dedup();
                    all
                }
            };
            rows::check_counts(key, marks.as_ref(), &spaces, &found)?;
        }
        Ok(found)
    }

    fn list_keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, Failure> {
        let inner = self.inner();
        let mut stmt = inner.conn.prepare_cached(&self.schema.namespace_marks)?;
        let mut found = stmt.query([namespace])?;
        let mut keys = Vec::new();
        while let Some(r) = found.next()? {
            let (key, marks) = rows::read_marks(r)?;
            if key.namespace() != namespace {
                return Err(Failure::Corrupt(format!(
                    "a listing of namespace {namespace:?} found {:?}: the marks table is out \
                     of order",
                    key.to_string()
                )));
            }
            if marks.count(space) > 0 {
                keys.push(key.key().to_owned());
            }
        }
        Ok(keys)
    }

    fn scan_marks(&self) -> Result<Vec<(ActorKey, Marks)>, Failure> {
        let mut inner = self.inner();
        let txn = inner.conn.transaction()?;
        let mut all = Vec::new();
        check::verify(&txn, &self.schema, |key, m| all.push((key, m.marks())))?;
        Ok(all)
    }
}

/// Runs `body`, naming the store in its error.
fn run<T>(store: &str, body: impl FnOnce() -> Result<T, Failure>) -> Result<T, StoreError> {
    body().map_err(|f| f.into_store_error(store))
}

impl Store for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        run(&self.name, || self.load(key, spaces))
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        // An empty batch changes nothing; it is not worth a sync.
        if batch.is_empty() {
            return Ok(());
        }
        run(&self.name, || self.write(batch))
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        run(&self.name, || self.read_rows(key, space, ids))
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        run(&self.name, || self.list_keys(namespace, space))
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        run(&self.name, || self.scan_marks())
    }
}
