//! Adversarial tests of the group committer: inline (actor-thread) writes racing queued ones,
//! close, loads, riders, fencing, failing and panicking stores, and rollback after each.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Faults, Gate, Ledger, LedgerMsg, spawn_ledger};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, Loaded, Marks, MemoryStore, Outcome, Pending, Persistent,
    PersistentActor, Row, Space, Start, Storage, StorageConfig, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};

const LIMIT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

// ---------------------------------------------------------------------------------------------
// A store that can write and then report failure, or panic, and records the committing thread.

#[derive(Clone, Default)]
struct Treacherous {
    inner: MemoryStore,
    /// The next commit is written, then reported as failed.
    write_then_fail: Arc<AtomicBool>,
    /// Every commit panics (before writing).
    panic: Arc<AtomicBool>,
    /// Names of the threads that made each commit call.
    threads: Arc<Mutex<Vec<String>>>,
    /// The next commit returns a fence naming an index past the end of the batch.
    bogus_fence: Arc<AtomicBool>,
}

impl Store for Treacherous {
    fn name(&self) -> &str {
        "treacherous"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        self.threads.lock().unwrap().push(thread);
        if self.panic.load(Ordering::SeqCst) {
            panic!("the backend exploded");
        }
        if self.bogus_fence.swap(false, Ordering::SeqCst) {
            let first = &batch[0];
            return Err(StoreError::Fenced(vec![ractor_persist::Fence {
                index: batch.len() + 7,
                key: (*first.key).clone(),
                epoch: first.epoch,
                current: first.epoch + 1,
            }]));
        }
        let written = self.inner.commit(batch);
        if self.write_then_fail.swap(false, Ordering::SeqCst) {
            written?;
            return Err(StoreError::backend(
                "treacherous",
                "fsync reported EIO after the write",
            ));
        }
        written
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

// ---------------------------------------------------------------------------------------------
// A probe whose Drop reports the value memory held (as in tests/rollback.rs).

static LAST_DROPPED: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

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

enum PMsg {
    Add(i64, RpcReplyPort<i64>),
    Peek(RpcReplyPort<i64>),
}

#[derive(Default, Persistent)]
#[persistent(name = "adv-probe")]
struct ProbeActor;

impl PersistentActor for ProbeActor {
    type Msg = PMsg;
    type State = Probe;
    type Op = ();
    type Arguments = String;

    async fn init(&self, key: String) -> Result<Probe, ActorProcessingErr> {
        Ok(Probe { key, total: 0 })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: PMsg,
        probe: &mut Probe,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PMsg::Add(n, reply) => {
                probe.total += n;
                tx.reply(reply, probe.total);
            }
            PMsg::Peek(reply) => tx.reply(reply, probe.total),
        }
        Ok(())
    }
}

fn last_dropped(key: &str) -> Option<i64> {
    LAST_DROPPED.lock().unwrap().get(key).copied()
}

async fn stored_probe(mem: &MemoryStore, key: &str) -> i64 {
    let storage = Storage::new(mem.clone());
    let (a, _) = Actor::spawn(None, ProbeActor, Start::new(&storage, key, key.to_owned()))
        .await
        .unwrap();
    let total = call!(a, PMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    total
}

/// P5 on a commit that reached the disk but was reported failed (an fsync error after the
/// write, a lost answer from a server): after the actor's first commit the rollback reads the
/// store back and agrees with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_later_commit_that_landed_but_failed_equals_the_store() {
    let store = Treacherous::default();
    let storage = Storage::new(store.clone());
    let key = "landed-later";
    let (a, handle) = Actor::spawn(None, ProbeActor, Start::new(&storage, key, key.to_owned()))
        .await
        .unwrap();
    assert_eq!(call!(a, PMsg::Add, 3).unwrap(), 3);
    store.write_then_fail.store(true, Ordering::SeqCst);
    assert!(
        call!(a, PMsg::Add, 10).is_err(),
        "a failed commit is an error"
    );
    within("the actor stops", handle).await.unwrap();
    let memory = last_dropped(key).unwrap();
    assert!(storage.close().await.is_err(), "poisoned");
    let stored = stored_probe(&store.inner, key).await;
    assert_eq!(stored, 13, "the write landed");
    assert_eq!(memory, stored, "P5: memory equals the store");
}

/// The same on the actor's FIRST commit: a failed first commit may have left the state, so the
/// rollback reads the store back rather than assuming it holds nothing (a review found the
/// rollback going back to `init`'s encoding here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_first_commit_that_landed_but_failed_equals_the_store() {
    let store = Treacherous::default();
    let storage = Storage::new(store.clone());
    let key = "landed-first";
    let (a, handle) = Actor::spawn(None, ProbeActor, Start::new(&storage, key, key.to_owned()))
        .await
        .unwrap();
    store.write_then_fail.store(true, Ordering::SeqCst);
    assert!(
        call!(a, PMsg::Add, 5).is_err(),
        "a failed commit is an error"
    );
    within("the actor stops", handle).await.unwrap();
    let memory = last_dropped(key).unwrap();
    assert!(storage.close().await.is_err(), "poisoned");
    let stored = stored_probe(&store.inner, key).await;
    assert_eq!(stored, 5, "the write landed");
    assert_eq!(memory, stored, "P5: memory equals the store");
}

