//! The keyed registry: activation on demand (one instance per key however many ask at once),
//! passivation of idle actors, a bound on resident actors, and wakes that bring back a
//! passivated actor for its timers, retries and pending work, even after a restart.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, DecodeReason, Entities, EntityError, Fired, Inbound, Loaded,
    Marks, MemoryStore, Outcome, Pending, PersistentActor, RedbStore, RetryPolicy, Row, Space,
    SpawnPersistent, Storage, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What an account asks for after its commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Effect {
    /// Tell the test (performed once, `Done`).
    Say(String),
    /// Tell the test every time it is performed, until confirmed.
    Keep(String),
    /// Fail the first perform (a retry), then tell the test.
    Flaky(String),
}

enum Msg {
    Deposit(u64, RpcReplyPort<u64>),
    Balance(RpcReplyPort<u64>),
    Push(Effect, RpcReplyPort<()>),
    Timer(String, u64, RpcReplyPort<()>),
    Transfer(String, u64, RpcReplyPort<()>),
    Credit(u64),
    Ring(String),
    Persist(Control<Effect>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "acct")]
struct Account;

/// Where each test hears its actors' events: `(key, event)`, by the keys' prefix.
type Listeners = Mutex<HashMap<String, mpsc::UnboundedSender<(String, String)>>>;

/// What every actor of a test key prints: `(key, event)`.
fn events() -> &'static Listeners {
    static E: OnceLock<Listeners> = OnceLock::new();
    E.get_or_init(Default::default)
}

/// When each flaky effect (`key/what`) was performed successfully.
static PERFORMED_AT: std::sync::LazyLock<Mutex<HashMap<String, std::time::SystemTime>>> =
    std::sync::LazyLock::new(Default::default);

/// Flaky effects that already failed once.
fn failed_once() -> &'static Mutex<HashSet<String>> {
    static F: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

/// Events of the actors whose keys start with `prefix` (each test uses its own prefix).
fn listen(prefix: &str) -> mpsc::UnboundedReceiver<(String, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    events().lock().unwrap().insert(prefix.to_owned(), tx);
    rx
}

fn say(key: &str, what: String) {
    let prefix = key.split('-').next().unwrap_or(key);
    if let Some(tx) = events().lock().unwrap().get(prefix) {
        let _ = tx.send((key.to_owned(), what));
    }
}

