//! A reviewer's attempts to break the promises of docs/observability.md that
//! tests/observability.rs does not check: the gauges through `Tx::requeue`, `Tx::confirm` and
//! a passivation by `Entities`; a stale instance's riders counted as fenced; the commit span and
//! the duration histogram of a transaction whose every commit was fenced.
//!
//! The subscriber and the recorder are process-wide, so this binary holds one test that runs
//! the scenarios in turn (machinery copied from tests/observability.rs).
//! Tests marked `#[ignore = "BUG: ..."]` fail today.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ractor::{Actor, ActorProcessingErr, RpcReplyPort, call};
use ractor_persist::{
    Control, Entities, MemoryStore, OpId, Outcome, Pending, Persistent, PersistentActor,
    RetryPolicy, Settled, Settlement, Start, Storage, Store, Tx,
};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// The recording subscriber and the metrics probe, shared with the other observability test.
include!("recording/mod.rs");

// --- the actor ----------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Work {
    /// Kept until confirmed.
    Keep,
    /// Asks for a retry, every time (a dead letter with a one-attempt policy).
    Flop,
    /// Waits for the gate, then done.
    Gated,
    /// Done.
    Fine,
    /// `perform` fails: the actor stops, and performs it again when it starts.
    Boom,
}

enum GMsg {
    Push(Work, RpcReplyPort<(OpId, Settlement)>),
    Confirm(OpId, RpcReplyPort<bool>),
    Requeue(OpId, RpcReplyPort<bool>),
    Add(i64, RpcReplyPort<i64>),
    Peek(RpcReplyPort<i64>),
    Persist(Control<Work>),
}

/// The tests share the global subscriber and recorder: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens the perform of a `Work::Gated`.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[derive(Default, Persistent)]
#[persistent(name = "gauged")]
struct Gauged;

impl PersistentActor for Gauged {
    type Msg = GMsg;
    type State = i64;
    type Op = Work;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<i64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: GMsg,
        total: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GMsg::Push(w, reply) => {
                *total += 1;
                let id = tx.push(w)?;
                let s = tx.settlement(&id);
                tx.reply(reply, (id, s));
            }
            GMsg::Confirm(id, reply) => {
                let done = tx.confirm(&id);
                tx.reply(reply, done);
            }
            GMsg::Requeue(id, reply) => {
                let ok = tx.requeue(&id).is_ok();
                tx.reply(reply, ok);
            }
            GMsg::Add(n, reply) => {
                *total += n;
                tx.reply(reply, *total);
            }
            GMsg::Peek(reply) => tx.reply(reply, *total),
            GMsg::Persist(_) => {}
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Work>, _: &i64) -> Result<Outcome, ActorProcessingErr> {
        Ok(match op.op() {
            Work::Keep => Outcome::KeepUntilConfirmed,
            Work::Flop => Outcome::Retry,
            Work::Gated => {
                GATE.acquire().await.unwrap().forget();
                Outcome::Done
            }
            Work::Fine => Outcome::Done,
            Work::Boom => return Err("boom".into()),
        })
    }

    fn control(msg: GMsg) -> Result<Control<Work>, GMsg> {
        match msg {
            GMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Work>) -> Option<GMsg> {
        Some(GMsg::Persist(c))
    }
}

const NS: (&str, &str) = ("namespace", "gauged");
const STORE: (&str, &str) = ("store", "memory");
const PENDING: &str = "ractor_persist_pending_ops";
const DEAD: &str = "ractor_persist_dead_letters";

fn one_attempt() -> RetryPolicy {
    RetryPolicy::new(std::time::Duration::ZERO, std::time::Duration::ZERO, 1).unwrap()
}

// --- the scenarios ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_fences_and_fenced_transactions() {
    let _serial = SERIAL.lock().await;
    let (recording, snapshotter) = installed();
    let mut probe = Probe::new(snapshotter);
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    probe.take();

    gauges_follow_requeue_and_confirm(&storage, &mut probe).await;
    gauges_drop_on_passivation(&storage, &mut probe).await;
    a_stale_riders_fence_is_counted(&store, &storage, recording, &mut probe).await;
    spans_nest_as_documented(&storage, recording).await;
    gauges_drop_after_a_kill_and_a_failure(&storage, &mut probe).await;
    gauges_drop_at_a_stop_while_a_supervisor_holds_the_state(&storage, &mut probe).await;
    storage.close().await.unwrap();
}

/// A plain ractor parent that keeps the final state its stopped children hand it (ractor's
/// `ActorTerminated` carries it), as a supervisor that rebuilds children might.
struct Keeper;

enum KeeperMsg {
    Held(RpcReplyPort<usize>),
}

impl Actor for Keeper {
    type Msg = KeeperMsg;
    type State = Vec<ractor::actor::messages::BoxedState>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<KeeperMsg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<KeeperMsg>,
        KeeperMsg::Held(reply): KeeperMsg,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(held.len());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ractor::ActorRef<KeeperMsg>,
        event: ractor::SupervisionEvent,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let ractor::SupervisionEvent::ActorTerminated(_, Some(state), _) = event {
            held.push(state);
        }
        Ok(())
    }
}

