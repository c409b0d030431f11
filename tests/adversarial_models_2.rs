#![allow(clippy::type_complexity, clippy::result_large_err)]
//! Adversarial tests of the state models, second round: event-sourced actors and durable maps
//! combined with the rest of the runtime (idempotent requests, letters between actors,
//! retries and dead letters, kept operations, supervision, timers, the registry), group
//! commit, two `Storage`s on one store (two nodes), switching retention and snapshot
//! intervals, newer schemas, and maps at scale. Each test checks one promise and is named
//! after it; a test that fails on the code under review documents a bug (see the comment
//! above it).

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[macro_use]
mod common;

use common::{Backend, Gate};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, DecodeReason, Entities, EventSourced, Fired, Inbound,
    JournalError, LoadError, Loaded, Marks, MemoryStore, Once, Outcome, Pending, PersistentActor,
    PostgresStore, RedbStore, Redelivery, Retention, RetryPolicy, Row, Settled, Settlement, Space,
    SqliteStore, Start, Storage, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A deadline that turns "never" into a failure instead of a hang (not a timing assertion).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not happen within two minutes"))
}

/// Runs each named `async fn(Backend)` against the backends where two `Storage`s (two nodes)
/// can share one store: memory, SQLite and PostgreSQL (skipped when no server can start).
macro_rules! on_shared_backends {
    ($($name:ident),* $(,)?) => {
        mod shared_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::common::Backend::memory()).await })*
        }
        mod shared_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::common::Backend::sqlite()).await })*
        }
        mod shared_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(b) = super::common::Backend::postgres() {
                    super::$name(b).await
                }
            })*
        }
    };
}

// ---- A store wrapper the tests steer ----------------------------------------------------------

/// What a test can do to the store under a `Storage`.
#[derive(Clone, Default)]
struct Knobs {
    /// Actor commits written.
    commits: Arc<AtomicUsize>,
    /// Row writes (puts and range deletes) of the commits written.
    rows: Arc<AtomicUsize>,
    /// When set, the next read of a journal announces itself and waits to be released.
    read_gate: Arc<Mutex<Option<Gate>>>,
    /// When set, the next commit announces itself and waits to be released.
    commit_gate: Arc<Mutex<Option<Gate>>>,
    /// When set, the next batch holding a commit of this key is written and then reported
    /// failed (an answer lost on the way back).
    lose_for: Arc<Mutex<Option<ActorKey>>>,
    /// When set, the next batch holding a commit of this key fails before anything is
    /// written.
    fail_for: Arc<Mutex<Option<ActorKey>>>,
    /// The keys of every batch handed to the store, in order.
    batches: Arc<Mutex<Vec<Vec<String>>>>,
}

/// The two ends of a gate, for the test.
struct Held {
    entered: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

impl Held {
    /// Waits (on a blocking thread, with a deadline) until the gated call is inside the store.
    async fn entered(self) -> std::sync::mpsc::Sender<()> {
        let Held { entered, release } = self;
        within(
            "the gated call enters the store",
            tokio::task::spawn_blocking(move || entered.recv()),
        )
        .await
        .unwrap()
        .expect("the gate was taken");
        release
    }
}

fn gate(slot: &Mutex<Option<Gate>>) -> Held {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *slot.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    Held { entered, release }
}

impl Knobs {
    fn gate_reads(&self) -> Held {
        gate(&self.read_gate)
    }
    fn gate_commits(&self) -> Held {
        gate(&self.commit_gate)
    }
    fn rows(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }
}

struct Probe<S> {
    inner: S,
    knobs: Knobs,
}

fn pass(gate: Option<Gate>) {
    if let Some(gate) = gate {
        let _ = gate.entered.send(());
        let _ = gate.release.recv();
    }
}

impl<S: Store> Store for Probe<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let keys = batch.iter().map(|c| c.key.key().to_owned()).collect();
        self.knobs.batches.lock().unwrap().push(keys);
        pass(self.knobs.commit_gate.lock().unwrap().take());
        {
            let mut fail = self.knobs.fail_for.lock().unwrap();
            if fail
                .as_ref()
                .is_some_and(|k| batch.iter().any(|c| *c.key == *k))
            {
                *fail = None;
                return Err(StoreError::backend(
                    self.inner.name(),
                    "injected write failure",
                ));
            }
        }
        self.inner.commit(batch)?;
        self.knobs.commits.fetch_add(batch.len(), Ordering::SeqCst);
        let rows: usize = batch.iter().map(|c| c.writes.len()).sum();
        self.knobs.rows.fetch_add(rows, Ordering::SeqCst);
        let mut lose = self.knobs.lose_for.lock().unwrap();
        if lose
            .as_ref()
            .is_some_and(|k| batch.iter().any(|c| *c.key == *k))
        {
            *lose = None;
            return Err(StoreError::backend(
                self.inner.name(),
                "the answer was lost",
            ));
        }
        Ok(())
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        if space == Some(Space::JOURNAL) {
            pass(self.knobs.read_gate.lock().unwrap().take());
        }
        self.inner.read(key, space, ids)
    }
    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.inner.keys(namespace, space)
    }
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.inner.scan()
    }
    fn max_key_len(&self) -> Option<usize> {
        self.inner.max_key_len()
    }
}

/// Opens the backend (again) through a probe: a fresh node's view of the store.
fn open(backend: &Backend, knobs: &Knobs) -> Storage {
    let knobs = knobs.clone();
    match backend {
        Backend::Memory(m) => Storage::new(Probe {
            inner: m.clone(),
            knobs,
        }),
        Backend::Redb(_, path) => Storage::new(Probe {
            inner: RedbStore::open(path).expect("open redb"),
            knobs,
        }),
        Backend::Sqlite(_, path) => Storage::new(Probe {
            inner: SqliteStore::open(path).expect("open sqlite"),
            knobs,
        }),
        Backend::Postgres(o) => Storage::new(Probe {
            inner: PostgresStore::open((**o).clone()).expect("open postgres"),
            knobs,
        }),
    }
}

// ---- The event-sourced actor under test --------------------------------------------------------

/// The state, built only from events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sheet {
    total: i64,
    /// Every event in order: equal trails mean the same events applied in the same order.
    trail: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ev {
    Add(i64),
    /// A supervision event the actor recorded.
    Child(String),
}

fn apply_ev(state: &mut Sheet, ev: &Ev) {
    match ev {
        Ev::Add(n) => {
            state.total += n;
            state.trail.push(format!("{n:+}"));
        }
        Ev::Child(what) => state.trail.push(what.clone()),
    }
}

/// An operation: `keep:` ones are kept until confirmed, `retry:` ones always ask for a retry,
/// the others are done. Every perform is told to the test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Job(String);

/// A map value whose encodings are counted (to see what a message costs).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct Counted(u64);

static ENCODED: AtomicU64 = AtomicU64::new(0);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.fetch_add(1, Ordering::SeqCst);
        s.serialize_newtype_struct("Counted", &self.0)
    }
}

/// One message's changes.
#[derive(Clone, Debug, Default)]
struct Change {
    /// Emitted first when not 0.
    emit: i64,
    /// Map name, key, value (u64 -> u64) to insert, when the name is not empty.
    map: String,
    k: u64,
    v: u64,
    /// Pushed when set.
    job: Option<String>,
    /// Tells the test the handler ran (before the commit).
    signal: bool,
    /// Fails the handler at the end.
    fail: bool,
}

fn add(n: i64) -> Change {
    Change {
        emit: n,
        ..Change::default()
    }
}

fn put(map: &str, k: u64, v: u64) -> Change {
    Change {
        map: map.to_owned(),
        k,
        v,
        ..Change::default()
    }
}

