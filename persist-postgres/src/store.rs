//! [`PostgresStore`]: the [`Store`] seam on one PostgreSQL connection.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use persist_core::{
    ActorCommit, ActorKey, Loaded, Marks, Row, RowWrite, Space, Store, StoreError, check_epochs,
};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement, Transaction};

use crate::error::{Failure, PostgresError};
use crate::options::PostgresOptions;
use crate::schema::{self, MARKER, Schema, dec, enc};

/// The version of the tables this build writes and reads; a newer one is refused.
pub const SCHEMA_VERSION: u32 = schema::VERSION;

/// A store in a PostgreSQL database that many nodes (processes) may share.
///
/// The store holds one connection, used by one thread at a time (the storage's committer,
/// or an actor writing its commit while the store is idle). Each commit is one transaction
/// that locks the marks rows of its actors in key order and checks their epochs before it
/// writes; it is durable when [`Store::commit`] returns (the session runs with
/// `synchronous_commit = on`). A lost connection fails the call in flight with
/// [`StoreError::Interrupted`] (a commit may then have landed or not: a later load shows
/// all of its batch or none of it); the next call connects again, with backoff.
pub struct PostgresStore {
    name: String,
    options: PostgresOptions,
    schema: Schema,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping the client closes the connection with the client's own `block_on`, which
        // panics on a thread that drives a tokio runtime.
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if session.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                scope.spawn(move || drop(session));
            });
        }
    }
}

/// A live connection and its prepared statements.
struct Session {
    client: Client,
    st: Prepared,
}

struct Prepared {
    lock_marks: Statement,
    open: Statement,
    load_rows: Statement,
    delete_rows: Statement,
    put_rows: Statement,
    raise_marks: Statement,
    space_rows: Statement,
    key_rows: Statement,
    keys: Statement,
    scan: Statement,
}

