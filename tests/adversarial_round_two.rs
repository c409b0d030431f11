//! The edges, attacked a second time: retries on a timer, the block-ahead sequence floor,
//! riders written before loads, lifecycle hooks as message cycles. The first three tests broke
//! their promise before the fixes they led to.
//!
//! Waiting for a retry is waiting for its timer: the tests wait for the perform itself (each
//! perform wakes them) and bound the wait only so that a broken runtime fails the test instead
//! of hanging it; no assertion is made on how long anything took.

#[macro_use]
mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Faults, Ledger, LedgerMsg, ledger_key, spawn_ledger};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent, call};
use ractor_persist::{
    ActorKey, Control, LoadError, MemoryStore, Outcome, Pending, Persistent, PersistentActor,
    RetryPolicy, SpawnPersistent, Start, Storage, StoreError, Tx,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// A probe actor with a control variant and a scripted `perform` per op tag.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    tag: u32,
}

enum PMsg {
    Push(u32, RpcReplyPort<u64>),
    /// Pushes, and resumes every pending op in the same message.
    PushResume(u32, RpcReplyPort<u64>),
    Pending(RpcReplyPort<Vec<(u64, u32)>>),
    /// Pushes two ops in one message.
    PushTwo(u32, u32, RpcReplyPort<()>),
    Persist(Control<Job>),
}

const DONE: u8 = 0;
const KEEP: u8 = 1;
const RETRY: u8 = 2;

#[derive(Clone, Default, Persistent)]
#[persistent(name = "probe")]
struct Probe {
    /// Outcomes per tag, front first; Done when empty.
    script: Arc<Mutex<HashMap<u32, VecDeque<u8>>>>,
    /// Every perform: (tag, seq, attempts).
    log: Arc<Mutex<Vec<(u32, u64, u32)>>>,
    /// Woken by every perform.
    performed: Arc<tokio::sync::Notify>,
}

impl Probe {
    fn script(&self, tag: u32, outcomes: &[u8]) {
        self.script
            .lock()
            .unwrap()
            .insert(tag, outcomes.iter().copied().collect());
    }
    fn performs_of(&self, tag: u32) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == tag)
            .count()
    }
    fn seqs(&self) -> Vec<u64> {
        self.log.lock().unwrap().iter().map(|e| e.1).collect()
    }
}

impl PersistentActor for Probe {
    type Msg = PMsg;
    type State = u32;
    type Op = Job;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: PMsg,
        n: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PMsg::Push(tag, reply) => {
                *n += 1;
                let id = tx.push(Job { tag })?;
                tx.reply(reply, id.seq());
            }
            PMsg::PushResume(tag, reply) => {
                *n += 1;
                let id = tx.push(Job { tag })?;
                tx.resume(|_| true);
                tx.reply(reply, id.seq());
            }
            PMsg::Pending(reply) => {
                let p = tx.pending().map(|p| (p.id().seq(), p.attempts())).collect();
                tx.reply(reply, p);
            }
            PMsg::PushTwo(t1, t2, reply) => {
                *n += 1;
                tx.push(Job { tag: t1 })?;
                tx.push(Job { tag: t2 })?;
                tx.reply(reply, ());
            }
            PMsg::Persist(_) => unreachable!(),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Job>, _: &u32) -> Result<Outcome, ActorProcessingErr> {
        let tag = op.op().tag;
        self.log
            .lock()
            .unwrap()
            .push((tag, op.id().seq(), op.attempts()));
        self.performed.notify_one();
        let next = self
            .script
            .lock()
            .unwrap()
            .get_mut(&tag)
            .and_then(|q| q.pop_front())
            .unwrap_or(DONE);
        Ok(match next {
            KEEP => Outcome::KeepUntilConfirmed,
            RETRY => Outcome::Retry,
            _ => Outcome::Done,
        })
    }

    fn control(msg: PMsg) -> Result<Control<Job>, PMsg> {
        match msg {
            PMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Job>) -> Option<PMsg> {
        Some(PMsg::Persist(c))
    }
}

async fn spawn_probe(
    storage: &Storage,
    key: &str,
    p: Probe,
    start: impl FnOnce(Start<Probe>) -> Start<Probe>,
) -> Result<ActorRef<PMsg>, SpawnErr> {
    Actor::spawn(None, p, start(Start::new(storage, key, ())))
        .await
        .map(|(a, _)| a)
}