enum M {
    Change(Change, RpcReplyPort<i64>),
    /// Emits and pushes a job; replies with its id number.
    AddJob(i64, String, RpcReplyPort<u64>),
    /// An idempotent request: adds the amount once per key; replies the total after it (-1:
    /// refused).
    Once(String, i64, RpcReplyPort<i64>),
    /// Emits `-amount` and sends `amount` to actor `to`, in one commit; replies the letter's id.
    SendTo(String, i64, RpcReplyPort<ractor_persist::OpId>),
    /// A letter from another actor: emits it, and records the sender's id in map "from".
    Credit(i64),
    Settle(ractor_persist::OpId, RpcReplyPort<Settlement>),
    Confirm(u64, RpcReplyPort<bool>),
    Resume(RpcReplyPort<usize>),
    /// Re-queues every dead letter and emits the amount in the same message.
    Requeue(i64, RpcReplyPort<usize>),
    /// The dead letters and the pending operations, by id number.
    Ops(RpcReplyPort<(Vec<u64>, Vec<u64>)>),
    Get(RpcReplyPort<Sheet>),
    /// The entries of map `name` (u64 -> u64).
    Dump(String, RpcReplyPort<Vec<(u64, u64)>>),
    /// Inserts keys `from..to` (value = key) in map `name`.
    Fill(String, u64, u64, RpcReplyPort<()>),
    /// Removes key `k` of map `name` and inserts it again with `v`, in one message.
    Reinsert(String, u64, u64, RpcReplyPort<()>),
    /// Removes key `k` of map `name`.
    Remove(String, u64, RpcReplyPort<()>),
    /// Puts a string in map `name` (u64 -> String).
    PutStr(String, u64, String, RpcReplyPort<()>),
    DumpStr(String, RpcReplyPort<Vec<(u64, String)>>),
    /// Sets key `k` of map "counted" to `Counted(v)`.
    PutCounted(u64, u64, RpcReplyPort<()>),
    /// Inserts `Counted(k)` for keys `0..n` of map "counted".
    FillCounted(u64, RpcReplyPort<()>),
    /// Sets timer `name` due after `ms`, which emits `amount` when it fires.
    Timer(String, u64, i64, RpcReplyPort<()>),
    Fire(i64),
    Persist(Control<Job>),
}

/// Where each actor (by key) tells the test what it did.
fn listeners() -> &'static Mutex<HashMap<String, mpsc::UnboundedSender<String>>> {
    static L: OnceLock<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

fn listen(key: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    listeners().lock().unwrap().insert(key.to_owned(), tx);
    rx
}

fn tell(key: &str, what: String) {
    if let Some(tx) = listeners().lock().unwrap().get(key) {
        let _ = tx.send(what);
    }
}

async fn heard(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("a report of the actor", rx.recv())
        .await
        .expect("the channel is open")
}

#[derive(Clone, Default, ractor_persist::Persistent)]
#[persistent(name = "adv2_es", event_sourced)]
struct Acc;

impl PersistentActor for Acc {
    type Msg = M;
    type State = Sheet;
    type Op = Job;
    type Arguments = i64;

