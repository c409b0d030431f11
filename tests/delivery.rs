//! At-least-once delivery: confirmation, resume from outside, retry with backoff, dead
//! letters, receiver-side deduplication, and the capacity limit.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eager, patient};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorKey, Control, Delivery, MemoryStore, OpId, Outcome, Pending, Persistent, PersistentActor,
    RetryPolicy, RetryPolicyError, Seen, SpawnPersistent, Start, Storage, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Book {
    sent: u32,
    applied: Vec<u32>,
    seen: Seen,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Deliver {
    n: u32,
}

enum Msg {
    Send(u32, RpcReplyPort<Result<OpId, String>>),
    ConfirmId(OpId, RpcReplyPort<bool>),
    ConfirmBelow(u32, RpcReplyPort<usize>),
    DeadLetters(RpcReplyPort<Vec<OpId>>),
    Requeue(OpId, RpcReplyPort<Result<(), String>>),
    Receive(OpId, u32, RpcReplyPort<Delivery>),
    Applied(RpcReplyPort<Vec<u32>>),
    Pending(RpcReplyPort<Vec<(u64, u32)>>),
    Persist(Control<Deliver>),
}

/// Told (seq, attempt) of every perform.
type Watcher = mpsc::UnboundedSender<(u64, u32)>;

const DONE: u8 = 0;
const KEEP: u8 = 1;
const RETRY: u8 = 2;
const FAIL: u8 = 3;

#[derive(Clone, Default, Persistent)]
#[persistent(name = "courier")]
struct Courier {
    /// What `perform` answers.
    mode: Arc<AtomicU8>,
    /// Every perform: (seq, attempt).
    performed: Arc<Mutex<Vec<(u64, u32)>>>,
    /// Told of every perform, so tests wait without sleeping.
    notify: Arc<Mutex<Option<Watcher>>>,
}

impl Courier {
    fn with_mode(mode: u8) -> Self {
        let c = Courier::default();
        c.mode.store(mode, Ordering::SeqCst);
        c
    }

    fn watch(&self) -> mpsc::UnboundedReceiver<(u64, u32)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.notify.lock().unwrap() = Some(tx);
        rx
    }

    fn seqs(&self) -> Vec<u64> {
        self.performed
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }
}

