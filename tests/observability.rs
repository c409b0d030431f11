//! The spans, events and metrics of the message cycle, the group commit and loads, seen by a
//! recording `tracing` subscriber and a `metrics` debugging recorder (docs/observability.md).
//!
//! Both are process-wide (a global subscriber, a global recorder), so this binary holds one
//! test that runs the scenarios one after the other: one committed message, one fenced commit,
//! one retry ending in a dead letter, one quarantined record. Counters are read as the change
//! since the previous snapshot (the debugging recorder resets them on each snapshot).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ractor::{Actor, ActorProcessingErr, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, MemoryStore, Outcome, Pending, Persistent, PersistentActor,
    RetryPolicy, Settled, Settlement, Space, Start, Storage, Store, Tx,
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
    /// `perform` reports it done.
    Fine,
    /// `perform` asks for a retry, every time.
    Flop,
}

enum ObsMsg {
    /// Adds to the total and pushes a `Work::Fine`.
    Add(i64, RpcReplyPort<i64>),
    /// Pushes a `Work::Flop`; replies with how it settles.
    Flop(RpcReplyPort<Settlement>),
    /// Changes nothing.
    Peek(RpcReplyPort<i64>),
    Persist(Control<Work>),
}

#[derive(Default, Persistent)]
#[persistent(name = "obs")]
struct Obs;

impl PersistentActor for Obs {
    type Msg = ObsMsg;
    type State = i64;
    type Op = Work;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<i64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ObsMsg,
        total: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ObsMsg::Add(n, reply) => {
                *total += n;
                tx.push(Work::Fine)?;
                tx.reply(reply, *total);
            }
            ObsMsg::Flop(reply) => {
                let id = tx.push(Work::Flop)?;
                let settled = tx.settlement(&id);
                tx.reply(reply, settled);
            }
            ObsMsg::Peek(reply) => tx.reply(reply, *total),
            ObsMsg::Persist(_) => {}
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Work>, _: &i64) -> Result<Outcome, ActorProcessingErr> {
        Ok(match op.op() {
            Work::Fine => Outcome::Done,
            Work::Flop => Outcome::Retry,
        })
    }

    fn control(msg: ObsMsg) -> Result<Control<Work>, ObsMsg> {
        match msg {
            ObsMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Work>) -> Option<ObsMsg> {
        Some(ObsMsg::Persist(c))
    }
}

const NS: (&str, &str) = ("namespace", "obs");
const STORE: (&str, &str) = ("store", "memory");

// --- the scenarios ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_events_and_metrics_of_a_commit_a_fence_a_dead_letter_and_a_quarantine() {
    let (recording, snapshotter) = installed();
    let mut probe = Probe::new(snapshotter);
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    probe.take(); // from here on, counters count this test's work

    one_committed_message(&storage, recording, &mut probe).await;
    one_fenced_commit(&storage, recording, &mut probe).await;
    one_retry_then_a_dead_letter(&storage, recording, &mut probe).await;
    one_quarantined_record(&store, &storage, recording, &mut probe).await;
    storage.close().await.unwrap();
}