    async fn init(&self, opening: i64) -> Result<Sheet, ActorProcessingErr> {
        Ok(Sheet {
            total: opening,
            trail: Vec::new(),
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: M,
        state: &mut Sheet,
    ) -> Result<(), ActorProcessingErr> {
        let me = tx.key().key().to_owned();
        match msg {
            M::Change(c, port) => {
                if c.emit != 0 {
                    tx.emit(state, Ev::Add(c.emit))?;
                }
                if !c.map.is_empty() {
                    tx.map::<u64, u64>(&c.map)?.insert(c.k, c.v);
                }
                if let Some(job) = c.job {
                    tx.push(Job(job))?;
                }
                if c.signal {
                    tell(&me, "handled".to_owned());
                }
                if c.fail {
                    return Err("the handler failed on purpose".into());
                }
                tx.reply(port, state.total);
            }
            M::AddJob(n, job, port) => {
                tx.emit(state, Ev::Add(n))?;
                let id = tx.push(Job(job))?;
                tx.reply(port, id.seq());
            }
            M::Once(key, n, port) => match tx.once(&key, &n, port) {
                Once::First(first) => {
                    tx.emit(state, Ev::Add(n))?;
                    tx.reply_once(first, state.total)?;
                }
                Once::Repeated => {}
                Once::Refused(port, _) => tx.reply(port, -1),
            },
            M::SendTo(to, n, port) => {
                tx.emit(state, Ev::Add(-n))?;
                let id = tx.send_to::<Acc, _>(&to, &n)?;
                tx.reply(port, id);
            }
            M::Credit(n) => {
                let from = tx.received().map(|id| id.to_string()).unwrap_or_default();
                tx.emit(state, Ev::Add(n))?;
                let map = tx.map::<String, i64>("from")?;
                let before = map.get(&from).copied().unwrap_or(0);
                map.insert(from, before + n);
                tell(&me, format!("credited {n}"));
            }
            M::Settle(id, port) => {
                let s = tx.settlement(&id);
                tx.reply(port, s);
            }
            M::Confirm(seq, port) => {
                let mut found = false;
                tx.confirm_where(|p| {
                    let hit = p.id().seq() == seq;
                    found |= hit;
                    hit
                });
                tx.reply(port, found);
            }
            M::Resume(port) => {
                let n = tx.resume(|_| true);
                tx.reply(port, n);
            }
            M::Requeue(n, port) => {
                let dead: Vec<_> = tx.dead_letters().map(|p| p.id().clone()).collect();
                for id in &dead {
                    tx.requeue(id)?;
                }
                tx.emit(state, Ev::Add(n))?;
                tx.reply(port, dead.len());
            }
            M::Ops(port) => {
                let dead = tx.dead_letters().map(|p| p.id().seq()).collect();
                let pending = tx.pending().map(|p| p.id().seq()).collect();
                tx.reply(port, (dead, pending));
            }
            M::Get(port) => tx.reply(port, state.clone()),
            M::Dump(name, port) => {
                let map = tx.map::<u64, u64>(&name)?;
                let entries = map.iter().map(|(k, v)| (*k, *v)).collect();
                tx.reply(port, entries);
            }
            M::Fill(name, from, to, port) => {
                let map = tx.map::<u64, u64>(&name)?;
                for k in from..to {
                    map.insert(k, k);
                }
                tx.reply(port, ());
            }
            M::Reinsert(name, k, v, port) => {
                let map = tx.map::<u64, u64>(&name)?;
                map.remove(&k);
                map.insert(k, v);
                tx.reply(port, ());
            }
            M::Remove(name, k, port) => {
                tx.map::<u64, u64>(&name)?.remove(&k);
                tx.reply(port, ());
            }
            M::PutStr(name, k, v, port) => {
                tx.map::<u64, String>(&name)?.insert(k, v);
                tx.reply(port, ());
            }
            M::DumpStr(name, port) => {
                let map = tx.map::<u64, String>(&name)?;
                let entries = map.iter().map(|(k, v)| (*k, v.clone())).collect();
                tx.reply(port, entries);
            }
            M::PutCounted(k, v, port) => {
                tx.map::<u64, Counted>("counted")?.insert(k, Counted(v));
                tx.reply(port, ());
            }
            M::FillCounted(n, port) => {
                let map = tx.map::<u64, Counted>("counted")?;
                for k in 0..n {
                    map.insert(k, Counted(k));
                }
                tx.reply(port, ());
            }
            M::Timer(name, ms, amount, port) => {
                tx.set_timer_after(&name, Duration::from_millis(ms), &amount)?;
                tx.reply(port, ());
            }
            M::Fire(amount) => {
                tx.emit(state, Ev::Add(amount))?;
                tx.push(Job(format!("fired {amount}")))?;
            }
            M::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        tx: &mut Tx<'_, Self>,
        event: SupervisionEvent,
        state: &mut Sheet,
    ) -> Result<(), ActorProcessingErr> {
        let what = match event {
            SupervisionEvent::ActorTerminated(..) => "child stopped",
            SupervisionEvent::ActorFailed(..) => "child failed",
            _ => return Ok(()),
        };
        tx.emit(state, Ev::Child(what.to_owned()))?;
        tx.push(Job(what.to_owned()))?;
        Ok(())
    }

    async fn perform(&self, op: &Pending<Job>, _: &Sheet) -> Result<Outcome, ActorProcessingErr> {
        let key = op.id().actor().key().to_owned();
        let what = op.op().0.clone();
        tell(&key, what.clone());
        Ok(if what.starts_with("keep:") {
            Outcome::KeepUntilConfirmed
        } else if what.starts_with("retry:") {
            Outcome::Retry
        } else {
            Outcome::Done
        })
    }

    fn control(msg: M) -> Result<Control<Job>, M> {
        match msg {
            M::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Job>) -> Option<M> {
        Some(M::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<M, DecodeReason> {
        Ok(M::Credit(msg.decode()?))
    }

    fn timer(fired: Fired) -> Result<M, DecodeReason> {
        Ok(M::Fire(fired.decode()?))
    }
}

impl EventSourced for Acc {
    type Event = Ev;

    fn apply(state: &mut Sheet, event: &Ev) -> Result<(), ActorProcessingErr> {
        apply_ev(state, event);
        Ok(())
    }
}

fn acc_key(key: &str) -> ActorKey {
    ActorKey::new("adv2_es", key)
}

fn start(storage: &Storage, key: &str, every: u64, retention: Retention) -> Start<Acc> {
    Start::<Acc>::new(storage, key, 0)
        .snapshot_every(every)
        .retention(retention)
}

async fn spawn_start(s: Start<Acc>) -> (ActorRef<M>, JoinHandle<()>) {
    within("spawn", Actor::spawn(None, Acc, s))
        .await
        .expect("spawn the event-sourced actor")
}

async fn spawn_acc(storage: &Storage, key: &str, every: u64, retention: Retention) -> ActorRef<M> {
    spawn_start(start(storage, key, every, retention)).await.0
}

async fn get(a: &ActorRef<M>) -> Sheet {
    call!(a, M::Get).unwrap()
}

async fn change(a: &ActorRef<M>, c: Change) -> i64 {
    call!(a, M::Change, c).unwrap()
}

async fn dump(a: &ActorRef<M>, name: &str) -> Vec<(u64, u64)> {
    call!(a, M::Dump, name.to_owned()).unwrap()
}

async fn stop(a: ActorRef<M>) {
    within("stop", a.stop_and_wait(None, None)).await.unwrap();
}

async fn stopped(handle: JoinHandle<()>) {
    within("the failed actor stops", handle).await.unwrap();
}

fn fold(events: &[(u64, Ev)]) -> Sheet {
    let mut s = Sheet::default();
    for (_, e) in events {
        apply_ev(&mut s, e);
    }
    s
}

fn adds(range: RangeInclusive<i64>) -> Vec<(u64, Ev)> {
    range.map(|n| (n as u64, Ev::Add(n))).collect()
}

/// The error a spawn failed with, as the `LoadError` it must be.
fn load_error(err: SpawnErr) -> LoadError {
    let SpawnErr::StartupFailed(err) = err else {
        panic!("expected a startup failure, got {err}");
    };
    match err.downcast::<LoadError>() {
        Ok(e) => *e,
        Err(other) => panic!("the start failed with another error: {other}"),
    }
}

// ---- Two nodes on one store: reads raced by the other node's commits ---------------------------

/// `Storage::events` reads the journal's head, then its events, in two reads. On a store
/// another node writes (PostgreSQL, or SQLite opened twice), a commit of that node can come
/// between them. The journal is intact all along: the read must give the events (as of
/// either commit) or say they were compacted, never call the journal damaged.
///
/// A journal read while another node appends or compacts it is never reported as damaged:
/// the reader reads the head again after the events and tries again if it moved. (The second
/// review found `EventsPastHead` and `JournalGap` reported for an intact journal.)
async fn events_read_while_another_node_writes_are_never_reported_as_damage(backend: Backend) {
    let reader_knobs = Knobs::default();
    let reader = open(&backend, &reader_knobs);
    let writer = open(&backend, &Knobs::default());
    let x = spawn_acc(&writer, "x", 4, Retention::Light).await;
    for n in 1..=5 {
        change(&x, add(n)).await;
    }
    // The journal holds event 5 (1..=4 compacted under the snapshot at 4).
    assert_eq!(reader.events::<Acc>("x", 5).await.unwrap(), adds(5..=5));

    // 1. The other node appends event 6 between the two reads.
    let held = reader_knobs.gate_reads();
    let r = reader.clone();
    let read = tokio::spawn(async move { r.events::<Acc>("x", 5).await });
    let release = held.entered().await;
    change(&x, add(6)).await;
    release.send(()).unwrap();
    match within("the read", read).await.unwrap() {
        Ok(events) => assert!(
            events == adds(5..=5) || events == adds(5..=6),
            "events read: {events:?}"
        ),
        Err(e) => panic!("an intact journal, appended to by another node during the read: {e}"),
    }

    // 2. The other node compacts (event 8 brings a snapshot) between the two reads.
    change(&x, add(7)).await;
    let held = reader_knobs.gate_reads();
    let r = reader.clone();
    let read = tokio::spawn(async move { r.events::<Acc>("x", 5).await });
    let release = held.entered().await;
    change(&x, add(8)).await;
    release.send(()).unwrap();
    match within("the read", read).await.unwrap() {
        Ok(events) => assert_eq!(events, adds(5..=7)),
        Err(JournalError::Compacted { .. }) => {}
        Err(e) => panic!("an intact journal, compacted by another node during the read: {e}"),
    }
    stop(x).await;
}

/// A start on one node raced by a newer instance on another node, which commits (and
/// compacts) between the start's read of the record and of the journal, fails as fenced
/// (`LoadError::Store` with `StoreError::Fenced`), never with a `DecodeError`; the actor then
/// moves to the first node with every acknowledged event.
async fn a_start_raced_by_a_newer_instance_on_another_node_is_fenced_never_refused_as_damaged(
    backend: Backend,
) {
    let knobs_a = Knobs::default();
    let node_a = open(&backend, &knobs_a);
    let node_b = open(&backend, &Knobs::default());
    let x = spawn_acc(&node_b, "moving", 4, Retention::Light).await;
    for n in 1..=5 {
        change(&x, add(n)).await;
    }
    stop(x).await;
    let held = knobs_a.gate_reads();
    let s = start(&node_a, "moving", 4, Retention::Light);
    let starting = tokio::spawn(async move { Actor::spawn(None, Acc, s).await });
    let release = held.entered().await;
    // The newer instance on node B: its load comes after A's, it appends and compacts.
    let newer = spawn_acc(&node_b, "moving", 4, Retention::Light).await;
    for n in 6..=8 {
        change(&newer, add(n)).await;
    }
    release.send(()).unwrap();
    match within("the raced start", starting).await.unwrap() {
        Err(e) => match load_error(e) {
            LoadError::Store {
                source: StoreError::Fenced(_),
                ..
            } => {}
            other => panic!("a raced start failed with {other}, not as fenced"),
        },
        Ok((a, _)) => {
            let state = get(&a).await;
            stop(a).await;
            panic!("a start raced by a newer writer's commits went on with {state:?}");
        }
    }
    // B's instance was not disturbed.
    assert_eq!(change(&newer, add(9)).await, 45);
    stop(newer).await;
    // The actor moves to node A with everything acknowledged.
    let a = spawn_acc(&node_a, "moving", 4, Retention::Light).await;
    let sheet = get(&a).await;
    assert_eq!(sheet, fold(&adds(1..=9)));
    assert_eq!(change(&a, add(10)).await, 55);
    stop(a).await;
    assert_eq!(
        node_b.events::<Acc>("moving", 9).await.unwrap(),
        adds(9..=10)
    );
}

/// Two nodes start the same event-sourced key over and over, each appending: exactly one
/// writer at a time, every acknowledged event is in the journal once and in order, and no
/// start or read ever reports damage.
async fn racing_starts_of_one_es_key_on_two_nodes_keep_every_acknowledged_event(backend: Backend) {
    let nodes = [
        open(&backend, &Knobs::default()),
        open(&backend, &Knobs::default()),
    ];
    let mut acknowledged = Vec::new();
    let mut next = 1i64;
    for round in 0..12 {
        let a = &nodes[round % 2];
        let b = &nodes[(round + 1) % 2];
        let (x, _) = spawn_start(start(a, "pingpong", 3, Retention::Full)).await;
        let (y, yh) = spawn_start(start(b, "pingpong", 3, Retention::Full)).await;
        // x was fenced by y's load: its append must fail; y's must land.
        let lost = call!(x, M::Change, add(1000));
        assert!(
            lost.is_err(),
            "round {round}: a fenced instance's append was acknowledged"
        );
        for _ in 0..3 {
            assert!(call!(y, M::Change, add(next)).is_ok(), "round {round}");
            acknowledged.push(next);
            next += 1;
        }
        stop(y).await;
        drop(yh);
    }
    let events = nodes[0].events::<Acc>("pingpong", 1).await.unwrap();
    let amounts: Vec<i64> = events
        .iter()
        .map(|(_, e)| match e {
            Ev::Add(n) => *n,
            Ev::Child(_) => 0,
        })
        .collect();
    assert_eq!(amounts, acknowledged);
    let z = spawn_acc(&nodes[1], "pingpong", 3, Retention::Full).await;
    assert_eq!(get(&z).await.total, acknowledged.iter().sum::<i64>());
    stop(z).await;
}

// ---- Group commit: a fenced commit in a batch ---------------------------------------------------

/// Many event-sourced actors writing events and map entries concurrently on one storage, in
/// one batch with the commit of a fenced instance: every other commit is written and
/// acknowledged, and nothing of the fenced one (its event, its map entry, its operation) is
/// stored or performed.
async fn a_fenced_commit_batched_with_others_fails_alone_and_leaves_nothing(backend: Backend) {
    let knobs = Knobs::default();
    let storage = open(&backend, &knobs);
    let mut actors = Vec::new();
    for i in 0..10u64 {
        let (every, retention) = if i % 2 == 0 {
            (2, Retention::Light)
        } else {
            (1000, Retention::Full)
        };
        let key = format!("g{i}");
        let a = spawn_acc(&storage, &key, every, retention).await;
        change(&a, put("m", 0, i)).await;
        actors.push((key, a));
    }
    let (victim, victim_handle) = spawn_start(start(&storage, "victim", 3, Retention::Full)).await;
    change(
        &victim,
        Change {
            emit: 1,
            ..put("m", 0, 0)
        },
    )
    .await;
    let holder = spawn_acc(&storage, "holder", 1000, Retention::Full).await;
    change(&holder, add(1)).await;
    // A newer instance of the victim's key: the store fences the old one.
    let newer = spawn_acc(&storage, "victim", 3, Retention::Full).await;
    change(&newer, add(1000)).await;

    let mut victim_jobs = listen("victim");
    let mut reports = Vec::new();
    for (key, _) in &actors {
        reports.push(listen(key));
    }
    // Hold a commit inside the store: the next ones queue up into one batch.
    let held = knobs.gate_commits();
    let (port, holder_reply) = ractor::concurrency::oneshot();
    holder.cast(M::Change(add(1), port.into())).unwrap();
    let release = held.entered().await;
    let mut replies = Vec::new();
    let signal = |emit, k, job: &str| Change {
        emit,
        map: "m".to_owned(),
        k,
        v: 7,
        job: Some(job.to_owned()),
        signal: true,
        fail: false,
    };
    for (i, (key, a)) in actors.iter().enumerate() {
        let (port, reply) = ractor::concurrency::oneshot();
        a.cast(M::Change(signal(10, 1 + i as u64, key), port.into()))
            .unwrap();
        replies.push(reply);
    }
    let (port, victim_reply) = ractor::concurrency::oneshot();
    victim
        .cast(M::Change(signal(99, 99, "victim job"), port.into()))
        .unwrap();
    for r in reports.iter_mut() {
        assert_eq!(heard(r).await, "handled");
    }
    assert_eq!(heard(&mut victim_jobs).await, "handled");
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    within("the holder's reply", holder_reply).await.unwrap();
    for (i, reply) in replies.into_iter().enumerate() {
        assert!(
            within("a reply", reply).await.is_ok(),
            "g{i}: a live commit batched with a fenced one was not acknowledged"
        );
    }
    assert!(
        within("the victim's reply", victim_reply).await.is_err(),
        "the fenced instance's commit was acknowledged"
    );
    stopped(victim_handle).await;
    for (i, r) in reports.iter_mut().enumerate() {
        assert_eq!(heard(r).await, format!("g{i}"));
    }
    let batches = knobs.batches.lock().unwrap().clone();
    let shared = batches
        .iter()
        .any(|b| b.len() > 1 && b.iter().any(|k| k == "victim"));
    println!("the fenced commit was batched with others: {shared}; batches: {batches:?}");
    for (_, a) in actors.drain(..) {
        stop(a).await;
    }
    stop(holder).await;
    stop(newer).await;
    storage.close().await.unwrap();
    drop(storage);

    let storage = open(&backend, &Knobs::default());
    for i in 0..10u64 {
        let key = format!("g{i}");
        let (every, retention) = if i % 2 == 0 {
            (2, Retention::Light)
        } else {
            (1000, Retention::Full)
        };
        let a = spawn_acc(&storage, &key, every, retention).await;
        assert_eq!(get(&a).await.total, 10, "{key}");
        assert_eq!(dump(&a, "m").await, vec![(0, i), (1 + i, 7)], "{key}");
        stop(a).await;
    }
    let v = spawn_acc(&storage, "victim", 3, Retention::Full).await;
    assert_eq!(get(&v).await.total, 1001);
    assert_eq!(
        dump(&v, "m").await,
        vec![(0, 0)],
        "the fenced map entry was stored"
    );
    let (_, pending) = call!(v, M::Ops).unwrap();
    assert!(pending.is_empty(), "the fenced operation was stored");
    stop(v).await;
    assert_eq!(
        storage.events::<Acc>("victim", 1).await.unwrap(),
        vec![(1, Ev::Add(1)), (2, Ev::Add(1000))]
    );
    assert!(
        victim_jobs.try_recv().is_err(),
        "the fenced instance's operation was performed"
    );
    storage.close().await.unwrap();
}

on_every_backend!(a_fenced_commit_batched_with_others_fails_alone_and_leaves_nothing);

// ---- Event-sourced actors with the rest of the runtime ------------------------------------------

/// An idempotent request to an event-sourced actor is applied once: a repeat (before and
/// after restarts, with compaction in between) gets the first reply and emits nothing; the
/// key reused with another payload is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_to_an_es_actor_is_applied_once_across_restarts_and_compaction() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_acc(&storage, "once", 2, Retention::Light).await;
    assert_eq!(call!(a, M::Once, "req-1".to_owned(), 10).unwrap(), 10);
    assert_eq!(call!(a, M::Once, "req-1".to_owned(), 10).unwrap(), 10);
    assert_eq!(call!(a, M::Once, "req-2".to_owned(), 5).unwrap(), 15);
    stop(a).await;
    let a = spawn_acc(&storage, "once", 2, Retention::Light).await;
    assert_eq!(call!(a, M::Once, "req-1".to_owned(), 10).unwrap(), 10);
    assert_eq!(call!(a, M::Once, "req-2".to_owned(), 5).unwrap(), 15);
    assert_eq!(call!(a, M::Once, "req-1".to_owned(), 11).unwrap(), -1);
    change(&a, add(1)).await;
    stop(a).await;
    let a = spawn_acc(&storage, "once", 2, Retention::Full).await;
    assert_eq!(call!(a, M::Once, "req-2".to_owned(), 5).unwrap(), 15);
    assert_eq!(get(&a).await.total, 16);
    assert_eq!(get(&a).await.trail, ["+10", "+5", "+1"]);
    stop(a).await;
}

/// A letter to an event-sourced receiver whose commit landed but whose acknowledgement never
/// left (the answer of its commit was lost, the receiver stopped): after a restart of both,
/// the sender posts it again and the receiver applies it exactly once (one event, one map
/// entry), and the sender hears it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_whose_receivers_commit_landed_without_an_ack_is_applied_once() {
    let backend = Backend::memory();
    let knobs = Knobs::default();
    let storage = open(&backend, &knobs);
    let fast = Redelivery::new(Duration::from_millis(20), Duration::from_millis(200));
    let mut bob_hears = listen("bob");
    let alice = spawn_start(start(&storage, "alice", 2, Retention::Full).redelivery(fast))
        .await
        .0;
    let (bob, bob_handle) = spawn_start(start(&storage, "bob", 1000, Retention::Full)).await;
    change(&alice, add(100)).await;
    *knobs.lose_for.lock().unwrap() = Some(acc_key("bob"));
    let id = call!(alice, M::SendTo, "bob".to_owned(), 30).unwrap();
    assert_eq!(heard(&mut bob_hears).await, "credited 30");
    stopped(bob_handle).await;
    let _ = within("stop alice", alice.stop_and_wait(None, None)).await;
    drop(storage);

    // Both come back on a new storage (the first was poisoned by the failed commit).
    let storage = open(&backend, &Knobs::default());
    drop(bob);
    let bob = spawn_acc(&storage, "bob", 1000, Retention::Full).await;
    let alice = spawn_start(start(&storage, "alice", 2, Retention::Full).redelivery(fast))
        .await
        .0;
    let settlement = call!(alice, M::Settle, id).unwrap();
    let settled = within("delivered", settlement.wait()).await;
    assert!(
        matches!(settled, Settled::Delivered | Settled::NotPending),
        "{settled:?}"
    );
    // A message through alice after the delivery: anything posted again is handled by now.
    change(&alice, add(1)).await;
    let sheet = get(&bob).await;
    assert_eq!(sheet.total, 30, "the letter was applied {:?}", sheet.trail);
    stop(bob).await;
    stop(alice).await;
    assert_eq!(
        storage.events::<Acc>("bob", 1).await.unwrap(),
        vec![(1, Ev::Add(30))],
        "the receiver's journal holds the letter once"
    );
    let store = match &backend {
        Backend::Memory(m) => m.clone(),
        _ => unreachable!(),
    };
    let maps = store
        .read(&acc_key("bob"), Some(Space::MAPS), 0..=u64::MAX)
        .unwrap();
    assert_eq!(maps.len(), 1, "one entry in the receiver's map of senders");
    assert!(
        store
            .read(&acc_key("alice"), Some(Space::OUTBOX), 0..=u64::MAX)
            .unwrap()
            .is_empty()
            || settled == Settled::NotPending,
        "the sender's outbox still holds the delivered letter"
    );
}

/// Retries and dead letters of an event-sourced actor: an operation that keeps asking for a
/// retry becomes a dead letter, stays one across a restart (never performed), and a message
/// that re-queues it and emits an event commits both; ids never repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_requeue_of_an_es_actor_survive_restarts() {
    let storage = Storage::new(MemoryStore::new());
    let policy = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 2).unwrap();
    let mut jobs = listen("retry");
    let s = || start(&storage, "retry", 2, Retention::Light).retry_policy(policy);
    let a = spawn_start(s()).await.0;
    let seq = call!(a, M::AddJob, 5, "retry:x".to_owned()).unwrap();
    assert_eq!(heard(&mut jobs).await, "retry:x");
    assert_eq!(heard(&mut jobs).await, "retry:x");
    let (dead, pending) = call!(a, M::Ops).unwrap();
    assert_eq!((dead, pending), (vec![seq], vec![]));
    stop(a).await;
    let a = spawn_start(s()).await.0;
    let (dead, pending) = call!(a, M::Ops).unwrap();
    assert_eq!((dead, pending), (vec![seq], vec![]), "after a restart");
    assert_eq!(call!(a, M::Requeue, 7).unwrap(), 1);
    assert_eq!(heard(&mut jobs).await, "retry:x");
    assert_eq!(heard(&mut jobs).await, "retry:x");
    let (dead, _) = call!(a, M::Ops).unwrap();
    assert_eq!(dead, vec![seq]);
    let next = call!(a, M::AddJob, 1, "done".to_owned()).unwrap();
    assert_eq!(heard(&mut jobs).await, "done");
    assert!(next > seq);
    stop(a).await;
    let a = spawn_start(s()).await.0;
    assert_eq!(
        get(&a).await,
        fold(&[(1, Ev::Add(5)), (2, Ev::Add(7)), (3, Ev::Add(1))])
    );
    let (dead, pending) = call!(a, M::Ops).unwrap();
    assert_eq!((dead, pending), (vec![seq], vec![]));
    stop(a).await;
    assert!(jobs.try_recv().is_err(), "a dead letter was performed");
}

/// An operation of an event-sourced actor kept until confirmed is performed again on every
/// restart and on `resume`, until a message confirms it; after that, never again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_op_of_an_es_actor_is_performed_on_every_restart_and_resume_until_confirmed() {
    let storage = Storage::new(MemoryStore::new());
    let mut jobs = listen("kept");
    let a = spawn_acc(&storage, "kept", 1, Retention::Light).await;
    let seq = call!(a, M::AddJob, 3, "keep:k".to_owned()).unwrap();
    assert_eq!(heard(&mut jobs).await, "keep:k");
    stop(a).await;
    for _ in 0..2 {
        let a = spawn_acc(&storage, "kept", 1, Retention::Light).await;
        assert_eq!(
            heard(&mut jobs).await,
            "keep:k",
            "performed again at a start"
        );
        assert_eq!(call!(a, M::Resume).unwrap(), 1);
        assert_eq!(
            heard(&mut jobs).await,
            "keep:k",
            "performed again on resume"
        );
        change(&a, add(1)).await;
        stop(a).await;
    }
    let a = spawn_acc(&storage, "kept", 1, Retention::Light).await;
    assert_eq!(heard(&mut jobs).await, "keep:k");
    assert!(call!(a, M::Confirm, seq).unwrap());
    assert_eq!(call!(a, M::Resume).unwrap(), 0);
    stop(a).await;
    let a = spawn_acc(&storage, "kept", 1, Retention::Light).await;
    assert_eq!(get(&a).await.total, 5);
    let (_, pending) = call!(a, M::Ops).unwrap();
    assert!(pending.is_empty());
    stop(a).await;
    assert!(
        jobs.try_recv().is_err(),
        "a confirmed operation was performed"
    );
}

/// A plain ractor child linked to an event-sourced supervisor.
struct Child;

impl Actor for Child {
    type Msg = bool;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<bool>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<bool>,
        fail: bool,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if fail {
            return Err("the child failed".into());
        }
        myself.stop(None);
        Ok(())
    }
}