impl PersistentActor for Courier {
    type Msg = Msg;
    type State = Book;
    type Op = Deliver;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Book, ActorProcessingErr> {
        Ok(Book {
            seen: Seen::new(64, 8),
            ..Book::default()
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        book: &mut Book,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Send(n, reply) => match tx.push(Deliver { n }) {
                Ok(id) => {
                    book.sent += 1;
                    tx.reply(reply, Ok(id));
                }
                // Over capacity: tell the caller, change nothing.
                Err(e) => tx.reply(reply, Err(e.to_string())),
            },
            Msg::ConfirmId(id, reply) => {
                let known = tx.confirm(&id);
                book.sent += 1; // a state change in the same commit
                tx.reply(reply, known);
            }
            Msg::ConfirmBelow(limit, reply) => {
                let n = tx.confirm_where(|p| p.op().n < limit);
                book.sent += 1;
                tx.reply(reply, n);
            }
            Msg::DeadLetters(reply) => {
                let dead = tx.dead_letters().map(|p| p.id().clone()).collect();
                tx.reply(reply, dead);
            }
            Msg::Requeue(id, reply) => {
                let r = tx.requeue(&id).map_err(|e| e.to_string());
                tx.reply(reply, r);
            }
            Msg::Receive(id, n, reply) => {
                let d = book.seen.record(&id);
                if d == Delivery::New {
                    book.applied.push(n);
                }
                tx.reply(reply, d);
            }
            Msg::Applied(reply) => tx.reply(reply, book.applied.clone()),
            Msg::Pending(reply) => {
                let p = tx.pending().map(|p| (p.id().seq(), p.attempts())).collect();
                tx.reply(reply, p);
            }
            Msg::Persist(_) => unreachable!("control messages never reach the handler"),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Deliver>,
        _: &Book,
    ) -> Result<Outcome, ActorProcessingErr> {
        let entry = (op.id().seq(), op.attempts());
        self.performed.lock().unwrap().push(entry);
        if let Some(n) = self.notify.lock().unwrap().as_ref() {
            let _ = n.send(entry);
        }
        Ok(match self.mode.load(Ordering::SeqCst) {
            DONE => Outcome::Done,
            KEEP => Outcome::KeepUntilConfirmed,
            FAIL => return Err("perform failed on purpose".into()),
            _ => Outcome::Retry,
        })
    }

    fn control(msg: Msg) -> Result<Control<Deliver>, Msg> {
        match msg {
            Msg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Deliver>) -> Option<Msg> {
        Some(Msg::Persist(c))
    }
}

async fn spawn(
    storage: &Storage,
    key: &str,
    c: Courier,
    start: impl FnOnce(Start<Courier>) -> Start<Courier>,
) -> ActorRef<Msg> {
    let (a, _) = Actor::spawn(None, c, start(Start::new(storage, key, ())))
        .await
        .unwrap();
    a
}

fn ops_in_store(store: &MemoryStore, key: &str) -> Vec<u64> {
    store
        .ops(&ActorKey::new("courier", key))
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_by_id_and_by_predicate_remove_exactly_the_matching_ops_with_the_state_change() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "c1", Courier::with_mode(KEEP), |s| s).await;
    let mut ids = Vec::new();
    for n in [10, 20, 30, 40] {
        ids.push(call!(a, Msg::Send, n).unwrap().unwrap());
    }
    assert!(call!(a, Msg::ConfirmId, ids[1].clone()).unwrap());
    assert_eq!(ops_in_store(&store, "c1"), vec![0, 2, 3]);
    assert_eq!(call!(a, Msg::ConfirmBelow, 35).unwrap(), 2, "10 and 30");
    assert_eq!(ops_in_store(&store, "c1"), vec![3]);
    // Unknown ids change nothing and are reported as such.
    assert!(!call!(a, Msg::ConfirmId, ids[1].clone()).unwrap());
    // The confirmations rode with a state change: `sent` counts 4 sends and 3 confirms.
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let storage = Storage::new(store.clone());
    let again = Courier::with_mode(KEEP);
    let a = spawn(&storage, "c1", again.clone(), |s| s).await;
    // A replay is not a failed attempt.
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(3, 0)]);
    assert_eq!(again.seqs(), vec![3], "only the unconfirmed op is replayed");
    a.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_outside_performs_the_matching_pending_ops_in_order() {
    let storage = Storage::new(MemoryStore::new());
    let c = Courier::with_mode(KEEP);
    let a = spawn(&storage, "c2", c.clone(), |s| s).await;
    for n in [1, 2, 3, 4] {
        call!(a, Msg::Send, n).unwrap().unwrap();
    }
    call!(a, Msg::Pending).unwrap();
    c.performed.lock().unwrap().clear();
    Courier::resume(&a, |p| p.op().n % 2 == 0).unwrap();
    call!(a, Msg::Pending).unwrap();
    assert_eq!(c.seqs(), vec![1, 3], "the even ones, in sequence order");
    Courier::resume(&a, |_| true).unwrap();
    call!(a, Msg::Pending).unwrap();
    assert_eq!(c.seqs(), vec![1, 3, 0, 1, 2, 3]);
    a.stop_and_wait(None, None).await.unwrap();
}

#[test]
fn retry_delays_grow_are_capped_and_jittered_within_bounds() {
    let p = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1), 5)
        .unwrap()
        .with_jitter(0.5)
        .unwrap();
    assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
    assert_eq!(p.delay(2, 0.0), Duration::from_millis(200));
    assert_eq!(p.delay(3, 0.0), Duration::from_millis(400));
    assert_eq!(p.delay(9, 0.0), Duration::from_secs(1), "capped");
    assert_eq!(
        p.delay(2, 1.0),
        Duration::from_millis(100),
        "at most half taken off"
    );
    assert!(p.delay(60, 0.3) <= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_its_backoff_without_blocking_the_mailbox() {
    let storage = Storage::new(MemoryStore::new());
    let c = Courier::with_mode(RETRY);
    let policy = RetryPolicy::new(Duration::from_secs(3600), Duration::from_secs(3600), 5).unwrap();
    let a = spawn(&storage, "c3", c.clone(), |s| s.retry_policy(policy)).await;
    call!(a, Msg::Send, 1).unwrap().unwrap();
    // The actor answers while the op waits an hour for its retry.
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 1)]);
    a.send_message(Msg::Persist(Control::RetryDue)).unwrap();
    call!(a, Msg::Send, 2).unwrap().unwrap();
    call!(a, Msg::Pending).unwrap();
    assert_eq!(c.seqs(), vec![0, 1], "op 0 is not due: performed once");
    a.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_then_the_op_becomes_a_dead_letter_that_can_be_requeued() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(RETRY);
    let mut seen = c.watch();
    let policy = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 3).unwrap();
    let a = spawn(&storage, "c4", c.clone(), |s| s.retry_policy(policy)).await;
    call!(a, Msg::Send, 7).unwrap().unwrap();
    // The runtime's timer wakes the actor for each retry: three performs (with 0, 1 and 2
    // failed attempts behind them), then it stops.
    for failed in 0..3 {
        assert_eq!(seen.recv().await, Some((0, failed)));
    }
    let dead = |ids: Vec<OpId>| ids.iter().map(OpId::seq).collect::<Vec<_>>();
    assert_eq!(dead(call!(a, Msg::DeadLetters).unwrap()), vec![0]);
    assert!(call!(a, Msg::Pending).unwrap().is_empty());
    assert!(seen.try_recv().is_err(), "no fourth attempt");
    // Requeueing an id that is not a dead letter is a typed error.
    let live = call!(a, Msg::Send, 8).unwrap().unwrap();
    let err = call!(a, Msg::Requeue, live).unwrap().unwrap_err();
    assert!(err.contains("not a dead letter"), "{err}");
    for failed in 0..3 {
        assert_eq!(seen.recv().await, Some((1, failed)));
    }
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    // Dead letters survive a restart, are not performed, and can be re-queued.
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(DONE);
    let a = spawn(&storage, "c4", c.clone(), |s| s.retry_policy(policy)).await;
    let letters = call!(a, Msg::DeadLetters).unwrap();
    assert_eq!(dead(letters.clone()), vec![0, 1]);
    assert!(c.seqs().is_empty(), "dead letters are not replayed");
    call!(a, Msg::Requeue, letters[0].clone()).unwrap().unwrap();
    call!(a, Msg::Pending).unwrap();
    assert_eq!(c.seqs(), vec![0], "the requeued op ran and was done");
    assert_eq!(dead(call!(a, Msg::DeadLetters).unwrap()), vec![1]);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert!(!ops_in_store(&store, "c4").contains(&0), "done: removed");
    assert!(
        ops_in_store(&store, "c4").contains(&1),
        "still a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seen_set_drops_a_duplicate_across_a_receiver_restart() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let sender = spawn(&storage, "sender", Courier::with_mode(KEEP), |s| s).await;
    let id = call!(sender, Msg::Send, 5).unwrap().unwrap();
    let rx = spawn(&storage, "receiver", Courier::default(), |s| s).await;
    assert_eq!(
        call!(rx, Msg::Receive, id.clone(), 5).unwrap(),
        Delivery::New
    );
    assert_eq!(
        call!(rx, Msg::Receive, id.clone(), 5).unwrap(),
        Delivery::Duplicate
    );
    rx.stop_and_wait(None, None).await.unwrap();
    sender.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    let storage = Storage::new(store.clone());
    let rx = spawn(&storage, "receiver", Courier::default(), |s| s).await;
    assert_eq!(
        call!(rx, Msg::Receive, id.clone(), 5).unwrap(),
        Delivery::Duplicate
    );
    assert_eq!(
        call!(rx, Msg::Applied).unwrap(),
        vec![5],
        "applied exactly once"
    );
    rx.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_capacity_limit_push_is_a_typed_error_and_nothing_is_lost() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "c5", Courier::with_mode(KEEP), |s| {
        s.max_pending(2)
    })
    .await;
    let first = call!(a, Msg::Send, 1).unwrap().unwrap();
    call!(a, Msg::Send, 2).unwrap().unwrap();
    let err = call!(a, Msg::Send, 3).unwrap().unwrap_err();
    assert!(err.contains("maximum of 2"), "{err}");
    assert_eq!(
        ops_in_store(&store, "c5"),
        vec![0, 1],
        "nothing lost, nothing added"
    );
    assert!(call!(a, Msg::ConfirmId, first).unwrap());
    call!(a, Msg::Send, 3).unwrap().unwrap();
    assert_eq!(ops_in_store(&store, "c5"), vec![1, 2]);
    a.stop_and_wait(None, None).await.unwrap();
}