/// (a) A message that changes the state and pushes an operation: its message span (key,
/// epoch, sequence, outcome "committed"), a commit span (at least one actor commit, bytes,
/// outcome), the load span of its start, and the commit counters and histograms moved.
async fn one_committed_message(storage: &Storage, rec: &Recording, snaps: &mut Probe) {
    let spans_before = rec.span_count();
    let (a, _) = Actor::spawn(None, Obs, Start::new(storage, "a1", ()))
        .await
        .unwrap();
    assert_eq!(call!(a, ObsMsg::Add, 5).unwrap(), 5);

    let load = rec.spans("ractor_persist.load", "a1");
    assert_eq!(load.len(), 1, "{load:?}");
    assert_eq!(load[0].str("namespace"), Some("obs"));
    assert_eq!(load[0].u64("epoch"), Some(1));
    assert_eq!(load[0].str("outcome"), Some("initialized"), "{load:?}");
    assert_eq!(load[0].u64("pending"), Some(0));

    let messages = rec.spans("ractor_persist.message", "a1");
    // The start hook's cycle first (nothing to write), then the message.
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].str("kind"), Some("post_start"));
    assert_eq!(messages[0].str("outcome"), Some("unchanged"));
    let msg = &messages[1];
    assert_eq!(msg.str("namespace"), Some("obs"));
    assert_eq!(msg.str("kind"), Some("message"));
    assert_eq!(msg.u64("epoch"), Some(1));
    assert_eq!(msg.u64("seq"), Some(2), "the instance's second cycle");
    assert_eq!(msg.str("outcome"), Some("committed"), "{msg:?}");

    let commits = rec.spans_from(spans_before, "ractor_persist.commit");
    let written: Vec<&SpanRec> = commits
        .iter()
        .filter(|s| s.str("outcome") == Some("committed"))
        .collect();
    assert!(!written.is_empty(), "no commit span: {commits:?}");
    for span in &written {
        assert!(span.u64("commits").is_some_and(|n| n >= 1), "{span:?}");
        assert!(span.u64("bytes").is_some_and(|n| n > 0), "{span:?}");
        assert!(span.fields.contains_key("duration_seconds"), "{span:?}");
    }

    // The next message runs after the first one's operation was performed (done).
    assert_eq!(call!(a, ObsMsg::Peek).unwrap(), 5);
    let m = snaps.take();
    assert!(m.counter("ractor_persist_commits_total", STORE) >= 1);
    assert!(m.counter("ractor_persist_transactions_total", STORE) >= 1);
    assert!(m.counter("ractor_persist_commit_bytes_total", STORE) > 0);
    let took = m.histogram("ractor_persist_commit_duration_seconds", STORE);
    assert!(
        !took.is_empty() && took.iter().all(|s| *s >= 0.0),
        "{took:?}"
    );
    let batches = m.histogram("ractor_persist_commit_batch_size", STORE);
    assert!(
        !batches.is_empty() && batches.iter().all(|n| *n >= 1.0),
        "{batches:?}"
    );
    assert_eq!(
        m.histogram("ractor_persist_load_duration_seconds", NS)
            .len(),
        1
    );
    assert_eq!(m.counter("ractor_persist_fenced_total", NS), 0);
    assert_eq!(
        m.gauge("ractor_persist_pending_ops", NS),
        0.0,
        "performed: done"
    );
    a.stop_and_wait(None, None).await.unwrap();
}

/// (b) Two instances of one key: the older one's commit after the newer one loaded is fenced.
/// The warning (key, stale and current epochs), `ractor_persist_fenced_total` +1, and the
/// stale message's span with the outcome "fenced".
async fn one_fenced_commit(storage: &Storage, rec: &Recording, snaps: &mut Probe) {
    let (old, old_task) = Actor::spawn(None, Obs, Start::new(storage, "f1", ()))
        .await
        .unwrap();
    assert_eq!(call!(old, ObsMsg::Add, 1).unwrap(), 1);
    // The operation of that message is performed (and its removal queued) before this.
    call!(old, ObsMsg::Peek).unwrap();
    let (new, _) = Actor::spawn(None, Obs, Start::new(storage, "f1", ()))
        .await
        .unwrap();
    snaps.take();
    assert!(
        call!(old, ObsMsg::Add, 1000).is_err(),
        "the stale instance may not write"
    );
    old_task.await.unwrap();

    let fenced = rec.events("ractor_persist.fenced", "f1");
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    assert_eq!(fenced[0].level, Level::WARN);
    assert_eq!(fenced[0].str("namespace"), Some("obs"));
    assert_eq!(fenced[0].u64("epoch"), Some(1));
    assert_eq!(fenced[0].u64("current"), Some(2));

    let stale: Vec<SpanRec> = rec
        .spans("ractor_persist.message", "f1")
        .into_iter()
        .filter(|s| s.u64("epoch") == Some(1))
        .collect();
    let last = stale.last().expect("the stale instance's message span");
    assert_eq!(last.str("outcome"), Some("fenced"), "{stale:?}");
    assert!(
        last.str("error").is_some_and(|e| e.contains("f1")),
        "{last:?}"
    );

    let m = snaps.take();
    assert_eq!(m.counter("ractor_persist_fenced_total", NS), 1);
    // The stale instance stopped: it holds nothing any more.
    assert_eq!(m.gauge("ractor_persist_pending_ops", NS), 0.0);
    assert_eq!(call!(new, ObsMsg::Peek).unwrap(), 1);
    new.stop_and_wait(None, None).await.unwrap();
}