/// What an event-sourced supervisor emits about its children's stops and failures is
/// committed (its operation performed after the commit) and survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervision_events_an_es_actor_emits_are_committed_and_replayed() {
    let storage = Storage::new(MemoryStore::new());
    let mut jobs = listen("super");
    let a = spawn_acc(&storage, "super", 2, Retention::Light).await;
    for fail in [false, true, false] {
        let (child, handle) = Actor::spawn_linked(None, Child, (), a.get_cell())
            .await
            .unwrap();
        child.cast(fail).unwrap();
        within("the child ends", handle).await.unwrap();
        let expected = if fail {
            "child failed"
        } else {
            "child stopped"
        };
        assert_eq!(heard(&mut jobs).await, expected);
    }
    change(&a, add(4)).await;
    let before = get(&a).await;
    assert_eq!(
        before.trail,
        ["child stopped", "child failed", "child stopped", "+4"]
    );
    stop(a).await;
    let a = spawn_acc(&storage, "super", 2, Retention::Light).await;
    assert_eq!(get(&a).await, before);
    stop(a).await;
}

/// A timer firing into an event-sourced handler that emits and pushes, with compaction at
/// every event: the event, the timer's removal and the operation are one commit, and a
/// timer due while the actor is passivated by its registry wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_into_a_passivated_compacting_es_actor_and_its_event_is_kept() {
    let storage = Storage::new(MemoryStore::new());
    let mut jobs = listen("timed");
    let registry = Entities::<Acc>::builder(&storage, |_| 0)
        .configure(|s| s.snapshot_every(1).retention(Retention::Light))
        .start()
        .await
        .unwrap();
    registry
        .call("timed", |p| M::Change(add(2), p), None)
        .await
        .unwrap();
    registry
        .call("timed", |p| M::Timer("t".to_owned(), 30, 5, p), None)
        .await
        .unwrap();
    assert!(registry.passivate("timed").await);
    assert_eq!(heard(&mut jobs).await, "fired 5");
    let sheet = registry.call("timed", M::Get, None).await.unwrap();
    assert_eq!(sheet.total, 7);
    registry.shutdown().await;
    let a = spawn_acc(&storage, "timed", 1, Retention::Light).await;
    assert_eq!(get(&a).await.total, 7);
    stop(a).await;
    assert!(jobs.try_recv().is_err(), "the timer fired twice");
}

