//! Adversarial tests of durable timers and of the `Entities` registry.
//!
//! Each test is named after the promise it checks. Waits are on events (channels), each
//! bounded by a minute so that a bug shows as a failure, not a hang; the only sleeps wait for
//! a wall-clock deadline to pass (what a timer is about).

// Test plumbing (listener maps, a message enum carrying a control variant) reads better
// spelled out than behind aliases.
#![allow(clippy::type_complexity, clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, DecodeReason, Entities, EntityError, Fired, Inbound, LoadError,
    Loaded, Marks, MemoryStore, Outcome, Pending, PersistentActor, RecordRef, Row, RowWrite, Space,
    SpawnPersistent, Storage, Store, StoreError, TimerError, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// How long any wait may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Events: what the actors' performed operations tell the test, by key prefix.
// ---------------------------------------------------------------------------------------

type Events = mpsc::UnboundedReceiver<(String, String)>;

fn hub() -> &'static Mutex<HashMap<String, mpsc::UnboundedSender<(String, String)>>> {
    static E: OnceLock<Mutex<HashMap<String, mpsc::UnboundedSender<(String, String)>>>> =
        OnceLock::new();
    E.get_or_init(Default::default)
}

/// Events of the actors whose keys start with `prefix` and a dash (one prefix per test).
fn listen(prefix: &str) -> Events {
    let (tx, rx) = mpsc::unbounded_channel();
    hub().lock().unwrap().insert(prefix.to_owned(), tx);
    rx
}

fn say(key: &str, what: impl Into<String>) {
    let prefix = key.split('-').next().unwrap_or(key);
    if let Some(tx) = hub().lock().unwrap().get(prefix) {
        let _ = tx.send((key.to_owned(), what.into()));
    }
}

/// The next event, failing the test after a minute.
async fn next(rx: &mut Events) -> (String, String) {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("an event within a minute")
        .expect("the event channel is open")
}

/// Skips events until one of `key` starting with `what` comes; returns those skipped.
async fn wait_for(rx: &mut Events, key: &str, what: &str) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut skipped = Vec::new();
    loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no event `{what}` of `{key}` within a minute; got {skipped:?}")
            })
            .expect("open");
        if got.0 == key && got.1.starts_with(what) {
            return skipped;
        }
        skipped.push(got);
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within a minute"))
}

/// Waits until the wall clock has passed `due` (what timers are about; nothing else is
/// waited for this way).
async fn until_past(due: SystemTime) {
    while let Ok(left) = due.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(1)).await;
    }
}

fn ns_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Keys (`key/name`) whose next handling of that timer fails, once.
fn fail_once() -> &'static Mutex<HashSet<String>> {
    static F: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

// ---------------------------------------------------------------------------------------
// `Tick`: an actor that sets, cancels and records timers.
// ---------------------------------------------------------------------------------------

/// A timer's payload. `rearm`: how many more times the firing sets the same timer again,
/// due at once. `pad`: bulk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct P {
    tag: u32,
    rearm: u32,
    pad: Vec<u8>,
}

