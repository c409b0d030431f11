//! Test actors and backends shared by the end-to-end tests.
#![allow(dead_code, unused_macros)]

/// Runs each named `async fn(Backend)` as a test against the memory store, redb, SQLite and
/// PostgreSQL:
/// one behaviour suite for every backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::memory()).await })*
        }
        mod redb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::redb()).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::sqlite()).await })*
        }
        // Skipped (with a note) when no PostgreSQL server can be started; CI requires it.
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::common::Backend::postgres() {
                    super::$name(b).await
                }
            })*
        }
    };
}

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef, RpcReplyPort, SpawnErr};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeError, LoadError, Loaded, Marks, MemoryStore, OpId, Outcome,
    Pending, Persistent, PersistentActor, PostgresOptions, PostgresStore, RedbStore, RetryPolicy,
    Row, Space, SqliteStore, Start, Storage, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};

/// The ledger's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub total: i64,
    pub entries: u32,
}

/// A side effect: tell someone the new total. `keep` ops stay until confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub total: i64,
    pub keep: bool,
}

pub enum LedgerMsg {
    /// Adds to the total and pushes one `Notify`.
    Add(i64, RpcReplyPort<i64>),
    /// Adds to the total, pushes a `Notify` kept until confirmed.
    AddKept(i64, RpcReplyPort<i64>),
    /// Changes nothing.
    Peek(RpcReplyPort<i64>),
    /// Changes the state, then fails.
    AddThenFail(i64, RpcReplyPort<i64>),
    /// Confirms a pending op by sequence number.
    Confirm(u64, RpcReplyPort<bool>),
    /// Re-performs every pending op.
    Resume(RpcReplyPort<usize>),
    /// The pending op sequence numbers.
    Pending(RpcReplyPort<Vec<u64>>),
}

/// What the actor did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Performed(OpId, Notify),
    Handled,
}

/// The events of one ledger incarnation.
pub type EventLog = Arc<Mutex<Vec<Event>>>;

#[derive(Clone, Default, Persistent)]
#[persistent(name = "ledger")]
pub struct Ledger {
    pub log: EventLog,
    /// While set, `perform` never returns (the process "dies" in the crash window).
    pub hang: Arc<AtomicBool>,
}

impl Ledger {
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    /// The operations performed, in order.
    pub fn performed(&self) -> Vec<(OpId, Notify)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Performed(id, n) => Some((id, n)),
                Event::Handled => None,
            })
            .collect()
    }
}

impl PersistentActor for Ledger {
    type Msg = LedgerMsg;
    type State = Book;
    type Op = Notify;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Book, ractor::ActorProcessingErr> {
        Ok(Book::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: LedgerMsg,
        book: &mut Book,
    ) -> Result<(), ractor::ActorProcessingErr> {
        self.log.lock().unwrap().push(Event::Handled);
        match msg {
            LedgerMsg::Add(n, reply) => {
                book.total += n;
                book.entries += 1;
                tx.push(Notify {
                    total: book.total,
                    keep: false,
                })?;
                tx.reply(reply, book.total);
            }
            LedgerMsg::AddKept(n, reply) => {
                book.total += n;
                book.entries += 1;
                tx.push(Notify {
                    total: book.total,
                    keep: true,
                })?;
                tx.reply(reply, book.total);
            }
            LedgerMsg::Peek(reply) => tx.reply(reply, book.total),
            LedgerMsg::AddThenFail(n, reply) => {
                book.total += n;
                tx.push(Notify {
                    total: book.total,
                    keep: false,
                })?;
                tx.reply(reply, book.total);
                return Err("the handler failed on purpose".into());
            }
            LedgerMsg::Confirm(seq, reply) => {
                let mut found = false;
                tx.confirm_where(|p| {
                    let hit = p.id().seq() == seq;
                    found |= hit;
                    hit
                });
                tx.reply(reply, found);
            }
            LedgerMsg::Resume(reply) => {
                let n = tx.resume(|_| true);
                tx.reply(reply, n);
            }
            LedgerMsg::Pending(reply) => {
                let seqs = tx.pending().map(|p| p.id().seq()).collect();
                tx.reply(reply, seqs);
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Notify>,
        _: &Book,
    ) -> Result<Outcome, ractor::ActorProcessingErr> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.log
            .lock()
            .unwrap()
            .push(Event::Performed(op.id().clone(), op.op().clone()));
        Ok(if op.op().keep {
            Outcome::KeepUntilConfirmed
        } else {
            Outcome::Done
        })
    }
}

pub async fn spawn_ledger(storage: &Storage, key: &str, ledger: Ledger) -> ActorRef<LedgerMsg> {
    let (r, _) = Actor::spawn(None, ledger, Start::new(storage, key, ()))
        .await
        .expect("spawn the ledger");
    r
}

pub fn ledger_key(key: &str) -> ActorKey {
    ActorKey::new(<Ledger as Persistent>::NAME, key)
}

/// A backend the behaviour suite runs against: `open` is a fresh process's view of it.
pub enum Backend {
    Memory(MemoryStore),
    Redb(tempfile::TempDir, PathBuf),
    Sqlite(tempfile::TempDir, PathBuf),
    /// A schema of its own on the shared test server.
    Postgres(Box<PostgresOptions>),
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory(MemoryStore::new())
    }

    pub fn redb() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        Backend::Redb(dir, path)
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.sqlite");
        Backend::Sqlite(dir, path)
    }