// ---------------------------------------------------------------------------------------------
// Panics inside a custom store's commit, inline and queued.

async fn panicking_commit_is_a_typed_error(storage: Storage, store: Treacherous, inline: bool) {
    let a = spawn_ledger(&storage, "boom", Ledger::default()).await;
    assert_eq!(call!(a, LedgerMsg::Add, 1).unwrap(), 1);
    store.panic.store(true, Ordering::SeqCst);
    let (port, rx) = ractor::concurrency::oneshot();
    a.send_message(LedgerMsg::Add(2, RpcReplyPort::from(port)))
        .unwrap();
    assert!(
        within("the reply", rx).await.is_err(),
        "no reply for a commit whose backend panicked"
    );
    within("the actor stops", async {
        while a.get_status() != ractor::ActorStatus::Stopped {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let threads = store.threads.lock().unwrap().clone();
    let last = threads.last().unwrap();
    assert_eq!(
        !last.starts_with("persist-commit"),
        inline,
        "the panicking commit ran on the expected thread: {threads:?}"
    );
    // Later work gets a typed error, and nothing hangs.
    store.panic.store(false, Ordering::SeqCst);
    let again = within(
        "a spawn after the panic",
        Actor::spawn(None, Ledger::default(), Start::new(&storage, "boom2", ())),
    )
    .await;
    assert!(again.is_err(), "the store is poisoned after a panic");
    let closed = within("close", storage.close()).await;
    assert!(
        matches!(closed, Err(StoreError::Poisoned { ref cause, .. }) if cause.contains("exploded")),
        "{closed:?}"
    );
    // The write before the panic is there.
    let reopened = Storage::new(store.inner.clone());
    let a = spawn_ledger(&reopened, "boom", Ledger::default()).await;
    assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), 1);
    a.stop_and_wait(None, None).await.unwrap();
    reopened.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_panic_in_an_inline_commit_is_a_typed_error() {
    let store = Treacherous::default();
    let storage = Storage::new(store.clone());
    panicking_commit_is_a_typed_error(storage, store, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_panic_in_a_queued_commit_is_a_typed_error() {
    let store = Treacherous::default();
    let storage = Storage::with_config(
        store.clone(),
        StorageConfig::default().committer_thread_only(),
    );
    panicking_commit_is_a_typed_error(storage, store, false).await;
}

/// A backend that breaks the `Fenced` contract (an index past the batch) must not bring down
/// the committer: the actor's commit fails with an error, and later calls do not hang.
/// (A review found the committer indexing the batch with the fence's index unchecked: the
/// thread panicked with the store held, and every later request hung.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_with_a_bad_index_is_an_error_not_a_hang() {
    let store = Treacherous::default();
    let storage = Storage::with_config(
        store.clone(),
        StorageConfig::default().committer_thread_only(),
    );
    let a = spawn_ledger(&storage, "bad-fence", Ledger::default()).await;
    store.bogus_fence.store(true, Ordering::SeqCst);
    let (port, rx) = ractor::concurrency::oneshot();
    a.send_message(LedgerMsg::Add(2, RpcReplyPort::from(port)))
        .unwrap();
    assert!(within("the reply", rx).await.is_err());
    let later = within(
        "a spawn after the bad fence",
        Actor::spawn(None, Ledger::default(), Start::new(&storage, "after", ())),
    )
    .await;
    // Either answer is fine, as long as there is one.
    drop(later);
    let _ = within("close", storage.close()).await;
}

// ---------------------------------------------------------------------------------------------
// Close racing inline and queued commits.

async fn close_racing_commits_never_hangs_and_loses_no_acknowledged_commit(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    const N: usize = 8;
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut tasks = Vec::new();
    for i in 0..N {
        let a = spawn_ledger(&storage, &format!("race{i}"), Ledger::default()).await;
        let acks_tx = acks_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = 0i64;
            while let Ok(total) = call!(a, LedgerMsg::Add, 1) {
                acked += 1;
                assert_eq!(total, acked, "each ack is the next total");
                let _ = acks_tx.send(i);
            }
            // The actor stopped on the refused commit.
            within("the actor stops", async {
                while a.get_status() != ractor::ActorStatus::Stopped {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            acked
        }));
    }
    drop(acks_tx);
    for _ in 0..(N * 10) {
        within("acks", acks.recv()).await.unwrap();
    }
    within("close", storage.close())
        .await
        .expect("a clean close");
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(within("an actor task", t).await.unwrap());
    }
    // A commit after close is refused as Closed; the store file is released.
    let storage = b.open(&faults);
    for (i, n) in acked.iter().enumerate() {
        let a = spawn_ledger(&storage, &format!("race{i}"), Ledger::default()).await;
        assert_eq!(
            call!(a, LedgerMsg::Peek).unwrap(),
            *n,
            "race{i}: the store holds exactly the acknowledged commits"
        );
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_close_is_closed_inline_or_not() {
    let store = Treacherous::default();
    let storage = Storage::new(store.clone());
    let a = spawn_ledger(&storage, "late", Ledger::default()).await;
    assert_eq!(call!(a, LedgerMsg::Add, 1).unwrap(), 1);
    storage.close().await.unwrap();
    assert!(call!(a, LedgerMsg::Add, 1).is_err());
    let spawn = Actor::spawn(None, Ledger::default(), Start::new(&storage, "late2", ())).await;
    let Err(ractor::SpawnErr::StartupFailed(err)) = spawn else {
        panic!("a spawn on a closed storage starts")
    };
    let err = err
        .downcast::<ractor_persist::LoadError>()
        .expect("a load error");
    assert!(
        matches!(
            *err,
            ractor_persist::LoadError::Store {
                source: StoreError::Closed { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(storage.close().await.is_ok(), "closing twice is no error");
}

// ---------------------------------------------------------------------------------------------
// Loads racing commits and riders: respawns see every rider sent before the load.

async fn respawn_sees_every_commit_and_rider_while_others_commit(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let stop = Arc::new(AtomicBool::new(false));
    // Background noise: actors committing continuously, so writes go inline and queued.
    let mut noise = Vec::new();
    for i in 0..4 {
        let a = spawn_ledger(&storage, &format!("noise{i}"), Ledger::default()).await;
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                call!(a, LedgerMsg::Add, 1).unwrap();
            }
            a.stop_and_wait(None, None).await.unwrap();
        }));
    }
    let mut workers = Vec::new();
    for i in 0..4 {
        let storage = storage.clone();
        workers.push(tokio::spawn(async move {
            let key = format!("respawn{i}");
            let mut total = 0;
            for round in 0..15 {
                let ledger = Ledger::default();
                let a = spawn_ledger(&storage, &key, ledger.clone()).await;
                assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), total, "round {round}");
                assert!(
                    ledger.performed().is_empty(),
                    "{key} round {round}: a done op was performed again; its removal (a rider \
                     queued before the stop) was not written before the load: {:?}",
                    ledger.performed()
                );
                for _ in 0..3 {
                    total += 1;
                    assert_eq!(call!(a, LedgerMsg::Add, 1).unwrap(), total);
                }
                a.stop_and_wait(None, None).await.unwrap();
            }
        }));
    }
    for w in workers {
        within("a respawning worker", w).await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for n in noise {
        within("a noise actor", n).await.unwrap();
    }
    within("close", storage.close()).await.unwrap();
}

// A dead-letter move (a rider) must survive a respawn right after it.

#[derive(Clone, Default, Persistent)]
#[persistent(name = "adv-deadletter")]
struct Doomed {
    attempts: Arc<AtomicUsize>,
}

enum DMsg {
    Push(RpcReplyPort<()>),
    Report(RpcReplyPort<(Vec<u64>, Vec<u64>)>),
}

impl PersistentActor for Doomed {
    type Msg = DMsg;
    type State = u64;
    type Op = u64;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: DMsg,
        n: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DMsg::Push(reply) => {
                *n += 1;
                tx.push(*n)?;
                tx.reply(reply, ());
            }
            DMsg::Report(reply) => {
                let pending = tx.pending().map(|p| p.id().seq()).collect();
                let dead = tx.dead_letters().map(|p| p.id().seq()).collect();
                tx.reply(reply, (pending, dead));
            }
        }
        Ok(())
    }

    async fn perform(&self, _: &Pending<u64>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::Retry)
    }
}