fn p(tag: u32) -> P {
    P {
        tag,
        rearm: 0,
        pad: Vec::new(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Firing {
    name: String,
    tag: u32,
    /// Wall clock when handled, ns since the Unix epoch.
    handled_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TickState {
    fired: Vec<Firing>,
    starts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Effect {
    Fired(String),
    Started,
}

/// One timer change of an `Apply` message.
#[derive(Clone, Debug)]
enum Cmd {
    After(String, u64, P),
    At(String, SystemTime, P),
    Cancel(String),
}

fn after(name: &str, ms: u64, payload: P) -> Cmd {
    Cmd::After(name.into(), ms, payload)
}

fn at(name: &str, when: SystemTime, payload: P) -> Cmd {
    Cmd::At(name.into(), when, payload)
}

fn cancel(name: &str) -> Cmd {
    Cmd::Cancel(name.into())
}

enum TMsg {
    /// Applies the commands in order (stops at the first refused, replying its error); then
    /// fails the handler if the flag says so.
    Apply(Vec<Cmd>, bool, RpcReplyPort<Result<(), String>>),
    Timers(RpcReplyPort<Vec<(String, SystemTime)>>),
    Fired(RpcReplyPort<Vec<Firing>>),
    /// Replies how many firings were handled so far.
    Ping(RpcReplyPort<usize>),
    Ring(String, P),
    Persist(Control<Effect>),
}

/// Firings of the "loop" test handled so far (counted in the handler, before the commit).
static LOOP_RINGS: AtomicU64 = AtomicU64::new(0);

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_tick")]
struct Tick;

/// The same namespace and state, but its timers take a `String` payload: a deploy that
/// changed the timer payload type.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_tick")]
struct TickV2;

fn tick_handle<A>(
    tx: &mut Tx<'_, A>,
    msg: TMsg,
    st: &mut TickState,
) -> Result<(), ActorProcessingErr>
where
    A: PersistentActor<Msg = TMsg, State = TickState, Op = Effect>,
{
    match msg {
        TMsg::Apply(cmds, fail, port) => {
            let mut result = Ok(());
            for cmd in cmds {
                let r = match cmd {
                    Cmd::After(name, ms, payload) => {
                        tx.set_timer_after(&name, Duration::from_millis(ms), &payload)
                    }
                    Cmd::At(name, when, payload) => tx.set_timer_at(&name, when, &payload),
                    Cmd::Cancel(name) => tx.cancel_timer(&name),
                };
                if let Err(e) = r {
                    result = Err(e.to_string());
                    break;
                }
            }
            tx.reply(port, result);
            if fail {
                return Err("failing on purpose after setting timers".into());
            }
        }
        TMsg::Timers(port) => tx.reply(port, tx.timers()),
        TMsg::Fired(port) => tx.reply(port, st.fired.clone()),
        TMsg::Ping(port) => tx.reply(port, st.fired.len()),
        TMsg::Ring(name, payload) => {
            assert_eq!(tx.fired(), Some(name.as_str()), "a firing names its timer");
            let key = tx.key().key().to_owned();
            if key.starts_with("loop") {
                LOOP_RINGS.fetch_add(1, Ordering::SeqCst);
            }
            if fail_once().lock().unwrap().remove(&format!("{key}/{name}")) {
                st.fired.clear();
                return Err(format!("refusing to handle timer {name} once").into());
            }
            st.fired.push(Firing {
                name: name.clone(),
                tag: payload.tag,
                handled_ns: ns_since_epoch(SystemTime::now()),
            });
            if payload.rearm > 0 {
                let again = P {
                    tag: payload.tag + 1,
                    rearm: payload.rearm - 1,
                    pad: Vec::new(),
                };
                tx.set_timer_at(&name, UNIX_EPOCH, &again)?;
            }
            tx.push(Effect::Fired(name))?;
        }
        TMsg::Persist(_) => unreachable!("the runtime takes control messages"),
    }
    Ok(())
}

fn tick_start<A>(tx: &mut Tx<'_, A>, st: &mut TickState) -> Result<(), ActorProcessingErr>
where
    A: PersistentActor<Msg = TMsg, State = TickState, Op = Effect>,
{
    st.starts += 1;
    if tx.key().key().starts_with("boot") {
        // A timer set by the start hook, due at once.
        tx.set_timer_at("boot", UNIX_EPOCH, &p(st.starts))?;
    }
    tx.push(Effect::Started)?;
    Ok(())
}

fn tick_perform(op: &Pending<Effect>) -> Outcome {
    let key = op.id().actor().key();
    match op.op() {
        Effect::Fired(name) => say(key, format!("fired {name}")),
        Effect::Started => say(key, "started"),
    }
    Outcome::Done
}

fn tick_control(msg: TMsg) -> Result<Control<Effect>, TMsg> {
    match msg {
        TMsg::Persist(c) => Ok(c),
        other => Err(other),
    }
}

impl PersistentActor for Tick {
    type Msg = TMsg;
    type State = TickState;
    type Op = Effect;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<TickState, ActorProcessingErr> {
        Ok(TickState::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: TMsg,
        st: &mut TickState,
    ) -> Result<(), ActorProcessingErr> {
        tick_handle(tx, msg, st)
    }

    async fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        st: &mut TickState,
    ) -> Result<(), ActorProcessingErr> {
        tick_start(tx, st)
    }

    async fn perform(
        &self,
        op: &Pending<Effect>,
        _: &TickState,
    ) -> Result<Outcome, ActorProcessingErr> {
        Ok(tick_perform(op))
    }

    fn control(msg: TMsg) -> Result<Control<Effect>, TMsg> {
        tick_control(msg)
    }

    fn wrap_control(c: Control<Effect>) -> Option<TMsg> {
        Some(TMsg::Persist(c))
    }

    fn timer(fired: Fired) -> Result<TMsg, DecodeReason> {
        Ok(TMsg::Ring(fired.name().to_owned(), fired.decode()?))
    }
}

impl PersistentActor for TickV2 {
    type Msg = TMsg;
    type State = TickState;
    type Op = Effect;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<TickState, ActorProcessingErr> {
        Ok(TickState::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: TMsg,
        st: &mut TickState,
    ) -> Result<(), ActorProcessingErr> {
        tick_handle(tx, msg, st)
    }

    async fn perform(
        &self,
        op: &Pending<Effect>,
        _: &TickState,
    ) -> Result<Outcome, ActorProcessingErr> {
        Ok(tick_perform(op))
    }

    fn control(msg: TMsg) -> Result<Control<Effect>, TMsg> {
        tick_control(msg)
    }

    fn wrap_control(c: Control<Effect>) -> Option<TMsg> {
        Some(TMsg::Persist(c))
    }

    fn timer(fired: Fired) -> Result<TMsg, DecodeReason> {
        let note: String = fired.decode()?;
        Ok(TMsg::Ring(fired.name().to_owned(), p(note.len() as u32)))
    }
}

async fn apply(actor: &ActorRef<TMsg>, cmds: Vec<Cmd>) -> Result<(), String> {
    call!(actor, TMsg::Apply, cmds, false).expect("the actor answers")
}

async fn fired(actor: &ActorRef<TMsg>) -> Vec<Firing> {
    call!(actor, TMsg::Fired).expect("the actor answers")
}

async fn timers(actor: &ActorRef<TMsg>) -> Vec<(String, SystemTime)> {
    call!(actor, TMsg::Timers).expect("the actor answers")
}

async fn stop<M: ractor::Message>(actor: ActorRef<M>, handle: ractor::concurrency::JoinHandle<()>) {
    actor.stop(None);
    within("the actor stops", handle).await.unwrap();
}

/// The TIMERS rows of `key` in the store, by id.
fn timer_rows(mem: &MemoryStore, key: &ActorKey) -> Vec<(u64, Vec<u8>)> {
    mem.read(key, Some(Space::TIMERS), 0..=u64::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.bytes))
        .collect()
}

/// Writes (or with `None` removes) one row of `key` straight through the `Store` trait.
fn put_row(mem: &MemoryStore, key: &ActorKey, space: Space, id: u64, bytes: Option<Vec<u8>>) {
    let loaded = mem.open_actor(key, &[]).unwrap();
    let commit = ActorCommit::new(key.clone(), loaded.epoch);
    let commit = match bytes {
        Some(b) => commit.put(space, id, b),
        None => commit.remove(space, id),
    };
    mem.commit(&[commit]).unwrap();
}

/// Takes `n` "fired" events, failing on anything else but "started"; returns the names.
async fn firings(rx: &mut Events, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    while names.len() < n {
        let (_, what) = next(rx).await;
        if let Some(name) = what.strip_prefix("fired ") {
            names.push(name.to_owned());
        } else {
            assert_eq!(what, "started", "unexpected event");
        }
    }
    names
}

// ---------------------------------------------------------------------------------------
// A store that tells the test what it writes.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Write {
    key: String,
    space: Space,
    put: bool,
}

#[derive(Clone, Default)]
struct Watched {
    inner: MemoryStore,
    log: Arc<Mutex<Vec<Write>>>,
    hook: Arc<Mutex<Option<mpsc::UnboundedSender<Write>>>>,
}

impl Watched {
    fn hook(&self) -> mpsc::UnboundedReceiver<Write> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.hook.lock().unwrap() = Some(tx);
        rx
    }
}

impl Store for Watched {
    fn name(&self) -> &str {
        "watched"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.inner.commit(batch)?;
        let mut log = self.log.lock().unwrap();
        let hook = self.hook.lock().unwrap();
        for c in batch {
            for w in &c.writes {
                let (space, put) = match w {
                    RowWrite::Put { space, .. } => (*space, true),
                    RowWrite::Delete { space, .. } => (*space, false),
                };
                let write = Write {
                    key: c.key.to_string(),
                    space,
                    put,
                };
                if let Some(h) = hook.as_ref() {
                    let _ = h.send(write.clone());
                }
                log.push(write);
            }
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
    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.inner.keys(namespace, space)
    }
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.inner.scan()
    }
}

// ---------------------------------------------------------------------------------------
// `Acct` and `Ledger`: registry actors that send letters to each other.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Note {
    Credit(u64),
    Receipt(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Said {
    Say(String),
}

enum AMsg {
    Deposit(u64, RpcReplyPort<u64>),
    Balance(RpcReplyPort<u64>),
    /// Sends `n` to the persistent actor `to` as a letter (replies false, sending nothing,
    /// when the balance is short).
    Transfer(ActorKey, u64, RpcReplyPort<bool>),
    Note(Note),
    Timer(String, u64, RpcReplyPort<()>),
    Ring(String),
    Persist(Control<Said>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_acct")]
struct Acct;

/// Activations of these keys wait in `init` until the test releases them (after telling it
/// they entered).
fn gates() -> &'static Mutex<HashMap<String, (oneshot::Sender<()>, Arc<Semaphore>)>> {
    static G: OnceLock<Mutex<HashMap<String, (oneshot::Sender<()>, Arc<Semaphore>)>>> =
        OnceLock::new();
    G.get_or_init(Default::default)
}

/// Makes the next `init` of `key` wait; returns "it entered" and the release.
fn gate(key: &str) -> (oneshot::Receiver<()>, Arc<Semaphore>) {
    let (tx, rx) = oneshot::channel();
    let sem = Arc::new(Semaphore::new(0));
    gates()
        .lock()
        .unwrap()
        .insert(key.to_owned(), (tx, sem.clone()));
    (rx, sem)
}

/// Keys whose next `init` fails, once.
fn init_fails() -> &'static Mutex<HashSet<String>> {
    static F: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

async fn gated_init(key: &str) -> Result<(), ActorProcessingErr> {
    let gate = gates().lock().unwrap().remove(key);
    if let Some((entered, sem)) = gate {
        let _ = entered.send(());
        let _ = sem.acquire().await;
    }
    if init_fails().lock().unwrap().remove(key) {
        return Err(format!("init of {key} refused on purpose").into());
    }
    Ok(())
}

impl PersistentActor for Acct {
    type Msg = AMsg;
    type State = u64;
    type Op = Said;
    type Arguments = String;

    async fn init(&self, key: String) -> Result<u64, ActorProcessingErr> {
        gated_init(&key).await?;
        Ok(100)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AMsg,
        balance: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AMsg::Deposit(n, port) => {
                *balance += n;
                tx.reply(port, *balance);
            }
            AMsg::Balance(port) => tx.reply(port, *balance),
            AMsg::Transfer(to, n, port) => {
                if *balance < n {
                    tx.reply(port, false);
                } else {
                    *balance -= n;
                    tx.send(to, &Note::Credit(n))?;
                    tx.reply(port, true);
                }
            }
            AMsg::Note(Note::Credit(n)) => {
                *balance += n;
                let from = tx.received().expect("a letter").to_string();
                tx.push(Said::Say(format!("credited {n} by {from}")))?;
            }
            AMsg::Note(Note::Receipt(n)) => {
                tx.push(Said::Say(format!("receipt {n}")))?;
            }
            AMsg::Timer(name, ms, port) => {
                tx.set_timer_after(&name, Duration::from_millis(ms), &name)?;
                tx.reply(port, ());
            }
            AMsg::Ring(name) => {
                tx.push(Said::Say(format!("rang {name}")))?;
            }
            AMsg::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Said>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
        let Said::Say(what) = op.op();
        say(op.id().actor().key(), what.clone());
        Ok(Outcome::Done)
    }

    async fn post_stop(&self, myself: ActorRef<AMsg>, _: &u64) -> Result<(), ActorProcessingErr> {
        let _ = myself;
        Ok(())
    }

    fn control(msg: AMsg) -> Result<Control<Said>, AMsg> {
        match msg {
            AMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Said>) -> Option<AMsg> {
        Some(AMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<AMsg, DecodeReason> {
        Ok(AMsg::Note(msg.decode()?))
    }

    fn timer(fired: Fired) -> Result<AMsg, DecodeReason> {
        Ok(AMsg::Ring(fired.decode()?))
    }
}

/// Tells the test when it stops normally (passivation included).
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_spy")]
struct StopSpy;

enum SMsg {
    Ping(RpcReplyPort<()>),
    Persist(Control<Said>),
}

impl PersistentActor for StopSpy {
    type Msg = SMsg;
    type State = String;
    type Op = Said;
    type Arguments = String;

    async fn init(&self, key: String) -> Result<String, ActorProcessingErr> {
        gated_init(&key).await?;
        Ok(key)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: SMsg,
        _: &mut String,
    ) -> Result<(), ActorProcessingErr> {
        if let SMsg::Ping(port) = msg {
            tx.reply(port, ());
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SMsg>,
        key: &String,
    ) -> Result<(), ActorProcessingErr> {
        say(key, format!("stopped {:?}", myself.get_id()));
        Ok(())
    }

    fn control(msg: SMsg) -> Result<Control<Said>, SMsg> {
        match msg {
            SMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Said>) -> Option<SMsg> {
        Some(SMsg::Persist(c))
    }
}

enum LMsg {
    Note(Note),
    Total(RpcReplyPort<u64>),
    Persist(Control<Said>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "adv_ledger")]
struct Ledger;

impl PersistentActor for Ledger {
    type Msg = LMsg;
    type State = u64;
    type Op = Said;
    type Arguments = String;

    async fn init(&self, _: String) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: LMsg,
        total: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LMsg::Note(Note::Credit(n)) => {
                *total += n;
                let from = tx.received().expect("a letter").actor().clone();
                tx.send(from, &Note::Receipt(n))?;
                tx.push(Said::Say(format!("ledger {n}")))?;
            }
            LMsg::Note(Note::Receipt(_)) => {}
            LMsg::Total(port) => tx.reply(port, *total),
            LMsg::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Said>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
        let Said::Say(what) = op.op();
        say(op.id().actor().key(), what.clone());
        Ok(Outcome::Done)
    }

    fn control(msg: LMsg) -> Result<Control<Said>, LMsg> {
        match msg {
            LMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Said>) -> Option<LMsg> {
        Some(LMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<LMsg, DecodeReason> {
        Ok(LMsg::Note(msg.decode()?))
    }
}

fn acct(key: &str) -> ActorKey {
    ActorKey::new("adv_acct", key)
}

async fn accounts(storage: &Storage) -> Entities<Acct> {
    Entities::<Acct>::builder(storage, |key| key.to_owned())
        .start()
        .await
        .unwrap()
}

async fn balance(reg: &Entities<Acct>, key: &str) -> u64 {
    reg.call(key, AMsg::Balance, Some(LIMIT)).await.unwrap()
}

/// A plain ractor supervisor that forwards what its children's failures say.
struct Sup;

impl Actor for Sup {
    type Msg = ();
    type State = mpsc::UnboundedSender<(Option<(String, String)>, String)>;
    type Arguments = mpsc::UnboundedSender<(Option<(String, String)>, String)>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(_, err) => {
                let refused = match err.downcast_ref::<TimerError>() {
                    Some(TimerError::Refused { key, name, .. }) => {
                        Some((key.to_string(), name.clone()))
                    }
                    _ => None,
                };
                let _ = tx.send((refused, err.to_string()));
            }
            SupervisionEvent::ActorTerminated(..) => {
                let _ = tx.send((None, "terminated normally".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

// =======================================================================================
// Timers
// =======================================================================================

/// Promise: a timer fires only once the wall clock has reached its instant, once each, and is
/// removed in its message's commit, however many share one instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_with_one_shared_instant_each_fire_once_never_early_and_are_gone_after() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let mut rx = listen("same");
    let (actor, handle) = Tick::spawn_persistent(&storage, "same-1", ())
        .await
        .unwrap();
    let when = SystemTime::now() + Duration::from_millis(300);
    let first: Vec<Cmd> = (0..200)
        .map(|i| at(&format!("e{i:03}"), when, p(i)))
        .collect();
    apply(&actor, first).await.unwrap();
    let second: Vec<Cmd> = (200..250)
        .map(|i| at(&format!("e{i:03}"), when, p(i)))
        .collect();
    apply(&actor, second).await.unwrap();
    let names = firings(&mut rx, 250).await;
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        250,
        "each of 250 timers fired once: {names:?}"
    );
    let got = fired(&actor).await;
    assert_eq!(got.len(), 250, "250 firings committed");
    let earliest = ns_since_epoch(when);
    for f in &got {
        assert!(
            f.handled_ns >= earliest,
            "timer {} handled {} ns before its instant",
            f.name,
            earliest - f.handled_ns
        );
        assert_eq!(
            format!("e{:03}", f.tag),
            f.name,
            "each with its own payload"
        );
    }
    assert!(timers(&actor).await.is_empty());
    stop(actor, handle).await;
    let key = ActorKey::new("adv_tick", "same-1");
    assert!(
        timer_rows(&mem, &key).is_empty(),
        "every removal was committed"
    );
    let (actor, handle) = Tick::spawn_persistent(&storage, "same-1", ())
        .await
        .unwrap();
    assert_eq!(fired(&actor).await.len(), 250, "nothing fires twice");
    stop(actor, handle).await;
}

/// Promises: setting a name again replaces it; a cancel of an unknown name is a typed error;
/// a timer cancelled in a committed message never fires. Many sets and cancels of one name in
/// one message and across messages leave exactly the last decision, in memory and in the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_and_cancelling_one_name_over_and_over_leaves_only_the_last_decision() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let mut rx = listen("churn");
    let (actor, handle) = Tick::spawn_persistent(&storage, "churn-1", ())
        .await
        .unwrap();
    // In one message.
    apply(
        &actor,
        vec![
            after("a", 10_000, p(1)),
            after("a", 10_000, p(2)),
            cancel("a"),
            after("a", 20_000, p(3)),
            after("a", 200, p(4)),
            after("b", 100, p(1)),
            cancel("b"),
            after("b", 100, p(2)),
            cancel("b"),
        ],
    )
    .await
    .unwrap();
    // Across messages.
    apply(&actor, vec![after("c", 10_000, p(1))]).await.unwrap();
    apply(&actor, vec![after("c", 20_000, p(2))]).await.unwrap();
    apply(&actor, vec![cancel("c")]).await.unwrap();
    apply(&actor, vec![after("c", 250, p(3))]).await.unwrap();
    apply(&actor, vec![after("d", 10_000, p(1))]).await.unwrap();
    apply(&actor, vec![cancel("d")]).await.unwrap();
    let e = apply(&actor, vec![cancel("d")]).await.unwrap_err();
    assert!(
        e.contains("no timer named `d`") && e.contains("adv_tick/churn-1"),
        "a cancel of an unknown name is a typed error naming both: {e}"
    );
    let e = apply(&actor, vec![cancel("never-set")]).await.unwrap_err();
    assert!(e.contains("never-set"), "{e}");
    let mut names: Vec<String> = timers(&actor).await.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "c"],
        "only the last decision of each name is set"
    );
    apply(&actor, vec![after("z", 800, p(9))]).await.unwrap();
    // `z` is due last: by the time it fired, every other timer due would have.
    let got = firings(&mut rx, 3).await;
    assert_eq!(got.last().map(String::as_str), Some("z"), "{got:?}");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "c", "z"], "a and c once each, b and d never");
    let by_name: BTreeMap<String, u32> = fired(&actor)
        .await
        .into_iter()
        .map(|f| (f.name, f.tag))
        .collect();
    assert_eq!(by_name.get("a"), Some(&4), "a fired with its last payload");
    assert_eq!(by_name.get("c"), Some(&3), "c fired with its last payload");
    stop(actor, handle).await;
    let key = ActorKey::new("adv_tick", "churn-1");
    assert!(
        timer_rows(&mem, &key).is_empty(),
        "no row of a replaced or cancelled timer is left in the store"
    );
    let (actor, handle) = Tick::spawn_persistent(&storage, "churn-1", ())
        .await
        .unwrap();
    assert!(timers(&actor).await.is_empty());
    assert_eq!(fired(&actor).await.len(), 3, "nothing came back");
    stop(actor, handle).await;
}

/// Promise: a timer is handled as an ordinary message. A handler that sets its own timer due
/// at once (a loop of firings) must not starve the other messages: a message sent while the
/// loop runs is handled after a bounded number of firings, not after as many as already ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_rearms_itself_due_at_once_does_not_starve_other_messages() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("loop");
    let (actor, handle) = Tick::spawn_persistent(&storage, "loop-1", ())
        .await
        .unwrap();
    let rounds = 1_500u32;
    let start = P {
        tag: 0,
        rearm: rounds - 1,
        pad: Vec::new(),
    };
    apply(&actor, vec![at("loop", UNIX_EPOCH, start)])
        .await
        .unwrap();
    // Let the loop run a while (counted by events, not by time).
    let _ = firings(&mut rx, 300).await;
    let sent_at = LOOP_RINGS.load(Ordering::SeqCst) as usize;
    let handled_at: usize = within("the ping is answered", async {
        call!(actor, TMsg::Ping).unwrap()
    })
    .await;
    let waited = handled_at.saturating_sub(sent_at);
    assert!(
        waited <= 20,
        "a message sent after {sent_at} firings of a self-rearming timer was handled only \
         after {handled_at} ({waited} firings later): every firing queues more wakes than it \
         consumes, so other messages wait behind a queue that grows with every firing"
    );
    // The loop ends: every round fires once and the timer is gone.
    let rest = firings(&mut rx, (rounds - 300) as usize).await;
    assert!(rest.iter().all(|n| n == "loop"));
    assert_eq!(fired(&actor).await.len(), rounds as usize);
    assert!(timers(&actor).await.is_empty());
    stop(actor, handle).await;
}

/// Promises: a timer is committed with the handler's state, so one set by the start hook
/// counts too; a timer due while the actor was down fires at its start, before any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_set_by_the_start_hook_and_due_while_down_fire_before_the_first_message() {
    let storage = Storage::new(MemoryStore::new());
    let _rx = listen("boot");
    let (actor, handle) = Tick::spawn_persistent(&storage, "boot-1", ())
        .await
        .unwrap();
    let got = fired(&actor).await;
    assert_eq!(
        got.iter()
            .map(|f| (f.name.as_str(), f.tag))
            .collect::<Vec<_>>(),
        [("boot", 1)],
        "the start hook's timer, due at once, fired before the first message"
    );
    let due = SystemTime::now() + Duration::from_millis(150);
    apply(&actor, vec![at("stored", due, p(7))]).await.unwrap();
    stop(actor, handle).await;
    until_past(due).await;
    let (actor, handle) = Tick::spawn_persistent(&storage, "boot-1", ())
        .await
        .unwrap();
    let got: Vec<(String, u32)> = fired(&actor)
        .await
        .into_iter()
        .map(|f| (f.name, f.tag))
        .collect();
    let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["boot", "boot", "stored"],
        "both the stored timer and the new start hook's fired before the first message: {got:?}"
    );
    assert!(timers(&actor).await.is_empty());
    stop(actor, handle).await;
}

/// Promise: a timer is committed with the handler's state: a timer set (or cancelled) by a
/// handler that failed is rolled back and never fires (never is cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_set_by_a_failed_handler_is_rolled_back_and_never_fires() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let mut rx = listen("rb");
    let (actor, handle) = Tick::spawn_persistent(&storage, "rb-1", ()).await.unwrap();
    let keep_due = SystemTime::now() + Duration::from_secs(3_600);
    apply(&actor, vec![at("keep", keep_due, p(1))])
        .await
        .unwrap();
    let key = ActorKey::new("adv_tick", "rb-1");
    let rows_before = timer_rows(&mem, &key);
    let failed = call!(
        actor,
        TMsg::Apply,
        vec![
            at("ghost", UNIX_EPOCH, p(2)),
            cancel("keep"),
            at("ghost2", UNIX_EPOCH, p(3)),
        ],
        true
    );
    assert!(failed.is_err(), "the failed handler's reply never leaves");
    within("the failed actor stops", handle).await.unwrap();
    assert_eq!(
        timer_rows(&mem, &key),
        rows_before,
        "the store's timers are those before the failed message"
    );
    let (actor, handle) = Tick::spawn_persistent(&storage, "rb-1", ()).await.unwrap();
    let names: Vec<String> = timers(&actor).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["keep"], "the cancel was rolled back too");
    assert!(
        fired(&actor).await.is_empty(),
        "no rolled-back timer fired at start"
    );
    apply(&actor, vec![after("z", 50, p(4))]).await.unwrap();
    assert_eq!(firings(&mut rx, 1).await, ["z"]);
    let names: Vec<String> = fired(&actor).await.into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["z"]);
    stop(actor, handle).await;
}

/// Promise: at least once. A firing whose handler fails is not removed: the registry reads
/// the store after the failure and brings the actor back, and the timer fires again with the
/// same name and is then committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_firing_under_the_registry_fires_again_with_the_same_name() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("flaky");
    let ticks = Entities::<Tick>::builder(&storage, |_| ())
        .restart_after(Duration::from_millis(30))
        .start()
        .await
        .unwrap();
    fail_once().lock().unwrap().insert("flaky-1/f".into());
    let due = SystemTime::now() + Duration::from_millis(100);
    let set = ticks
        .call(
            "flaky-1",
            |port| TMsg::Apply(vec![at("f", due, p(7))], false, port),
            Some(LIMIT),
        )
        .await
        .unwrap();
    set.unwrap();
    assert_eq!(
        firings(&mut rx, 1).await,
        ["f"],
        "fired again after the failure"
    );
    assert!(
        !fail_once().lock().unwrap().contains("flaky-1/f"),
        "the first firing was handled (and failed)"
    );
    let got = ticks
        .call("flaky-1", TMsg::Fired, Some(LIMIT))
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|f| (f.name.as_str(), f.tag))
            .collect::<Vec<_>>(),
        [("f", 7)],
        "committed once, with its payload"
    );
    let left = ticks
        .call("flaky-1", TMsg::Timers, Some(LIMIT))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    ticks.shutdown().await;
}

/// Promise (P8): a timer whose payload type changed since it was set is a typed error at its
/// firing (here: at the start), naming the key and the timer; never a panic, never a silent
/// drop: the timer stays stored and fires once the old type is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_whose_payload_type_changed_is_a_typed_error_naming_key_and_timer() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("fp");
    let (actor, handle) = Tick::spawn_persistent(&storage, "fp-1", ()).await.unwrap();
    let due = SystemTime::now() + Duration::from_millis(100);
    apply(&actor, vec![at("t", due, p(5))]).await.unwrap();
    stop(actor, handle).await;
    until_past(due).await;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (sup, sup_handle) = Actor::spawn(None, Sup, events_tx).await.unwrap();
    let spawned = TickV2::spawn_persistent_linked(&storage, "fp-1", (), sup.get_cell()).await;
    match spawned {
        Err(SpawnErr::StartupFailed(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("adv_tick/fp-1") && text.contains('t'),
                "a start refused at once still names key and timer: {text}"
            );
        }
        Err(other) => panic!("an unexpected spawn error: {other}"),
        Ok(_) => {
            let (refused, text) = within("the supervisor hears", events.recv()).await.unwrap();
            assert!(
                !text.contains("panicked"),
                "a panic, not a typed error: {text}"
            );
            assert_eq!(
                refused,
                Some(("adv_tick/fp-1".to_owned(), "t".to_owned())),
                "a TimerError::Refused naming key and timer: {text}"
            );
        }
    }
    sup.stop(None);
    let _ = sup_handle.await;

    // The timer was not dropped: the old code fires it, once.
    let (actor, handle) = Tick::spawn_persistent(&storage, "fp-1", ()).await.unwrap();
    let got: Vec<(String, u32)> = fired(&actor)
        .await
        .into_iter()
        .map(|f| (f.name, f.tag))
        .collect();
    assert_eq!(got, [("t".to_owned(), 5)]);
    let got = firings(&mut rx, 1).await;
    assert_eq!(got, ["t"]);
    stop(actor, handle).await;
}