    /// A fresh schema on the shared PostgreSQL test server; `None` (the test skips) when there
    /// is no server.
    pub fn postgres() -> Option<Self> {
        persist_postgres::TestCluster::shared().map(|c| Backend::Postgres(Box::new(c.options())))
    }

    /// Opens the store (again), wrapped so a test can count and fail commits.
    pub fn open(&self, faults: &Faults) -> Storage {
        match self {
            Backend::Memory(m) => Storage::new(faults.wrap(m.clone())),
            Backend::Redb(_, path) => {
                Storage::new(faults.wrap(RedbStore::open(path).expect("open redb")))
            }
            Backend::Sqlite(_, path) => {
                Storage::new(faults.wrap(SqliteStore::open(path).expect("open sqlite")))
            }
            Backend::Postgres(o) => Storage::new(
                faults.wrap(PostgresStore::open((**o).clone()).expect("open postgres")),
            ),
        }
    }

    fn with_store<T>(&self, f: impl FnOnce(&dyn Store) -> T) -> T {
        match self {
            Backend::Memory(m) => f(m),
            Backend::Redb(_, path) => f(&RedbStore::open(path).expect("open redb")),
            Backend::Sqlite(_, path) => f(&SqliteStore::open(path).expect("open sqlite")),
            Backend::Postgres(o) => f(&PostgresStore::open((**o).clone()).expect("open postgres")),
        }
    }

    /// Reads an actor's record straight from the store (takes an epoch, writes nothing else).
    /// Only while no `Storage` has the store open.
    pub fn raw(&self, key: &ActorKey) -> Loaded {
        self.with_store(|s| s.open_actor(key, &Space::RECORD).unwrap())
    }

    /// Stores `bytes` as the snapshot of `key`, bypassing the runtime (to plant damage).
    pub fn plant_snapshot(&self, key: &ActorKey, bytes: Vec<u8>) {
        self.with_store(|s| {
            let epoch = s.open_actor(key, &[]).unwrap().epoch;
            s.commit(&[ActorCommit::new(key.clone(), epoch).put(Space::SNAPSHOT, 0, bytes)])
                .unwrap()
        })
    }
}

impl Backend {
    /// Stores `bytes` as pending operation `seq` of `key`, bypassing the runtime.
    pub fn plant_op(&self, key: &ActorKey, seq: u64, bytes: Vec<u8>) {
        self.with_store(|s| {
            let epoch = s.open_actor(key, &[]).unwrap().epoch;
            s.commit(&[ActorCommit::new(key.clone(), epoch).put(Space::OPS, seq, bytes)])
                .unwrap()
        })
    }
}

/// Counts commits and fails them on request.
#[derive(Clone, Default)]
pub struct Faults {
    pub commits: Arc<AtomicUsize>,
    pub fail_commits: Arc<AtomicBool>,
    /// When set, the next commit announces itself and waits to be released.
    pub gate: Arc<Mutex<Option<Gate>>>,
}

/// Holds one commit inside the store until the test releases it.
pub struct Gate {
    pub entered: std::sync::mpsc::Sender<()>,
    pub release: std::sync::mpsc::Receiver<()>,
}

impl Faults {
    pub fn wrap<S: Store>(&self, inner: S) -> Faulty<S> {
        Faulty {
            inner,
            faults: self.clone(),
        }
    }

    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

pub struct Faulty<S> {
    inner: S,
    faults: Faults,
}

impl<S: Store> Store for Faulty<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        // Decided on entry, so a test can fail the commits queued behind a held one.
        let fail = self.faults.fail_commits.load(Ordering::SeqCst);
        let gate = self.faults.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.entered.send(()).unwrap();
            gate.release.recv().unwrap();
        }
        if fail {
            return Err(StoreError::backend(
                self.inner.name(),
                "injected write failure",
            ));
        }
        self.faults.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.read(key, space, ids)
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.inner.keys(namespace, space)
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.inner.scan()
    }
}

/// The decode error a spawn failed with; any other failure fails the test.
pub fn decode_error(err: SpawnErr) -> DecodeError {
    let SpawnErr::StartupFailed(err) = err else {
        panic!("expected a startup failure, got {err}");
    };
    match err.downcast::<LoadError>().map(|e| *e) {
        Ok(LoadError::Decode(e)) => e,
        Ok(other) => panic!("expected a decode error, got {other}"),
        Err(other) => panic!("startup failed with another error: {other}"),
    }
}

/// Retries at once, and gives up after `attempts` failed attempts.
pub fn eager(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(Duration::ZERO, Duration::ZERO, attempts).unwrap()
}

/// Never retries on a timer (an hour), and gives up after `attempts` failed attempts.
pub fn patient(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        attempts,
    )
    .unwrap()
}

/// A copy, in `dir`, of the golden store of format 1, written before stores kept a sequence
/// floor (opening writes to a redb file, so each test works on a copy).
pub fn golden_copy(dir: &tempfile::TempDir) -> PathBuf {
    let copy = dir.path().join("format1.redb");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/format1.redb");
    std::fs::copy(golden, &copy).expect("tests/golden/format1.redb");
    copy
}
