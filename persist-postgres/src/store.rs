//! [`PostgresStore`]: the [`Store`] seam on one PostgreSQL connection.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use persist_core::{
    ActorCommit, ActorKey, Loaded, Marks, Row, RowWrite, Space, Store, StoreError, check_epochs,
};
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use crate::error::{Failure, PostgresError, describe};
use crate::options::PostgresOptions;
use crate::schema::{self, MARKER, Schema, dec, enc};

/// The version of the tables this build writes and reads; a newer one is refused.
pub const SCHEMA_VERSION: u32 = schema::VERSION;

/// The longest actor key (namespace and key together, in bytes) the store takes: the tables'
/// primary keys hold the key, and an index entry cannot exceed about 2.7 KB.
pub const MAX_KEY_BYTES: usize = 2_000;

/// How many bytes of rows one statement puts at most: the protocol caps a message at 1 GiB.
const PUT_CHUNK: usize = 64 << 20;

/// How much longer than the statement timeout a call may go without an answer before the
/// client gives up on the connection (the server's own timeout should fire first).
const CALL_MARGIN: Duration = Duration::from_secs(10);

/// A store in a PostgreSQL database that many nodes (processes) may share.
///
/// The store holds one connection, used by one thread at a time (the storage's committer,
/// or an actor writing its commit while the store is idle). Each commit is one transaction
/// that locks the marks rows of its actors in key order and checks their epochs before it
/// writes; it is durable when [`Store::commit`] returns (the session runs with
/// `synchronous_commit = on`, which the open checks). A lost connection, a server error or a
/// server that stops answering fails the call in flight with [`StoreError::Interrupted`] (a
/// commit may then have landed or not: a later load shows all of its batch or none of it);
/// the next call connects again, with backoff.
pub struct PostgresStore {
    name: String,
    options: PostgresOptions,
    schema: Schema,
    /// The client's own runtime (one thread: the caller's); taken by `Drop`.
    rt: Option<Runtime>,
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
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let rt = self.rt.take();
        // A runtime must not be dropped on a thread that drives another one.
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                scope.spawn(move || drop((session, rt)));
            });
        } else {
            drop((session, rt));
        }
    }
}