/// Promise (P8): bad bytes in a timer row are a typed error naming the key and the record,
/// never a panic, never a silent drop, and nothing is overwritten; a registry started on such
/// a store refuses the activation with that error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_timer_rows_are_a_load_error_naming_the_timer_record() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let (actor, handle) = Tick::spawn_persistent(&storage, "dmg-1", ()).await.unwrap();
    apply(
        &actor,
        vec![after("a", 3_600_000, p(1)), after("b", 3_600_000, p(2))],
    )
    .await
    .unwrap();
    stop(actor, handle).await;
    storage.close().await.unwrap();
    let key = ActorKey::new("adv_tick", "dmg-1");
    let rows = timer_rows(&mem, &key);
    assert_eq!(rows.len(), 2);
    let (a_id, a_bytes) = rows[0].clone();
    let snapshot = mem.snapshot(&key).unwrap();
    let mut flipped = a_bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("garbage", a_id, b"not a record at all, just bytes".to_vec()),
        ("empty", a_id, Vec::new()),
        ("truncated", a_id, a_bytes[..a_bytes.len() - 3].to_vec()),
        ("flipped", a_id, flipped),
        ("misfiled", a_id + 1_000, a_bytes.clone()),
        ("wrong kind", a_id + 2_000, snapshot),
    ];
    for (what, id, bytes) in cases {
        put_row(&mem, &key, Space::TIMERS, id, Some(bytes.clone()));
        let storage = Storage::new(mem.clone());
        let spawned = Tick::spawn_persistent(&storage, "dmg-1", ()).await;
        let err = match spawned {
            Ok((actor, handle)) => {
                let names = timers(&actor).await;
                stop(actor, handle).await;
                panic!("{what}: a damaged timer row loaded silently; timers {names:?}");
            }
            Err(SpawnErr::StartupFailed(e)) => e,
            Err(other) => panic!("{what}: {other}"),
        };
        let text = err.to_string();
        match err.downcast_ref::<LoadError>() {
            Some(LoadError::Decode(d)) => {
                assert_eq!(d.key, key, "{what}: {text}");
                assert_eq!(d.record, RecordRef::Timer(id), "{what}: {text}");
            }
            _ => panic!("{what}: not a LoadError::Decode: {text}"),
        }
        assert!(text.contains(&format!("timer #{id}")), "{what}: {text}");
        assert!(!text.contains("panicked"), "{what}: {text}");
        // A registry over the same damage: starts, and refuses the activation with the error.
        let ticks = Entities::<Tick>::builder(&storage, |_| ())
            .start()
            .await
            .expect("a registry starts over a damaged timer row");
        match ticks.get("dmg-1").await {
            Err(EntityError::Activation { source, .. }) => {
                let source = format!("{source}");
                assert!(source.contains(&format!("timer #{id}")), "{what}: {source}");
            }
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: the registry activated an actor over a damaged timer row"),
        }
        ticks.shutdown().await;
        storage.close().await.unwrap();
        // Nothing was overwritten.
        let now: HashMap<u64, Vec<u8>> = timer_rows(&mem, &key).into_iter().collect();
        assert_eq!(
            now.get(&id),
            Some(&bytes),
            "{what}: the damaged row is untouched"
        );
        // Put back as it was.
        if id == a_id {
            put_row(&mem, &key, Space::TIMERS, id, Some(a_bytes.clone()));
        } else {
            put_row(&mem, &key, Space::TIMERS, id, None);
        }
    }
    let storage = Storage::new(mem.clone());
    let (actor, handle) = Tick::spawn_persistent(&storage, "dmg-1", ()).await.unwrap();
    let names: Vec<String> = timers(&actor).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b"], "repaired, both timers are back");
    stop(actor, handle).await;
}