/// Spawns like [`spawn`] and also returns the actor's join handle.
async fn spawn_joined(
    storage: &Storage,
    key: &str,
    c: Courier,
    start: impl FnOnce(Start<Courier>) -> Start<Courier>,
) -> (ActorRef<Msg>, JoinHandle<()>) {
    Actor::spawn(None, c, start(Start::new(storage, key, ())))
        .await
        .unwrap()
}

/// The kind byte of each stored operation record of `key`: 2 pending, 4 pending with failed
/// attempts, 5 dead letter (with its failed attempts).
fn kinds_in_store(store: &MemoryStore, key: &str) -> Vec<(u64, u8)> {
    store
        .ops(&ActorKey::new("courier", key))
        .into_iter()
        .map(|(s, b)| (s, b[3]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_stays_dead_after_a_respawn_in_the_same_process() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(RETRY);
    let mut seen = c.watch();
    let a = spawn(&storage, "d1", c.clone(), |s| s.retry_policy(eager(1))).await;
    call!(a, Msg::Send, 1).unwrap().unwrap();
    assert_eq!(seen.recv().await, Some((0, 0)));
    let dead = call!(a, Msg::DeadLetters).unwrap();
    assert_eq!(dead.len(), 1, "buried after its one failed attempt");
    a.stop_and_wait(None, None).await.unwrap();

    // No commit was written since the burial: it is still queued to ride on the next one.
    // The respawn's load must see it.
    let again = Courier::with_mode(DONE);
    let a = spawn(&storage, "d1", again.clone(), |s| s.retry_policy(eager(1))).await;
    assert_eq!(
        call!(a, Msg::DeadLetters).unwrap(),
        dead,
        "still a dead letter"
    );
    assert!(call!(a, Msg::Pending).unwrap().is_empty());
    assert!(again.seqs().is_empty(), "a dead letter is not performed");
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert_eq!(kinds_in_store(&store, "d1"), vec![(0, 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_and_replays_do_not_count_as_failed_attempts() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(KEEP);
    let a = spawn(&storage, "r1", c.clone(), |s| s.retry_policy(patient(5))).await;
    call!(a, Msg::Send, 1).unwrap().unwrap();
    for _ in 0..5 {
        Courier::resume(&a, |_| true).unwrap();
    }
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 0)]);
    a.stop_and_wait(None, None).await.unwrap();
    // A replay after a restart does not count either.
    let a = spawn(&storage, "r1", c.clone(), |s| s.retry_policy(patient(5))).await;
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 0)]);
    assert_eq!(
        c.seqs().len(),
        7,
        "performed once, resumed five times, replayed once"
    );
    // The first retry is the first failed attempt: it waits for its backoff, no dead letter.
    c.mode.store(RETRY, Ordering::SeqCst);
    Courier::resume(&a, |_| true).unwrap();
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 1)]);
    assert!(call!(a, Msg::DeadLetters).unwrap().is_empty());
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_survive_restarts_so_a_crash_loop_ends_in_a_dead_letter() {
    let store = MemoryStore::new();
    let mut storage = Storage::new(store.clone());
    let c = Courier::with_mode(FAIL);
    let mut seen = c.watch();
    // The first incarnation commits the op, performs it, fails and stops.
    let (a, handle) =
        spawn_joined(&storage, "loop", c.clone(), |s| s.retry_policy(patient(3))).await;
    call!(a, Msg::Send, 1).unwrap().unwrap();
    handle.await.unwrap();
    // Each restart replays it, fails again and stops: a crash loop. Half-way the process
    // restarts too (the store is closed and reopened).
    for restart in 1..=2 {
        if restart == 2 {
            storage.close().await.unwrap();
            storage = Storage::new(store.clone());
        }
        let (_, handle) =
            spawn_joined(&storage, "loop", c.clone(), |s| s.retry_policy(patient(3))).await;
        handle.await.unwrap();
    }
    let attempts: Vec<(u64, u32)> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
    assert_eq!(
        attempts,
        vec![(0, 0), (0, 1), (0, 2)],
        "the count went on across restarts"
    );
    // After three failed attempts the op is a dead letter: the loop is over.
    let a = spawn(&storage, "loop", c.clone(), |s| s.retry_policy(patient(3))).await;
    assert_eq!(call!(a, Msg::DeadLetters).unwrap().len(), 1);
    assert!(call!(a, Msg::Pending).unwrap().is_empty());
    assert!(seen.try_recv().is_err(), "not performed a fourth time");
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert_eq!(kinds_in_store(&store, "loop"), vec![(0, 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_past_max_pending_is_a_typed_error_and_changes_nothing() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(RETRY);
    let a = spawn(&storage, "cap", c.clone(), |s| {
        s.retry_policy(eager(1)).max_pending(1)
    })
    .await;
    for n in 0..3 {
        call!(a, Msg::Send, n).unwrap().unwrap();
    }
    let dead = call!(a, Msg::DeadLetters).unwrap();
    assert_eq!(dead.len(), 3);
    c.mode.store(KEEP, Ordering::SeqCst);
    call!(a, Msg::Requeue, dead[0].clone()).unwrap().unwrap();
    for id in &dead[1..] {
        let err = call!(a, Msg::Requeue, id.clone()).unwrap().unwrap_err();
        assert!(err.contains("maximum of 1"), "{err}");
    }
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 0)]);
    assert_eq!(call!(a, Msg::DeadLetters).unwrap(), dead[1..].to_vec());
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert_eq!(kinds_in_store(&store, "cap"), vec![(0, 2), (1, 5), (2, 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_committed_with_its_dead_letter_rider_ends_pending_in_the_store() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let c = Courier::with_mode(RETRY);
    let a = spawn(&storage, "rider", c.clone(), |s| s.retry_policy(eager(1))).await;
    call!(a, Msg::Send, 1).unwrap().unwrap();
    let dead = call!(a, Msg::DeadLetters).unwrap();
    assert_eq!(dead.len(), 1);
    let batches = storage.stats().batches;
    // The burial is still queued; the requeue's commit carries it in the same transaction,
    // and the requeue, sent later, must win.
    c.mode.store(KEEP, Ordering::SeqCst);
    call!(a, Msg::Requeue, dead[0].clone()).unwrap().unwrap();
    assert_eq!(
        storage.stats().batches,
        batches + 1,
        "one transaction for both"
    );
    assert_eq!(
        kinds_in_store(&store, "rider"),
        vec![(0, 2)],
        "pending, not dead"
    );
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let again = Courier::with_mode(KEEP);
    let a = spawn(&storage_of(&store), "rider", again.clone(), |s| s).await;
    assert_eq!(call!(a, Msg::Pending).unwrap(), vec![(0, 0)]);
    assert_eq!(again.seqs(), vec![0], "performed again after the restart");
    a.stop_and_wait(None, None).await.unwrap();
}

fn storage_of(store: &MemoryStore) -> Storage {
    Storage::new(store.clone())
}

#[test]
fn retry_policy_refuses_nan_or_out_of_range_jitter_and_its_delay_never_panics() {
    let p = RetryPolicy::default();
    assert_eq!(p.initial(), Duration::from_millis(100));
    assert_eq!(p.max(), Duration::from_secs(30));
    assert_eq!(p.jitter(), 0.2);
    assert_eq!(p.max_attempts(), 10);
    for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let err = p.with_jitter(bad).unwrap_err();
        assert!(matches!(err, RetryPolicyError::Jitter(_)), "{bad}: {err}");
        assert!(err.to_string().contains("0.0 to 1.0"), "{err}");
    }
    assert_eq!(
        RetryPolicy::new(Duration::ZERO, Duration::ZERO, 0).unwrap_err(),
        RetryPolicyError::NoAttempts
    );
    // The extremes a valid policy allows, with any random unit, give a delay within bounds.
    let huge = RetryPolicy::new(Duration::MAX, Duration::MAX, u32::MAX)
        .unwrap()
        .with_jitter(1.0)
        .unwrap();
    for policy in [huge, p, eager(1), huge.with_jitter(0.0).unwrap()] {
        for attempt in [0, 1, 2, 63, 64, u32::MAX] {
            for unit in [0.0, 0.5, 1.0, -1.0, 2.0, f64::NAN] {
                assert!(policy.delay(attempt, unit) <= policy.max());
            }
        }
    }
}
