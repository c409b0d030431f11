#![allow(clippy::type_complexity, clippy::result_large_err)]
//! Adversarial tests of the two new models: event-sourced actors (the journal, its snapshots,
//! compaction, recovery, `Storage::events`) and durable maps (`Tx::map`). Each test checks one
//! promise and is named after it. Tests that fail on the code under review document a bug (see
//! the comment above each of them).

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[macro_use]
mod common;

use common::{Backend, Faults, Gate, decode_error};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, DecodeReason, Entities, EventError, EventSourced, Fired,
    ImportMode, Inbound, JournalError, Keyring, Loaded, MAX_MAP_NAME, MemoryStore, OpId, Outcome,
    Pending, PersistentActor, RecordRef, Retention, Row, Settled, Settlement, Space, Start,
    Storage, StorageConfig, Store, StoreError, Transforms, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A deadline that turns "never" into a failure instead of a hang (not a timing assertion).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not happen within a minute"))
}

// ---- The event-sourced actor under test --------------------------------------------------

/// The state, built only from events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    total: u64,
    /// Every amount in order (+ added, - taken): equal trails mean events applied in order.
    trail: Vec<i64>,
    blob_bytes: u64,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ev {
    Add(u64),
    Take(u64),
    Blob(Vec<u8>),
}

fn apply_ev(state: &mut Tally, ev: &Ev) -> Result<(), ActorProcessingErr> {
    match ev {
        Ev::Add(n) => {
            state.total += n;
            state.trail.push(*n as i64);
        }
        Ev::Take(n) => {
            if *n > state.total {
                return Err(format!("take of {n} exceeds {}", state.total).into());
            }
            state.total -= n;
            state.trail.push(-(*n as i64));
        }
        Ev::Blob(b) => state.blob_bytes += b.len() as u64,
    }
    Ok(())
}

/// The operation: tell the test (performed once, `Done`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Note(String);

/// One change to a durable map of the actor.
#[derive(Clone, Debug)]
enum Step {
    Insert(String, u64, u64),
    Remove(String, u64),
    /// Adds to the value, if the key is there.
    Update(String, u64, u64),
}

fn ins(map: &str, k: u64, v: u64) -> Step {
    Step::Insert(map.to_owned(), k, v)
}

fn rem(map: &str, k: u64) -> Step {
    Step::Remove(map.to_owned(), k)
}

enum EsMsg {
    Add(u64, RpcReplyPort<u64>),
    Take(u64, RpcReplyPort<Result<u64, String>>),
    /// Emits `n` events of 1 in one message, pushes one op, replies with the total.
    AddMany(u64, RpcReplyPort<u64>),
    /// Emits an event and pushes an op; replies with the op's id number.
    AddNoted(u64, RpcReplyPort<u64>),
    /// Pushes an op only; replies with its id number.
    Push(String, RpcReplyPort<u64>),
    /// Emits a blob event of `n` bytes; replies with its number or why it was refused.
    Blob(usize, RpcReplyPort<Result<u64, String>>),
    Get(RpcReplyPort<Tally>),
    /// Runs the steps (and emits `Add(emit)` first if `emit > 0`), then fails if asked.
    Maps(Vec<Step>, u64, bool, RpcReplyPort<()>),
    /// The entries of the maps named, by ascending key.
    Dump(Vec<String>, RpcReplyPort<Vec<Vec<(u64, u64)>>>),
    /// Puts a value of `n` bytes in map "blobs" (key 0).
    MapBlob(usize, RpcReplyPort<Result<(), String>>),
    /// The length of the value of map "blobs" at key 0.
    BlobLen(RpcReplyPort<Option<usize>>),
    /// Sets timer `name` due after `ms` that adds `amount` when it fires.
    Timer(String, u64, u64, RpcReplyPort<()>),
    Fire(u64),
    /// Takes `amount` and sends it to actor `to` in the same commit.
    SendTo(String, u64, RpcReplyPort<Result<OpId, String>>),
    Credit(u64),
    Settle(OpId, RpcReplyPort<Settlement>),
    Persist(Control<Note>),
}

/// Where each actor (by key) tells the test what it performed.
fn listeners() -> &'static Mutex<HashMap<String, mpsc::UnboundedSender<String>>> {
    static L: OnceLock<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

fn listen(key: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    listeners().lock().unwrap().insert(key.to_owned(), tx);
    rx
}

async fn heard(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("a performed operation", rx.recv())
        .await
        .expect("the channel is open")
}

#[derive(Clone, Default, ractor_persist::Persistent)]
#[persistent(name = "adv_es", event_sourced)]
struct Es {
    /// Events of this amount are emitted by `post_start` (0: none).
    emit_on_start: u64,
}

impl PersistentActor for Es {
    type Msg = EsMsg;
    type State = Tally;
    type Op = Note;
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<Tally, ActorProcessingErr> {
        Ok(Tally {
            total: opening,
            ..Tally::default()
        })
    }