/// Promise (P8): bad rows are never a silent drop. Two timer rows naming the same timer (a
/// misrestored record: each row intact on its own) must be a typed error; loading one and
/// ignoring the other leaves a row that a cancel does not remove, so a timer cancelled in a
/// committed message fires after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rows_for_one_timer_name_are_a_typed_error_not_a_silent_drop() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let far = SystemTime::now() + Duration::from_secs(3_600);
    let (y, y_handle) = Tick::spawn_persistent(&storage, "dup-y", ()).await.unwrap();
    apply(&y, vec![at("t", far, p(1)), at("u", far, p(2))])
        .await
        .unwrap();
    stop(y, y_handle).await;
    let (x, x_handle) = Tick::spawn_persistent(&storage, "dup-x", ()).await.unwrap();
    apply(&x, vec![at("d", far, p(8)), at("t", far, p(9))])
        .await
        .unwrap();
    stop(x, x_handle).await;
    storage.close().await.unwrap();
    let (ky, kx) = (
        ActorKey::new("adv_tick", "dup-y"),
        ActorKey::new("adv_tick", "dup-x"),
    );
    let (ry, rx_) = (timer_rows(&mem, &ky), timer_rows(&mem, &kx));
    assert_eq!(ry.len(), 2);
    assert_eq!(
        ry.iter().map(|r| r.0).collect::<Vec<_>>(),
        rx_.iter().map(|r| r.0).collect::<Vec<_>>(),
        "precondition: both actors used the same row ids"
    );
    // Y's second row ("u") replaced by X's second row ("t"): Y holds two rows named "t".
    put_row(&mem, &ky, Space::TIMERS, ry[1].0, Some(rx_[1].1.clone()));

    let storage = Storage::new(mem.clone());
    match Tick::spawn_persistent(&storage, "dup-y", ()).await {
        Err(SpawnErr::StartupFailed(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("adv_tick/dup-y"),
                "typed, naming the key: {text}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok((y, y_handle)) => {
            let names: Vec<String> = timers(&y).await.into_iter().map(|(n, _)| n).collect();
            // Loaded: one of the two rows is ignored. Show what that does.
            apply(&y, vec![cancel("t")]).await.unwrap();
            assert!(timers(&y).await.is_empty());
            stop(y, y_handle).await;
            let (y, y_handle) = Tick::spawn_persistent(&storage, "dup-y", ()).await.unwrap();
            let after_cancel = timers(&y).await;
            stop(y, y_handle).await;
            assert!(
                after_cancel.is_empty(),
                "two rows named `t` loaded silently as one ({names:?}); after a committed \
                 cancel of `t` and a restart, `t` is set again: {after_cancel:?}"
            );
        }
    }
}