/// (c) An operation that asks to be retried, with a policy of two attempts: one retry (an
/// event, `ractor_persist_retries_total` +1), then a dead letter (a warning,
/// `ractor_persist_dead_letters_total` +1, the namespace's dead-letter gauge at 1 and its
/// pending gauge at 0). The gauge drops to 0 when the actor stops, and is 1 again when it
/// starts with its dead letter.
async fn one_retry_then_a_dead_letter(storage: &Storage, rec: &Recording, snaps: &mut Probe) {
    let policy = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 2).unwrap();
    let start = Start::new(storage, "d1", ()).retry_policy(policy);
    let (a, _) = Actor::spawn(None, Obs, start).await.unwrap();
    snaps.take();
    let settlement = call!(a, ObsMsg::Flop).unwrap();
    assert_eq!(settlement.await, Settled::DeadLetter);

    let retries = rec.events("ractor_persist.retry", "d1");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].str("after"), Some("backoff"));
    assert_eq!(retries[0].u64("op"), Some(0));
    assert_eq!(retries[0].u64("attempts"), Some(1));
    let dead = rec.events("ractor_persist.dead_letter", "d1");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].level, Level::WARN);
    assert_eq!(dead[0].str("namespace"), Some("obs"));
    assert_eq!(dead[0].u64("op"), Some(0));
    assert_eq!(dead[0].u64("attempts"), Some(2));

    let m = snaps.take();
    assert_eq!(m.counter("ractor_persist_retries_total", NS), 1);
    assert_eq!(m.counter("ractor_persist_dead_letters_total", NS), 1);
    assert_eq!(m.gauge("ractor_persist_dead_letters", NS), 1.0);
    assert_eq!(m.gauge("ractor_persist_pending_ops", NS), 0.0);

    a.stop_and_wait(None, None).await.unwrap();
    let m = snaps.take();
    assert_eq!(m.gauge("ractor_persist_dead_letters", NS), 0.0, "stopped");

    let (a, _) = Actor::spawn(None, Obs, Start::new(storage, "d1", ()))
        .await
        .unwrap();
    let m = snaps.take();
    assert_eq!(m.gauge("ractor_persist_dead_letters", NS), 1.0, "loaded");
    let load = rec.spans("ractor_persist.load", "d1");
    assert_eq!(load.len(), 2);
    assert_eq!(load[1].str("outcome"), Some("loaded"));
    assert_eq!(load[1].u64("dead"), Some(1));
    assert_eq!(load[1].u64("epoch"), Some(2));
    a.stop_and_wait(None, None).await.unwrap();
    assert_eq!(snaps.take().gauge("ractor_persist_dead_letters", NS), 0.0);
}

/// (d) A damaged snapshot, with the opt-in: a warning naming the key and the reason,
/// `ractor_persist_quarantined_total` +1, and the load's outcome "quarantined".
async fn one_quarantined_record(
    store: &MemoryStore,
    storage: &Storage,
    rec: &Recording,
    snaps: &mut Probe,
) {
    let (a, _) = Actor::spawn(None, Obs, Start::new(storage, "q1", ()))
        .await
        .unwrap();
    call!(a, ObsMsg::Add, 3).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    let key = ActorKey::new("obs", "q1");
    let mut damaged = store.snapshot(&key).expect("a snapshot");
    let last = damaged.len() - 1;
    damaged[last] ^= 0x40;
    let epoch = store.open_actor(&key, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(key.clone(), epoch).put(Space::SNAPSHOT, 0, damaged)])
        .unwrap();
    snaps.take();

    let start = Start::new(storage, "q1", ()).quarantine_undecodable();
    let (a, _) = Actor::spawn(None, Obs, start).await.unwrap();
    assert_eq!(call!(a, ObsMsg::Peek).unwrap(), 0, "started from init");
    let moved = rec.events("ractor_persist.quarantined", "q1");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].level, Level::WARN);
    assert!(
        moved[0].str("reason").is_some_and(|r| r.contains("obs/q1")),
        "{moved:?}"
    );
    let load = rec.spans("ractor_persist.load", "q1");
    assert_eq!(
        load.last().and_then(|s| s.str("outcome")),
        Some("quarantined")
    );
    let m = snaps.take();
    assert_eq!(m.counter("ractor_persist_quarantined_total", NS), 1);
    a.stop_and_wait(None, None).await.unwrap();
}