/// Event-sourced actors with maps, compacting at every third event, in a registry that holds
/// two at a time: a long random run through constant passivation loses nothing (state, map
/// entries, the journal's compaction mark) and matches a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_actors_with_maps_in_a_bounded_registry_lose_nothing_across_passivations() {
    let storage = Storage::new(MemoryStore::new());
    let registry = Entities::<Acc>::builder(&storage, |_| 0)
        .max_resident(2)
        .configure(|s| s.snapshot_every(3).retention(Retention::Light))
        .start()
        .await
        .unwrap();
    let mut model: BTreeMap<String, (i64, BTreeMap<u64, u64>, u64)> = BTreeMap::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("k{}", x % 6);
        let emit = (x % 5) as i64;
        let (k, v) = ((x >> 8) % 8, x >> 20);
        let m = model.entry(key.clone()).or_default();
        m.0 += emit;
        m.1.insert(k, v);
        if emit != 0 {
            m.2 += 1;
        }
        let c = Change {
            emit,
            ..put("m", k, v)
        };
        let total = registry
            .call(&key, |p| M::Change(c, p), None)
            .await
            .unwrap();
        assert_eq!(total, m.0, "{key}");
    }
    registry.shutdown().await;
    for (key, (total, entries, events)) in &model {
        let a = spawn_acc(&storage, key, 3, Retention::Light).await;
        assert_eq!(get(&a).await.total, *total, "{key}");
        let want: Vec<(u64, u64)> = entries.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(dump(&a, "m").await, want, "{key}");
        stop(a).await;
        let first = events / 3 * 3 + 1;
        let tail = storage.events::<Acc>(key, first).await.unwrap();
        assert_eq!(tail.len() as u64, events - (first - 1), "{key}");
        if first > 1 {
            assert!(matches!(
                storage.events::<Acc>(key, first - 1).await,
                Err(JournalError::Compacted { .. })
            ));
        }
    }
}