/// Promise: `Storage::delete` removes the record, timers included: no timer of the deleted
/// actor fires for an actor created again under the key, whether spawned by hand or woken by
/// a registry that had scheduled the old timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_actors_timers_never_fire_for_the_actor_created_again() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let mut rx = listen("del");
    let (actor, handle) = Tick::spawn_persistent(&storage, "del-1", ()).await.unwrap();
    let due = SystemTime::now() + Duration::from_millis(150);
    apply(
        &actor,
        vec![at("t", due, p(1)), after("u", 3_600_000, p(2))],
    )
    .await
    .unwrap();
    stop(actor, handle).await;
    Tick::delete_persistent(&storage, "del-1").await.unwrap();
    assert!(timer_rows(&mem, &ActorKey::new("adv_tick", "del-1")).is_empty());
    until_past(due).await;
    let (actor, handle) = Tick::spawn_persistent(&storage, "del-1", ()).await.unwrap();
    assert!(timers(&actor).await.is_empty());
    assert!(fired(&actor).await.is_empty());
    stop(actor, handle).await;

    // Through a registry that scheduled the old timer's wake.
    let ticks = Entities::<Tick>::builder(&storage, |_| ())
        .start()
        .await
        .unwrap();
    let due = SystemTime::now() + Duration::from_millis(300);
    let set = ticks
        .call(
            "del-2",
            |port| TMsg::Apply(vec![at("t", due, p(1))], false, port),
            Some(LIMIT),
        )
        .await
        .unwrap();
    set.unwrap();
    assert!(ticks.passivate("del-2").await);
    assert!(ticks.next_wake("del-2").is_some());
    Tick::delete_persistent(&storage, "del-2").await.unwrap();
    until_past(due).await;
    let names = ticks.call("del-2", TMsg::Fired, Some(LIMIT)).await.unwrap();
    assert!(names.is_empty(), "a deleted timer fired: {names:?}");
    let left = ticks
        .call("del-2", TMsg::Timers, Some(LIMIT))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    ticks.shutdown().await;
    // No "fired" event from either key, ever: only starts.
    while let Ok((key, what)) = rx.try_recv() {
        assert_eq!(what, "started", "{key}: {what}");
    }
}