impl PersistentActor for Account {
    type Msg = Msg;
    type State = u64;
    type Op = Effect;
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<u64, ActorProcessingErr> {
        if opening == GATED {
            GATE.acquire().await?.forget();
            return Ok(0);
        }
        if opening == SLOW_OPENING {
            SLOW.acquire().await?.forget();
            return Ok(0);
        }
        Ok(opening)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        balance: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Deposit(n, port) => {
                *balance += n;
                tx.reply(port, *balance);
            }
            Msg::Balance(port) => tx.reply(port, *balance),
            Msg::Push(effect, port) => {
                tx.push(effect)?;
                tx.reply(port, ());
            }
            Msg::Timer(name, ms, port) => {
                tx.set_timer_after(&name, Duration::from_millis(ms), &name)?;
                tx.reply(port, ());
            }
            Msg::Transfer(to, n, port) => {
                *balance -= n;
                tx.send(ActorKey::new("acct", to), &n)?;
                tx.reply(port, ());
            }
            Msg::Credit(n) => {
                *balance += n;
                tx.push(Effect::Say(format!("credited {n}")))?;
            }
            Msg::Ring(name) => {
                tx.push(Effect::Say(format!("rang {name}")))?;
            }
            Msg::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Effect>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
        let key = op.id().actor().key().to_owned();
        Ok(match op.op() {
            Effect::Say(what) => {
                say(&key, what.clone());
                Outcome::Done
            }
            Effect::Keep(what) => {
                say(&key, what.clone());
                Outcome::KeepUntilConfirmed
            }
            Effect::Flaky(what) => {
                if failed_once()
                    .lock()
                    .unwrap()
                    .insert(format!("{key}/{what}"))
                {
                    say(&key, format!("failed {what}"));
                    Outcome::Retry
                } else {
                    let at = std::time::SystemTime::now();
                    PERFORMED_AT
                        .lock()
                        .unwrap()
                        .insert(format!("{key}/{what}"), at);
                    say(&key, what.clone());
                    Outcome::Done
                }
            }
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Msg>,
        balance: &u64,
    ) -> Result<(), ActorProcessingErr> {
        let _ = myself;
        // Only the idle test's actor (the stop hook does not know its key).
        if *balance == IDLE_OPENING {
            say("idle", "stopped".into());
        }
        Ok(())
    }

    fn control(msg: Msg) -> Result<Control<Effect>, Msg> {
        match msg {
            Msg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Effect>) -> Option<Msg> {
        Some(Msg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<Msg, DecodeReason> {
        Ok(Msg::Credit(msg.decode()?))
    }

    fn timer(fired: Fired) -> Result<Msg, DecodeReason> {
        Ok(Msg::Ring(fired.decode()?))
    }
}

/// The next event of a test's actors, failing after a minute.
async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an event within a minute")
        .expect("open")
}

async fn registry(storage: &Storage) -> Entities<Account> {
    Entities::<Account>::builder(storage, |_| 100)
        .start()
        .await
        .unwrap()
}

fn redb() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(RedbStore::open(dir.path().join("e.redb")).unwrap());
    (dir, storage)
}

/// The opening balance of the idle test's actor, whose stop hook tells that test.
const IDLE_OPENING: u64 = 4_242;

/// The opening balance that makes `init` wait for [`GATE`].
const GATED: u64 = 777_777;

/// Holds the `init` of gated accounts until the test opens it.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_one_key_activate_one_instance() {
    let (_dir, storage) = redb();
    let accounts = Entities::<Account>::builder(&storage, |_| GATED)
        .start()
        .await
        .unwrap();
    // Every get starts while the first activation is held in `init`.
    let (ready, mut started) = mpsc::unbounded_channel();
    let gets = (0..32).map(|_| {
        let accounts = accounts.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            ready.send(()).unwrap();
            accounts.get("one").await.unwrap().get_id()
        })
    });
    let gets: Vec<_> = gets.collect();
    for _ in 0..32 {
        started.recv().await.unwrap();
    }
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
    // A permit for every get: only one should need it.
    GATE.add_permits(32);
    let mut ids = HashSet::new();
    for get in gets {
        ids.insert(get.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one instance for 32 concurrent gets");
    assert_eq!(storage.stats().loads, 1, "one load");
    assert_eq!(accounts.resident(), 1);
    accounts.shutdown().await;
}

/// The opening balance that makes `init` wait for [`SLOW`].
const SLOW_OPENING: u64 = 888_888;

/// Holds the `init` of slow accounts until the test opens it.
static SLOW: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_given_up_during_its_activation_leaves_the_key_usable() {
    let (_dir, storage) = redb();
    let accounts = Entities::<Account>::builder(&storage, |_| SLOW_OPENING)
        .start()
        .await
        .unwrap();
    // The caller gives up while `init` is held: its future is dropped mid-activation.
    let given_up = tokio::time::timeout(Duration::from_millis(20), accounts.get("slow")).await;
    assert!(given_up.is_err(), "the activation is held in init");
    SLOW.add_permits(1);
    let actor = tokio::time::timeout(Duration::from_secs(60), accounts.get("slow"))
        .await
        .expect("the key is not left activating forever")
        .unwrap();
    assert_eq!(call!(actor, Msg::Balance).unwrap(), 0);
    assert_eq!(
        storage.stats().loads,
        1,
        "the first activation finished and is the one"
    );
    assert_eq!(accounts.resident(), 1);
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_started_around_the_registry_is_fenced_by_the_store() {
    let (_dir, storage) = redb();
    let accounts = registry(&storage).await;
    let first = accounts.get("fenced").await.unwrap();
    assert_eq!(call!(first, Msg::Deposit, 1).unwrap(), 101);
    // Started behind the registry's back: it takes a newer epoch, so the registry's instance
    // cannot write any more.
    let (second, _) = Account::spawn_persistent(&storage, "fenced", 0)
        .await
        .unwrap();
    assert!(
        call!(first, Msg::Deposit, 1).is_err(),
        "the older instance is fenced"
    );
    assert_eq!(call!(second, Msg::Deposit, 1).unwrap(), 102);
    second.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_through_the_registry_activates_a_passivated_actor_with_its_state() {
    let (_dir, storage) = redb();
    let accounts = registry(&storage).await;
    for _ in 0..3 {
        accounts
            .call("p", |port| Msg::Deposit(10, port), None)
            .await
            .unwrap();
    }
    assert!(accounts.passivate("p").await);
    assert!(!accounts.is_resident("p"));
    assert_eq!(accounts.resident(), 0);
    assert_eq!(accounts.next_wake("p"), None, "nothing pending: no wake");
    let balance = accounts.call("p", Msg::Balance, None).await.unwrap();
    assert_eq!(balance, 130);
    assert!(accounts.is_resident("p"));
    assert_eq!(storage.stats().loads, 2);
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_actor_is_passivated_are_all_handled() {
    let (_dir, storage) = redb();
    let accounts = registry(&storage).await;
    accounts.get("race").await.unwrap();
    let sends = (0..200u64).map(|_| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.call("race", |p| Msg::Deposit(1, p), None).await })
    });
    let passivations = (0..5).map(|_| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.passivate("race").await })
    });
    let passivations: Vec<_> = passivations.collect();
    let sends: Vec<_> = sends.collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    for p in passivations {
        p.await.unwrap();
    }
    let balance = accounts.call("race", Msg::Balance, None).await.unwrap();
    assert_eq!(balance, 300, "every deposit applied once");
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_meets_a_draining_actor_is_sent_to_its_next_activation() {
    let (_dir, storage) = redb();
    let accounts = registry(&storage).await;
    let first = accounts.get("drain").await.unwrap();
    // The actor starts draining between a sender's lookup and its send (as a passivation
    // would): ractor refuses the message and hands it back.
    first.drain().unwrap();
    accounts
        .call("drain", |p| Msg::Deposit(5, p), None)
        .await
        .unwrap();
    let again = accounts.get("drain").await.unwrap();
    assert_ne!(again.get_id(), first.get_id(), "a new activation took it");
    assert_eq!(
        accounts.call("drain", Msg::Balance, None).await.unwrap(),
        105
    );
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_of_a_passivated_actor_activates_it() {
    let (_dir, storage) = redb();
    let mut rx = listen("timer");
    let accounts = registry(&storage).await;
    accounts
        .call("timer-a", |p| Msg::Timer("wake".into(), 150, p), None)
        .await
        .unwrap();
    assert!(accounts.passivate("timer-a").await);
    assert!(!accounts.is_resident("timer-a"));
    assert!(
        accounts.next_wake("timer-a").is_some(),
        "the registry knows its timer"
    );
    // No message is sent: only the wake can bring it back.
    assert_eq!(next(&mut rx).await, ("timer-a".into(), "rang wake".into()));
    assert!(accounts.is_resident("timer-a"));
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passivated_actors_retry_and_kept_operations_are_performed_after_reactivation() {
    let (_dir, storage) = redb();
    let mut rx = listen("ops");
    let policy = RetryPolicy::new(Duration::from_millis(150), Duration::from_millis(150), 5)
        .unwrap()
        .with_jitter(0.0)
        .unwrap();
    let accounts = Entities::<Account>::builder(&storage, |_| 0)
        .configure(move |start| start.retry_policy(policy))
        .start()
        .await
        .unwrap();
    accounts
        .call(
            "ops-r",
            |p| Msg::Push(Effect::Flaky("retried".into()), p),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        ("ops-r".into(), "failed retried".into())
    );
    // Passivated while its retry waits: the retry's instant is its wake.
    assert!(accounts.passivate("ops-r").await);
    assert!(accounts.next_wake("ops-r").is_some());
    assert_eq!(next(&mut rx).await, ("ops-r".into(), "retried".into()));
    // An operation kept until confirmation is performed again when the actor comes back.
    accounts
        .call("ops-k", |p| Msg::Push(Effect::Keep("kept".into()), p), None)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ("ops-k".into(), "kept".into()));
    assert!(accounts.passivate("ops-k").await);
    assert!(
        accounts.next_wake("ops-k").is_some(),
        "its redelivery is a wake"
    );
    accounts.get("ops-k").await.unwrap();
    assert_eq!(next(&mut rx).await, ("ops-k".into(), "kept".into()));
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_out_its_backoff_across_a_restart() {
    let (_dir, storage) = redb();
    let mut rx = listen("backoff");
    let backoff = Duration::from_millis(400);
    let policy = RetryPolicy::new(backoff, backoff, 5)
        .unwrap()
        .with_jitter(0.0)
        .unwrap();
    let spawn = || async {
        let start = ractor_persist::Start::new(&storage, "backoff-a", 0).retry_policy(policy);
        ractor::Actor::spawn(None, Account, start).await.unwrap()
    };
    let (actor, handle) = spawn().await;
    call!(actor, Msg::Push, Effect::Flaky("late".into())).unwrap();
    // The reply leaves before the operation is performed: its failure comes after this.
    let earliest = std::time::SystemTime::now() + backoff;
    assert_eq!(
        next(&mut rx).await,
        ("backoff-a".into(), "failed late".into())
    );
    // Its attempt count and the retry's instant ride on the next commit.
    call!(actor, Msg::Deposit, 1).unwrap();
    actor.stop(None);
    handle.await.unwrap();
    let (actor, _) = spawn().await;
    let (key, what) = next(&mut rx).await;
    assert_eq!((key.as_str(), what.as_str()), ("backoff-a", "late"));
    let performed = PERFORMED_AT.lock().unwrap()["backoff-a/late"];
    assert!(
        performed >= earliest,
        "performed {:?} before its retry was due",
        earliest.duration_since(performed).unwrap()
    );
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_to_a_passivated_actor_activates_it_and_is_applied_once() {
    let (_dir, storage) = redb();
    let mut rx = listen("mail");
    let accounts = registry(&storage).await;
    accounts.get("mail-b").await.unwrap();
    assert!(accounts.passivate("mail-b").await);
    accounts
        .call("mail-a", |p| Msg::Transfer("mail-b".into(), 7, p), None)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, ("mail-b".into(), "credited 7".into()));
    assert!(accounts.is_resident("mail-b"));
    let b = accounts.call("mail-b", Msg::Balance, None).await.unwrap();
    let a = accounts.call("mail-a", Msg::Balance, None).await.unwrap();
    assert_eq!((a, b), (93, 107));
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_passivates_the_least_recently_active_and_idle_actors_are_passivated() {
    let (_dir, storage) = redb();
    let accounts = Entities::<Account>::builder(&storage, |_| 0)
        .max_resident(3)
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        let key = format!("lru-{i}");
        accounts.call(&key, Msg::Balance, None).await.unwrap();
        // An activation past the bound returns once the least recently active one stopped.
        assert!(accounts.resident() <= 3, "resident {}", accounts.resident());
    }
    let resident: Vec<bool> = (0..10)
        .map(|i| accounts.is_resident(&format!("lru-{i}")))
        .collect();
    assert_eq!(resident.iter().filter(|r| **r).count(), 3);
    assert!(resident[7] && resident[8] && resident[9], "{resident:?}");
    accounts.shutdown().await;

    let (_dir, storage) = redb();
    let accounts = Entities::<Account>::builder(&storage, |_| IDLE_OPENING)
        .idle_after(Duration::from_millis(30))
        .start()
        .await
        .unwrap();
    let mut rx = listen("idle");
    accounts.get("idle").await.unwrap();
    // Passivated once idle: its stop hook runs; the next message activates it again.
    assert_eq!(next(&mut rx).await, ("idle".into(), "stopped".into()));
    let balance = accounts.call("idle", Msg::Balance, None).await.unwrap();
    assert_eq!(balance, IDLE_OPENING);
    assert_eq!(storage.stats().loads, 2);
    accounts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_registry_activates_actors_with_pending_work_and_due_timers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let mut rx = listen("boot");
    {
        let storage = Storage::new(RedbStore::open(&path).unwrap());
        let accounts = registry(&storage).await;
        accounts
            .call(
                "boot-k",
                |p| Msg::Push(Effect::Keep("kept".into()), p),
                None,
            )
            .await
            .unwrap();
        assert_eq!(next(&mut rx).await, ("boot-k".into(), "kept".into()));
        accounts
            .call("boot-t", |p| Msg::Timer("later".into(), 200, p), None)
            .await
            .unwrap();
        // A crash: the actors are killed (no stop hook, nothing reported to the registry).
        accounts.get("boot-k").await.unwrap().kill();
        accounts.get("boot-t").await.unwrap().kill();
        drop(accounts);
        storage.close().await.unwrap();
    }
    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let accounts = registry(&storage).await;
    // Nobody sends them anything: the registry finds the pending op and the timer itself.
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort();
    assert_eq!(
        got,
        [
            ("boot-k".to_owned(), "kept".to_owned()),
            ("boot-t".to_owned(), "rang later".to_owned())
        ]
    );
    accounts.shutdown().await;
}

/// A memory store that takes keys of at most 12 bytes, as a server might.
struct Short(MemoryStore);

impl Store for Short {
    fn name(&self) -> &str {
        "short"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.0.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.0.commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.0.read(key, space, ids)
    }
    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.0.keys(namespace, space)
    }
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.0.scan()
    }
    fn max_key_len(&self) -> Option<usize> {
        Some(12)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_store_cannot_hold_is_refused_with_the_reason_and_nothing_is_activated() {
    let storage = Storage::new(Short(MemoryStore::new()));
    let accounts = registry(&storage).await;
    let e = accounts.get("much-too-long").await.unwrap_err();
    assert!(matches!(e, EntityError::InvalidKey { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("acct/much-too-long") && text.contains("at most 12 bytes"),
        "{text}"
    );
    assert_eq!(storage.stats().loads, 0);
    assert_eq!(accounts.resident(), 0);
    assert!(accounts.get("ok").await.is_ok());
    accounts.shutdown().await;
}