/// "takes them off when it stops (in its `post_stop` ...)": at the stop itself, not when
/// ractor drops the state, which a supervisor may hold for as long as it likes.
async fn gauges_drop_at_a_stop_while_a_supervisor_holds_the_state(
    storage: &Storage,
    probe: &mut Probe,
) {
    probe.take();
    let (keeper, keeper_handle) = Actor::spawn(None, Keeper, ()).await.unwrap();
    let start = Start::new(storage, "held", ());
    let (a, _) = Actor::spawn_linked(None, Gauged, start, keeper.get_cell())
        .await
        .unwrap();
    let _ = call!(a, GMsg::Push, Work::Keep).unwrap();
    assert_eq!(probe.take().gauge(PENDING, NS), 1.0);
    a.stop_and_wait(None, None).await.unwrap();
    // The supervision event is handled before the keeper's next message.
    assert_eq!(
        call!(keeper, KeeperMsg::Held).unwrap(),
        1,
        "the keeper holds the state"
    );
    assert_eq!(
        probe.take().gauge(PENDING, NS),
        0.0,
        "off the gauge at the stop, the state still held"
    );
    keeper.stop_and_wait(None, None).await.unwrap();
    keeper_handle.await.unwrap();
}

/// "moves them as operations are pushed, done, confirmed, re-queued or buried".
async fn gauges_follow_requeue_and_confirm(storage: &Storage, probe: &mut Probe) {
    let start = Start::new(storage, "g1", ()).retry_policy(one_attempt());
    let (a, _) = Actor::spawn(None, Gauged, start).await.unwrap();
    let (flop, s) = call!(a, GMsg::Push, Work::Flop).unwrap();
    assert_eq!(s.wait().await, Settled::DeadLetter);
    // A message after the burial: the gauges were moved before its reply.
    call!(a, GMsg::Peek).unwrap();
    let m = probe.take();
    assert_eq!(
        (m.gauge(PENDING, NS), m.gauge(DEAD, NS)),
        (0.0, 1.0),
        "buried"
    );

    assert!(call!(a, GMsg::Requeue, flop.clone()).unwrap());
    // Re-queued: performed again at once, fails again (one attempt) and is buried again.
    call!(a, GMsg::Peek).unwrap();
    let m = probe.take();
    assert_eq!(
        (m.gauge(PENDING, NS), m.gauge(DEAD, NS)),
        (0.0, 1.0),
        "re-queued, then buried again"
    );
    let (kept, _) = call!(a, GMsg::Push, Work::Keep).unwrap();
    let m = probe.take();
    assert_eq!(
        (m.gauge(PENDING, NS), m.gauge(DEAD, NS)),
        (1.0, 1.0),
        "kept"
    );
    assert!(call!(a, GMsg::Confirm, kept).unwrap());
    let m = probe.take();
    assert_eq!(
        (m.gauge(PENDING, NS), m.gauge(DEAD, NS)),
        (0.0, 1.0),
        "confirmed"
    );
    a.stop_and_wait(None, None).await.unwrap();
    let m = probe.take();
    assert_eq!(
        (m.gauge(PENDING, NS), m.gauge(DEAD, NS)),
        (0.0, 0.0),
        "stopped"
    );
}

/// "an actor that is not running (passivated by `Entities`, ...) is not in them".
async fn gauges_drop_on_passivation(storage: &Storage, probe: &mut Probe) {
    let entities = Entities::<Gauged>::builder(storage, |_| ())
        .start()
        .await
        .unwrap();
    entities
        .call("p1", |port| GMsg::Push(Work::Keep, port), None)
        .await
        .unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 1.0, "resident with one kept op");
    assert!(entities.passivate("p1").await);
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 0.0, "passivated");
    entities.call("p1", GMsg::Peek, None).await.unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 1.0, "activated again, loads its op");
    entities.shutdown().await;
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 0.0, "shut down");
}

/// "one event per refused commit, a stale instance's riders included": a done operation's
/// removal (a rider) of an instance fenced meanwhile is refused, counted and told.
async fn a_stale_riders_fence_is_counted(
    store: &MemoryStore,
    storage: &Storage,
    rec: &Recording,
    probe: &mut Probe,
) {
    let (a, _) = Actor::spawn(None, Gauged, Start::new(storage, "r1", ()))
        .await
        .unwrap();
    let (b, _) = Actor::spawn(None, Gauged, Start::new(storage, "r2", ()))
        .await
        .unwrap();
    probe.take();
    let _ = call!(a, GMsg::Push, Work::Gated).unwrap();
    // A newer instance's epoch, taken while the perform waits.
    let key = ractor_persist::ActorKey::new("gauged", "r1");
    let current = store.open_actor(&key, &[]).unwrap().epoch;
    GATE.add_permits(1);
    // Handled after the perform: its removal is queued (or written) by then. Nothing to write.
    call!(a, GMsg::Peek).unwrap();
    // Another actor's commit writes the riders queued so far.
    call!(b, GMsg::Add, 1).unwrap();
    let fenced = rec.events("ractor_persist.fenced", "r1");
    assert_eq!(fenced.len(), 1, "the rider's fence: {fenced:?}");
    assert_eq!(fenced[0].u64("epoch"), Some(1));
    assert_eq!(fenced[0].u64("current"), Some(current));
    let m = probe.take();
    assert_eq!(m.counter("ractor_persist_fenced_total", NS), 1);
    a.stop_and_wait(None, None).await.ok();
    b.stop_and_wait(None, None).await.unwrap();
}