/// Promises: thousands of timers fire once each; those due while the actor was down fire at
/// its start, before any message; their removals are all committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_timers_due_while_down_fire_once_each_before_the_first_message() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let _rx = listen("many");
    let (actor, handle) = Tick::spawn_persistent(&storage, "many-1", ())
        .await
        .unwrap();
    let base = SystemTime::now() + Duration::from_millis(400);
    for chunk in 0..3u32 {
        let cmds: Vec<Cmd> = (0..1_000u32)
            .map(|i| {
                let n = chunk * 1_000 + i;
                at(
                    &format!("m{n:04}"),
                    base + Duration::from_millis(u64::from(n % 7)),
                    p(n),
                )
            })
            .collect();
        apply(&actor, cmds).await.unwrap();
    }
    assert_eq!(timers(&actor).await.len(), 3_000);
    stop(actor, handle).await;
    until_past(base + Duration::from_millis(10)).await;
    let (actor, handle) = Tick::spawn_persistent(&storage, "many-1", ())
        .await
        .unwrap();
    let got = within("the first message", fired(&actor)).await;
    assert_eq!(
        got.len(),
        3_000,
        "every due timer fired before the first message"
    );
    let distinct: HashSet<&str> = got.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(distinct.len(), 3_000, "each once");
    assert!(timers(&actor).await.is_empty());
    stop(actor, handle).await;
    assert!(timer_rows(&mem, &ActorKey::new("adv_tick", "many-1")).is_empty());
    let (actor, handle) = Tick::spawn_persistent(&storage, "many-1", ())
        .await
        .unwrap();
    assert_eq!(fired(&actor).await.len(), 3_000, "none fired twice");
    stop(actor, handle).await;
}

/// Promise (P6, no needless writes): a message that sets a new timer and cancels it again
/// changes nothing, so it writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_set_and_cancelled_in_one_message_costs_no_write() {
    let store = Watched::default();
    let storage = Storage::new(store.clone());
    let (actor, handle) = Tick::spawn_persistent(&storage, "p6-1", ()).await.unwrap();
    apply(&actor, vec![]).await.unwrap();
    let puts = |s: &Watched| {
        s.log
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.put && w.key == "adv_tick/p6-1")
            .count()
    };
    let before = puts(&store);
    apply(&actor, vec![after("x", 60_000, p(1)), cancel("x")])
        .await
        .unwrap();
    assert!(timers(&actor).await.is_empty());
    stop(actor, handle).await;
    let written: Vec<Write> = store.log.lock().unwrap().clone();
    assert_eq!(
        puts(&store),
        before,
        "a timer set and cancelled in one message wrote rows: {written:?}"
    );
}