    async fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        state: &mut Tally,
    ) -> Result<(), ActorProcessingErr> {
        if self.emit_on_start > 0 {
            tx.emit(state, Ev::Add(self.emit_on_start))?;
            tx.push(Note("started".into()))?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: EsMsg,
        state: &mut Tally,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EsMsg::Add(n, port) => {
                tx.emit(state, Ev::Add(n))?;
                tx.reply(port, state.total);
            }
            EsMsg::Take(n, port) => match tx.emit(state, Ev::Take(n)) {
                Ok(_) => tx.reply(port, Ok(state.total)),
                Err(EventError::Rejected { source, .. }) => tx.reply(port, Err(source.to_string())),
                Err(e) => return Err(e.into()),
            },
            EsMsg::AddMany(n, port) => {
                for _ in 0..n {
                    tx.emit(state, Ev::Add(1))?;
                }
                tx.push(Note("many".into()))?;
                tx.reply(port, state.total);
            }
            EsMsg::AddNoted(n, port) => {
                tx.emit(state, Ev::Add(n))?;
                let id = tx.push(Note(format!("noted {n}")))?;
                tx.reply(port, id.seq());
            }
            EsMsg::Push(what, port) => {
                let id = tx.push(Note(what))?;
                tx.reply(port, id.seq());
            }
            EsMsg::Blob(n, port) => match tx.emit(state, Ev::Blob(vec![0xA5; n])) {
                Ok(seq) => tx.reply(port, Ok(seq)),
                Err(e) => tx.reply(port, Err(e.to_string())),
            },
            EsMsg::Get(port) => tx.reply(port, state.clone()),
            EsMsg::Maps(steps, emit, fail, port) => {
                if emit > 0 {
                    tx.emit(state, Ev::Add(emit))?;
                }
                for step in steps {
                    match step {
                        Step::Insert(m, k, v) => {
                            tx.map::<u64, u64>(&m)?.insert(k, v);
                        }
                        Step::Remove(m, k) => {
                            tx.map::<u64, u64>(&m)?.remove(&k);
                        }
                        Step::Update(m, k, d) => {
                            tx.map::<u64, u64>(&m)?.update(&k, |v| *v += d);
                        }
                    }
                }
                if fail {
                    return Err("the handler failed after changing maps".into());
                }
                tx.reply(port, ());
            }
            EsMsg::Dump(names, port) => {
                let mut out = Vec::new();
                for name in names {
                    let map = tx.map::<u64, u64>(&name)?;
                    out.push(map.iter().map(|(k, v)| (*k, *v)).collect());
                }
                tx.reply(port, out);
            }
            EsMsg::MapBlob(n, port) => {
                tx.map::<u64, Vec<u8>>("blobs")?.insert(0, vec![0x5A; n]);
                tx.reply(port, Ok(()));
            }
            EsMsg::BlobLen(port) => {
                let len = tx.map::<u64, Vec<u8>>("blobs")?.get(&0).map(Vec::len);
                tx.reply(port, len);
            }
            EsMsg::Timer(name, ms, amount, port) => {
                tx.set_timer_after(&name, Duration::from_millis(ms), &amount)?;
                tx.reply(port, ());
            }
            EsMsg::Fire(amount) => {
                tx.emit(state, Ev::Add(amount))?;
                tx.push(Note(format!("fired {amount}")))?;
            }
            EsMsg::SendTo(to, amount, port) => match tx.emit(state, Ev::Take(amount)) {
                Ok(_) => {
                    let id = tx.send_to::<Es, _>(&to, &amount)?;
                    tx.reply(port, Ok(id));
                }
                Err(e) => tx.reply(port, Err(e.to_string())),
            },
            EsMsg::Credit(amount) => {
                tx.emit(state, Ev::Add(amount))?;
                tx.push(Note(format!("credited {amount}")))?;
            }
            EsMsg::Settle(id, port) => {
                let settlement = tx.settlement(&id);
                tx.reply(port, settlement);
            }
            EsMsg::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &Tally) -> Result<Outcome, ActorProcessingErr> {
        let key = op.id().actor().key().to_owned();
        if let Some(tx) = listeners().lock().unwrap().get(&key) {
            let _ = tx.send(op.op().0.clone());
        }
        Ok(Outcome::Done)
    }

    fn control(msg: EsMsg) -> Result<Control<Note>, EsMsg> {
        match msg {
            EsMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Note>) -> Option<EsMsg> {
        Some(EsMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<EsMsg, DecodeReason> {
        Ok(EsMsg::Credit(msg.decode()?))
    }

    fn timer(fired: Fired) -> Result<EsMsg, DecodeReason> {
        Ok(EsMsg::Fire(fired.decode()?))
    }
}

impl EventSourced for Es {
    type Event = Ev;

    fn apply(state: &mut Tally, event: &Ev) -> Result<(), ActorProcessingErr> {
        apply_ev(state, event)
    }
}

fn es_key(key: &str) -> ActorKey {
    ActorKey::new("adv_es", key)
}

async fn spawn_with(
    storage: &Storage,
    key: &str,
    every: u64,
    retention: Retention,
    actor: Es,
) -> (ActorRef<EsMsg>, JoinHandle<()>) {
    let start = Start::<Es>::new(storage, key, 0)
        .snapshot_every(every)
        .retention(retention);
    within("spawn", Actor::spawn(None, actor, start))
        .await
        .expect("spawn the event-sourced actor")
}

async fn spawn_es(
    storage: &Storage,
    key: &str,
    every: u64,
    retention: Retention,
) -> ActorRef<EsMsg> {
    spawn_with(storage, key, every, retention, Es::default())
        .await
        .0
}

async fn get(a: &ActorRef<EsMsg>) -> Tally {
    call!(a, EsMsg::Get).unwrap()
}

async fn dump(a: &ActorRef<EsMsg>, names: &[&str]) -> Vec<Vec<(u64, u64)>> {
    let names = names.iter().map(|n| (*n).to_owned()).collect();
    call!(a, EsMsg::Dump, names).unwrap()
}

async fn maps(a: &ActorRef<EsMsg>, steps: Vec<Step>) {
    call!(a, EsMsg::Maps, steps, 0, false).unwrap();
}

async fn stop(a: ActorRef<EsMsg>) {
    within("stop", a.stop_and_wait(None, None)).await.unwrap();
}

/// Waits until an actor that failed has stopped.
async fn stopped(handle: JoinHandle<()>) {
    within("the failed actor stops", handle).await.unwrap();
}

fn fold(events: &[(u64, Ev)]) -> Tally {
    let mut state = Tally::default();
    for (_, e) in events {
        apply_ev(&mut state, e).unwrap();
    }
    state
}

fn rows(store: &MemoryStore, key: &ActorKey, space: Space) -> Vec<Row> {
    store.read(key, Some(space), 0..=u64::MAX).unwrap()
}

/// Changes rows of `key` behind the runtime's back (taking an epoch as a writer would).
fn tamper(
    store: &MemoryStore,
    key: &ActorKey,
    f: impl FnOnce(ActorCommit, &Loaded) -> ActorCommit,
) {
    let loaded = store.open_actor(key, &Space::RECORD).unwrap();
    let commit = f(ActorCommit::new(key.clone(), loaded.epoch), &loaded);
    store.commit(&[commit]).unwrap();
}

// ---- P1/P2/P5: the events of a message go with its commit --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_no_event_and_no_op_of_the_message() {
    let backend = Backend::memory();
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let mut notes = listen("failed-commit");
    let (a, handle) =
        spawn_with(&storage, "failed-commit", 2, Retention::Full, Es::default()).await;
    call!(a, EsMsg::Add, 5).unwrap();
    call!(a, EsMsg::AddNoted, 7).unwrap();
    assert_eq!(heard(&mut notes).await, "noted 7");
    faults.fail_commits.store(true, Ordering::SeqCst);
    assert!(
        call!(a, EsMsg::AddNoted, 100).is_err(),
        "the caller of a failed commit gets an error"
    );
    stopped(handle).await;
    assert!(
        notes.try_recv().is_err(),
        "the op of a failed commit was performed"
    );
    let storage = backend.open(&Faults::default());
    let events = storage.events::<Es>("failed-commit", 1).await.unwrap();
    assert_eq!(events, vec![(1, Ev::Add(5)), (2, Ev::Add(7))]);
    let a = spawn_es(&storage, "failed-commit", 2, Retention::Full).await;
    assert_eq!(get(&a).await.total, 12);
    // And the journal goes on at 3, not after the failed message's number.
    call!(a, EsMsg::Add, 1).unwrap();
    stop(a).await;
    let events = storage.events::<Es>("failed-commit", 3).await.unwrap();
    assert_eq!(events, vec![(3, Ev::Add(1))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_and_no_op_of_an_event_leave_before_its_commit_returns() {
    let backend = Backend::memory();
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let mut notes = listen("gated");
    let a = spawn_es(&storage, "gated", 1, Retention::Light).await;
    call!(a, EsMsg::Add, 1).unwrap();
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let (port, mut reply) = ractor::concurrency::oneshot();
    a.send_message(EsMsg::AddNoted(5, RpcReplyPort::from(port)))
        .unwrap();
    within(
        "the commit enters the store",
        tokio::task::spawn_blocking(move || entered.recv().unwrap()),
    )
    .await
    .unwrap();
    assert!(
        reply.try_recv().is_err(),
        "the reply left before the event's commit returned"
    );
    assert!(
        notes.try_recv().is_err(),
        "the op ran before the event's commit returned"
    );
    release.send(()).unwrap();
    within("the reply", &mut reply).await.unwrap();
    assert_eq!(heard(&mut notes).await, "noted 5");
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_leaves_no_event_and_no_map_change() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, handle) = spawn_with(
        &storage,
        "failed-handler",
        3,
        Retention::Full,
        Es::default(),
    )
    .await;
    call!(
        a,
        EsMsg::Maps,
        vec![ins("a", 1, 10), ins("b", 2, 20)],
        4,
        false
    )
    .unwrap();
    let _ = a.cast(EsMsg::Maps(
        vec![ins("a", 1, 11), rem("b", 2), ins("a", 3, 30)],
        6,
        true,
        ractor::concurrency::oneshot().0.into(),
    ));
    stopped(handle).await;
    let key = es_key("failed-handler");
    assert_eq!(rows(&store, &key, Space::JOURNAL).len(), 1);
    assert_eq!(rows(&store, &key, Space::MAPS).len(), 2);
    let a = spawn_es(&storage, "failed-handler", 3, Retention::Full).await;
    assert_eq!(get(&a).await.total, 4);
    assert_eq!(
        dump(&a, &["a", "b"]).await,
        vec![vec![(1, 10)], vec![(2, 20)]]
    );
    stop(a).await;
}

// ---- P5 seen from memory: the state an actor holds when it stops --------------------------

/// The last value each probe (by key) held when it was dropped.
static LAST_DROPPED: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

fn last_dropped(key: &str) -> Option<i64> {
    LAST_DROPPED.lock().unwrap().get(key).copied()
}

#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    key: String,
    total: i64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut last = LAST_DROPPED.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(self.key.clone(), self.total);
    }
}

enum ProbeMsg {
    Add(i64, RpcReplyPort<i64>),
    AddThenFail(i64, RpcReplyPort<i64>),
    /// Inserts into a durable map; the state does not change.
    MapInsert(u64, u64, RpcReplyPort<()>),
    Peek(RpcReplyPort<i64>),
}

/// An event-sourced probe.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_es_probe", event_sourced)]
struct EsProbe;

impl PersistentActor for EsProbe {
    type Msg = ProbeMsg;
    type State = Probe;
    type Op = ();
    type Arguments = String;

    async fn init(&self, key: String) -> Result<Probe, ActorProcessingErr> {
        Ok(Probe { key, total: 0 })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ProbeMsg,
        probe: &mut Probe,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::Add(n, port) => {
                tx.emit(probe, n)?;
                tx.reply(port, probe.total);
            }
            ProbeMsg::AddThenFail(n, port) => {
                tx.emit(probe, n)?;
                tx.reply(port, probe.total);
                return Err("the handler failed after emitting".into());
            }
            ProbeMsg::MapInsert(k, v, port) => {
                tx.map::<u64, u64>("m")?.insert(k, v);
                tx.reply(port, ());
            }
            ProbeMsg::Peek(port) => tx.reply(port, probe.total),
        }
        Ok(())
    }
}

impl EventSourced for EsProbe {
    type Event = i64;

    fn apply(state: &mut Probe, event: &i64) -> Result<(), ActorProcessingErr> {
        state.total += event;
        Ok(())
    }
}

/// A snapshot-mode probe with a durable map.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_plain_probe")]
struct PlainProbe;

impl PersistentActor for PlainProbe {
    type Msg = ProbeMsg;
    type State = Probe;
    type Op = ();
    /// The key (for the probe's reports) and the opening total.
    type Arguments = (String, i64);

    async fn init(&self, (key, total): (String, i64)) -> Result<Probe, ActorProcessingErr> {
        Ok(Probe { key, total })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ProbeMsg,
        probe: &mut Probe,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::Add(n, port) => {
                probe.total += n;
                tx.reply(port, probe.total);
            }
            ProbeMsg::AddThenFail(n, port) => {
                probe.total += n;
                tx.reply(port, probe.total);
                return Err("the handler failed after changing the state".into());
            }
            ProbeMsg::MapInsert(k, v, port) => {
                tx.map::<u64, u64>("m")?.insert(k, v);
                tx.reply(port, ());
            }
            ProbeMsg::Peek(port) => tx.reply(port, probe.total),
        }
        Ok(())
    }
}