async fn spawn_doomed(storage: &Storage, key: &str, d: Doomed) -> ActorRef<DMsg> {
    let start = Start::new(storage, key, ()).retry_policy(common::patient(1));
    Actor::spawn(None, d, start).await.expect("spawn").0
}

async fn a_dead_letter_move_is_seen_by_the_next_load(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let stop = Arc::new(AtomicBool::new(false));
    let mut noise = Vec::new();
    for i in 0..3 {
        let a = spawn_ledger(&storage, &format!("dl-noise{i}"), Ledger::default()).await;
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                call!(a, LedgerMsg::Add, 1).unwrap();
            }
            a.stop_and_wait(None, None).await.unwrap();
        }));
    }
    let attempts = Arc::new(AtomicUsize::new(0));
    for (round, dead) in (0..10).enumerate() {
        let d = Doomed {
            attempts: attempts.clone(),
        };
        let a = spawn_doomed(&storage, "doomed", d).await;
        let (pending, dl) = call!(a, DMsg::Report).unwrap();
        assert!(pending.is_empty(), "round {round}: pending {pending:?}");
        assert_eq!(dl.len(), dead, "round {round}: dead letters {dl:?}");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            dead,
            "round {round}: a dead letter was performed again"
        );
        call!(a, DMsg::Push).unwrap();
        a.stop_and_wait(None, None).await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for n in noise {
        within("noise", n).await.unwrap();
    }
    within("close", storage.close()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Fencing with one instance writing inline and the other queued.

async fn two_instances_of_a_key_one_inline_one_queued_only_the_newer_writes(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let old = spawn_ledger(&storage, "dup", Ledger::default()).await;
    assert_eq!(call!(old, LedgerMsg::Add, 1).unwrap(), 1);
    let other = spawn_ledger(&storage, "holder", Ledger::default()).await;
    let new = spawn_ledger(&storage, "dup", Ledger::default()).await;
    // Hold the holder's commit inside the store: the old instance's commit queues behind it.
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let (port, held) = ractor::concurrency::oneshot();
    other
        .send_message(LedgerMsg::Add(5, RpcReplyPort::from(port)))
        .unwrap();
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let (port, stale) = ractor::concurrency::oneshot();
    old.send_message(LedgerMsg::Add(10, RpcReplyPort::from(port)))
        .unwrap();
    release.send(()).unwrap();
    assert_eq!(within("the held commit", held).await.unwrap(), 5);
    assert!(
        within("the stale reply", stale).await.is_err(),
        "the fenced instance is told no success"
    );
    // The newer instance writes (inline, the store is idle again, or queued).
    assert_eq!(call!(new, LedgerMsg::Add, 100).unwrap(), 101);
    // And the other way round: the old one (if still alive) writing inline is refused too.
    let _ = call!(old, LedgerMsg::Add, 1000);
    assert_eq!(call!(new, LedgerMsg::Peek).unwrap(), 101);
    new.stop_and_wait(None, None).await.unwrap();
    other.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let storage = b.open(&faults);
    let a = spawn_ledger(&storage, "dup", Ledger::default()).await;
    assert_eq!(
        call!(a, LedgerMsg::Peek).unwrap(),
        101,
        "only the newer wrote"
    );
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// Many instances of one key spawned while others commit: whoever was acknowledged last holds
/// the key, and the store holds exactly its acknowledged total.
async fn spawn_storm_on_one_key_keeps_one_writer(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let mut tasks = Vec::new();
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    for _ in 0..6 {
        let storage = storage.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let a = spawn_ledger(&storage, "storm", Ledger::default()).await;
                for _ in 0..4 {
                    match call!(a, LedgerMsg::Add, 1) {
                        Ok(total) => acked.lock().unwrap().push(total),
                        Err(_) => break,
                    }
                }
                a.stop(None);
            }
        }));
    }
    for t in tasks {
        within("a storm task", t).await.unwrap();
    }
    storage.close().await.unwrap();
    let storage = b.open(&faults);
    let a = spawn_ledger(&storage, "storm", Ledger::default()).await;
    let stored = call!(a, LedgerMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let acked = acked.lock().unwrap().clone();
    // Totals acknowledged by fenced-off writers never overlapped: each total is acknowledged at
    // most once (two writers interleaving would both acknowledge the same total).
    let mut sorted = acked.clone();
    sorted.sort();
    let n = sorted.len();
    sorted.dedup();
    assert_eq!(sorted.len(), n, "a total was acknowledged twice: {acked:?}");
    assert_eq!(
        stored,
        *sorted.last().unwrap(),
        "the store holds the highest acknowledged total"
    );
    assert_eq!(stored as usize, n, "every acknowledged Add is in the store");
}

on_every_backend!(
    close_racing_commits_never_hangs_and_loses_no_acknowledged_commit,
    respawn_sees_every_commit_and_rider_while_others_commit,
    a_dead_letter_move_is_seen_by_the_next_load,
    two_instances_of_a_key_one_inline_one_queued_only_the_newer_writes,
    spawn_storm_on_one_key_keeps_one_writer,
);