// ---- The head's compaction mark across changes of retention and snapshot interval -----------

/// Switching an actor between `Retention::Full` and `Retention::Light` and between snapshot
/// intervals across restarts keeps its state, and after every run `Storage::events` and
/// `Storage::journal` agree: the events from the compaction mark on, every earlier one
/// reported as compacted, never as a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_retention_and_snapshot_interval_keeps_state_and_a_readable_journal() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let key = acc_key("switch");
    let runs: [(u64, Retention, i64); 10] = [
        (4, Retention::Full, 10),
        (3, Retention::Light, 5),
        (1000, Retention::Full, 7),
        (2, Retention::Light, 1),
        (2, Retention::Full, 3),
        (1, Retention::Light, 1),
        (u64::MAX, Retention::Full, 6),
        (5, Retention::Light, 4),
        (u64::MAX, Retention::Light, 3),
        (1, Retention::Full, 2),
    ];
    let mut all: Vec<(u64, Ev)> = Vec::new();
    for (run, (every, retention, n)) in runs.into_iter().enumerate() {
        let a = spawn_acc(&storage, "switch", every, retention).await;
        assert_eq!(get(&a).await, fold(&all), "run {run}: the state at start");
        for _ in 0..n {
            let amount = all.len() as i64 + 1;
            change(&a, add(amount)).await;
            all.push((amount as u64, Ev::Add(amount)));
        }
        stop(a).await;
        let stored: Vec<u64> = store
            .read(&key, Some(Space::JOURNAL), 0..=u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let first = stored.first().copied().unwrap_or(all.len() as u64 + 1);
        assert_eq!(
            stored,
            (first..=all.len() as u64).collect::<Vec<_>>(),
            "run {run}: the journal is contiguous to the last event"
        );
        let events = storage.events::<Acc>("switch", first).await.unwrap();
        assert_eq!(events, all[first as usize - 1..], "run {run}");
        let raw = storage.journal(&key, first).await.unwrap();
        assert_eq!(
            raw.iter().map(|e| e.seq).collect::<Vec<_>>(),
            stored,
            "run {run}"
        );
        if first > 1 {
            match storage.events::<Acc>("switch", first - 1).await {
                Err(JournalError::Compacted { first: f, .. }) => assert_eq!(f, first),
                other => panic!("run {run}: event {} gave {other:?}", first - 1),
            }
            assert!(matches!(
                storage.journal(&key, 1).await,
                Err(JournalError::Compacted { .. })
            ));
        }
    }
    let a = spawn_acc(&storage, "switch", 3, Retention::Full).await;
    assert_eq!(get(&a).await, fold(&all));
    stop(a).await;
}

// ---- Newer schemas -------------------------------------------------------------------------------

/// Version 1 of an event-sourced actor.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv2_versions", event_sourced)]
struct V1;

/// Version 2 of it: the same types, a newer schema (a newer binary).
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv2_versions", version = 2, event_sourced)]
struct V2;

enum VMsg {
    Add(i64, RpcReplyPort<i64>),
}

macro_rules! versioned {
    ($t:ty) => {
        impl PersistentActor for $t {
            type Msg = VMsg;
            type State = Sheet;
            type Op = ();
            type Arguments = ();

            async fn init(&self, _: ()) -> Result<Sheet, ActorProcessingErr> {
                Ok(Sheet::default())
            }

            async fn handle(
                &self,
                tx: &mut Tx<'_, Self>,
                msg: VMsg,
                state: &mut Sheet,
            ) -> Result<(), ActorProcessingErr> {
                let VMsg::Add(n, port) = msg;
                tx.emit(state, Ev::Add(n))?;
                tx.reply(port, state.total);
                Ok(())
            }
        }

        impl EventSourced for $t {
            type Event = Ev;

            fn apply(state: &mut Sheet, event: &Ev) -> Result<(), ActorProcessingErr> {
                apply_ev(state, event);
                Ok(())
            }
        }
    };
}

versioned!(V1);
versioned!(V2);

/// Events a newer binary appended after an older one's (the snapshot still the older
/// one's): the older binary refuses to start and `Storage::events` refuses to read them,
/// with a typed error naming the first newer event, never a guess and never a partial list;
/// `Storage::journal` (untyped) shows each event's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_newer_schema_are_refused_by_an_older_binary_never_guessed() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let s1 = || Start::<V1>::new(&storage, "v", ()).snapshot_every(u64::MAX);
    let s2 = || Start::<V2>::new(&storage, "v", ()).snapshot_every(u64::MAX);
    let (a, _) = Actor::spawn(None, V1, s1()).await.unwrap();
    for n in 1..=3 {
        call!(a, VMsg::Add, n).unwrap();
    }
    a.stop_and_wait(None, None).await.unwrap();
    let (b, _) = Actor::spawn(None, V2, s2()).await.unwrap();
    assert_eq!(call!(b, VMsg::Add, 4).unwrap(), 10);
    b.stop_and_wait(None, None).await.unwrap();
    let key = ActorKey::new("adv2_versions", "v");
    let before = store.open_actor(&key, &Space::RECORD).unwrap().rows;
    match load_error(Actor::spawn(None, V1, s1()).await.unwrap_err()) {
        LoadError::Decode(e) => {
            assert_eq!(e.key, key);
            assert_eq!(e.record, ractor_persist::RecordRef::Event(4), "{e}");
            assert!(
                matches!(e.reason, DecodeReason::UnknownSchema { .. }),
                "{e}"
            );
        }
        other => panic!("the older binary started with {other}"),
    }
    match storage.events::<V1>("v", 1).await {
        Err(JournalError::Decode(e)) => {
            assert_eq!(e.record, ractor_persist::RecordRef::Event(4), "{e}")
        }
        other => panic!("the older binary read newer events: {other:?}"),
    }
    let raw = storage.journal(&key, 1).await.unwrap();
    let schemas: Vec<(u64, u32)> = raw.iter().map(|e| (e.seq, e.schema)).collect();
    assert_eq!(schemas, vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    let after = store.open_actor(&key, &Space::RECORD).unwrap().rows;
    assert_eq!(after, before, "a refusal wrote something");
    let (b, _) = Actor::spawn(None, V2, s2()).await.unwrap();
    assert_eq!(call!(b, VMsg::Add, 5).unwrap(), 15);
    b.stop_and_wait(None, None).await.unwrap();
}

// ---- Durable maps ----------------------------------------------------------------------------