async fn es_probe(storage: &Storage, key: &str) -> (ActorRef<ProbeMsg>, JoinHandle<()>) {
    let start = Start::<EsProbe>::new(storage, key, key.to_owned());
    within("spawn", Actor::spawn(None, EsProbe, start))
        .await
        .unwrap()
}

async fn plain_probe(
    storage: &Storage,
    key: &str,
    opening: i64,
) -> (ActorRef<ProbeMsg>, JoinHandle<()>) {
    let start = Start::<PlainProbe>::new(storage, key, (key.to_owned(), opening));
    within("spawn", Actor::spawn(None, PlainProbe, start))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_a_failed_es_handler_equals_the_store() {
    let key = "es-probe-handler";
    let storage = Storage::new(MemoryStore::new());
    let (a, handle) = es_probe(&storage, key).await;
    assert_eq!(call!(a, ProbeMsg::Add, 3).unwrap(), 3);
    assert_eq!(call!(a, ProbeMsg::Add, 4).unwrap(), 7);
    assert!(call!(a, ProbeMsg::AddThenFail, 100).is_err());
    stopped(handle).await;
    assert_eq!(last_dropped(key), Some(7), "memory kept the failed event");
    let (a, _) = es_probe(&storage, key).await;
    assert_eq!(call!(a, ProbeMsg::Peek).unwrap(), 7);
    a.stop_and_wait(None, None).await.unwrap();
}

/// A store that writes a commit and then says it failed, once when asked (an answer lost on
/// the way back: the commit may have been written, and was).
#[derive(Clone)]
struct LostAnswer {
    inner: MemoryStore,
    lose_next: Arc<AtomicBool>,
}

impl Store for LostAnswer {
    fn name(&self) -> &str {
        "lost-answer"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.inner.commit(batch)?;
        if self.lose_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend("lost-answer", "the answer was lost"));
        }
        Ok(())
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.read(key, space, ids)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_a_failed_es_commit_that_landed_equals_the_store() {
    let key = "es-probe-landed";
    let store = MemoryStore::new();
    let lose = Arc::new(AtomicBool::new(false));
    let storage = Storage::new(LostAnswer {
        inner: store.clone(),
        lose_next: lose.clone(),
    });
    let (a, handle) = es_probe(&storage, key).await;
    assert_eq!(call!(a, ProbeMsg::Add, 3).unwrap(), 3);
    lose.store(true, Ordering::SeqCst);
    assert!(
        call!(a, ProbeMsg::Add, 10).is_err(),
        "no reply after a failed commit"
    );
    stopped(handle).await;
    let in_memory = last_dropped(key).expect("the state was dropped when the actor stopped");
    let storage = Storage::new(store.clone());
    let (a, _) = es_probe(&storage, key).await;
    let stored = call!(a, ProbeMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    assert_eq!(stored, 13, "the commit landed");
    assert_eq!(
        in_memory, stored,
        "memory equals the store after MaybeWritten"
    );
}

/// A snapshot-mode actor whose first commit changes only a durable map writes its state too,
/// so a later failed handler puts the stored state back (P5). (The review found the state
/// missing: the instance was marked failed with the handler's change in memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_a_failed_handler_following_a_map_only_commit_equals_the_store() {
    let key = "plain-probe-map-only";
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, handle) = plain_probe(&storage, key, 5).await;
    call!(a, ProbeMsg::MapInsert, 1, 10).unwrap();
    assert!(call!(a, ProbeMsg::AddThenFail, 100).is_err());
    stopped(handle).await;
    let in_memory = last_dropped(key).expect("the state was dropped when the actor stopped");
    let (a, _) = plain_probe(&storage, key, 5).await;
    let stored = call!(a, ProbeMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    assert_eq!(
        in_memory, stored,
        "memory kept the failed handler's change (P5)"
    );
}

/// A snapshot-mode actor whose first commit changes only a durable map stores its state, so
/// its next start does not run `init` again (with other arguments). (Found by the review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_only_first_commit_keeps_the_state_init_built() {
    let key = "plain-map-only-init";
    let storage = Storage::new(MemoryStore::new());
    let (a, _) = plain_probe(&storage, key, 5).await;
    call!(a, ProbeMsg::MapInsert, 1, 10).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    // The second start is given other arguments: they must not matter any more.
    let (a, _) = plain_probe(&storage, key, 99).await;
    let total = call!(a, ProbeMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    assert_eq!(
        total, 5,
        "a started actor with committed map entries ran `init` again"
    );
}

// ---- Recovery = latest snapshot + the events after it = the fold of the whole journal -------

/// The messages a test sends: adds, takes (some refused), and a burst now and then.
#[derive(Clone, Copy)]
enum Act {
    Add(u64),
    Take(u64),
    Many(u64),
}

fn script(n: u64, seed: u64) -> Vec<Act> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 7 {
                0..=2 => Act::Add(x % 50 + 1),
                3 | 4 => Act::Take(x % 80 + 1),
                5 => Act::Many(x % 5 + 1),
                _ => Act::Add(1),
            }
        })
        .collect()
}