/// A live connection, the task that drives it, and its prepared statements.
struct Session {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
    st: Prepared,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Prepared {
    lock_marks: Statement,
    create_marks: Statement,
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
    ///   missing), with the format marker and [`SCHEMA_VERSION`]; with
    ///   [`PostgresOptions::existing_only`], refused instead ([`PostgresError::NoStore`]).
    /// - All three: the marker, the version and every column are checked; a table of another
    ///   application ([`PostgresError::Foreign`]), a newer version
    ///   ([`PostgresError::NewerSchema`]) or only some of the tables
    ///   ([`PostgresError::Incomplete`]) is refused, and nothing is written.
    /// - A server that cannot be reached, or refuses the password, is a typed error naming
    ///   the server (never the password). So is one whose `fsync` is off, or a session that
    ///   does not keep `synchronous_commit = on`.
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let name = match options.checked() {
            Ok((schema, prefix)) => format!("postgres://{} {schema}.{prefix}*", options.server()),
            Err(e) => return Err(StoreError::backend(&options.server(), e)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::backend(&name, e))?;
        let (schema, prefix) = options.checked().expect("checked above");
        let store = PostgresStore {
            schema: Schema::new(schema, prefix),
            name,
            options,
            rt: Some(rt),
            session: Mutex::new(None),
        };
        store.run(|s| {
            let (mut client, driver) = s.connect_once()?;
            s.block(s.prepare_tables(&mut client))?;
            let st = s.block(s.prepare(&client))?;
            *s.session() = Some(Session { client, driver, st });
            Ok(())
        })?;
        Ok(store)
    }

    /// Closes the connection.
    pub fn close(self) -> Result<(), StoreError> {
        drop(self.session().take());
        Ok(())
    }

    fn session(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("taken only by drop")
    }

    /// Runs `body` where the client's runtime may block: on this thread, or on a scoped
    /// thread when this one drives a tokio runtime (a `block_on` would panic there). Names the
    /// store in the error.
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

    /// The longest a call may go without finishing.
    fn call_limit(&self) -> Duration {
        self.options.statement_timeout + CALL_MARGIN
    }

    /// Runs `fut` on the client's runtime, failing it if it takes longer than a call may.
    fn block<T>(&self, fut: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        let limit = self.call_limit();
        self.rt().block_on(async {
            tokio::time::timeout(limit, fut)
                .await
                .unwrap_or(Err(Failure::Stalled(limit)))
        })
    }

    /// Runs `f` on the live session, connecting (again) first if there is none. A failure
    /// that closed the connection, or a call that stalled, drops it, so the next call
    /// connects again. A transaction whose BEGIN found the connection closed (the server
    /// ended it while idle) ran nothing: it runs once more on a new connection.
    fn with_session<T>(
        &self,
        f: impl AsyncFn(&mut Client, &Prepared) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut guard = self.session();
        for attempt in 0..2 {
            if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
                *guard = None;
                let (client, driver) = self.reconnect().map_err(Failure::lost)?;
                let st = self.block(self.prepare(&client))?;
                *guard = Some(Session { client, driver, st });
            }
            let session = guard.as_mut().expect("connected above");
            let result = self.block(f(&mut session.client, &session.st));
            let lost = session.client.is_closed()
                || matches!(&result, Err(Failure::Stalled(_)))
                || matches!(&result, Err(Failure::Begin(e)) if connection_gone(e));
            if lost {
                *guard = None;
            }
            match result {
                Err(Failure::Begin(_)) if lost && attempt == 0 => continue,
                Err(Failure::Begin(e)) => return Err(Failure::Pg(e)),
                result => return result,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Connects, trying again with backoff (20 ms doubling to 1 s) for up to the options'
    /// `reconnect_for`.
    fn reconnect(&self) -> Result<(Client, tokio::task::JoinHandle<()>), Failure> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.connect_once() {
                Ok(connected) => return Ok(connected),
                Err(_) if started.elapsed() + pause < self.options.reconnect_for => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection attempt, the session set up for the store, all within the connect
    /// timeout (the client's own covers only the TCP connect, not the server's handshake).
    fn connect_once(&self) -> Result<(Client, tokio::task::JoinHandle<()>), Failure> {
        let limit = self.options.connect_timeout;
        let server = self.options.server();
        self.rt().block_on(async {
            tokio::time::timeout(limit, self.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(PostgresError::Unreachable {
                        server,
                        reason: format!("no answer within the connect timeout ({limit:?})"),
                    }
                    .into())
                })
        })
    }

    async fn connect(&self) -> Result<(Client, tokio::task::JoinHandle<()>), Failure> {
        let mut config = self.options.config.clone();
        config.connect_timeout(self.options.connect_timeout);
        // A server that vanished without closing the connection fails the call instead of
        // hanging it.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let server = self.options.server();
        let user = self.options.config.get_user().unwrap_or("?").to_owned();
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            let auth = matches!(
                e.code(),
                Some(c) if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            );
            if auth {
                Failure::Open(PostgresError::Authentication {
                    server: server.clone(),
                    user,
                    reason: describe(&e),
                })
            } else if e.as_db_error().is_some() {
                Failure::Pg(e)
            } else {
                Failure::Open(PostgresError::Unreachable {
                    server: server.clone(),
                    reason: describe(&e),
                })
            }
        })?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let timeout = self.options.statement_timeout.as_millis().max(1);
        // Durable when COMMIT returns, read committed (the fence relies on row locks, not
        // on snapshots), no statement waits forever, and a transaction left open by a
        // client that vanished does not hold its locks for long.
        client
            .batch_execute(&format!(
                "SET synchronous_commit = on; \
                 SET default_transaction_isolation = 'read committed'; \
                 SET statement_timeout = {timeout}; \
                 SET idle_in_transaction_session_timeout = {timeout}"
            ))
            .await?;
        // Checked, not assumed: a connection pooler in transaction mode drops a session's
        // SET, and a server with fsync off acknowledges commits it may lose.
        for setting in ["fsync", "synchronous_commit"] {
            let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
            let value: String = col(&row, 0, setting)?;
            if value != "on" {
                return Err(PostgresError::NotDurable {
                    setting,
                    value,
                    expected: "on",
                }
                .into());
            }
        }
        Ok((client, driver))
    }

    async fn prepare(&self, client: &Client) -> Result<Prepared, Failure> {
        let s = &self.schema;
        Ok(Prepared {
            lock_marks: client.prepare(&s.lock_marks).await?,
            create_marks: client.prepare(&s.create_marks).await?,
            open: client.prepare(&s.open).await?,
            load_rows: client.prepare(&s.load_rows).await?,
            delete_rows: client.prepare(&s.delete_rows).await?,
            put_rows: client.prepare(&s.put_rows).await?,
            raise_marks: client.prepare(&s.raise_marks).await?,
            space_rows: client.prepare(&s.space_rows).await?,
            key_rows: client.prepare(&s.key_rows).await?,
            keys: client.prepare(&s.keys).await?,
            scan: client.prepare(&s.scan).await?,
        })
    }

    /// Creates the tables if none exists; checks them if all do; refuses anything else.
    async fn prepare_tables(&self, client: &mut Client) -> Result<(), Failure> {
        // Two nodes opening a new store at once may both try to create it: the loser's
        // CREATE fails, and it checks what the winner made.
        for attempt in 0..3 {
            match self.inspect(client).await? {
                Tables::Ours => return Ok(()),
                Tables::None if self.options.existing_only => {
                    return Err(Failure::Open(PostgresError::NoStore {
                        schema: self.schema.schema.clone(),
                        prefix: self.options.prefix.clone(),
                    }));
                }
                Tables::None => {
                    // Only a missing schema is created: CREATE SCHEMA IF NOT EXISTS needs the
                    // CREATE privilege on the database even when the schema exists.
                    let exists = !client
                        .query(
                            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
                            &[&self.schema.schema],
                        )
                        .await?
                        .is_empty();
                    let created = async {
                        let txn = client.transaction().await?;
                        if !exists {
                            txn.batch_execute(&format!(
                                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                                self.schema.schema
                            ))
                            .await?;
                        }
                        txn.batch_execute(&self.schema.create).await?;
                        txn.commit().await
                    };
                    match created.await {
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
    async fn inspect(&self, client: &Client) -> Result<Tables, Failure> {
        let s = &self.schema;
        let rows = client
            .query(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
                 FROM information_schema.columns WHERE table_schema = $1 AND table_name = ANY($2) \
                 ORDER BY table_name, ordinal_position",
                &[&s.schema, &s.tables.to_vec()],
            )
            .await?;
        let mut found: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for r in &rows {
            let table: String = col(r, 0, "table name")?;
            let column: String = col(r, 1, "column name")?;
            let kind: String = col(r, 2, "column type")?;
            let nullable: String = col(r, 3, "column nullability")?;
            let kind = if nullable == "NO" {
                kind
            } else {
                format!("{kind} (nullable)")
            };
            found.entry(table).or_default().push((column, kind));
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
        let meta = client.query(&s.get_meta, &[]).await?;
        let mut entries = BTreeMap::new();
        for r in &meta {
            entries.insert(
                col::<String>(r, 0, "meta name")?,
                col::<String>(r, 1, "meta value")?,
            );
        }
        let table = format!("{}.{}", s.schema, s.tables[0]);
        if entries.get("format").map(String::as_str) != Some(MARKER) {
            return Err(PostgresError::Foreign {
                table,
                detail: format!(
                    "its format marker is {:?}, expected {MARKER:?}",
                    entries.get("format")
                ),
            }
            .into());
        }
        let version = entries.get("schema_version");
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
        if key.namespace().len() + key.key().len() > MAX_KEY_BYTES {
            return Err(StoreError::Unsupported {
                store: self.name.clone(),
                operation: "an actor key (namespace and key) over 2,000 bytes",
            }
            .into());
        }
        let mut ids: Vec<i16> = spaces.iter().map(|s| i16::from(s.id())).collect();
        ids.sort_unstable();
        ids.dedup();
        let (ns, k) = key_bytes(key);
        self.with_session(async |client, st| {
            let txn = begin(client).await?;
            let marks = match txn.query_one(&st.open, &[&ns, &k, &enc(1), &enc(0)]).await {
                Err(e) if e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) => {
                    return Err(Failure::Corrupt(format!(
                        "the writer epoch of `{key}` is exhausted"
                    )));
                }
                marks => marks?,
            };
            let epoch = dec(col(&marks, 0, "epoch")?);
            let floor = dec(col(&marks, 1, "floor")?);
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                let found = txn.query(&st.load_rows, &[&ns, &k, &ids]).await?;
                found
                    .iter()
                    .map(to_row)
                    .collect::<Result<Vec<Row>, Failure>>()?
            };
            txn.commit().await?;
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
        let keys: BTreeSet<&ActorKey> = batch.iter().map(|c| &*c.key).collect();
        self.with_session(async |client, st| {
            let client = &*client;
            // Two round trips when every key has its marks row: BEGIN with the locking read,
            // then the writes with COMMIT (tokio-postgres pipelines requests sent together,
            // in the order they are first polled).
            let (begun, locked) =
                tokio::join!(client.batch_execute("BEGIN"), lock(client, st, &keys));
            begun.map_err(Failure::Begin)?;
            let written = async {
                let stored = lock_missing(client, st, &keys, locked?).await?;
                let fences = check_epochs(batch, |key| {
                    Ok(stored.get(key).copied().unwrap_or_default())
                })?;
                if !fences.is_empty() {
                    return Err(StoreError::Fenced(fences).into());
                }
                net.apply_and_commit(client, st).await
            }
            .await;
            if written.is_err() && !client.is_closed() {
                // Nothing of it is visible; a ROLLBACK outside a transaction (after a COMMIT
                // the server turned into one) only warns.
                client.batch_execute("ROLLBACK").await?;
            }
            written
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
        self.with_session(async |client, st| {
            let rows = match space {
                Some(s) => {
                    client
                        .query(&st.space_rows, &[&ns, &k, &i16::from(s.id()), &lo, &hi])
                        .await
                }
                None => client.query(&st.key_rows, &[&ns, &k, &lo, &hi]).await,
            }?;
            rows.iter().map(to_row).collect()
        })
    }

    fn list_keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, Failure> {
        self.with_session(async |client, st| {
            client
                .query(&st.keys, &[&namespace.as_bytes(), &i16::from(space.id())])
                .await?
                .iter()
                .map(|r| text(col(r, 0, "key")?, "key"))
                .collect()
        })
    }

    fn scan_marks(&self) -> Result<Vec<(ActorKey, Marks)>, Failure> {
        self.with_session(async |client, st| {
            client
                .query(&st.scan, &[])
                .await?
                .iter()
                .map(|r| {
                    let key = ActorKey::new(
                        text(col(r, 0, "namespace")?, "namespace")?,
                        text(col(r, 1, "key")?, "key")?,
                    );
                    // A key with rows and no marks row has marks 0; a marks row holds both.
                    let has_marks: bool = col(r, 4, "marks row")?;
                    let marks = if has_marks {
                        Marks {
                            epoch: dec(col(r, 2, "epoch")?),
                            floor: dec(col(r, 3, "floor")?),
                        }
                    } else {
                        Marks::default()
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

/// Starts a transaction; a failure here ran nothing of it.
async fn begin(client: &mut Client) -> Result<Transaction<'_>, Failure> {
    client.transaction().await.map_err(Failure::Begin)
}

/// Whether `e` says the connection is gone: closed, an I/O error, or the server ending the
/// session (administrator command, crash, shutdown; SQLSTATE class 08).
fn connection_gone(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => {
            let c = c.code();
            c.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&c)
        }
        None => true,
    }
}

/// Whether a failed CREATE lost a race with another node creating the same tables.
fn is_race(e: &tokio_postgres::Error) -> bool {
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

/// Column `i` of `r`, or a typed error for a value this crate never writes there (a NULL, a
/// value of another type).
fn col<'a, T: FromSql<'a>>(r: &'a tokio_postgres::Row, i: usize, what: &str) -> Result<T, Failure> {
    r.try_get(i).map_err(|e| {
        Failure::Corrupt(format!(
            "a stored {what} is not what this crate writes ({}): the table was changed by hand",
            describe(&e)
        ))
    })
}

fn text(bytes: Vec<u8>, what: &str) -> Result<String, Failure> {
    String::from_utf8(bytes).map_err(|e| {
        Failure::Corrupt(format!(
            "a stored {what} is not UTF-8 ({e}): the table holds a value this crate never writes"
        ))
    })
}

fn to_row(r: &tokio_postgres::Row) -> Result<Row, Failure> {
    let space: i16 = col(r, 0, "space")?;
    let space = u8::try_from(space).map_err(|_| {
        Failure::Corrupt(format!(
            "a stored row has space {space}, which this crate never writes"
        ))
    })?;
    Ok(Row {
        space: Space::new(space),
        id: dec(col(r, 1, "row id")?),
        bytes: col(r, 2, "row")?,
    })
}

/// Completes `locked` (the marks rows of `keys` found and locked): a key without a marks row
/// gets one at epoch 0, locked too. Nothing to do when every key has its row (any key that
/// was ever loaded); two more round trips when some have none.
async fn lock_missing(
    client: &Client,
    st: &Prepared,
    keys: &BTreeSet<&ActorKey>,
    mut locked: BTreeMap<ActorKey, u64>,
) -> Result<BTreeMap<ActorKey, u64>, Failure> {
    let missing: BTreeSet<&ActorKey> = keys
        .iter()
        .copied()
        .filter(|k| !locked.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let ns: Vec<&[u8]> = missing.iter().map(|k| k.namespace().as_bytes()).collect();
        let ks: Vec<&[u8]> = missing.iter().map(|k| k.key().as_bytes()).collect();
        client
            .execute(&st.create_marks, &[&ns, &ks, &enc(0)])
            .await?;
        locked.extend(lock(client, st, &missing).await?);
    }
    Ok(locked)
}

/// `SELECT ... FOR UPDATE` of the marks rows of `keys`.
async fn lock(
    client: &Client,
    st: &Prepared,
    keys: &BTreeSet<&ActorKey>,
) -> Result<BTreeMap<ActorKey, u64>, Failure> {
    let ns: Vec<&[u8]> = keys.iter().map(|k| k.namespace().as_bytes()).collect();
    let ks: Vec<&[u8]> = keys.iter().map(|k| k.key().as_bytes()).collect();
    client
        .query(&st.lock_marks, &[&ns, &ks])
        .await?
        .iter()
        .map(|r| {
            let key = ActorKey::new(
                text(col(r, 0, "namespace")?, "namespace")?,
                text(col(r, 1, "key")?, "key")?,
            );
            Ok((key, dec(col(r, 2, "epoch")?)))
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

    /// Sends the batch's statements and COMMIT together, in this order, and waits for all
    /// of them: one round trip. If any statement fails, the server turns the COMMIT into a
    /// ROLLBACK, and the failure is returned.
    async fn apply_and_commit(&self, client: &Client, st: &Prepared) -> Result<(), Failure> {
        let d = &self.deletes;
        let d_ns: Vec<&[u8]> = d.iter().map(|x| x.0.namespace().as_bytes()).collect();
        let d_ks: Vec<&[u8]> = d.iter().map(|x| x.0.key().as_bytes()).collect();
        let d_spaces: Vec<i16> = d.iter().map(|x| i16::from(x.1)).collect();
        let d_lo: Vec<i64> = d.iter().map(|x| enc(x.2)).collect();
        let d_hi: Vec<i64> = d.iter().map(|x| enc(x.3)).collect();
        // In statements of at most PUT_CHUNK bytes (and at least one row each).
        let puts: Vec<(&Address<'a>, &&[u8])> = self.puts.iter().collect();
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < puts.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < puts.len() && (end == start || bytes + puts[end].1.len() <= PUT_CHUNK) {
                bytes += puts[end].1.len();
                end += 1;
            }
            let p = &puts[start..end];
            chunks.push((
                p.iter()
                    .map(|x| x.0.0.namespace().as_bytes())
                    .collect::<Vec<&[u8]>>(),
                p.iter()
                    .map(|x| x.0.0.key().as_bytes())
                    .collect::<Vec<&[u8]>>(),
                p.iter().map(|x| i16::from(x.0.1)).collect::<Vec<i16>>(),
                p.iter().map(|x| enc(x.0.2)).collect::<Vec<i64>>(),
                p.iter().map(|x| *x.1).collect::<Vec<&[u8]>>(),
            ));
            start = end;
        }
        let r = &self.raises;
        let r_ns: Vec<&[u8]> = r.keys().map(|k| k.namespace().as_bytes()).collect();
        let r_ks: Vec<&[u8]> = r.keys().map(|k| k.key().as_bytes()).collect();
        let r_epochs: Vec<i64> = r.values().map(|m| enc(m.epoch)).collect();
        let r_floors: Vec<i64> = r.values().map(|m| enc(m.floor)).collect();

        type Sent<'f> = std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'f>>;
        let mut sent: Vec<Sent<'_>> = Vec::new();
        if !d.is_empty() {
            sent.push(Box::pin(async {
                client
                    .execute(&st.delete_rows, &[&d_ns, &d_ks, &d_spaces, &d_lo, &d_hi])
                    .await?;
                Ok(())
            }));
        }
        for (ns, ks, spaces, ids, rows) in &chunks {
            sent.push(Box::pin(async move {
                client
                    .execute(&st.put_rows, &[ns, ks, spaces, ids, rows])
                    .await?;
                Ok(())
            }));
        }
        if !r.is_empty() {
            sent.push(Box::pin(async {
                client
                    .execute(&st.raise_marks, &[&r_ns, &r_ks, &r_epochs, &r_floors])
                    .await?;
                Ok(())
            }));
        }
        sent.push(Box::pin(async {
            client.batch_execute("COMMIT").await?;
            Ok(())
        }));
        // `join_all` polls them first in order, which is the order they are sent in.
        futures::future::join_all(sent)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, Failure>>()?;
        Ok(())
    }
}

impl Store for PostgresStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_key_len(&self) -> Option<usize> {
        Some(MAX_KEY_BYTES)
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