/// A message that writes an entry with the value it already holds changes nothing and costs
/// no write (P6); and it must cost the same however many such messages came before: the
/// work of a message is bounded by what it touches.
///
/// A message whose map changes cancel out costs the same after any number of such messages:
/// its undo log is cleared although nothing is committed. (The second review found the log
/// kept until the next commit, each message's cost growing with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_an_entry_with_its_own_value_costs_the_same_after_any_number_of_such_messages() {
    let knobs = Knobs::default();
    let storage = open(&Backend::memory(), &knobs);
    let a = spawn_acc(&storage, "same-value", 1000, Retention::Full).await;
    let n = 400;
    call!(a, M::FillCounted, n).unwrap();
    let commits = knobs.commits.load(Ordering::SeqCst);
    let mut costs = Vec::new();
    for k in 0..n {
        let before = ENCODED.load(Ordering::SeqCst);
        call!(a, M::PutCounted, k, k).unwrap();
        costs.push(ENCODED.load(Ordering::SeqCst) - before);
    }
    assert_eq!(
        knobs.commits.load(Ordering::SeqCst),
        commits,
        "an unchanged entry cost a write"
    );
    stop(a).await;
    println!(
        "encodings per message: first {:?}, last {:?}",
        &costs[..3],
        &costs[costs.len() - 3..]
    );
    let worst = costs.iter().max().copied().unwrap_or(0);
    assert!(
        worst <= 16,
        "a message that rewrote one entry with its own value encoded {worst} values (the first \
         {}, the last {}): its cost grows with the messages before it",
        costs[0],
        costs[costs.len() - 1]
    );
}

/// A message that changes one entry of a map writes one row, whatever the map's size: 1,000
/// or 200,000 entries (the times are printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_changing_one_entry_writes_one_row_whatever_the_map_size() {
    let backend = Backend::memory();
    let knobs = Knobs::default();
    let storage = open(&backend, &knobs);
    for size in [1_000u64, 200_000] {
        let key = format!("size-{size}");
        let a = spawn_acc(&storage, &key, 1000, Retention::Full).await;
        let chunk = 20_000;
        let mut from = 0;
        while from < size {
            let to = (from + chunk).min(size);
            call!(a, M::Fill, "big".to_owned(), from, to).unwrap();
            from = to;
        }
        stop(a).await;
        let t = Instant::now();
        let a = spawn_acc(&storage, &key, 1000, Retention::Full).await;
        assert_eq!(
            call!(a, M::Change, put("big", 0, 1)).unwrap(),
            0,
            "first access"
        );
        let load = t.elapsed();
        let (rows, commits) = (knobs.rows(), knobs.commits.load(Ordering::SeqCst));
        let t = Instant::now();
        let messages = 200u64;
        for i in 0..messages {
            change(&a, put("big", (i * 7919) % size, size + i)).await;
        }
        let per_message = t.elapsed() / messages as u32;
        assert_eq!(
            knobs.commits.load(Ordering::SeqCst) - commits,
            messages as usize
        );
        assert_eq!(
            knobs.rows() - rows,
            messages as usize,
            "{size} entries: one row write per message"
        );
        // A message that touches nothing: no write at all.
        get(&a).await;
        assert_eq!(knobs.rows() - rows, messages as usize);
        stop(a).await;
        println!(
            "map of {size} entries: start + first access {load:?}, {per_message:?} per message"
        );
    }
}

/// Two maps of one actor with the same key type and different value types are two
/// collections: each keeps its own entries and types across restarts, with failed messages
/// in between, and neither can be read as the other's type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_maps_with_one_key_type_and_different_value_types_stay_apart() {
    let storage = Storage::new(MemoryStore::new());
    let a = spawn_acc(&storage, "two-maps", 2, Retention::Light).await;
    change(&a, put("nums", 1, 10)).await;
    call!(a, M::PutStr, "strs".to_owned(), 1, "one".to_owned()).unwrap();
    call!(a, M::PutStr, "strs".to_owned(), 2, "two".to_owned()).unwrap();
    change(&a, put("nums", 2, 20)).await;
    stop(a).await;
    let (a, h) = spawn_start(start(&storage, "two-maps", 2, Retention::Light)).await;
    // A failed message changing the first map.
    let failing = Change {
        fail: true,
        emit: 3,
        ..put("nums", 1, 99)
    };
    assert!(call!(a, M::Change, failing).is_err());
    stopped(h).await;
    let a = spawn_acc(&storage, "two-maps", 2, Retention::Light).await;
    assert_eq!(dump(&a, "nums").await, vec![(1, 10), (2, 20)]);
    assert_eq!(
        call!(a, M::DumpStr, "strs".to_owned()).unwrap(),
        vec![(1, "one".to_owned()), (2, "two".to_owned())]
    );
    stop(a).await;
    // Each read as the other's types: refused.
    let a = spawn_acc(&storage, "two-maps", 2, Retention::Light).await;
    assert!(call!(a, M::DumpStr, "nums".to_owned()).is_err());
    let a = spawn_acc(&storage, "two-maps", 2, Retention::Light).await;
    assert!(call!(a, M::Dump, "strs".to_owned()).is_err());
    let a = spawn_acc(&storage, "two-maps", 2, Retention::Light).await;
    assert_eq!(dump(&a, "nums").await, vec![(1, 10), (2, 20)]);
    assert_eq!(get(&a).await.total, 0);
    stop(a).await;
}

/// A message changing the state and a map whose commit fails stores neither, on every
/// backend that two nodes can share: the store failing the write, or refusing it because
/// another node took the key. After a reopen the state and the map are as before it, and the
/// next messages go on from there.
async fn a_failed_commit_of_a_state_and_map_change_stores_neither(backend: Backend) {
    let check = async |storage: &Storage, total: i64, entries: Vec<(u64, u64)>| {
        let a = spawn_acc(storage, "fails", 2, Retention::Light).await;
        assert_eq!(get(&a).await.total, total);
        assert_eq!(dump(&a, "m").await, entries);
        stop(a).await;
    };
    let knobs = Knobs::default();
    let storage = open(&backend, &knobs);
    let (a, h) = spawn_start(start(&storage, "fails", 2, Retention::Light)).await;
    change(
        &a,
        Change {
            emit: 5,
            ..put("m", 1, 10)
        },
    )
    .await;
    // 1. The store fails the write.
    *knobs.fail_for.lock().unwrap() = Some(acc_key("fails"));
    assert!(
        call!(
            a,
            M::Change,
            Change {
                emit: 7,
                ..put("m", 2, 20)
            }
        )
        .is_err()
    );
    stopped(h).await;
    let _ = storage.close().await;
    drop(storage);
    let storage = open(&backend, &knobs);
    check(&storage, 5, vec![(1, 10)]).await;
    // 2. The store refuses it: another node took the key behind this instance's back.
    let (a, h) = spawn_start(start(&storage, "fails", 2, Retention::Light)).await;
    let other = open(&backend, &Knobs::default());
    let fence = spawn_acc(&other, "fails", 2, Retention::Light).await;
    stop(fence).await;
    other.close().await.unwrap();
    drop(other);
    assert!(
        call!(
            a,
            M::Change,
            Change {
                emit: 7,
                ..put("m", 2, 20)
            }
        )
        .is_err()
    );
    stopped(h).await;
    check(&storage, 5, vec![(1, 10)]).await;
    let a = spawn_acc(&storage, "fails", 2, Retention::Light).await;
    change(
        &a,
        Change {
            emit: 1,
            ..put("m", 3, 30)
        },
    )
    .await;
    stop(a).await;
    check(&storage, 6, vec![(1, 10), (3, 30)]).await;
    storage.close().await.unwrap();
}

/// Map names are any UTF-8 up to the limit: names that differ only by normalisation, case,
/// a zero-width joiner, right-to-left text, a NUL or nothing at all are different maps, and
/// each survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_names_of_any_utf8_are_distinct_maps_that_survive_a_restart() {
    let storage = Storage::new(MemoryStore::new());
    let names = [
        "",
        "\u{0}",
        "é",
        "e\u{301}",
        "E\u{301}",
        "👩\u{200d}💻",
        "👩💻",
        "שלום",
        "a\u{202e}b",
        "\u{feff}",
        "名前",
        "a/b\\c\"'",
    ];
    let a = spawn_acc(&storage, "names", 1000, Retention::Full).await;
    for (i, name) in names.iter().enumerate() {
        let i = i as u64;
        call!(a, M::Fill, (*name).to_owned(), i, i + 1).unwrap();
    }
    stop(a).await;
    let a = spawn_acc(&storage, "names", 1000, Retention::Full).await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            dump(&a, name).await,
            vec![(i as u64, i as u64)],
            "map {name:?}"
        );
    }
    stop(a).await;
}