/// Sends `acts` and applies them to `model` as the actor should.
async fn drive(a: &ActorRef<EsMsg>, acts: &[Act], model: &mut Tally) {
    for act in acts {
        match *act {
            Act::Add(n) => {
                apply_ev(model, &Ev::Add(n)).unwrap();
                assert_eq!(call!(a, EsMsg::Add, n).unwrap(), model.total);
            }
            Act::Take(n) => {
                let refused = apply_ev(model, &Ev::Take(n)).is_err();
                assert_eq!(call!(a, EsMsg::Take, n).unwrap().is_err(), refused);
            }
            Act::Many(n) => {
                for _ in 0..n {
                    apply_ev(model, &Ev::Add(1)).unwrap();
                }
                assert_eq!(call!(a, EsMsg::AddMany, n).unwrap(), model.total);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_equals_the_fold_of_the_journal_for_every_snapshot_interval_and_retention() {
    for every in [0, 1, 2, 3, 7, 1000, u64::MAX] {
        for retention in [Retention::Full, Retention::Light] {
            let store = MemoryStore::new();
            let storage = Storage::new(store.clone());
            let key = format!("fold-{every}-{retention:?}");
            let mut model = Tally::default();
            for round in 0..3 {
                let a = spawn_es(&storage, &key, every, retention).await;
                assert_eq!(
                    get(&a).await,
                    model,
                    "every {every}, {retention:?}, round {round}"
                );
                drive(&a, &script(17, 7 + round), &mut model).await;
                stop(a).await;
            }
            let a = spawn_es(&storage, &key, every, retention).await;
            assert_eq!(get(&a).await, model, "every {every}, {retention:?}");
            stop(a).await;
            let journal = rows(&store, &es_key(&key), Space::JOURNAL);
            match retention {
                Retention::Full => {
                    let events = storage.events::<Es>(&key, 1).await.unwrap();
                    assert_eq!(fold(&events), model, "every {every}: the whole journal");
                    assert_eq!(journal.len(), events.len());
                }
                Retention::Light => {
                    let kept = journal.len() as u64;
                    assert!(
                        kept < every.max(1),
                        "every {every}: {kept} events kept after compaction"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_snapshot_every_between_runs_compacts_and_keeps_the_state() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "lowered", 1000, Retention::Light).await;
    for n in 1..=10 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    let before = get(&a).await;
    stop(a).await;
    let a = spawn_es(&storage, "lowered", 3, Retention::Light).await;
    // A message with no event: the snapshot that is now due may come with it.
    call!(a, EsMsg::Push, "op only".to_owned()).unwrap();
    assert_eq!(get(&a).await, before);
    stop(a).await;
    let a = spawn_es(&storage, "lowered", 3, Retention::Light).await;
    assert_eq!(get(&a).await, before, "compaction kept the state");
    call!(a, EsMsg::Add, 1).unwrap();
    stop(a).await;
    let a = spawn_es(&storage, "lowered", 3, Retention::Light).await;
    assert_eq!(get(&a).await.total, before.total + 1);
    stop(a).await;
}

/// `Storage::events` reads in order from any number, on every backend, and tells a compacted
/// journal from an empty one.
async fn events_are_read_in_order_from_any_number_and_compaction_is_reported(backend: Backend) {
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let full = spawn_es(&storage, "full", 4, Retention::Full).await;
    let light = spawn_es(&storage, "light", 4, Retention::Light).await;
    for n in 1..=10 {
        call!(full, EsMsg::Add, n).unwrap();
        call!(light, EsMsg::Add, n).unwrap();
    }
    stop(full).await;
    stop(light).await;
    storage.close().await.unwrap();
    drop(storage);
    let storage = backend.open(&faults);
    let all: Vec<(u64, Ev)> = (1..=10).map(|n| (n, Ev::Add(n))).collect();
    for from in 0..=12u64 {
        let got = storage.events::<Es>("full", from).await.unwrap();
        let skip = (from.max(1) - 1).min(10) as usize;
        assert_eq!(got, all[skip..], "from {from}");
    }
    assert!(
        storage
            .events::<Es>("full", u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    for from in [0, 1, 5, 8] {
        match storage.events::<Es>("light", from).await {
            Err(JournalError::Compacted { first: 9, .. }) => {}
            other => panic!("from {from}: expected Compacted from 9, got {other:?}"),
        }
    }
    assert_eq!(storage.events::<Es>("light", 9).await.unwrap(), all[8..]);
    assert!(storage.events::<Es>("light", 11).await.unwrap().is_empty());
    assert!(storage.events::<Es>("nobody", 1).await.unwrap().is_empty());
    storage.close().await.unwrap();
}

on_every_backend!(events_are_read_in_order_from_any_number_and_compaction_is_reported);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_emitting_thousands_of_events_commits_them_in_one_write() {
    let backend = Backend::memory();
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let mut notes = listen("thousands");
    let a = spawn_es(&storage, "thousands", 1000, Retention::Full).await;
    call!(a, EsMsg::Add, 1).unwrap();
    let before = faults.commits();
    assert_eq!(call!(a, EsMsg::AddMany, 5000).unwrap(), 5001);
    assert_eq!(faults.commits(), before + 1, "one commit for the message");
    assert_eq!(heard(&mut notes).await, "many");
    stop(a).await;
    let events = storage.events::<Es>("thousands", 1).await.unwrap();
    assert_eq!(events.len(), 5001);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, (s, _))| *s == i as u64 + 1)
    );
    let a = spawn_es(&storage, "thousands", 1000, Retention::Full).await;
    assert_eq!(get(&a).await, fold(&events));
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_event_round_trips_and_an_oversized_one_is_refused_before_anything_is_written() {
    let backend = Backend::memory();
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let a = spawn_es(&storage, "blob", 1000, Retention::Full).await;
    let big = 8 * 1024 * 1024;
    assert_eq!(call!(a, EsMsg::Blob, big).unwrap(), Ok(1));
    let commits = faults.commits();
    let refused = call!(a, EsMsg::Blob, 64 * 1024 * 1024 + 1).unwrap();
    assert!(
        refused.is_err(),
        "an event over the payload cap was accepted"
    );
    assert_eq!(faults.commits(), commits, "the refused event wrote nothing");
    assert_eq!(get(&a).await.blob_bytes, big as u64);
    stop(a).await;
    let a = spawn_es(&storage, "blob", 1000, Retention::Full).await;
    assert_eq!(get(&a).await.blob_bytes, big as u64);
    assert_eq!(call!(a, EsMsg::Add, 1).unwrap(), 1);
    stop(a).await;
    let events = storage.events::<Es>("blob", 1).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(matches!(&events[0], (1, Ev::Blob(b)) if b.len() == big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_emitted_in_post_start_are_committed_with_the_start() {
    let storage = Storage::new(MemoryStore::new());
    let mut notes = listen("post-start");
    let actor = Es { emit_on_start: 3 };
    let (a, _) = spawn_with(&storage, "post-start", 2, Retention::Full, actor.clone()).await;
    assert_eq!(heard(&mut notes).await, "started");
    assert_eq!(get(&a).await.total, 3);
    stop(a).await;
    assert_eq!(
        storage.events::<Es>("post-start", 1).await.unwrap(),
        vec![(1, Ev::Add(3))]
    );
    let (a, _) = spawn_with(&storage, "post-start", 2, Retention::Full, actor).await;
    assert_eq!(heard(&mut notes).await, "started");
    assert_eq!(get(&a).await.total, 6);
    stop(a).await;
    assert_eq!(
        storage.events::<Es>("post-start", 1).await.unwrap(),
        vec![(1, Ev::Add(3)), (2, Ev::Add(3))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es_actor_whose_first_commit_fails_starts_again_from_init() {
    let backend = Backend::memory();
    let faults = Faults::default();
    faults.fail_commits.store(true, Ordering::SeqCst);
    let storage = backend.open(&faults);
    let (a, handle) = spawn_with(&storage, "first-fails", 2, Retention::Light, Es::default()).await;
    assert!(call!(a, EsMsg::Maps, vec![ins("a", 1, 1)], 5, false).is_err());
    stopped(handle).await;
    let key = es_key("first-fails");
    let Backend::Memory(store) = &backend else {
        unreachable!()
    };
    assert!(
        store
            .open_actor(&key, &Space::RECORD)
            .unwrap()
            .rows
            .is_empty(),
        "nothing of the failed first commit was written"
    );
    let storage = backend.open(&Faults::default());
    let a = spawn_es(&storage, "first-fails", 2, Retention::Light).await;
    assert_eq!(get(&a).await, Tally::default());
    assert_eq!(dump(&a, &["a"]).await, vec![vec![]]);
    call!(a, EsMsg::Add, 2).unwrap();
    stop(a).await;
    assert_eq!(
        storage.events::<Es>("first-fails", 1).await.unwrap(),
        vec![(1, Ev::Add(2))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_ids_go_on_without_repeats_across_restarts_of_a_compacting_es_actor() {
    let storage = Storage::new(MemoryStore::new());
    let mut notes = listen("op-ids");
    let mut seqs = Vec::new();
    for round in 0..4 {
        let a = spawn_es(&storage, "op-ids", 2, Retention::Light).await;
        seqs.push(call!(a, EsMsg::AddNoted, round).unwrap());
        seqs.push(call!(a, EsMsg::Push, format!("push {round}")).unwrap());
        call!(a, EsMsg::Add, 1).unwrap();
        seqs.push(call!(a, EsMsg::Push, format!("again {round}")).unwrap());
        for _ in 0..3 {
            heard(&mut notes).await;
        }
        stop(a).await;
    }
    assert_eq!(
        seqs,
        (0..12).collect::<Vec<u64>>(),
        "op ids in order, none repeated"
    );
}

// ---- Models do not read each other ----------------------------------------------------------

/// A snapshot-mode actor stored under the event-sourced actor's name.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_es")]
struct SnapshotNamesake;

impl PersistentActor for SnapshotNamesake {
    type Msg = EsMsg;
    type State = Tally;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Tally, ActorProcessingErr> {
        Ok(Tally::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: EsMsg,
        state: &mut Tally,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EsMsg::Add(n, port) => {
                state.total += n;
                tx.reply(port, state.total);
            }
            EsMsg::Get(port) => tx.reply(port, state.clone()),
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es_actor_refuses_a_snapshot_mode_record_and_leaves_it_untouched() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let start = Start::<SnapshotNamesake>::new(&storage, "renamed", ());
    let (s, _) = Actor::spawn(None, SnapshotNamesake, start).await.unwrap();
    call!(s, EsMsg::Add, 5).unwrap();
    s.stop_and_wait(None, None).await.unwrap();
    let key = es_key("renamed");
    let before = store.open_actor(&key, &Space::RECORD).unwrap().rows;
    let start = Start::<Es>::new(&storage, "renamed", 0);
    let err = decode_error(Actor::spawn(None, Es::default(), start).await.unwrap_err());
    assert_eq!(err.key, key);
    assert!(matches!(err.reason, DecodeReason::WrongModel(_)), "{err}");
    assert!(matches!(
        storage.events::<Es>("renamed", 1).await,
        Err(JournalError::Decode(_))
    ));
    assert_eq!(store.open_actor(&key, &Space::RECORD).unwrap().rows, before);
    let start = Start::<SnapshotNamesake>::new(&storage, "renamed", ());
    let (s, _) = Actor::spawn(None, SnapshotNamesake, start).await.unwrap();
    assert_eq!(call!(s, EsMsg::Get).unwrap().total, 5);
    s.stop_and_wait(None, None).await.unwrap();
}

// ---- P7: one writer per key ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_es_instance_fences_the_first_whose_events_never_land() {
    let storage = Storage::new(MemoryStore::new());
    let (first, handle) = spawn_with(&storage, "fenced", 2, Retention::Full, Es::default()).await;
    call!(first, EsMsg::Add, 1).unwrap();
    let second = spawn_es(&storage, "fenced", 2, Retention::Full).await;
    assert_eq!(get(&second).await.total, 1);
    assert!(
        call!(first, EsMsg::Add, 10).is_err(),
        "the fenced instance's commit was accepted"
    );
    stopped(handle).await;
    assert_eq!(call!(second, EsMsg::Add, 2).unwrap(), 3);
    stop(second).await;
    assert_eq!(
        storage.events::<Es>("fenced", 1).await.unwrap(),
        vec![(1, Ev::Add(1)), (2, Ev::Add(2))]
    );
}

// ---- P8: bad bytes are typed errors naming the key, never panics, never a default -----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_in_head_snapshot_event_and_map_rows_are_typed_errors_naming_the_key() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "flips", 3, Retention::Full).await;
    for n in 1..=5 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    maps(&a, vec![ins("a", 1, 10), ins("a", 2, 20)]).await;
    let good = get(&a).await;
    stop(a).await;
    let key = es_key("flips");
    let map_row = rows(&store, &key, Space::MAPS)[0].id;
    // (space, id, the record a start names, whether a start reads it, whether
    // `Storage::events` reads it)
    let targets = [
        (Space::SNAPSHOT, 0, RecordRef::JournalHead, true, true),
        (Space::JOURNAL_SNAPSHOT, 0, RecordRef::Snapshot, true, false),
        (Space::JOURNAL, 5, RecordRef::Event(5), true, true),
        (Space::JOURNAL, 2, RecordRef::Event(2), false, true),
        (
            Space::MAPS,
            map_row,
            RecordRef::MapEntry(map_row),
            true,
            false,
        ),
    ];
    for (space, id, record, started, read) in targets {
        let original = store.read(&key, Some(space), id..=id).unwrap()[0]
            .bytes
            .clone();
        for i in 0..original.len() {
            let mut flipped = original.clone();
            flipped[i] ^= 1 << (i % 8);
            tamper(&store, &key, |c, _| c.put(space, id, flipped));
            let spawned =
                Actor::spawn(None, Es::default(), Start::<Es>::new(&storage, "flips", 0)).await;
            match spawned {
                Ok((a, _)) if !started => stop(a).await,
                Ok((a, _)) => {
                    let state = get(&a).await;
                    stop(a).await;
                    panic!(
                        "{space} row {id}, byte {i} flipped: the start succeeded with {state:?}"
                    );
                }
                Err(e) => {
                    assert!(started, "{space} row {id}, byte {i}: {e}");
                    let e = decode_error(e);
                    assert_eq!(e.key, key, "byte {i}");
                    assert_eq!(e.record, record, "{space} row {id}, byte {i}: {e}");
                }
            }
            match storage.events::<Es>("flips", 1).await {
                Err(JournalError::Decode(e)) if read => {
                    assert_eq!(e.key, key);
                    assert_eq!(e.record, record, "{space} row {id}, byte {i}: {e}");
                }
                Ok(events) if !read => assert_eq!(events.len(), 5),
                other => panic!("{space} row {id}, byte {i}: events gave {other:?}"),
            }
        }
        tamper(&store, &key, |c, _| c.put(space, id, original));
    }
    // The refused starts overwrote nothing.
    let a = spawn_es(&storage, "flips", 3, Retention::Full).await;
    assert_eq!(get(&a).await, good);
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(1, 10), (2, 20)]]);
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_under_another_number_is_refused_naming_it() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "moved", 1000, Retention::Full).await;
    for n in 1..=5 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    stop(a).await;
    let key = es_key("moved");
    let fourth = store.read(&key, Some(Space::JOURNAL), 4..=4).unwrap()[0]
        .bytes
        .clone();
    tamper(&store, &key, |c, _| c.put(Space::JOURNAL, 5, fourth));
    let start = Start::<Es>::new(&storage, "moved", 0);
    let err = decode_error(Actor::spawn(None, Es::default(), start).await.unwrap_err());
    assert_eq!(err.key, key);
    assert_eq!(err.record, RecordRef::Event(5));
    assert!(
        matches!(
            err.reason,
            DecodeReason::SequenceMismatch {
                expected: 5,
                found: 4
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_never_quarantined_into_a_fresh_start() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "no-quarantine", 1000, Retention::Full).await;
    for n in 1..=3 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    stop(a).await;
    let key = es_key("no-quarantine");
    let before = store.open_actor(&key, &Space::RECORD).unwrap().rows;
    let mut bad = before
        .iter()
        .find(|r| r.space == Space::JOURNAL && r.id == 2)
        .unwrap()
        .bytes
        .clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x10;
    tamper(&store, &key, |c, _| c.put(Space::JOURNAL, 2, bad));
    let start = Start::<Es>::new(&storage, "no-quarantine", 0).quarantine_undecodable();
    let err = decode_error(Actor::spawn(None, Es::default(), start).await.unwrap_err());
    assert_eq!(err.record, RecordRef::Event(2));
    let after = store.open_actor(&key, &Space::RECORD).unwrap().rows;
    assert_eq!(after.len(), before.len(), "the journal was moved aside");
    assert!(storage.quarantined("adv_es").await.unwrap().is_empty());
}

// ---- Durable maps ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_then_insert_and_insert_then_remove_in_one_message_leave_exactly_the_result() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "same-key", 1000, Retention::Full).await;
    maps(&a, vec![ins("a", 1, 10), ins("a", 2, 20)]).await;
    maps(
        &a,
        vec![
            rem("a", 1),
            ins("a", 1, 11),
            ins("a", 3, 30),
            rem("a", 3),
            ins("a", 2, 21),
            rem("a", 2),
            ins("a", 2, 22),
            Step::Update("a".into(), 2, 1),
        ],
    )
    .await;
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(1, 11), (2, 23)]]);
    stop(a).await;
    assert_eq!(rows(&store, &es_key("same-key"), Space::MAPS).len(), 2);
    let a = spawn_es(&storage, "same-key", 1000, Retention::Full).await;
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(1, 11), (2, 23)]]);
    stop(a).await;
}

/// A message that inserts a key that was not there and removes it again changes no map and
/// costs no write (P6). (The review found an empty commit submitted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserting_and_removing_a_new_key_in_one_message_costs_no_write() {
    let backend = Backend::memory();
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let a = spawn_es(&storage, "no-write", 1000, Retention::Full).await;
    maps(&a, vec![ins("a", 1, 10)]).await;
    let before = faults.commits();
    maps(&a, vec![ins("a", 5, 50), rem("a", 5)]).await;
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(1, 10)]]);
    let after = faults.commits();
    stop(a).await;
    assert_eq!(
        after, before,
        "a message that left every map as it was cost a commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_freed_by_removals_and_failed_messages_never_make_two_maps_share_a_row() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let key = es_key("reuse");
    let a = spawn_es(&storage, "reuse", 1000, Retention::Full).await;
    maps(&a, vec![ins("a", 1, 10), ins("a", 2, 20), ins("a", 3, 30)]).await;
    maps(&a, vec![rem("a", 3), rem("a", 2)]).await;
    stop(a).await;
    // The next start hands out the freed ids again; a failed message takes some first.
    let (a, handle) = spawn_with(&storage, "reuse", 1000, Retention::Full, Es::default()).await;
    let _ = a.cast(EsMsg::Maps(
        vec![ins("b", 7, 70), ins("a", 9, 90)],
        0,
        true,
        ractor::concurrency::oneshot().0.into(),
    ));
    stopped(handle).await;
    let a = spawn_es(&storage, "reuse", 1000, Retention::Full).await;
    maps(&a, vec![ins("b", 7, 70), ins("a", 4, 40), ins("b", 8, 80)]).await;
    stop(a).await;
    let a = spawn_es(&storage, "reuse", 1000, Retention::Full).await;
    maps(&a, vec![rem("a", 1), ins("b", 1, 11)]).await;
    stop(a).await;
    let a = spawn_es(&storage, "reuse", 1000, Retention::Full).await;
    assert_eq!(
        dump(&a, &["a", "b"]).await,
        vec![vec![(4, 40)], vec![(1, 11), (7, 70), (8, 80)]]
    );
    stop(a).await;
    assert_eq!(rows(&store, &key, Space::MAPS).len(), 4);
}

/// The steps of a random history over two maps, and whether each message fails or is followed
/// by a restart.
fn random_steps(x: &mut u64) -> (Vec<Step>, bool, bool) {
    let mut next = || {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    let n = next() % 4 + 1;
    let mut steps = Vec::new();
    for _ in 0..n {
        let map = if next() % 2 == 0 { "a" } else { "b" };
        let k = next() % 10;
        let v = next() % 1000;
        match next() % 6 {
            0 | 1 => steps.push(ins(map, k, v)),
            2 => steps.push(rem(map, k)),
            3 => steps.push(Step::Update(map.to_owned(), k, v)),
            4 => {
                steps.push(rem(map, k));
                steps.push(ins(map, k, v));
            }
            _ => {
                steps.push(ins(map, k, v));
                steps.push(rem(map, k));
            }
        }
    }
    let fail = next() % 10 == 0;
    let restart = next() % 12 == 0;
    (steps, fail, restart)
}

fn apply_steps(model: &mut [BTreeMap<u64, u64>; 2], steps: &[Step]) {
    let index = |m: &str| usize::from(m == "b");
    for step in steps {
        match step {
            Step::Insert(m, k, v) => {
                model[index(m)].insert(*k, *v);
            }
            Step::Remove(m, k) => {
                model[index(m)].remove(k);
            }
            Step::Update(m, k, d) => {
                if let Some(v) = model[index(m)].get_mut(k) {
                    *v += d;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_history_of_two_maps_with_failures_and_restarts_matches_a_model() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let key = es_key("model");
    let mut model: [BTreeMap<u64, u64>; 2] = Default::default();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let expected = |m: &[BTreeMap<u64, u64>; 2]| -> Vec<Vec<(u64, u64)>> {
        m.iter()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .collect()
    };
    let (mut a, mut handle) =
        spawn_with(&storage, "model", 5, Retention::Light, Es::default()).await;
    for i in 0..400 {
        let (steps, fail, restart) = random_steps(&mut x);
        if fail {
            let _ = a.cast(EsMsg::Maps(
                steps,
                1,
                true,
                ractor::concurrency::oneshot().0.into(),
            ));
            stopped(handle).await;
        } else {
            apply_steps(&mut model, &steps);
            call!(a, EsMsg::Maps, steps, 1, false).unwrap();
            if !restart {
                continue;
            }
            stop(a).await;
        }
        let stored = rows(&store, &key, Space::MAPS).len();
        let entries = model[0].len() + model[1].len();
        assert_eq!(stored, entries, "message {i}: rows stored vs entries");
        (a, handle) = spawn_with(&storage, "model", 5, Retention::Light, Es::default()).await;
        assert_eq!(dump(&a, &["a", "b"]).await, expected(&model), "message {i}");
    }
    assert_eq!(dump(&a, &["a", "b"]).await, expected(&model));
    stop(a).await;
    assert_eq!(
        rows(&store, &key, Space::MAPS).len(),
        model[0].len() + model[1].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_with_the_longest_name_survives_a_restart_and_a_longer_one_is_refused() {
    let storage = Storage::new(MemoryStore::new());
    let longest = "m".repeat(MAX_MAP_NAME);
    let a = spawn_es(&storage, "long-name", 1000, Retention::Full).await;
    maps(&a, vec![ins(&longest, 1, 10), ins("a", 1, 1)]).await;
    stop(a).await;
    let a = spawn_es(&storage, "long-name", 1000, Retention::Full).await;
    assert_eq!(
        dump(&a, &[&longest, "a"]).await,
        vec![vec![(1, 10)], vec![(1, 1)]]
    );
    let longer = "m".repeat(MAX_MAP_NAME + 1);
    let err = call!(a, EsMsg::Dump, vec![longer]);
    assert!(err.is_err(), "a map name over the limit was accepted");
}

/// A map entry larger than the payload cap fails its message before anything is written, as
/// the state, operations and events do. (The review found it committed and acknowledged, and
/// every later start refusing the record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_entry_too_large_to_read_back_is_refused_before_its_commit() {
    let storage = Storage::new(MemoryStore::new());
    let a = spawn_es(&storage, "huge-entry", 1000, Retention::Full).await;
    let huge = 64 * 1024 * 1024 + 1024;
    let answer = call!(a, EsMsg::MapBlob, huge);
    let acknowledged = matches!(answer, Ok(Ok(())));
    if a.get_status() != ractor::ActorStatus::Stopped {
        stop(a).await;
    }
    let start = Start::<Es>::new(&storage, "huge-entry", 0);
    match Actor::spawn(None, Es::default(), start).await {
        Ok((a, _)) => {
            let len = call!(a, EsMsg::BlobLen).unwrap();
            stop(a).await;
            if acknowledged {
                assert_eq!(len, Some(huge), "an acknowledged entry was lost");
            } else {
                assert_eq!(len, None, "a refused entry was written");
            }
        }
        Err(e) => panic!(
            "the entry was {}, and now the actor cannot start: {e}",
            if acknowledged {
                "acknowledged"
            } else {
                "refused"
            }
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_asked_for_with_other_types_is_a_typed_error_and_stays() {
    let storage = Storage::new(MemoryStore::new());
    let a = spawn_es(&storage, "types", 1000, Retention::Full).await;
    maps(&a, vec![ins("a", 1, 10)]).await;
    // "blobs" is a map of byte vectors: asking for it as u64 -> u64 in the same instance.
    call!(a, EsMsg::MapBlob, 3).unwrap().unwrap();
    let err = call!(a, EsMsg::Dump, vec!["blobs".to_owned()]);
    assert!(err.is_err(), "a map was handed out with other types");
    let a = spawn_es(&storage, "types", 1000, Retention::Full).await;
    // And after a restart, where the entries are decoded with the types first asked for.
    let err = call!(a, EsMsg::Dump, vec!["blobs".to_owned()]);
    assert!(err.is_err(), "stored entries were read with other types");
    let a = spawn_es(&storage, "types", 1000, Retention::Full).await;
    assert_eq!(call!(a, EsMsg::BlobLen).unwrap(), Some(3));
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(1, 10)]]);
    stop(a).await;
}

// ---- Event-sourced actors with the rest of the runtime ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_of_an_es_actor_fires_and_its_event_survives_a_restart() {
    let storage = Storage::new(MemoryStore::new());
    let mut notes = listen("timer");
    let a = spawn_es(&storage, "timer", 2, Retention::Light).await;
    call!(a, EsMsg::Add, 1).unwrap();
    call!(a, EsMsg::Timer, "t".to_owned(), 1, 40).unwrap();
    assert_eq!(heard(&mut notes).await, "fired 40");
    assert_eq!(get(&a).await.total, 41);
    stop(a).await;
    let a = spawn_es(&storage, "timer", 2, Retention::Light).await;
    assert_eq!(get(&a).await.total, 41);
    stop(a).await;
    // A timer due while the actor is stopped fires at its next start.
    let a = spawn_es(&storage, "timer", 2, Retention::Light).await;
    call!(a, EsMsg::Timer, "later".to_owned(), 1, 2).unwrap();
    stop(a).await;
    let a = spawn_es(&storage, "timer", 2, Retention::Light).await;
    assert_eq!(heard(&mut notes).await, "fired 2");
    assert_eq!(get(&a).await.total, 43);
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_actors_exchange_a_message_once_and_both_journals_say_so() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let mut notes = listen("bob");
    let alice = spawn_es(&storage, "alice", 2, Retention::Full).await;
    let bob = spawn_es(&storage, "bob", 2, Retention::Light).await;
    call!(alice, EsMsg::Add, 100).unwrap();
    let id = call!(alice, EsMsg::SendTo, "bob".to_owned(), 30)
        .unwrap()
        .unwrap();
    assert_eq!(heard(&mut notes).await, "credited 30");
    let settlement = call!(alice, EsMsg::Settle, id).unwrap();
    assert_eq!(
        within("settled", settlement.wait()).await,
        Settled::Delivered
    );
    // A refused take sends nothing.
    assert!(
        call!(alice, EsMsg::SendTo, "bob".to_owned(), 1000)
            .unwrap()
            .is_err()
    );
    call!(alice, EsMsg::Add, 1).unwrap();
    stop(alice).await;
    stop(bob).await;
    let alice = spawn_es(&storage, "alice", 2, Retention::Full).await;
    let bob = spawn_es(&storage, "bob", 2, Retention::Light).await;
    // Anything posted again after the restart is dropped as a duplicate.
    call!(alice, EsMsg::Add, 1).unwrap();
    assert_eq!(get(&alice).await.total, 72);
    assert_eq!(get(&bob).await.total, 30);
    stop(alice).await;
    stop(bob).await;
    assert_eq!(
        storage.events::<Es>("alice", 1).await.unwrap(),
        vec![
            (1, Ev::Add(100)),
            (2, Ev::Take(30)),
            (3, Ev::Add(1)),
            (4, Ev::Add(1))
        ]
    );
    let bob_journal = rows(&store, &es_key("bob"), Space::JOURNAL).len();
    assert!(bob_journal <= 1, "compacted, {bob_journal} events left");
    assert!(rows(&store, &es_key("alice"), Space::OUTBOX).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es_actor_activated_by_the_registry_keeps_its_journal_and_maps_across_passivation() {
    let storage = Storage::new(MemoryStore::new());
    let registry = Entities::<Es>::builder(&storage, |_| 0)
        .configure(|s| s.snapshot_every(3).retention(Retention::Light))
        .start()
        .await
        .unwrap();
    for n in 1..=7 {
        registry
            .call("e", |p| EsMsg::Add(n, p), None)
            .await
            .unwrap();
    }
    registry
        .call(
            "e",
            |p| EsMsg::Maps(vec![ins("a", 1, 10)], 0, false, p),
            None,
        )
        .await
        .unwrap();
    assert!(registry.passivate("e").await);
    let tally = registry.call("e", EsMsg::Get, None).await.unwrap();
    assert_eq!(tally.total, 28);
    let dumped = registry
        .call("e", |p| EsMsg::Dump(vec!["a".to_owned()], p), None)
        .await
        .unwrap();
    assert_eq!(dumped, vec![vec![(1, 10)]]);
    registry.shutdown().await;
    match storage.events::<Es>("e", 1).await {
        Err(JournalError::Compacted { first: 7, .. }) => {}
        other => panic!("expected the journal compacted up to 6, got {other:?}"),
    }
}

fn transforms() -> Transforms {
    let key: Vec<u8> = (0..32).collect();
    Transforms::none()
        .compress_above(32)
        .encrypt(Keyring::new(3, &key).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_journal_and_map_rows_round_trip_under_compression_and_encryption() {
    let store = MemoryStore::new();
    let config = || StorageConfig::with_transforms(transforms());
    let storage = Storage::with_config(store.clone(), config());
    let a = spawn_es(&storage, "sealed", 3, Retention::Full).await;
    let mut model = Tally::default();
    drive(&a, &script(20, 99), &mut model).await;
    call!(a, EsMsg::Blob, 10_000).unwrap().unwrap();
    apply_ev(&mut model, &Ev::Blob(vec![0; 10_000])).unwrap();
    maps(&a, vec![ins("a", 1, 10), ins("b", 2, 20)]).await;
    stop(a).await;
    storage.close().await.unwrap();
    let key = es_key("sealed");
    let loaded = store.open_actor(&key, &Space::RECORD).unwrap();
    assert!(
        loaded.rows.iter().all(|r| r.bytes[2] == 2),
        "every row is sealed (format 2)"
    );
    let storage = Storage::with_config(store.clone(), config());
    let a = spawn_es(&storage, "sealed", 3, Retention::Full).await;
    assert_eq!(get(&a).await, model);
    assert_eq!(
        dump(&a, &["a", "b"]).await,
        vec![vec![(1, 10)], vec![(2, 20)]]
    );
    stop(a).await;
    assert_eq!(
        fold(&storage.events::<Es>("sealed", 1).await.unwrap()),
        model
    );
    storage.close().await.unwrap();
    // Without the key: a typed error, not a default state.
    let plain = Storage::new(store.clone());
    let start = Start::<Es>::new(&plain, "sealed", 0);
    let err = decode_error(Actor::spawn(None, Es::default(), start).await.unwrap_err());
    assert_eq!(err.key, key);
    assert!(matches!(
        plain.events::<Es>("sealed", 1).await,
        Err(JournalError::Decode(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_journal_and_maps_survive_export_and_import() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "moving", 4, Retention::Light).await;
    let mut model = Tally::default();
    drive(&a, &script(15, 3), &mut model).await;
    maps(&a, vec![ins("a", 1, 10), ins("a", 2, 20), rem("a", 1)]).await;
    let op = call!(a, EsMsg::Push, "kept".to_owned()).unwrap();
    stop(a).await;
    storage.close().await.unwrap();
    let mut stream = Vec::new();
    ractor_persist::export(&store, &mut stream).unwrap();
    let copy = MemoryStore::new();
    ractor_persist::import(&copy, &mut stream.as_slice(), ImportMode::IntoEmpty).unwrap();
    let key = es_key("moving");
    assert_eq!(
        copy.open_actor(&key, &Space::RECORD).unwrap().rows,
        store.open_actor(&key, &Space::RECORD).unwrap().rows
    );
    let storage = Storage::new(copy.clone());
    let a = spawn_es(&storage, "moving", 4, Retention::Light).await;
    assert_eq!(get(&a).await, model);
    assert_eq!(dump(&a, &["a"]).await, vec![vec![(2, 20)]]);
    let next = call!(a, EsMsg::Push, "after".to_owned()).unwrap();
    assert!(next > op, "op ids go on after an import: {next} after {op}");
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_es_actor_removes_its_journal_and_maps_and_op_ids_do_not_repeat() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "deleted", 2, Retention::Full).await;
    for n in 1..=5 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    maps(&a, vec![ins("a", 1, 10)]).await;
    let op = call!(a, EsMsg::Push, "before".to_owned()).unwrap();
    stop(a).await;
    let key = es_key("deleted");
    storage.delete(&key).await.unwrap();
    assert!(
        store
            .open_actor(&key, &Space::RECORD)
            .unwrap()
            .rows
            .is_empty()
    );
    assert!(storage.events::<Es>("deleted", 1).await.unwrap().is_empty());
    let a = spawn_es(&storage, "deleted", 2, Retention::Full).await;
    assert_eq!(get(&a).await, Tally::default());
    assert_eq!(dump(&a, &["a"]).await, vec![vec![]]);
    let next = call!(a, EsMsg::Push, "after".to_owned()).unwrap();
    assert!(
        next > op,
        "op id {next} repeats one before the delete ({op})"
    );
    call!(a, EsMsg::Add, 9).unwrap();
    stop(a).await;
    assert_eq!(
        storage.events::<Es>("deleted", 1).await.unwrap(),
        vec![(1, Ev::Add(9))]
    );
}

/// A quarantine keeps every journal event it removes, the history the snapshot covers too:
/// quarantined rows are evidence. (The review found only the events a load reads kept, when a
/// snapshot-mode actor under an event-sourced actor's name quarantined a damaged head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_keeps_every_journal_event_it_removes() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn_es(&storage, "evidence", 2, Retention::Full).await;
    for n in 1..=5 {
        call!(a, EsMsg::Add, n).unwrap();
    }
    stop(a).await;
    let key = es_key("evidence");
    let mut head = store.read(&key, Some(Space::SNAPSHOT), 0..=0).unwrap()[0]
        .bytes
        .clone();
    let last = head.len() - 1;
    head[last] ^= 0x01;
    tamper(&store, &key, |c, _| c.put(Space::SNAPSHOT, 0, head));
    let start = Start::<SnapshotNamesake>::new(&storage, "evidence", ()).quarantine_undecodable();
    let (s, _) = Actor::spawn(None, SnapshotNamesake, start).await.unwrap();
    s.stop_and_wait(None, None).await.unwrap();
    let quarantined = storage.quarantined("adv_es").await.unwrap();
    assert_eq!(quarantined.len(), 1, "the damaged record was moved aside");
    let mut kept: Vec<u64> = quarantined[0]
        .rows
        .iter()
        .filter(|(space, _, _)| *space == Space::JOURNAL)
        .map(|(_, id, _)| *id)
        .collect();
    kept.extend(rows(&store, &key, Space::JOURNAL).iter().map(|r| r.id));
    kept.sort_unstable();
    assert_eq!(kept, vec![1, 2, 3, 4, 5], "journal events were destroyed");
}