/// Waits, perform by perform, until `f` holds. The bound only turns a runtime that never
/// performs again into a failed test instead of a hung one.
async fn wait_until(probe: &Probe, f: impl Fn() -> bool) -> bool {
    let wait = async {
        while !f() {
            probe.performed.notified().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .is_ok()
}

// ---------------------------------------------------------------------------------------
// Retries on a timer

/// durability.md, Delivery/Retry: "The actor is woken by a `Control::RetryDue` message sent by a
/// timer task ... without a control variant, due retries run after the next message." With a
/// control variant, every op waiting for a retry must be performed again once its backoff
/// ran out, without another message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_retry_is_woken_by_a_timer_not_only_the_earliest_of_a_batch() {
    let storage = Storage::new(MemoryStore::new());
    let probe = Probe::default();
    // A: Retry, Retry, then Done. B: Retry, then Done.
    probe.script(1, &[RETRY, RETRY]);
    probe.script(2, &[RETRY]);
    let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(10), 10)
        .unwrap()
        .with_jitter(0.0)
        .unwrap();
    let a = spawn_probe(&storage, "timer", probe.clone(), |s| s.retry_policy(policy))
        .await
        .unwrap();
    call!(a, PMsg::Push, 1).unwrap(); // A: attempt 1 failed, due in 100 ms
    // In one perform batch: A (resumed, attempt 2 fails: due in 200 ms) and B (attempt 1
    // fails: due in 100 ms). One timer is armed, for the shorter delay.
    call!(a, PMsg::PushResume, 2).unwrap();
    let woke = wait_until(&probe, || probe.performs_of(1) >= 3).await;
    let log_before = probe.log.lock().unwrap().clone();
    let pending = call!(a, PMsg::Pending).unwrap();
    assert!(
        woke,
        "op A (due 200 ms after its second failure) was never retried; \
         performs (tag, seq, attempts): {log_before:?}; pending then: {pending:?}"
    );
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// The same with the default jitter (0.2) and no resume: two ops pushed by one message both
/// ask for one retry. Their jittered delays differ, one timer is armed for the shorter; the
/// other op is not yet due when it fires, and nothing wakes the actor again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ops_retried_together_with_jitter_are_both_retried_without_another_message() {
    let storage = Storage::new(MemoryStore::new());
    let probe = Probe::default();
    probe.script(1, &[RETRY]);
    probe.script(2, &[RETRY]);
    let policy = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 10).unwrap();
    assert_eq!(policy.jitter(), 0.2);
    let a = spawn_probe(&storage, "jit", probe.clone(), |s| s.retry_policy(policy))
        .await
        .unwrap();
    call!(a, PMsg::PushTwo, 1, 2).unwrap();
    let both = wait_until(&probe, || {
        probe.performs_of(1) >= 2 && probe.performs_of(2) >= 2
    })
    .await;
    let counts = (probe.performs_of(1), probe.performs_of(2));
    // (Any message wakes the stuck retry: this one is handled, then the due op performed.)
    let pending = call!(a, PMsg::Pending).unwrap();
    assert!(
        both,
        "after 2 s, performs of op 1 and op 2: {counts:?} (each should be 2); \
         pending then: {pending:?}"
    );
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The block-ahead floor