/// docs/observability.md: `duration_seconds` of the commit span is "the backend's commit call,
/// retries after fences included", and `ractor_persist_commit_duration_seconds` counts "each
/// store transaction's commit call (failed ones included)". A transaction whose every commit
/// was fenced made the call (and was refused), but its span has no `commits` and no
/// `duration_seconds`, and the histogram gets no sample (storage.rs `write_in` returns early
/// when `commits` is empty after the fences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wholly_fenced_transaction_has_its_batch_size_and_duration() {
    let _serial = SERIAL.lock().await;
    let (recording, snapshotter) = installed();
    let mut probe = Probe::new(snapshotter);
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = Actor::spawn(None, Gauged, Start::new(&storage, "w1", ()))
        .await
        .unwrap();
    call!(a, GMsg::Add, 1).unwrap();
    let key = ractor_persist::ActorKey::new("gauged", "w1");
    store.open_actor(&key, &[]).unwrap();
    probe.take();
    let from = recording.span_count();
    assert!(call!(a, GMsg::Add, 1).is_err(), "fenced");
    let m = probe.take();
    let spans = recording.spans_from(from, "ractor_persist.commit");
    let fenced: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.str("outcome") == Some("fenced") && s.str("store") == Some("memory"))
        .collect();
    assert_eq!(fenced.len(), 1, "{spans:?}");
    assert_eq!(fenced[0].u64("fenced"), Some(1), "{fenced:?}");
    assert_eq!(
        fenced[0].u64("commits"),
        Some(1),
        "the batch size: {fenced:?}"
    );
    assert!(
        fenced[0].fields.contains_key("duration_seconds"),
        "{fenced:?}"
    );
    assert_eq!(
        m.histogram("ractor_persist_commit_duration_seconds", STORE)
            .len(),
        1,
        "the refused commit call is timed"
    );
    a.stop_and_wait(None, None).await.ok();
    storage.close().await.unwrap();
}

/// "When the store is idle and the actor writes its own commit, the commit span is a child of
/// its message span; a commit written by the committer thread has no parent"; a load's span is
/// not in a message span; `seq` counts the instance's cycles from 1.
async fn spans_nest_as_documented(storage: &Storage, rec: &Recording) {
    let from = rec.span_count();
    let (a, _) = Actor::spawn(None, Gauged, Start::new(storage, "n1", ()))
        .await
        .unwrap();
    call!(a, GMsg::Add, 1).unwrap();
    call!(a, GMsg::Add, 1).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    let commits = rec.spans_from(from, "ractor_persist.commit");
    assert!(!commits.is_empty());
    for c in &commits {
        assert!(
            c.parent.is_none() || c.parent == Some("ractor_persist.message"),
            "{c:?}"
        );
    }
    assert!(
        commits
            .iter()
            .any(|c| c.parent == Some("ractor_persist.message")),
        "an idle store: the actor writes its own commit inside its message span: {commits:?}"
    );
    let loads = rec.spans("ractor_persist.load", "n1");
    assert_eq!(loads.len(), 1);
    // (ractor's own `Actor` span may hold it; no message span does.)
    assert_ne!(loads[0].parent, Some("ractor_persist.message"), "{loads:?}");
    let seqs: Vec<Option<u64>> = rec
        .spans("ractor_persist.message", "n1")
        .iter()
        .map(|s| s.u64("seq"))
        .collect();
    assert_eq!(
        seqs,
        [Some(1), Some(2), Some(3)],
        "post_start, then two messages"
    );
}

/// "takes them off when it stops (in its `post_stop`, or when ractor drops its state after a
/// failure or a kill)".
async fn gauges_drop_after_a_kill_and_a_failure(storage: &Storage, probe: &mut Probe) {
    probe.take();
    let (a, handle) = Actor::spawn(None, Gauged, Start::new(storage, "k1", ()))
        .await
        .unwrap();
    let _ = call!(a, GMsg::Push, Work::Keep).unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 1.0);
    a.kill();
    handle.await.unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 0.0, "killed");

    let (b, handle) = Actor::spawn(None, Gauged, Start::new(storage, "k2", ()))
        .await
        .unwrap();
    let _ = call!(b, GMsg::Push, Work::Boom).unwrap();
    // The perform fails after the reply: the actor stops.
    handle.await.unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 0.0, "failed and stopped");
    // Its restart loads the operation (and fails again on it).
    let (c, handle) = Actor::spawn(None, Gauged, Start::new(storage, "k1", ()))
        .await
        .unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 1.0, "k1 loaded its kept op");
    c.stop_and_wait(None, None).await.unwrap();
    handle.await.unwrap();
    let m = probe.take();
    assert_eq!(m.gauge(PENDING, NS), 0.0);
}