/// Very many maps in one actor (2,000 names, written in one message and then one at a
/// time) all survive a restart, and a message changing one of them writes one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_many_maps_in_one_actor_survive_a_restart_and_cost_one_row_per_change() {
    let knobs = Knobs::default();
    let storage = open(&Backend::memory(), &knobs);
    let a = spawn_acc(&storage, "many-maps", 1000, Retention::Full).await;
    for i in 0..2000u64 {
        change(&a, put(&format!("map-{i}"), i, i)).await;
    }
    let rows = knobs.rows();
    change(&a, put("map-7", 7, 70)).await;
    assert_eq!(knobs.rows() - rows, 1);
    stop(a).await;
    let a = spawn_acc(&storage, "many-maps", 1000, Retention::Full).await;
    for i in (0..2000u64).step_by(97) {
        let v = if i == 7 { 70 } else { i };
        assert_eq!(dump(&a, &format!("map-{i}")).await, vec![(i, v)]);
    }
    stop(a).await;
}

/// A map holding two rows for one key (damage: the runtime writes one row per key) is
/// refused, or at least never resolved silently: a key removed by an acknowledged message
/// must not come back at the next start from the other row.
///
/// Two rows of a map holding one key are refused as damage naming both
/// (`DecodeReason::DuplicateEntry`), as timers refuse theirs. (The second review found the
/// later row silently taken, and the key brought back by the next start after a removal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_with_two_rows_for_one_key_is_refused_never_resolved_silently() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let key = acc_key("dup");
    let maps = |store: &MemoryStore| store.read(&key, Some(Space::MAPS), 0..=u64::MAX).unwrap();
    let a = spawn_acc(&storage, "dup", 1000, Retention::Full).await;
    change(&a, put("m", 1, 10)).await;
    let old = maps(&store).remove(0);
    // Removed and inserted again in one message: key 1 moves to a row of a new id.
    call!(a, M::Reinsert, "m".to_owned(), 1, 11).unwrap();
    stop(a).await;
    let rows = maps(&store);
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].id, old.id);
    // The damage: the old row (a valid envelope under its own id) is back.
    let epoch = store.open_actor(&key, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(key.clone(), epoch).put(Space::MAPS, old.id, old.bytes)])
        .unwrap();
    let spawned = Actor::spawn(None, Acc, start(&storage, "dup", 1000, Retention::Full)).await;
    let Ok((a, _)) = spawned else {
        return; // refused at the start: good
    };
    let Ok(entries) = call!(a, M::Dump, "m".to_owned()) else {
        return; // refused when the map is first asked for: good
    };
    assert_eq!(entries.len(), 1, "{entries:?}");
    // The key is removed by an acknowledged message...
    call!(a, M::Remove, "m".to_owned(), 1).unwrap();
    assert_eq!(dump(&a, "m").await, vec![]);
    stop(a).await;
    // ...and must stay removed.
    let a = spawn_acc(&storage, "dup", 1000, Retention::Full).await;
    let after = dump(&a, "m").await;
    stop(a).await;
    assert_eq!(
        after,
        vec![],
        "a key removed by an acknowledged message came back from a second row"
    );
}

on_shared_backends!(
    events_read_while_another_node_writes_are_never_reported_as_damage,
    a_start_raced_by_a_newer_instance_on_another_node_is_fenced_never_refused_as_damaged,
    racing_starts_of_one_es_key_on_two_nodes_keep_every_acknowledged_event,
    a_failed_commit_of_a_state_and_map_change_stores_neither,
);

// ---- Forged records: typed errors, never panics ----------------------------------------------

/// CRC-32C (Castagnoli), as the envelope's checksum.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn varint(mut x: u64, out: &mut Vec<u8>) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// A record of format 1 with its sequence and payload replaced, and a valid checksum: bytes
/// another writer (or an attacker who knows the format) could have stored.
fn forge(record: &[u8], sequence: Option<u64>, payload: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = record[..40].to_vec();
    let payload = payload.unwrap_or_else(|| record[40..].to_vec());
    if let Some(s) = sequence {
        out[16..24].copy_from_slice(&s.to_le_bytes());
    }
    out[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c(&[&out[..36], &payload]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out.extend(payload);
    out
}

/// A journal head's payload: the last event, the snapshot's, the last compacted.
fn head_payload(last: u64, snapshot: u64, compacted: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for x in [last, snapshot, compacted] {
        varint(x, &mut out);
    }
    out
}

/// A journal head whose numbers are extreme (but whose checksum is valid) is a typed error
/// or a consistent journal, at a start and for `Storage::events`: never a panic (an
/// arithmetic overflow) in the caller's task or the actor's start.
///
/// A forged head with extreme numbers is a typed error, never a panic or a wrapped number:
/// its numbers are checked before anything is added to them. (The second review found
/// `compacted + 1` and `snapshot + 1` overflowing on `u64::MAX`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_head_with_extreme_numbers_is_a_typed_error_never_a_panic() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let key = acc_key("forged");
    let a = spawn_acc(&storage, "forged", 4, Retention::Full).await;
    for n in 1..=5 {
        change(&a, add(n)).await;
    }
    stop(a).await;
    let head = store.snapshot(&key).unwrap();
    let snapshot = store
        .read(&key, Some(Space::JOURNAL_SNAPSHOT), 0..=0)
        .unwrap()
        .remove(0)
        .bytes;
    let plant = |h: Vec<u8>, s: Vec<u8>| {
        let epoch = store.open_actor(&key, &[]).unwrap().epoch;
        let c = ActorCommit::new(key.clone(), epoch)
            .put(Space::SNAPSHOT, 0, h)
            .put(Space::JOURNAL_SNAPSHOT, 0, s);
        store.commit(&[c]).unwrap();
    };
    // The forging is faithful: the same numbers start.
    plant(
        forge(&head, None, Some(head_payload(5, 4, 0))),
        snapshot.clone(),
    );
    let a = spawn_acc(&storage, "forged", 4, Retention::Full).await;
    assert_eq!(get(&a).await.total, 15);
    stop(a).await;
    let max = u64::MAX;
    let cases = [
        (head_payload(0, 0, max), None),
        (head_payload(5, 4, max), None),
        (head_payload(max, max, max), Some(max)),
        (head_payload(max, max, 0), Some(max)),
    ];
    let mut problems = Vec::new();
    for (payload, at) in cases {
        plant(
            forge(&head, None, Some(payload.clone())),
            forge(&snapshot, at, None),
        );
        let s = start(&storage, "forged", 4, Retention::Full);
        let spawned = tokio::spawn(async move { Actor::spawn(None, Acc, s).await });
        match within("a start", spawned).await {
            Err(join) => problems.push(format!("head {payload:?}: the start panicked: {join}")),
            Ok(Ok((a, _))) => stop(a).await,
            Ok(Err(SpawnErr::StartupFailed(e))) => match e.downcast::<LoadError>() {
                Ok(e) if matches!(*e, LoadError::Decode(_)) => {}
                Ok(other) => problems.push(format!("head {payload:?}: the start: {other}")),
                Err(other) => problems.push(format!("head {payload:?}: the start: {other}")),
            },
            Ok(Err(other)) => problems.push(format!("head {payload:?}: the start: {other}")),
        }
        for from in [0, 1, 6, max] {
            let st = storage.clone();
            let read = tokio::spawn(async move { st.events::<Acc>("forged", from).await });
            match within("a read", read).await {
                Err(join) => problems.push(format!(
                    "head {payload:?}, from {from}: events panicked: {join}"
                )),
                Ok(Ok(_) | Err(JournalError::Decode(_) | JournalError::Compacted { .. })) => {}
                Ok(Err(e)) => problems.push(format!("head {payload:?}, from {from}: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