/// DESIGN.md: "Operation ids (actor key + sequence) never repeat for a key, whatever happened
/// to its record (delete, quarantine, restore): the sequence floor outlives the record."
/// An older, intact snapshot put back (a restore) would make the next incarnation go on from
/// its header. The floor is kept at most a block (1,024 ids) ahead of the ids handed out, so a
/// header more than a block below it is provably old: the floor wins. (A snapshot restored
/// from within the last block cannot be told from the current one; a restore must raise its
/// header to the floor, as docs/durability.md says.)
async fn op_ids_never_repeat_after_a_snapshot_older_than_a_block_is_restored(b: Backend) {
    let key = ledger_key("restore");
    let storage = b.open(&Faults::default());
    let ledger = Ledger::default();
    let a = spawn_ledger(&storage, "restore", ledger.clone()).await;
    call!(a, LedgerMsg::Add, 1).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let backup = b
        .raw(&key)
        .snapshot()
        .map(<[u8]>::to_vec)
        .expect("a snapshot");

    let storage = b.open(&Faults::default());
    let a = spawn_ledger(&storage, "restore", ledger.clone()).await;
    for n in 0..1100 {
        call!(a, LedgerMsg::Add, n).unwrap();
    }
    call!(a, LedgerMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let used: Vec<u64> = ledger.performed().iter().map(|(id, _)| id.seq()).collect();
    assert_eq!(used, (0..=1100).collect::<Vec<u64>>());
    let floor = b.raw(&key).floor;
    assert!(floor > 1100, "the store knows ids up to {floor} are used");

    // The operator restores the backup (an intact snapshot, older than the floor).
    b.plant_snapshot(&key, backup);
    let storage = b.open(&Faults::default());
    let again = Ledger::default();
    let a = spawn_ledger(&storage, "restore", again.clone()).await;
    call!(a, LedgerMsg::Add, 1).unwrap();
    call!(a, LedgerMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let next = again.performed().last().unwrap().0.seq();
    assert!(
        !used.contains(&next),
        "after restoring an older snapshot the new op got #{next}, an id already used \
         ({used:?}), although the stored floor was {floor}"
    );
}

/// Stale instances, a delete while an instance runs, a quarantine of damage: every id
/// that was acknowledged (performed) is unique.
async fn ids_stay_unique_across_stale_instances_a_delete_under_a_live_instance_and_a_quarantine(
    b: Backend,
) {
    let storage = b.open(&Faults::default());
    // (seq, total): a replay of the same op by a newer instance is the same pair.
    let mut seen: Vec<(u64, i64)> = Vec::new();
    let l1 = Ledger::default();
    let a1 = spawn_ledger(&storage, "mix", l1.clone()).await;
    call!(a1, LedgerMsg::Add, 1).unwrap();
    call!(a1, LedgerMsg::Add, 1).unwrap();
    // A second instance takes over; the first is stale.
    let l2 = Ledger::default();
    let a2 = spawn_ledger(&storage, "mix", l2.clone()).await;
    assert!(
        call!(a1, LedgerMsg::Add, 1).is_err(),
        "the stale instance is fenced"
    );
    call!(a2, LedgerMsg::Add, 1).unwrap();
    // Deleted while a2 runs: a2 is fenced at its next write.
    Ledger::delete_persistent(&storage, "mix").await.unwrap();
    let l3 = Ledger::default();
    let a3 = spawn_ledger(&storage, "mix", l3.clone()).await;
    assert!(
        call!(a2, LedgerMsg::Add, 1).is_err(),
        "a2 is fenced by the delete"
    );
    call!(a3, LedgerMsg::Add, 1).unwrap();
    call!(a3, LedgerMsg::AddKept, 1).unwrap();
    call!(a3, LedgerMsg::Peek).unwrap();
    a3.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    for l in [&l1, &l2, &l3] {
        seen.extend(l.performed().iter().map(|(id, n)| (id.seq(), n.total)));
    }
    // Damage the snapshot, quarantine, and go on.
    let key = ledger_key("mix");
    let mut snap = b.raw(&key).snapshot().unwrap().to_vec();
    let last = snap.len() - 1;
    snap[last] ^= 0xff;
    b.plant_snapshot(&key, snap);
    let storage = b.open(&Faults::default());
    let l4 = Ledger::default();
    let (a4, _) = Actor::spawn(
        None,
        l4.clone(),
        Start::new(&storage, "mix", ()).quarantine_undecodable(),
    )
    .await
    .unwrap();
    call!(a4, LedgerMsg::Add, 1).unwrap();
    call!(a4, LedgerMsg::Peek).unwrap();
    a4.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    seen.extend(l4.performed().iter().map(|(id, n)| (id.seq(), n.total)));
    seen.sort_unstable();
    seen.dedup();
    let mut ids: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "one id for two operations: {seen:?}");
}

on_every_backend!(
    op_ids_never_repeat_after_a_snapshot_older_than_a_block_is_restored,
    ids_stay_unique_across_stale_instances_a_delete_under_a_live_instance_and_a_quarantine,
);

// ---------------------------------------------------------------------------------------
// Riders written before a load

/// A rider of a stale instance, queued before a load, is fenced alone: the load goes on, the
/// store is not poisoned, and the newer instance's record is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_rider_before_a_load_neither_fails_the_load_nor_poisons_the_store() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let old = Probe::default();
    old.script(7, &[KEEP, DONE]);
    let a = spawn_probe(&storage, "fr", old.clone(), |s| s)
        .await
        .unwrap();
    call!(a, PMsg::Push, 7).unwrap();
    // A newer instance owns the key now.
    let newer = Probe::default();
    newer.script(7, &[KEEP, KEEP]);
    let b = spawn_probe(&storage, "fr", newer.clone(), |s| s)
        .await
        .unwrap();
    // The stale instance performs op 0 (Done): its removal rider carries the stale epoch.
    Probe::resume(&a, |_| true).unwrap();
    assert!(wait_until(&old, || old.performs_of(7) >= 2).await);
    // A load (of another key) writes the queued rider first: it must be fenced alone.
    let other = spawn_probe(&storage, "other", Probe::default(), |s| s)
        .await
        .expect("the load after a fenced rider succeeds");
    call!(other, PMsg::Push, 1).expect("the store is not poisoned");
    assert_eq!(
        store.ops(&ActorKey::new("probe", "fr")).len(),
        1,
        "the stale removal was not written"
    );
    assert_eq!(call!(b, PMsg::Pending).unwrap(), vec![(0, 0)]);
    for r in [a, b, other] {
        r.stop_and_wait(None, None).await.unwrap();
    }
    let _ = storage.close().await;
}