impl PostgresStore {
    /// Connects to the server `options` name and opens the store in its schema.
    ///
    /// - No tables of the prefix: they are created in one transaction (and the schema, if
    ///   missing), with the format marker and [`SCHEMA_VERSION`].
    /// - All three: the marker, the version and every column are checked; a table of another
    ///   application ([`PostgresError::Foreign`]), a newer version
    ///   ([`PostgresError::NewerSchema`]) or only some of the tables
    ///   ([`PostgresError::Incomplete`]) is refused, and nothing is written.
    /// - A server that cannot be reached, or refuses the password, is a typed error naming
    ///   the server (never the password). So is one whose `fsync` is off.
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let name = match options.checked() {
            Ok((schema, prefix)) => format!("postgres://{} {schema}.{prefix}*", options.server()),
            Err(e) => return Err(StoreError::backend(&options.server(), e)),
        };
        let (schema, prefix) = options.checked().expect("checked above");
        let store = PostgresStore {
            schema: Schema::new(schema, prefix),
            name,
            options,
            session: Mutex::new(None),
        };
        store.run(|s| {
            let mut client = s.connect_once()?;
            s.prepare_tables(&mut client)?;
            let st = s.prepare(&mut client)?;
            *s.session() = Some(Session { client, st });
            Ok(())
        })?;
        Ok(store)
    }

    /// Closes the connection.
    pub fn close(self) -> Result<(), StoreError> {
        self.run(|s| match s.session().take() {
            Some(session) => Ok(session.client.close()?),
            None => Ok(()),
        })
    }

    fn session(&self) -> MutexGuard<'_, Option<Session>> {
        // A panic inside a transaction drops it, which rolls it back.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `body` where the synchronous client may block: on this thread, or on a scoped
    /// thread when this one drives a tokio runtime (the client's own `block_on` would panic
    /// there). Names the store in the error.
    fn run<T: Send>(
        &self,
        body: impl FnOnce(&Self) -> Result<T, Failure> + Send,
    ) -> Result<T, StoreError> {
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name("persist-postgres".into())
                    .spawn_scoped(scope, || body(self))
                    .expect("spawn a thread for the PostgreSQL client")
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            body(self)
        };
        result.map_err(|f| f.into_store_error(&self.name))
    }

    /// Runs `f` on the live session, connecting (again) first if there is none. A failure
    /// that closed the connection drops it, so the next call connects again.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&mut Client, &Prepared) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut guard = self.session();
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            *guard = None;
            let mut client = self.reconnect().map_err(Failure::lost)?;
            let st = self.prepare(&mut client)?;
            *guard = Some(Session { client, st });
        }
        let session = guard.as_mut().expect("connected above");
        let result = f(&mut session.client, &session.st);
        if session.client.is_closed() {
            *guard = None;
        }
        result
    }

    /// Connects, trying again with backoff (20 ms doubling to 1 s) for up to the options'
    /// `reconnect_for`.
    fn reconnect(&self) -> Result<Client, Failure> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.connect_once() {
                Ok(client) => return Ok(client),
                Err(e) if started.elapsed() + pause < self.options.reconnect_for => {
                    let _ = e;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection attempt, with the session set up for the store.
    fn connect_once(&self) -> Result<Client, Failure> {
        let mut config = self.options.config.clone();
        config.connect_timeout(self.options.connect_timeout);
        // A server that stops answering (a cut cable) fails the call instead of hanging it.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let timeout = self.options.statement_timeout.as_millis().max(1);
        let server = self.options.server();
        let user = self.options.config.get_user().unwrap_or("?").to_owned();
        let mut client = config.connect(NoTls).map_err(|e| {
            let auth = matches!(
                e.code(),
                Some(c) if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            );
            if auth {
                Failure::Open(PostgresError::Authentication {
                    server: server.clone(),
                    user,
                    reason: e.to_string(),
                })
            } else if e.as_db_error().is_some() {
                Failure::Pg(e)
            } else {
                Failure::Open(PostgresError::Unreachable {
                    server: server.clone(),
                    reason: e.to_string(),
                })
            }
        })?;
        // Durable when COMMIT returns, read committed (the fence relies on row locks, not
        // on snapshots), and no statement waits forever.
        client.batch_execute(&format!(
            "SET synchronous_commit = on; \
             SET default_transaction_isolation = 'read committed'; \
             SET statement_timeout = {timeout}"
        ))?;
        // Checked, not assumed: a connection pooler in transaction mode drops a session's
        // SET, and a server with fsync off acknowledges commits it may lose.
        for setting in ["fsync", "synchronous_commit"] {
            let value: String = client.query_one(&format!("SHOW {setting}"), &[])?.get(0);
            if value != "on" {
                return Err(PostgresError::NotDurable {
                    setting,
                    value,
                    expected: "on",
                }
                .into());
            }
        }
        Ok(client)
    }

    fn prepare(&self, client: &mut Client) -> Result<Prepared, Failure> {
        let s = &self.schema;
        Ok(Prepared {
            lock_marks: client.prepare(&s.lock_marks)?,
            open: client.prepare(&s.open)?,
            load_rows: client.prepare(&s.load_rows)?,
            delete_rows: client.prepare(&s.delete_rows)?,
            put_rows: client.prepare(&s.put_rows)?,
            raise_marks: client.prepare(&s.raise_marks)?,
            space_rows: client.prepare(&s.space_rows)?,
            key_rows: client.prepare(&s.key_rows)?,
            keys: client.prepare(&s.keys)?,
            scan: client.prepare(&s.scan)?,
        })
    }

    /// Creates the tables if none exists; checks them if all do; refuses anything else.
    fn prepare_tables(&self, client: &mut Client) -> Result<(), Failure> {
        // Two nodes opening a new store at once may both try to create it: the loser's
        // CREATE fails, and it checks what the winner made.
        for attempt in 0..3 {
            match self.inspect(client)? {
                Tables::Ours => return Ok(()),
                Tables::None => {
                    let mut txn = client.transaction()?;
                    let created = txn
                        .batch_execute(&format!(
                            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                            self.schema.schema
                        ))
                        .and_then(|()| txn.batch_execute(&self.schema.create));
                    match created.and_then(|()| txn.commit()) {
                        Ok(()) => return Ok(()),
                        Err(e) if attempt < 2 && is_race(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(Failure::Corrupt(
            "the store's tables were created and removed while it opened".into(),
        ))
    }

    /// What the schema holds of the store's tables; a refusal if it is not a store.
    fn inspect(&self, client: &mut Client) -> Result<Tables, Failure> {
        let s = &self.schema;
        let rows = client.query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = $1 AND table_name = ANY($2) \
             ORDER BY table_name, ordinal_position",
            &[&s.schema, &s.tables.to_vec()],
        )?;
        let mut found: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for r in &rows {
            found
                .entry(r.get(0))
                .or_default()
                .push((r.get(1), r.get(2)));
        }
        if found.is_empty() {
            return Ok(Tables::None);
        }
        if found.len() < 3 {
            let (have, missing): (Vec<String>, Vec<String>) = s
                .tables
                .iter()
                .cloned()
                .partition(|t| found.contains_key(t));
            return Err(PostgresError::Incomplete {
                schema: s.schema.clone(),
                found: have,
                missing,
            }
            .into());
        }
        for (table, expected) in s.tables.iter().zip(s.columns) {
            let have = &found[table];
            let want: Vec<(String, String)> = expected
                .iter()
                .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
                .collect();
            if *have != want {
                return Err(PostgresError::Foreign {
                    table: format!("{}.{table}", s.schema),
                    detail: format!("its columns are {have:?}, expected {want:?}"),
                }
                .into());
            }
        }
        let meta = client.query(&s.get_meta, &[])?;
        let meta: BTreeMap<String, String> = meta.iter().map(|r| (r.get(0), r.get(1))).collect();
        let table = format!("{}.{}", s.schema, s.tables[0]);
        if meta.get("format").map(String::as_str) != Some(MARKER) {
            return Err(PostgresError::Foreign {
                table,
                detail: format!(
                    "its format marker is {:?}, expected {MARKER:?}",
                    meta.get("format")
                ),
            }
            .into());
        }
        let version = meta.get("schema_version");
        match version.and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if v > SCHEMA_VERSION => Err(PostgresError::NewerSchema {
                found: v,
                supported: SCHEMA_VERSION,
            }
            .into()),
            Some(v) if v >= 1 => Ok(Tables::Ours),
            _ => Err(PostgresError::Foreign {
                table,
                detail: format!("its schema version is {version:?}, expected a number"),
            }
            .into()),
        }
    }

    /// The next writer epoch of `key`, its floor and the rows of `spaces`, in one transaction.
    fn load(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, Failure> {
        self.with_session(|client, st| {
            let (ns, k) = key_bytes(key);
            let mut txn = client.transaction()?;
            let marks = txn.query_one(&st.open, &[&ns, &k, &enc(1), &enc(0)])?;
            let (epoch, floor) = (dec(marks.get(0)), dec(marks.get(1)));
            let mut ids: Vec<i16> = spaces.iter().map(|s| i16::from(s.id())).collect();
            ids.sort_unstable();
            ids.dedup();
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                txn.query(&st.load_rows, &[&ns, &k, &ids])?
                    .iter()
                    .map(to_row)
                    .collect::<Result<Vec<Row>, Failure>>()?
            };
            txn.commit()?;
            Ok(Loaded { epoch, floor, rows })
        })
    }

    /// Writes `batch` in one durable transaction, or nothing if any commit is fenced.
    fn write(&self, batch: &[ActorCommit]) -> Result<(), Failure> {
        // The snapshot space holds one row, id 0, on every backend.
        let odd_snapshot = batch
            .iter()
            .flat_map(|c| &c.writes)
            .any(|w| matches!(w, RowWrite::Put { space: Space::SNAPSHOT, id, .. } if *id != 0));
        if odd_snapshot {
            return Err(StoreError::Unsupported {
                store: self.name.clone(),
                operation: "a snapshot row with an id other than 0",
            }
            .into());
        }
        let net = Net::of(batch);
        self.with_session(|client, st| {
            let mut txn = client.transaction()?;
            let stored = lock_marks(&mut txn, st, batch)?;
            let fences = check_epochs(batch, |key| {
                Ok(stored.get(key).copied().unwrap_or_default())
            })?;
            if !fences.is_empty() {
                // Dropping the transaction rolls it back; nothing of it was ever visible.
                return Err(StoreError::Fenced(fences).into());
            }
            net.apply(&mut txn, st)?;
            txn.commit()?;
            Ok(())
        })
    }

    fn read_rows(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, Failure> {
        let (ns, k) = key_bytes(key);
        let (lo, hi) = (enc(*ids.start()), enc(*ids.end()));
        self.with_session(|client, st| {
            let rows = match space {
                Some(s) => client.query(&st.space_rows, &[&ns, &k, &i16::from(s.id()), &lo, &hi]),
                None => client.query(&st.key_rows, &[&ns, &k, &lo, &hi]),
            }?;
            rows.iter().map(to_row).collect()
        })
    }

    fn list_keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, Failure> {
        self.with_session(|client, st| {
            client
                .query(&st.keys, &[&namespace.as_bytes(), &i16::from(space.id())])?
                .iter()
                .map(|r| text(r.get(0), "key"))
                .collect()
        })
    }

    fn scan_marks(&self) -> Result<Vec<(ActorKey, Marks)>, Failure> {
        self.with_session(|client, st| {
            client
                .query(&st.scan, &[])?
                .iter()
                .map(|r| {
                    let key = ActorKey::new(text(r.get(0), "namespace")?, text(r.get(1), "key")?);
                    let epoch: Option<i64> = r.get(2);
                    let floor: Option<i64> = r.get(3);
                    let marks = Marks {
                        epoch: epoch.map_or(0, dec),
                        floor: floor.map_or(0, dec),
                    };
                    Ok((key, marks))
                })
                .collect()
        })
    }
}

/// What a schema holds of the store's tables.
enum Tables {
    None,
    Ours,
}

/// Whether a failed CREATE lost a race with another node creating the same tables.
fn is_race(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::DUPLICATE_TABLE
            || *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_SCHEMA
            || *c == SqlState::DUPLICATE_OBJECT
    )
}

fn key_bytes(key: &ActorKey) -> (&[u8], &[u8]) {
    (key.namespace().as_bytes(), key.key().as_bytes())
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String, Failure> {
    String::from_utf8(bytes).map_err(|e| {
        Failure::Corrupt(format!(
            "a stored {what} is not UTF-8 ({e}): the table holds a value this crate never writes"
        ))
    })
}

fn to_row(r: &postgres::Row) -> Result<Row, Failure> {
    let space: i16 = r.get(0);
    let space = u8::try_from(space).map_err(|_| {
        Failure::Corrupt(format!(
            "a stored row has space {space}, which this crate never writes"
        ))
    })?;
    Ok(Row {
        space: Space::new(space),
        id: dec(r.get(1)),
        bytes: r.get(2),
    })
}

/// Locks the marks row of every key of `batch` (in key order) and returns the stored epochs.
fn lock_marks(
    txn: &mut Transaction<'_>,
    st: &Prepared,
    batch: &[ActorCommit],
) -> Result<BTreeMap<ActorKey, u64>, Failure> {
    let keys: BTreeSet<&ActorKey> = batch.iter().map(|c| &*c.key).collect();
    let ns: Vec<&[u8]> = keys.iter().map(|k| k.namespace().as_bytes()).collect();
    let ks: Vec<&[u8]> = keys.iter().map(|k| k.key().as_bytes()).collect();
    txn.query(&st.lock_marks, &[&ns, &ks])?
        .iter()
        .map(|r| {
            let key = ActorKey::new(text(r.get(0), "namespace")?, text(r.get(1), "key")?);
            Ok((key, dec(r.get(2))))
        })
        .collect()
}

/// A key, a space and an id, as a row is addressed.
type Address<'a> = (&'a ActorKey, u8, u64);

/// What a batch leaves behind, as three statements: the ranges it deletes, then the rows it
/// puts, then the marks it raises.
///
/// Writes apply in order, so a put followed by a delete that covers it is dropped, and a
/// delete followed by a put leaves the put: deleting every range first and putting the rows
/// that remain afterwards gives the same rows as applying the writes one by one.
struct Net<'a> {
    deletes: Vec<(&'a ActorKey, u8, u64, u64)>,
    puts: BTreeMap<Address<'a>, &'a [u8]>,
    raises: BTreeMap<&'a ActorKey, Marks>,
}

impl<'a> Net<'a> {
    fn of(batch: &'a [ActorCommit]) -> Net<'a> {
        let mut net = Net {
            deletes: Vec::new(),
            puts: BTreeMap::new(),
            raises: BTreeMap::new(),
        };
        for c in batch {
            for w in &c.writes {
                match w {
                    RowWrite::Put { space, id, bytes } => {
                        net.puts.insert((&c.key, space.id(), *id), bytes);
                    }
                    RowWrite::Delete { space, first, last } => {
                        if first > last {
                            continue;
                        }
                        let covered: Vec<Address<'a>> = net
                            .puts
                            .range((&*c.key, space.id(), *first)..=(&*c.key, space.id(), *last))
                            .map(|(a, _)| *a)
                            .collect();
                        for a in covered {
                            net.puts.remove(&a);
                        }
                        net.deletes.push((&c.key, space.id(), *first, *last));
                    }
                }
            }
            if c.raise != Marks::default() {
                let m = net.raises.entry(&c.key).or_default();
                m.epoch = m.epoch.max(c.raise.epoch);
                m.floor = m.floor.max(c.raise.floor);
            }
        }
        net
    }

    fn apply(&self, txn: &mut Transaction<'_>, st: &Prepared) -> Result<(), Failure> {
        if !self.deletes.is_empty() {
            let d = &self.deletes;
            let ns: Vec<&[u8]> = d.iter().map(|x| x.0.namespace().as_bytes()).collect();
            let ks: Vec<&[u8]> = d.iter().map(|x| x.0.key().as_bytes()).collect();
            let spaces: Vec<i16> = d.iter().map(|x| i16::from(x.1)).collect();
            let lo: Vec<i64> = d.iter().map(|x| enc(x.2)).collect();
            let hi: Vec<i64> = d.iter().map(|x| enc(x.3)).collect();
            txn.execute(&st.delete_rows, &[&ns, &ks, &spaces, &lo, &hi])?;
        }
        if !self.puts.is_empty() {
            let p = &self.puts;
            let ns: Vec<&[u8]> = p.keys().map(|x| x.0.namespace().as_bytes()).collect();
            let ks: Vec<&[u8]> = p.keys().map(|x| x.0.key().as_bytes()).collect();
            let spaces: Vec<i16> = p.keys().map(|x| i16::from(x.1)).collect();
            let ids: Vec<i64> = p.keys().map(|x| enc(x.2)).collect();
            let bytes: Vec<&[u8]> = p.values().copied().collect();
            txn.execute(&st.put_rows, &[&ns, &ks, &spaces, &ids, &bytes])?;
        }
        if !self.raises.is_empty() {
            let r = &self.raises;
            let ns: Vec<&[u8]> = r.keys().map(|k| k.namespace().as_bytes()).collect();
            let ks: Vec<&[u8]> = r.keys().map(|k| k.key().as_bytes()).collect();
            let epochs: Vec<i64> = r.values().map(|m| enc(m.epoch)).collect();
            let floors: Vec<i64> = r.values().map(|m| enc(m.floor)).collect();
            txn.execute(&st.raise_marks, &[&ns, &ks, &epochs, &floors])?;
        }
        Ok(())
    }
}

impl Store for PostgresStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.run(|s| s.load(key, spaces))
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        // An empty batch changes nothing; it is not worth a round trip.
        if batch.is_empty() {
            return Ok(());
        }
        self.run(|s| s.write(batch))
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.run(|s| s.read_rows(key, space, ids))
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.run(|s| s.list_keys(namespace, space))
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.run(|s| s.scan_marks())
    }
}