/// `Tx::set_timer_after` promises to refuse, setting nothing, a payload that does not encode.
/// A payload that encodes on its own but whose timer row is past the record cap must be
/// refused there too, not accepted and then fail the message's commit (which stops the actor
/// and drops the handler's other effects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_payload_too_large_for_its_row_is_refused_by_set_timer_not_by_the_commit() {
    let storage = Storage::new(MemoryStore::new());
    let (actor, handle) = Tick::spawn_persistent(&storage, "big-1", ()).await.unwrap();
    // Encodes as exactly 64 MiB (the payload cap): 1 + 1 + 4 (length) + the bytes.
    let big = P {
        tag: 0,
        rearm: 0,
        pad: vec![7u8; 64 * 1024 * 1024 - 6],
    };
    let answer = call!(
        actor,
        TMsg::Apply,
        vec![after("big", 3_600_000, big)],
        false
    );
    match answer {
        Ok(Err(refused)) => {
            assert!(refused.contains("big"), "{refused}");
            assert!(timers(&actor).await.is_empty());
            stop(actor, handle).await;
        }
        Ok(Ok(())) => {
            let names = timers(&actor).await;
            stop(actor, handle).await;
            assert!(!names.is_empty(), "accepted, yet not set");
        }
        Err(e) => {
            let _ = within("the actor stopped", handle).await;
            panic!(
                "set_timer_after accepted the payload, then the message's commit failed and \
                 the actor stopped (the caller got: {e})"
            );
        }
    }
}

// =======================================================================================
// The registry
// =======================================================================================

/// Promises: get activates once per key however many ask; send/call never lose a message that
/// meets a passivation; letters between persistent actors are applied exactly once in
/// effect. A storm of gets, passivations, deposits and letter transfers on four keys
/// conserves the money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_calls_letters_and_passivations_on_four_keys_conserves_money() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("storm");
    let reg = accounts(&storage).await;
    let keys: Vec<String> = (0..4).map(|i| format!("storm-{i}")).collect();
    let transfers = Arc::new(AtomicU64::new(0));
    let deposits = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let (reg, keys) = (reg.clone(), keys.clone());
        let (transfers, deposits, failures) =
            (transfers.clone(), deposits.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1).wrapping_mul(0x1234_5678_9abc);
            let mut rand = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            for _ in 0..80 {
                let k = &keys[rand(4) as usize];
                match rand(8) {
                    0..=3 => {
                        let to =
                            &keys[((rand(3) + 1 + keys.iter().position(|x| x == k).unwrap() as u64)
                                % 4) as usize];
                        let n = rand(7) + 1;
                        let dest = acct(to);
                        match reg
                            .call(k, |port| AMsg::Transfer(dest, n, port), Some(LIMIT))
                            .await
                        {
                            Ok(true) => {
                                transfers.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(false) => {}
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                    4 => {
                        reg.passivate(k).await;
                    }
                    5 => {
                        if let Err(e) = reg.get(k).await {
                            failures.lock().unwrap().push(e.to_string());
                        }
                    }
                    _ => match reg
                        .call(k, |port| AMsg::Deposit(1, port), Some(LIMIT))
                        .await
                    {
                        Ok(_) => {
                            deposits.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    },
                }
            }
        }));
    }
    for task in tasks {
        within("a storm task", task).await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "registry calls failed: {failures:?}");
    // Every letter sent is applied once: one "credited" event per transfer (each names the
    // sender's message id, so a replayed perform is not counted twice).
    let sent = transfers.load(Ordering::SeqCst) as usize;
    let mut credited = HashSet::new();
    while credited.len() < sent {
        let (key, what) = next(&mut rx).await;
        if what.starts_with("credited") {
            credited.insert(format!("{key} {what}"));
        }
    }
    let mut total = 0;
    for k in &keys {
        total += balance(&reg, k).await;
    }
    assert_eq!(
        total,
        400 + deposits.load(Ordering::SeqCst),
        "money is conserved ({sent} transfers)"
    );
    reg.shutdown().await;
}

/// Promise: shutdown passivates every resident actor and later calls fail with a typed error.
/// An activation already in flight when shutdown is called must not leave an actor running
/// after both returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_activation_leaves_no_actor_running_and_later_calls_are_typed_errors() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("shut");
    let spies = Entities::<StopSpy>::builder(&storage, |key| key.to_owned())
        .start()
        .await
        .unwrap();
    let (entered, release) = gate("shut-1");
    let getter = {
        let spies = spies.clone();
        tokio::spawn(async move { spies.get("shut-1").await })
    };
    within("init entered", entered).await.unwrap();
    within("shutdown", spies.shutdown()).await;
    release.add_permits(1);
    let got = within("the activation", getter).await.unwrap();
    match got {
        Err(EntityError::ShutDown { .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(actor) => {
            let id = format!("stopped {:?}", actor.get_id());
            let resident = spies.resident();
            let deadline = tokio::time::Instant::now() + LIMIT;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((_, what))) if what == id => break,
                    Ok(Some(_)) => {}
                    _ => panic!(
                        "an activation in flight when shutdown was called completed after it, \
                         and its actor is still running (resident: {resident}, alive: {:?})",
                        actor.get_status()
                    ),
                }
            }
        }
    }
    assert!(matches!(
        spies.get("shut-2").await,
        Err(EntityError::ShutDown { .. })
    ));
    let call = spies.call("shut-2", SMsg::Ping, Some(LIMIT)).await;
    assert!(
        matches!(call, Err(EntityError::ShutDown { .. })),
        "{call:?}"
    );
    let (tx, _) = oneshot::channel();
    let send = spies.send("shut-2", SMsg::Ping(tx.into())).await;
    assert!(
        matches!(send, Err(EntityError::ShutDown { .. })),
        "{send:?}"
    );
}

/// Promises: an activation that fails (init error) is a typed error and loses nothing: the
/// next get activates once; messages racing a passivation of a key still being activated
/// are all handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_activation_is_a_typed_error_then_one_instance_takes_every_message() {
    let storage = Storage::new(MemoryStore::new());
    let reg = accounts(&storage).await;
    init_fails().lock().unwrap().insert("init-1".into());
    let (entered, release) = gate("init-1");
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.get("init-1").await.map(|a| a.get_id()) })
        })
        .collect();
    within("init entered", entered).await.unwrap();
    // Passivating a key still being activated: no instance to stop yet.
    assert!(!reg.passivate("init-1").await);
    let deposits: Vec<_> = (0..10)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move {
                reg.call("init-1", |port| AMsg::Deposit(1, port), Some(LIMIT))
                    .await
            })
        })
        .collect();
    release.add_permits(1);
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    for g in gets {
        match within("a get", g).await.unwrap() {
            Ok(id) => {
                ids.insert(id);
            }
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(
        errors.len(),
        1,
        "the one failed activation is reported once: {errors:?}"
    );
    let text = errors[0].to_string();
    assert!(
        matches!(errors[0], EntityError::Activation { .. }) && text.contains("adv_acct/init-1"),
        "{text}"
    );
    assert!(ids.len() <= 1, "one instance: {ids:?}");
    let mut deposit_errors = Vec::new();
    for d in deposits {
        if let Err(e) = within("a deposit", d).await.unwrap() {
            deposit_errors.push(e.to_string());
        }
    }
    // A deposit that met the failed activation may be refused with its error, never lost.
    let applied = 10 - deposit_errors.len() as u64;
    assert_eq!(
        balance(&reg, "init-1").await,
        100 + applied,
        "{deposit_errors:?}"
    );
    assert_eq!(reg.resident(), 1);
    assert!(reg.passivate("init-1").await);
    assert_eq!(balance(&reg, "init-1").await, 100 + applied);
    reg.shutdown().await;
}

/// Promises: with `max_resident(1)` passivation loses nothing: a letter from one actor to
/// another is applied once and its sender's outbox empties (the acknowledgement reaches the
/// sender), though the two can never run at the same time; and calls ping-ponging between
/// two keys are all answered with at most one resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_resident_one_with_two_keys_exchanging_letters_settles_and_conserves_money() {
    let store = Watched::default();
    let mut writes = store.hook();
    let storage = Storage::new(store.clone());
    let mut rx = listen("pp");
    let reg = Entities::<Acct>::builder(&storage, |key| key.to_owned())
        .max_resident(1)
        .start()
        .await
        .unwrap();
    for i in 0..20u64 {
        let k = if i % 2 == 0 { "pp-c" } else { "pp-d" };
        reg.call(k, |port| AMsg::Deposit(1, port), Some(LIMIT))
            .await
            .unwrap();
        assert!(reg.resident() <= 1, "resident {}", reg.resident());
    }
    assert_eq!(
        balance(&reg, "pp-c").await + balance(&reg, "pp-d").await,
        220
    );

    let sent = reg
        .call(
            "pp-a",
            |port| AMsg::Transfer(acct("pp-b"), 10, port),
            Some(LIMIT),
        )
        .await
        .unwrap();
    assert!(sent);
    let _ = wait_for(&mut rx, "pp-b", "credited 10 by adv_acct/pp-a").await;
    // The letter was applied; now its acknowledgement must reach pp-a and empty its outbox.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(250), writes.recv()).await {
            Ok(Some(w)) => {
                seen += 1;
                if w.key == "adv_acct/pp-a" && w.space == Space::OUTBOX && !w.put {
                    break;
                }
            }
            Ok(None) => panic!("hook closed"),
            Err(_) => {
                // Nothing written for a while: flush the removals queued to ride on a later
                // commit (a call writes them first).
                storage.list("adv_acct").await.unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after a minute pp-a's letter is still unacknowledged in its outbox ({seen} writes \
             meanwhile): each activation of one key passivates the other, and an \
             acknowledgement to an actor that is not running is dropped without activating it"
        );
    }
    assert_eq!(balance(&reg, "pp-a").await, 90);
    assert_eq!(balance(&reg, "pp-b").await, 110);
    reg.shutdown().await;
}