/// A rider whose write fails before a load: the load reports a typed store error (the store
/// is poisoned, as after any failed write), it does not hang or panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rider_write_before_a_load_is_a_typed_error() {
    let faults = Faults::default();
    let storage = Storage::new(faults.wrap(MemoryStore::new()));
    let probe = Probe::default();
    let a = spawn_probe(&storage, "rw", probe.clone(), |s| s)
        .await
        .unwrap();
    call!(a, PMsg::Push, 1).unwrap(); // performed Done: a removal rider is queued
    assert!(wait_until(&probe, || probe.performs_of(1) == 1).await);
    // The actor handles this after the perform's cycle ended: the rider is queued by then.
    assert_eq!(call!(a, PMsg::Pending).unwrap(), vec![]);
    faults.fail_commits.store(true, Ordering::SeqCst);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        spawn_probe(&storage, "rw2", Probe::default(), |s| s),
    )
    .await
    .expect("no hang")
    .expect_err("the rider's write failed");
    let SpawnErr::StartupFailed(err) = err else {
        panic!("{err}")
    };
    let load = err.downcast::<LoadError>().expect("a LoadError");
    assert!(
        matches!(
            *load,
            LoadError::Store {
                source: StoreError::Poisoned { .. } | StoreError::Backend { .. },
                ..
            }
        ),
        "{load}"
    );
    a.stop_and_wait(None, None).await.unwrap();
    let _ = storage.close().await;
}

// ---------------------------------------------------------------------------------------
// Lifecycle hooks as message cycles

struct Child;

impl Actor for Child {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

enum GMsg {
    Bump(RpcReplyPort<u32>),
}

/// A supervisor whose event handler changes the state, pushes an op, then fails.
#[derive(Clone, Default, Persistent)]
#[persistent(name = "grumpy")]
struct Grumpy {
    performed: Arc<Mutex<Vec<u32>>>,
    stopped: Arc<Mutex<Option<u32>>>,
}

impl PersistentActor for Grumpy {
    type Msg = GMsg;
    type State = u32;
    type Op = u32;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        GMsg::Bump(reply): GMsg,
        n: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        *n += 5;
        tx.reply(reply, *n);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        tx: &mut Tx<'_, Self>,
        event: SupervisionEvent,
        n: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) = event {
            *n += 1;
            tx.push(*n)?;
            return Err("the supervisor gives up".into());
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<GMsg>, n: &u32) -> Result<(), ActorProcessingErr> {
        *self.stopped.lock().unwrap() = Some(*n);
        Ok(())
    }

    async fn perform(&self, op: &Pending<u32>, _: &u32) -> Result<Outcome, ActorProcessingErr> {
        self.performed.lock().unwrap().push(*op.op());
        Ok(Outcome::Done)
    }
}

/// A supervision event whose handler fails after changing the state and pushing: nothing is
/// committed, nothing performed, the store keeps the last committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_supervision_handler_rolls_back_and_performs_nothing() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let g = Grumpy::default();
    let (p, handle) = Actor::spawn(None, g.clone(), Start::new(&storage, "g", ()))
        .await
        .unwrap();
    assert_eq!(call!(p, GMsg::Bump).unwrap(), 5);
    let (child, _) = Actor::spawn_linked(None, Child, (), p.get_cell())
        .await
        .unwrap();
    child.stop_and_wait(None, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the parent fails")
        .unwrap();
    assert!(g.performed.lock().unwrap().is_empty(), "no op performed");
    assert_eq!(
        *g.stopped.lock().unwrap(),
        None,
        "no post_stop after a failure"
    );
    assert!(store.ops(&ActorKey::new("grumpy", "g")).is_empty());
    storage.close().await.unwrap();
    let storage = Storage::new(store);
    let (p, _) = Grumpy::spawn_persistent(&storage, "g", ()).await.unwrap();
    assert_eq!(call!(p, GMsg::Bump).unwrap(), 10, "the store held 5");
    p.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// post_start replays the previous incarnation's ops in sequence order, dead letters not
/// included, and an op kept across restarts keeps its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_restart_keeps_ids_and_order_and_skips_nothing() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let p1 = Probe::default();
    for t in 1..=3 {
        p1.script(t, &[KEEP]);
    }
    let a = spawn_probe(&storage, "rp", p1.clone(), |s| s)
        .await
        .unwrap();
    for t in 1..=3 {
        call!(a, PMsg::Push, t).unwrap();
    }
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let storage = Storage::new(store);
    let p2 = Probe::default();
    let a = spawn_probe(&storage, "rp", p2.clone(), |s| s)
        .await
        .unwrap();
    let n = call!(a, PMsg::Push, 9).unwrap();
    assert_eq!(n, 3, "contiguous after an intact snapshot");
    assert!(wait_until(&p2, || p2.seqs().len() == 4).await);
    assert_eq!(p2.seqs(), vec![0, 1, 2, 3]);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}