/// Promise: the `max_resident` bound: an activation past it returns once the least recently
/// active actor stopped, so once concurrent activations have all returned, no more actors
/// than the bound are resident (two activations must not both pick one victim and leave
/// the registry over its bound for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_past_the_bound_leave_at_most_max_resident() {
    let storage = Storage::new(MemoryStore::new());
    let reg = Entities::<Acct>::builder(&storage, |key| key.to_owned())
        .max_resident(2)
        .start()
        .await
        .unwrap();
    let mut all = Vec::new();
    for round in 0..150 {
        let keys: Vec<String> = (0..16).map(|i| format!("lru-{round}-{i}")).collect();
        all.extend(keys.iter().cloned());
        let gets: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let reg = reg.clone();
                tokio::spawn(async move { reg.get(&key).await.map(|_| ()) })
            })
            .collect();
        for g in gets {
            within("an activation", g).await.unwrap().unwrap();
        }
        let resident = reg.resident();
        let listed = all.iter().filter(|k| reg.is_resident(k)).count();
        assert!(
            resident <= 2 && listed <= 2,
            "after round {round}, with every activation returned, {resident} actors are \
             resident ({listed} listed running) over a bound of 2: two concurrent activations \
             picked the same least recently active victim, and the second one's passivation \
             of it returned at once without stopping anything"
        );
    }
    reg.shutdown().await;
}

/// Promise: passivation loses nothing: timers come back with a wake, even when the registry
/// that scheduled it was dropped (the next registry scans the store at `start()`), and the
/// dropped registry does not activate anything any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_of_an_actor_whose_registry_was_dropped_fires_through_the_next_registry() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("gone");
    let due = SystemTime::now() + Duration::from_millis(400);
    {
        let reg = accounts(&storage).await;
        reg.call("gone-a", |p| AMsg::Timer("t".into(), 400, p), Some(LIMIT))
            .await
            .unwrap();
        assert!(reg.passivate("gone-a").await);
        assert!(reg.next_wake("gone-a").is_some());
        // Dropped without a shutdown: its scheduler still holds gone-a's wake.
        drop(reg);
    }
    let loads = storage.stats().loads;
    let reg = accounts(&storage).await;
    let _ = wait_for(&mut rx, "gone-a", "rang t").await;
    assert!(SystemTime::now() >= due);
    assert!(reg.is_resident("gone-a"));
    assert_eq!(
        storage.stats().loads,
        loads + 1,
        "one activation, by the new registry only: the dropped one activates nothing"
    );
    reg.shutdown().await;
}

/// Promise: letters from other persistent actors activate a passivated destination, across
/// registries of two actor types, both ways, each applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_between_registries_of_two_types_activate_each_side_and_apply_once() {
    let storage = Storage::new(MemoryStore::new());
    let mut rx = listen("two");
    let accts = accounts(&storage).await;
    let ledgers = Entities::<Ledger>::builder(&storage, |key| key.to_owned())
        .start()
        .await
        .unwrap();
    accts.get("two-a").await.unwrap();
    ledgers.get("two-l").await.unwrap();
    assert!(ledgers.passivate("two-l").await);
    for round in 1..=5u64 {
        let to = ActorKey::new("adv_ledger", "two-l");
        let sent = accts
            .call("two-a", |p| AMsg::Transfer(to, round, p), Some(LIMIT))
            .await
            .unwrap();
        assert!(sent);
        // The sender goes away at once: the receipt must activate it.
        assert!(accts.passivate("two-a").await);
        let mut want: HashSet<(String, String)> = [
            ("two-l".to_owned(), format!("ledger {round}")),
            ("two-a".to_owned(), format!("receipt {round}")),
        ]
        .into();
        while !want.is_empty() {
            let got = next(&mut rx).await;
            assert!(want.remove(&got), "unexpected or repeated event {got:?}");
        }
        assert!(ledgers.passivate("two-l").await);
    }
    assert_eq!(balance(&accts, "two-a").await, 100 - 15);
    let total = ledgers
        .call("two-l", LMsg::Total, Some(LIMIT))
        .await
        .unwrap();
    assert_eq!(total, 15);
    accts.shutdown().await;
    ledgers.shutdown().await;
}

/// Promises: P7 (one writer per key) and P4 (acknowledged means durable) with a registry and
/// an instance spawned around it: whichever instance the registry restarts (its actor has a
/// timer), every deposit a caller saw acknowledged is in the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_and_a_direct_spawn_of_one_key_lose_no_acknowledged_deposit() {
    let storage = Storage::new(MemoryStore::new());
    let _rx = listen("dual");
    let reg = Entities::<Acct>::builder(&storage, |key| key.to_owned())
        .restart_after(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    reg.call("dual-1", |p| AMsg::Timer("t".into(), 150, p), Some(LIMIT))
        .await
        .unwrap();
    let mut acked = 0u64;
    let (direct, direct_handle) = Acct::spawn_persistent(&storage, "dual-1", "dual-1".into())
        .await
        .unwrap();
    for i in 0..40u64 {
        if i % 2 == 0 {
            if call!(direct, AMsg::Deposit, 1).is_ok() {
                acked += 1;
            }
        } else if reg
            .call(
                "dual-1",
                |p| AMsg::Deposit(1, p),
                Some(Duration::from_secs(5)),
            )
            .await
            .is_ok()
        {
            acked += 1;
        }
    }
    direct.stop(None);
    let _ = within("the direct instance stops", direct_handle).await;
    reg.shutdown().await;
    let (fresh, handle) = Acct::spawn_persistent(&storage, "dual-1", "dual-1".into())
        .await
        .unwrap();
    let final_balance = call!(fresh, AMsg::Balance).unwrap();
    stop(fresh, handle).await;
    assert_eq!(
        final_balance,
        100 + acked,
        "every acknowledged deposit is durable"
    );
}
